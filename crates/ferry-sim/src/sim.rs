//! The event loop, the simulated world, and transfers over the modelled links.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use ferry_policy::PiecePicker;
use ferry_proto::scheduler::{host_command, peer_command, peer_message, FinishedPiece, Host, Register};
use ferry_scheduler::SchedulerService;
use ferry_transport::avail::ChildId;
use ferry_transport::Availability;
use ferry_types::{PieceLayout, TaskId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};

use crate::net::{max_min, LinkId};
use crate::{bound, Arrival, HostOutcome, Sample, Scenario, SimResult};

pub type NodeId = usize;
pub type ConnId = usize;

/// What happens, and when.
pub enum Event {
    Arrive(NodeId),
    Leave(NodeId),
    /// Every 20 ms: reports; every 25th: the watchdog.
    Tick(NodeId),
    // Boxed: the heap moves events around, and a command is a few hundred bytes.
    ToScheduler(NodeId, Box<ToSched>),
    Command(NodeId, Box<peer_command::Command>),
    HostCommand(NodeId, Box<host_command::Command>),
    /// The origin answered a node's request: the layout is known, bytes follow.
    OriginHeader(NodeId),
    ConnOpen(ConnId),
    /// A request by index reaches the parent.
    RequestAt(ConnId, u32),
    /// A `RequestAny` reaches a seed.
    RequestAnyAt(ConnId),
    /// A piece's last byte reaches the child.
    Deliver(ConnId, u32),
    Have(ConnId, u32),
    Reject {
        conn: ConnId,
        index: u32,
        busy: bool,
    },
    Exhausted(ConnId),
    /// The child learns its connection to the parent is gone.
    ParentGone(ConnId),
    /// A seed-only piece comes due at this worker.
    Grace(ConnId),
    /// The transfer at the head of the connection's queue ends (if `gen` is still current).
    HeadDone(ConnId, u64),
    /// Rates are recomputed.
    Epoch,
    /// What the scheduler said since the last batch leaves for its hosts.
    SchedulerOut,
}

// Boxed whole where it travels (in `Event::ToScheduler`).
#[allow(clippy::large_enum_variant)]
pub enum ToSched {
    Register(Register),
    Message(peer_message::Message),
    Unregister,
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: the heap pops the earliest, and among equals the first scheduled.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One simulated host and its daemon's one task.
pub struct Node {
    pub host: Host,
    pub up: LinkId,
    pub down: LinkId,
    /// Among the receiving hosts.
    pub counted: bool,
    pub slow: bool,
    pub arrive: f64,
    pub left: bool,
    pub session: Option<u64>,
    pub cmd_rx: Option<mpsc::UnboundedReceiver<Box<Result<ferry_proto::scheduler::PeerCommand, tonic::Status>>>>,
    pub host_rx: Option<mpsc::UnboundedReceiver<Result<ferry_proto::scheduler::HostCommand, tonic::Status>>>,
    pub picker: Option<PiecePicker>,
    /// Digests known before the layout was.
    pub verifiable: Vec<bool>,
    pub avail: Option<Availability>,
    pub haves: Option<broadcast::Receiver<u32>>,
    /// Non-seed parents showing each piece.
    pub holders: Vec<u16>,
    pub parents: BTreeMap<NodeId, ConnId>,
    pub blocked: BTreeSet<NodeId>,
    pub children: Vec<ConnId>,
    pub pending: Vec<FinishedPiece>,
    pub origin: Option<ConnId>,
    pub from_origin: bool,
    pub last_progress: f64,
    pub last_ask: f64,
    pub ticks: u64,
    pub done: Option<f64>,
    pub origin_bytes: u64,
    pub uploaded: u64,
    pub rng: StdRng,
}

impl Node {
    fn new(
        host: Host,
        (up, down): (LinkId, LinkId),
        counted: bool,
        slow: bool,
        arrive: f64,
        pieces: usize,
        rng: StdRng,
    ) -> Self {
        Node {
            host,
            up,
            down,
            counted,
            slow,
            arrive,
            left: false,
            session: None,
            cmd_rx: None,
            host_rx: None,
            picker: None,
            verifiable: vec![false; pieces],
            avail: None,
            haves: None,
            holders: vec![0; pieces],
            parents: BTreeMap::new(),
            blocked: BTreeSet::new(),
            children: vec![],
            pending: vec![],
            origin: None,
            from_origin: false,
            last_progress: 0.0,
            last_ask: 0.0,
            ticks: 0,
            done: None,
            origin_bytes: 0,
            uploaded: 0,
            rng,
        }
    }
}

/// A child's worker for one parent, as `ferry-daemon`'s `from_parent::Worker` keeps it.
pub struct Worker {
    pub has: Vec<bool>,
    pub inflight: VecDeque<(u32, f64)>,
    pub any_waiting: usize,
    pub exhausted: bool,
    pub seed: bool,
    pub since: Vec<Option<Instant>>,
    pub last_arrival: f64,
    pub grace_at: Option<f64>,
    /// What a non-seed parent has shown, to pick from.
    pub offer: ferry_policy::Offer,
}

/// A connection child <- parent (or <- origin), and the transfer on it: the parent sends
/// what is queued, one piece after another.
pub struct Conn {
    pub child: NodeId,
    /// `None`: the origin.
    pub parent: Option<NodeId>,
    pub up: LinkId,
    pub down: LinkId,
    pub open: bool,
    pub closed: bool,
    pub queue: VecDeque<u32>,
    pub remaining: f64,
    pub rate: f64,
    pub since: f64,
    pub gen: u64,
    pub active: bool,
    /// Where it is in [`Sim::active`] while active.
    pub slot: usize,
    pub child_id: Option<ChildId>,
    pub waiter: Option<(mpsc::UnboundedSender<u32>, mpsc::UnboundedReceiver<u32>)>,
    /// `RequestAny`s that reached a seed before it knew the layout.
    pub pending_any: usize,
    pub w: Worker,
}

fn event_name(ev: &Event) -> String {
    match ev {
        Event::Deliver(_, i) => format!("piece {i}"),
        Event::RequestAt(_, i) => format!("request {i} reaches parent"),
        Event::Reject { index, busy, .. } => format!("reject {index} (busy {busy})"),
        Event::ConnOpen(_) => "connected".into(),
        Event::RequestAnyAt(_) => "RequestAny reaches parent".into(),
        Event::Exhausted(_) => "exhausted".into(),
        Event::ParentGone(_) => "parent gone".into(),
        Event::Grace(_) => "seed grace due".into(),
        Event::Arrive(_) => "arrives".into(),
        Event::Leave(_) => "leaves".into(),
        Event::OriginHeader(_) => "origin answers".into(),
        Event::HostCommand(_, c) => format!("host command {c:?}"),
        _ => String::new(),
    }
}

pub struct Sim {
    /// A host whose events are printed to stderr.
    trace: Option<NodeId>,
    pub sc: Scenario,
    pub layout: PieceLayout,
    pub task: TaskId,
    pub now: f64,
    pub base: Instant,
    queue: BinaryHeap<Entry>,
    seq: u64,
    pub events: u64,
    pub caps: Vec<f64>,
    pub used: Vec<f64>,
    pub nodes: Vec<Node>,
    pub conns: Vec<Conn>,
    /// The connections sending now: an epoch shares the links among these alone.
    active: Vec<ConnId>,
    /// Counted hosts neither done nor gone: the run ends at 0.
    pub outstanding: usize,
    pub ids: BTreeMap<String, NodeId>,
    pub origin_link: LinkId,
    epoch_pending: bool,
    next_sample: f64,
    pub timeline: Vec<Sample>,
    pub drain_pending: bool,
    pub svc: SchedulerService,
    pub duplicates: u64,
    pub transfers: u64,
    pub sched_errors: u64,
}

/// What every simulated host asks for.
pub const URL: &str = "http://origin.sim/data.bin";

/// Simulated seconds between two samples of the links' load.
const SAMPLE_S: f64 = 0.1;

impl Sim {
    fn new(sc: Scenario) -> Self {
        let layout = match sc.piece_size {
            Some(p) => PieceLayout::new(sc.size, p).expect("a valid piece size"),
            // As a seed's daemon cuts it: by the rate its origin read comes at.
            None if sc.size >= ferry_types::MIN_RATE_LENGTH => {
                PieceLayout::for_rate(sc.size, sc.origin_bps.min(sc.link_bps) * sc.goodput / 8.0)
            }
            None => PieceLayout::for_length(sc.size),
        };
        let mut opts = ferry_scheduler::SchedulerOptions::default();
        if let Some((parents, children)) = sc.mesh {
            opts.rank.max_parents = parents;
            opts.rank.peer_max_children = children;
            opts.rank.seed_max_children = children;
        }
        opts.splice = sc.splice;
        let svc = SchedulerService::new(opts);
        svc.seed_rng(sc.seed);
        let mut s = Sim {
            trace: None,
            layout,
            task: TaskId([7; 32]),
            now: 0.0,
            base: Instant::now(),
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            caps: vec![f64::INFINITY],
            used: vec![0.0],
            nodes: vec![],
            conns: vec![],
            active: vec![],
            outstanding: 0,
            ids: BTreeMap::new(),
            origin_link: 0,
            epoch_pending: false,
            next_sample: 0.0,
            timeline: vec![],
            drain_pending: false,
            svc,
            duplicates: 0,
            transfers: 0,
            sched_errors: 0,
            sc,
        };
        s.origin_link = s.link(s.sc.origin_bps);
        s.build_nodes();
        s.trace = s.sc.trace.as_ref().and_then(|t| s.ids.get(t).copied());
        s
    }

    /// A link of `bps` nominal bits per second: its capacity in payload bytes per second.
    fn link(&mut self, bps: f64) -> LinkId {
        self.caps.push(bps * self.sc.goodput / 8.0);
        self.used.push(0.0);
        self.caps.len() - 1
    }

    /// Seeds first (on the first hosts, or their own), then the ordinary hosts; slow and
    /// leaving hosts and arrival times drawn from the scenario's seed.
    fn build_nodes(&mut self) {
        let sc = self.sc.clone();
        let mut rng = StdRng::seed_from_u64(sc.seed ^ 0x5eed);
        let on_host = if sc.seed_on_host { sc.seeds.min(sc.hosts) } else { 0 };
        let total = sc.hosts + sc.seeds - on_host;
        for i in 0..total {
            let seed = i < sc.seeds;
            let counted = !seed || sc.seed_on_host;
            let slow = !seed && sc.slow_fraction > 0.0 && rng.gen_bool(sc.slow_fraction);
            let bps = if slow { sc.slow_bps } else { sc.link_bps };
            let (up, down) = (self.link(bps), self.link(bps));
            let name = if seed { format!("seed-{i}") } else { format!("h{i:05}") };
            let arrive = match (seed, sc.arrival) {
                (false, Arrival::Staggered(over)) => rng.gen_range(0.0..=over),
                _ => 0.0,
            };
            let host = Host {
                id: name.clone(),
                ip: format!("198.18.{}.{}", i / 250, i % 250 + 1),
                piece_port: 65002,
                upload_slots: sc.daemon.upload_slots,
                seed,
                hostname: name.clone(),
                ..Default::default()
            };
            self.ids.insert(name, i);
            let rng = StdRng::seed_from_u64(sc.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            let pieces = self.layout.piece_count() as usize;
            self.nodes.push(Node::new(host, (up, down), counted, slow, arrive, pieces, rng));
            self.outstanding += usize::from(counted);
        }
        self.schedule_starts(&mut rng);
    }

    /// Seeds open their host sessions; the other hosts arrive, and some leave.
    fn schedule_starts(&mut self, rng: &mut StdRng) {
        let together = self.together_bound();
        let churn = self.sc.churn;
        for i in 0..self.nodes.len() {
            if self.nodes[i].host.seed {
                self.join_seed(i);
                continue;
            }
            let at = self.nodes[i].arrive;
            self.at(at, Event::Arrive(i));
            if churn > 0.0 && rng.gen_bool(churn) {
                let at = rng.gen_range(0.25 * together..0.75 * together).max(self.nodes[i].arrive + 1e-3);
                self.at(at, Event::Leave(i));
            }
        }
    }

    fn together_bound(&self) -> f64 {
        // Every node receives: the hosts, and seeds on hosts of their own (as the testbed
        // counts a seed host).
        let nominal = |l: LinkId| self.caps[l] * 8.0 / self.sc.goodput;
        let ups: Vec<f64> = self.nodes.iter().map(|n| nominal(n.up)).collect();
        let d_min = self.nodes.iter().map(|n| nominal(n.down)).fold(f64::INFINITY, f64::min);
        bound(self.sc.size, self.sc.origin_bps, self.nodes.len(), &ups, d_min)
    }

    pub fn at(&mut self, t: f64, ev: Event) {
        let t = t.max(self.now);
        self.seq += 1;
        self.queue.push(Entry { at: t.to_bits(), seq: self.seq, ev });
    }

    pub fn after(&mut self, dt: f64, ev: Event) {
        self.at(self.now + dt, ev);
    }

    pub fn instant(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t)
    }

    pub fn piece_len(&self, index: u32) -> f64 {
        let i = self.layout.index(index).expect("index inside the layout");
        self.layout.len(i) as f64
    }

    fn run(&mut self) {
        while let Some(Entry { at, ev, .. }) = self.queue.pop() {
            let t = f64::from_bits(at);
            if t > self.sc.max_time_s {
                break;
            }
            self.now = t;
            self.events += 1;
            self.dispatch(ev);
            if self.outstanding == 0 {
                break;
            }
        }
    }

    /// The node an event happens at, for `--trace`.
    fn subject(&self, ev: &Event) -> Option<NodeId> {
        Some(match ev {
            Event::Arrive(n) | Event::Leave(n) | Event::Tick(n) | Event::ToScheduler(n, _) => *n,
            Event::Command(n, _) | Event::HostCommand(n, _) | Event::OriginHeader(n) => *n,
            Event::ConnOpen(c) | Event::Deliver(c, _) | Event::Have(c, _) | Event::Exhausted(c) => self.conns[*c].child,
            Event::Reject { conn, .. } | Event::ParentGone(conn) | Event::Grace(conn) => self.conns[*conn].child,
            Event::RequestAt(c, _) | Event::RequestAnyAt(c) => self.conns[*c].child,
            Event::HeadDone(..) | Event::Epoch | Event::SchedulerOut => return None,
        })
    }

    fn trace(&self, ev: &Event) {
        let Some(n) = self.trace.filter(|t| self.subject(ev) == Some(*t)) else { return };
        let what = match ev {
            Event::Tick(_) | Event::Have(..) => return,
            Event::ToScheduler(_, m) => match &**m {
                ToSched::Message(m) => format!("to scheduler: {m:?}"),
                ToSched::Register(_) => "registers".into(),
                ToSched::Unregister => "stream ends".into(),
            },
            Event::Command(_, c) => match &**c {
                peer_command::Command::Digests(d) => format!("digests of {:?}", d.index),
                c => format!("command: {c:?}"),
            },
            Event::ConnOpen(c)
            | Event::Deliver(c, _)
            | Event::Exhausted(c)
            | Event::ParentGone(c)
            | Event::Grace(c)
            | Event::RequestAt(c, _)
            | Event::RequestAnyAt(c)
            | Event::Reject { conn: c, .. } => {
                let from = self.conns[*c].parent.map_or("origin".into(), |p| self.nodes[p].host.id.clone());
                format!("{} from {from}", event_name(ev))
            }
            other => event_name(other),
        };
        let held = self.nodes[n].picker.as_ref().map_or(0, |p| p.done_count());
        eprintln!("{:10.6} {} [{held}] {what}", self.now, self.nodes[n].host.id);
    }

    fn dispatch(&mut self, ev: Event) {
        if self.trace.is_some() {
            self.trace(&ev);
        }
        match ev {
            Event::Arrive(n) => self.arrive(n),
            Event::Leave(n) => self.leave(n),
            Event::Tick(n) => self.tick(n),
            Event::ToScheduler(n, m) => self.at_scheduler(n, *m),
            Event::Command(n, c) => self.on_command(n, *c),
            Event::HostCommand(n, c) => self.on_host_command(n, *c),
            Event::OriginHeader(n) => self.origin_header(n),
            Event::ConnOpen(c) => self.conn_open(c),
            Event::RequestAt(c, i) => self.request_at(c, i),
            Event::RequestAnyAt(c) => self.request_any_at(c),
            Event::Deliver(c, i) => self.deliver(c, i),
            Event::Have(c, i) => self.have(c, i),
            Event::Reject { conn, index, busy } => self.reject(conn, index, busy),
            Event::Exhausted(c) => self.exhausted(c),
            Event::ParentGone(c) => self.parent_gone(c),
            Event::Grace(c) => {
                self.conns[c].w.grace_at = None;
                self.ask(c);
            }
            Event::HeadDone(c, gen) => self.head_done(c, gen),
            Event::Epoch => self.epoch(),
            Event::SchedulerOut => self.collect_commands(),
        }
    }

    /// Queues a piece for sending on the connection; starts the transfer if it was idle.
    pub fn send_piece(&mut self, c: ConnId, index: u32) {
        self.conns[c].queue.push_back(index);
        if !self.conns[c].active {
            self.start_head(c, true);
        }
    }

    /// Starts the transfer of the queue's head: a connection that was idle takes what its
    /// links have left until the next epoch shares them out again.
    fn start_head(&mut self, c: ConnId, activating: bool) {
        let Some(&head) = self.conns[c].queue.front() else { return };
        let len = self.piece_len(head);
        let (up, down) = (self.conns[c].up, self.conns[c].down);
        if activating {
            let rate = (self.caps[up] - self.used[up]).min(self.caps[down] - self.used[down]).max(0.0);
            self.used[up] += rate;
            self.used[down] += rate;
            let conn = &mut self.conns[c];
            conn.rate = rate;
            conn.active = true;
            conn.slot = self.active.len();
            self.active.push(c);
            if !self.epoch_pending {
                self.epoch_pending = true;
                let next = (self.now / self.sc.epoch_s).floor() * self.sc.epoch_s + self.sc.epoch_s;
                self.at(next, Event::Epoch);
            }
        }
        let conn = &mut self.conns[c];
        conn.remaining = len;
        conn.since = self.now;
        conn.gen += 1;
        if conn.rate > 0.0 {
            let (gen, done) = (conn.gen, self.now + len / conn.rate);
            self.at(done, Event::HeadDone(c, gen));
        }
    }

    pub(crate) fn stop_flow(&mut self, c: ConnId) {
        let conn = &mut self.conns[c];
        if conn.active {
            conn.active = false;
            conn.gen += 1;
            self.used[conn.up] -= conn.rate;
            self.used[conn.down] -= conn.rate;
            conn.rate = 0.0;
            let slot = conn.slot;
            self.active.swap_remove(slot);
            if let Some(&moved) = self.active.get(slot) {
                self.conns[moved].slot = slot;
            }
        }
    }

    fn head_done(&mut self, c: ConnId, gen: u64) {
        if self.conns[c].gen != gen || !self.conns[c].active {
            return;
        }
        let index = self.conns[c].queue.pop_front().expect("an active connection sends its head");
        let len = self.piece_len(index) as u64;
        match self.conns[c].parent {
            Some(p) => self.nodes[p].uploaded += len,
            None => self.nodes[self.conns[c].child].origin_bytes += len,
        }
        self.transfers += 1;
        self.after(self.sc.latency_s, Event::Deliver(c, index));
        if self.conns[c].queue.is_empty() {
            self.stop_flow(c);
        } else {
            self.start_head(c, false);
        }
    }

    /// Every transfer's progress up to now, then max-min fair rates for all of them. A
    /// transfer whose rate stays keeps its end event.
    fn epoch(&mut self) {
        let active = std::mem::take(&mut self.active);
        if active.is_empty() {
            self.epoch_pending = false;
            return;
        }
        let flows: Vec<(LinkId, LinkId)> = active.iter().map(|c| (self.conns[*c].up, self.conns[*c].down)).collect();
        let rates = max_min(&self.caps, &flows);
        self.used.iter_mut().for_each(|u| *u = 0.0);
        for (k, &c) in active.iter().enumerate() {
            let now = self.now;
            let conn = &mut self.conns[c];
            self.used[conn.up] += rates[k];
            self.used[conn.down] += rates[k];
            if rates[k] == conn.rate {
                continue;
            }
            conn.remaining = (conn.remaining - conn.rate * (now - conn.since)).max(0.0);
            conn.since = now;
            conn.rate = rates[k];
            conn.gen += 1;
            if conn.rate > 0.0 {
                let (gen, done) = (conn.gen, now + conn.remaining / conn.rate);
                self.at(done, Event::HeadDone(c, gen));
            }
        }
        if self.now >= self.next_sample {
            self.next_sample = self.now + SAMPLE_S;
            self.sample(active.len());
        }
        self.active = active;
        self.after(self.sc.epoch_s, Event::Epoch);
    }

    /// How busy the hosts' links are now (after an epoch's sharing).
    fn sample(&mut self, flows: usize) {
        let (mut up, mut up_cap, mut down, mut down_cap) = (0.0, 0.0, 0.0, 0.0);
        for n in self.nodes.iter().filter(|n| !n.left) {
            up += self.used[n.up];
            up_cap += self.caps[n.up];
            if n.done.is_none() && n.counted && !n.host.seed {
                down += self.used[n.down];
                down_cap += self.caps[n.down];
            }
        }
        self.timeline.push(Sample {
            t: self.now,
            upload_busy: up / up_cap,
            download_busy: if down_cap > 0.0 { down / down_cap } else { 0.0 },
            flows,
        });
    }

    /// Closes a connection from either end: its transfer stops; a seed gets back what it
    /// handed this child and never sent.
    pub fn close_conn(&mut self, c: ConnId) {
        if self.conns[c].closed {
            return;
        }
        self.stop_flow(c);
        let conn = &mut self.conns[c];
        conn.closed = true;
        conn.open = false;
        let unsent: Vec<u32> = conn.queue.drain(..).collect();
        let (parent, child_id) = (conn.parent, conn.child_id);
        if let (Some(p), Some(id)) = (parent, child_id) {
            if let Some(a) = &self.nodes[p].avail {
                a.close_child(id, unsent);
            }
            self.nodes[p].children.retain(|x| *x != c);
            self.drain_avail(p);
        }
    }

    pub fn new_conn(&mut self, child: NodeId, parent: Option<NodeId>) -> ConnId {
        let n = self.layout.piece_count() as usize;
        let up = parent.map_or(self.origin_link, |p| self.nodes[p].up);
        let seed = parent.is_some_and(|p| self.nodes[p].host.seed);
        self.conns.push(Conn {
            child,
            parent,
            up,
            down: self.nodes[child].down,
            open: false,
            closed: false,
            queue: VecDeque::new(),
            remaining: 0.0,
            rate: 0.0,
            since: self.now,
            gen: 0,
            active: false,
            slot: 0,
            child_id: None,
            waiter: None,
            pending_any: 0,
            w: Worker {
                has: vec![false; n],
                inflight: VecDeque::new(),
                any_waiting: 0,
                exhausted: !seed,
                seed,
                since: vec![None; n],
                last_arrival: self.now,
                grace_at: None,
                offer: Default::default(),
            },
        });
        self.conns.len() - 1
    }

    /// The bound for hosts arriving together; with staggered arrivals, the later of it and
    /// the last arrival plus S / d_min.
    fn bound_s(&self) -> f64 {
        let together = self.together_bound();
        let Arrival::Staggered(_) = self.sc.arrival else { return together };
        let last = self.nodes.iter().filter(|n| n.counted).map(|n| n.arrive).fold(0.0, f64::max);
        let d_min = self.nodes.iter().map(|n| self.caps[n.down] * 8.0 / self.sc.goodput).fold(f64::INFINITY, f64::min);
        together.max(last + self.sc.size as f64 * 8.0 / d_min)
    }

    fn result(mut self) -> SimResult {
        let size = self.sc.size;
        let bound_s = self.bound_s();
        let stayed: Vec<&Node> = self.nodes.iter().filter(|n| n.counted && !n.left).collect();
        let finished = stayed.iter().filter(|n| n.done.is_some()).count();
        let makespan_s = match finished == stayed.len() {
            true => stayed.iter().filter_map(|n| n.done).fold(0.0, f64::max),
            false => f64::INFINITY,
        };
        let origin_bytes: u64 = self.nodes.iter().map(|n| n.origin_bytes).sum();
        let (mut parents, mut children) = (vec![0; self.nodes.len()], vec![0; self.nodes.len()]);
        for (c, p) in self.conns.iter().filter_map(|c| Some((c.child, c.parent?))) {
            parents[c] += 1;
            children[p] += 1;
        }
        let hosts = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| HostOutcome {
                parents: parents[i],
                children: children[i],
                name: n.host.id.clone(),
                seed: n.host.seed,
                slow: n.slow,
                arrive_s: n.arrive,
                done_s: n.done,
                left: n.left,
                origin_bytes: n.origin_bytes,
                uploaded_bytes: n.uploaded,
            })
            .collect();
        let st = self.svc.state();
        let decisions = ferry_scheduler::state::lock(&st).metrics.decisions[ferry_scheduler::metrics::DECISION_PARENTS]
            .load(std::sync::atomic::Ordering::Relaxed);
        SimResult {
            piece_size: self.layout.piece_size(),
            pieces: self.layout.piece_count(),
            bound_s,
            makespan_s,
            efficiency: if makespan_s.is_finite() { bound_s / makespan_s } else { 0.0 },
            origin_bytes,
            origin_copies: origin_bytes as f64 / size as f64,
            duplicate_pieces: self.duplicates,
            piece_transfers: self.transfers,
            decisions_parents: decisions,
            scheduler_errors: self.sched_errors,
            finished,
            stayed: stayed.len(),
            events: self.events,
            timeline: std::mem::take(&mut self.timeline),
            hosts,
        }
    }
}

/// Runs a scenario to the end (every host that stayed holds the file) or to
/// `max_time_s`.
pub fn run(sc: &Scenario) -> SimResult {
    let mut sim = Sim::new(sc.clone());
    sim.run();
    sim.result()
}
