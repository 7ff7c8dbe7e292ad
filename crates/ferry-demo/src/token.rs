//! A registry token issuer (the Docker token-auth flow), for tests of registries behind
//! bearer tokens: `GET /token?service=..&scope=repository:NAME:ACTIONS` with basic auth
//! returns `{"token": JWT}`. One user may do everything; anyone without credentials gets a
//! token that grants nothing; wrong credentials get 401.
//!
//! The JWT is ES256, signed with a P-256 key made by `openssl`, and carries its certificate
//! in `x5c`; the registry trusts that certificate through its `rootcertbundle`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

pub const ISSUER: &str = "ferry-test-issuer";
pub const SERVICE: &str = "ferry-test-registry";

pub struct TokenIssuer {
    pub addr: std::net::SocketAddr,
    /// The certificate the registry must trust (`auth.token.rootcertbundle`).
    pub cert: PathBuf,
    _server: tokio::task::JoinHandle<()>,
}

struct Keys {
    key: PathBuf,
    x5c: String,
    user: String,
    password: String,
}

impl TokenIssuer {
    pub async fn start(dir: &Path, user: &str, password: &str) -> std::io::Result<Self> {
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        openssl(
            &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"],
            &[("-keyout", &key), ("-out", &cert)],
        )
        .await?;
        let der = dir.join("token-cert.der");
        openssl(&["x509", "-outform", "DER"], &[("-in", &cert), ("-out", &der)]).await?;
        let x5c = b64(&std::fs::read(&der)?, false);
        let keys = Arc::new(Keys { key, x5c, user: user.to_owned(), password: password.to_owned() });
        let app = axum::Router::new().route("/token", axum::routing::get(issue)).with_state(keys);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, cert, _server: server })
    }

    /// The registry's `auth:` section for this issuer.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            self.cert.display()
        )
    }
}

async fn openssl(args: &[&str], paths: &[(&str, &Path)]) -> std::io::Result<()> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(args);
    for (flag, p) in paths {
        cmd.arg(flag).arg(p);
    }
    if args.first() == Some(&"req") {
        cmd.args(["-subj", "/CN=ferry-test-token"]);
    }
    let out = cmd.output().await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

fn b64(bytes: &[u8], url: bool) -> String {
    use base64::Engine;
    if url {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    } else {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

async fn issue(
    State(keys): State<Arc<Keys>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "));
    let granted = match basic {
        None => false,
        Some(b) => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default();
            if decoded != format!("{}:{}", keys.user, keys.password).as_bytes() {
                return (StatusCode::UNAUTHORIZED, "wrong credentials").into_response();
            }
            true
        }
    };
    let access: Vec<serde_json::Value> = q
        .get("scope")
        .into_iter()
        .flat_map(|s| s.split(' '))
        .filter(|_| granted)
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect();
    match sign(&keys, access).await {
        Ok(token) => axum::Json(serde_json::json!({ "token": token, "access_token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn sign(keys: &Keys, access: Vec<serde_json::Value>) -> std::io::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [keys.x5c] });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": keys.user, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let input = format!("{}.{}", b64(header.to_string().as_bytes(), true), b64(claims.to_string().as_bytes(), true));
    let mut child = tokio::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&keys.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    let raw = der_to_raw(&out.stdout).ok_or_else(|| std::io::Error::other("openssl gave no ECDSA signature"))?;
    Ok(format!("{input}.{}", b64(&raw, true)))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// An ECDSA signature from DER (`SEQUENCE { INTEGER r, INTEGER s }`) to JOSE's `r || s`,
/// each 32 bytes.
fn der_to_raw(der: &[u8]) -> Option<Vec<u8>> {
    let mut i = 2; // SEQUENCE tag and (short) length
    if der.first() != Some(&0x30) {
        return None;
    }
    let mut out = vec![];
    for _ in 0..2 {
        if der.get(i) != Some(&0x02) {
            return None;
        }
        let len = *der.get(i + 1)? as usize;
        let int = der.get(i + 2..i + 2 + len)?;
        let int = &int[int.len().saturating_sub(32)..];
        out.resize(out.len() + 32 - int.len(), 0);
        out.extend_from_slice(int);
        i += 2 + len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn der_signatures_become_64_bytes() {
        // r with a leading zero (33 bytes), s short (31 bytes).
        let mut der = vec![0x30, 0x44, 0x02, 0x21, 0x00];
        der.extend([0xAA; 32]);
        der.extend([0x02, 0x1F]);
        der.extend([0xBB; 31]);
        let raw = super::der_to_raw(&der).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..32], &[0xAA; 32]);
        assert_eq!(raw[32], 0);
        assert_eq!(&raw[33..], &[0xBB; 31]);
    }
}
