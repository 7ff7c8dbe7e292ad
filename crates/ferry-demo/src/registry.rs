//! A real registry for tests and the testbed: the CNCF distribution server (`docker-registry`
//! in Debian) as a child process on loopback, with filesystem storage in a temporary
//! directory, optionally behind htpasswd basic auth, and its access log to count what it
//! served.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Registry {
    /// Killed when the registry is dropped (`kill_on_drop`).
    _child: Child,
    pub addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// htpasswd basic auth: the file's path (bcrypt entries, as the registry requires).
pub struct BasicAuth {
    pub htpasswd: PathBuf,
}

impl Registry {
    /// Starts `docker-registry` and waits until `/v2/` answers.
    pub async fn start(auth: Option<&BasicAuth>) -> std::io::Result<Self> {
        let auth = match auth {
            Some(a) => format!("auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n", a.htpasswd.display()),
            None => String::new(),
        };
        Self::start_with_auth(&auth).await
    }

    /// Starts `docker-registry` with `auth` as its config's `auth:` section (e.g. a
    /// [`crate::token::TokenIssuer`]'s).
    pub async fn start_with_auth(auth: &str) -> std::io::Result<Self> {
        Self::start_with("", auth).await
    }

    /// Starts `docker-registry` serving HTTPS with a certificate for `127.0.0.1` from
    /// [`test_ca`]; returns it with the CA certificate's path (to trust).
    pub async fn start_tls(dir: &Path) -> std::io::Result<(Self, PathBuf)> {
        let ca = test_ca(dir).await?;
        let tls = format!("  tls:\n    certificate: {}\n    key: {}\n", ca.cert.display(), ca.key.display());
        Ok((Self::start_with(&tls, "").await?, ca.ca))
    }

    /// `http` goes into the config's `http:` section, `auth` is its `auth:` section.
    async fn start_with(http: &str, auth: &str) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-registry-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = config(&addr, &dir.path().join("data"), http, auth);
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                std::io::Error::other(format!("start docker-registry (apt-get install docker-registry): {e}"))
            })?;
        let r = Self { _child: child, addr, log, _dir: dir };
        r.wait_ready().await?;
        Ok(r)
    }

    async fn wait_ready(&self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(&self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(std::io::Error::other(format!("docker-registry did not listen on {}; log:\n{}", self.addr, self.log())))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times the registry answered a `GET` of `digest` (blob or manifest) with its
    /// whole body (status 200; the mirror's one-byte access checks are 206).
    pub fn full_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/") && l.contains(digest) && status_and_bytes(l).is_some_and(|(s, _)| s == 200)
            })
            .count()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A CA made for a test and a server certificate for `127.0.0.1` it issued (PEM files).
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a [`TestCa`] in `dir` with `openssl` (a leaf, not a self-signed CA, as TLS clients
/// refuse a CA certificate used by a server).
pub async fn test_ca(dir: &Path) -> std::io::Result<TestCa> {
    let script = "set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \\
          -subj /CN=ferry-test-ca -keyout ca.key -out ca.crt
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \\
          -keyout server.key -out server.csr
        printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \\
          -extfile ext.cnf -out server.crt";
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| std::io::Error::other(format!("run openssl (apt-get install openssl): {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(std::io::Error::other(format!("openssl could not make the test CA: {err}")));
    }
    Ok(TestCa { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") })
}

/// A `docker-registry` config: listening on `addr`, storing under `root`, logging every
/// request; `http` goes into the `http:` section, `auth` is the `auth:` section.
pub fn config(addr: &str, root: &Path, http: &str, auth: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
         rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{http}{auth}",
        root.display()
    )
}

/// Body bytes the registry sent, summed over its access log's lines
/// (`"GET /v2/... HTTP/1.1" 200 <bytes> ...`).
pub fn bytes_served(log: &str) -> u64 {
    log.lines().filter_map(status_and_bytes).map(|(_, b)| b).sum()
}

/// The status and body bytes of an access-log line (`"... HTTP/1.1" 200 1234 ...`, or
/// `HTTP/2.0` when the client spoke HTTP/2 over TLS).
fn status_and_bytes(line: &str) -> Option<(u16, u64)> {
    let (_, after) = line.split_once(" HTTP/1.1\" ").or_else(|| line.split_once(" HTTP/2.0\" "))?;
    let mut fields = after.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Writes an htpasswd file with one bcrypt entry (via `htpasswd` from apache2-utils).
pub async fn htpasswd(dir: &Path, user: &str, password: &str) -> std::io::Result<BasicAuth> {
    let path = dir.join("htpasswd");
    let status = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&path)
        .args([user, password])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| std::io::Error::other(format!("run htpasswd (apt-get install apache2-utils): {e}")))?;
    if !status.success() {
        return Err(std::io::Error::other("htpasswd failed"));
    }
    Ok(BasicAuth { htpasswd: path })
}
