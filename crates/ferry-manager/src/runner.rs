//! The job runner: every manager runs one. It leases runnable jobs (see [`crate::jobs`]),
//! renews each lease while the job runs, and records the outcome only if it still holds the
//! lease — a manager that lost a job to another (it stalled past its lease) drops its result.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::db::{now_ms, Db};
use crate::jobs::{self, Job, JobResult, JobState, State, MAX_ATTEMPTS};
use crate::metrics::Metrics;
use crate::work::{self, Args};

#[derive(Clone)]
pub struct Runner {
    pub db: Db,
    /// This manager's name in leases (unique per process).
    pub owner: String,
    pub lease: Duration,
    pub workers: usize,
    /// Poked when a job is created here, so it starts without waiting for the next poll.
    pub wake: Arc<Notify>,
    /// A member silent this long is inactive.
    pub silent_ms: i64,
    pub metrics: Arc<Metrics>,
}

/// How often an idle runner looks for jobs (other managers' new jobs, lapsed leases).
const POLL: Duration = Duration::from_millis(500);

impl Runner {
    pub async fn run(self, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.workers.max(1)));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let until = now_ms() + self.lease_ms();
            match jobs::claim(&self.db, &self.owner, until).await {
                Ok(Some(job)) => {
                    let this = self.clone();
                    let cancel = cancel.child_token();
                    let span = tracing::info_span!("job", id = job.id, kind = job.kind.name(), attempt = job.attempts);
                    tokio::spawn(
                        async move {
                            this.run_one(job, cancel).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot look for jobs"),
            }
            drop(permit);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    async fn run_one(&self, job: Job, cancel: CancellationToken) {
        if job.attempts > MAX_ATTEMPTS {
            let result = JobResult {
                job_states: vec![JobState {
                    state: "FAILURE".into(),
                    error: format!("the job was started {MAX_ATTEMPTS} times and its manager died each time"),
                    results: vec![],
                }],
            };
            self.record(&job, State::Failure, &result).await;
            return;
        }
        if job.attempts > 1 {
            tracing::info!("taking over a job whose manager stopped");
        }
        let args: Args = serde_json::from_value(job.args.clone()).unwrap_or_default();
        let timeout = args.timeout();
        let lost = CancellationToken::new();
        let renewer = tokio::spawn({
            let (this, lost, id) = (self.clone(), lost.clone(), job.id);
            async move { this.keep_lease(id, lost).await }
        });
        let work = work::execute(&self.db, job.kind, &args, &job.scheduler_cluster_ids, self.silent_ms);
        let outcome = tokio::select! {
            r = work => Some(r),
            _ = tokio::time::sleep(timeout + Duration::from_secs(5)) => Some(JobResult {
                job_states: vec![JobState { state: "FAILURE".into(), error: format!("timed out after {timeout:?}"), results: vec![] }],
            }),
            _ = lost.cancelled() => None,
            _ = cancel.cancelled() => None,
        };
        renewer.abort();
        match outcome {
            Some(result) => {
                let state = jobs::overall(&result);
                tracing::info!(state = state.name(), "job finished");
                self.record(&job, state, &result).await;
            }
            None => tracing::info!("stopped running the job (lease lost or shutting down)"),
        }
    }

    async fn record(&self, job: &Job, state: State, result: &JobResult) {
        match jobs::finish(&self.db, job.id, &self.owner, state, result).await {
            Ok(true) => self.metrics.job_finished(job.kind, state),
            Ok(false) => tracing::info!(job = job.id, "another manager holds the job now; its result stands"),
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, "cannot record the job's outcome; its lease will lapse and it runs again")
            }
        }
    }

    /// Renews the lease every third of its length; cancels `lost` when it cannot.
    async fn keep_lease(&self, id: i64, lost: CancellationToken) {
        let every = self.lease / 3;
        let mut failures = 0;
        loop {
            tokio::time::sleep(every).await;
            match jobs::renew(&self.db, id, &self.owner, now_ms() + self.lease_ms()).await {
                Ok(true) => failures = 0,
                Ok(false) => {
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(job = id, error = %e, "cannot renew the job's lease");
                    if failures >= 2 {
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }
}
