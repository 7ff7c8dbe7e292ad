//! `ferry-testbed load`: a real `ferry scheduler` process driven over gRPC on loopback as N
//! hosts and M peers over T tasks, to see how decisions and memory scale.
//!
//! Hosts open their host sessions first (keepalives every `--keepalive`, many sessions per
//! HTTP/2 connection). The first peer of each task registers holding the whole task (the
//! peer that read the origin) and parks; every other peer registers with nothing, waits for
//! its decision (parents, or wait for a seed, or back to source: the latency measured),
//! sometimes reports its first parent failed and waits again, then reports every piece from
//! its parent, finishes and parks — so it stays in the scheduler's books as a parent, as a
//! finished download does. At the end a tenth of the hosts leave.
//!
//! Reported: decision latency p50/p99/p99.9, scheduler CPU seconds per 1,000 decisions (from
//! `/proc/PID/stat`), scheduler RSS per live peer and per host (`/proc/PID/status`). The
//! generator shares the machine with the scheduler, so the latency includes some of its own
//! queueing; the CPU and memory figures are the scheduler's alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::{
    peer_command, peer_message, FailReason, Finished, FinishedPiece, Host, HostMessage, ParentFailed, Park,
    PeerMessage, PiecesFinished, Register, StatsRequest, TaskInfo,
};
use ferry_types::{TaskId, TaskIdInput};
use futures::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Peers in all (one per host and task), the tasks' first peers included.
    #[arg(long, default_value_t = 10_000)]
    pub peers: usize,
    #[arg(long, default_value_t = 100)]
    pub tasks: usize,
    /// Pieces per task.
    #[arg(long, default_value_t = 64)]
    pub pieces: u32,
    /// Peer registrations started per second (0: as fast as `--in-flight` allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Peers between registration and park at once.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Share of peers (0-1) that report their first parent failed.
    #[arg(long, default_value_t = 0.05)]
    pub parent_failures: f64,
    /// Seconds between a host's keepalives (daemons send one a second).
    #[arg(long, default_value_t = 5)]
    pub keepalive: u64,
    /// Host sessions per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// The `ferry` binary to run the scheduler from [default: beside this one].
    #[arg(long)]
    pub ferry_bin: Option<PathBuf>,
    /// Write the report here as JSON too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_meets_each_task_once_and_first_peers_cover_every_task() {
        let (hosts, tasks) = (12, 10);
        let m = stride(tasks);
        let mut seen = std::collections::HashSet::new();
        for k in 0..hosts * tasks {
            assert!(seen.insert(peer_of(k, hosts, tasks, m)), "peer {k} repeats a host and task");
        }
        let firsts: std::collections::HashSet<usize> = (0..tasks).map(|k| peer_of(k, hosts, tasks, m).1).collect();
        assert_eq!(firsts.len(), tasks);
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), 3);
    }

    #[test]
    fn histogram_quantiles_come_from_the_exposition() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.000002\"} 10\nx_bucket{le=\"0.000004\"} 98\n\
                    x_bucket{le=\"0.000008\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 0.0003\nx_count 100\n";
        let b = histogram_buckets(text, "x_bucket");
        assert_eq!(b.len(), 4);
        assert_eq!(bucket_quantile(&b, 0.5), 0.000004);
        assert_eq!(bucket_quantile(&b, 0.99), 0.000008);
        assert_eq!(bucket_quantile(&[], 0.99), 0.0);
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub hosts: usize,
    pub peers: usize,
    pub tasks: usize,
    pub pieces: u32,
    /// Decisions received by kind.
    pub parents: u64,
    pub wait_for_seed: u64,
    pub back_to_source: u64,
    pub failed: u64,
    /// Peers that got no decision at all (must be 0).
    pub undecided: u64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    /// The same decisions timed inside the scheduler (its `ferry_scheduler_decision_seconds`
    /// histogram: rank, decide, send), as the upper edge of the bucket holding the quantile.
    pub scheduler_decision_us_p50: f64,
    pub scheduler_decision_us_p99: f64,
    pub scheduler_decision_us_p999: f64,
    /// The floor: a `Stats` call (one gRPC round trip on a new stream, next to no work)
    /// timed every 5 ms on the peers' connections while they run.
    pub round_trip_us_p50: u64,
    pub round_trip_us_p99: u64,
    pub round_trip_us_p999: u64,
    /// Registrations started per second over the peers' phase (what `--rate` achieved).
    pub registrations_per_s: f64,
    /// The scheduler's books at the end: hosts and peers it holds.
    pub scheduler_hosts: u64,
    pub scheduler_peers: u64,
    pub scheduler_cpu_s: f64,
    pub cpu_s_per_1000_decisions: f64,
    pub rss_start_bytes: u64,
    pub rss_after_hosts_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_per_host_bytes: f64,
    pub rss_per_peer_bytes: f64,
    pub hosts_after_departures: u64,
    pub wall_s: f64,
}

/// The scheduler process under load.
struct Scheduler {
    child: tokio::process::Child,
    pid: u32,
    addr: String,
    metrics: String,
}

impl Scheduler {
    async fn start(bin: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(bin)
            .args(["scheduler", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("FERRY_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let out = child.stdout.take().context("scheduler stdout")?;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??.context("no ready line")?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let addr = v["addr"].as_str().context("ready line without addr")?.to_owned();
        let metrics = v["metrics"].as_str().context("ready line without metrics")?.to_owned();
        let pid = child.id().context("scheduler pid")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, pid, addr, metrics })
    }

    /// CPU seconds (user + system) the scheduler has used.
    fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(11) + ticks(12)) / hz
    }

    /// The decision-time histogram from `/metrics`: (upper edge in seconds, cumulative count).
    async fn decision_buckets(&self) -> anyhow::Result<Vec<(f64, u64)>> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics)).await?.error_for_status()?.text().await?;
        Ok(histogram_buckets(&text, "ferry_scheduler_decision_seconds_bucket"))
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

fn host(i: usize) -> Host {
    Host {
        id: format!("load-{i}"),
        ip: format!("127.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, (i & 255).max(1)),
        piece_port: 4005,
        upload_slots: 32,
        hostname: format!("load-{i}"),
        ..Default::default()
    }
}

fn task(j: usize) -> (TaskId, String) {
    let url = format!("http://origin.load.invalid/t{j}");
    let parsed = url::Url::parse(&url).expect("a valid URL");
    (TaskId::derive(&TaskIdInput { url: Some(&parsed), ..Default::default() }), url)
}

/// A multiplier coprime to `tasks`, so peer `k` of host `h` goes to task `(k / hosts + m*h) %
/// tasks`: each host meets each task at most once, and the first `tasks` peers cover every
/// task once (they are the tasks' first peers).
fn stride(tasks: usize) -> usize {
    (7..).step_by(2).find(|m| gcd(*m, tasks) == 1).expect("some odd number is coprime")
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What peer `k` is: its host and its task.
fn peer_of(k: usize, hosts: usize, tasks: usize, m: usize) -> (usize, usize) {
    let h = k % hosts;
    (h, (k / hosts + m * h) % tasks)
}

const PIECE: u32 = 4 << 20;

/// What keeps the host sessions open (and their keepalives going); emptied to end them.
type Senders = Arc<std::sync::Mutex<Vec<mpsc::Sender<HostMessage>>>>;

/// Opens every host session (64 at a time); returns the senders that keep them alive.
async fn open_hosts(channels: &[Channel], a: &LoadArgs) -> anyhow::Result<Vec<mpsc::Sender<HostMessage>>> {
    let opened = futures::stream::iter(0..a.hosts)
        .map(|i| {
            let channel = channels[i / a.per_connection].clone();
            async move {
                let (tx, rx) = mpsc::channel::<HostMessage>(4);
                tx.send(HostMessage { host: Some(host(i)), dropped: vec![] }).await?;
                let mut client = SchedulerClient::new(channel);
                let resp = client.host_session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
                // Orders (none for these hosts) are read so the stream never backs up.
                let mut orders = resp.into_inner();
                tokio::spawn(async move { while let Ok(Some(_)) = orders.message().await {} });
                anyhow::Ok(tx)
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

/// Sends every host's keepalive once per `every`, spread over the interval as independent
/// daemons would send them (not in one burst), until the senders close.
fn keep_alive(senders: Senders, every: Duration) {
    const TICK: Duration = Duration::from_millis(20);
    tokio::spawn(async move {
        let slices = (every.as_millis() / TICK.as_millis()).max(1) as usize;
        let mut tick = tokio::time::interval(TICK);
        for n in 0usize.. {
            tick.tick().await;
            let now: Vec<_> = senders.lock().unwrap().clone();
            if now.is_empty() {
                return;
            }
            let slice = n % slices;
            for (i, tx) in now.iter().enumerate().filter(|(i, _)| i % slices == slice) {
                let _ = tx.try_send(HostMessage { host: Some(host(i)), dropped: vec![] });
            }
        }
    });
}

#[derive(Default)]
struct Tally {
    parents: AtomicU64,
    wait: AtomicU64,
    back_to_source: AtomicU64,
    failed: AtomicU64,
    undecided: AtomicU64,
}

enum Decision {
    Parents(Vec<String>),
    Other,
}

/// Reads commands until a decision; `None` when the stream ended without one.
async fn decision(
    commands: &mut tonic::Streaming<ferry_proto::scheduler::PeerCommand>,
    tally: &Tally,
) -> Option<Decision> {
    loop {
        let cmd = tokio::time::timeout(Duration::from_secs(60), commands.message()).await.ok()?.ok()??;
        match cmd.command? {
            peer_command::Command::Parents(p) => {
                tally.parents.fetch_add(1, Ordering::Relaxed);
                return Some(Decision::Parents(p.parents.into_iter().map(|p| p.host_id).collect()));
            }
            peer_command::Command::Wait(_) => {
                tally.wait.fetch_add(1, Ordering::Relaxed);
                return Some(Decision::Other);
            }
            peer_command::Command::BackToSource(_) => {
                tally.back_to_source.fetch_add(1, Ordering::Relaxed);
                return Some(Decision::Other);
            }
            peer_command::Command::TaskFailed(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return Some(Decision::Other);
            }
            peer_command::Command::TaskInfo(_)
            | peer_command::Command::Digests(_)
            | peer_command::Command::DropParents(_) => {}
        }
    }
}

fn msg(m: peer_message::Message) -> PeerMessage {
    PeerMessage { message: Some(m) }
}

/// One peer's life; returns its decision latency.
async fn run_peer(channel: Channel, a: Arc<LoadArgs>, k: usize, m: usize, tally: Arc<Tally>) -> Option<Duration> {
    let (h, j) = peer_of(k, a.hosts, a.tasks, m);
    let (task_id, url) = task(j);
    let first = k < a.tasks;
    let length = u64::from(a.pieces) * u64::from(PIECE);
    let (tx, rx) = mpsc::unbounded_channel::<PeerMessage>();
    let mut reg =
        Register { task_id: task_id.0.to_vec(), host: Some(host(h)), url, piece_size: PIECE, ..Default::default() };
    if first {
        // The peer that read the origin: the whole task, every digest, the layout.
        reg.held = (0..a.pieces).collect();
        reg.held_digests = (0..a.pieces).map(|i| blake3::hash(&i.to_be_bytes()).as_bytes().to_vec()).collect();
        reg.info = Some(TaskInfo { content_length: length, piece_size: PIECE, ..Default::default() });
    }
    tx.send(msg(peer_message::Message::Register(reg))).ok()?;
    let started = Instant::now();
    let mut client = SchedulerClient::new(channel).max_decoding_message_size(64 << 20);
    let mut commands =
        client.announce_peer(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.ok()?.into_inner();
    let mut latency = None;
    let mut parent = String::new();
    if !first {
        match decision(&mut commands, &tally).await {
            Some(Decision::Parents(p)) => {
                latency = Some(started.elapsed());
                parent = p.first().cloned().unwrap_or_default();
            }
            Some(Decision::Other) => latency = Some(started.elapsed()),
            None => {
                tally.undecided.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        // Some peers find their first parent unreachable and ask again.
        let unlucky = (blake3::hash(&k.to_be_bytes()).as_bytes()[0] as f64) < a.parent_failures * 256.0;
        if unlucky && !parent.is_empty() {
            let f = ParentFailed { parent: parent.clone(), reason: FailReason::Unreachable as i32 };
            tx.send(msg(peer_message::Message::ParentFailed(f))).ok()?;
            if let Some(Decision::Parents(p)) = decision(&mut commands, &tally).await {
                parent = p.first().cloned().unwrap_or(parent);
            }
        }
        let pieces = (0..a.pieces)
            .map(|i| FinishedPiece {
                index: i,
                parent: parent.clone(),
                length: PIECE,
                cost_micros: 80_000,
                ..Default::default()
            })
            .collect();
        tx.send(msg(peer_message::Message::Pieces(PiecesFinished { pieces }))).ok()?;
    }
    tx.send(msg(peer_message::Message::Finished(Finished {}))).ok()?;
    tx.send(msg(peer_message::Message::Park(Park {}))).ok()?;
    drop(tx);
    // The scheduler ends the stream once it has read ours to the end.
    while let Ok(Some(_)) = commands.message().await {}
    latency
}

async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = vec![];
    for _ in 0..n {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
        out.push(ep.connect().await?);
    }
    Ok(out)
}

/// The `(le, cumulative count)` pairs of one histogram in a Prometheus text exposition.
fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count = rest.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The upper edge of the bucket that holds quantile `p` of a histogram's observations.
fn bucket_quantile(buckets: &[(f64, u64)], p: f64) -> f64 {
    let total = buckets.last().map_or(0, |b| b.1);
    let rank = (total as f64 * p).ceil() as u64;
    buckets.iter().find(|b| b.1 >= rank.max(1)).map_or(0.0, |b| b.0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn stats(addr: &str) -> anyhow::Result<ferry_proto::scheduler::StatsResponse> {
    let mut c = SchedulerClient::connect(format!("http://{addr}")).await?;
    Ok(c.stats(StatsRequest {}).await?.into_inner())
}

/// Times a `Stats` round trip every 5 ms on `channels` until `stop`; microseconds.
async fn round_trips(channels: Vec<Channel>, stop: CancellationToken) -> Vec<u64> {
    let mut times = vec![];
    for k in 0.. {
        let mut client = SchedulerClient::new(channels[k % channels.len()].clone());
        let started = Instant::now();
        if client.stats(StatsRequest {}).await.is_ok() {
            times.push(started.elapsed().as_micros() as u64);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    times
}

/// Every peer's life, the tasks' first peers (the holders) before the others so every later
/// peer finds a parent; returns the decision latencies and the round trips timed beside
/// them, in microseconds.
async fn run_peers(addr: &str, a: &Arc<LoadArgs>, tally: &Arc<Tally>) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let peer_channels = connect(addr, 8).await?;
    let stop = CancellationToken::new();
    let probe = tokio::spawn(round_trips(peer_channels.clone(), stop.clone()));
    let m = stride(a.tasks);
    let mut latencies: Vec<u64> = vec![];
    for phase in [0..a.tasks, a.tasks..a.peers] {
        // Peer k of the phase starts at k / rate from the phase's start (or as soon as it
        // can, when behind): the rate holds on average whatever the timer's granularity.
        let start = tokio::time::Instant::now();
        let first = phase.start;
        let got = futures::stream::iter(phase)
            .then(|k| async move {
                if a.rate > 0 {
                    let at = start + Duration::from_secs_f64((k - first) as f64 / a.rate as f64);
                    tokio::time::sleep_until(at).await;
                }
                k
            })
            .map(|k| {
                let ch = peer_channels[k % peer_channels.len()].clone();
                tokio::spawn(run_peer(ch, a.clone(), k, m, tally.clone()))
            })
            .buffer_unordered(a.in_flight)
            .collect::<Vec<_>>()
            .await;
        latencies.extend(got.into_iter().filter_map(|r| r.ok().flatten()).map(|d| d.as_micros() as u64));
    }
    stop.cancel();
    let mut floor = probe.await?;
    floor.sort_unstable();
    Ok((latencies, floor))
}

/// A tenth of the hosts leave (their sessions end, their parked peers go); returns the hosts
/// the scheduler still counts once it has noticed (or after a minute).
async fn departures(
    addr: &str,
    senders: &std::sync::Mutex<Vec<mpsc::Sender<HostMessage>>>,
    hosts: usize,
) -> anyhow::Result<u64> {
    let staying = hosts - hosts / 10;
    senders.lock().unwrap().truncate(staying);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = stats(addr).await?.hosts;
    while now > staying as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = stats(addr).await?.hosts;
    }
    senders.lock().unwrap().clear();
    Ok(now)
}

/// Every host's session, kept alive, once the scheduler counts them all; the senders that
/// keep them open.
async fn join_hosts(addr: &str, a: &LoadArgs) -> anyhow::Result<Senders> {
    let host_channels = connect(addr, a.hosts.div_ceil(a.per_connection)).await?;
    let senders = Arc::new(std::sync::Mutex::new(open_hosts(&host_channels, a).await?));
    keep_alive(senders.clone(), Duration::from_secs(a.keepalive.max(1)));
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats(addr).await?.hosts < a.hosts as u64 {
        if Instant::now() > deadline {
            bail!("the scheduler did not count every host session");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(senders)
}

pub async fn run(a: LoadArgs, ferry_bin: PathBuf) -> anyhow::Result<LoadReport> {
    if a.tasks == 0 || a.hosts == 0 || a.peers < a.tasks || a.tasks > a.hosts {
        bail!("need 0 < tasks <= hosts and tasks <= peers");
    }
    if a.peers > a.hosts * a.tasks {
        bail!("{} peers do not fit {} hosts x {} tasks (one peer per host and task)", a.peers, a.hosts, a.tasks);
    }
    let began = Instant::now();
    let sched = Scheduler::start(&ferry_bin).await?;
    let rss_start = sched.rss_bytes();
    let senders = join_hosts(&sched.addr, &a).await?;
    let rss_hosts = sched.rss_bytes();
    let cpu_before = sched.cpu_s();

    let tally = Arc::new(Tally::default());
    let a = Arc::new(a);
    let peers_began = Instant::now();
    let (mut latencies, floor) = run_peers(&sched.addr, &a, &tally).await?;
    let peers_s = peers_began.elapsed().as_secs_f64();
    let cpu = sched.cpu_s() - cpu_before;
    let buckets = sched.decision_buckets().await?;
    let end = stats(&sched.addr).await?;
    let rss_end = sched.rss_bytes();

    let after = departures(&sched.addr, &senders, a.hosts).await?;

    latencies.sort_unstable();
    let decisions = latencies.len() as f64;
    let live_peers = end.peers.max(1) as f64;
    let report = LoadReport {
        hosts: a.hosts,
        peers: a.peers,
        tasks: a.tasks,
        pieces: a.pieces,
        parents: tally.parents.load(Ordering::Relaxed),
        wait_for_seed: tally.wait.load(Ordering::Relaxed),
        back_to_source: tally.back_to_source.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        undecided: tally.undecided.load(Ordering::Relaxed),
        latency_us_p50: percentile(&latencies, 0.50),
        latency_us_p99: percentile(&latencies, 0.99),
        latency_us_p999: percentile(&latencies, 0.999),
        latency_us_max: latencies.last().copied().unwrap_or(0),
        scheduler_decision_us_p50: bucket_quantile(&buckets, 0.50) * 1e6,
        scheduler_decision_us_p99: bucket_quantile(&buckets, 0.99) * 1e6,
        scheduler_decision_us_p999: bucket_quantile(&buckets, 0.999) * 1e6,
        round_trip_us_p50: percentile(&floor, 0.50),
        round_trip_us_p99: percentile(&floor, 0.99),
        round_trip_us_p999: percentile(&floor, 0.999),
        registrations_per_s: a.peers as f64 / peers_s,
        scheduler_hosts: end.hosts,
        scheduler_peers: end.peers,
        scheduler_cpu_s: cpu,
        cpu_s_per_1000_decisions: if decisions > 0.0 { cpu * 1000.0 / decisions } else { 0.0 },
        rss_start_bytes: rss_start,
        rss_after_hosts_bytes: rss_hosts,
        rss_end_bytes: rss_end,
        rss_per_host_bytes: rss_hosts.saturating_sub(rss_start) as f64 / a.hosts as f64,
        rss_per_peer_bytes: rss_end.saturating_sub(rss_hosts) as f64 / live_peers,
        hosts_after_departures: after,
        wall_s: began.elapsed().as_secs_f64(),
    };
    drop(sched.child);
    Ok(report)
}
