//! The cluster's certificate authority: made once by `ferry cluster init`, held by the roles
//! that issue certificates (a scheduler started with `--cluster-ca`), and nowhere else.
//!
//! Its directory holds `ca.crt` (public: every member trusts it), `ca.key` and `join.token`
//! (both 0600). The token file is re-read by [`ClusterCa::reload_tokens`], so writing a new
//! token there (`ferry cluster rotate-token`) revokes the old one: hosts that hold it cannot
//! renew, and drop out when their certificate ends.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::token::{JoinToken, TokenVerifier};
use crate::{Credentials, Member, MembershipError, Role};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const JOIN_TOKEN: &str = "join.token";

/// The CA certificate's own validity.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are made, for members whose clocks run behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate the CA made: the member's certificate then the CA's, and its end.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    tokens: RwLock<Vec<TokenVerifier>>,
    token_path: Option<PathBuf>,
    lifetime: Duration,
}

fn write_private(path: &Path, contents: &str) -> Result<(), MembershipError> {
    let err = |source| MembershipError::WriteFile { path: path.display().to_string(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
    std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(err)
}

fn read(path: &Path) -> Result<String, MembershipError> {
    std::fs::read_to_string(path)
        .map_err(|source| MembershipError::ReadFile { path: path.display().to_string(), source })
}

fn issue_err(e: impl std::fmt::Display) -> MembershipError {
    MembershipError::Issue(e.to_string())
}

impl ClusterCa {
    /// Makes a new CA and join token in `dir` (created if missing); refuses to overwrite.
    pub fn create(dir: &Path) -> Result<(Self, JoinToken), MembershipError> {
        let paths = [dir.join(CA_CERT), dir.join(CA_KEY), dir.join(JOIN_TOKEN)];
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(MembershipError::CaExists { path: p.display().to_string() });
        }
        std::fs::create_dir_all(dir)
            .map_err(|source| MembershipError::WriteFile { path: dir.display().to_string(), source })?;
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let name = format!("ferry cluster CA {}", hex::encode(rand::random::<[u8; 4]>()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = (now - BACKDATE, now + CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(issue_err)?;
        let token = JoinToken::generate(cert.der());
        write_private(&paths[1], &key.serialize_pem())?;
        write_private(&paths[2], &format!("{}\n", token.expose()))?;
        std::fs::write(&paths[0], cert.pem())
            .map_err(|source| MembershipError::WriteFile { path: paths[0].display().to_string(), source })?;
        Ok((Self::load(dir, crate::DEFAULT_CERT_LIFETIME)?, token))
    }

    /// Replaces the join token in `dir` with a new one (written beside and renamed, so a
    /// scheduler re-reading it sees the old token or the new one, never half of one).
    pub fn rotate_token(dir: &Path) -> Result<JoinToken, MembershipError> {
        let cert_path = dir.join(CA_CERT);
        let ca_der =
            CertificateDer::from_pem_slice(read(&cert_path)?.as_bytes()).map_err(|e| MembershipError::BadPem {
                path: cert_path.display().to_string(),
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        let token = JoinToken::generate(&ca_der);
        let (path, tmp) = (dir.join(JOIN_TOKEN), dir.join(".join.token.new"));
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &format!("{}\n", token.expose()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|source| MembershipError::WriteFile { path: path.display().to_string(), source })?;
        Ok(token)
    }

    /// The CA in `dir`, issuing certificates valid for `lifetime`.
    pub fn load(dir: &Path, lifetime: Duration) -> Result<Self, MembershipError> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let cert_pem = read(&cert_path)?;
        let bad = |path: &Path, what, e: &dyn std::fmt::Display| MembershipError::BadPem {
            path: path.display().to_string(),
            what,
            detail: e.to_string(),
        };
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| bad(&key_path, "private key", &e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad(&cert_path, "CA certificate", &e))?;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(&cert_path, "CA certificate", &e))?
            .into_owned();
        let token_path = Some(dir.join(JOIN_TOKEN)).filter(|p| p.exists());
        let ca = Self { issuer, ca_der, tokens: RwLock::default(), token_path, lifetime };
        ca.reload_tokens()?;
        Ok(ca)
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Re-reads the token file: a token written there since replaces the old one.
    pub fn reload_tokens(&self) -> Result<(), MembershipError> {
        let Some(path) = &self.token_path else { return Ok(()) };
        let token = JoinToken::read(path)?;
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = vec![token.verifier()];
        Ok(())
    }

    /// Accepts tokens besides (or, with no token file, instead of) the file's.
    pub fn accept_token(&self, v: TokenVerifier) {
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    /// A host's join: checks the token and the role, and signs the request's key for
    /// `member`. The request's own names are ignored: the certificate says what we decide.
    pub fn join(&self, token: &str, member: &Member, csr: &[u8]) -> Result<Issued, MembershipError> {
        let accepted = self.tokens.read().unwrap_or_else(|e| e.into_inner()).iter().any(|v| v.accepts(token));
        if !accepted {
            return Err(MembershipError::TokenRefused);
        }
        if !matches!(member.role, Role::Peer | Role::Seed) {
            return Err(MembershipError::RoleNotJoinable(member.role.to_string()));
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
            .map_err(|e| MembershipError::BadCsr(e.to_string()))?;
        let (params, not_after) = self.params(member)?;
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key };
        let cert = signed.signed_by(&self.issuer).map_err(issue_err)?;
        Ok(Issued { chain: vec![cert.der().clone(), self.ca_der.clone()], not_after })
    }

    /// Credentials for a role of this process itself (a scheduler serving with the CA it
    /// holds): the key never leaves memory.
    pub fn credentials_for(&self, member: Member) -> Result<Arc<Credentials>, MembershipError> {
        let (chain, key, not_after) = self.issue_own(&member)?;
        Credentials::new(member, chain, key, self.ca_der.clone(), not_after)
    }

    /// A fresh certificate and key for `member`, for renewing [`Self::credentials_for`].
    pub fn issue_own(
        &self,
        member: &Member,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, SystemTime), MembershipError> {
        self.issue_own_until(member, SystemTime::now() + self.lifetime)
    }

    /// As [`Self::issue_own`], valid until `not_after` (tests make expired ones with it).
    pub fn issue_own_until(
        &self,
        member: &Member,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, SystemTime), MembershipError> {
        let key = KeyPair::generate().map_err(issue_err)?;
        let (mut params, _) = self.params(member)?;
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.ca_der.clone()], key, not_after))
    }

    fn params(&self, member: &Member) -> Result<(CertificateParams, SystemTime), MembershipError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, member.host.as_str());
        params.subject_alt_names = vec![SanType::URI(member.uri().try_into().map_err(issue_err)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let now = SystemTime::now();
        let not_after = now + self.lifetime;
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        Ok((params, not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_types::HostId;

    fn csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["i-am-the-scheduler.example".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "evil");
        let der = p.serialize_request(&key).unwrap().der().to_vec();
        (key, der)
    }

    #[test]
    fn a_join_gets_the_names_the_ca_decides_and_only_with_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, token) = ClusterCa::create(dir.path()).unwrap();
        let (_key, request) = csr();
        let peer = Member::new(HostId::new("h1").unwrap(), Role::Peer);
        let issued = ca.join(&token.expose(), &peer, &request).unwrap();
        assert_eq!(Member::from_cert(&issued.chain[0]).unwrap(), peer);
        assert!(matches!(
            ca.join(&JoinToken::generate(ca.ca_der()).expose(), &peer, &request),
            Err(MembershipError::TokenRefused)
        ));
        let sched = Member::new(HostId::new("h1").unwrap(), Role::Scheduler);
        assert!(matches!(ca.join(&token.expose(), &sched, &request), Err(MembershipError::RoleNotJoinable(_))));
        // The key files are the owner's alone, and a second init refuses.
        use std::os::unix::fs::PermissionsExt;
        for f in [CA_KEY, JOIN_TOKEN] {
            assert_eq!(std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(ClusterCa::create(dir.path()), Err(MembershipError::CaExists { .. })));
    }
}
