//! Jobs: work the manager runs across clusters, persisted so they survive a manager's death.
//!
//! A job is PENDING until a manager leases it, RUNNING while that manager renews its lease,
//! then SUCCESS or FAILURE with per-cluster results. A lease is a compare-and-set on the row
//! (`lease_until` in the past, or the job still PENDING), so over one PostgreSQL exactly one
//! manager runs a job at a time, and a dead manager's job is taken over once its lease lapses.
//! A job taken over more than [`MAX_ATTEMPTS`] times fails instead of running again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::{now_ms, rfc3339, Db};
use crate::ManagerError;

/// Times a job is started before it is failed for good (its managers keep dying).
pub const MAX_ATTEMPTS: i64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Pending,
    Running,
    Success,
    Failure,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Running => "RUNNING",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "RUNNING" => State::Running,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            _ => State::Pending,
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, State::Success | State::Failure)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Fetch files or an image into hosts' caches.
    Preheat,
    /// Which hosts hold a task.
    GetTask,
    /// Every holder drops a task.
    DeleteTask,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Preheat => "preheat",
            Kind::GetTask => "get_task",
            Kind::DeleteTask => "delete_task",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ManagerError> {
        match s {
            "preheat" => Ok(Kind::Preheat),
            "get_task" => Ok(Kind::GetTask),
            "delete_task" => Ok(Kind::DeleteTask),
            _ => Err(ManagerError::BadRequest(format!(
                "unknown job type `{s}`; types are preheat, get_task, delete_task"
            ))),
        }
    }
}

/// One host's part of a job, as Harbor reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub url: String,
    pub hostname: String,
    pub ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// What one cluster's schedulers reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterResult {
    pub scheduler_cluster_id: i64,
    pub success_tasks: Vec<TaskResult>,
    pub failure_tasks: Vec<TaskResult>,
    /// For `get_task`: the task's length, when a holder said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_length: Option<u64>,
}

/// One cluster's state within a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub state: String,
    pub error: String,
    pub results: Vec<ClusterResult>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_states: Vec<JobState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub state: State,
    pub args: serde_json::Value,
    pub scheduler_cluster_ids: Vec<i64>,
    pub result: JobResult,
    pub attempts: i64,
    /// The manager running the job now (`host-pid-start`), empty when none is.
    #[serde(default)]
    pub manager: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Job {
    /// The job with secret header values blanked, as the API shows it.
    pub fn redacted(mut self) -> Self {
        if let Some(h) = self.args.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for (k, v) in h.iter_mut() {
                if ferry_types::is_secret_header(k) {
                    *v = serde_json::Value::String("REDACTED".into());
                }
            }
        }
        for secret in ["password"] {
            if let Some(v) = self.args.get_mut(secret) {
                *v = serde_json::Value::String("REDACTED".into());
            }
        }
        self
    }
}

fn job_of(r: &AnyRow) -> Result<Job, ManagerError> {
    let text = |c: &str| -> Result<String, ManagerError> { Ok(r.try_get::<String, _>(c)?) };
    let bad = |e: serde_json::Error| ManagerError::Internal(format!("stored job: {e}"));
    let result = text("result")?;
    Ok(Job {
        id: r.try_get("id")?,
        kind: Kind::parse(&text("kind")?)?,
        state: State::parse(&text("state")?),
        args: serde_json::from_str(&text("args")?).map_err(bad)?,
        scheduler_cluster_ids: serde_json::from_str(&text("cluster_ids")?).map_err(bad)?,
        result: if result.is_empty() { JobResult::default() } else { serde_json::from_str(&result).map_err(bad)? },
        attempts: r.try_get("attempts")?,
        manager: r.try_get("lease_owner")?,
        created_at: rfc3339(r.try_get("created_at")?),
        updated_at: rfc3339(r.try_get("updated_at")?),
    })
}

pub async fn insert(
    db: &Db,
    kind: Kind,
    args: &serde_json::Value,
    clusters: &[i64],
    user: i64,
) -> Result<Job, ManagerError> {
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO jobs (kind, state, args, cluster_ids, user_id, created_at, updated_at) \
         VALUES ($1, 'PENDING', $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(kind.name())
    .bind(args.to_string())
    .bind(serde_json::to_string(clusters).expect("serializable"))
    .bind(user)
    .bind(now)
    .fetch_one(&db.pool)
    .await?;
    get(db, row.try_get("id")?).await
}

pub async fn get(db: &Db, id: i64) -> Result<Job, ManagerError> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    job_of(&row.ok_or_else(|| ManagerError::NotFound(format!("no job {id}")))?)
}

/// The newest jobs first, at most `limit`, optionally in one state.
pub async fn list(db: &Db, state: Option<State>, limit: i64) -> Result<Vec<Job>, ManagerError> {
    let rows = sqlx::query("SELECT * FROM jobs WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2")
        .bind(state.map_or("", State::name))
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(job_of).collect()
}

/// Leases the oldest runnable job for `owner` until `until_ms`: a PENDING one, or a RUNNING
/// one whose lease lapsed (its manager died). `None` when there is none, or when another
/// manager took it first.
pub async fn claim(db: &Db, owner: &str, until_ms: i64) -> Result<Option<Job>, ManagerError> {
    let now = now_ms();
    let runnable = "(state = 'PENDING' OR (state = 'RUNNING' AND lease_until < $3))";
    let sql = format!(
        "UPDATE jobs SET state = 'RUNNING', lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
         updated_at = $3 WHERE id = (SELECT id FROM jobs WHERE {runnable} ORDER BY id LIMIT 1) AND {runnable} \
         RETURNING *"
    );
    let row = sqlx::query(&sql).bind(owner).bind(until_ms).bind(now).fetch_optional(&db.pool).await?;
    row.as_ref().map(job_of).transpose()
}

/// Extends `owner`'s lease; false when it lost the job (another manager took it over).
pub async fn renew(db: &Db, id: i64, owner: &str, until_ms: i64) -> Result<bool, ManagerError> {
    let done = sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'RUNNING'")
        .bind(until_ms)
        .bind(id)
        .bind(owner)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a job's outcome, if `owner` still holds it.
pub async fn finish(db: &Db, id: i64, owner: &str, state: State, result: &JobResult) -> Result<bool, ManagerError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, result = $2, lease_owner = '', lease_until = 0, updated_at = $3 \
         WHERE id = $4 AND lease_owner = $5",
    )
    .bind(state.name())
    .bind(serde_json::to_string(result).expect("serializable"))
    .bind(now_ms())
    .bind(id)
    .bind(owner)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The job's overall state from its clusters' states: SUCCESS only when every cluster
/// succeeded on every host it tried.
pub fn overall(result: &JobResult) -> State {
    let ok = |s: &JobState| s.error.is_empty() && s.results.iter().all(|r| r.failure_tasks.is_empty());
    if !result.job_states.is_empty() && result.job_states.iter().all(ok) {
        State::Success
    } else {
        State::Failure
    }
}

/// Per-state job counts, for metrics.
pub async fn counts(db: &Db) -> Result<BTreeMap<String, i64>, ManagerError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetch_all(&db.pool).await?;
    rows.iter().map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_succeeds_only_when_every_cluster_did() {
        let ok = JobState { state: "SUCCESS".into(), results: vec![ClusterResult::default()], ..Default::default() };
        let failed_host = JobState {
            results: vec![ClusterResult { failure_tasks: vec![TaskResult::default()], ..Default::default() }],
            ..Default::default()
        };
        let no_scheduler = JobState { error: "no scheduler".into(), ..Default::default() };
        assert_eq!(overall(&JobResult { job_states: vec![ok.clone()] }), State::Success);
        assert_eq!(overall(&JobResult { job_states: vec![ok.clone(), failed_host] }), State::Failure);
        assert_eq!(overall(&JobResult { job_states: vec![ok, no_scheduler] }), State::Failure);
        assert_eq!(overall(&JobResult::default()), State::Failure);
    }

    #[test]
    fn secrets_in_args_are_blanked() {
        let job = Job {
            id: 1,
            kind: Kind::Preheat,
            state: State::Pending,
            args: serde_json::json!({"headers": {"Authorization": "Bearer x", "X-Trace": "1"}, "password": "p"}),
            scheduler_cluster_ids: vec![],
            result: JobResult::default(),
            attempts: 0,
            manager: String::new(),
            created_at: String::new(),
            updated_at: String::new(),
        }
        .redacted();
        assert_eq!(job.args["headers"]["Authorization"], "REDACTED");
        assert_eq!(job.args["headers"]["X-Trace"], "1");
        assert_eq!(job.args["password"], "REDACTED");
    }
}
