//! Cluster membership: who belongs to a Ferry cluster, and how every plane checks it.
//!
//! A cluster has its own CA. A host proves it belongs by a certificate from that CA, which it
//! gets by trading a join token (see [`token`]) with a role that holds the CA ([`ca`], served
//! over gRPC by [`join`]), and trades again before it expires ([`join::Renewal`]). The
//! certificate names the host and its role ([`Member`]); servers take the peer's identity
//! from the certificate it presented, never from what it says later in a message.
//!
//! [`creds`] holds a host's current certificate and makes the rustls configurations every
//! plane uses; [`grpc`] puts them under tonic (an accept loop that says who connected, a
//! connector that presents this host's certificate).
//!
//! Why mutual TLS with names in a URI SAN and no host names checked: members dial each
//! other by IP address (the address a host advertises to the scheduler), and what matters is
//! that the far end belongs to this cluster and is who the scheduler said, not which DNS name
//! it has. So peers verify the chain to the cluster CA and then compare the [`Member`] in the
//! certificate with what they expected.

pub mod ca;
pub mod creds;
pub mod grpc;
pub mod join;
mod member;
pub mod token;

pub use ca::ClusterCa;
pub use creds::Credentials;
pub use member::{Member, Role};
pub use token::JoinToken;

/// Certificates a CA issues to hosts are valid this long by default; a host renews at half.
/// Revoking a join token takes effect for a host no later than this (it cannot renew).
pub const DEFAULT_CERT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{path}: {source}")]
    ReadFile { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    WriteFile { path: String, source: std::io::Error },
    #[error("{path} already exists; remove it first to make a new cluster CA")]
    CaExists { path: String },
    #[error("{path}: not a {what}: {detail}")]
    BadPem { path: String, what: &'static str, detail: String },
    #[error("not a join token (expected ferry1.<id>.<secret>.<ca pin>): {0}")]
    BadToken(String),
    #[error("the join token was not accepted")]
    TokenRefused,
    #[error("role `{0}` cannot join with a token (peer or seed)")]
    RoleNotJoinable(String),
    #[error("unknown role `{0}` (scheduler, seed, peer or manager)")]
    BadRole(String),
    #[error("host id: {0}")]
    BadHostId(String),
    #[error("certificate signing request: {0}")]
    BadCsr(String),
    #[error("issue a certificate: {0}")]
    Issue(String),
    #[error("the certificate names no cluster member (no ferry://member/ URI)")]
    NotAMember,
    #[error("certificate: {0}")]
    BadCertificate(String),
    #[error("the server's CA does not match the join token's pin")]
    PinMismatch,
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("join at {addr}: {detail}")]
    Join { addr: String, detail: String },
}

/// The process-wide crypto provider: ring, as everywhere in Ferry.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            // AES-128-GCM first: pieces are bulk data and it is ~30 % cheaper than AES-256 (10
            // rounds against 14); the other TLS 1.3 suites stay for peers that prefer them.
            use rustls::crypto::ring::cipher_suite::{
                TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
            };
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
            std::sync::Arc::new(p)
        })
        .clone()
}

/// Unix seconds of a time, for certificates and tokens.
pub(crate) fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
