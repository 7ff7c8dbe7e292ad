//! Checks of an origin's response head, before a byte of its body is used: no IO, so they
//! are unit-tested and fuzzed on their own.
//!
//! The body must be in identity encoding (Ferry asks for it); a ranged answer must start and
//! end exactly where asked and agree with `Content-Length`; the object's validators
//! (length, `ETag`, `Last-Modified`) come back so the caller can pin the task to them.

use ferry_types::Validators;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LAST_MODIFIED,
};
use reqwest::StatusCode;

use crate::BackendError;

/// The head of a successful (2xx) answer to a read from `offset` (`Range: bytes=offset-`
/// when not 0). Returns the object's validators.
pub fn read_head(status: u16, headers: &HeaderMap, offset: u64, url: &str) -> Result<Validators, BackendError> {
    let bad = |reason: String| BackendError::BadResponse { url: url.to_owned(), reason };
    check_identity(headers, url)?;
    let status = StatusCode::from_u16(status).map_err(|_| bad(format!("answered status {status}")))?;
    let length = match (offset, status) {
        (0, StatusCode::OK) => {
            header_u64(headers, CONTENT_LENGTH).ok_or(BackendError::NoContentLength { url: url.to_owned() })?
        }
        (0, s) => return Err(bad(format!("answered {s} to a request without Range"))),
        (_, StatusCode::PARTIAL_CONTENT) => {
            let (start, end, total) =
                content_range(headers).ok_or_else(|| bad("a 206 without a valid Content-Range".into()))?;
            if start != offset || end + 1 != total {
                return Err(bad(format!("asked for bytes {offset}- and got bytes {start}-{end}/{total}")));
            }
            total
        }
        _ => return Err(BackendError::RangeIgnored { url: url.to_owned(), offset }),
    };
    let body_len = length.saturating_sub(offset);
    if header_u64(headers, CONTENT_LENGTH).is_some_and(|n| n != body_len) {
        return Err(bad(format!("Content-Length disagrees with the {body_len} bytes expected")));
    }
    Ok(validators(headers, length))
}

/// The head of the answer to an access check (`GET` with `Range: bytes=0-0`). Returns the
/// object's validators; a status that is not an answer to the range is the origin's no.
pub fn probe_head(status: u16, headers: &HeaderMap, url: &str) -> Result<Validators, BackendError> {
    let bad = |reason: &str| BackendError::BadResponse { url: url.to_owned(), reason: reason.into() };
    let length = match StatusCode::from_u16(status) {
        Ok(StatusCode::PARTIAL_CONTENT) => {
            content_range(headers).map(|(_, _, t)| t).ok_or_else(|| bad("a 206 without a valid Content-Range"))?
        }
        Ok(StatusCode::OK) => {
            header_u64(headers, CONTENT_LENGTH).ok_or(BackendError::NoContentLength { url: url.to_owned() })?
        }
        // An empty object has no byte 0.
        Ok(StatusCode::RANGE_NOT_SATISFIABLE) => match unsatisfied_total(headers) {
            Some(0) => 0,
            _ => return Err(bad("416 for byte 0 of a non-empty object")),
        },
        _ => return Err(BackendError::Status { status, url: url.to_owned() }),
    };
    check_identity(headers, url)?;
    Ok(validators(headers, length))
}

fn check_identity(headers: &HeaderMap, url: &str) -> Result<(), BackendError> {
    match headers.get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(e)) if e.trim().eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(BackendError::BadResponse {
            url: url.to_owned(),
            reason: format!(
                "sent a `{}`-encoded body although Ferry asked for identity encoding",
                e.unwrap_or("(unreadable)")
            ),
        }),
    }
}

fn header_u64(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Content-Range: bytes start-end/total`, with start <= end < total.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, u64)> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (range, total) = v.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total): (u64, u64, u64) = (start.parse().ok()?, end.parse().ok()?, total.parse().ok()?);
    (start <= end && end < total).then_some((start, end, total))
}

/// `Content-Range: bytes */total` of a 416.
fn unsatisfied_total(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_RANGE)?.to_str().ok()?.trim().strip_prefix("bytes */")?.parse().ok()
}

fn validators(headers: &HeaderMap, length: u64) -> Validators {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
    Validators { length, etag: text(ETAG), last_modified: text(LAST_MODIFIED) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_whole_read_needs_a_length_and_identity() {
        let v = read_head(200, &head(&[("content-length", "10"), ("etag", "\"a\"")]), 0, "u").unwrap();
        assert_eq!((v.length, v.etag.as_deref()), (10, Some("\"a\"")));
        assert!(matches!(read_head(200, &head(&[]), 0, "u"), Err(BackendError::NoContentLength { .. })));
        let gz = head(&[("content-length", "10"), ("content-encoding", "gzip")]);
        assert!(matches!(read_head(200, &gz, 0, "u"), Err(BackendError::BadResponse { .. })));
        assert!(read_head(206, &head(&[("content-length", "10")]), 0, "u").is_err());
    }

    #[test]
    fn a_ranged_read_must_answer_exactly_what_was_asked() {
        let ok = head(&[("content-range", "bytes 4-9/10"), ("content-length", "6")]);
        assert_eq!(read_head(206, &ok, 4, "u").unwrap().length, 10);
        for bad in ["bytes 3-9/10", "bytes 4-8/10", "bytes 9-4/10", "bytes 4-9/x", "4-9/10"] {
            assert!(read_head(206, &head(&[("content-range", bad)]), 4, "u").is_err(), "{bad}");
        }
        let wrong_len = head(&[("content-range", "bytes 4-9/10"), ("content-length", "7")]);
        assert!(read_head(206, &wrong_len, 4, "u").is_err());
        assert!(matches!(
            read_head(200, &head(&[("content-length", "10")]), 4, "u"),
            Err(BackendError::RangeIgnored { .. })
        ));
    }

    #[test]
    fn probes() {
        assert_eq!(probe_head(206, &head(&[("content-range", "bytes 0-0/7")]), "u").unwrap().length, 7);
        assert_eq!(probe_head(416, &head(&[("content-range", "bytes */0")]), "u").unwrap().length, 0);
        assert!(probe_head(416, &head(&[("content-range", "bytes */5")]), "u").is_err());
        assert!(matches!(probe_head(403, &head(&[]), "u"), Err(BackendError::Status { status: 403, .. })));
        assert!(matches!(probe_head(1000, &head(&[]), "u"), Err(BackendError::Status { .. })));
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(content_range(&head(&[("content-range", "bytes 5-9/10")])), Some((5, 9, 10)));
        for bad in ["bytes 5-9/*", "bytes 9-5/10", "bytes 5-10/10", "items 0-1/2", "bytes 5-/10", "bytes x-9/10"] {
            assert_eq!(content_range(&head(&[("content-range", bad)])), None, "{bad}");
        }
        assert_eq!(unsatisfied_total(&head(&[("content-range", "bytes */0")])), Some(0));
    }

    #[test]
    fn only_identity_bodies_are_accepted() {
        assert!(check_identity(&head(&[]), "u").is_ok());
        assert!(check_identity(&head(&[("content-encoding", "identity")]), "u").is_ok());
        assert!(check_identity(&head(&[("content-encoding", "gzip")]), "u").is_err());
    }
}
