//! Join tokens: `ferry1.<id>.<secret>.<pin>`.
//!
//! The secret is what a host trades for a certificate; the id names the token (to list and
//! revoke it without showing the secret); the pin is the SHA-256 of the cluster CA's
//! certificate, so a host joining over the network knows it talks to its own cluster before
//! it sends the secret (the server's chain must contain the pinned CA). An issuer keeps only
//! the SHA-256 of the secret and compares in constant time.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::MembershipError;

const PREFIX: &str = "ferry1";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    secret: String,
    /// SHA-256 of the cluster CA certificate (DER).
    pub pin: [u8; 32],
}

impl JoinToken {
    /// A new random token for the CA whose certificate is `ca_der`.
    pub fn generate(ca_der: &[u8]) -> Self {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = B64.encode(rand::random::<[u8; 24]>());
        Self { id, secret, pin: Sha256::digest(ca_der).into() }
    }

    pub fn parse(s: &str) -> Result<Self, MembershipError> {
        let bad = || MembershipError::BadToken(redact(s));
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let secret_ok = secret.len() == 32 && B64.decode(secret).is_ok();
        let pin: [u8; 32] = B64.decode(pin).ok().and_then(|p| p.try_into().ok()).ok_or_else(bad)?;
        if !id_ok || !secret_ok {
            return Err(bad());
        }
        Ok(Self { id: id.to_owned(), secret: secret.to_owned(), pin })
    }

    pub fn read(path: &Path) -> Result<Self, MembershipError> {
        let s = std::fs::read_to_string(path)
            .map_err(|source| MembershipError::ReadFile { path: path.display().to_string(), source })?;
        Self::parse(&s)
    }

    /// The whole token, secret included: for the token file and the join request only.
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}.{}", self.id, self.secret, B64.encode(self.pin))
    }

    /// What an issuer keeps: the id and the SHA-256 of the secret.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier { id: self.id.clone(), secret_sha256: Sha256::digest(self.secret.as_bytes()).into() }
    }
}

/// Never the secret, so a token can be logged.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({})", self.id)
    }
}

/// What an issuer needs to accept a token without holding its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenVerifier {
    pub id: String,
    pub secret_sha256: [u8; 32],
}

impl TokenVerifier {
    /// Whether `presented` (a whole token) is this one. Constant time in the secret.
    pub fn accepts(&self, presented: &str) -> bool {
        let Ok(t) = JoinToken::parse(presented) else { return false };
        let h: [u8; 32] = Sha256::digest(t.secret.as_bytes()).into();
        let same = h.iter().zip(self.secret_sha256.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same && t.id == self.id
    }
}

/// A token-looking string with its secret cut out, for error messages.
fn redact(s: &str) -> String {
    let mut parts: Vec<&str> = s.trim().split('.').collect();
    if parts.len() > 2 {
        parts[2] = "…";
    }
    let shown = parts.join(".");
    shown.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_its_verifier_accepts_only_it() {
        let t = JoinToken::generate(b"ca");
        let back = JoinToken::parse(&t.expose()).unwrap();
        assert_eq!(back, t);
        let v = t.verifier();
        assert!(v.accepts(&t.expose()));
        let other = JoinToken::generate(b"ca");
        assert!(!v.accepts(&other.expose()));
        // Same id, another secret.
        let forged = format!("ferry1.{}.{}.{}", t.id, B64.encode([7u8; 24]), B64.encode(t.pin));
        assert!(!v.accepts(&forged));
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_the_secret() {
        let t = JoinToken::generate(b"ca").expose();
        for bad in ["", "ferry1", "ferry2.a.b.c", &t[..t.len() - 1], &format!("{t}.x")] {
            let e = JoinToken::parse(bad).unwrap_err().to_string();
            let secret = t.split('.').nth(2).unwrap();
            assert!(!e.contains(secret), "{e}");
        }
    }
}
