//! Credentials for OCI registries, as container tools keep them (a docker `config.json`
//! with `auths`), and the registry auth flow that turns them into an `Authorization`
//! header: the registry's `401` challenge says `Basic`, or `Bearer` with a token service
//! (`realm`, `service`) that hands out a token for a scope (`repository:NAME:pull`) in
//! exchange for the credentials. Tokens are cached until shortly before they expire.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// `user:password` per registry host (`host[:port]`).
#[derive(Clone, Default)]
pub struct RegistryCredentials(HashMap<String, (String, String)>);

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hosts only: never a secret in a log.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A docker config host key (`https://index.docker.io/v1/`, `ghcr.io`, `localhost:5000`)
/// as the registry host requests go to.
fn normalize_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "docker.io" => "registry-1.docker.io".to_owned(),
        _ => host,
    }
}

impl RegistryCredentials {
    /// Reads a docker `config.json`: `{"auths": {"host": {"auth": base64("user:pass")}}}`
    /// (or `username`/`password` fields). The error names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bad = |why: String| format!("registry credentials {}: {why}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let auths = v["auths"].as_object().ok_or_else(|| bad("no `auths` object".into()))?;
        let mut out = HashMap::new();
        for (host, entry) in auths {
            let pair = match (entry["auth"].as_str(), entry["username"].as_str(), entry["password"].as_str()) {
                (Some(a), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| bad(format!("`auths.{host}.auth` is not base64")))?;
                    let s = String::from_utf8(raw).map_err(|_| bad(format!("`auths.{host}.auth` is not UTF-8")))?;
                    let (u, p) =
                        s.split_once(':').ok_or_else(|| bad(format!("`auths.{host}.auth` is not user:password")))?;
                    (u.to_owned(), p.to_owned())
                }
                (None, Some(u), Some(p)) => (u.to_owned(), p.to_owned()),
                _ => return Err(bad(format!("`auths.{host}` has neither `auth` nor `username` and `password`"))),
            };
            out.insert(normalize_host(host), pair);
        }
        Ok(Self(out))
    }

    pub fn has(&self, host: &str) -> bool {
        self.0.contains_key(&host.to_ascii_lowercase())
    }

    fn get(&self, host: &str) -> Option<&(String, String)> {
        self.0.get(&host.to_ascii_lowercase())
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Parses `Basic realm="x"` or `Bearer realm="https://auth",service="registry",scope="..."`.
fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer { realm: params.remove("realm")?, service: params.remove("service") })
}

/// The auth flow with cached results, for one set of credentials.
pub struct RegistryAuth {
    client: reqwest::Client,
    creds: RegistryCredentials,
    /// Ask token services for an anonymous token when no credentials are known (what a
    /// client does; a mirror passes the challenge on instead).
    anonymous: bool,
    /// By (host, scope): the header and when to stop using it.
    cache: Mutex<HashMap<(String, String), (String, Instant)>>,
}

/// A token without `expires_in` is good for 60 s (the distribution spec's default); reuse
/// stops this long before the end.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

impl RegistryAuth {
    pub fn new(client: reqwest::Client, creds: RegistryCredentials, anonymous: bool) -> Self {
        Self { client, creds, anonymous, cache: Mutex::default() }
    }

    pub fn has(&self, host: &str) -> bool {
        self.creds.has(host)
    }

    /// The `Authorization` header for reading `scope` (`repository:NAME:pull`, or none for
    /// `/v2/`) at the registry `base` (`scheme://host[:port]`), if credentials are known for
    /// it and the registry asks for them.
    pub async fn authorization(&self, base: &url::Url, scope: Option<&str>) -> Result<Option<String>, String> {
        let Some(host) = ferry_types::host_port(base) else { return Ok(None) };
        let pair = self.creds.get(&host);
        if pair.is_none() && !self.anonymous {
            return Ok(None);
        }
        let key = (host.clone(), scope.unwrap_or_default().to_owned());
        if let Some((h, until)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if Instant::now() < *until {
                return Ok(Some(h.clone()));
            }
        }
        let probe = base.join("/v2/").map_err(|e| e.to_string())?;
        let resp = self.client.get(probe).send().await.map_err(|e| format!("registry {host}: {e}"))?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).and_then(parse_challenge);
        let basic = pair
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let (header, ttl) = match (challenge, basic) {
            (Some(Challenge::Basic), Some(basic)) => (basic, Duration::from_secs(3600)),
            (Some(Challenge::Basic), None) => {
                return Err(format!("registry {host} asks for a password; give credentials with --registry-auth"))
            }
            (Some(Challenge::Bearer { realm, service }), basic) => {
                self.token(&realm, service.as_deref(), scope, basic.as_deref()).await?
            }
            (None, _) => return Err(format!("registry {host} answered 401 without a challenge Ferry knows")),
        };
        let until = Instant::now() + ttl.saturating_sub(TOKEN_MARGIN);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (header.clone(), until));
        Ok(Some(header))
    }

    /// A bearer token from the registry's token service.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        basic: Option<&str>,
    ) -> Result<(String, Duration), String> {
        let mut url = url::Url::parse(realm).map_err(|e| format!("token realm `{realm}`: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if let Some(s) = scope {
                q.append_pair("scope", s);
            }
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        let mut req = self.client.get(url);
        if let Some(b) = basic {
            req = req.header("authorization", b);
        }
        let resp = req.send().await;
        let resp = resp.map_err(|e| format!("token service {host}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("token service {host} refused the configured credentials ({})", resp.status()));
        }
        let v: serde_json::Value =
            crate::json_limited(resp, 1 << 20).await.map_err(|e| format!("token service {host}: {e}"))?;
        let token = v["token"].as_str().or(v["access_token"].as_str()).ok_or("token service sent no token")?;
        let ttl = Duration::from_secs(v["expires_in"].as_u64().unwrap_or(60));
        Ok((format!("Bearer {token}"), ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="registry""#), Some(Challenge::Basic));
        let c =
            parse_challenge(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer { realm: "https://auth.example/token".into(), service: Some("reg".into()) })
        );
        let c = parse_challenge("Bearer realm=https://a/t, service=r");
        assert_eq!(c, Some(Challenge::Bearer { realm: "https://a/t".into(), service: Some("r".into()) }));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }

    #[test]
    fn docker_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let text = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "localhost:5000": {{"username": "bob", "password": "pw"}}}}}}"#
        );
        std::fs::write(&p, text).unwrap();
        let c = RegistryCredentials::load(&p).unwrap();
        assert_eq!(c.get("registry-1.docker.io"), Some(&("alice".into(), "s3:cret".into())));
        assert_eq!(c.get("localhost:5000"), Some(&("bob".into(), "pw".into())));
        assert!(!format!("{c:?}").contains("cret"), "no secret in Debug");
        std::fs::write(&p, r#"{"auths": {"x": {"auth": "!!"}}}"#).unwrap();
        assert!(RegistryCredentials::load(&p).unwrap_err().contains("auths.x.auth"));
    }
}
