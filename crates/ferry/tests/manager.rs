//! The manager (`ferry manager`) as operators and Harbor use it: its REST API and auth on
//! SQLite and on PostgreSQL, clusters whose scopes place daemons (and move them without a
//! restart), image preheats from a real registry (`docker-registry`) in Harbor's request
//! shape, and two managers over one PostgreSQL sharing jobs. Real processes on loopback;
//! PostgreSQL is the throwaway server `scripts/test` starts (`FERRY_TEST_POSTGRES`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bin, scheduler_stats};
use ferry_demo::cluster::Cluster;
use ferry_demo::data;
use ferry_demo::oci::{Blob, Image, Layout};
use ferry_demo::registry::Registry;
use ferry_testkit::wait_until;
use serde_json::{json, Value};

const ROOT_PASSWORD: &str = "root-pass-1";

struct Manager {
    rest: String,
    grpc: String,
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("manager.db").display())
}

/// A fresh database on the test PostgreSQL server.
async fn postgres() -> String {
    let base = std::env::var("FERRY_TEST_POSTGRES")
        .expect("FERRY_TEST_POSTGRES: the tests need a PostgreSQL server; `scripts/test` starts one");
    let name = format!("ferry_test_{}", rand::random::<u32>());
    let out = tokio::process::Command::new("psql")
        .args([base.as_str(), "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .await
        .expect("run psql (apt-get install postgresql-client)");
    assert!(out.status.success(), "create database: {}", String::from_utf8_lossy(&out.stderr));
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    format!("{prefix}/{name}")
}

async fn start_manager(cluster: &mut Cluster, name: &str, db: &str, extra: &[&str]) -> Manager {
    let mut args: Vec<String> = [
        "manager",
        "--database",
        db,
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--root-password",
        ROOT_PASSWORD,
        "--keepalive-interval",
        "1s",
        "--job-lease",
        "3s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let ready = cluster.start_process(name, args).await.unwrap();
    Manager {
        rest: format!("http://{}", ready["addr"].as_str().unwrap()),
        grpc: ready["grpc"].as_str().unwrap().to_owned(),
    }
}

/// One REST call: the status and the JSON body (`Null` when the body is not JSON).
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut req = c.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn sign_in(m: &Manager) -> String {
    let (s, v) = call(
        "POST",
        &format!("{}/api/v1/users/signin", m.rest),
        None,
        Some(json!({"name": "root", "password": ROOT_PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

async fn token(m: &Manager, session: &str, scopes: &[&str], ttl: Option<i64>) -> (i64, String) {
    let body = json!({"name": format!("t-{}", scopes.join("-")), "scopes": scopes, "expires_in_seconds": ttl});
    let (s, v) = call("POST", &format!("{}/api/v1/personal-access-tokens", m.rest), Some(session), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    (v["id"].as_i64().unwrap(), v["token"].as_str().unwrap().to_owned())
}

fn message(v: &Value) -> String {
    v["message"].as_str().unwrap_or_else(|| panic!("an error body with a message: {v}")).to_owned()
}

/// The API's contract on one database: auth (401/403), bad input (400/404), clusters, the
/// OpenAPI document against the routes served, and persistence across a restart.
async fn api_contract(db: &str) {
    let mut cluster = Cluster::new(bin()).unwrap();
    let m = start_manager(&mut cluster, "manager", db, &[]).await;
    let url = |p: &str| format!("{}{p}", m.rest);

    let r = reqwest::get(url("/healthy")).await.unwrap();
    assert_eq!(r.status(), 200, "/healthy needs no token");
    let (s, v) = call("GET", &url("/api/v1/clusters"), None, None).await;
    assert_eq!(s, 401, "no token");
    assert!(message(&v).contains("Bearer"), "{v}");
    let (s, _) =
        call("POST", &url("/api/v1/users/signin"), None, Some(json!({"name": "root", "password": "nope-nope"}))).await;
    assert_eq!(s, 401, "a wrong password");
    let session = sign_in(&m).await;

    let (_, job_token) = token(&m, &session, &["job"], None).await;
    let (cluster_id, cluster_token) = token(&m, &session, &["cluster"], None).await;
    let (s, v) = call("GET", &url("/api/v1/clusters"), Some(&job_token), None).await;
    assert_eq!(s, 403, "a token without the scope: {v}");
    assert!(message(&v).contains("`cluster` scope"), "{v}");
    let (s, v) = call("GET", &url("/api/v1/clusters"), Some(&cluster_token), None).await;
    assert_eq!(s, 200);
    let first = v.as_array().unwrap();
    assert_eq!((first.len(), &first[0]["name"], &first[0]["is_default"]), (1, &json!("default"), &json!(true)), "{v}");
    let (s, v) = call("GET", &url("/api/v1/clusters"), Some("ferry_not-a-token"), None).await;
    assert_eq!(s, 401, "an unknown token: {v}");

    // Bad input: one clear message each.
    let raw = reqwest::Client::new()
        .post(url("/api/v1/jobs"))
        .bearer_auth(&job_token)
        .header("content-type", "application/json")
        .body("{\"type\": \"preheat\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400, "malformed JSON");
    assert!(message(&raw.json().await.unwrap()).contains("malformed JSON"));
    let job =
        |args: Value, clusters: Value| json!({"type": "preheat", "args": args, "scheduler_cluster_ids": clusters});
    let file = json!({"type": "file", "url": "http://127.0.0.1:9/f"});
    let (s, v) = call("POST", &url("/api/v1/jobs"), Some(&job_token), Some(job(file.clone(), json!([999])))).await;
    assert_eq!(s, 404, "an unknown cluster: {v}");
    assert!(message(&v).contains("no cluster 999"), "{v}");
    let (s, v) = call("POST", &url("/api/v1/jobs"), Some(&job_token), Some(json!({"type": "warm"}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("preheat, get_task, delete_task"), "{v}");
    let registry = Registry::start(None).await.unwrap();
    let missing = json!({"type": "image", "url": format!("{}/v2/no/such/manifests/v1", registry.url())});
    let (s, v) = call("POST", &url("/api/v1/jobs"), Some(&job_token), Some(job(missing, json!([])))).await;
    assert_eq!(s, 404, "an unknown image: {v}");
    assert!(message(&v).contains("not found"), "{v}");
    let (s, v) = call(
        "POST",
        &url("/api/v1/jobs"),
        Some(&job_token),
        Some(job(json!({"type": "image", "url": "oops"}), json!([]))),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("/v2/REPOSITORY/manifests/"), "{v}");
    let (s, v) = call(
        "POST",
        &url("/api/v1/personal-access-tokens"),
        Some(&session),
        Some(json!({"name": "x", "scopes": ["root"]})),
    )
    .await;
    assert_eq!(s, 400, "an unknown scope: {v}");

    // Clusters: create, change, show, refuse bad scopes, delete.
    let (s, c) = call(
        "POST",
        &url("/api/v1/clusters"),
        Some(&cluster_token),
        Some(json!({
        "name": "gpu", "is_default": true, "scopes": {"cidrs": ["10.0.0.0/8"]}, "config": {"parents_per_peer": 4}})),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    let id = c["id"].as_i64().unwrap();
    let (s, v) = call(
        "POST",
        &url("/api/v1/clusters"),
        Some(&cluster_token),
        Some(json!({"name": "bad", "scopes": {"cidrs": ["10/8"]}})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(message(&v).contains("not a CIDR"), "{v}");
    let (s, v) = call("POST", &url("/api/v1/clusters"), Some(&cluster_token), Some(json!({"name": "gpu"}))).await;
    assert_eq!(s, 409, "a taken name: {v}");
    let (s, v) = call(
        "PATCH",
        &url(&format!("/api/v1/clusters/{id}")),
        Some(&cluster_token),
        Some(json!({"scopes": {"hostname_regex": "^gpu-"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scopes"]["hostname_regex"], "^gpu-");
    assert_eq!(v["config"]["parents_per_peer"], 4, "fields not named stay");
    let (s, v) = call("GET", &url(&format!("/api/v1/clusters/{id}")), Some(&cluster_token), None).await;
    assert_eq!((s, v["schedulers"].clone(), v["is_default"].clone()), (200, json!([]), json!(true)));
    let (_, v) = call("GET", &url("/api/v1/clusters/1"), Some(&cluster_token), None).await;
    assert_eq!(v["is_default"], false, "one default cluster at a time: {v}");
    let (s, _) = call("GET", &url("/api/v1/clusters/4242"), Some(&cluster_token), None).await;
    assert_eq!(s, 404);

    // Revoked and expired tokens are refused.
    let (s, _) =
        call("DELETE", &url(&format!("/api/v1/personal-access-tokens/{cluster_id}")), Some(&session), None).await;
    assert_eq!(s, 200);
    let (s, v) = call("GET", &url("/api/v1/clusters"), Some(&cluster_token), None).await;
    assert_eq!(s, 401, "a revoked token: {v}");
    assert!(message(&v).contains("revoked"));
    let (_, short) = token(&m, &session, &["cluster"], Some(1)).await;
    wait_until("the short token to expire", Duration::from_secs(10), || async {
        let (s, v) = call("GET", &url("/api/v1/clusters"), Some(&short), None).await;
        (s == 401 && message(&v).contains("expired")).then_some(())
    })
    .await;
    let (s, v) = call("GET", &url("/api/v1/personal-access-tokens"), Some(&session), None).await;
    assert_eq!(s, 200);
    let states: Vec<&str> = v.as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["active", "revoked", "expired"], "{v}");
    assert!(!v.to_string().contains(&job_token), "a listing never shows a secret");

    // The OpenAPI document names exactly what is served: every documented route answers
    // (401 without a token, not 404/405), and an undocumented one is 404.
    let (s, doc) = call("GET", &url("/api/v1/openapi.json"), Some(&session), None).await;
    assert_eq!(s, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let concrete = path.replace("{id}", "4242");
            let (s, _) = call(&method.to_uppercase(), &url(&concrete), None, None).await;
            let open = op["security"].as_array().is_some_and(|a| a.is_empty());
            match (open, path.as_str()) {
                (true, "/healthy") => assert_eq!(s, 200, "{method} {path}"),
                (true, _) => assert_eq!(s, 400, "{method} {path} without a body"),
                (false, _) => assert_eq!(s, 401, "{method} {path} is served and needs a token"),
            }
        }
    }
    let (s, _) = call("GET", &url("/api/v1/secrets"), Some(&session), None).await;
    assert_eq!(s, 404);
    for served in ["/oapi/v1/jobs", "/api/v1/jobs/{id}", "/api/v1/clusters/{id}", "/api/v1/personal-access-tokens/{id}"]
    {
        assert!(paths.contains_key(served), "{served} documented");
    }

    // Everything persists: a restarted manager knows the cluster and the tokens.
    cluster.kill("manager").await;
    let m = start_manager(&mut cluster, "manager", db, &[]).await;
    let (s, v) = call("GET", &format!("{}/api/v1/jobs", m.rest), Some(&job_token), None).await;
    assert_eq!((s, v), (200, json!([])), "no job was created by the refused requests");
    let (s, v) = call("GET", &format!("{}/api/v1/clusters/{id}", m.rest), Some(&session), None).await;
    assert_eq!((s, v["name"].clone()), (200, json!("gpu")));
    assert!(!cluster.log_of("manager").contains("created user `root`"), "no second root password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    api_contract(&sqlite(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_postgres() {
    api_contract(&postgres().await).await;
}

async fn skopeo(args: &[&str]) {
    let out =
        tokio::process::Command::new("skopeo").arg("--insecure-policy").args(args).output().await.expect("skopeo");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Pushes a one-platform image with two layers to `registry` as `test/app:v1`; returns the
/// digests of its manifest, config and layers.
async fn push_image(registry: &Registry, dir: &Path) -> Vec<String> {
    let layout = Layout::new(&[Image {
        architecture: "amd64".into(),
        layers: vec![Blob::new(data::generate(21, 3 << 20)), Blob::new(data::generate(22, 1 << 20))],
    }]);
    layout.write(&dir.join("src"), "v1").unwrap();
    let src = format!("oci:{}:v1", dir.join("src").display());
    skopeo(&["copy", "--dest-tls-verify=false", &src, &format!("docker://{}/test/app:v1", registry.addr)]).await;
    // What the registry holds: read back its manifest.
    let manifest: Value = reqwest::Client::new()
        .get(format!("{}/v2/test/app/manifests/v1", registry.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    out.extend(manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()));
    out
}

async fn hosts_of(addr: &str) -> u64 {
    scheduler_stats(addr).await.hosts
}

/// A scheduler of cluster `cluster_id`, keeping alive with `managers` (gRPC, comma-separated).
async fn start_scheduler(cluster: &mut Cluster, name: &str, managers: &str, cluster_id: i64) -> String {
    let args = [
        "scheduler",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--manager",
        managers,
        "--cluster-id",
        &cluster_id.to_string(),
    ];
    let ready = cluster.start_process(name, args.map(String::from).to_vec()).await.unwrap();
    ready["addr"].as_str().unwrap().to_owned()
}

async fn start_daemon(cluster: &mut Cluster, name: &str, seed: bool, managers: &str) {
    let args = ["--manager", managers, "--manager-refresh", "300ms", "--hostname", name, "--piece-size", "256KiB"];
    cluster.start_daemon(name, seed, &args).await.unwrap();
}

/// Two clusters whose scopes place hosts by name; a scope changed moves a running daemon;
/// then Harbor's preheat sequence (PAT, /healthy, POST /oapi/v1/jobs, poll) warms an image
/// from a real registry onto a cluster's seeds, after which `ferry get` of its blobs takes
/// nothing from the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_place_daemons_and_harbor_preheats_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(bin()).unwrap();
    let m = start_manager(&mut cluster, "manager", &sqlite(dir.path()), &[]).await;
    let session = sign_in(&m).await;
    let create = |name: &str, regex: &str| {
        let body = json!({"name": name, "scopes": {"hostname_regex": regex}});
        let (url, session) = (format!("{}/api/v1/clusters", m.rest), session.clone());
        async move { call("POST", &url, Some(&session), Some(body)).await.1["id"].as_i64().unwrap() }
    };
    let (a, b) = (create("alpha", "^alpha-").await, create("beta", "^beta-").await);
    let sa = start_scheduler(&mut cluster, "scheduler-a", &m.grpc, a).await;
    let sb = start_scheduler(&mut cluster, "scheduler-b", &m.grpc, b).await;
    wait_until("both schedulers to register", Duration::from_secs(20), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/schedulers", m.rest), Some(&session), None).await;
        (v.as_array()?.iter().filter(|s| s["state"] == "active").count() == 2).then_some(())
    })
    .await;
    for (name, seed) in [("alpha-seed", true), ("alpha-1", false), ("beta-seed", true), ("beta-1", false)] {
        start_daemon(&mut cluster, name, seed, &m.grpc).await;
    }
    wait_until("each daemon in its scope's cluster", Duration::from_secs(20), || async {
        (hosts_of(&sa).await == 2 && hosts_of(&sb).await == 2).then_some(())
    })
    .await;

    // Moving a scope moves a daemon, without a restart.
    let patch = |id: i64, regex: &str| {
        let (url, session) = (format!("{}/api/v1/clusters/{id}", m.rest), session.clone());
        let body = json!({"scopes": {"hostname_regex": regex}});
        async move { assert_eq!(call("PATCH", &url, Some(&session), Some(body)).await.0, 200) }
    };
    patch(a, "^alpha-seed$").await;
    patch(b, "^(beta-|alpha-1$)").await;
    wait_until("alpha-1 to move to cluster beta", Duration::from_secs(20), || async {
        (hosts_of(&sa).await == 1 && hosts_of(&sb).await == 3).then_some(())
    })
    .await;
    // A cluster's settings reach its scheduler and its daemons while they run.
    let body = json!({"config": {"parents_per_peer": 3, "upload_rate_bytes": 50_000_000}});
    let (s, v) = call("PATCH", &format!("{}/api/v1/clusters/{b}", m.rest), Some(&session), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    wait_until("cluster beta's settings in force", Duration::from_secs(20), || async {
        let scheduler = cluster.log_of("scheduler-b");
        let daemon = cluster.log_of("beta-1");
        (scheduler.contains("parents_per_peer: 3") && daemon.contains("bytes_per_second=50000000")).then_some(())
    })
    .await;
    let (_, seeds) = call("GET", &format!("{}/api/v1/seed-peers", m.rest), Some(&session), None).await;
    let mut names: Vec<&str> = seeds.as_array().unwrap().iter().map(|s| s["host_id"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["alpha-seed", "beta-seed"], "seeds keep alive with the manager");

    // Harbor's sequence, with a personal access token.
    let registry = Registry::start(None).await.unwrap();
    let blobs = push_image(&registry, dir.path()).await;
    let before: Vec<usize> = blobs.iter().map(|d| registry.full_gets(d)).collect();
    let (_, pat) = token(&m, &session, &["job"], None).await;
    assert_eq!(reqwest::get(format!("{}/healthy", m.rest)).await.unwrap().status(), 200);
    let harbor = json!({
        "type": "preheat",
        "args": {
            "type": "image",
            "url": format!("{}/v2/test/app/manifests/v1", registry.url()),
            "tag": "",
            "filtered_query_params": "",
            "headers": {"X-Harbor-Trace": "1"},
            "scope": "all_seed_peers",
            "concurrent_count": 0,
            "timeout": 0
        },
        "scheduler_cluster_ids": [b]
    });
    let (s, created) = call("POST", &format!("{}/oapi/v1/jobs", m.rest), Some(&pat), Some(harbor)).await;
    assert_eq!(s, 200, "{created}");
    assert!(created["id"].is_u64(), "Harbor reads the id as an integer: {created}");
    assert_eq!(created["state"], "PENDING");
    let id = created["id"].as_u64().unwrap();
    let done = wait_until("the preheat job to finish", Duration::from_secs(60), || async {
        let (_, v) = call("GET", &format!("{}/oapi/v1/jobs/{id}", m.rest), Some(&pat), None).await;
        (v["state"] != "PENDING").then_some(v)
    })
    .await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    for field in ["created_at", "updated_at"] {
        let t = done[field].as_str().unwrap();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{field} `{t}`: {e}"));
    }
    let states = done["result"]["job_states"].as_array().unwrap();
    assert_eq!(states.len(), 1);
    assert!(states[0]["error"].is_string());
    let results = states[0]["results"].as_array().unwrap();
    assert_eq!(results[0]["scheduler_cluster_id"], json!(b));
    assert_eq!(results[0]["failure_tasks"], json!([]));
    let success = results[0]["success_tasks"].as_array().unwrap();
    assert_eq!(success.len(), blobs.len(), "one seed (beta-seed) x config and layers: {success:?}");
    for t in success {
        for f in ["url", "hostname", "ip"] {
            assert!(t[f].is_string(), "{f} in {t}");
        }
        assert_eq!(t["hostname"], "beta-seed");
        assert!(t["url"].as_str().unwrap().starts_with(&format!("{}/v2/test/app/blobs/sha256:", registry.url())));
    }
    for (d, b) in blobs.iter().zip(&before) {
        assert_eq!(registry.full_gets(d), b + 1, "the seed read {d} once");
    }

    // The blobs now come from the cluster: a host of cluster beta takes none from the registry.
    let host = cluster.daemon_info("beta-1");
    for d in &blobs {
        let out = dir.path().join(d.replace(':', "-"));
        let url = format!("{}/v2/test/app/blobs/{d}", registry.url());
        let o = common::ferry_get(&host.socket, &url, &out, &["--digest", d]).await;
        assert!(o.status.success(), "get {d}: {}", String::from_utf8_lossy(&o.stderr));
    }
    for (d, b) in blobs.iter().zip(&before) {
        assert_eq!(registry.full_gets(d), b + 1, "{d} not read from the registry again");
    }
    let st = common::stats(&host).await.unwrap();
    assert_eq!(st.bytes_from_origin, 0, "beta-1 read nothing from the registry");
    assert!(st.bytes_from_peers > 0);

    // The task's holders, through a get_task job on Ferry's own API.
    let get = json!({"type": "get_task", "args": {"digest": blobs[1]}, "scheduler_cluster_ids": [b]});
    let (s, v) = call("POST", &format!("{}/api/v1/jobs", m.rest), Some(&pat), Some(get)).await;
    assert_eq!(s, 200, "{v}");
    let id = v["id"].as_u64().unwrap();
    let done = wait_until("the get_task job", Duration::from_secs(20), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/jobs/{id}", m.rest), Some(&pat), None).await;
        (v["state"] == "SUCCESS" || v["state"] == "FAILURE").then_some(v)
    })
    .await;
    let holders: Vec<&str> = done["result"]["job_states"][0]["results"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["host_id"].as_str().unwrap())
        .collect();
    assert!(holders.contains(&"beta-seed") && holders.contains(&"beta-1"), "{done}");

    // The manager gone, everyone keeps what it last heard and downloads go on.
    cluster.kill("manager").await;
    wait_until("beta-1 to notice the manager is gone", Duration::from_secs(20), || async {
        cluster.log_of("beta-1").contains("keeping the current ones").then_some(())
    })
    .await;
    assert_eq!((hosts_of(&sa).await, hosts_of(&sb).await), (1, 3), "no host moved");
    let files = [("after.bin".to_owned(), data::generate(9, 1 << 20))].into_iter().collect();
    let origin = ferry_demo::origin::Origin::start(files, Default::default()).await.unwrap();
    let out = dir.path().join("after.bin");
    let o = common::ferry_get(&host.socket, &origin.url("after.bin"), &out, &[]).await;
    assert!(o.status.success(), "a download without the manager: {}", String::from_utf8_lossy(&o.stderr));
}

/// Two managers over one PostgreSQL: the one running a job dies mid-job and the other takes
/// it over once its lease lapses, and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_the_manager_running_it() {
    let db = postgres().await;
    let mut cluster = Cluster::new(bin()).unwrap();
    let m1 = start_manager(&mut cluster, "manager-1", &db, &[]).await;
    let m2 = start_manager(&mut cluster, "manager-2", &db, &[]).await;
    let session = sign_in(&m1).await;
    let (s, c) = call(
        "POST",
        &format!("{}/api/v1/clusters", m1.rest),
        Some(&session),
        Some(json!({"name": "only", "is_default": true})),
    )
    .await;
    assert_eq!(s, 200, "{c}");
    let id = c["id"].as_i64().unwrap();
    let both = format!("{},{}", m1.grpc, m2.grpc);
    start_scheduler(&mut cluster, "scheduler", &both, id).await;
    wait_until("the scheduler to register", Duration::from_secs(20), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/schedulers", m2.rest), Some(&session), None).await;
        (v.as_array()?.iter().any(|s| s["state"] == "active")).then_some(())
    })
    .await;
    start_daemon(&mut cluster, "seed", true, &both).await;
    // A slow origin: the preheat takes seconds, long enough to kill its manager mid-way.
    let files = [("slow.bin".to_owned(), data::generate(5, 6 << 20))].into_iter().collect();
    let origin = ferry_demo::origin::Origin::start(
        files,
        ferry_demo::origin::OriginOptions { throttle: Some(1 << 20), ..Default::default() },
    )
    .await
    .unwrap();
    let body = json!({"type": "preheat", "args": {"type": "file", "url": origin.url("slow.bin"), "scope": "single_seed_peer"}});
    let (s, job) = call("POST", &format!("{}/api/v1/jobs", m1.rest), Some(&session), Some(body)).await;
    assert_eq!(s, 200, "{job}");
    let job_id = job["id"].as_u64().unwrap();
    let running = wait_until("a manager to run the job", Duration::from_secs(20), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/jobs/{job_id}", m2.rest), Some(&session), None).await;
        (v["state"] == "RUNNING").then_some(v)
    })
    .await;
    let owner = running["manager"].as_str().unwrap().to_owned();
    let (victim, survivor) = if owner.contains(&format!("-{}-", cluster.pid("manager-1").unwrap())) {
        ("manager-1", &m2)
    } else {
        assert!(owner.contains(&format!("-{}-", cluster.pid("manager-2").unwrap())), "owner {owner}");
        ("manager-2", &m1)
    };
    assert!(origin.bytes_served() < 6 << 20, "killed mid-job");
    cluster.kill(victim).await;
    let done = wait_until("the other manager to finish the job", Duration::from_secs(60), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/jobs/{job_id}", survivor.rest), Some(&session), None).await;
        (v["state"] == "SUCCESS" || v["state"] == "FAILURE").then_some(v)
    })
    .await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["attempts"], 2, "taken over once: {done}");
    assert!(done["manager"].as_str().unwrap().is_empty(), "a finished job has no manager");
    let tasks = done["result"]["job_states"][0]["results"][0]["success_tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["host_id"], "seed");
}

async fn ferry(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin()).args(args).env_remove("FERRY_TOKEN").output().await.unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ferry token`, `ferry cluster`, `ferry preheat file` and `ferry task` against a manager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(bin()).unwrap();
    let m = start_manager(&mut cluster, "manager", &sqlite(dir.path()), &[]).await;
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{ROOT_PASSWORD}\n")).unwrap();
    let login = ["--manager-url", &m.rest, "--user", "root", "--password-file", pw.to_str().unwrap()];
    let create: Vec<&str> =
        ["token", "create", "--name", "ci", "--scope", "job,task,cluster,token"].iter().copied().chain(login).collect();
    let token = stdout(&ferry(&create).await).trim().to_owned();
    assert!(token.starts_with("ferry_"), "{token}");
    let auth = ["--manager-url", m.rest.as_str(), "--token", token.as_str()];
    let with = |cmd: &[&str]| cmd.iter().copied().chain(auth).map(str::to_owned).collect::<Vec<String>>();

    let session = sign_in(&m).await;
    let (_, c) = call(
        "POST",
        &format!("{}/api/v1/clusters", m.rest),
        Some(&session),
        Some(json!({"name": "main", "is_default": true})),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    start_scheduler(&mut cluster, "scheduler", &m.grpc, id).await;
    wait_until("the scheduler to register", Duration::from_secs(20), || async {
        let (_, v) = call("GET", &format!("{}/api/v1/schedulers", m.rest), Some(&session), None).await;
        (v.as_array()?.iter().any(|s| s["state"] == "active")).then_some(())
    })
    .await;
    start_daemon(&mut cluster, "seed", true, &m.grpc).await;
    start_daemon(&mut cluster, "host-1", false, &m.grpc).await;
    let list = stdout(&ferry(&with(&["cluster", "list"]).iter().map(String::as_str).collect::<Vec<_>>()).await);
    assert!(list.contains("main (default)"), "{list}");
    let show = stdout(
        &ferry(&with(&["cluster", "show", &id.to_string()]).iter().map(String::as_str).collect::<Vec<_>>()).await,
    );
    assert!(show.contains("scheduler\t127.0.0.1:") && show.contains("active"), "{show}");

    let files = [("model.bin".to_owned(), data::generate(8, 2 << 20))].into_iter().collect();
    let origin = ferry_demo::origin::Origin::start(files, Default::default()).await.unwrap();
    let url = origin.url("model.bin");
    let run = |cmd: Vec<String>| async move { ferry(&cmd.iter().map(String::as_str).collect::<Vec<_>>()).await };
    let out = stdout(&run(with(&["preheat", "file", &url, "--scope", "all_peers", "--json"])).await);
    let job: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert_eq!(origin.bytes_served(), 2 << 20, "the origin served the file once for both hosts");
    let holders = stdout(&run(with(&["task", "holders", &url])).await);
    assert!(holders.contains("seed\t") && holders.contains("host-1\t"), "{holders}");
    let stat = stdout(&run(with(&["task", "stat", &url])).await);
    assert!(stat.contains("2097152 bytes, held whole by 2 hosts"), "{stat}");
    let rm = stdout(&run(with(&["task", "rm", &url])).await);
    assert!(rm.contains("dropped by 2 hosts"), "{rm}");

    // Tokens: listed without secrets, revoked, then refused with their own exit code.
    let listed = stdout(&run(with(&["token", "list", "--json"])).await);
    assert!(!listed.contains(&token));
    let tokens: Value = serde_json::from_str(listed.trim()).unwrap();
    let tid = tokens[0]["id"].to_string();
    stdout(&run(with(&["token", "revoke", &tid])).await);
    let refused = run(with(&["cluster", "list"])).await;
    assert_eq!(refused.status.code(), Some(11), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("revoked"));
    let none = ferry(&["cluster", "list", "--manager-url", &m.rest]).await;
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no credentials"));
}
