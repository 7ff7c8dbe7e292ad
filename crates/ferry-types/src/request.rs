//! One request for an origin's bytes, and what may and may not travel with it.
//!
//! A task is shared content; a request is one caller's way to the origin (its URL, its
//! headers, the digest it expects). Three rules live here so every crate applies them alike:
//!
//! - Headers that would change the bytes (`Range`, `Accept-Encoding`, conditionals) are
//!   refused: a task is always the whole object in identity encoding, so one caller's header
//!   can never decide what the task is for the others ([`OriginRequest::new`]).
//! - A request is *credentialed* when it carries an `Authorization`, `Cookie` or similar
//!   header, or a signature query parameter. Such a request proves its access against the
//!   origin before it is handed bytes, and a task first read with one is private.
//! - Secrets never reach a log line or an error message: [`redact_url`] and
//!   [`OriginRequest`]'s `Debug` blank them.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::{FileDigest, ParseError};

/// Request headers refused in a download request: each would make the origin send other bytes
/// than the whole object, so a task fetched with it would not be the task its id names.
const CONTENT_CHANGING: &[&str] = &[
    "range",
    "if-range",
    "accept-encoding",
    "te",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// Headers whose value is a credential: redacted everywhere, and their presence makes a
/// request credentialed.
const SECRET_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "x-amz-security-token"];

/// Query parameters that carry a signature or a token (S3, GCS, Azure SAS, generic tokens).
/// Always redacted; a URL holding one is credentialed.
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
];

/// Hop-by-hop and framing headers Ferry sets itself.
const RESERVED: &[&str] = &["host", "content-length", "transfer-encoding", "connection", "user-agent"];

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s))
}

fn is_secret_param(name: &str, extra: &[String]) -> bool {
    SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s)) || extra.iter().any(|e| e.eq_ignore_ascii_case(name))
}

/// The URL with user info, signature parameters and `extra` parameters (e.g. the caller's
/// `--filter-query-param`s) blanked: safe for logs and error messages.
pub fn redact_url(url: &url::Url, extra: &[String]) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("REDACTED");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k, extra) { "REDACTED".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.set_fragment(None);
    u.to_string()
}

/// One caller's request for an origin object, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct OriginRequest {
    url: url::Url,
    headers: Vec<(String, String)>,
    digest: Option<FileDigest>,
    /// Query parameters the caller named as not changing the content (signatures): redacted
    /// like [`SECRET_PARAMS`] and counted as credentials.
    filtered: Vec<String>,
}

/// `host[:port]` of a URL, as operators name hosts (registries, proxy hosts, origins): the
/// port only when the URL gives one. `None` for a URL without a host.
pub fn host_port(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

/// Object stores' URL schemes (`s3://bucket/key`, `gs://`, `azblob://` or `abs://`).
pub fn is_object_store_scheme(scheme: &str) -> bool {
    matches!(scheme, "s3" | "gs" | "azblob" | "abs")
}

/// The URL scheme of files imported into the cluster (`ferry cache import`): `ferry:<digest>`.
/// Such a task has no origin; only hosts that hold it can serve it.
pub const CACHE_SCHEME: &str = "ferry";

/// The URL a file imported into the cluster is requested by.
pub fn cache_url(digest: &FileDigest) -> url::Url {
    url::Url::parse(&format!("{CACHE_SCHEME}:{digest}")).expect("a digest makes a valid URL path")
}

/// The digest a cache URL names; `None` for any other URL (or a malformed one).
pub fn cache_digest(url: &url::Url) -> Option<FileDigest> {
    (url.scheme() == CACHE_SCHEME).then(|| url.path().parse().ok()).flatten()
}

impl OriginRequest {
    /// Checks the URL's scheme and every header: a content-changing or reserved header, or a
    /// malformed one, is refused with a line that says what to do instead.
    pub fn new(
        url: url::Url,
        headers: Vec<(String, String)>,
        digest: Option<FileDigest>,
        filtered: Vec<String>,
    ) -> Result<Self, ParseError> {
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(ParseError::Header(format!("header name `{name}` is not a valid HTTP token")));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ParseError::Header(format!("header `{name}` has a line break in its value")));
            }
            if CONTENT_CHANGING.contains(&lower.as_str()) {
                return Err(ParseError::Header(format!(
                    "header `{name}` would change the bytes the origin sends; Ferry always fetches the whole \
                     object in identity encoding, so drop -H '{name}: ...'"
                )));
            }
            if RESERVED.contains(&lower.as_str()) {
                return Err(ParseError::Header(format!("header `{name}` is set by Ferry itself; drop it")));
            }
        }
        Ok(Self { url, headers, digest, filtered })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn digest(&self) -> Option<&FileDigest> {
        self.digest.as_ref()
    }

    pub fn filtered(&self) -> &[String] {
        &self.filtered
    }

    /// Carries a credential: a secret header, user info, or a signature/filtered parameter;
    /// or names an object store (`s3://`, `gs://`, `azblob://`), which each daemon reads with
    /// its own credentials, so each must prove its access before it is handed bytes.
    pub fn credentialed(&self) -> bool {
        is_object_store_scheme(self.url.scheme())
            || self.headers.iter().any(|(n, _)| is_secret_header(n))
            || !self.url.username().is_empty()
            || self.url.password().is_some()
            || self.url.query_pairs().any(|(k, _)| is_secret_param(&k, &self.filtered))
    }

    /// Identifies the request exactly (URL with every parameter, headers in order of name,
    /// digest): two requests with one key would get the same answer from the origin.
    pub fn key(&self) -> RequestKey {
        let mut h = Sha256::new();
        h.update(self.url.as_str().as_bytes());
        let mut headers: Vec<(String, &str)> =
            self.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.as_str())).collect();
        headers.sort();
        for (n, v) in headers {
            h.update(b"\0");
            h.update(n.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
        }
        h.update(b"\0digest\0");
        if let Some(d) = &self.digest {
            h.update(d.to_string().as_bytes());
        }
        RequestKey(h.finalize().into())
    }

    /// The URL as it may be shown: see [`redact_url`].
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url, &self.filtered)
    }
}

impl fmt::Debug for OriginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| if is_secret_header(n) { format!("{n}: REDACTED") } else { format!("{n}: {v}") })
            .collect();
        f.debug_struct("OriginRequest")
            .field("url", &self.redacted_url())
            .field("headers", &headers)
            .field("digest", &self.digest)
            .finish()
    }
}

/// A request's identity; see [`OriginRequest::key`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey(pub [u8; 32]);

impl fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req:{}", hex::encode(&self.0[..6]))
    }
}

/// What pins an origin object's content besides its bytes: its length and, when the origin
/// sends them, its `ETag` and `Last-Modified`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub length: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// The same content as far as the origin tells: equal lengths, and equal ETags and
    /// Last-Modified dates wherever both sides have one. A weak ETag (`W/"x"`) compares by
    /// its tag.
    pub fn same_content(&self, other: &Validators) -> bool {
        let strip = |e: &str| e.trim_start_matches("W/").to_owned();
        let both = |a: &Option<String>, b: &Option<String>, f: &dyn Fn(&str) -> String| match (a, b) {
            (Some(a), Some(b)) => f(a) == f(b),
            _ => true,
        };
        self.length == other.length
            && both(&self.etag, &other.etag, &strip)
            && both(&self.last_modified, &other.last_modified, &|s| s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, headers: &[(&str, &str)]) -> Result<OriginRequest, ParseError> {
        let h = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        OriginRequest::new(url::Url::parse(url).unwrap(), h, None, vec![])
    }

    #[test]
    fn content_changing_and_reserved_headers_are_refused() {
        for h in ["Range", "range", "Accept-Encoding", "If-None-Match", "Host", "Content-Length"] {
            assert!(req("http://o/f", &[(h, "x")]).is_err(), "{h}");
        }
        assert!(req("http://o/f", &[("X-Custom", "1"), ("Authorization", "Bearer t")]).is_ok());
        assert!(req("http://o/f", &[("Bad Name", "1")]).is_err());
        assert!(req("http://o/f", &[("X", "a\r\nInjected: 1")]).is_err());
    }

    #[test]
    fn credentials_are_recognised() {
        assert!(!req("http://o/f?a=1", &[("X-Custom", "1")]).unwrap().credentialed());
        assert!(req("http://o/f", &[("authorization", "Bearer t")]).unwrap().credentialed());
        assert!(req("http://o/f", &[("Cookie", "s=1")]).unwrap().credentialed());
        assert!(req("http://o/f?X-Amz-Signature=abc", &[]).unwrap().credentialed());
        assert!(req("http://u:p@o/f", &[]).unwrap().credentialed());
        let r = OriginRequest::new(url::Url::parse("http://o/f?mysig=1").unwrap(), vec![], None, vec!["mysig".into()]);
        assert!(r.unwrap().credentialed());
    }

    #[test]
    fn secrets_are_redacted() {
        let r = OriginRequest::new(
            url::Url::parse("http://user:pw@o/f?X-Amz-Signature=s3cr3t&mine=zzz&plain=1").unwrap(),
            vec![("Authorization".into(), "Bearer t0k3n".into())],
            None,
            vec!["mine".into()],
        )
        .unwrap();
        let shown = format!("{r:?} {}", r.redacted_url());
        for secret in ["s3cr3t", "zzz", "t0k3n", "pw"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("plain=1"));
    }

    #[test]
    fn request_key_covers_headers_and_ignores_their_order() {
        let a = req("http://o/f", &[("A", "1"), ("B", "2")]).unwrap();
        let b = req("http://o/f", &[("b", "2"), ("a", "1")]).unwrap();
        let c = req("http://o/f", &[("A", "1"), ("B", "3")]).unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn validators_compare_what_both_sides_know() {
        let v = |len, etag: Option<&str>| Validators { length: len, etag: etag.map(Into::into), last_modified: None };
        assert!(v(1, Some("\"a\"")).same_content(&v(1, Some("W/\"a\""))));
        assert!(v(1, Some("\"a\"")).same_content(&v(1, None)));
        assert!(!v(1, Some("\"a\"")).same_content(&v(1, Some("\"b\""))));
        assert!(!v(1, None).same_content(&v(2, None)));
    }
}
