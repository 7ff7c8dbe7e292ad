//! The manager's Prometheus metrics (`ferry_manager_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::jobs::{Kind, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    jobs_finished: Family<JobLabels, Counter>,
    keepalives: Family<RoleLabels, Counter>,
    jobs_created: Family<JobLabels, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("ferry_manager_jobs_created", "Jobs created, by type", self.jobs_created.clone());
        registry.register(
            "ferry_manager_jobs_finished",
            "Jobs finished by this manager, by type and outcome",
            self.jobs_finished.clone(),
        );
        registry.register(
            "ferry_manager_keepalives",
            "Keepalives received from schedulers and daemons",
            self.keepalives.clone(),
        );
    }

    pub fn job_created(&self, kind: Kind) {
        self.jobs_created.get_or_create(&JobLabels { kind: kind.name(), state: "PENDING" }).inc();
    }

    pub fn job_finished(&self, kind: Kind, state: State) {
        self.jobs_finished.get_or_create(&JobLabels { kind: kind.name(), state: state.name() }).inc();
    }

    pub fn keepalive(&self, role: &'static str) {
        self.keepalives.get_or_create(&RoleLabels { role }).inc();
    }
}
