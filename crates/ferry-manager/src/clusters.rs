//! Scheduler clusters (their scheduling settings and the scopes of hosts they serve) and the
//! registry of the schedulers and seeds that keep alive with the manager.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::{now_ms, rfc3339, Db};
use crate::search::{Candidate, HostFacts, Scopes};
use crate::ManagerError;

/// A cluster's scheduling settings; an absent one leaves the role's own flag in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents_per_peer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub children_per_parent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub back_to_source_budget: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_rate_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_concurrency: Option<u32>,
}

impl ClusterConfig {
    pub fn to_proto(&self) -> ferry_proto::manager::ClusterConfig {
        ferry_proto::manager::ClusterConfig {
            parents_per_peer: self.parents_per_peer.unwrap_or(0),
            children_per_parent: self.children_per_parent.unwrap_or(0),
            back_to_source_budget: self.back_to_source_budget.unwrap_or(0),
            upload_rate_bytes: self.upload_rate_bytes.unwrap_or(0),
            origin_concurrency: self.origin_concurrency.unwrap_or(0),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub is_default: bool,
    pub config: ClusterConfig,
    pub scopes: Scopes,
    pub created_at: String,
    pub updated_at: String,
}

/// A cluster to create, or the fields of one to change.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_default: Option<bool>,
    pub config: Option<ClusterConfig>,
    pub scopes: Option<Scopes>,
}

/// A scheduler or seed that keeps alive with the manager.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    pub id: i64,
    pub cluster_id: i64,
    pub hostname: String,
    pub ip: String,
    pub port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// `active` while it keeps alive, `inactive` once silent for three intervals.
    pub state: String,
    pub last_seen: String,
}

fn cluster_of(r: &AnyRow) -> Result<Cluster, ManagerError> {
    let json = |col: &str| -> Result<String, ManagerError> { Ok(r.try_get::<String, _>(col)?) };
    Ok(Cluster {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        is_default: r.try_get::<i64, _>("is_default")? != 0,
        config: serde_json::from_str(&json("config")?).map_err(|e| ManagerError::Internal(e.to_string()))?,
        scopes: serde_json::from_str(&json("scopes")?).map_err(|e| ManagerError::Internal(e.to_string()))?,
        created_at: rfc3339(r.try_get("created_at")?),
        updated_at: rfc3339(r.try_get("updated_at")?),
    })
}

fn check_name(name: &str) -> Result<(), ManagerError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ManagerError::BadRequest(format!(
            "cluster name `{name}`: 1 to 64 characters among letters, digits, `-`, `_` and `.`"
        )));
    }
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<Cluster>, ManagerError> {
    let rows = sqlx::query("SELECT * FROM clusters ORDER BY id").fetch_all(&db.pool).await?;
    rows.iter().map(cluster_of).collect()
}

pub async fn get(db: &Db, id: i64) -> Result<Cluster, ManagerError> {
    let row = sqlx::query("SELECT * FROM clusters WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    cluster_of(&row.ok_or_else(|| unknown(id))?)
}

pub fn unknown(id: i64) -> ManagerError {
    ManagerError::NotFound(format!("no cluster {id}; `ferry cluster list` shows the clusters"))
}

pub async fn create(db: &Db, input: ClusterInput) -> Result<Cluster, ManagerError> {
    let name = input.name.ok_or_else(|| ManagerError::BadRequest("a cluster needs a `name`".into()))?;
    check_name(&name)?;
    let scopes = input.scopes.unwrap_or_default();
    scopes.validate().map_err(ManagerError::BadRequest)?;
    let config = input.config.unwrap_or_default();
    let is_default = input.is_default.unwrap_or(false);
    let mut tx = db.pool.begin().await?;
    if is_default {
        sqlx::query("UPDATE clusters SET is_default = 0").execute(&mut *tx).await?;
    }
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO clusters (name, description, is_default, config, scopes, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
    )
    .bind(&name)
    .bind(input.description.unwrap_or_default())
    .bind(i64::from(is_default))
    .bind(serde_json::to_string(&config).expect("serializable"))
    .bind(serde_json::to_string(&scopes).expect("serializable"))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    get(db, row.try_get("id")?).await
}

/// Changes the fields `input` names; the others stay.
pub async fn update(db: &Db, id: i64, input: ClusterInput) -> Result<Cluster, ManagerError> {
    let mut c = get(db, id).await?;
    if let Some(n) = input.name {
        check_name(&n)?;
        c.name = n;
    }
    if let Some(s) = input.scopes {
        s.validate().map_err(ManagerError::BadRequest)?;
        c.scopes = s;
    }
    if let Some(d) = input.description {
        c.description = d;
    }
    if let Some(cfg) = input.config {
        c.config = cfg;
    }
    let mut tx = db.pool.begin().await?;
    if input.is_default == Some(true) {
        sqlx::query("UPDATE clusters SET is_default = 0").execute(&mut *tx).await?;
        c.is_default = true;
    } else if input.is_default == Some(false) {
        c.is_default = false;
    }
    sqlx::query(
        "UPDATE clusters SET name = $1, description = $2, is_default = $3, config = $4, scopes = $5, \
         updated_at = $6 WHERE id = $7",
    )
    .bind(&c.name)
    .bind(&c.description)
    .bind(i64::from(c.is_default))
    .bind(serde_json::to_string(&c.config).expect("serializable"))
    .bind(serde_json::to_string(&c.scopes).expect("serializable"))
    .bind(now_ms())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(db, id).await
}

pub async fn delete(db: &Db, id: i64) -> Result<(), ManagerError> {
    let done = sqlx::query("DELETE FROM clusters WHERE id = $1").bind(id).execute(&db.pool).await?;
    if done.rows_affected() == 0 {
        return Err(unknown(id));
    }
    Ok(())
}

/// Creates cluster `default` (the default cluster, no scopes) when none exists, so
/// schedulers started with `--cluster-id 1` and daemons find one at first start. Safe when
/// several managers start at once: one insert wins.
pub async fn ensure_default(db: &Db) -> Result<(), ManagerError> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM clusters").fetch_one(&db.pool).await?.try_get("n")?;
    if n > 0 {
        return Ok(());
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO clusters (name, description, is_default, config, scopes, created_at, updated_at) \
         VALUES ('default', 'created at first start', 1, '{}', '{}', $1, $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The cluster a host belongs to by the scopes (see [`crate::search`]).
pub async fn search(db: &Db, host: &HostFacts) -> Result<Option<Cluster>, ManagerError> {
    let all = list(db).await?;
    let candidates: Vec<Candidate<'_>> =
        all.iter().map(|c| Candidate { id: c.id, is_default: c.is_default, scopes: &c.scopes }).collect();
    let id = crate::search::pick(&candidates, host);
    Ok(id.and_then(|id| all.into_iter().find(|c| c.id == id)))
}

/// Records a scheduler's keepalive (a scheduler that moved clusters moves with it).
pub async fn scheduler_alive(db: &Db, cluster: i64, hostname: &str, ip: &str, port: u16) -> Result<(), ManagerError> {
    sqlx::query(
        "INSERT INTO schedulers (cluster_id, hostname, ip, port, last_seen) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ip, port) DO UPDATE SET cluster_id = $1, hostname = $2, last_seen = $5",
    )
    .bind(cluster)
    .bind(hostname)
    .bind(ip)
    .bind(i64::from(port))
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records a seed daemon's keepalive.
pub async fn seed_alive(
    db: &Db,
    cluster: i64,
    host_id: &str,
    hostname: &str,
    ip: &str,
    port: u16,
) -> Result<(), ManagerError> {
    sqlx::query(
        "INSERT INTO seeds (cluster_id, host_id, hostname, ip, port, last_seen) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (host_id) DO UPDATE SET cluster_id = $1, hostname = $3, ip = $4, port = $5, last_seen = $6",
    )
    .bind(cluster)
    .bind(host_id)
    .bind(hostname)
    .bind(ip)
    .bind(i64::from(port))
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The schedulers (or seeds) of one cluster, or of every cluster; `silent_ms` after its last
/// keepalive a member is inactive.
pub async fn members(
    db: &Db,
    table: Members,
    cluster: Option<i64>,
    silent_ms: i64,
) -> Result<Vec<Member>, ManagerError> {
    let (sql, seeds) = match table {
        Members::Schedulers => ("SELECT * FROM schedulers", false),
        Members::Seeds => ("SELECT * FROM seeds", true),
    };
    let sql = format!("{sql} WHERE ($1 = 0 OR cluster_id = $1) ORDER BY id");
    let rows = sqlx::query(&sql).bind(cluster.unwrap_or(0)).fetch_all(&db.pool).await?;
    let now = now_ms();
    rows.iter()
        .map(|r| {
            let last: i64 = r.try_get("last_seen")?;
            Ok(Member {
                id: r.try_get("id")?,
                cluster_id: r.try_get("cluster_id")?,
                hostname: r.try_get("hostname")?,
                ip: r.try_get("ip")?,
                port: r.try_get("port")?,
                host_id: if seeds { Some(r.try_get("host_id")?) } else { None },
                state: if now - last <= silent_ms { "active" } else { "inactive" }.to_owned(),
                last_seen: rfc3339(last),
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
pub enum Members {
    Schedulers,
    Seeds,
}
