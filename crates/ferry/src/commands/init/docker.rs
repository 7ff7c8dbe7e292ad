//! Docker: `registry-mirrors` in `daemon.json`. Docker uses mirrors for Docker Hub only;
//! images from other registries do not go through Ferry this way.

use super::{emit, mirror_url};
use crate::cli::DockerInitArgs;
use crate::{exit, Exit};

/// `daemon.json` with `mirror` first in `registry-mirrors`, every other setting kept.
fn with_mirror(existing: &str, mirror: &str) -> Result<String, String> {
    let mut v: serde_json::Value = if existing.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(existing).map_err(|e| format!("not valid JSON: {e}"))?
    };
    let obj = v.as_object_mut().ok_or("not a JSON object")?;
    let mirrors = obj.entry("registry-mirrors").or_insert_with(|| serde_json::json!([]));
    let list = mirrors.as_array_mut().ok_or("`registry-mirrors` is not a list")?;
    list.retain(|m| m.as_str() != Some(mirror));
    list.insert(0, serde_json::Value::String(mirror.to_owned()));
    Ok(serde_json::to_string_pretty(&v).expect("JSON") + "\n")
}

pub fn run(a: DockerInitArgs) -> Result<(), Exit> {
    let mirror = mirror_url(&a.common.mirror)?;
    let existing = match std::fs::read_to_string(&a.config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Exit::new(exit::FAILURE, format!("read {}: {e}", a.config.display()))),
    };
    let mirror = mirror.as_str().trim_end_matches('/');
    let text =
        with_mirror(&existing, mirror).map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", a.config.display())))?;
    emit(&a.config, &text, a.common.dry_run)?;
    println!("Docker uses registry-mirrors for Docker Hub images only; restart it (systemctl restart docker)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_mirror;

    #[test]
    fn the_mirror_goes_first_and_other_settings_stay() {
        let out = with_mirror(r#"{"debug": true, "registry-mirrors": ["https://m.example"]}"#, "http://127.0.0.1:4001")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["debug"], true);
        assert_eq!(v["registry-mirrors"], serde_json::json!(["http://127.0.0.1:4001", "https://m.example"]));
        let again = with_mirror(&out, "http://127.0.0.1:4001").unwrap();
        assert_eq!(again, out, "idempotent");
        assert!(with_mirror("[1]", "http://x").is_err());
        assert!(with_mirror("", "http://x").unwrap().contains("registry-mirrors"));
    }
}
