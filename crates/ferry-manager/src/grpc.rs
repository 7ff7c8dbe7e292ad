//! The manager's gRPC service for schedulers and daemons (`ferry.manager.v1.Manager`).

use std::net::IpAddr;
use std::sync::Arc;

use ferry_proto::manager::manager_server::Manager;
use ferry_proto::manager::{
    ListSchedulersRequest, ListSchedulersResponse, SchedulerKeepAliveRequest, SchedulerKeepAliveResponse,
};
use tonic::{Request, Response, Status};

use crate::clusters::{self, Members};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::search::HostFacts;

pub struct Service {
    pub db: Db,
    /// Seconds between the keepalives the manager asks for.
    pub interval_seconds: u32,
    pub silent_ms: i64,
    pub metrics: Arc<Metrics>,
}

fn port(p: u32) -> Result<u16, Box<Status>> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Box::new(Status::invalid_argument(format!("port {p} is not 1-65535"))))
}

#[tonic::async_trait]
impl Manager for Service {
    async fn scheduler_keep_alive(
        &self,
        req: Request<SchedulerKeepAliveRequest>,
    ) -> Result<Response<SchedulerKeepAliveResponse>, Status> {
        let r = req.into_inner();
        let cluster_id = i64::try_from(r.cluster_id).map_err(|_| Status::invalid_argument("cluster_id too large"))?;
        r.ip.parse::<IpAddr>().map_err(|_| Status::invalid_argument(format!("ip `{}` is not an address", r.ip)))?;
        let cluster = clusters::get(&self.db, cluster_id).await.map_err(|e| e.to_status())?;
        clusters::scheduler_alive(&self.db, cluster_id, &r.hostname, &r.ip, port(r.port).map_err(|s| *s)?)
            .await
            .map_err(|e| e.to_status())?;
        self.metrics.keepalive("scheduler");
        Ok(Response::new(SchedulerKeepAliveResponse {
            config: Some(cluster.config.to_proto()),
            interval_seconds: self.interval_seconds,
        }))
    }

    async fn list_schedulers(
        &self,
        req: Request<ListSchedulersRequest>,
    ) -> Result<Response<ListSchedulersResponse>, Status> {
        let r = req.into_inner();
        let ip = match r.ip.as_str() {
            "" => None,
            s => {
                Some(s.parse::<IpAddr>().map_err(|_| Status::invalid_argument(format!("ip `{s}` is not an address")))?)
            }
        };
        let facts = HostFacts { hostname: r.hostname.clone(), ip, zone: r.zone, idc: r.idc, location: r.location };
        let Some(cluster) = clusters::search(&self.db, &facts).await.map_err(|e| e.to_status())? else {
            return Err(Status::not_found(format!(
                "no cluster's scopes match host {} ({}), and no cluster is the default",
                r.hostname, r.ip
            )));
        };
        if r.seed {
            clusters::seed_alive(
                &self.db,
                cluster.id,
                &r.host_id,
                &r.hostname,
                &r.ip,
                port(r.piece_port).map_err(|s| *s)?,
            )
            .await
            .map_err(|e| e.to_status())?;
        }
        self.metrics.keepalive(if r.seed { "seed" } else { "daemon" });
        let members = clusters::members(&self.db, Members::Schedulers, Some(cluster.id), self.silent_ms)
            .await
            .map_err(|e| e.to_status())?;
        let schedulers = members
            .into_iter()
            .filter(|m| m.state == "active")
            .map(|m| match m.ip.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", m.port),
                _ => format!("{}:{}", m.ip, m.port),
            })
            .collect();
        tracing::debug!(host = %r.hostname, cluster = cluster.id, "host asked for its schedulers");
        Ok(Response::new(ListSchedulersResponse {
            cluster_id: cluster.id as u64,
            cluster_name: cluster.name,
            schedulers,
            config: Some(cluster.config.to_proto()),
            interval_seconds: self.interval_seconds,
        }))
    }
}
