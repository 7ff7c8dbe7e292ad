//! An origin's response head (status, headers) and a user's request headers from arbitrary
//! bytes: the checks answer with validators or a typed error, never a panic, and a ranged
//! read they accept is exactly the one asked for.
#![no_main]

use ferry_backend::response::{probe_head, read_head};
use ferry_types::OriginRequest;
use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let offset = u64::from_be_bytes(data[2..10].try_into().unwrap()) >> (data[2] % 64);
    let text = String::from_utf8_lossy(&data[10..]);
    let mut headers = HeaderMap::new();
    let mut pairs = vec![];
    for line in text.lines() {
        let Some((n, v)) = line.split_once(':') else { continue };
        pairs.push((n.to_owned(), v.trim().to_owned()));
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.trim().as_bytes()), HeaderValue::from_str(v.trim())) {
            headers.append(n, v);
        }
    }
    if let Ok(v) = read_head(status, &headers, offset, "u") {
        assert!(v.length >= offset || offset == 0);
    }
    let _ = probe_head(status, &headers, "u");
    // The same lines as `ferry get -H` headers.
    let url = url::Url::parse("https://origin.test/f?X-Amz-Signature=s").unwrap();
    if let Ok(r) = OriginRequest::new(url, pairs, None, vec![]) {
        let _ = (r.key(), r.credentialed(), format!("{r:?}"), r.redacted_url());
    }
});
