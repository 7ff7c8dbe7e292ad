//! Which address this daemon tells the scheduler other peers should reach it on.
//!
//! Unless the operator names one, it is the local address of the interface that routes to
//! the first scheduler that resolves: the address the scheduler itself sees this host on,
//! and so the one peers in the same network reach. A loopback address advertised to a
//! scheduler on another host would make every peer fail to connect and fall back to the
//! origin, so that case is warned about at start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The address to advertise: `explicit` if given, else a specific `listen` address, else
/// the source address of the route to a scheduler; 127.0.0.1 when none resolves.
pub async fn choose(explicit: Option<IpAddr>, listen: IpAddr, schedulers: &[String]) -> IpAddr {
    let targets = resolve(schedulers).await;
    let chosen = match explicit {
        Some(ip) => ip,
        None if !listen.is_unspecified() => listen,
        None => routed_source(&targets).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    if chosen.is_loopback() {
        if let Some(remote) = targets.iter().find(|t| !t.ip().is_loopback()) {
            tracing::warn!(
                advertise = %chosen,
                scheduler = %remote,
                "advertising a loopback address to a scheduler on another host: peers elsewhere \
                 cannot reach this daemon and will read the origin instead; set --advertise-ip"
            );
        }
    }
    chosen
}

async fn resolve(schedulers: &[String]) -> Vec<SocketAddr> {
    let mut out = vec![];
    for s in schedulers {
        let s = s.trim_start_matches("http://").trim_start_matches("https://");
        if let Ok(addrs) = tokio::net::lookup_host(s).await {
            out.extend(addrs);
        }
    }
    out
}

/// The local address the kernel would send from to the first reachable target. A UDP
/// `connect` picks the route without sending anything.
fn routed_source(targets: &[SocketAddr]) -> Option<IpAddr> {
    targets.iter().find_map(|t| {
        let any: SocketAddr = match t {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = std::net::UdpSocket::bind(any).ok()?;
        sock.connect(t).ok()?;
        let ip = sock.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_wins_then_listen_then_route() {
        let sched = vec!["127.0.0.1:4000".to_owned()];
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        assert_eq!(choose(Some(ip), IpAddr::V4(Ipv4Addr::UNSPECIFIED), &sched).await, ip);
        assert_eq!(choose(None, ip, &sched).await, ip);
        assert_eq!(choose(None, IpAddr::V4(Ipv4Addr::UNSPECIFIED), &sched).await, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    #[tokio::test]
    async fn unresolvable_schedulers_fall_back_to_loopback() {
        let sched = vec!["not a host".to_owned()];
        assert!(choose(None, IpAddr::V4(Ipv4Addr::UNSPECIFIED), &sched).await.is_loopback());
    }
}
