//! Cluster membership against real processes: a cluster started with a CA and a join token
//! downloads over mutual TLS, and a stranger (no certificate, another cluster's, an expired
//! one, none at all but a Python socket) gets no piece, no bitfield and no scheduler state;
//! a member cannot speak for another host or pose as a seed; a rotated token no longer joins.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Setup, Spec};
use ferry_demo::cluster::DaemonInfo;
use ferry_membership::{ClusterCa, JoinToken, Member, MembershipError, Role};
use ferry_proto::daemon::DownloadRequest;
use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::{Host, HostMessage, StatsRequest};
use ferry_testkit::wait_until;
use ferry_types::HostId;

fn member(host: &str, role: Role) -> Member {
    Member::new(HostId::new(host).unwrap(), role)
}

/// Downloads `url` through `d` and returns the task's id as the daemon reports it.
async fn download_task(d: &DaemonInfo, url: &str, out: &Path) -> String {
    let mut c = ferry_daemon::local::connect(&d.socket).await.unwrap();
    let req = DownloadRequest { url: url.to_owned(), output: out.display().to_string(), ..Default::default() };
    let mut s = c.download(req).await.unwrap().into_inner();
    let mut task = String::new();
    while let Some(m) = s.message().await.unwrap() {
        if !m.task_id.is_empty() {
            task = m.task_id.clone();
        }
        if m.done {
            return task;
        }
    }
    panic!("the download ended without a result");
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A certificate and key from `ca` as PEM files for Python, valid until `until`.
fn cert_files(dir: &Path, name: &str, ca: &ClusterCa, until: SystemTime) -> (PathBuf, PathBuf) {
    let (chain, key, _) = ca.issue_own_until(&member(name, Role::Peer), until).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, chain.iter().map(|d| pem("CERTIFICATE", d)).collect::<String>()).unwrap();
    std::fs::write(&k, pem("PRIVATE KEY", key.secret_der())).unwrap();
    (c, k)
}

/// Runs the Python piece client; returns (bitfield seen, piece bytes received).
async fn python_reads(addr: &str, task: &str, mode: &str, cert: Option<&(PathBuf, PathBuf)>) -> (bool, u64) {
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/piece_client.py");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = tokio::process::Command::new(python);
    cmd.args([script, host, port, task, mode]);
    if let Some((c, k)) = cert {
        cmd.arg(c).arg(k);
    }
    let out = cmd.output().await.expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["bitfield"].as_bool().unwrap(), v["piece_bytes"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_strangers_read_no_piece_from_a_member_that_serves_members() {
    let s = Setup::start(Spec { peers: 2, membership: true, ..Default::default() }).await;
    let url = s.origin.url("f.bin");
    let out = s.out("p0");
    let task = download_task(&s.peers[0], &url, &out).await;
    assert!(s.verify("f.bin", &out), "a member downloads over mutual TLS");
    s.download_verified(&s.peers[1..], "f.bin").await;

    let ca = s.cluster.ca().unwrap();
    let dir = s.cluster.dir();
    let valid = cert_files(dir, "insider", ca, SystemTime::now() + Duration::from_secs(600));
    let expired = cert_files(dir, "expired", ca, SystemTime::now() - Duration::from_secs(60));
    let other_ca = ClusterCa::create(&dir.join("other-cluster")).unwrap().0;
    let foreign = cert_files(dir, "foreign", &other_ca, SystemTime::now() + Duration::from_secs(600));

    // The control: the same 30-line client with a member's certificate gets piece 0.
    let (bitfield, bytes) = python_reads(&s.seed.piece_addr, &task, "tls", Some(&valid)).await;
    assert!(bitfield && bytes == common::PIECE_BYTES, "a member reads: {bitfield} {bytes}");
    for (what, mode, cert) in [
        ("plain TCP", "plain", None),
        ("TLS without a certificate", "tls", None),
        ("an expired certificate", "tls", Some(&expired)),
        ("another cluster's certificate", "tls", Some(&foreign)),
    ] {
        for d in [&s.seed, &s.peers[0]] {
            let (bitfield, bytes) = python_reads(&d.piece_addr, &task, mode, cert).await;
            assert!(!bitfield && bytes == 0, "{what} at {}: bitfield {bitfield}, {bytes} piece bytes", d.name);
        }
    }
    let log = s.cluster.log_of("seed");
    let refused = log.lines().filter(|l| l.contains("refused a piece connection")).count();
    assert!(refused >= 4 && log.contains("127.0.0.1"), "each attempt is logged with its address:\n{log}");
}

/// A TLS client without a certificate that takes any server (what a stranger can do).
fn anonymous() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyServer;
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    Arc::new(config)
}

fn client(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> SchedulerClient<tonic::transport::Channel> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    SchedulerClient::new(ferry_membership::grpc::channel(ep, tls, None))
}

fn creds(ca: &ClusterCa, m: Member, until: SystemTime) -> Arc<rustls::ClientConfig> {
    let (chain, key, end) = ca.issue_own_until(&m, until).unwrap();
    let c = ferry_membership::Credentials::new(m, chain, key, ca.ca_der().clone(), end).unwrap();
    c.client_config().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_the_scheduler_tells_strangers_nothing_and_members_only_about_themselves() {
    let s = Setup::start(Spec { peers: 1, membership: true, ..Default::default() }).await;
    let addr = s.cluster.schedulers[0].clone();
    let ca = s.cluster.ca().unwrap();
    let later = SystemTime::now() + Duration::from_secs(600);
    let other_ca = ClusterCa::create(&s.cluster.dir().join("other-cluster")).unwrap().0;

    let mut insider = client(&addr, Some(creds(ca, member("insider", Role::Peer), later)));
    assert_eq!(insider.stats(StatsRequest {}).await.unwrap().into_inner().hosts, 2, "the control");
    let strangers = [
        ("plain gRPC", None),
        ("TLS without a certificate", Some(anonymous())),
        (
            "an expired certificate",
            Some(creds(ca, member("old", Role::Peer), SystemTime::now() - Duration::from_secs(60))),
        ),
        ("another cluster's certificate", Some(creds(&other_ca, member("x", Role::Peer), later))),
    ];
    for (what, tls) in strangers {
        let r = client(&addr, tls).stats(StatsRequest {}).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    let log = s.cluster.log_of("scheduler-0");
    assert!(log.contains("refused a call from a host that presented no cluster certificate"), "{log}");
    assert!(log.contains("refused a connection"), "{log}");

    // A member speaks only for itself, and only a seed's certificate makes a seed.
    for (id, seed) in [("seed", true), ("peer-0", false), ("insider", true)] {
        let host = Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 9, seed, ..Default::default() };
        let msg = HostMessage { host: Some(host), dropped: vec![] };
        let r = insider.host_session(futures::stream::iter([msg])).await;
        let e = r.err().unwrap_or_else(|| panic!("insider posing as {id} (seed {seed}) was taken"));
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_a_rotated_token_no_longer_joins() {
    let s = Setup::start(Spec { peers: 1, membership: true, ..Default::default() }).await;
    let dir = s.cluster.dir().join("membership");
    let token_path = dir.join(ferry_membership::ca::JOIN_TOKEN);
    let old = JoinToken::read(&token_path).unwrap();
    let addrs = s.cluster.schedulers.clone();
    assert!(ferry_membership::join::join(&addrs, &old, member("h1", Role::Peer)).await.is_ok());
    let out = std::process::Command::new(common::bin())
        .args(["membership", "rotate-token", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = JoinToken::read(&token_path).unwrap();
    assert_ne!(new, old);
    // Schedulers re-read the token file every 10 s.
    wait_until("the old token to be refused", Duration::from_secs(25), || {
        let (addrs, old) = (addrs.clone(), old.clone());
        async move {
            let r = ferry_membership::join::join(&addrs, &old, member("h2", Role::Peer)).await;
            matches!(r, Err(MembershipError::TokenRefused)).then_some(())
        }
    })
    .await;
    assert!(ferry_membership::join::join(&addrs, &new, member("h3", Role::Seed)).await.is_ok());
    // A daemon given the old token says why it cannot join and exits.
    std::fs::write(s.cluster.dir().join("old.token"), old.expose()).unwrap();
    let out = tokio::process::Command::new(common::bin())
        .args(["daemon", "--host-id", "late", "--piece-port", "0", "--mirror-listen", "off", "--scheduler", &addrs[0]])
        .arg("--data-dir")
        .arg(s.cluster.dir().join("late"))
        .arg("--socket")
        .arg(s.cluster.dir().join("late.sock"))
        .arg("--join-token-file")
        .arg(s.cluster.dir().join("old.token"))
        .env("FERRY_LOG", "warn")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("the daemon exits").unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not accepted"), "{}", String::from_utf8_lossy(&out.stderr));
}
