//! Preheat: the manager asks this scheduler to have hosts of its cluster (one seed, every
//! seed, or every host) fetch a file or an image into their caches. Each host gets a
//! `PreheatOrder` on its host session, downloads like any pull would (so of the hosts only
//! the first reads the origin; the others feed on it), and answers with `PreheatDone`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::scheduler::{
    host_command, preheat_work, HostCommand, PreheatHostResult, PreheatOrder, PreheatReport, PreheatRequest,
    PreheatResponse, PreheatScope,
};
use ferry_types::HostId;
use tokio::sync::Notify;
use tonic::Status;

use crate::state::{lock, State};

/// A preheat's deadline when the request names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a waiting preheat checks that its hosts are still connected.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Preheats waiting for their hosts' answers.
#[derive(Default)]
pub struct Preheats {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

struct Pending {
    answers: HashMap<HostId, PreheatReport>,
    targets: Vec<HostId>,
    notify: Arc<Notify>,
}

impl Preheats {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A host's answer; one for an order this scheduler no longer waits on is ignored.
    pub fn report(&self, r: PreheatReport) -> Result<(), Status> {
        let host = HostId::new(r.host_id.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut pending = self.pending();
        if let Some(p) = pending.get_mut(&r.order_id) {
            if p.targets.contains(&host) {
                tracing::info!(order = r.order_id, %host, ok = r.ok, "host finished its preheat");
                p.answers.insert(host, r);
                p.notify.notify_one();
            }
        }
        Ok(())
    }
}

fn check(req: &PreheatRequest) -> Result<(), Status> {
    match req.work.as_ref().and_then(|w| w.work.as_ref()) {
        Some(preheat_work::Work::File(f)) => {
            url::Url::parse(&f.url).map_err(|e| Status::invalid_argument(format!("url `{}`: {e}", f.url)))?;
        }
        Some(preheat_work::Work::Image(i)) if i.reference.is_empty() => {
            return Err(Status::invalid_argument("an image preheat needs a reference"))
        }
        Some(preheat_work::Work::Image(_)) => {}
        None => return Err(Status::invalid_argument("a preheat needs a file or an image")),
    }
    Ok(())
}

/// The hosts the request's scope names, least busy first.
fn targets(st: &State, req: &PreheatRequest) -> Result<Vec<HostId>, Status> {
    let scope = PreheatScope::try_from(req.scope).unwrap_or(PreheatScope::SingleSeed);
    let mut hosts: Vec<(&HostId, &ferry_proto::scheduler::Host)> = st
        .hosts
        .iter()
        .map(|(id, h)| (id, &h.host))
        .filter(|(_, h)| scope == PreheatScope::AllHosts || h.seed)
        .filter(|(_, h)| req.ips.is_empty() || req.ips.contains(&h.ip))
        .collect();
    hosts.sort_by_key(|(id, h)| (h.uploads_active, (*id).clone()));
    let limit = match scope {
        PreheatScope::SingleSeed => 1,
        _ if req.count > 0 => req.count as usize,
        _ => usize::MAX,
    };
    hosts.truncate(limit);
    if hosts.is_empty() {
        let what = if scope == PreheatScope::AllHosts { "host" } else { "seed peer" };
        let filter = if req.ips.is_empty() { String::new() } else { format!(" among {}", req.ips.join(", ")) };
        return Err(Status::failed_precondition(format!(
            "no {what}{filter} is connected to this scheduler; start one (`ferry daemon{}`)",
            if what == "host" { "" } else { " --seed" }
        )));
    }
    Ok(hosts.into_iter().map(|(id, _)| id.clone()).collect())
}

/// Orders the hosts and waits for their answers (or the deadline, or their departure).
pub async fn preheat(
    state: &Mutex<State>,
    preheats: &Preheats,
    req: PreheatRequest,
) -> Result<PreheatResponse, Status> {
    check(&req)?;
    let timeout = match req.timeout_millis {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    let order_id = preheats.next.fetch_add(1, Ordering::Relaxed) + 1;
    let notify = Arc::new(Notify::new());
    let targets = send_orders(state, preheats, &req, order_id, timeout, notify.clone())?;
    let gone = wait_answers(state, preheats, order_id, &targets, timeout, &notify).await;
    let answers = preheats.pending().remove(&order_id).map(|p| p.answers).unwrap_or_default();
    let st = lock(state);
    let results = targets
        .iter()
        .map(|id| {
            let host = st.hosts.get(id).map(|h| h.host.clone()).unwrap_or_default();
            let base = PreheatHostResult {
                host_id: id.to_string(),
                hostname: host.hostname.clone(),
                ip: host.ip.clone(),
                seed: host.seed,
                ..Default::default()
            };
            match answers.get(id) {
                Some(r) => PreheatHostResult { ok: r.ok, error: r.error.clone(), urls: r.urls.clone(), ..base },
                None => {
                    let why = if gone.contains(id) {
                        "the host left before it finished".to_owned()
                    } else {
                        format!("no answer within {timeout:?}")
                    };
                    PreheatHostResult { ok: false, error: why, ..base }
                }
            }
        })
        .collect();
    Ok(PreheatResponse { results })
}

/// Picks the hosts, records the order as pending and sends it on each host's session.
fn send_orders(
    state: &Mutex<State>,
    preheats: &Preheats,
    req: &PreheatRequest,
    order_id: u64,
    timeout: Duration,
    notify: Arc<Notify>,
) -> Result<Vec<HostId>, Status> {
    let st = lock(state);
    let targets = targets(&st, req)?;
    preheats.pending().insert(order_id, Pending { answers: HashMap::new(), targets: targets.clone(), notify });
    let order = PreheatOrder {
        order_id,
        work: req.work.clone(),
        timeout_millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    for id in &targets {
        if let Some(h) = st.hosts.get(id) {
            let cmd = HostCommand { command: Some(host_command::Command::Preheat(order.clone())) };
            let _ = h.tx.send(Ok(cmd));
        }
    }
    tracing::info!(order = order_id, hosts = targets.len(), "preheat ordered");
    Ok(targets)
}

/// Waits until every target answered or left, or the deadline; returns those that left.
async fn wait_answers(
    state: &Mutex<State>,
    preheats: &Preheats,
    order_id: u64,
    targets: &[HostId],
    timeout: Duration,
    notify: &Notify,
) -> HashSet<HostId> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut gone = HashSet::new();
    loop {
        {
            let st = lock(state);
            gone.extend(targets.iter().filter(|id| !st.hosts.contains_key(*id)).cloned());
        }
        let settled = preheats
            .pending()
            .get(&order_id)
            .is_none_or(|p| targets.iter().all(|t| p.answers.contains_key(t) || gone.contains(t)));
        if settled || tokio::time::Instant::now() >= deadline {
            return gone;
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
