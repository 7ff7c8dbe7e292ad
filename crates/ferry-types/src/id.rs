//! Task and host identity.
//!
//! A task is "this content": when the caller knows the file digest the task id is derived
//! from it alone, so the same bytes behind two URLs are one task. Otherwise it is a hash of
//! the canonical URL (minus filtered query parameters such as signed-URL tokens), the tag
//! and the application.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::{FileDigest, ParseError};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub [u8; 32]);

/// What identifies a task, before hashing.
#[derive(Debug, Default, Clone)]
pub struct TaskIdInput<'a> {
    pub url: Option<&'a url::Url>,
    pub digest: Option<&'a FileDigest>,
    pub tag: &'a str,
    pub application: &'a str,
    pub filtered_query_params: &'a [String],
}

impl TaskId {
    pub fn derive(input: &TaskIdInput<'_>) -> Self {
        let mut h = Sha256::new();
        if let Some(digest) = input.digest {
            h.update(b"digest\0");
            h.update(digest.to_string().as_bytes());
        } else {
            h.update(b"url\0");
            if let Some(url) = input.url {
                h.update(canonical_url(url, input.filtered_query_params).as_bytes());
            }
            h.update(b"\0tag\0");
            h.update(input.tag.as_bytes());
            h.update(b"\0app\0");
            h.update(input.application.as_bytes());
        }
        Self(h.finalize().into())
    }

    /// This URL task at one version of its content, as the origin's validators name it.
    /// A request that asked the origin before joining (a credentialed one, or any on a host
    /// that forces the check) joins the task of the content the origin serves now, so a
    /// changed object becomes a new task instead of a stale hit or a mix.
    pub fn at_version(&self, v: &crate::Validators) -> Self {
        let mut h = Sha256::new();
        h.update(b"version\0");
        h.update(self.0);
        h.update(v.length.to_be_bytes());
        h.update(b"\0etag\0");
        h.update(v.etag.as_deref().map(|e| e.trim_start_matches("W/")).unwrap_or("").as_bytes());
        h.update(b"\0modified\0");
        h.update(v.last_modified.as_deref().unwrap_or("").as_bytes());
        Self(h.finalize().into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// A short prefix for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

/// Scheme and host lower-cased by `url`, fragment dropped, query parameters in the filter
/// list removed and the rest sorted so that parameter order does not split a task.
fn canonical_url(url: &url::Url, filtered: &[String]) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !filtered.iter().any(|f| f == k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task:{}", self.short())
    }
}

impl FromStr for TaskId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| ParseError::TaskId(s.to_owned()))?;
        Self::from_slice(&bytes).ok_or_else(|| ParseError::TaskId(s.to_owned()))
    }
}

/// A daemon's host id: stable across restarts, unique in a cluster.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(String);

impl HostId {
    pub fn new(s: impl Into<String>) -> Result<Self, ParseError> {
        let s = s.into();
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(ParseError::HostId(s))
        }
    }

    /// A random id for a host that was given none.
    pub fn random() -> Self {
        Self(format!("host-{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_is_a_new_task() {
        let url = url::Url::parse("https://o.example/m.bin").unwrap();
        let base = TaskId::derive(&TaskIdInput { url: Some(&url), ..Default::default() });
        let v1 = crate::Validators { length: 10, etag: Some("\"a\"".into()), last_modified: None };
        let v2 = crate::Validators { etag: Some("\"b\"".into()), ..v1.clone() };
        let weak = crate::Validators { etag: Some("W/\"a\"".into()), ..v1.clone() };
        assert_ne!(base.at_version(&v1), base);
        assert_ne!(base.at_version(&v1), base.at_version(&v2));
        assert_eq!(base.at_version(&v1), base.at_version(&weak), "a weak tag names the same version");
    }

    fn id(url: &str, filtered: &[String]) -> TaskId {
        let url = url::Url::parse(url).unwrap();
        TaskId::derive(&TaskIdInput { url: Some(&url), filtered_query_params: filtered, ..Default::default() })
    }

    #[test]
    fn filtered_query_params_do_not_split_a_task() {
        let f = vec!["X-Amz-Signature".to_owned(), "Expires".to_owned()];
        assert_eq!(
            id("http://o/a?b=1&X-Amz-Signature=aaa&Expires=1", &f),
            id("http://o/a?Expires=2&b=1&X-Amz-Signature=bbb", &f)
        );
        assert_ne!(id("http://o/a?b=1", &f), id("http://o/a?b=2", &f));
    }

    #[test]
    fn digest_identifies_the_task_whatever_the_url() {
        let d: FileDigest = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
        let (u1, u2) = (url::Url::parse("http://a/x").unwrap(), url::Url::parse("http://b/y").unwrap());
        let a = TaskId::derive(&TaskIdInput { url: Some(&u1), digest: Some(&d), ..Default::default() });
        let b = TaskId::derive(&TaskIdInput { url: Some(&u2), digest: Some(&d), tag: "t", ..Default::default() });
        assert_eq!(a, b);
    }

    #[test]
    fn tag_and_application_split_a_task() {
        let u = url::Url::parse("http://a/x").unwrap();
        let plain = TaskId::derive(&TaskIdInput { url: Some(&u), ..Default::default() });
        let tagged = TaskId::derive(&TaskIdInput { url: Some(&u), tag: "v1", ..Default::default() });
        let app = TaskId::derive(&TaskIdInput { url: Some(&u), application: "v1", ..Default::default() });
        assert_ne!(plain, tagged);
        assert_ne!(tagged, app);
    }

    #[test]
    fn task_id_round_trips_through_hex() {
        let t = id("http://o/a", &[]);
        assert_eq!(t.to_string().parse::<TaskId>().unwrap(), t);
        assert!("xyz".parse::<TaskId>().is_err());
    }

    #[test]
    fn host_id_validation() {
        assert!(HostId::new("peer-1.rack:a").is_ok());
        assert!(HostId::new("").is_err());
        assert!(HostId::new("a b").is_err());
    }
}
