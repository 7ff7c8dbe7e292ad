//! Which cluster a host belongs to: the searcher. Pure, so it is tested on its own.
//!
//! A cluster's scopes name the hosts it serves: CIDRs, a hostname regex, an IDC, a zone, a
//! location prefix (`country|region|city|...`). A host matches a cluster when any of them
//! matches; among matching clusters the most specific wins, compared in that order (the
//! longest matching CIDR first), then the lowest id. A host no scope matches goes to the
//! default cluster.

use std::net::IpAddr;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a host says about itself when it asks for its schedulers.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub ip: Option<IpAddr>,
    pub zone: String,
    pub idc: String,
    pub location: String,
}

/// A cluster's scopes, as stored and as the API takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scopes {
    pub cidrs: Vec<String>,
    pub hostname_regex: String,
    pub idc: String,
    pub zone: String,
    pub location: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a CIDR such as 10.0.0.0/8 or fd00::/8");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
        Ok(Self { net, len })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.to_ipv6_mapped().octets(), self.len),
            (IpAddr::V4(_), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| self.contains(IpAddr::V4(a))),
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

impl Scopes {
    /// Checks every scope: each CIDR parses, the regex compiles.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.cidrs {
            c.parse::<Cidr>()?;
        }
        if !self.hostname_regex.is_empty() {
            Regex::new(&self.hostname_regex).map_err(|e| format!("hostname_regex: {e}"))?;
        }
        Ok(())
    }

    /// How well `host` matches (`None`: not at all); higher is more specific.
    pub fn score(&self, host: &HostFacts) -> Option<(u16, bool, bool, bool, usize)> {
        let cidr = host.ip.and_then(|ip| {
            self.cidrs
                .iter()
                .filter_map(|c| c.parse::<Cidr>().ok())
                .filter(|c| c.contains(ip))
                .map(|c| u16::from(c.len) + 1)
                .max()
        });
        let hostname = !self.hostname_regex.is_empty()
            && !host.hostname.is_empty()
            && Regex::new(&self.hostname_regex).is_ok_and(|r| r.is_match(&host.hostname));
        let idc = !self.idc.is_empty() && self.idc == host.idc;
        let zone = !self.zone.is_empty() && self.zone == host.zone;
        let location = if !self.location.is_empty() && host.location.starts_with(&self.location) {
            self.location.len()
        } else {
            0
        };
        let score = (cidr.unwrap_or(0), hostname, idc, zone, location);
        (score != (0, false, false, false, 0)).then_some(score)
    }
}

/// A cluster as the searcher sees it.
pub struct Candidate<'a> {
    pub id: i64,
    pub is_default: bool,
    pub scopes: &'a Scopes,
}

/// The cluster `host` belongs to, if any.
pub fn pick(candidates: &[Candidate<'_>], host: &HostFacts) -> Option<i64> {
    let best = candidates
        .iter()
        .filter_map(|c| c.scopes.score(host).map(|s| (s, std::cmp::Reverse(c.id))))
        .max()
        .map(|(_, std::cmp::Reverse(id))| id);
    best.or_else(|| candidates.iter().filter(|c| c.is_default).map(|c| c.id).min())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ip: &str, hostname: &str) -> HostFacts {
        HostFacts { hostname: hostname.into(), ip: Some(ip.parse().unwrap()), ..Default::default() }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let c: Cidr = "127.0.0.0/9".parse().unwrap();
        assert!(c.contains("127.127.0.1".parse().unwrap()) && !c.contains("127.128.0.1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().contains("10.1.1.1".parse().unwrap()));
    }

    #[test]
    fn the_most_specific_scope_wins_and_the_default_catches_the_rest() {
        let wide = Scopes { cidrs: vec!["10.0.0.0/8".into()], ..Default::default() };
        let narrow = Scopes { cidrs: vec!["10.1.0.0/16".into()], ..Default::default() };
        let gpu = Scopes { hostname_regex: "^gpu-".into(), ..Default::default() };
        let none = Scopes::default();
        let c = [
            Candidate { id: 1, is_default: true, scopes: &none },
            Candidate { id: 2, is_default: false, scopes: &wide },
            Candidate { id: 3, is_default: false, scopes: &narrow },
            Candidate { id: 4, is_default: false, scopes: &gpu },
        ];
        assert_eq!(pick(&c, &host("10.1.2.3", "web-1")), Some(3));
        assert_eq!(pick(&c, &host("10.2.2.3", "web-1")), Some(2));
        assert_eq!(pick(&c, &host("192.168.0.1", "gpu-7")), Some(4));
        // A CIDR match is more specific than a hostname.
        assert_eq!(pick(&c, &host("10.2.2.3", "gpu-7")), Some(2));
        assert_eq!(pick(&c, &host("192.168.0.1", "web-1")), Some(1));
        assert_eq!(pick(&c[1..], &host("192.168.0.1", "web-1")), None);
    }

    #[test]
    fn idc_zone_and_location_count_in_that_order() {
        let idc = Scopes { idc: "idc-a".into(), ..Default::default() };
        let zone = Scopes { zone: "z1".into(), ..Default::default() };
        let loc = Scopes { location: "cn|hz".into(), ..Default::default() };
        let c = [
            Candidate { id: 7, is_default: false, scopes: &loc },
            Candidate { id: 8, is_default: false, scopes: &zone },
            Candidate { id: 9, is_default: false, scopes: &idc },
        ];
        let mut h =
            HostFacts { idc: "idc-a".into(), zone: "z1".into(), location: "cn|hz|1".into(), ..Default::default() };
        assert_eq!(pick(&c, &h), Some(9));
        h.idc.clear();
        assert_eq!(pick(&c, &h), Some(8));
        h.zone.clear();
        assert_eq!(pick(&c, &h), Some(7));
        h.location = "cn|sh".into();
        assert_eq!(pick(&c, &h), None);
    }

    #[test]
    fn bad_scopes_are_refused() {
        assert!(Scopes { cidrs: vec!["10/8".into()], ..Default::default() }.validate().is_err());
        assert!(Scopes { hostname_regex: "(".into(), ..Default::default() }
            .validate()
            .unwrap_err()
            .contains("hostname_regex"));
    }
}
