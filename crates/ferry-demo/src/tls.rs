//! HTTPS for the test servers: a throwaway CA made in process (rcgen) whose certificate
//! clients are told to trust (`--ca-cert`, `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`), a leaf
//! for `127.0.0.1`/`localhost` signed by it, and an accept loop serving an axum app over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A server configuration for loopback and the CA certificate (PEM) a client must trust.
pub struct TestTls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_pem: PathBuf,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl TestTls {
    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let ca_key = KeyPair::generate().map_err(io)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(io)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "ferry test CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(io)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().map_err(io)?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).map_err(io)?;
        leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(io)?;
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
            .map_err(io)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { config: Arc::new(config), ca_pem })
    }
}

/// Serves `app` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>, app: axum::Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}
