//! Keeping alive with a manager (`ferry scheduler --manager`): the scheduler says it serves
//! its cluster every few seconds, and puts the cluster's settings from the answer in force.
//! While the manager is unreachable it keeps serving with the settings it last heard.

use std::time::Duration;

use ferry_proto::manager::manager_client::ManagerClient;
use ferry_proto::manager::{ClusterConfig, SchedulerKeepAliveRequest};
use tokio_util::sync::CancellationToken;

use crate::service::{SchedulerOptions, SchedulerService};

/// Who this scheduler is to the manager.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The managers' gRPC addresses (`host:port` or a URL), tried in turn: replicas over one
    /// database are interchangeable.
    pub managers: Vec<String>,
    pub cluster_id: u64,
    pub hostname: String,
    /// The address daemons reach this scheduler at.
    pub ip: String,
    pub port: u16,
}

/// `base` with the cluster's settings laid over it (a zero leaves the flag's value).
pub fn apply(base: &SchedulerOptions, c: &ClusterConfig) -> SchedulerOptions {
    let mut o = base.clone();
    if c.parents_per_peer > 0 {
        o.rank.max_parents = c.parents_per_peer as usize;
    }
    if c.children_per_parent > 0 {
        o.rank.peer_max_children = c.children_per_parent;
        o.rank.seed_max_children = o.rank.seed_max_children.max(c.children_per_parent);
    }
    if c.back_to_source_budget > 0 {
        o.back_to_source_limit = c.back_to_source_budget;
    }
    if c.origin_concurrency > 0 {
        o.origin_concurrency = Some(c.origin_concurrency);
    }
    o
}

type Client = ManagerClient<tonic::transport::Channel>;

/// A client per manager address that parses.
fn clients(managers: &[String]) -> Vec<(String, Client)> {
    let mut out = vec![];
    for m in managers {
        let uri = if m.contains("://") { m.clone() } else { format!("http://{m}") };
        match tonic::transport::Endpoint::from_shared(uri) {
            Ok(ep) => {
                let ch = ep.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10)).connect_lazy();
                out.push((m.clone(), ManagerClient::new(ch)));
            }
            Err(_) => tracing::error!(manager = %m, "the manager address is not a URI; skipping it"),
        }
    }
    out
}

/// Keeps alive until `cancel`, with the first manager that answers.
pub async fn keep_alive(svc: SchedulerService, base: SchedulerOptions, reg: Registration, cancel: CancellationToken) {
    let mut clients = clients(&reg.managers);
    if clients.is_empty() {
        return;
    }
    let mut current = 0;
    let mut every = Duration::from_secs(5);
    let mut last: Option<ClusterConfig> = None;
    let mut reachable = true;
    loop {
        let req = SchedulerKeepAliveRequest {
            cluster_id: reg.cluster_id,
            hostname: reg.hostname.clone(),
            ip: reg.ip.clone(),
            port: u32::from(reg.port),
        };
        let mut answer = None;
        for i in 0..clients.len() {
            let k = (current + i) % clients.len();
            match clients[k].1.scheduler_keep_alive(req.clone()).await {
                Ok(resp) => {
                    current = k;
                    answer = Some(resp.into_inner());
                    break;
                }
                Err(s) => tracing::debug!(manager = %clients[k].0, error = %s.message(), "keepalive failed"),
            }
        }
        match answer {
            Some(resp) => {
                if !reachable {
                    tracing::info!(manager = %clients[current].0, "manager reachable again");
                }
                reachable = true;
                every = Duration::from_secs(u64::from(resp.interval_seconds.max(1)));
                let config = resp.config.unwrap_or_default();
                if last.as_ref() != Some(&config) {
                    tracing::info!(?config, cluster = reg.cluster_id, "cluster settings in force");
                    svc.set_opts(apply(&base, &config));
                    last = Some(config);
                }
            }
            None if reachable => {
                reachable = false;
                tracing::warn!(managers = %reg.managers.join(","), "cannot keep alive with any manager; serving with the last settings");
            }
            None => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_settings_override_only_what_they_set() {
        let base = SchedulerOptions::default();
        let same = apply(&base, &ClusterConfig::default());
        assert_eq!(same.rank.max_parents, base.rank.max_parents);
        assert_eq!(same.origin_concurrency, None);
        let c = ClusterConfig {
            parents_per_peer: 4,
            origin_concurrency: 2,
            back_to_source_budget: 3,
            ..Default::default()
        };
        let o = apply(&base, &c);
        assert_eq!((o.rank.max_parents, o.origin_concurrency, o.back_to_source_limit), (4, Some(2), 3));
        assert_eq!(o.rank.peer_max_children, base.rank.peer_max_children);
    }
}
