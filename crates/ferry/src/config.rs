//! Config files for the long-running roles, and secrets from files.
//!
//! `ferry daemon --config /etc/ferry/daemon.toml` (or `FERRY_CONFIG`): a TOML file whose keys
//! are the role's long flag names (`cache-ttl = "24h"`, `scheduler = ["a:8002", "b:8002"]`,
//! `seed = true`). The file is turned into flags, so one definition (the clap flags) holds
//! every key, its type, its check and its help. A key's value is taken from, first to last:
//! the command line, the flag's environment variable, the file, the default. A key that
//! names no flag is refused with the keys that exist; a bad value is refused by the flag's
//! own check, named by its key.
//!
//! A secret can come from a file: the key `hf-token-file = "/run/secrets/hf"` in a config
//! file, or the environment variable `HF_TOKEN_FILE` for a flag read from `HF_TOKEN`.
//! `--print-config` prints the effective configuration as TOML (secrets redacted) and exits.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;
use crate::{exit, Exit};

/// Subcommands that read a config file.
const ROLES: &[&str] = &["daemon", "scheduler", "manager"];
/// Flags about the configuration itself, never keys of it.
const META: &[&str] = &["config", "print_config", "help", "version"];

/// A flag whose value is a secret: never printed.
fn is_secret(id: &str) -> bool {
    ["token", "password", "secret", "access_key", "account_key", "database"].iter().any(|s| id.contains(s))
}

fn usage(m: String) -> Exit {
    Exit::new(exit::USAGE, m)
}

/// The parsed command line with its config file and secret files applied, or the exit for
/// `--print-config`, `--help`, `--version` and every refusal.
pub fn parse(args: Vec<OsString>) -> Result<Cli, Exit> {
    let cmd = Cli::command();
    let role = args.get(1).and_then(|a| a.to_str()).filter(|r| ROLES.contains(r)).map(str::to_owned);
    let mut expanded = args.clone();
    let mut given = HashSet::new();
    if let Some(role) = &role {
        let sub = cmd.find_subcommand(role).expect("a role is a subcommand").clone();
        given = given_flags(&sub, &args[2..]);
        let mut injected = secret_files(&sub, &given)?;
        if let Some(path) = config_path(&args[2..]) {
            injected.extend(from_file(&sub, &path, &given)?);
        }
        expanded.splice(2..2, injected);
    }
    let matches = cmd.clone().try_get_matches_from(&expanded).map_err(|e| clap_exit(e, &args))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| clap_exit(e, &args))?;
    if let Some((name, sub)) = matches.subcommand() {
        if sub.try_get_one::<bool>("print_config").ok().flatten() == Some(&true) {
            let def = cmd.find_subcommand(name).expect("matched");
            print!("{}", effective(def, sub, &given));
            return Err(Exit::new(0, String::new()));
        }
    }
    Ok(cli)
}

/// Long flag names given on the command line (`--name` or `--name=value`).
fn given_flags(sub: &Command, args: &[OsString]) -> HashSet<String> {
    let mut out = HashSet::new();
    for a in args.iter().filter_map(|a| a.to_str()) {
        let Some(flag) = a.strip_prefix("--") else { continue };
        let name = flag.split('=').next().unwrap_or(flag);
        if let Some(arg) = sub.get_arguments().find(|x| x.get_long() == Some(name)) {
            out.insert(arg.get_id().to_string());
        }
    }
    out
}

/// `--config PATH`, `--config=PATH` or `FERRY_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("FERRY_CONFIG").map(PathBuf::from)
}

fn env_set(arg: &Arg) -> bool {
    arg.get_env().is_some_and(|e| std::env::var_os(e).is_some())
}

/// Flags for every flag whose environment variable is unset but `<VAR>_FILE` names a file.
fn secret_files(sub: &Command, given: &HashSet<String>) -> Result<Vec<OsString>, Exit> {
    let mut out = vec![];
    for arg in sub.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        if given.contains(arg.get_id().as_str()) || env_set(arg) {
            continue;
        }
        let var = format!("{}_FILE", env.to_string_lossy());
        if let Some(path) = std::env::var_os(&var) {
            let v = read_secret(Path::new(&path)).map_err(|e| usage(format!("{var}: {e}")))?;
            out.push(format!("--{long}").into());
            out.push(v.into());
        }
    }
    Ok(out)
}

/// A secret file's content without its trailing newline.
fn read_secret(path: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

/// The file's keys as flags, for the keys neither the command line nor the environment set.
fn from_file(sub: &Command, path: &Path, given: &HashSet<String>) -> Result<Vec<OsString>, Exit> {
    let at = |m: String| usage(format!("config file {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read it: {e}")))?;
    let doc: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| at(e.message().trim().replace('\n', " ")))?;
    let mut out = vec![];
    for (key, item) in doc.iter() {
        let (flag, secret_file) = match key.strip_suffix("-file") {
            Some(k) if find(sub, k).is_some_and(|a| is_secret(a.get_id().as_str())) => (k, true),
            _ => (key, false),
        };
        let arg = find(sub, flag).filter(|a| !META.contains(&a.get_id().as_str())).ok_or_else(|| {
            at(format!("unknown key `{key}`; the {} keys are its long flags: {}", sub.get_name(), keys(sub)))
        })?;
        if given.contains(arg.get_id().as_str()) || env_set(arg) {
            continue;
        }
        let values = values(arg, item).map_err(|m| at(format!("key `{key}`: {m}")))?;
        for v in values {
            match (v, secret_file) {
                (Value::Flag, _) => out.push(format!("--{flag}").into()),
                (Value::Text(t), true) => {
                    let secret = read_secret(Path::new(&t)).map_err(|m| at(format!("key `{key}`: {m}")))?;
                    out.extend([format!("--{flag}").into(), secret.into()]);
                }
                (Value::Text(t), false) => out.extend([format!("--{flag}").into(), t.into()]),
            }
        }
    }
    Ok(out)
}

fn find<'a>(sub: &'a Command, long: &str) -> Option<&'a Arg> {
    sub.get_arguments().find(|a| a.get_long() == Some(long))
}

fn keys(sub: &Command) -> String {
    let keys: Vec<&str> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !META.contains(&a.get_id().as_str()))
        .filter_map(|a| a.get_long())
        .collect();
    keys.join(", ")
}

enum Value {
    /// A boolean flag set (`seed = true`).
    Flag,
    Text(String),
}

/// What one TOML value says for `arg`: a flag or not, one value or (an array) several.
fn values(arg: &Arg, item: &toml_edit::Item) -> Result<Vec<Value>, String> {
    let flag = matches!(arg.get_action(), ArgAction::SetTrue);
    let v = item.as_value().ok_or("expected a value, not a table")?;
    if flag {
        return match v.as_bool() {
            Some(true) => Ok(vec![Value::Flag]),
            Some(false) => Ok(vec![]),
            None => Err("expected true or false".into()),
        };
    }
    let scalar = |v: &toml_edit::Value| -> Result<String, String> {
        match v {
            toml_edit::Value::String(s) => Ok(s.value().clone()),
            toml_edit::Value::Integer(i) => Ok(i.value().to_string()),
            toml_edit::Value::Float(f) => Ok(f.value().to_string()),
            toml_edit::Value::Boolean(b) => Ok(b.value().to_string()),
            _ => Err("expected a string, a number or an array of them".into()),
        }
    };
    match v {
        toml_edit::Value::Array(a) if matches!(arg.get_action(), ArgAction::Append) => {
            a.iter().map(|x| scalar(x).map(Value::Text)).collect()
        }
        toml_edit::Value::Array(_) => Err("takes one value, not an array".into()),
        other => Ok(vec![Value::Text(scalar(other)?)]),
    }
}

/// A clap refusal as one line; a value that came from the config file is named by its key.
fn clap_exit(e: clap::Error, given: &[OsString]) -> Exit {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return Exit::new(0, String::new());
    }
    if matches!(e.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) {
        let _ = e.print();
        return Exit::new(exit::USAGE, String::new());
    }
    let text = e.render().to_string();
    let mut line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    if let Some(first) = line.first_mut() {
        *first = first.trim_start_matches("error: ");
    }
    let mut msg = String::new();
    for l in line {
        if !msg.is_empty() {
            msg.push_str(if msg.ends_with(':') { " " } else { "; " });
        }
        msg.push_str(l);
    }
    let flag = e.get(clap::error::ContextKind::InvalidArg).map(|a| a.to_string()).unwrap_or_default();
    let long = flag.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default().to_owned();
    let from_cli = given.iter().any(|a| a.to_string_lossy().split('=').next() == Some(&format!("--{long}")));
    if !long.is_empty() && !from_cli {
        if let Some(path) = config_path(given.get(2..).unwrap_or_default()) {
            msg = format!("config file {}: key `{long}`: {msg}", path.display());
        }
    }
    usage(msg)
}

/// The role's effective configuration as TOML, each value's source in a comment, secrets
/// redacted.
fn effective(def: &Command, m: &ArgMatches, given: &HashSet<String>) -> String {
    let mut out = format!("# ferry {} --print-config\n", def.get_name());
    for arg in def.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if META.contains(&id) || arg.is_hide_set() {
            continue;
        }
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) if given.contains(id) => "command line",
            Some(ValueSource::CommandLine) => "config file",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => {
                out.push_str(&format!("# {long} = (not set)\n"));
                continue;
            }
        };
        let raw: Vec<String> =
            m.get_raw(id).map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect()).unwrap_or_default();
        let rendered = if is_secret(id) {
            "\"<redacted>\"".to_owned()
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            raw.first().cloned().unwrap_or_else(|| "false".into())
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| toml_value(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            raw.first().map(|v| toml_value(v)).unwrap_or_default()
        };
        out.push_str(&format!("{long} = {}  # {source}\n", rendered.trim()));
    }
    out
}

/// A number as a TOML number, anything else as a string.
fn toml_value(v: &str) -> String {
    match v.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml_edit::Value::from(v).to_string().trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn secrets_are_named_by_their_flags() {
        assert!(is_secret("hf_token") && is_secret("s3_secret_access_key") && is_secret("gcs_service_account_key"));
        assert!(!is_secret("proxy_ca_key") && !is_secret("registry_auth"));
    }

    #[test]
    fn a_flag_on_the_command_line_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "max-parents = 3\nback-to-source-limit = 2\n").unwrap();
        let f = f.display().to_string();
        let cli = parse(os(&["ferry", "scheduler", "--config", &f, "--max-parents", "5"])).unwrap();
        let crate::cli::Command::Scheduler(s) = cli.command else { panic!() };
        assert_eq!((s.max_parents, s.back_to_source_limit), (5, 2));
    }

    #[test]
    fn bad_keys_and_values_are_one_line_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        for (text, says) in [
            ("max-parnets = 3", "unknown key `max-parnets`"),
            ("max-parents = \"many\"", "key `max-parents`"),
            ("avoid-cycles = \"yes\"", "expected true or false"),
            ("max-parents = [1, 2]", "not an array"),
            ("max-parents = ", "config file"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = parse(os(&["ferry", "scheduler", "--config", &f.display().to_string()])).unwrap_err();
            assert_eq!(e.code, exit::USAGE, "{text}");
            assert!(e.message.contains(says) && !e.message.contains('\n'), "{text}: {}", e.message);
        }
        let e = parse(os(&["ferry", "scheduler", "--config", "/nonexistent/s.toml"])).unwrap_err();
        assert!(e.message.contains("cannot read"), "{}", e.message);
    }
}
