//! Membership end to end over real sockets: a join through the pinned TLS port, then mutual
//! TLS between members, and every kind of bad certificate refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_membership::creds::{peer_member, server_name, ClientAuth};
use ferry_membership::join::{join, JoinService};
use ferry_membership::{ClusterCa, Credentials, JoinToken, Member, MembershipError, Role};
use ferry_proto::membership::membership_server::MembershipServer;
use ferry_types::HostId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn member(host: &str, role: Role) -> Member {
    Member::new(HostId::new(host).unwrap(), role)
}

/// A join port as a scheduler serves it; returns its address.
async fn serve_join(ca: Arc<ClusterCa>, cancel: CancellationToken) -> String {
    let creds = ca.credentials_for(member("sched", Role::Scheduler)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = creds.server_config(ClientAuth::Optional).unwrap();
    let incoming = ferry_membership::grpc::incoming(listener, Some(tls), cancel.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MembershipServer::new(JoinService { ca }))
            .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned()),
    );
    addr
}

/// A server requiring members that answers each connection with the member it saw.
async fn echo_member(creds: &Arc<Credentials>) -> std::net::SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.server_config(ClientAuth::Required).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    let m = peer_member(tls.get_ref().1.peer_certificates()).map(|m| m.uri()).unwrap_or_default();
                    let _ = tls.write_all(m.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn ask(addr: std::net::SocketAddr, client: Arc<rustls::ClientConfig>) -> std::io::Result<String> {
    let sock = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(client).connect(server_name(), sock).await?;
    let mut s = String::new();
    tls.read_to_string(&mut s).await?;
    Ok(s)
}

/// In TLS 1.3 the client's handshake ends before the server has checked its certificate; a
/// refused client then reads an alert (an error) or nothing, never the answer.
fn refused(r: std::io::Result<String>) -> bool {
    !matches!(r, Ok(s) if !s.is_empty())
}

#[tokio::test]
async fn a_host_joins_with_the_token_and_members_see_each_other_by_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, token) = ClusterCa::create(dir.path()).unwrap();
    let ca = Arc::new(ca);
    let cancel = CancellationToken::new();
    let join_at = vec![serve_join(ca.clone(), cancel.clone()).await];

    let a = join(&join_at, &token, member("a", Role::Seed)).await.unwrap();
    let b = join(&join_at, &token, member("b", Role::Peer)).await.unwrap();
    let server = echo_member(&a).await;
    assert_eq!(ask(server, b.client_config().unwrap()).await.unwrap(), "ferry://member/peer/b");

    // A wrong secret is refused; a token pinning another CA never sends its secret.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, other_token) = ClusterCa::create(other_dir.path()).unwrap();
    let wrong_secret = JoinToken::parse(&format!(
        "{}.{}",
        other_token.expose().rsplit_once('.').unwrap().0,
        token.expose().rsplit_once('.').unwrap().1
    ))
    .unwrap();
    let e = join(&join_at, &wrong_secret, member("c", Role::Peer)).await.unwrap_err();
    assert!(e.to_string().contains("not accepted"), "{e}");
    let e = join(&join_at, &other_token, member("c", Role::Peer)).await.unwrap_err();
    assert!(matches!(e, MembershipError::Join { .. }), "{e}");

    // Members of another cluster, expired members and strangers without a certificate get
    // no byte.
    let stranger = other_ca.credentials_for(member("x", Role::Peer)).unwrap();
    assert!(refused(ask(server, stranger.client_config().unwrap()).await));
    let then = SystemTime::now() - Duration::from_secs(60);
    let (chain, key, end) = ca.issue_own_until(&member("old", Role::Peer), then).unwrap();
    let expired = Credentials::new(member("old", Role::Peer), chain, key, ca.ca_der().clone(), end).unwrap();
    assert!(refused(ask(server, expired.client_config().unwrap()).await));
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    assert!(refused(ask(server, Arc::new(anonymous)).await));
    cancel.cancel();
}

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
