//! A host's credentials (its current certificate and key, the CA it trusts) and the rustls
//! configurations made from them. The certificate is swapped in place on renewal: the
//! configurations resolve it per handshake, so connections made after a renewal present the
//! new one and nobody has to rebuild a config.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{provider, Member, MembershipError};

/// Whether a server requires a client certificate. `Optional` is for a port that also serves
/// the join call, which a host without a certificate yet must reach; every other call there
/// checks for a member itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

pub struct Credentials {
    member: Member,
    ca_der: CertificateDer<'static>,
    roots: Arc<RootCertStore>,
    current: RwLock<Current>,
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

fn tls_err(e: impl std::fmt::Display) -> MembershipError {
    MembershipError::Tls(e.to_string())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, MembershipError> {
    let key = provider().key_provider.load_private_key(key).map_err(tls_err)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The trust anchors of a cluster: its CA alone.
pub fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, MembershipError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone()).map_err(tls_err)?;
    Ok(Arc::new(roots))
}

impl Credentials {
    pub fn new(
        member: Member,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_der: CertificateDer<'static>,
        not_after: SystemTime,
    ) -> Result<Arc<Self>, MembershipError> {
        let current = Current { key: certified(chain, key)?, not_after };
        let roots = roots(&ca_der)?;
        Ok(Arc::new(Self { member, ca_der, roots, current: RwLock::new(current) }))
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// When the certificate in use ends.
    pub fn not_after(&self) -> SystemTime {
        self.current.read().unwrap_or_else(|e| e.into_inner()).not_after
    }

    /// Puts a renewed certificate in use for every handshake from now on.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        not_after: SystemTime,
    ) -> Result<(), MembershipError> {
        let next = Current { key: certified(chain, key)?, not_after };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).key.clone()
    }

    /// A server that presents this host's certificate and takes clients of this cluster.
    pub fn server_config(self: &Arc<Self>, clients: ClientAuth) -> Result<Arc<ServerConfig>, MembershipError> {
        let builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider());
        let verifier = match clients {
            ClientAuth::Required => builder.build(),
            ClientAuth::Optional => builder.allow_unauthenticated().build(),
        }
        .map_err(tls_err)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        Ok(Arc::new(config))
    }

    /// A client that presents this host's certificate and takes servers of this cluster (any
    /// member: the caller compares [`Member`]s after the handshake).
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, MembershipError> {
        let verifier = Arc::new(MemberVerifier { roots: self.roots.clone() });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.enable_sni = false;
        Ok(Arc::new(config))
    }
}

/// The name a client gives rustls; members are not told apart by name (see the crate docs).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("member.ferry.invalid").expect("a valid DNS name")
}

/// The member that presented the first certificate of `certs` (a verified chain).
pub fn peer_member(certs: Option<&[CertificateDer<'static>]>) -> Option<Member> {
    certs.and_then(|c| c.first()).and_then(|c| Member::from_cert(c).ok())
}

#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.member)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Takes a server whose chain leads to `roots` and whose certificate names a member; no
/// host name is checked.
#[derive(Debug)]
pub(crate) struct MemberVerifier {
    pub(crate) roots: Arc<RootCertStore>,
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = provider().signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, algs)?;
        Member::from_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A handshake signature checked with the provider's algorithms (every verifier here).
pub(crate) fn verify_tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

pub(crate) fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}
