//! Preheat: the manager asks this scheduler to have hosts of its cluster (one seed, every
//! seed, or every host) fetch a file or an image into their caches. Each host gets a
//! `PreheatOrder` on its host session, downloads like any pull would (so of the hosts only
//! the first reads the origin; the others feed on it), and answers with `PreheatDone`.

use std::collections::HashMap;
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
    let targets = {
        let st = lock(state);
        let targets = targets(&st, &req)?;
        preheats
            .pending()
            .insert(order_id, Pending { answers: HashMap::new(), targets: targets.clone(), notify: notify.clone() });
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
        targets
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut gone: HashMap<HostId, &'static str> = HashMap::new();
    loop {
        let answered = preheats.pending().get(&order_id).map_or(0, |p| p.answers.len());
        {
            let st = lock(state);
            for id in &targets {
                if !st.hosts.contains_key(id) {
                    gone.entry(id.clone()).or_insert("the host left before it finished");
                }
            }
        }
        let waiting = targets.len() - answered;
        let done = preheats
            .pending()
            .get(&order_id)
            .is_some_and(|p| targets.iter().all(|t| p.answers.contains_key(t) || gone.contains_key(t)));
        if waiting == 0 || done || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
    let pending = preheats.pending().remove(&order_id);
    let answers = pending.map(|p| p.answers).unwrap_or_default();
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
                    let why = gone.get(id).map_or_else(|| format!("no answer within {timeout:?}"), |w| (*w).to_owned());
                    PreheatHostResult { ok: false, error: why, ..base }
                }
            }
        })
        .collect();
    Ok(PreheatResponse { results })
}
