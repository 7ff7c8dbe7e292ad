//! A member's identity as its certificate states it: a host id and a role, in one URI SAN
//! `ferry://member/<role>/<host id>`. Host ids are limited to `[A-Za-z0-9._:-]` by
//! [`HostId`], so the URI needs no escaping.

use std::fmt;

use ferry_types::HostId;
use rustls::pki_types::CertificateDer;

use crate::MembershipError;

const PREFIX: &str = "ferry://member/";

/// What a member does in the cluster; a server checks that a claim (say, "I am a seed")
/// matches the role its certificate was issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Scheduler,
    Seed,
    Peer,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Seed => "seed",
            Role::Peer => "peer",
            Role::Manager => "manager",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "scheduler" => Role::Scheduler,
            "seed" => Role::Seed,
            "peer" => Role::Peer,
            "manager" => Role::Manager,
            _ => return Err(MembershipError::BadRole(s.to_owned())),
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub host: HostId,
    pub role: Role,
}

impl Member {
    pub fn new(host: HostId, role: Role) -> Self {
        Self { host, role }
    }

    pub fn uri(&self) -> String {
        format!("{PREFIX}{}/{}", self.role, self.host)
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        let (role, host) = uri.strip_prefix(PREFIX)?.split_once('/')?;
        Some(Self { role: role.parse().ok()?, host: HostId::new(host).ok()? })
    }

    /// The member a certificate names. The chain is verified elsewhere (by the TLS
    /// handshake); this only reads the name.
    pub fn from_cert(der: &CertificateDer<'_>) -> Result<Self, MembershipError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| MembershipError::BadCertificate(e.to_string()))?;
        let san = cert.subject_alternative_name().map_err(|e| MembershipError::BadCertificate(e.to_string()))?;
        let names = san.map(|s| s.value.general_names.iter()).into_iter().flatten();
        let mut members = names.filter_map(|n| match n {
            GeneralName::URI(u) => Self::from_uri(u),
            _ => None,
        });
        match (members.next(), members.next()) {
            (Some(m), None) => Ok(m),
            _ => Err(MembershipError::NotAMember),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_round_trips_through_its_uri_and_nothing_else_parses() {
        let m = Member::new(HostId::new("node-1.zone:a").unwrap(), Role::Seed);
        assert_eq!(Member::from_uri(&m.uri()), Some(m));
        for bad in ["ferry://member/seed/", "ferry://member/king/h1", "ferry://member/peer/a/b", "https://x/peer/h"] {
            assert_eq!(Member::from_uri(bad), None, "{bad}");
        }
    }
}
