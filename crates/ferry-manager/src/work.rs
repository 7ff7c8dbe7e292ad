//! What a job does: its arguments checked (at creation, so a bad request is refused at once)
//! and carried out through each cluster's schedulers.
//!
//! A preheat is sent to one live scheduler of each cluster (`Scheduler.Preheat`); every host
//! keeps a session with every scheduler of its cluster, so any one of them can order the
//! seeds or hosts the scope names. A host's own download joins the P2P task like any pull,
//! so of a cluster's hosts only one reads the origin.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::{
    preheat_work, Header, PreheatFile, PreheatImage, PreheatRequest, PreheatScope, PreheatWork,
};
use ferry_types::{FileDigest, TaskId, TaskIdInput};
use futures::StreamExt;
use serde::Deserialize;

use crate::clusters::{self, Members};
use crate::db::Db;
use crate::jobs::{ClusterResult, JobResult, JobState, Kind, TaskResult};
use crate::ManagerError;

/// A preheat's default deadline (Harbor's default too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Files preheated at once in one cluster, when the job does not say.
const DEFAULT_CONCURRENCY: usize = 4;

/// The arguments of every job type; each type reads the fields it needs. Unknown fields are
/// ignored, so clients written for Dragonfly's open API work unchanged.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Args {
    /// `image` or `file`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub urls: Vec<String>,
    pub tag: String,
    pub application: String,
    /// Query parameters left out of the task's identity, `&`- or `,`-separated.
    pub filtered_query_params: String,
    pub headers: BTreeMap<String, String>,
    /// Registry credentials for an image (sent as Basic auth).
    pub username: String,
    pub password: String,
    pub platform: String,
    pub digest: String,
    /// For `get_task`/`delete_task`: the task id (64 hex), instead of a URL.
    pub task_id: String,
    /// `single_seed_peer` (default), `all_seed_peers` or `all_peers`.
    pub scope: String,
    pub count: u32,
    pub ips: Vec<String>,
    pub concurrent_count: i64,
    /// Nanoseconds (a Go `time.Duration`, as Harbor sends it); 0: 30 minutes.
    pub timeout: i64,
    pub scheduler_cluster_ids: Vec<i64>,
}

impl Args {
    pub fn timeout(&self) -> Duration {
        match self.timeout {
            t if t > 0 => Duration::from_nanos(t as u64),
            _ => DEFAULT_TIMEOUT,
        }
    }

    fn filtered(&self) -> Vec<String> {
        self.filtered_query_params
            .split(['&', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn headers(&self) -> Vec<Header> {
        let mut h: Vec<Header> =
            self.headers.iter().map(|(k, v)| Header { name: k.clone(), value: v.clone() }).collect();
        if !self.username.is_empty() {
            use base64::Engine as _;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password));
            h.push(Header { name: "Authorization".into(), value: format!("Basic {basic}") });
        }
        h
    }

    fn scope(&self) -> Result<PreheatScope, ManagerError> {
        match self.scope.as_str() {
            "" | "single_seed_peer" => Ok(PreheatScope::SingleSeed),
            "all_seed_peers" => Ok(PreheatScope::AllSeeds),
            "all_peers" => Ok(PreheatScope::AllHosts),
            s => Err(ManagerError::BadRequest(format!(
                "unknown scope `{s}`; scopes are single_seed_peer, all_seed_peers, all_peers"
            ))),
        }
    }
}

/// An image named by its manifest URL (`http[s]://registry/v2/<repository>/manifests/<ref>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUrl {
    pub base: url::Url,
    pub repository: String,
    pub reference: String,
}

impl ImageUrl {
    pub fn parse(s: &str) -> Result<Self, ManagerError> {
        let bad = || {
            ManagerError::BadRequest(format!(
                "image url `{s}` is not http[s]://REGISTRY/v2/REPOSITORY/manifests/TAG-OR-DIGEST"
            ))
        };
        let u = url::Url::parse(s).map_err(|_| bad())?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(bad());
        }
        let path = u.path().strip_prefix("/v2/").ok_or_else(bad)?;
        let (repository, reference) = path.rsplit_once("/manifests/").ok_or_else(bad)?;
        if repository.is_empty() || reference.is_empty() || reference.contains('/') {
            return Err(bad());
        }
        let mut base = u.clone();
        base.set_path("/");
        base.set_query(None);
        Ok(Self { base, repository: repository.to_owned(), reference: reference.to_owned() })
    }

    /// As container tools write it: `registry/repository:tag` or `...@digest`.
    pub fn reference(&self) -> String {
        let host = crate::work::host_port(&self.base);
        let sep = if self.reference.contains(':') { '@' } else { ':' };
        format!("{host}/{}{sep}{}", self.repository, self.reference)
    }

    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}v2/{}/blobs/{digest}", self.base, self.repository)
    }
}

fn host_port(u: &url::Url) -> String {
    match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    }
}

/// What a checked job will do.
#[derive(Clone, Debug)]
pub enum Plan {
    Image { image: Box<ImageUrl>, work: PreheatWork },
    Files(Vec<PreheatWork>),
    Task { task: TaskId, label: String },
}

/// Checks a job's arguments without touching the network.
pub fn plan(kind: Kind, a: &Args) -> Result<Plan, ManagerError> {
    let headers = a.headers();
    if let Some(h) = headers.iter().find(|h| h.name.is_empty() || h.name.contains(['\r', '\n', ':'])) {
        return Err(ManagerError::BadRequest(format!("header name `{}` is not valid", h.name)));
    }
    match kind {
        Kind::Preheat => {
            a.scope()?;
            match a.kind.as_str() {
                "image" => {
                    let image = ImageUrl::parse(&a.url)?;
                    let work = preheat_work::Work::Image(PreheatImage {
                        reference: image.reference(),
                        platform: a.platform.clone(),
                        insecure: image.base.scheme() == "http",
                        headers,
                    });
                    Ok(Plan::Image { image: Box::new(image), work: PreheatWork { work: Some(work) } })
                }
                "file" | "" => {
                    let urls: Vec<&String> = a.urls.iter().chain((!a.url.is_empty()).then_some(&a.url)).collect();
                    if urls.is_empty() {
                        return Err(ManagerError::BadRequest("a file preheat needs `url` or `urls`".into()));
                    }
                    if !a.digest.is_empty() && urls.len() > 1 {
                        return Err(ManagerError::BadRequest("`digest` names one file; give one url with it".into()));
                    }
                    urls.into_iter().map(|u| file_work(a, u, &headers)).collect::<Result<_, _>>().map(Plan::Files)
                }
                t => Err(ManagerError::BadRequest(format!("unknown preheat type `{t}`; types are image, file"))),
            }
        }
        Kind::GetTask | Kind::DeleteTask => task_of(a).map(|(task, label)| Plan::Task { task, label }),
    }
}

fn file_work(a: &Args, u: &str, headers: &[Header]) -> Result<PreheatWork, ManagerError> {
    let parsed = url::Url::parse(u).map_err(|e| ManagerError::BadRequest(format!("url `{u}`: {e}")))?;
    if !a.digest.is_empty() {
        a.digest.parse::<FileDigest>().map_err(|e| ManagerError::BadRequest(e.to_string()))?;
    }
    let file = PreheatFile {
        url: parsed.to_string(),
        headers: headers.to_vec(),
        digest: a.digest.clone(),
        tag: a.tag.clone(),
        application: a.application.clone(),
        filtered_query_params: a.filtered(),
    };
    Ok(PreheatWork { work: Some(preheat_work::Work::File(file)) })
}

/// The task a `get_task`/`delete_task` job names: by id, by digest, or by URL (with its tag,
/// application and filtered parameters, exactly as the download named it).
fn task_of(a: &Args) -> Result<(TaskId, String), ManagerError> {
    if !a.task_id.is_empty() {
        let id = a.task_id.parse::<TaskId>().map_err(|e| ManagerError::BadRequest(format!("task_id: {e}")))?;
        return Ok((id, a.task_id.clone()));
    }
    let digest = match a.digest.as_str() {
        "" => None,
        d => Some(d.parse::<FileDigest>().map_err(|e| ManagerError::BadRequest(e.to_string()))?),
    };
    let url = match a.url.as_str() {
        "" if digest.is_none() => {
            return Err(ManagerError::BadRequest("name the task by `task_id`, `digest` or `url`".into()))
        }
        "" => None,
        u => Some(url::Url::parse(u).map_err(|e| ManagerError::BadRequest(format!("url `{u}`: {e}")))?),
    };
    let filtered = a.filtered();
    let id = TaskId::derive(&TaskIdInput {
        url: url.as_ref(),
        digest: digest.as_ref(),
        tag: &a.tag,
        application: &a.application,
        filtered_query_params: &filtered,
    });
    let label = digest.map(|d| d.to_string()).unwrap_or_else(|| a.url.clone());
    Ok((id, label))
}

/// Asks the registry whether the image exists (with the job's headers), so a wrong reference
/// is refused when the job is created rather than found failed later.
pub async fn check_image(client: &reqwest::Client, image: &ImageUrl, a: &Args) -> Result<(), ManagerError> {
    let url = format!("{}v2/{}/manifests/{}", image.base, image.repository, image.reference);
    let mut req = client.head(&url).header(
        "accept",
        "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    );
    for h in a.headers() {
        req = req.header(h.name, h.value);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ManagerError::BadRequest(format!("cannot reach the registry {}: {e}", host_port(&image.base))))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        404 => Err(ManagerError::NotFound(format!(
            "image {} not found: the registry has no such repository or tag",
            image.reference()
        ))),
        401 | 403 => Err(ManagerError::BadRequest(format!(
            "the registry refused access to {} ({}); pass its credentials in `headers` or `username`/`password`",
            image.reference(),
            resp.status()
        ))),
        s => Err(ManagerError::BadRequest(format!("the registry answered {s} for {}", image.reference()))),
    }
}

/// Runs a job over its clusters (when it names none: every cluster a live scheduler serves).
pub async fn execute(db: &Db, kind: Kind, a: &Args, cluster_ids: &[i64], silent_ms: i64) -> JobResult {
    let plan = match plan(kind, a) {
        Ok(p) => p,
        Err(e) => return JobResult { job_states: vec![failed_state(e.to_string())] },
    };
    let ids = match cluster_ids {
        [] => match serving_clusters(db, silent_ms).await {
            Ok(ids) if ids.is_empty() => {
                return JobResult { job_states: vec![failed_state("no cluster has a live scheduler".into())] }
            }
            Ok(ids) => ids,
            Err(e) => return JobResult { job_states: vec![failed_state(e.to_string())] },
        },
        ids => ids.to_vec(),
    };
    let states = futures::stream::iter(ids)
        .map(|cluster| {
            let plan = plan.clone();
            async move { run_in_cluster(db, kind, a, &plan, cluster, silent_ms).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut states = states;
    states.sort_by_key(|s| s.results.first().map_or(0, |r| r.scheduler_cluster_id));
    JobResult { job_states: states }
}

/// The clusters with a live scheduler: where a job that names no cluster runs. (A cluster
/// nobody serves, such as an unused `default`, has nothing to do.)
async fn serving_clusters(db: &Db, silent_ms: i64) -> Result<Vec<i64>, ManagerError> {
    let live = clusters::members(db, Members::Schedulers, None, silent_ms).await?;
    let mut ids: Vec<i64> = live.into_iter().filter(|m| m.state == "active").map(|m| m.cluster_id).collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn failed_state(error: String) -> JobState {
    JobState { state: "FAILURE".into(), error, results: vec![] }
}

async fn run_in_cluster(db: &Db, kind: Kind, a: &Args, plan: &Plan, cluster: i64, silent_ms: i64) -> JobState {
    let schedulers = match clusters::members(db, Members::Schedulers, Some(cluster), silent_ms).await {
        Ok(m) => m,
        Err(e) => return failed_state(e.to_string()),
    };
    let mut live: Vec<String> =
        schedulers.iter().filter(|m| m.state == "active").map(|m| format!("{}:{}", m.ip, m.port)).collect();
    live.sort();
    let mut result = ClusterResult { scheduler_cluster_id: cluster, ..Default::default() };
    if live.is_empty() {
        let mut s = failed_state(format!("cluster {cluster} has no live scheduler"));
        s.results.push(result);
        return s;
    }
    let outcome = match (kind, plan) {
        (Kind::Preheat, Plan::Image { image, work }) => {
            preheat(&live, a, work.clone(), Some(image), &mut result).await;
            Ok(())
        }
        (Kind::Preheat, Plan::Files(works)) => {
            let concurrency =
                usize::try_from(a.concurrent_count).ok().filter(|c| *c > 0).unwrap_or(DEFAULT_CONCURRENCY);
            let parts = futures::stream::iter(works.iter().cloned())
                .map(|w| {
                    let live = &live;
                    async move {
                        let mut r = ClusterResult::default();
                        preheat(live, a, w, None, &mut r).await;
                        r
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            for p in parts {
                result.success_tasks.extend(p.success_tasks);
                result.failure_tasks.extend(p.failure_tasks);
            }
            Ok(())
        }
        (Kind::GetTask, Plan::Task { task, label }) => holders(&live, task, label, &mut result).await,
        (Kind::DeleteTask, Plan::Task { task, label }) => drop_task(&live, task, label, &mut result).await,
        _ => Err("the job's arguments do not fit its type".to_owned()),
    };
    let error = outcome.err().unwrap_or_default();
    let ok = error.is_empty() && result.failure_tasks.is_empty();
    JobState { state: if ok { "SUCCESS" } else { "FAILURE" }.into(), error, results: vec![result] }
}

async fn connect(addr: &str) -> Result<SchedulerClient<tonic::transport::Channel>, String> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3));
    let ch = ep.connect().await.map_err(|e| format!("scheduler {addr}: {e}"))?;
    Ok(SchedulerClient::new(ch).max_decoding_message_size(64 << 20))
}

/// One unit of preheat work in one cluster: through the first scheduler that answers.
async fn preheat(live: &[String], a: &Args, work: PreheatWork, image: Option<&ImageUrl>, out: &mut ClusterResult) {
    let label = match &work.work {
        Some(preheat_work::Work::File(f)) => f.url.clone(),
        Some(preheat_work::Work::Image(i)) => i.reference.clone(),
        None => String::new(),
    };
    let req = PreheatRequest {
        work: Some(work),
        scope: a.scope().unwrap_or(PreheatScope::SingleSeed) as i32,
        count: a.count,
        timeout_millis: u64::try_from(a.timeout().as_millis()).unwrap_or(u64::MAX),
        ips: a.ips.clone(),
    };
    let mut last_error = String::new();
    for addr in live {
        let mut client = match connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        match client.preheat(req.clone()).await {
            Ok(resp) => {
                for r in resp.into_inner().results {
                    let task = |url: String| TaskResult {
                        url,
                        hostname: r.hostname.clone(),
                        ip: r.ip.clone(),
                        host_id: r.host_id.clone(),
                        description: r.error.clone(),
                    };
                    if r.ok {
                        let urls = if r.urls.is_empty() { vec![label.clone()] } else { r.urls.clone() };
                        out.success_tasks.extend(urls.into_iter().map(|u| match image {
                            Some(img) if u.starts_with("sha256:") || u.starts_with("sha512:") => task(img.blob_url(&u)),
                            _ => task(u),
                        }));
                    } else {
                        out.failure_tasks.push(task(label.clone()));
                    }
                }
                return;
            }
            // The scheduler refused the work itself (no seed, bad input): no other will do better.
            Err(s) if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::Unknown => {
                last_error = format!("scheduler {addr}: {}", s.message());
                break;
            }
            Err(s) => last_error = format!("scheduler {addr}: {}", s.message()),
        }
    }
    out.failure_tasks.push(TaskResult { url: label, description: last_error, ..Default::default() });
}

/// Asks every live scheduler of a cluster (tasks are spread over them); the answers, or the
/// last refusal when none answered.
async fn ask_every<T, F, Fut>(live: &[String], mut call: F) -> Result<Vec<T>, String>
where
    F: FnMut(SchedulerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut answers = vec![];
    let mut last_error = String::new();
    for addr in live {
        match connect(addr).await {
            Err(e) => last_error = e,
            Ok(client) => match call(client).await {
                Ok(r) => answers.push(r.into_inner()),
                Err(s) => last_error = format!("scheduler {addr}: {}", s.message()),
            },
        }
    }
    if answers.is_empty() {
        Err(last_error)
    } else {
        Ok(answers)
    }
}

/// Records `host_id` as a success of the task, once.
fn add_host(out: &mut ClusterResult, task: TaskResult) {
    if !out.success_tasks.iter().any(|t| t.host_id == task.host_id) {
        out.success_tasks.push(task);
    }
}

async fn holders(live: &[String], task: &TaskId, label: &str, out: &mut ClusterResult) -> Result<(), String> {
    let answers = ask_every(live, |mut c| {
        let req = ferry_proto::scheduler::TaskHoldersRequest { task_id: task.0.to_vec() };
        async move { c.task_holders(req).await }
    })
    .await?;
    for r in answers {
        if r.content_length > 0 {
            out.content_length = Some(r.content_length);
        }
        for h in r.holders.into_iter().filter(|h| h.complete) {
            let t = TaskResult {
                url: label.to_owned(),
                hostname: h.hostname,
                ip: h.ip,
                host_id: h.host_id,
                ..Default::default()
            };
            add_host(out, t);
        }
    }
    Ok(())
}

async fn drop_task(live: &[String], task: &TaskId, label: &str, out: &mut ClusterResult) -> Result<(), String> {
    let answers = ask_every(live, |mut c| {
        let req = ferry_proto::scheduler::DropTaskRequest { task_id: task.0.to_vec() };
        async move { c.drop_task(req).await }
    })
    .await?;
    for host_id in answers.into_iter().flat_map(|r| r.hosts) {
        add_host(out, TaskResult { url: label.to_owned(), host_id, ..Default::default() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_read_as_harbor_sends_them() {
        let i = ImageUrl::parse("http://127.0.0.1:5000/v2/library/app/manifests/v1").unwrap();
        assert_eq!(i.reference(), "127.0.0.1:5000/library/app:v1");
        assert_eq!(i.blob_url("sha256:ab"), "http://127.0.0.1:5000/v2/library/app/blobs/sha256:ab");
        let d = format!("sha256:{}", "a".repeat(64));
        let i = ImageUrl::parse(&format!("https://harbor.example/v2/p/app/manifests/{d}")).unwrap();
        assert_eq!(i.reference(), format!("harbor.example/p/app@{d}"));
        for bad in
            ["ftp://x/v2/a/manifests/b", "http://x/a/manifests/b", "http://x/v2/a/blobs/b", "http://x/v2//manifests/b"]
        {
            assert!(ImageUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_check_their_arguments() {
        let image = Args { kind: "image".into(), url: "http://r:5000/v2/a/manifests/v1".into(), ..Default::default() };
        assert!(matches!(plan(Kind::Preheat, &image), Ok(Plan::Image { .. })));
        let bad_scope = Args { scope: "everyone".into(), ..image.clone() };
        assert!(plan(Kind::Preheat, &bad_scope).unwrap_err().to_string().contains("single_seed_peer"));
        let files =
            Args { kind: "file".into(), urls: vec!["http://o/a".into(), "http://o/b".into()], ..Default::default() };
        assert!(matches!(plan(Kind::Preheat, &files), Ok(Plan::Files(w)) if w.len() == 2));
        assert!(plan(Kind::Preheat, &Args { kind: "file".into(), ..Default::default() }).is_err());
        assert!(
            plan(Kind::Preheat, &Args { kind: "blob".into(), url: "http://o/a".into(), ..Default::default() }).is_err()
        );
        assert!(plan(Kind::GetTask, &Args::default()).unwrap_err().to_string().contains("task_id"));
        let by_url = Args { url: "http://o/a?sig=1".into(), filtered_query_params: "sig".into(), ..Default::default() };
        let (Plan::Task { task: a, .. }, Plan::Task { task: b, .. }) = (
            plan(Kind::GetTask, &by_url).unwrap(),
            plan(Kind::GetTask, &Args { url: "http://o/a?sig=2".into(), ..by_url.clone() }).unwrap(),
        ) else {
            panic!("task plans")
        };
        assert_eq!(a, b, "filtered parameters do not change the task");
    }

    #[test]
    fn harbor_timeouts_are_nanoseconds() {
        let a = Args { timeout: 90_000_000_000, ..Default::default() };
        assert_eq!(a.timeout(), Duration::from_secs(90));
        assert_eq!(Args::default().timeout(), DEFAULT_TIMEOUT);
    }
}
