//! The daemon's view of the schedulers.
//!
//! Every daemon keeps a host session open to every scheduler: it is the keepalive that makes
//! the scheduler count this host (and its load), and the channel a scheduler uses to ask a
//! seed to fetch a task. A scheduler whose session is up is "live". A task belongs to the
//! live scheduler with the highest rendezvous score for (task, scheduler), so adding a
//! scheduler moves only the tasks it wins, and a dead scheduler's tasks spread over the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::{host_command, Host, HostMessage};
use ferry_types::TaskId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::registry::{ParkedAt, Registry};
use crate::retry::Backoff;

/// Most task ids one keepalive names as dropped (the scheduler's limit).
const MAX_DROPPED: usize = 4096;

/// A scheduler's order, with the address of the scheduler that sent it.
pub type Order = (String, host_command::Command);

pub struct Schedulers {
    /// Changes when the manager names other schedulers (`--manager`); fixed otherwise.
    entries: RwLock<Vec<Arc<Entry>>>,
    /// Bumped whenever a host session comes up or goes down, or the set changes: tasks may
    /// change owner, and a scheduler that restarted knows none of the tasks parked with it.
    topology: tokio::sync::watch::Sender<u64>,
    /// What a session worker needs, set once sessions start.
    sessions: std::sync::OnceLock<SessionDeps>,
    /// With membership: mutual TLS, and each scheduler must show a scheduler's certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Clone)]
struct SessionDeps {
    host: Arc<dyn Fn() -> Host + Send + Sync>,
    orders: mpsc::UnboundedSender<Order>,
    registry: Arc<Registry>,
    workers: Arc<crate::workers::Workers>,
    cancel: CancellationToken,
}

struct Entry {
    addr: String,
    channel: Channel,
    live: AtomicBool,
    /// The first session attempt finished (up or failed): the view of this scheduler is settled.
    tried: AtomicBool,
    /// How many host sessions with it have come up.
    generation: std::sync::atomic::AtomicU64,
    /// Ends this scheduler's session worker (it left the set).
    stop: CancellationToken,
}

fn score(task: &TaskId, addr: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&task.0);
    h.update(addr.as_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn entry(a: &str, tls: &Option<Arc<rustls::ClientConfig>>) -> Result<Arc<Entry>, String> {
    let uri = if a.contains("://") { a.to_owned() } else { format!("http://{a}") };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| format!("scheduler address `{a}`: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let channel = ferry_membership::grpc::channel(ep, tls.clone(), Some(ferry_membership::Role::Scheduler));
    Ok(Arc::new(Entry {
        addr: a.to_owned(),
        channel,
        live: AtomicBool::new(false),
        tried: AtomicBool::new(false),
        generation: Default::default(),
        stop: CancellationToken::new(),
    }))
}

impl Schedulers {
    /// The schedulers at `addrs`; an empty set only when a manager will name them. With
    /// `tls`, every scheduler is dialled with mutual TLS.
    pub fn new(addrs: &[String], from_manager: bool, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, String> {
        let entries = addrs.iter().map(|a| entry(a, &tls)).collect::<Result<Vec<_>, String>>()?;
        if entries.is_empty() && !from_manager {
            return Err("no scheduler address given (--scheduler HOST:PORT, or --manager HOST:PORT)".into());
        }
        Ok(Self {
            entries: RwLock::new(entries),
            topology: tokio::sync::watch::Sender::new(0),
            sessions: Default::default(),
            tls,
        })
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The addresses of the schedulers in the set.
    pub fn addrs(&self) -> Vec<String> {
        self.entries().iter().map(|e| e.addr.clone()).collect()
    }

    /// Makes `addrs` the set: sessions start with the new ones and end with those gone.
    /// Returns whether anything changed.
    pub fn set(&self, addrs: &[String]) -> Result<bool, String> {
        let removed: Vec<Arc<Entry>>;
        let added: Vec<Arc<Entry>>;
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            // Every new address parses before anything changes.
            added = addrs
                .iter()
                .filter(|a| !entries.iter().any(|e| &e.addr == *a))
                .map(|a| entry(a, &self.tls))
                .collect::<Result<_, _>>()?;
            removed = entries.iter().filter(|e| !addrs.contains(&e.addr)).cloned().collect();
            entries.retain(|e| addrs.contains(&e.addr));
            entries.extend(added.iter().cloned());
        }
        for e in &removed {
            e.stop.cancel();
            e.live.store(false, Ordering::Relaxed);
            tracing::info!(scheduler = %e.addr, "scheduler left this host's set");
        }
        for e in &added {
            tracing::info!(scheduler = %e.addr, "scheduler joined this host's set");
            self.spawn_session(e.clone());
        }
        let changed = !added.is_empty() || !removed.is_empty();
        if changed {
            self.topology.send_modify(|g| *g += 1);
        }
        Ok(changed)
    }

    /// How many schedulers are in the set.
    pub fn count(&self) -> usize {
        self.entries().len()
    }

    /// How many host sessions are up now.
    pub fn live_count(&self) -> usize {
        self.entries().iter().filter(|e| e.live.load(Ordering::Relaxed)).count()
    }

    pub fn any_live(&self) -> bool {
        self.live_count() > 0
    }

    /// The scheduler owning `task`: rendezvous over the live ones, or over all when none is.
    /// With no scheduler at all (a manager has named none yet), an address that refuses.
    pub fn pick(&self, task: &TaskId) -> (String, SchedulerClient<Channel>) {
        let (addr, channel) = match self.owner_entry(task) {
            Some(e) => (e.addr.clone(), e.channel.clone()),
            None => ("(none yet)".to_owned(), Endpoint::from_static("http://127.0.0.1:1").connect_lazy()),
        };
        (addr, SchedulerClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// A client for the scheduler at `addr`, if it is in the set.
    pub fn client(&self, addr: &str) -> Option<SchedulerClient<Channel>> {
        self.entries().into_iter().find(|e| e.addr == addr).map(|e| SchedulerClient::new(e.channel.clone()))
    }

    fn owner_entry(&self, task: &TaskId) -> Option<Arc<Entry>> {
        let all = self.entries();
        let live: Vec<&Arc<Entry>> = all.iter().filter(|e| e.live.load(Ordering::Relaxed)).collect();
        let pool: Vec<&Arc<Entry>> = if live.is_empty() { all.iter().collect() } else { live };
        pool.into_iter().max_by_key(|e| score(task, &e.addr)).cloned()
    }

    /// Where a finished task would be parked now: its owner and our session generation there.
    pub fn owner(&self, task: &TaskId) -> ParkedAt {
        match self.owner_entry(task) {
            Some(e) => ParkedAt { scheduler: e.addr.clone(), generation: e.generation.load(Ordering::Relaxed) },
            None => ParkedAt { scheduler: String::new(), generation: 0 },
        }
    }

    /// Changes whenever a host session comes up or goes down.
    pub fn topology(&self) -> tokio::sync::watch::Receiver<u64> {
        self.topology.subscribe()
    }

    /// Waits (bounded) until every scheduler's first session attempt has finished, so tasks
    /// are hashed over a settled set of live schedulers. Daemons that announced themselves
    /// ready before this could pick different owners for one task during their first second.
    /// Returns the addresses of the schedulers that do not answer.
    pub async fn settle(&self, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.entries().iter().all(|e| e.tried.load(Ordering::Relaxed)) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.entries().iter().filter(|e| !e.live.load(Ordering::Relaxed)).map(|e| e.addr.clone()).collect()
    }

    /// Starts one session worker per scheduler, now and for those that join later; a
    /// scheduler's orders (fetch, cancel, preheat, ...) go to `orders`.
    pub fn spawn_sessions(
        self: &Arc<Self>,
        host: Arc<dyn Fn() -> Host + Send + Sync>,
        orders: mpsc::UnboundedSender<Order>,
        registry: Arc<Registry>,
        workers: Arc<crate::workers::Workers>,
        cancel: CancellationToken,
    ) {
        let deps = SessionDeps { host, orders, registry, workers, cancel };
        if self.sessions.set(deps).is_err() {
            return;
        }
        for e in self.entries() {
            self.spawn_session(e);
        }
    }

    fn spawn_session(&self, e: Arc<Entry>) {
        let Some(deps) = self.sessions.get().cloned() else { return };
        let name = format!("host-session {}", e.addr);
        let topology = self.topology.clone();
        let cancel = deps.cancel.child_token();
        let stop = e.stop.clone();
        let workers = deps.workers.clone();
        workers.spawn(name, cancel, async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = session_worker(&e, &topology, deps) => {}
            }
            e.live.store(false, Ordering::Relaxed);
        });
    }
}

async fn session_worker(e: &Entry, topology: &tokio::sync::watch::Sender<u64>, deps: SessionDeps) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), None);
    loop {
        let (ticks, ticks_rx) = mpsc::channel::<HostMessage>(2);
        let (h, registry, addr) = (deps.host.clone(), deps.registry.clone(), e.addr.clone());
        // A new session: whatever was parked with this scheduler is unknown to it now.
        registry.clear_dropped(&addr);
        let keepalive = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let dropped = registry.take_dropped(&addr, MAX_DROPPED).iter().map(|t| t.0.to_vec()).collect();
                if ticks.send(HostMessage { host: Some(h()), dropped }).await.is_err() {
                    return;
                }
            }
        });
        let _stop_keepalive = AbortOnDrop(keepalive);
        let mut client = SchedulerClient::new(e.channel.clone());
        let result = client.host_session(tokio_stream::wrappers::ReceiverStream::new(ticks_rx)).await;
        if result.is_err() {
            e.tried.store(true, Ordering::Relaxed);
        }
        match result {
            Ok(resp) => {
                e.generation.fetch_add(1, Ordering::Relaxed);
                e.live.store(true, Ordering::Relaxed);
                e.tried.store(true, Ordering::Relaxed);
                topology.send_modify(|g| *g += 1);
                tracing::info!(scheduler = %e.addr, "host session up");
                backoff.reset();
                let mut cmds = resp.into_inner();
                while let Ok(Some(cmd)) = cmds.message().await {
                    if let Some(c) = cmd.command {
                        let _ = deps.orders.send((e.addr.clone(), c));
                    }
                }
                e.live.store(false, Ordering::Relaxed);
                topology.send_modify(|g| *g += 1);
                tracing::warn!(scheduler = %e.addr, "host session lost");
            }
            Err(err) => {
                tracing::debug!(scheduler = %e.addr, error = %err, "host session failed")
            }
        }
        drop(_stop_keepalive);
        tokio::time::sleep(backoff.next_pause().unwrap_or(Duration::from_secs(2))).await;
    }
}

/// Aborts a spawned task when dropped (the session worker was cancelled mid-session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task's session goes to the scheduler that owns it ([`Schedulers::pick`]) at the moment
/// it registers; registering again may land on another.
impl crate::task::env::SchedulerLink for Schedulers {
    fn open(
        &self,
        task: TaskId,
        outbound: mpsc::UnboundedReceiver<Box<ferry_proto::scheduler::PeerMessage>>,
    ) -> futures::future::BoxFuture<'static, (String, Result<crate::task::env::Commands, tonic::Status>)> {
        let (addr, mut client) = self.pick(&task);
        let outbound = futures::StreamExt::map(tokio_stream::wrappers::UnboundedReceiverStream::new(outbound), |m| *m);
        let mut request = tonic::Request::new(outbound);
        // The task's trace goes on to the scheduler's handling of this peer.
        ferry_telemetry::trace::inject_grpc(request.metadata_mut());
        Box::pin(async move {
            let commands = client.announce_peer(request).await.map(|r| {
                let stream: crate::task::env::Commands = Box::pin(r.into_inner());
                stream
            });
            (addr, commands)
        })
    }

    fn owner(&self, task: TaskId) -> ParkedAt {
        Schedulers::owner(self, &task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_set_follows_the_manager() {
        let s = Schedulers::new(&["a:1".to_string(), "b:1".to_string()], false, None).unwrap();
        let mut rx = s.topology();
        assert!(s.set(&["b:1".to_string(), "c:1".to_string()]).unwrap());
        let mut now = s.addrs();
        now.sort();
        assert_eq!(now, ["b:1", "c:1"]);
        assert!(rx.has_changed().unwrap(), "owners may have moved");
        rx.mark_unchanged();
        assert!(!s.set(&["c:1".to_string(), "b:1".to_string()]).unwrap(), "same set");
        assert!(!rx.has_changed().unwrap());
        assert!(s.set(&["c:1".to_string(), "bad address".to_string()]).is_err());
        assert_eq!(s.count(), 2, "a refused set changes nothing");
        assert!(Schedulers::new(&[], false, None).is_err() && Schedulers::new(&[], true, None).is_ok());
        let empty = Schedulers::new(&[], true, None).unwrap();
        assert_eq!(empty.owner(&TaskId([1; 32])).scheduler, "", "no owner before the manager names one");
    }

    #[test]
    fn rendezvous_spreads_tasks_and_moves_few_on_growth() {
        let two = ["a:1".to_string(), "b:1".to_string()];
        let three = ["a:1".to_string(), "b:1".to_string(), "c:1".to_string()];
        let owner = |set: &[String], t: &TaskId| set.iter().max_by_key(|a| score(t, a)).unwrap().clone();
        let tasks: Vec<TaskId> = (0..200u8).map(|i| TaskId([i; 32])).collect();
        let on_a = tasks.iter().filter(|t| owner(&two, t) == "a:1").count();
        assert!((60..140).contains(&on_a), "unbalanced: {on_a}/200");
        // Growing the set only moves tasks to the new scheduler.
        for t in &tasks {
            let after = owner(&three, t);
            assert!(after == owner(&two, t) || after == "c:1");
        }
    }
}
