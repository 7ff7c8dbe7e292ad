//! Joining: the gRPC service a CA holder serves ([`JoinService`]), the call a host makes
//! with its token ([`join`]), and the worker that trades again before the certificate ends
//! ([`Renewal`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::membership::membership_client::MembershipClient;
use ferry_proto::membership::membership_server::Membership;
use ferry_proto::membership::{JoinRequest, JoinResponse};
use ferry_types::HostId;
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::creds::{roots, MemberVerifier};
use crate::grpc::PeerInfo;
use crate::{provider, ClusterCa, Credentials, JoinToken, Member, MembershipError};

/// Serves `Join` for the CA this process holds.
pub struct JoinService {
    pub ca: Arc<ClusterCa>,
}

#[tonic::async_trait]
impl Membership for JoinService {
    async fn join(&self, req: tonic::Request<JoinRequest>) -> Result<tonic::Response<JoinResponse>, tonic::Status> {
        let remote = req.extensions().get::<PeerInfo>().map(|p| p.remote.to_string()).unwrap_or_default();
        let r = req.into_inner();
        let invalid = |e: MembershipError| tonic::Status::invalid_argument(e.to_string());
        let host = HostId::new(r.host_id).map_err(|e| invalid(MembershipError::BadHostId(e.to_string())))?;
        let member = Member::new(host, r.role.parse().map_err(invalid)?);
        match self.ca.join(&r.token, &member, &r.csr) {
            Ok(issued) => {
                tracing::info!(%remote, %member, "issued a member certificate");
                Ok(tonic::Response::new(JoinResponse {
                    chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
                    not_after: crate::unix(issued.not_after),
                }))
            }
            Err(e @ (MembershipError::TokenRefused | MembershipError::RoleNotJoinable(_))) => {
                tracing::warn!(%remote, %member, error = %e, "refused a join");
                Err(tonic::Status::permission_denied(e.to_string()))
            }
            Err(e @ MembershipError::BadCsr(_)) => Err(invalid(e)),
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        }
    }
}

/// Trades `token` for a certificate naming `member`, at the first of `addrs` that answers.
/// The server must show the CA the token pins before the token is sent.
pub async fn join(addrs: &[String], token: &JoinToken, member: Member) -> Result<Arc<Credentials>, MembershipError> {
    let (chain, key, not_after) = join_any(addrs, token, &member).await?;
    let ca = chain.last().cloned().expect("checked: the chain ends with the pinned CA");
    Credentials::new(member, chain, key, ca, not_after)
}

type Certified = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, SystemTime);

async fn join_any(addrs: &[String], token: &JoinToken, member: &Member) -> Result<Certified, MembershipError> {
    let mut last = MembershipError::Join { addr: "(none)".into(), detail: "no address to join at".into() };
    for addr in addrs {
        match join_at(addr, token, member).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn join_at(addr: &str, token: &JoinToken, member: &Member) -> Result<Certified, MembershipError> {
    let fail = |detail: String| MembershipError::Join { addr: addr.to_owned(), detail };
    let key = KeyPair::generate().map_err(|e| MembershipError::Issue(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, member.host.as_str());
    let csr = params.serialize_request(&key).map_err(|e| MembershipError::Issue(e.to_string()))?;
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let ep = Endpoint::from_shared(uri).map_err(|e| fail(e.to_string()))?.connect_timeout(Duration::from_secs(3));
    let channel = crate::grpc::channel(ep, Some(pinned_client(token.pin)?), None);
    let req = JoinRequest {
        token: token.expose(),
        csr: csr.der().to_vec(),
        host_id: member.host.to_string(),
        role: member.role.to_string(),
    };
    let resp = match MembershipClient::new(channel).join(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::PermissionDenied => return Err(MembershipError::TokenRefused),
        Err(s) => return Err(fail(s.message().to_owned())),
    };
    let chain: Vec<CertificateDer<'static>> = resp.chain.into_iter().map(CertificateDer::from).collect();
    let pinned = chain.last().map(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref()))) == Some(token.pin);
    if chain.len() < 2 || !pinned {
        return Err(MembershipError::PinMismatch);
    }
    if Member::from_cert(&chain[0])? != *member {
        return Err(fail("the certificate names another member".into()));
    }
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(resp.not_after);
    Ok((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())), not_after))
}

/// A client with no certificate of its own that takes only a server whose chain holds the CA
/// with SHA-256 `pin` and leads to it.
fn pinned_client(pin: [u8; 32]) -> Result<Arc<rustls::ClientConfig>, MembershipError> {
    let verifier = Arc::new(PinnedVerifier { pin });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MembershipError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let refused = || rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure);
        let ca = intermediates
            .iter()
            .find(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())) == self.pin)
            .ok_or_else(refused)?;
        let roots = roots(&ca.clone().into_owned()).map_err(|_| refused())?;
        MemberVerifier { roots }.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        crate::creds::verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        crate::creds::verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Where a member's certificate comes from again before it ends.
pub enum Source {
    /// A host's: the join token, traded at these addresses.
    Token { addrs: Vec<String>, token: JoinToken },
    /// A CA holder's own: issued in process.
    Ca(Arc<ClusterCa>),
}

/// Renews `creds` at half its remaining life, retrying every `retry` until it ends.
pub struct Renewal {
    pub creds: Arc<Credentials>,
    pub source: Source,
}

impl Renewal {
    pub async fn run(self, cancel: CancellationToken) {
        const RETRY: Duration = Duration::from_secs(10);
        let left = |c: &Credentials| c.not_after().duration_since(SystemTime::now()).unwrap_or_default();
        let mut wait = left(&self.creds) / 2;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            }
            let renewed = match &self.source {
                Source::Token { addrs, token } => join_any(addrs, token, self.creds.member()).await,
                Source::Ca(ca) => ca.issue_own(self.creds.member()),
            };
            match renewed.and_then(|(chain, key, end)| self.creds.replace(chain, key, end).map(|_| end)) {
                Ok(end) => {
                    tracing::info!(member = %self.creds.member(), until = crate::unix(end), "renewed the member certificate");
                    wait = left(&self.creds) / 2;
                }
                Err(e) => {
                    let left = left(&self.creds);
                    tracing::warn!(error = %e, left_s = left.as_secs(), "could not renew the member certificate; trying again");
                    wait = RETRY.min(left);
                }
            }
        }
    }
}
