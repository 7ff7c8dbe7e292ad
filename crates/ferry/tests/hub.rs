//! Model repositories from a hub: `ferry get [-r] hf://...` against the test hub
//! (`ferry_demo::hub`), whose protocol the real `huggingface_hub` client proves first.

mod common;

use std::path::Path;

use common::{Setup, Spec};
use ferry_demo::data;
use ferry_demo::hub::{HubFile, HubServer};

const TOKEN: &str = "hf_test_token";
const REPO: &str = "models/org/model";

/// `n` small files in nested directories and `lfs` LFS files of `lfs_size` bytes.
fn files(n: usize, lfs: usize, lfs_size: usize) -> Vec<HubFile> {
    let mut v: Vec<HubFile> = (0..n)
        .map(|i| {
            HubFile::new(
                &format!("tokenizer/part-{:03}/vocab-{i}.json", i % 7),
                data::generate(i as u64, 700 + i),
                false,
            )
        })
        .collect();
    v.push(HubFile::new("config.json", r#"{"model_type":"test"}"#, false));
    v.extend((0..lfs).map(|i| {
        HubFile::new(
            &format!("model-{:05}-of-{lfs:05}.safetensors", i + 1),
            data::generate(1000 + i as u64, lfs_size),
            true,
        )
    }));
    v
}

fn same_tree(want: &[HubFile], dir: &Path) -> Result<(), String> {
    for f in want {
        let got = std::fs::read(dir.join(&f.path)).map_err(|e| format!("{}: {e}", f.path))?;
        if got != f.bytes {
            return Err(format!("{}: bytes differ", f.path));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_snapshot_download_works_against_the_test_hub() {
    let hub = HubServer::start(Some(TOKEN)).await.unwrap();
    let want = files(12, 2, 300_000);
    hub.commit(REPO, "main", want.clone());
    let dir = tempfile::tempdir().unwrap();
    let script = "import sys\nfrom huggingface_hub import snapshot_download\n\
                  print(snapshot_download('org/model', endpoint=sys.argv[1], token=sys.argv[2], local_dir=sys.argv[3]))";
    // scripts/test installs huggingface_hub into a virtualenv and names its python.
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(python)
        .args(["-c", script, &hub.endpoint(), TOKEN])
        .arg(dir.path().join("snapshot"))
        .env("HF_HUB_CACHE", dir.path().join("cache"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .output()
        .await
        .expect("run python3 (scripts/test installs huggingface_hub)");
    assert!(out.status.success(), "snapshot_download: {}", String::from_utf8_lossy(&out.stderr));
    same_tree(&want, &dir.path().join("snapshot")).unwrap();
}

async fn get(
    peer: &ferry_demo::cluster::DaemonInfo,
    hub: &HubServer,
    what: &str,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let endpoint = hub.endpoint();
    let mut args = vec![what, "--hf-endpoint", &endpoint, "--hf-token", TOKEN, "--json", "--quiet"];
    args.extend(extra);
    common::ferry_get(&peer.socket, args[0], out, &args[1..]).await
}

fn report(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    })
}

/// Task ids by path from a `--json` report.
fn task_ids(v: &serde_json::Value) -> std::collections::HashMap<String, String> {
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| Some((f["path"].as_str()?.to_owned(), f["task_id"].as_str()?.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_file_repository_reaches_four_daemons_with_the_hub_serving_each_file_once() {
    let hub = HubServer::start(Some(TOKEN)).await.unwrap();
    let want = files(150, 4, 2 << 20);
    let first = hub.commit(REPO, "main", want.clone());
    let s = Setup::start(Spec { peers: 4, files: &[("unused", 1)], ..Default::default() }).await;
    let work = tempfile::tempdir().unwrap();

    let runs = s.peers.iter().map(|p| {
        let (p, out) = (p.clone(), work.path().join(&p.name));
        let hub = &hub;
        async move { (get(&p, hub, "hf://org/model", &out, &["-r"]).await, out) }
    });
    let mut reports = vec![];
    for (o, out) in futures::future::join_all(runs).await {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        same_tree(&want, &out).unwrap();
        let v = report(&o);
        assert_eq!(
            (v["commit"].as_str(), v["ok"].as_u64(), v["failed"].as_u64()),
            (Some(first.as_str()), Some(155), Some(0))
        );
        reports.push(v);
    }
    for f in &want {
        // Once from the hub, plus the one-byte access checks each daemon makes with its token.
        let served = hub.served(f);
        assert!(served >= f.bytes.len() as u64 && served <= f.bytes.len() as u64 + 8, "{}: {served} bytes", f.path);
    }
    assert!(!hub.cdn_saw_authorization(), "the token went only to the hub");

    // Again on one host: the LFS files are there and verified; nothing is fetched.
    let out = work.path().join(&s.peers[0].name);
    let again = report(&get(&s.peers[0], &hub, "hf://org/model", &out, &["-r", "--include", "*.safetensors"]).await);
    assert!(again["files"].as_array().unwrap().iter().all(|f| f["status"] == "present"), "{again}");

    // The branch moves: one LFS file changes, and its new content is corrupt at the CDN.
    let mut moved = want.clone();
    let changed = moved.iter_mut().find(|f| f.lfs).unwrap();
    *changed = HubFile::new(&changed.path.clone(), data::generate(77, 2 << 20), true);
    let changed = changed.clone();
    hub.commit(REPO, "main", moved);
    hub.corrupt(&changed);
    let out = work.path().join("moved");
    let o = get(&s.peers[1], &hub, "hf://org/model", &out, &["-r"]).await;
    assert_eq!(o.status.code(), Some(ferry::exit::INTEGRITY as i32), "{}", String::from_utf8_lossy(&o.stderr));
    let v = report(&o);
    assert_eq!((v["ok"].as_u64(), v["failed"].as_u64()), (Some(154), Some(1)), "{v}");
    let (before, after) = (task_ids(&reports[1]), task_ids(&v));
    for f in want.iter().filter(|f| f.path != changed.path) {
        // Small files too: their task is git's blob id, not the commit's URL.
        assert_eq!(before[&f.path], after[&f.path], "{}: an unchanged file keeps its task", f.path);
        assert!(hub.served(f) <= f.bytes.len() as u64 + 8, "{}: not read from the hub again", f.path);
    }
    assert!(!out.join(&changed.path).exists(), "nothing of the corrupt file is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_repository_input_gets_one_line_and_its_exit_code() {
    let hub = HubServer::start(Some(TOKEN)).await.unwrap();
    hub.commit(REPO, "main", files(3, 1, 1000));
    let s = Setup::start(Spec { peers: 1, files: &[("unused", 1)], ..Default::default() }).await;
    let out = tempfile::tempdir().unwrap();
    let p = &s.peers[0];
    let cases: [(&str, &[&str], u8, &str); 5] = [
        ("hf://org/-bad", &["-r"], ferry::exit::USAGE, "not a hub repository"),
        ("hf://org/model", &["-r", "--revision", "nope"], ferry::exit::ORIGIN, "does not exist"),
        ("hf://org/missing", &["-r"], ferry::exit::ORIGIN, "does not exist"),
        ("hf://org/model", &["-r", "--include", "*.gguf"], ferry::exit::USAGE, "nothing to fetch"),
        ("hf://org/model/nope.bin", &[], ferry::exit::USAGE, "no file `nope.bin`"),
    ];
    for (url, extra, code, says) in cases {
        let o = get(p, &hub, url, &out.path().join("x"), extra).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code as i32), "{url} {extra:?}: {err}");
        assert!(err.contains(says) && err.trim().lines().count() == 1, "{url} {extra:?}: {err}");
    }
    // A hostile hub listing a file outside the output directory: refused whole.
    hub.commit("models/org/evil", "main", vec![HubFile::new("../../escape.json", "{}", false)]);
    let o = get(p, &hub, "hf://org/evil", &out.path().join("a/b"), &["-r"]).await;
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsafe path"));
    assert!(!out.path().join("escape.json").exists() && !out.path().join("a/escape.json").exists());
    // A wrong token: the hub's refusal, named.
    let o = common::ferry_get(
        &p.socket,
        "hf://org/model",
        &out.path().join("y"),
        &["-r", "--hf-endpoint", &hub.endpoint(), "--hf-token", "wrong"],
    )
    .await;
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused access"));
}

const MS_REPO: &str = "models/org/ms-model";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modelscope_snapshot_download_works_against_the_test_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = HubServer::start_tls(None, dir.path()).await.unwrap();
    let want = files(9, 2, 300_000);
    hub.commit(MS_REPO, "master", want.clone());
    let script = "import sys\nfrom modelscope.hub.snapshot_download import snapshot_download\n\
                  print(snapshot_download('org/ms-model', revision='master', local_dir=sys.argv[1]))";
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    // The client speaks HTTPS only, to `MODELSCOPE_DOMAIN`.
    let out = tokio::process::Command::new(python)
        .args(["-c", script])
        .arg(dir.path().join("snapshot"))
        .env("MODELSCOPE_DOMAIN", hub.addr.to_string())
        .env("MODELSCOPE_CACHE", dir.path().join("cache"))
        .env("REQUESTS_CA_BUNDLE", &ca)
        .env("CI_TEST", "1")
        .output()
        .await
        .expect("run python3 (scripts/test installs modelscope)");
    assert!(out.status.success(), "snapshot_download: {}", String::from_utf8_lossy(&out.stderr));
    same_tree(&want, &dir.path().join("snapshot")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modelscope_repository_reaches_two_daemons_over_https_with_sha256_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, ca) = HubServer::start_tls(None, dir.path()).await.unwrap();
    let want = files(20, 3, 1 << 20);
    let commit = hub.commit(MS_REPO, "master", want.clone());
    let ca_arg = ca.display().to_string();
    let peer_args = ["--ca-cert", ca_arg.as_str()];
    let s = Setup::start(Spec {
        peers: 2,
        files: &[("unused", 1)],
        peer_args: &peer_args,
        seed_args: &peer_args,
        ..Default::default()
    })
    .await;
    let endpoint = hub.endpoint();
    let ms = |p: &ferry_demo::cluster::DaemonInfo, url: &str, out: &Path, extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(common::bin());
        cmd.args(["get", url, "-O"]).arg(out).args(["--modelscope-endpoint", &endpoint, "--json", "--quiet"]);
        cmd.args(extra).arg("--socket").arg(&p.socket).env("SSL_CERT_FILE", &ca);
        async move { cmd.output().await.unwrap() }
    };
    let mut ids = vec![];
    for p in &s.peers {
        let out = dir.path().join(&p.name);
        let o = ms(p, "modelscope://org/ms-model", &out, &["-r"]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        same_tree(&want, &out).unwrap();
        let v = report(&o);
        assert_eq!((v["commit"].as_str(), v["revision"].as_str()), (Some(commit.as_str()), Some("master")));
        ids.push(task_ids(&v));
    }
    assert_eq!(ids[0], ids[1]);
    for f in &want {
        assert_eq!(hub.served(f), f.bytes.len() as u64, "{}: read from the hub once", f.path);
        // The task is the file's sha256 whatever its URL: the branch name is in no task id.
        let digest = format!("sha256:{}", f.sha256());
        let id = ferry_types::TaskId::derive(&ferry_types::TaskIdInput {
            digest: Some(&digest.parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(ids[0][&f.path], id.to_string(), "{}", f.path);
    }
    // One file, and a revision that does not exist.
    let one = dir.path().join("config.json");
    let o = ms(&s.peers[0], "modelscope://org/ms-model/config.json", &one, &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ms(&s.peers[0], "modelscope://org/ms-model", &dir.path().join("x"), &["-r", "--revision", "v9"]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32), "{err}");
    assert!(err.contains("no revision `v9`") && err.trim().lines().count() == 1, "{err}");
}
