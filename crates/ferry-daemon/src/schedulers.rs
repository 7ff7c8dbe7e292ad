//! The daemon's view of the schedulers.
//!
//! Every daemon keeps a host session open to every scheduler: it is the keepalive that makes
//! the scheduler count this host (and its load), and the channel a scheduler uses to ask a
//! seed to fetch a task. A scheduler whose session is up is "live". A task belongs to the
//! live scheduler with the highest rendezvous score for (task, scheduler), so adding a
//! scheduler moves only the tasks it wins, and a dead scheduler's tasks spread over the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

pub struct Schedulers {
    entries: Vec<Entry>,
    /// Bumped whenever a host session comes up or goes down: tasks may change owner, and a
    /// scheduler that restarted knows none of the tasks parked with it.
    topology: tokio::sync::watch::Sender<u64>,
}

struct Entry {
    addr: String,
    channel: Channel,
    live: AtomicBool,
    /// The first session attempt finished (up or failed): the view of this scheduler is settled.
    tried: AtomicBool,
    /// How many host sessions with it have come up.
    generation: std::sync::atomic::AtomicU64,
}

fn score(task: &TaskId, addr: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&task.0);
    h.update(addr.as_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

impl Schedulers {
    pub fn new(addrs: &[String]) -> Result<Self, String> {
        let entries = addrs
            .iter()
            .map(|a| {
                let uri = if a.contains("://") { a.clone() } else { format!("http://{a}") };
                let ep = Endpoint::from_shared(uri)
                    .map_err(|e| format!("scheduler address `{a}`: {e}"))?
                    .connect_timeout(Duration::from_secs(3))
                    .tcp_nodelay(true);
                Ok(Entry {
                    addr: a.clone(),
                    channel: ep.connect_lazy(),
                    live: AtomicBool::new(false),
                    tried: AtomicBool::new(false),
                    generation: Default::default(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if entries.is_empty() {
            return Err("no scheduler address given (--scheduler HOST:PORT)".into());
        }
        Ok(Self { entries, topology: tokio::sync::watch::Sender::new(0) })
    }

    /// How many schedulers this daemon was given.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// How many host sessions are up now.
    pub fn live_count(&self) -> usize {
        self.entries.iter().filter(|e| e.live.load(Ordering::Relaxed)).count()
    }

    pub fn any_live(&self) -> bool {
        self.live_count() > 0
    }

    /// The scheduler owning `task`: rendezvous over the live ones, or over all when none is.
    pub fn pick(&self, task: &TaskId) -> (String, SchedulerClient<Channel>) {
        let e = self.owner_entry(task);
        (e.addr.clone(), SchedulerClient::new(e.channel.clone()).max_decoding_message_size(64 << 20))
    }

    fn owner_entry(&self, task: &TaskId) -> &Entry {
        let live: Vec<&Entry> = self.entries.iter().filter(|e| e.live.load(Ordering::Relaxed)).collect();
        let pool: Vec<&Entry> = if live.is_empty() { self.entries.iter().collect() } else { live };
        pool.into_iter().max_by_key(|e| score(task, &e.addr)).expect("at least one scheduler")
    }

    /// Where a finished task would be parked now: its owner and our session generation there.
    pub fn owner(&self, task: &TaskId) -> ParkedAt {
        let e = self.owner_entry(task);
        ParkedAt { scheduler: e.addr.clone(), generation: e.generation.load(Ordering::Relaxed) }
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
        while !self.entries.iter().all(|e| e.tried.load(Ordering::Relaxed)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.entries.iter().filter(|e| !e.live.load(Ordering::Relaxed)).map(|e| e.addr.clone()).collect()
    }

    /// Starts one session worker per scheduler; a scheduler's orders (fetch, cancel) go to
    /// `orders`.
    pub fn spawn_sessions(
        self: &Arc<Self>,
        host: Arc<dyn Fn() -> Host + Send + Sync>,
        fetches: mpsc::UnboundedSender<host_command::Command>,
        registry: Arc<Registry>,
        workers: &crate::workers::Workers,
        cancel: CancellationToken,
    ) {
        for i in 0..self.entries.len() {
            let (this, host, fetches, registry) = (self.clone(), host.clone(), fetches.clone(), registry.clone());
            let name = format!("host-session {}", self.entries[i].addr);
            workers.spawn(name, cancel.clone(), async move { this.session_worker(i, host, fetches, registry).await });
        }
    }

    async fn session_worker(
        &self,
        i: usize,
        host: Arc<dyn Fn() -> Host + Send + Sync>,
        fetches: mpsc::UnboundedSender<host_command::Command>,
        registry: Arc<Registry>,
    ) {
        let e = &self.entries[i];
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), None);
        loop {
            let (ticks, ticks_rx) = mpsc::channel::<HostMessage>(2);
            let (h, registry, addr) = (host.clone(), registry.clone(), e.addr.clone());
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
                    self.topology.send_modify(|g| *g += 1);
                    tracing::info!(scheduler = %e.addr, "host session up");
                    backoff.reset();
                    let mut cmds = resp.into_inner();
                    while let Ok(Some(cmd)) = cmds.message().await {
                        if let Some(c) = cmd.command {
                            let _ = fetches.send(c);
                        }
                    }
                    e.live.store(false, Ordering::Relaxed);
                    self.topology.send_modify(|g| *g += 1);
                    tracing::warn!(scheduler = %e.addr, "host session lost");
                }
                Err(err) => {
                    tracing::debug!(scheduler = %e.addr, error = %err, "host session failed")
                }
            }
            keepalive.abort();
            tokio::time::sleep(backoff.next_pause().unwrap_or(Duration::from_secs(2))).await;
        }
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
        Box::pin(async move {
            let outbound =
                futures::StreamExt::map(tokio_stream::wrappers::UnboundedReceiverStream::new(outbound), |m| *m);
            let commands = client.announce_peer(outbound).await.map(|r| {
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
