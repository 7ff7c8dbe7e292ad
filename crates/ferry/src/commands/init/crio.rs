//! CRI-O, Podman and skopeo read `registries.conf` and its `registries.conf.d` drop-ins: one
//! `[[registry]]` per mirrored registry with the daemon's mirror as its first mirror. The
//! registry itself stays the location, so a pull falls back to it when the daemon does not
//! answer. These clients do not tell a mirror which registry they mirror: the daemon serves
//! its `--mirror-upstream` to them.

use super::{emit, mirror_url, Registry};
use crate::cli::CrioInitArgs;
use crate::{exit, Exit};

/// The drop-in for `registries` with `mirror` (`host:port`, plain HTTP on loopback).
fn drop_in(registries: &[Registry], mirror: &str, insecure: bool) -> String {
    let mut out = String::from("# Written by `ferry init crio`: pulls go through the local Ferry daemon first.\n");
    for r in registries {
        let location = if r.host == "docker.io" { "registry-1.docker.io" } else { r.host.as_str() };
        out.push_str(&format!(
            "\n[[registry]]\nprefix = \"{host}\"\nlocation = \"{location}\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = {insecure}\n",
            host = r.host
        ));
    }
    out
}

pub fn run(a: CrioInitArgs) -> Result<(), Exit> {
    let mirror = mirror_url(&a.common.mirror)?;
    let host = mirror.host_str().unwrap_or_default();
    let addr = match mirror.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let registries = a
        .registries
        .iter()
        .map(|r| Registry::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| Exit::new(exit::USAGE, m))?;
    emit(&a.dir.join("ferry.conf"), &drop_in(&registries, &addr, mirror.scheme() == "http"), a.common.dry_run)?;
    println!("CRI-O reads registries.conf at start: restart it (systemctl restart crio); Podman and skopeo read it on every run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registry_entry_per_registry_with_the_mirror_first() {
        let regs = [Registry::parse("docker.io").unwrap(), Registry::parse("ghcr.io").unwrap()];
        let text = drop_in(&regs, "127.0.0.1:4001", true);
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let entries = doc["registry"].as_array_of_tables().unwrap();
        assert_eq!(entries.len(), 2);
        let hub = entries.get(0).unwrap();
        assert_eq!(hub["prefix"].as_str(), Some("docker.io"));
        assert_eq!(hub["location"].as_str(), Some("registry-1.docker.io"));
        let m = hub["mirror"].as_array_of_tables().unwrap().get(0).unwrap();
        assert_eq!((m["location"].as_str(), m["insecure"].as_bool()), (Some("127.0.0.1:4001"), Some(true)));
    }
}
