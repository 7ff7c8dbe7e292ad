//! The emulated network: one namespace per host, each with a veth into a bridge namespace.
//!
//! A host's upload cap is a `tbf` on its own side of the veth (its egress); its download cap
//! is a `tbf` on the bridge side (the bridge's egress towards it). The root namespace gets an
//! uncapped control link (198.18.0.1) so the testbed can reach schedulers for stats. Names
//! carry the owning process id (`ftb<pid>-...`), so a run can find and remove what a crashed
//! run left behind without touching a live one.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SCHED_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const SEED_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);

/// A rate in bits per second, parsed from `200mbit`, `1gbit`, `500kbit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a rate like 200mbit"))?;
        let mul = match unit {
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "bit" | "" => 1,
            _ => return Err(format!("`{s}` is not a rate like 200mbit")),
        };
        Ok(Rate(n * mul))
    }
}

impl Rate {
    pub fn bytes_per_sec(self) -> f64 {
        self.0 as f64 / 8.0
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// None: uncapped (the scheduler's host).
    pub cap: Option<Rate>,
}

pub struct Network {
    prefix: String,
    pub nodes: Vec<Node>,
    control: String,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().with_context(|| args.join(" "))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

fn tbf(ns: &str, dev: &str, rate: Rate) -> Result<()> {
    let burst = ((rate.bytes_per_sec() / 100.0) as u64).max(32 * 1024);
    in_ns(
        ns,
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}bit", rate.0),
            "burst",
            &burst.to_string(),
            "latency",
            "50ms",
        ],
    )
}

/// Removes namespaces and links of earlier runs whose process is gone.
pub fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let own = std::process::id();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("ftb") else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let alive = pid == own || testbed_alive(pid);
        if !alive {
            kill_all_in(name);
            let _ = run(&["ip", "netns", "del", name]);
            let _ = run(&["ip", "link", "del", &format!("ftc{pid}")]);
        }
    }
}

/// A live (not zombie) ferry-testbed process with this pid.
fn testbed_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("Z");
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state != "Z" && String::from_utf8_lossy(&cmd).contains("ferry-testbed")
}

fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Network {
    /// Builds the bridge, the control link and every node.
    pub fn create(nodes: Vec<Node>) -> Result<Self> {
        remove_leftovers();
        let prefix = format!("ftb{}", std::process::id());
        let net = Self { control: format!("ftc{}", std::process::id()), prefix: prefix.clone(), nodes };
        let br = net.bridge_ns();
        run(&["ip", "netns", "add", &br])?;
        in_ns(&br, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&br, &["ip", "link", "set", "br0", "up"])?;
        in_ns(&br, &["ip", "link", "set", "lo", "up"])?;
        // Control link: root namespace <-> bridge, uncapped.
        run(&["ip", "link", "add", &net.control, "type", "veth", "peer", "name", "ctl", "netns", &br])?;
        run(&["ip", "addr", "add", &format!("{CONTROL_IP}/15"), "dev", &net.control])?;
        run(&["ip", "link", "set", &net.control, "up"])?;
        in_ns(&br, &["ip", "link", "set", "ctl", "master", "br0", "up"])?;
        for (i, n) in net.nodes.iter().enumerate() {
            let port = format!("p{i}");
            run(&["ip", "netns", "add", &n.ns])?;
            run(&["ip", "link", "add", &port, "netns", &br, "type", "veth", "peer", "name", "eth0", "netns", &n.ns])?;
            in_ns(&br, &["ip", "link", "set", &port, "master", "br0", "up"])?;
            in_ns(&n.ns, &["ip", "addr", "add", &format!("{}/15", n.ip), "dev", "eth0"])?;
            in_ns(&n.ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(&n.ns, &["ip", "link", "set", "lo", "up"])?;
            if let Some(cap) = n.cap {
                tbf(&n.ns, "eth0", cap)?;
                tbf(&br, &port, cap)?;
            }
        }
        Ok(net)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    pub fn ns_name(pid_prefix_node: &str) -> String {
        format!("ftb{}-{pid_prefix_node}", std::process::id())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("node exists")
    }

    /// Bytes sent by a node's interface so far.
    pub fn tx_bytes(&self, name: &str) -> u64 {
        let ns = &self.node(name).ns;
        Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in &self.nodes {
            kill_all_in(&n.ns);
            let _ = run(&["ip", "netns", "del", &n.ns]);
        }
        let _ = run(&["ip", "link", "del", &self.control]);
        let _ = run(&["ip", "netns", "del", &self.bridge_ns()]);
    }
}

/// True when this process may create namespaces (root with iproute2).
pub fn can_create_namespaces() -> Result<(), String> {
    let probe = format!("ftb{}-probe", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &probe]).stderr(Stdio::null()).status();
    match ok {
        Ok(s) if s.success() => {
            let _ = run(&["ip", "netns", "del", &probe]);
            Ok(())
        }
        Ok(_) => Err("`ip netns add` failed (needs root)".into()),
        Err(e) => Err(format!("cannot run `ip`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("200mbit".parse::<Rate>().unwrap(), Rate(200_000_000));
        assert_eq!("1gbit".parse::<Rate>().unwrap().bytes_per_sec(), 125_000_000.0);
        assert!("fast".parse::<Rate>().is_err());
    }
}
