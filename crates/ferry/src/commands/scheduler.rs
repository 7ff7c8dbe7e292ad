//! `ferry scheduler`.

use std::time::Duration;

use std::sync::Arc;

use ferry_membership::creds::ClientAuth;
use ferry_membership::grpc::MemberGate;
use ferry_membership::join::{JoinService, Renewal, Source};
use ferry_membership::{ClusterCa, Member, Role};
use ferry_proto::membership::membership_server::MembershipServer;
use ferry_proto::scheduler::scheduler_server::SchedulerServer;
use ferry_scheduler::gc::GcWorker;
use ferry_scheduler::manager::Registration;
use ferry_scheduler::{RankOptions, SchedulerOptions, SchedulerService};
use ferry_types::HostId;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::cli::SchedulerArgs;
use crate::{exit, Exit};

pub async fn run(a: SchedulerArgs) -> Result<(), Exit> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Exit::new(exit::FAILURE, format!("cannot listen on {}: {e}", a.listen)))?;
    let addr = listener.local_addr().map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let opts = SchedulerOptions {
        rank: RankOptions {
            max_parents: a.max_parents,
            seed_max_children: a.seed_max_children,
            peer_max_children: a.peer_max_children,
            avoid_cycles: a.avoid_cycles,
            ..Default::default()
        },
        back_to_source_limit: a.back_to_source_limit,
        origin_concurrency: (a.origin_concurrency > 0).then_some(a.origin_concurrency),
        splice: !a.no_splice,
    };
    let svc = SchedulerService::new(opts.clone());
    let cancel = CancellationToken::new();
    if !a.managers.is_empty() {
        let reg = registration(&a, a.managers.clone(), addr).await;
        tracing::info!(managers = %reg.managers.join(","), cluster = reg.cluster_id, ip = %reg.ip, "keeping alive with the manager");
        tokio::spawn(ferry_scheduler::manager::keep_alive(svc.clone(), opts, reg, cancel.clone()));
    }
    let usage = |e: String| Exit::new(exit::USAGE, format!("--metrics-listen {e}"));
    let metrics = match ferry_telemetry::parse_listen(&a.metrics_listen).map_err(usage)? {
        Some(at) => {
            let endpoints = ferry_telemetry::Endpoints {
                metrics: Some(std::sync::Arc::new(ferry_scheduler::metrics::registry(svc.state()))),
                // Serving sessions from here on: its listener is bound.
                ready: Some(std::sync::Arc::new(|| None)),
            };
            let bound = ferry_telemetry::serve(at, endpoints, cancel.clone())
                .await
                .map_err(|e| Exit::new(exit::FAILURE, format!("cannot serve metrics on {at}: {e}")))?;
            Some(bound.to_string())
        }
        None => None,
    };
    let gc = GcWorker { state: svc.state(), host_ttl: Duration::from_secs(15), task_ttl: Duration::from_secs(300) };
    tokio::spawn(gc.run(cancel.clone()));
    tokio::spawn(svc.clone().wake_periodically(cancel.clone()));
    let ca = membership(&a, addr, &cancel)?;
    let tls = match &ca {
        Some((_, creds)) => {
            Some(creds.server_config(ClientAuth::Optional).map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?)
        }
        None => None,
    };
    tracing::info!(%addr, membership = ca.is_some(), "scheduler listening");
    crate::announce_scheduler_ready(&addr.to_string(), metrics.as_deref());
    let gate = MemberGate { required: ca.is_some() };
    let scheduler = SchedulerServer::new(svc).max_decoding_message_size(64 << 20);
    let server = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(scheduler, gate))
        .add_optional_service(ca.map(|(ca, _)| MembershipServer::new(JoinService { ca })))
        // Nagle off in `incoming`: a decision is one small write, and with Nagle on it can
        // wait for the previous segment's delayed ACK (measured at 1,000 decisions a second:
        // a `Stats` round trip p99 6.5 ms with it, 1.2 ms without).
        .serve_with_incoming_shutdown(
            ferry_membership::grpc::incoming(listener, tls, cancel.clone()),
            crate::shutdown_signal(),
        );
    let r = server.await;
    cancel.cancel();
    r.map_err(|e| Exit::new(exit::FAILURE, format!("scheduler stopped: {e}")))
}

/// Who this scheduler says it is to the manager: the advertised IP (or the listen IP, or the
/// interface that routes to the manager) and the bound port.
async fn registration(a: &SchedulerArgs, managers: Vec<String>, bound: std::net::SocketAddr) -> Registration {
    let ip = match a.advertise_ip {
        Some(ip) => ip,
        None if !bound.ip().is_unspecified() => bound.ip(),
        None => ferry_daemon::advertise::choose(None, bound.ip(), &managers).await,
    };
    let hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    Registration { managers, cluster_id: a.cluster_id, hostname, ip: ip.to_string(), port: bound.port() }
}

/// With `--cluster-ca`: the CA, this scheduler's own certificate from it (renewed in
/// process), and the token file re-read every 10 s (a rotated token takes effect). Without:
/// one warning line.
#[allow(clippy::type_complexity)]
fn membership(
    a: &SchedulerArgs,
    addr: std::net::SocketAddr,
    cancel: &CancellationToken,
) -> Result<Option<(Arc<ClusterCa>, Arc<ferry_membership::Credentials>)>, Exit> {
    let Some(dir) = &a.cluster_ca else {
        tracing::warn!(
            "cluster membership is off: any host that reaches {addr} can join this cluster, pose as a seed and \
             report piece digests (use --cluster-ca; see `ferry membership init`)"
        );
        return Ok(None);
    };
    let fail = |e: ferry_membership::MembershipError| Exit::new(exit::USAGE, format!("--cluster-ca: {e}"));
    let ca = Arc::new(ClusterCa::load(dir, a.cert_lifetime).map_err(fail)?);
    let id: String =
        format!("scheduler-{addr}").chars().filter(|c| c.is_ascii_alphanumeric() || "._:-".contains(*c)).collect();
    let member = Member::new(HostId::new(id).map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?, Role::Scheduler);
    let creds = ca.credentials_for(member).map_err(fail)?;
    let renewal = Renewal { creds: creds.clone(), source: Source::Ca(ca.clone()) };
    tokio::spawn(renewal.run(cancel.clone()));
    let (reload, stop) = (ca.clone(), cancel.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            if let Err(e) = reload.reload_tokens() {
                tracing::warn!(error = %e, "could not re-read the join token");
            }
        }
    });
    Ok(Some((ca, creds)))
}
