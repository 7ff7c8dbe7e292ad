//! Commands that go through the manager's REST API: `ferry task`, `ferry cluster`,
//! `ferry token`, and `ferry preheat` with `--manager-url`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{
    ClusterCommand, ManagerClientArgs, PreheatTarget, TaskArgs, TaskCommand, TaskIdentityArgs, TokenCommand,
};
use crate::{exit, Exit};

/// The manager's API with the caller's credentials.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    pub json: bool,
}

fn read_file(path: &std::path::Path, what: &str) -> Result<String, Exit> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| Exit::new(exit::USAGE, format!("{what} {}: {e}", path.display())))
}

impl Api {
    /// Connects with a token, or signs in with a user and password.
    pub async fn connect(a: &ManagerClientArgs) -> Result<Self, Exit> {
        let base = a
            .manager_url
            .clone()
            .ok_or_else(|| Exit::new(exit::USAGE, "no manager: give --manager-url or set FERRY_MANAGER_URL"))?;
        let base = base.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
        let mut api = Self { base, token: String::new(), http, json: a.json };
        api.token = match (&a.token, &a.token_file, &a.user) {
            (Some(t), _, _) => t.clone(),
            (None, Some(f), _) => read_file(f, "--token-file")?,
            (None, None, Some(user)) => {
                let pw =
                    a.password_file.as_deref().ok_or_else(|| Exit::new(exit::USAGE, "--user needs --password-file"))?;
                let body = json!({"name": user, "password": read_file(pw, "--password-file")?});
                let v = api.call("POST", "/api/v1/users/signin", Some(body)).await?;
                v["token"].as_str().unwrap_or_default().to_owned()
            }
            (None, None, None) => {
                return Err(Exit::new(
                    exit::USAGE,
                    "no credentials: give --token/FERRY_TOKEN, --token-file, or --user with --password-file",
                ))
            }
        };
        Ok(api)
    }

    /// One call; the manager's message, with an exit code by status, when it refuses.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Exit> {
        let method: reqwest::Method = method.parse().map_err(|_| Exit::new(exit::FAILURE, "bad method"))?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Exit::new(exit::FAILURE, format!("cannot reach the manager at {}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let message = v["message"].as_str().unwrap_or("no message").to_owned();
        let code = match status {
            401 | 403 => exit::UNAUTHORIZED,
            404 => exit::NOT_FOUND,
            400 | 409 => exit::USAGE,
            _ => exit::FAILURE,
        };
        Err(Exit::new(code, format!("manager: {message}")))
    }

    fn print(&self, v: &Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{v}");
        } else {
            print!("{}", text());
        }
    }

    /// Creates a job and, unless `no_wait`, waits for it (bounded by `timeout`); prints it.
    pub async fn run_job(&self, body: Value, no_wait: bool, timeout: Duration) -> Result<Value, Exit> {
        let job = self.call("POST", "/api/v1/jobs", Some(body)).await?;
        let id = job["id"].as_i64().unwrap_or_default();
        if no_wait {
            self.print(&job, || format!("job {id} created\n"));
            return Ok(job);
        }
        let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(10);
        let progress = !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last = String::new();
        loop {
            let v = self.call("GET", &format!("/api/v1/jobs/{id}"), None).await?;
            let state = v["state"].as_str().unwrap_or_default();
            if progress && state != last {
                eprintln!("job {id}: {state}");
                last = state.to_owned();
            }
            match v["state"].as_str() {
                Some("SUCCESS") => return Ok(v),
                Some("FAILURE") => {
                    let why = failures(&v);
                    if self.json {
                        println!("{v}");
                    }
                    return Err(Exit::new(exit::FAILURE, format!("job {id} failed: {why}")));
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(Exit::new(
                        exit::TIMEOUT,
                        format!("job {id} is still running; see GET /api/v1/jobs/{id}"),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// Every error and failed host of a job, on one line.
fn failures(job: &Value) -> String {
    let mut out = vec![];
    for s in job["result"]["job_states"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str().filter(|e| !e.is_empty()) {
            out.push(e.to_owned());
        }
        for r in s["results"].as_array().into_iter().flatten() {
            for f in r["failure_tasks"].as_array().into_iter().flatten() {
                let host = f["hostname"].as_str().filter(|h| !h.is_empty()).or(f["host_id"].as_str()).unwrap_or("?");
                out.push(format!("{host}: {}", f["description"].as_str().unwrap_or_default()));
            }
        }
    }
    if out.is_empty() {
        "no reason given".into()
    } else {
        out.join("; ")
    }
}

/// Every success task of a job: (cluster, host, url).
fn successes(job: &Value) -> Vec<(i64, String, String)> {
    let mut out = vec![];
    for s in job["result"]["job_states"].as_array().into_iter().flatten() {
        for r in s["results"].as_array().into_iter().flatten() {
            let cluster = r["scheduler_cluster_id"].as_i64().unwrap_or_default();
            for t in r["success_tasks"].as_array().into_iter().flatten() {
                let host = t["hostname"].as_str().filter(|h| !h.is_empty()).or(t["host_id"].as_str()).unwrap_or("?");
                out.push((cluster, host.to_owned(), t["url"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    out
}

/// A preheat job through the manager; prints which hosts now hold what.
pub async fn preheat(api: &Api, args: Value, target: &PreheatTarget) -> Result<(), Exit> {
    let mut args = args;
    args["scope"] = json!(target.scope);
    args["timeout"] = json!(u64::try_from(target.timeout.as_nanos()).unwrap_or(u64::MAX));
    let body = json!({"type": "preheat", "args": args, "scheduler_cluster_ids": target.clusters});
    let job = api.run_job(body, target.no_wait, target.timeout).await?;
    if target.no_wait {
        return Ok(());
    }
    let done = successes(&job);
    let mut hosts: Vec<&str> = done.iter().map(|(_, h, _)| h.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    api.print(&job, || {
        format!("job {}: {} items on {} hosts ({})\n", job["id"], done.len(), hosts.len(), hosts.join(", "))
    });
    Ok(())
}

/// A task's identity as the manager's API takes it.
pub(crate) fn identity(i: &TaskIdentityArgs) -> Value {
    json!({"tag": i.tag, "application": i.application, "filtered_query_params": i.filter_query_params.join("&")})
}

fn task_args(a: &TaskArgs) -> Value {
    let t = a.task.as_str();
    let mut args = identity(&a.identity);
    if t.starts_with("sha256:") || t.starts_with("sha512:") {
        args["digest"] = json!(t);
    } else if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        args["task_id"] = json!(t);
    } else {
        args["url"] = json!(t);
    }
    args
}

pub async fn task(c: TaskCommand) -> Result<(), Exit> {
    let (a, kind) = match &c {
        TaskCommand::Stat(a) | TaskCommand::Holders(a) => (a, "get_task"),
        TaskCommand::Rm(a) => (a, "delete_task"),
    };
    let api = Api::connect(&a.manager).await?;
    let body = json!({"type": kind, "args": task_args(a), "scheduler_cluster_ids": a.clusters});
    let job = api.run_job(body, false, Duration::from_secs(60)).await?;
    let hosts = successes(&job);
    match c {
        TaskCommand::Stat(_) => {
            let len = job["result"]["job_states"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["results"][0]["content_length"].as_u64())
                .max();
            let len = len.map_or_else(|| "unknown".to_owned(), |l| format!("{l} bytes"));
            api.print(&job, || format!("{}: {len}, held whole by {} hosts\n", a.task, hosts.len()));
        }
        TaskCommand::Holders(_) => {
            api.print(&job, || hosts.iter().map(|(cluster, host, _)| format!("{host}\tcluster {cluster}\n")).collect())
        }
        TaskCommand::Rm(_) => api.print(&job, || format!("{}: dropped by {} hosts\n", a.task, hosts.len())),
    }
    Ok(())
}

pub async fn cluster(c: ClusterCommand) -> Result<(), Exit> {
    match c {
        ClusterCommand::List(m) => {
            let api = Api::connect(&m).await?;
            let v = api.call("GET", "/api/v1/clusters", None).await?;
            api.print(&v, || {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let default = if c["is_default"] == true { " (default)" } else { "" };
                        format!("{}\t{}{default}\tscopes {}\n", c["id"], c["name"].as_str().unwrap_or(""), c["scopes"])
                    })
                    .collect()
            });
        }
        ClusterCommand::Show { id, manager } => {
            let api = Api::connect(&manager).await?;
            let v = api.call("GET", &format!("/api/v1/clusters/{id}"), None).await?;
            api.print(&v, || {
                let mut out = format!(
                    "{}\t{}\nconfig {}\nscopes {}\n",
                    v["id"],
                    v["name"].as_str().unwrap_or(""),
                    v["config"],
                    v["scopes"]
                );
                for (what, list) in [("scheduler", &v["schedulers"]), ("seed", &v["seed_peers"])] {
                    for m in list.as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "{what}\t{}:{}\t{}\t{}\n",
                            m["ip"].as_str().unwrap_or(""),
                            m["port"],
                            m["hostname"].as_str().unwrap_or(""),
                            m["state"].as_str().unwrap_or("")
                        ));
                    }
                }
                out
            });
        }
    }
    Ok(())
}

pub async fn token(c: TokenCommand) -> Result<(), Exit> {
    match c {
        TokenCommand::Create { name, scopes, expires, manager } => {
            let api = Api::connect(&manager).await?;
            let body = json!({"name": name, "scopes": scopes, "expires_in_seconds": expires.as_secs()});
            let v = api.call("POST", "/api/v1/personal-access-tokens", Some(body)).await?;
            api.print(&v, || format!("{}\n", v["token"].as_str().unwrap_or_default()));
        }
        TokenCommand::List(m) => {
            let api = Api::connect(&m).await?;
            let v = api.call("GET", "/api/v1/personal-access-tokens", None).await?;
            api.print(&v, || {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "{}\t{}\t{}\t{}\texpires {}\n",
                            t["id"],
                            t["name"].as_str().unwrap_or(""),
                            t["user"].as_str().unwrap_or(""),
                            t["state"].as_str().unwrap_or(""),
                            t["expires_at"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            });
        }
        TokenCommand::Revoke { id, manager } => {
            let api = Api::connect(&manager).await?;
            let v = api.call("DELETE", &format!("/api/v1/personal-access-tokens/{id}"), None).await?;
            api.print(&v, || format!("token {id} revoked\n"));
        }
    }
    Ok(())
}
