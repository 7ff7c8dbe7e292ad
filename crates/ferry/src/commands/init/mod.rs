//! `ferry init containerd|crio|docker`: point a container runtime at the local daemon's
//! registry mirror. Each writer renders its files from plain values (unit-tested), then
//! writes them (or prints them with `--dry-run`). Restarting the runtime is the user's call:
//! the command prints how.

mod containerd;
mod crio;
mod docker;

use std::path::Path;

use crate::cli::InitCommand;
use crate::{exit, Exit};

pub async fn run(c: InitCommand) -> Result<(), Exit> {
    match c {
        InitCommand::Containerd(a) => containerd::run(a).await,
        InitCommand::Crio(a) => crio::run(a),
        InitCommand::Docker(a) => docker::run(a),
    }
}

/// A registry as the user names it: a host (reached over HTTPS; `docker.io` is Docker Hub)
/// or a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registry {
    /// `host[:port]`: the name images use and containerd's directory name.
    host: String,
    /// Where the registry itself answers, e.g. `https://registry-1.docker.io`.
    server: String,
}

impl Registry {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('/');
        if let Some((scheme, rest)) = s.split_once("://") {
            if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
                return Err(format!("registry `{s}`: give a host (docker.io) or an http(s) URL without a path"));
            }
            return Ok(Self { host: rest.to_owned(), server: s.to_owned() });
        }
        if s.is_empty() || s.contains('/') {
            return Err(format!("registry `{s}`: give a host (docker.io) or an http(s) URL without a path"));
        }
        let server = match s {
            "docker.io" | "index.docker.io" => "https://registry-1.docker.io".to_owned(),
            h => format!("https://{h}"),
        };
        Ok(Self { host: s.to_owned(), server })
    }
}

fn mirror_url(m: &str) -> Result<url::Url, Exit> {
    url::Url::parse(m).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some()).ok_or_else(
        || Exit::new(exit::USAGE, format!("--mirror `{m}` is not an http(s) URL, e.g. http://127.0.0.1:4001")),
    )
}

/// Writes `content` to `path` (creating its directory), or prints it with `dry_run`.
fn emit(path: &Path, content: &str, dry_run: bool) -> Result<(), Exit> {
    if dry_run {
        println!("# {}\n{content}", path.display());
        return Ok(());
    }
    let fail = |e: std::io::Error| Exit::new(exit::FAILURE, format!("write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    // Whole file or nothing: a runtime never reads half of it.
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(&tmp, content).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Copies `path` to `path.ferry-bak` before it is changed (once: an older backup stays).
fn backup(path: &Path, dry_run: bool) -> Result<(), Exit> {
    let bak = path.with_extension("toml.ferry-bak");
    if dry_run || !path.exists() || bak.exists() {
        return Ok(());
    }
    std::fs::copy(path, &bak)
        .map_err(|e| Exit::new(exit::FAILURE, format!("back up {} to {}: {e}", path.display(), bak.display())))?;
    println!("backed up {} to {}", path.display(), bak.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Registry;

    #[test]
    fn registries_by_host_or_url() {
        let hub = Registry::parse("docker.io").unwrap();
        assert_eq!((hub.host.as_str(), hub.server.as_str()), ("docker.io", "https://registry-1.docker.io"));
        let ghcr = Registry::parse("ghcr.io").unwrap();
        assert_eq!(ghcr.server, "https://ghcr.io");
        let local = Registry::parse("http://127.0.0.1:5000/").unwrap();
        assert_eq!((local.host.as_str(), local.server.as_str()), ("127.0.0.1:5000", "http://127.0.0.1:5000"));
        assert!(Registry::parse("ftp://x").is_err());
        assert!(Registry::parse("docker.io/library").is_err());
        assert!(Registry::parse("").is_err());
    }
}
