//! containerd: a `hosts.toml` per registry under the CRI plugin's `config_path`, the mirror
//! first and the registry itself as fallback; `config_path` set in the config when it is
//! missing (config versions 1, 2 and 3 keep it in different tables).

use std::path::{Path, PathBuf};

use toml_edit::{value, DocumentMut, Item, Table};

use super::{backup, emit, mirror_url, Registry};
use crate::cli::ContainerdInitArgs;
use crate::{exit, Exit};

const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// The tables holding `registry.config_path` for a config `version`.
fn registry_table_path(version: i64) -> &'static [&'static str] {
    match version {
        3.. => &["plugins", "io.containerd.cri.v1.images", "registry"],
        2 => &["plugins", "io.containerd.grpc.v1.cri", "registry"],
        _ => &["plugins", "cri", "registry"],
    }
}

/// The config's version (containerd reads a config without one as version 1).
fn version(doc: &DocumentMut) -> i64 {
    doc.get("version").and_then(Item::as_integer).unwrap_or(1)
}

/// `config_path` as the config sets it, if it does (an empty string is unset).
fn config_path(doc: &DocumentMut) -> Option<PathBuf> {
    let mut item = doc.as_item();
    for key in registry_table_path(version(doc)) {
        item = item.get(key)?;
    }
    item.get("config_path")?.as_str().filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// Sets `config_path`, creating the tables on the way.
fn set_config_path(doc: &mut DocumentMut, path: &Path) {
    let v = version(doc);
    let mut table: &mut Table = doc.as_table_mut();
    for key in registry_table_path(v) {
        let entry = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = entry.as_table_mut().expect("a table");
    }
    table["config_path"] = value(path.display().to_string());
}

/// `hosts.toml` for one registry: the mirror, told which registry it serves, then the
/// registry itself (`server`) when the mirror does not answer.
fn hosts_toml(registry: &Registry, mirror: &str) -> String {
    format!(
        "# Written by `ferry init containerd`: pulls from {host} go through the local Ferry daemon\n\
         # first, and straight to the registry when the daemon does not answer.\n\
         server = \"{server}\"\n\n\
         [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n\
         [host.\"{mirror}\".header]\n  X-Ferry-Registry = [\"{server}\"]\n",
        host = registry.host,
        server = registry.server,
    )
}

/// `_default/hosts.toml`: every other registry through the mirror (containerd names the
/// registry in its `ns=` parameter), then the registry itself.
fn default_hosts_toml(mirror: &str) -> String {
    format!(
        "# Written by `ferry init containerd`: any registry without its own hosts.toml goes\n\
         # through the local Ferry daemon first.\n\
         [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

pub async fn run(a: ContainerdInitArgs) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let mirror = mirror_url(&a.common.mirror)?;
    let mirror = mirror.as_str().trim_end_matches('/').to_owned();
    let registries = a.registries.iter().map(|r| Registry::parse(r)).collect::<Result<Vec<_>, _>>().map_err(usage)?;
    let text = match std::fs::read_to_string(&a.config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "version = 2\n".to_owned(),
        Err(e) => return Err(Exit::new(exit::FAILURE, format!("read {}: {e}", a.config.display()))),
    };
    let mut doc: DocumentMut =
        text.parse().map_err(|e| usage(format!("{} is not valid TOML: {e}", a.config.display())))?;
    if a.check {
        return check(&a.config, &doc, &registries, &mirror, a.default).await;
    }
    let hosts_dir = match (config_path(&doc), &a.hosts_dir) {
        (Some(set), Some(asked)) if &set != asked => {
            return Err(usage(format!(
                "{} already sets config_path = {}; drop --hosts-dir, or change the config yourself",
                a.config.display(),
                set.display()
            )))
        }
        (Some(set), _) => set,
        (None, asked) => {
            let dir = asked.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
            set_config_path(&mut doc, &dir);
            backup(&a.config, a.common.dry_run)?;
            emit(&a.config, &doc.to_string(), a.common.dry_run)?;
            println!("containerd reads config_path at start: restart it (systemctl restart containerd)");
            dir
        }
    };
    for r in &registries {
        emit(&hosts_dir.join(&r.host).join("hosts.toml"), &hosts_toml(r, &mirror), a.common.dry_run)?;
    }
    if a.default {
        emit(&hosts_dir.join("_default").join("hosts.toml"), &default_hosts_toml(&mirror), a.common.dry_run)?;
    }
    Ok(())
}

/// `--check`: what containerd will actually use (its `config dump`), the files, the mirror.
async fn check(
    config: &Path,
    doc: &DocumentMut,
    registries: &[Registry],
    mirror: &str,
    default: bool,
) -> Result<(), Exit> {
    let mut problems = vec![];
    let effective = effective_config_path(config, doc, &mut problems).await;
    match &effective {
        None => problems.push(
            "containerd has no registry config_path: it ignores hosts.toml files (run `ferry init containerd` \
             without --check, then restart containerd)"
                .to_owned(),
        ),
        Some(dir) => {
            let mut wanted: Vec<PathBuf> = registries.iter().map(|r| dir.join(&r.host).join("hosts.toml")).collect();
            if default {
                wanted.push(dir.join("_default").join("hosts.toml"));
            }
            for f in wanted {
                match std::fs::read_to_string(&f) {
                    Ok(t) if t.contains(&format!("[host.\"{mirror}\"]")) => {}
                    Ok(_) => problems.push(format!("{} does not send pulls to {mirror}", f.display())),
                    Err(_) => problems.push(format!("{} is missing", f.display())),
                }
            }
        }
    }
    if !mirror_answers(mirror).await {
        problems.push(format!("nothing answers at {mirror}/v2/: is `ferry daemon` running with its mirror there?"));
    }
    if problems.is_empty() {
        println!(
            "containerd pulls {} through {mirror}",
            registries.iter().map(|r| r.host.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    Err(Exit::new(exit::FAILURE, format!("{} problem(s) with containerd's configuration", problems.len())))
}

/// `config_path` as containerd will use it: from `containerd config dump` (its defaults and
/// imports applied), else from the file alone, saying why.
async fn effective_config_path(config: &Path, doc: &DocumentMut, problems: &mut Vec<String>) -> Option<PathBuf> {
    let dump =
        tokio::process::Command::new("containerd").arg("--config").arg(config).args(["config", "dump"]).output().await;
    match dump {
        Ok(out) if out.status.success() => match String::from_utf8_lossy(&out.stdout).parse::<DocumentMut>() {
            Ok(d) => config_path(&d),
            Err(e) => {
                problems.push(format!("`containerd config dump` printed no valid TOML: {e}"));
                None
            }
        },
        Ok(out) => {
            problems.push(format!("`containerd config dump` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            config_path(doc)
        }
        Err(e) => {
            problems.push(format!("cannot run containerd ({e}); checking the file alone"));
            config_path(doc)
        }
    }
}

/// Whether an HTTP server answers `GET /v2/` at `mirror` (any status).
async fn mirror_answers(mirror: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(url) = url::Url::parse(mirror) else { return false };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1."))
    };
    matches!(tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_set_where_each_version_reads_it() {
        for (version, table) in [
            (2, "[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
            (3, "[plugins.\"io.containerd.cri.v1.images\".registry]"),
        ] {
            let mut doc: DocumentMut = format!("version = {version}\n# keep me\n").parse().unwrap();
            assert_eq!(config_path(&doc), None);
            set_config_path(&mut doc, Path::new("/etc/containerd/certs.d"));
            let text = doc.to_string();
            assert!(text.contains(table), "{text}");
            assert!(text.contains("# keep me"), "comments survive: {text}");
            let again: DocumentMut = text.parse().unwrap();
            assert_eq!(config_path(&again), Some(PathBuf::from("/etc/containerd/certs.d")));
        }
    }

    #[test]
    fn an_empty_config_path_is_unset_and_a_set_one_is_read() {
        let doc: DocumentMut =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"\"\n".parse().unwrap();
        assert_eq!(config_path(&doc), None);
        let doc: DocumentMut =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/x\"\n".parse().unwrap();
        assert_eq!(config_path(&doc), Some(PathBuf::from("/x")));
    }

    #[test]
    fn hosts_toml_puts_the_mirror_first_and_names_the_registry() {
        let r = Registry::parse("docker.io").unwrap();
        let t: DocumentMut = hosts_toml(&r, "http://127.0.0.1:4001").parse().unwrap();
        assert_eq!(t["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &t["host"]["http://127.0.0.1:4001"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        let header = host["header"]["X-Ferry-Registry"].as_array().unwrap();
        assert_eq!(header.get(0).and_then(|v| v.as_str()), Some("https://registry-1.docker.io"));
    }
}
