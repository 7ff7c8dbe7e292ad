//! Users, their tokens, and who a request is.
//!
//! Passwords are stored as argon2 hashes. A token is 32 random bytes shown once; only its
//! SHA-256 is stored (it is not a password: nothing to stretch). A session token comes from
//! signing in and carries every scope of its user's role; a personal access token carries
//! the scopes it was made with (never more than its user's role has) and an expiry.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::Row;

use crate::db::{now_ms, Db};
use crate::ManagerError;

/// What a token may be used for. Each endpoint needs one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Create and read jobs (preheat, delete a task, list holders).
    Job,
    /// Create, change and delete clusters; list schedulers and seeds.
    Cluster,
    /// Read which hosts hold a task.
    Task,
    /// Manage users.
    User,
    /// Create and revoke one's own personal access tokens.
    Token,
}

pub const ALL_SCOPES: &[Scope] = &[Scope::Job, Scope::Cluster, Scope::Task, Scope::User, Scope::Token];

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Job => "job",
            Scope::Cluster => "cluster",
            Scope::Task => "task",
            Scope::User => "user",
            Scope::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ManagerError> {
        ALL_SCOPES.iter().copied().find(|x| x.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL_SCOPES.iter().map(|x| x.name()).collect();
            ManagerError::BadRequest(format!("unknown scope `{s}`; scopes are {}", names.join(", ")))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Root,
    /// Jobs, tasks and its own tokens; no clusters or users.
    Guest,
}

impl Role {
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Role::Root => ALL_SCOPES,
            Role::Guest => &[Scope::Job, Scope::Task, Scope::Token],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ManagerError> {
        match s {
            "root" => Ok(Role::Root),
            "guest" => Ok(Role::Guest),
            _ => Err(ManagerError::BadRequest(format!("unknown role `{s}`; roles are root, guest"))),
        }
    }
}

/// How long a session token from signing in lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// Who a request is, from its bearer token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: i64,
    pub user: String,
    pub role: Role,
    pub scopes: Vec<Scope>,
    /// Signed in with a password (not a personal access token).
    pub session: bool,
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), ManagerError> {
        if self.scopes.contains(&scope) {
            return Ok(());
        }
        Err(ManagerError::Forbidden(format!(
            "this token lacks the `{}` scope; create one with it (`ferry token create --scope {}`)",
            scope.name(),
            scope.name()
        )))
    }
}

pub fn hash_password(password: &str) -> Result<String, ManagerError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| ManagerError::Internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ManagerError::Internal(format!("cannot hash the password: {e}")))
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A new random secret: the token (shown once) and its stored hash.
pub fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = format!("ferry_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let hash = token_hash(&token);
    (token, hash)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn check_password_rules(password: &str) -> Result<(), ManagerError> {
    if password.chars().count() < 8 {
        return Err(ManagerError::BadRequest("the password is shorter than 8 characters".into()));
    }
    Ok(())
}

/// Creates the root user when no user exists; returns the password it generated, if it had
/// to. Safe when several managers start at once: one insert wins.
pub async fn ensure_root(db: &Db, password: Option<&str>) -> Result<Option<String>, ManagerError> {
    let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(&db.pool).await?.try_get("n")?;
    if users > 0 {
        return Ok(None);
    }
    let (password, generated) = match password {
        Some(p) => {
            check_password_rules(p)?;
            (p.to_owned(), None)
        }
        None => {
            let (t, _) = new_token();
            let p = t.trim_start_matches("ferry_")[..24].to_owned();
            (p.clone(), Some(p))
        }
    };
    let hash = hash_password(&password)?;
    let inserted = sqlx::query(
        "INSERT INTO users (name, password_hash, role, created_at) VALUES ('root', $1, 'root', $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(hash)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(if inserted.rows_affected() == 1 { generated } else { None })
}

pub async fn create_user(db: &Db, name: &str, password: &str, role: Role) -> Result<i64, ManagerError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ManagerError::BadRequest(format!(
            "user name `{name}`: 1 to 64 characters among letters, digits, `-`, `_` and `.`"
        )));
    }
    check_password_rules(password)?;
    let row =
        sqlx::query("INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
            .bind(name)
            .bind(hash_password(password)?)
            .bind(role.name())
            .bind(now_ms())
            .fetch_one(&db.pool)
            .await?;
    Ok(row.try_get("id")?)
}

/// Checks a name and password; returns a new session token and its expiry.
pub async fn sign_in(db: &Db, name: &str, password: &str) -> Result<(String, i64), ManagerError> {
    let row =
        sqlx::query("SELECT id, password_hash FROM users WHERE name = $1").bind(name).fetch_optional(&db.pool).await?;
    let wrong = || ManagerError::Unauthorized("wrong user name or password".into());
    // An unknown name costs the same hashing as a wrong password: the answer's time does
    // not tell which names exist.
    static UNKNOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored: String = match &row {
        Some(r) => r.try_get("password_hash")?,
        None => UNKNOWN.get_or_init(|| hash_password("no such user").unwrap_or_default()).clone(),
    };
    let ok = tokio::task::spawn_blocking({
        let password = password.to_owned();
        move || password_matches(&password, &stored)
    })
    .await
    .unwrap_or(false);
    let row = match row {
        Some(r) if ok => r,
        _ => return Err(wrong()),
    };
    let user_id: i64 = row.try_get("id")?;
    // Sessions that ended are of no use to anyone: each sign-in clears them.
    sqlx::query("DELETE FROM tokens WHERE kind = 'session' AND expires_at <= $1")
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    let expires_at = now_ms() + SESSION_TTL_MS;
    let (token, hash) = new_token();
    sqlx::query(
        "INSERT INTO tokens (user_id, name, kind, hash, scopes, expires_at, created_at) \
         VALUES ($1, 'session', 'session', $2, '', $3, $4)",
    )
    .bind(user_id)
    .bind(hash)
    .bind(expires_at)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok((token, expires_at))
}

/// Who holds `token`: 401 when it is unknown, revoked or expired.
pub async fn authenticate(db: &Db, token: &str) -> Result<Principal, ManagerError> {
    let row = sqlx::query(
        "SELECT t.kind, t.scopes, t.expires_at, t.revoked, u.id AS user_id, u.name, u.role \
         FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1",
    )
    .bind(token_hash(token))
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| ManagerError::Unauthorized("unknown token; sign in or create a token".into()))?;
    if row.try_get::<i64, _>("revoked")? != 0 {
        return Err(ManagerError::Unauthorized("this token was revoked".into()));
    }
    if row.try_get::<i64, _>("expires_at")? <= now_ms() {
        return Err(ManagerError::Unauthorized("this token expired; create a new one".into()));
    }
    let role = Role::parse(&row.try_get::<String, _>("role")?)?;
    let session = row.try_get::<String, _>("kind")? == "session";
    let scopes = if session {
        role.scopes().to_vec()
    } else {
        parse_scopes(&row.try_get::<String, _>("scopes")?)?.into_iter().filter(|s| role.scopes().contains(s)).collect()
    };
    Ok(Principal { user_id: row.try_get("user_id")?, user: row.try_get("name")?, role, scopes, session })
}

pub fn parse_scopes(s: &str) -> Result<Vec<Scope>, ManagerError> {
    s.split(',').filter(|x| !x.is_empty()).map(Scope::parse).collect()
}

/// A personal access token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub user: String,
    pub scopes: Vec<Scope>,
    pub expires_at: String,
    pub created_at: String,
    pub state: String,
}

/// Creates a personal access token for `owner` with `scopes` (within its role) for
/// `ttl_ms`; returns its id and the secret, shown this once.
pub async fn create_token(
    db: &Db,
    owner: &Principal,
    name: &str,
    scopes: &[Scope],
    ttl_ms: i64,
) -> Result<(i64, String, i64), ManagerError> {
    if name.is_empty() || name.len() > 128 {
        return Err(ManagerError::BadRequest("a token needs a name of 1 to 128 characters".into()));
    }
    if scopes.is_empty() {
        return Err(ManagerError::BadRequest("a token needs at least one scope".into()));
    }
    if let Some(s) = scopes.iter().find(|s| !owner.role.scopes().contains(s)) {
        return Err(ManagerError::Forbidden(format!(
            "a {} user cannot hold the `{}` scope",
            owner.role.name(),
            s.name()
        )));
    }
    if ttl_ms <= 0 {
        return Err(ManagerError::BadRequest("a token's lifetime must be positive".into()));
    }
    let (token, hash) = new_token();
    let expires_at = now_ms().saturating_add(ttl_ms);
    let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    let row = sqlx::query(
        "INSERT INTO tokens (user_id, name, kind, hash, scopes, expires_at, created_at) \
         VALUES ($1, $2, 'personal', $3, $4, $5, $6) RETURNING id",
    )
    .bind(owner.user_id)
    .bind(name)
    .bind(hash)
    .bind(scopes.join(","))
    .bind(expires_at)
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await?;
    Ok((row.try_get("id")?, token, expires_at))
}

/// The personal access tokens `who` may see: its own, or every one for root.
pub async fn list_tokens(db: &Db, who: &Principal) -> Result<Vec<TokenInfo>, ManagerError> {
    let rows = sqlx::query(
        "SELECT t.id, t.name, t.scopes, t.expires_at, t.created_at, t.revoked, u.name AS user_name \
         FROM tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.kind = 'personal' AND (t.user_id = $1 OR $2 = 1) ORDER BY t.id",
    )
    .bind(who.user_id)
    .bind(i64::from(who.role == Role::Root))
    .fetch_all(&db.pool)
    .await?;
    let now = now_ms();
    rows.iter()
        .map(|r| {
            let expires: i64 = r.try_get("expires_at")?;
            let state = if r.try_get::<i64, _>("revoked")? != 0 {
                "revoked"
            } else if expires <= now {
                "expired"
            } else {
                "active"
            };
            Ok(TokenInfo {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                user: r.try_get("user_name")?,
                scopes: parse_scopes(&r.try_get::<String, _>("scopes")?)?,
                expires_at: crate::db::rfc3339(expires),
                created_at: crate::db::rfc3339(r.try_get("created_at")?),
                state: state.to_owned(),
            })
        })
        .collect()
}

/// Revokes a personal access token `who` owns (root: any).
pub async fn revoke_token(db: &Db, who: &Principal, id: i64) -> Result<(), ManagerError> {
    let done =
        sqlx::query("UPDATE tokens SET revoked = 1 WHERE id = $1 AND kind = 'personal' AND (user_id = $2 OR $3 = 1)")
            .bind(id)
            .bind(who.user_id)
            .bind(i64::from(who.role == Role::Root))
            .execute(&db.pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(ManagerError::NotFound(format!("no token {id} of yours")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(password_matches("correct horse", &h));
        assert!(!password_matches("wrong horse", &h));
        assert!(!password_matches("correct horse", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, ha) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("ferry_") && a.len() > 40);
        assert_eq!(ha, token_hash(&a));
        assert!(!ha.contains(&a));
    }

    #[test]
    fn scopes_parse_and_roles_bound_them() {
        assert_eq!(parse_scopes("job,task").unwrap(), vec![Scope::Job, Scope::Task]);
        assert!(parse_scopes("job,root").unwrap_err().to_string().contains("scopes are job"));
        assert!(!Role::Guest.scopes().contains(&Scope::Cluster));
        let p =
            Principal { user_id: 1, user: "x".into(), role: Role::Guest, scopes: vec![Scope::Task], session: false };
        assert!(matches!(p.require(Scope::Job), Err(ManagerError::Forbidden(_))));
        assert!(p.require(Scope::Task).is_ok());
    }
}
