//! The OCI distribution API as the mirror reads it: which route a request names, checked
//! against the spec's grammar (repository names, tags, digests), which upstream registry it
//! is for, and the error body the spec prescribes. No IO here.

use ferry_types::FileDigest;

/// A request path under `/v2/`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check (and where clients learn the auth challenge).
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: FileDigest,
    },
    /// Anything else under `/v2/` (uploads, tag lists, referrers): passed through untouched.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(FileDigest),
}

/// Why a path is not a valid request; maps to the spec's error codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    Name(String),
    Tag(String),
    Digest(String),
}

impl Invalid {
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Name(_) => "NAME_INVALID",
            Invalid::Tag(_) => "MANIFEST_INVALID",
            Invalid::Digest(_) => "DIGEST_INVALID",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Invalid::Name(n) => format!("invalid repository name `{n}`"),
            Invalid::Tag(t) => format!("invalid tag `{t}`"),
            Invalid::Digest(d) => format!("invalid digest `{d}`: expected sha256:<64 hex digits>"),
        }
    }
}

/// Parses a path (without the query) into a route. `None`: not under `/v2/` at all.
pub fn route(path: &str) -> Option<Result<Route, Invalid>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Ok(Route::Base));
    }
    let rest = rest.strip_prefix('/')?;
    let parsed = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        manifest(name, reference)
    } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if name.ends_with("/blobs") || digest.starts_with("uploads") {
            Ok(Route::Other)
        } else {
            blob(name, digest)
        }
    } else {
        Ok(Route::Other)
    };
    Some(parsed)
}

fn manifest(name: &str, reference: &str) -> Result<Route, Invalid> {
    let name = valid_name(name)?;
    let reference = if reference.contains(':') {
        Reference::Digest(valid_digest(reference)?)
    } else if valid_tag(reference) {
        Reference::Tag(reference.to_owned())
    } else {
        return Err(Invalid::Tag(reference.to_owned()));
    };
    Ok(Route::Manifest { name, reference })
}

fn blob(name: &str, digest: &str) -> Result<Route, Invalid> {
    Ok(Route::Blob { name: valid_name(name)?, digest: valid_digest(digest)? })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255
/// characters.
pub(crate) fn valid_name(name: &str) -> Result<String, Invalid> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        // Separators: one `.`, one or two `_`, or any run of `-`, always between alnums.
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
            if !ok {
                return false;
            }
        }
        true
    };
    if name.len() > 255 || !name.split('/').all(component_ok) {
        return Err(Invalid::Name(name.chars().take(300).collect()));
    }
    Ok(name.to_owned())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let first = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let rest = |x: u8| first(x) || x == b'.' || x == b'-';
    !b.is_empty() && b.len() <= 128 && first(b[0]) && b[1..].iter().all(|x| rest(*x))
}

/// Only `sha256:` digests name content here: that is what registries address blobs by, and
/// what the task is verified against end to end.
pub fn valid_digest(d: &str) -> Result<FileDigest, Invalid> {
    let bad = || Invalid::Digest(d.chars().take(100).collect());
    let hex = d.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad());
    }
    d.parse().map_err(|_| bad())
}

/// Where a request goes: the registry's base URL (scheme and host, no path).
///
/// In order: the `X-Ferry-Registry` (or `X-Dragonfly-Registry`) header, a full URL or a
/// bare host; containerd's `ns=` query parameter (a bare host); the configured default.
/// A bare host is reached over HTTPS unless it is listed as insecure; `docker.io` means
/// `registry-1.docker.io`.
pub fn upstream(
    header: Option<&str>,
    query: Option<&str>,
    default: &url::Url,
    insecure: &[String],
) -> Result<url::Url, String> {
    let ns = query.and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ns").map(|(_, v)| v));
    let Some(given) = header.map(str::to_owned).or(ns.map(|v| v.into_owned())) else {
        return Ok(default.clone());
    };
    let given = given.trim().trim_end_matches('/');
    let url = if given.contains("://") {
        url::Url::parse(given).map_err(|e| format!("registry `{given}` is not a URL: {e}"))?
    } else {
        let host = if given == "docker.io" || given == "index.docker.io" { "registry-1.docker.io" } else { given };
        let scheme = if insecure.iter().any(|h| h == host) { "http" } else { "https" };
        url::Url::parse(&format!("{scheme}://{host}")).map_err(|e| format!("registry host `{given}`: {e}"))?
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("registry `{given}` must be an http(s) URL or a host"));
    }
    Ok(url)
}

/// Every manifest and index type a client may ask for (the `Accept` of a manifest request).
pub const MANIFEST_TYPES: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// For an index, the digest of the manifest for `platform` (`os/arch[/variant]`), or of an
/// entry that names no platform (an artifact's); `None` for a plain manifest.
pub fn platform_manifest(top: &serde_json::Value, platform: &str) -> Result<Option<FileDigest>, String> {
    let Some(entries) = top.get("manifests").and_then(|m| m.as_array()) else { return Ok(None) };
    let mut want = platform.split('/');
    let (os, arch, variant) = (want.next().unwrap_or("linux"), want.next().unwrap_or("amd64"), want.next());
    let entry = entries
        .iter()
        .find(|e| {
            let p = &e["platform"];
            p["os"] == os && p["architecture"] == arch && variant.is_none_or(|v| p["variant"] == v)
        })
        .or_else(|| entries.iter().find(|e| e.get("platform").is_none()))
        .ok_or_else(|| format!("the image has no manifest for {platform}"))?;
    valid_digest(entry["digest"].as_str().unwrap_or_default()).map(Some).map_err(|e| e.message())
}

/// The spec's error body: `{"errors":[{"code":..,"message":..,"detail":..}]}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "errors": [{ "code": code, "message": message, "detail": null }] }).to_string()
}

/// The media type a manifest declares (`mediaType`), for serving one by digest.
pub fn manifest_media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("mediaType")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Some(Ok(Route::Base)));
        assert_eq!(route("/v2"), Some(Ok(Route::Base)));
        assert_eq!(route("/healthz"), None);
        let m = route("/v2/library/ubuntu/manifests/22.04").unwrap().unwrap();
        assert_eq!(m, Route::Manifest { name: "library/ubuntu".into(), reference: Reference::Tag("22.04".into()) });
        let b = route(&format!("/v2/a/b/c/blobs/{D}")).unwrap().unwrap();
        assert_eq!(b, Route::Blob { name: "a/b/c".into(), digest: D.parse().unwrap() });
        assert!(matches!(route(&format!("/v2/a/manifests/{D}")), Some(Ok(Route::Manifest { .. }))));
        assert_eq!(route("/v2/a/blobs/uploads/"), Some(Ok(Route::Other)));
        assert_eq!(route("/v2/a/tags/list"), Some(Ok(Route::Other)));
    }

    #[test]
    fn bad_names_tags_and_digests_are_refused_with_their_codes() {
        for name in ["UPPER", "a//b", "-a", "a-", "a..b", "a___b", "", "a/"] {
            let r = route(&format!("/v2/{name}/manifests/latest")).unwrap();
            assert_eq!(r.map_err(|e| e.code()), Err("NAME_INVALID"), "{name}");
        }
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a0/b-1/c.2"] {
            assert!(route(&format!("/v2/{ok}/manifests/latest")).unwrap().is_ok(), "{ok}");
        }
        let r = route("/v2/a/manifests/.bad").unwrap();
        assert_eq!(r.map_err(|e| e.code()), Err("MANIFEST_INVALID"));
        for d in ["sha256:abc", "md5:00", "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"] {
            let r = route(&format!("/v2/a/blobs/{d}")).unwrap();
            assert_eq!(r.map_err(|e| e.code()), Err("DIGEST_INVALID"), "{d}");
        }
    }

    #[test]
    fn the_upstream_is_the_header_then_ns_then_the_default() {
        let default = url::Url::parse("https://default.example").unwrap();
        let up = |h: Option<&str>, q: Option<&str>| upstream(h, q, &default, &["insecure.local:5000".into()]).unwrap();
        assert_eq!(up(None, None).as_str(), "https://default.example/");
        assert_eq!(up(None, Some("ns=docker.io")).as_str(), "https://registry-1.docker.io/");
        assert_eq!(up(None, Some("ns=insecure.local:5000")).as_str(), "http://insecure.local:5000/");
        assert_eq!(up(Some("http://h.example:81"), Some("ns=docker.io")).as_str(), "http://h.example:81/");
        assert_eq!(up(Some("quay.io"), None).as_str(), "https://quay.io/");
        assert!(upstream(Some("ftp://x"), None, &default, &[]).is_err());
    }

    #[test]
    fn error_bodies_have_the_spec_shape() {
        let v: serde_json::Value = serde_json::from_str(&error_body("BLOB_UNKNOWN", "no such blob")).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "no such blob");
    }
}
