//! Following the manager (`ferry daemon --manager`): the daemon asks which schedulers serve
//! its host (the manager matches it to a cluster by scope) and makes them its set, again
//! every few seconds, so a scheduler added or removed, or a scope moved, takes effect
//! without a restart. While the manager cannot be reached the daemon keeps its last set.
//! A seed's asking is also its keepalive with the manager.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::manager::manager_client::ManagerClient;
use ferry_proto::manager::{ListSchedulersRequest, ListSchedulersResponse};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::schedulers::Schedulers;
use crate::DaemonError;

/// How often to ask when neither the flag nor the manager says.
const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

pub struct ManagerLink {
    /// Every manager replica, tried in turn from the one that answered last.
    clients: Vec<(String, ManagerClient<Channel>)>,
    current: usize,
}

impl ManagerLink {
    pub fn new(addrs: &[String]) -> Result<Self, DaemonError> {
        let clients = addrs
            .iter()
            .map(|addr| {
                let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
                let ep = Endpoint::from_shared(uri)
                    .map_err(|e| DaemonError::BadRequest(format!("--manager `{addr}`: {e}")))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(10));
                Ok((addr.clone(), ManagerClient::new(ep.connect_lazy())))
            })
            .collect::<Result<Vec<_>, DaemonError>>()?;
        Ok(Self { clients, current: 0 })
    }

    /// Asks the managers in turn; the last one's refusal when none answers.
    pub async fn ask(&mut self, req: ListSchedulersRequest) -> Result<ListSchedulersResponse, tonic::Status> {
        let mut last = tonic::Status::unavailable("no manager address");
        for i in 0..self.clients.len() {
            let k = (self.current + i) % self.clients.len();
            match self.clients[k].1.list_schedulers(req.clone()).await {
                Ok(r) => {
                    self.current = k;
                    return Ok(r.into_inner());
                }
                Err(s) => last = s,
            }
        }
        Err(last)
    }

    fn addrs(&self) -> String {
        self.clients.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Puts the cluster's upload rate in force (0: the daemon's own `--upload-rate`, else
    /// none).
    pub fn apply_upload_rate(
        &self,
        limit: Option<&ferry_transport::RateLimit>,
        own: Option<u64>,
        resp: &ListSchedulersResponse,
    ) {
        let Some(limit) = limit else { return };
        let wanted = match resp.config.as_ref().map_or(0, |c| c.upload_rate_bytes) {
            0 => own.unwrap_or(u64::MAX),
            r => r,
        };
        if limit.bytes_per_second() != wanted {
            tracing::info!(bytes_per_second = wanted, "upload rate set by the cluster's settings");
            limit.set_rate(wanted);
        }
    }

    /// Makes the manager's answer the scheduler set; an answer naming none leaves the set.
    pub fn apply(&self, schedulers: &Schedulers, resp: &ListSchedulersResponse) {
        if resp.schedulers.is_empty() {
            tracing::warn!(
                cluster = resp.cluster_id,
                "the manager knows no live scheduler of this host's cluster; keeping the current ones"
            );
            return;
        }
        match schedulers.set(&resp.schedulers) {
            Ok(true) => tracing::info!(
                cluster = resp.cluster_id,
                name = %resp.cluster_name,
                schedulers = %resp.schedulers.join(","),
                "schedulers set by the manager"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "the manager named a scheduler address that does not parse"),
        }
    }

    /// Asks every refresh until `cancel`.
    pub async fn follow(
        mut self,
        schedulers: Arc<Schedulers>,
        upload: (Option<Arc<ferry_transport::RateLimit>>, Option<u64>),
        request: Arc<dyn Fn() -> ListSchedulersRequest + Send + Sync>,
        refresh: Option<Duration>,
        cancel: CancellationToken,
    ) {
        let mut every = refresh.unwrap_or(DEFAULT_REFRESH);
        let mut reachable = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.ask(request()).await {
                Ok(resp) => {
                    if !reachable {
                        tracing::info!(managers = %self.addrs(), "manager reachable again");
                    }
                    reachable = true;
                    if refresh.is_none() && resp.interval_seconds > 0 {
                        every = Duration::from_secs(u64::from(resp.interval_seconds));
                    }
                    self.apply(&schedulers, &resp);
                    self.apply_upload_rate(upload.0.as_deref(), upload.1, &resp);
                }
                Err(s) if reachable => {
                    reachable = false;
                    tracing::warn!(managers = %self.addrs(), error = %s.message(), "cannot ask the manager for schedulers; keeping the current ones");
                }
                Err(_) => {}
            }
        }
    }
}
