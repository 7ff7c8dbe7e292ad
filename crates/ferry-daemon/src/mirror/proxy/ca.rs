//! The proxy's certificate authority: the operator's (a PEM certificate and key), or one
//! Ferry generates once into the data directory and keeps across restarts, so clients trust
//! it once. It signs a leaf certificate per configured host on first use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::DaemonError;

/// Leaf certificates are valid this long from when they are made (a day back, for clocks
/// that run behind).
const LEAF_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// One key for every leaf; only the certificates differ by host.
    leaf_key: KeyPair,
    /// A TLS configuration per host, made on first use.
    configs: Mutex<HashMap<String, Arc<ServerConfig>>>,
    /// Where the CA certificate is, for clients to trust.
    pub cert_path: PathBuf,
}

fn ca_error(what: impl std::fmt::Display) -> DaemonError {
    DaemonError::Proxy(format!("proxy CA: {what}"))
}

impl Ca {
    /// The operator's CA from `files` (certificate, key), or the one in `dir` (made there
    /// if there is none yet).
    pub fn load(files: Option<(&Path, &Path)>, dir: &Path) -> Result<Self, DaemonError> {
        let (cert_path, key_path) = match files {
            Some((c, k)) => (c.to_owned(), k.to_owned()),
            None => {
                let (c, k) = (dir.join("proxy-ca.crt"), dir.join("proxy-ca.key"));
                if !c.exists() || !k.exists() {
                    generate(&c, &k)?;
                }
                (c, k)
            }
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| ca_error(format!("read {}: {e}", p.display())));
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| ca_error(format!("{} is not a PEM private key: {e}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| ca_error(format!("{} is not a PEM CA certificate: {e}", cert_path.display())))?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_error(format!("{}: {e}", cert_path.display())))?;
        let leaf_key = KeyPair::generate().map_err(ca_error)?;
        Ok(Self { issuer, ca_der, leaf_key, configs: Mutex::default(), cert_path })
    }

    /// The TLS server configuration presenting a certificate for `host` (a name or an IP).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, DaemonError> {
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(host) {
            return Ok(c.clone());
        }
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, host);
        let san = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_owned().try_into().map_err(ca_error)?),
        };
        params.subject_alt_names = vec![san];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        (params.not_before, params.not_after) = validity(LEAF_DAYS);
        let cert = params.signed_by(&self.leaf_key, &self.issuer).map_err(ca_error)?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ca_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(ca_error)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        configs.insert(host.to_owned(), config.clone());
        Ok(config)
    }
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::days(1), now + time::Duration::days(days))
}

/// Makes a CA certificate and key at `cert` and `key` (the key readable by its owner only).
fn generate(cert: &Path, key: &Path) -> Result<(), DaemonError> {
    let pair = KeyPair::generate().map_err(ca_error)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Ferry proxy CA");
    params.distinguished_name.push(DnType::OrganizationName, "Ferry");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.not_before, params.not_after) = validity(CA_DAYS);
    let made = params.self_signed(&pair).map_err(ca_error)?;
    write_new(key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "generated the proxy's CA; clients must trust this certificate");
    Ok(())
}

/// Writes a file whole or not at all (a temporary beside it, renamed).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| ca_error(format!("write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ca_is_kept_and_signs_leaves_for_names_and_ips() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load(None, dir.path()).unwrap();
        let first = std::fs::read(&ca.cert_path).unwrap();
        ca.server_config("registry.example.com").unwrap();
        ca.server_config("127.0.0.1").unwrap();
        let again = Ca::load(None, dir.path()).unwrap();
        assert_eq!(std::fs::read(&again.cert_path).unwrap(), first, "the CA is generated once");
        let mode = std::fs::metadata(dir.path().join("proxy-ca.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("ca.crt");
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = Ca::load(Some((&cert, &cert)), dir.path()).err().unwrap().to_string();
        assert!(e.contains("ca.crt"), "{e}");
    }
}
