//! Object stores as origins: `ferry get s3://...` (one object, and `-r` a prefix) against a
//! real S3 implementation, moto's server (PyPI; scripts/test installs it). Wrong
//! credentials are tried against a second moto with IAM auth enforced (moto's signature
//! check rejects valid signed list requests whose prefix holds `/`, so the listing runs
//! against the first, which checks no signatures). Azure Blob Storage runs as Azurite.
//! No GCS test: the one emulator the reachable registries have (gcp-storage-emulator, PyPI)
//! answers neither `HEAD` nor with the `ETag`/`Last-Modified` headers GCS sends, which the
//! GCS client needs; fake-gcs-server is a Go binary from GitHub.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Setup, Spec};
use ferry_demo::data;

/// Objects the setup script puts into bucket `models` (key, bytes).
fn objects() -> Vec<(String, Vec<u8>)> {
    vec![
        ("model/w1.bin".into(), data::generate(31, 3 << 20).to_vec()),
        ("model/sub/w2.bin".into(), data::generate(32, 1 << 20).to_vec()),
        ("model/config.json".into(), br#"{"model_type":"test"}"#.to_vec()),
        ("other/x.bin".into(), data::generate(33, 1000).to_vec()),
    ]
}

/// Creates an IAM user with an access key, the bucket and its objects; prints the key.
const SETUP: &str = r#"
import boto3, json, os, sys
ep, src, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
iam.create_user(UserName="ferry")
key = iam.create_access_key(UserName="ferry")["AccessKey"]
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="ferry", PolicyName="all", PolicyDocument=json.dumps(policy))
s3.create_bucket(Bucket=bucket)
for root, _, files in os.walk(src):
    for f in sorted(files):
        p = os.path.join(root, f)
        s3.put_object(Bucket=bucket, Key=os.path.relpath(p, src), Body=open(p, "rb").read())
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"#;

/// moto's S3 server, killed when dropped.
struct Moto {
    _child: tokio::process::Child,
    endpoint: String,
}

fn python() -> String {
    std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Moto {
    /// Starts moto; with `free`, IAM auth is enforced after that many requests (the setup's).
    async fn start(free: Option<usize>) -> Self {
        Self::start_with(free, None).await
    }

    /// With `tls` (certificate, key), moto serves HTTPS.
    async fn start_with(free: Option<usize>, tls: Option<(&Path, &Path)>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = PathBuf::from(python()).with_file_name("moto_server");
        let mut cmd = tokio::process::Command::new(server);
        if let Some(n) = free {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        if let Some((cert, key)) = tls {
            cmd.arg("--ssl-cert").arg(cert).arg("--ssl-key").arg(key);
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server (scripts/test installs moto[server])");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        ferry_testkit::wait_until("moto to listen", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        Self { _child: child, endpoint }
    }
}

fn write_tree(dir: &Path, objs: &[(String, Vec<u8>)]) {
    for (k, v) in objs {
        let p = dir.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

/// The daemons (and this test's own listing) read these.
fn set_aws_env(endpoint: &str, id: &str, secret: &str) {
    for (k, v) in [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ] {
        std::env::set_var(k, v);
    }
}

/// Runs the setup script against `moto` with the objects under `src`; returns the new key.
async fn setup(moto: &Moto, src: &Path, bucket: &str) -> (String, String) {
    let cmd = tokio::process::Command::new(python()).args(["-c", SETUP, &moto.endpoint]).arg(src).arg(bucket).output();
    let out = cmd.await.unwrap();
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (key["id"].as_str().unwrap().to_owned(), key["secret"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_and_prefixes_reach_daemons_with_the_store_read_once() {
    let objs = objects();
    let moto = Moto::start(None).await;
    let work = tempfile::tempdir().unwrap();
    write_tree(&work.path().join("src"), &objs);
    let (id, secret) = setup(&moto, &work.path().join("src"), "models").await;
    set_aws_env(&moto.endpoint, &id, &secret);

    let s = Setup::start(Spec { peers: 3, files: &[("unused", 1)], ..Default::default() }).await;
    // One object on every peer: the bytes, and the store read once (the others from peers).
    let mut origin_bytes = 0;
    for p in &s.peers {
        let o = common::ferry_get(&p.socket, "s3://models/model/w1.bin", &work.path().join(&p.name), &["--json"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(work.path().join(&p.name)).unwrap(), objs[0].1);
        origin_bytes += common::stats(p).await.unwrap().bytes_from_origin;
    }
    let seed = common::stats(&s.seed).await.unwrap().bytes_from_origin;
    assert_eq!(origin_bytes + seed, objs[0].1.len() as u64, "the object left the store once");

    // A prefix with -r: every object under it, each its own task; others not.
    let dir = work.path().join("tree");
    let o = common::ferry_get(&s.peers[0].socket, "s3://models/model/", &dir, &["-r", "--json"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (k, v) in objs.iter().filter(|(k, _)| k.starts_with("model/")) {
        assert_eq!(&std::fs::read(dir.join(k.strip_prefix("model/").unwrap())).unwrap(), v, "{k}");
    }
    assert!(!dir.join("x.bin").exists() && !work.path().join("tree/other").exists());

    // A ranged read, as a resumed task makes one.
    let backends = ferry_backend::Backends::new(&Default::default()).unwrap();
    let req =
        ferry_types::OriginRequest::new("s3://models/model/w1.bin".parse().unwrap(), vec![], None, vec![]).unwrap();
    let mut body = backends.open(&req, 1_000_000).await.unwrap();
    assert_eq!(body.validators.length, objs[0].1.len() as u64);
    let mut tail = vec![];
    while let Some(c) = body.chunk().await.unwrap() {
        tail.extend_from_slice(&c);
    }
    assert_eq!(tail, objs[0].1[1_000_000..]);

    // A missing key: 404, exit 4, no file.
    let missing = work.path().join("missing");
    let o = common::ferry_get(&s.peers[0].socket, "s3://models/model/none.bin", &missing, &[]).await;
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("404") && !missing.exists());

    // Bad input: a scheme Ferry does not know, a malformed bucket.
    for (url, says) in [("ftp://models/x", "unsupported URL scheme"), ("s3://Bad_Bucket/x", "not a bucket name")] {
        let o = common::ferry_get(&s.peers[0].socket, url, &work.path().join("bad"), &[]).await;
        assert_eq!(o.status.code(), Some(ferry::exit::USAGE as i32), "{url}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{url}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Against a store that checks keys, a cluster whose seed has the right key: a daemon with
/// the right key reads; one with a key the store does not know gets 403, exit 4 and no
/// file — though its neighbours hold the object (each daemon proves its own access).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_key_the_store_refuses_gets_403_even_from_peers() {
    let objs = [objects()[3].clone()];
    let moto = Moto::start(Some(4 + objs.len())).await;
    let work = tempfile::tempdir().unwrap();
    write_tree(&work.path().join("src"), &objs);
    let (id, secret) = setup(&moto, &work.path().join("src"), "strict").await;
    set_aws_env(&moto.endpoint, &id, &secret);
    let mut s = Setup::start(Spec { peers: 1, files: &[("unused", 1)], ..Default::default() }).await;
    let url = format!("s3://strict/{}", objs[0].0);
    let o = common::ferry_get(&s.peers[0].socket, &url, &work.path().join("r"), &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(work.path().join("r")).unwrap(), objs[0].1);
    set_aws_env(&moto.endpoint, "AKIAWRONGWRONGWRONG1", "wrong");
    let wrong = s.cluster.start_daemon("wrong-key", false, &[]).await.unwrap();
    s.wait_hosts(3).await;
    let o = common::ferry_get(&wrong.socket, &url, &work.path().join("w"), &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{err}");
    assert!(err.contains("403"), "{err}");
    assert!(!work.path().join("w").exists());
}

/// Azurite's well-known development account key.
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates container `models` and uploads the tree under `src` with azure-storage-blob.
const AZURE_SETUP: &str = r#"
import os, sys
from azure.storage.blob import BlobServiceClient
url, key, src = sys.argv[1], sys.argv[2], sys.argv[3]
conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={url}/devstoreaccount1;"
c = BlobServiceClient.from_connection_string(conn).create_container("models")
for root, _, files in os.walk(src):
    for f in sorted(files):
        p = os.path.join(root, f)
        c.upload_blob(os.path.relpath(p, src), open(p, "rb").read())
"#;

/// Azure Blob Storage as Azurite (npm; scripts/test installs it) serves it: an object, a
/// prefix with `-r`, and a daemon with a wrong account key refused with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blobs_through_azurite() {
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bin = std::env::var("FERRY_TEST_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
    let _azurite = tokio::process::Command::new(bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck"])
        .arg("--location")
        .arg(work.path().join("azurite"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("azurite-blob (scripts/test installs azurite)");
    ferry_testkit::wait_until("azurite to listen", Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    let url = format!("http://127.0.0.1:{port}");
    let objs = objects();
    write_tree(&work.path().join("src"), &objs);
    let out = tokio::process::Command::new(python())
        .args(["-c", AZURE_SETUP, &url, AZURITE_KEY])
        .arg(work.path().join("src"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "setup: {}", String::from_utf8_lossy(&out.stderr));
    std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", &url);
    std::env::remove_var("AZURE_STORAGE_ACCOUNT_KEY");

    let mut s = Setup::start(Spec { peers: 2, files: &[("unused", 1)], ..Default::default() }).await;
    for p in &s.peers {
        let o = common::ferry_get(&p.socket, "azblob://models/model/w1.bin", &work.path().join(&p.name), &[]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(work.path().join(&p.name)).unwrap(), objs[0].1);
    }
    let dir = work.path().join("tree");
    let o = common::ferry_get(&s.peers[0].socket, "azblob://models/model", &dir, &["-r"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (k, v) in objs.iter().filter(|(k, _)| k.starts_with("model/")) {
        assert_eq!(&std::fs::read(dir.join(k.strip_prefix("model/").unwrap())).unwrap(), v, "{k}");
    }
    // A wrong account key (still valid base64): the store's 403, exit 4.
    std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", "d3JvbmcgZmVycnkgdGVzdCBrZXkgZm9yIGF6dXJpdGU=");
    let wrong = s.cluster.start_daemon("wrong-key", false, &[]).await.unwrap();
    let o = common::ferry_get(&wrong.socket, "azblob://models/model/w1.bin", &work.path().join("w"), &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{err}");
    assert!(err.contains("403"), "{err}");
}

/// An S3 endpoint behind a private CA: TLS is verified, so a daemon given the CA
/// (`--ca-cert`) reads the object and one without it is refused, exit 4, with a line that
/// names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_endpoint_with_a_private_ca_is_verified() {
    let work = tempfile::tempdir().unwrap();
    let ca = ferry_demo::registry::test_ca(work.path()).await.unwrap();
    let moto = Moto::start_with(None, Some((&ca.cert, &ca.key))).await;
    let objs = [objects()[3].clone()];
    write_tree(&work.path().join("src"), &objs);
    std::env::set_var("AWS_CA_BUNDLE", &ca.ca); // boto3, for the set-up
    let (id, secret) = setup(&moto, &work.path().join("src"), "tls").await;
    set_aws_env(&moto.endpoint, &id, &secret);
    std::env::remove_var("AWS_ALLOW_HTTP");
    let ca_arg = ca.ca.display().to_string();
    let args = ["--ca-cert", ca_arg.as_str()];
    let mut s = Setup::start(Spec {
        peers: 1,
        files: &[("unused", 1)],
        peer_args: &args,
        seed_args: &args,
        ..Default::default()
    })
    .await;
    let url = format!("s3://tls/{}", objs[0].0);
    let o = common::ferry_get(&s.peers[0].socket, &url, &work.path().join("ok"), &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(work.path().join("ok")).unwrap(), objs[0].1);
    let plain = s.cluster.start_daemon("no-ca", false, &[]).await.unwrap();
    let o = common::ferry_get(&plain.socket, &url, &work.path().join("no"), &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{err}");
    assert!(err.contains("certificate") && err.contains("--ca-cert"), "{err}");
    assert!(!work.path().join("no").exists());
}
