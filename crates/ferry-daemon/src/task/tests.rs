//! The task driver run in-process, without a socket: a scripted scheduler (the test plays
//! it, message by message), scripted parents and a scripted origin stand behind the seams of
//! [`super::env`]; the store, the picker, verification and the driver are the real ones.
//!
//! Each test is one rule of the driver: a parent that fails mid-piece is replaced, a piece
//! that arrives before its digest waits for it (and is refused if it does not match), an
//! origin that fails mid-way is read on from the first missing piece (and a final failure
//! leaves nothing behind), a restart resumes from the pieces held, a cancel ends the task
//! and forgets it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_backend::{BackendError, SourceBody};
use ferry_proto::frame::RejectCode;
use ferry_proto::scheduler::{
    peer_command, peer_message, FailReason, Host, Parent, PeerCommand, PeerMessage, PieceDigests, TaskInfo,
};
use ferry_storage::{PieceStore, Store, TaskRecord};
use ferry_transport::{ParentEvent, TransportError};
use ferry_types::{OriginRequest, PieceDigest, PieceLayout, TaskId, Validators};
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::env::{Commands, OriginOpener, ParentConn, ParentDialer, ParentRequests, SchedulerLink, TaskEnv};
use crate::counters::Counters;
use crate::gc::{CacheGc, GcPolicy};
use crate::registry::{Registry, TaskHandle};
use crate::{DaemonError, DaemonOptions};

const PIECE: u32 = 16 * 1024;
/// Eight whole pieces and a short last one.
const LEN: usize = 8 * PIECE as usize + 5000;
const WAIT: Duration = Duration::from_secs(20);

fn content() -> Arc<Vec<u8>> {
    Arc::new((0..LEN).map(|i| (i * 31 % 251) as u8).collect())
}

fn layout() -> PieceLayout {
    PieceLayout::new(LEN as u64, PIECE).unwrap()
}

fn piece(data: &[u8], i: u32) -> &[u8] {
    let l = layout();
    let idx = l.index(i).unwrap();
    let at = l.offset(idx) as usize;
    &data[at..at + l.len(idx) as usize]
}

fn validators() -> Validators {
    Validators { length: LEN as u64, etag: Some("\"v1\"".into()), last_modified: None }
}

// ---- the scripted scheduler: each registration becomes a `Session` the test plays ----

struct Scheduler(mpsc::UnboundedSender<Session>);

impl SchedulerLink for Scheduler {
    fn open(
        &self,
        _task: TaskId,
        outbound: mpsc::UnboundedReceiver<Box<PeerMessage>>,
    ) -> BoxFuture<'static, (String, Result<Commands, tonic::Status>)> {
        let (to_peer, commands) = mpsc::unbounded_channel();
        let _ = self.0.send(Session { from_peer: outbound, to_peer, seen: vec![] });
        let commands: Commands = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(commands));
        Box::pin(async move { ("scripted".to_owned(), Ok(commands)) })
    }

    fn owner(&self, _task: TaskId) -> crate::registry::ParkedAt {
        crate::registry::ParkedAt { scheduler: "scripted".into(), generation: 0 }
    }
}

struct Session {
    from_peer: mpsc::UnboundedReceiver<Box<PeerMessage>>,
    to_peer: mpsc::UnboundedSender<Result<PeerCommand, tonic::Status>>,
    /// Everything the peer sent so far.
    seen: Vec<peer_message::Message>,
}

impl Session {
    fn send(&self, c: peer_command::Command) {
        self.to_peer.send(Ok(PeerCommand { command: Some(c) })).expect("the peer listens");
    }

    /// Reads what the peer sends until `want` matches, and returns that message.
    async fn expect(&mut self, what: &str, want: impl Fn(&peer_message::Message) -> bool) -> peer_message::Message {
        let wait = async {
            loop {
                let m = self.from_peer.recv().await.and_then(|m| m.message);
                let Some(m) = m else { panic!("the session ended before {what}; saw {:?}", self.seen) };
                self.seen.push(m.clone());
                if want(&m) {
                    return m;
                }
            }
        };
        tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }

    async fn register(&mut self) -> ferry_proto::scheduler::Register {
        match self.expect("Register", |m| matches!(m, peer_message::Message::Register(_))).await {
            peer_message::Message::Register(r) => r,
            _ => unreachable!(),
        }
    }

    fn task_info(&self) {
        let l = layout();
        self.send(peer_command::Command::TaskInfo(TaskInfo {
            content_length: l.content_length(),
            piece_size: l.piece_size(),
            etag: "\"v1\"".into(),
            ..Default::default()
        }));
    }

    /// The digests of every piece of `data`.
    fn digests(&self, data: &[u8]) {
        let index: Vec<u32> = (0..layout().piece_count()).collect();
        let digest = index.iter().map(|i| PieceDigest::of(piece(data, *i)).0.to_vec()).collect();
        self.send(peer_command::Command::Digests(PieceDigests { index, digest }));
    }

    /// What a scheduler that knows the task tells a new peer: layout, digests, one parent.
    fn everything_and_parent(&self, data: &[u8], addr: SocketAddr) {
        self.task_info();
        self.digests(data);
        self.parent(addr, false);
    }

    fn parent(&self, addr: SocketAddr, seed: bool) {
        let p = Parent {
            host_id: format!("parent-{}", addr.port()),
            ip: addr.ip().to_string(),
            piece_port: addr.port() as u32,
            seed,
        };
        self.send(peer_command::Command::Parents(ferry_proto::scheduler::Parents { parents: vec![p] }));
    }

    async fn parent_failed(&mut self, addr: SocketAddr) -> FailReason {
        let host = format!("parent-{}", addr.port());
        let m = self
            .expect("ParentFailed", |m| matches!(m, peer_message::Message::ParentFailed(f) if f.parent == host))
            .await;
        match m {
            peer_message::Message::ParentFailed(f) => FailReason::try_from(f.reason).unwrap(),
            _ => unreachable!(),
        }
    }

    async fn finished(&mut self) {
        self.expect("Finished", |m| matches!(m, peer_message::Message::Finished(_))).await;
    }

    /// Digests the peer reported for pieces it read from the origin.
    fn origin_digests(&self) -> HashMap<u32, Vec<u8>> {
        let pieces = self.seen.iter().filter_map(|m| match m {
            peer_message::Message::Pieces(p) => Some(p.pieces.iter()),
            _ => None,
        });
        pieces.flatten().filter(|p| p.parent.is_empty()).map(|p| (p.index, p.digest.clone())).collect()
    }
}

// ---- scripted parents: each answers requests from the content, as its script says ----

#[derive(Clone, Default)]
struct Script {
    /// Hands out pieces for `RequestAny` (a dispensing seed).
    seed: bool,
    /// After sending this many pieces, the next request breaks the connection.
    fail_after: Option<usize>,
    /// After sending this many pieces, requests go unanswered.
    stall_after: Option<usize>,
    /// Pieces sent with flipped bytes.
    corrupt: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Index(u32),
    Any,
}

struct ScriptedParents {
    data: Arc<Vec<u8>>,
    scripts: Mutex<HashMap<SocketAddr, Script>>,
    /// Every request, by parent.
    asked: Mutex<Vec<(SocketAddr, Ask)>>,
    /// Pieces sent, by all parents.
    sent: AtomicUsize,
    /// Parents whose child closed the connection (dropped its request side).
    hung_up: Mutex<Vec<SocketAddr>>,
}

impl ScriptedParents {
    fn add(&self, port: u16, script: Script) -> SocketAddr {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.scripts.lock().unwrap().insert(addr, script);
        addr
    }

    fn asked_of(&self, addr: SocketAddr) -> Vec<Ask> {
        self.asked.lock().unwrap().iter().filter(|(a, _)| *a == addr).map(|(_, k)| *k).collect()
    }
}

struct Requests(mpsc::UnboundedSender<Ask>);

impl ParentRequests for Requests {
    fn request(&mut self, index: u32) -> BoxFuture<'_, Result<(), TransportError>> {
        let r = self.0.send(Ask::Index(index)).map_err(|_| TransportError::Io(std::io::ErrorKind::BrokenPipe.into()));
        Box::pin(async move { r })
    }

    fn request_any(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        let r = self.0.send(Ask::Any).map_err(|_| TransportError::Io(std::io::ErrorKind::BrokenPipe.into()));
        Box::pin(async move { r })
    }
}

impl ParentDialer for Arc<ScriptedParents> {
    fn connect(
        &self,
        addr: SocketAddr,
        _task: TaskId,
        _max_piece: u32,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<ParentConn, TransportError>> {
        let Some(script) = self.scripts.lock().unwrap().get(&addr).cloned() else {
            let e = TransportError::ConnectParent {
                addr: addr.to_string(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            };
            return Box::pin(async move { Err(e) });
        };
        let (asks, mut asked) = mpsc::unbounded_channel();
        let (tx, events) = mpsc::channel(64);
        let parents = self.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut dispensed = 0..layout().piece_count();
            while let Some(ask) = asked.recv().await {
                parents.asked.lock().unwrap().push((addr, ask));
                if script.fail_after == Some(sent) {
                    let _ = tx.send(Err(TransportError::Io(std::io::ErrorKind::ConnectionReset.into()))).await;
                    return;
                }
                if script.stall_after == Some(sent) {
                    continue;
                }
                let index = match ask {
                    Ask::Index(i) => i,
                    Ask::Any => match dispensed.next().filter(|_| script.seed) {
                        Some(i) => i,
                        None => {
                            let _ = tx.send(Ok(ParentEvent::Reject { index: 0, code: RejectCode::Exhausted })).await;
                            continue;
                        }
                    },
                };
                let mut bytes = piece(&parents.data, index).to_vec();
                if script.corrupt.contains(&index) {
                    bytes[0] ^= 0xff;
                }
                sent += 1;
                parents.sent.fetch_add(1, Ordering::SeqCst);
                if tx.send(Ok(ParentEvent::Piece { index, bytes, claimed: None })).await.is_err() {
                    return;
                }
            }
            parents.hung_up.lock().unwrap().push(addr);
        });
        let has = vec![true; layout().piece_count() as usize];
        Box::pin(async move { Ok(ParentConn { has, events, requests: Box::new(Requests(asks)), guard: Box::new(()) }) })
    }
}

// ---- the scripted origin: serves the content, or breaks where its plan says ----

#[derive(Clone, Copy, Debug)]
enum Open {
    Whole,
    /// The body breaks (a reset) at this absolute offset.
    BreakAt(u64),
    /// The origin answers with this status.
    Status(u16),
}

struct Origin {
    data: Arc<Vec<u8>>,
    /// What each open does, in order; `Whole` once the plan runs out.
    plan: Mutex<VecDeque<Open>>,
    /// The offset of each open.
    opens: Mutex<Vec<u64>>,
}

impl OriginOpener for Arc<Origin> {
    fn open(&self, request: &OriginRequest, offset: u64) -> BoxFuture<'static, Result<SourceBody, BackendError>> {
        self.opens.lock().unwrap().push(offset);
        let url = request.redacted_url();
        let end = match self.plan.lock().unwrap().pop_front().unwrap_or(Open::Whole) {
            Open::Status(status) => return Box::pin(async move { Err(BackendError::Status { status, url }) }),
            Open::Whole => LEN as u64,
            Open::BreakAt(at) => at,
        };
        let bytes = Bytes::copy_from_slice(&self.data[offset as usize..end as usize]);
        let mut chunks: Vec<Result<Bytes, BackendError>> =
            (0..bytes.len()).step_by(4096).map(|i| Ok(bytes.slice(i..(i + 4096).min(bytes.len())))).collect();
        if end < LEN as u64 {
            chunks.push(Err(BackendError::Read { url, reason: "connection reset".into() }));
        }
        Box::pin(async move { Ok(SourceBody::new(validators(), Box::pin(futures::stream::iter(chunks)))) })
    }
}

// ---- the harness ----

struct Harness {
    env: Arc<TaskEnv>,
    sessions: mpsc::UnboundedReceiver<Session>,
    parents: Arc<ScriptedParents>,
    origin: Arc<Origin>,
    data: Arc<Vec<u8>>,
    id: TaskId,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(tune: impl FnOnce(&mut DaemonOptions)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = content();
        let mut opts = DaemonOptions::new(dir.path().to_owned(), vec!["scripted".into()]);
        opts.piece_timeout = Duration::from_secs(5);
        // The scripted scheduler decides when a peer reads the origin; the peer never asks.
        opts.back_to_source_after = Duration::from_secs(3600);
        tune(&mut opts);
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let registry = Arc::new(Registry::default());
        let gc = Arc::new(CacheGc::new(store.clone(), registry.clone(), GcPolicy::default()));
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let parents = Arc::new(ScriptedParents {
            data: data.clone(),
            scripts: Default::default(),
            asked: Default::default(),
            sent: Default::default(),
            hung_up: Default::default(),
        });
        let origin = Arc::new(Origin { data: data.clone(), plan: Default::default(), opens: Default::default() });
        let env = Arc::new(TaskEnv {
            opts,
            store,
            counters: Counters::default(),
            registry,
            gc,
            host_info: Arc::new(|| Host { id: "under-test".into(), ..Default::default() }),
            cancel: Default::default(),
            scheduler: Arc::new(Scheduler(sessions_tx)),
            parents: Arc::new(parents.clone()),
            origin: Arc::new(origin.clone()),
        });
        Self { env, sessions, parents, origin, data, id: TaskId::from_slice(&[7; 32]).unwrap(), _dir: dir }
    }

    /// Starts the task's driver, as a local request would.
    fn start(&self, from_origin: bool) -> Arc<TaskHandle> {
        let url = url::Url::parse("http://origin.test/model.bin").unwrap();
        let request = OriginRequest::new(url, vec![], None, vec![]).unwrap();
        let (handle, new) = self.env.registry.get_or_insert(self.id, request);
        assert!(new);
        tokio::spawn(super::drive(self.env.clone(), handle.clone(), from_origin, PIECE));
        handle
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv()).await.expect("the task registers").expect("open")
    }

    /// Holds pieces `0..n` on disk, as a daemon that stopped mid-download left them.
    fn hold(&self, n: u32) {
        let l = layout();
        let record = TaskRecord {
            url: "http://origin.test/model.bin".into(),
            content_length: l.content_length(),
            piece_size: l.piece_size(),
            etag: Some("\"v1\"".into()),
            ..Default::default()
        };
        let (file, _) = self.env.store.open_task(self.id, &record).unwrap();
        for i in 0..n {
            let idx = l.index(i).unwrap();
            file.write_piece(idx, piece(&self.data, i)).unwrap();
            self.env.store.record_piece(self.id, idx, PieceDigest::of(piece(&self.data, i))).unwrap();
        }
    }

    fn assert_content_is_right(&self, handle: &TaskHandle) {
        let file = &handle.content.get().expect("content open").file;
        let on_disk: Vec<u8> = layout().indices().flat_map(|i| file.read_piece(i).unwrap()).collect();
        assert!(on_disk == *self.data, "the stored content differs from the origin's");
        let held = self.env.store.held(self.id, &layout()).unwrap();
        assert_eq!(held.len() as u32, layout().piece_count(), "every piece recorded");
    }

    /// The task left no trace: not in the registry, not in the store.
    fn assert_forgotten(&self) {
        assert!(self.env.registry.all().iter().all(|h| h.id != self.id), "the registry forgot the task");
        assert_eq!(self.env.store.task_record(self.id).unwrap(), None, "the store forgot the task");
    }
}

async fn outcome(handle: &TaskHandle) -> Result<(), Arc<DaemonError>> {
    let mut rx = handle.progress.subscribe();
    let p = tokio::time::timeout(WAIT, rx.wait_for(|p| p.outcome.is_some())).await.expect("an outcome").unwrap();
    p.outcome.clone().unwrap()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- the five rules ----

#[tokio::test]
async fn a_parent_that_fails_mid_piece_is_reported_and_another_finishes_the_task() {
    let mut h = Harness::new(|_| {});
    let a = h.parents.add(1001, Script { fail_after: Some(3), ..Default::default() });
    let b = h.parents.add(1002, Script::default());
    let handle = h.start(false);
    let mut s = h.session().await;
    let reg = s.register().await;
    assert!(reg.held.is_empty() && !reg.from_origin);
    s.everything_and_parent(&h.data, a);
    assert_eq!(s.parent_failed(a).await, FailReason::Unreachable);
    s.parent(b, false);
    s.finished().await;
    outcome(&handle).await.expect("the task completes");
    h.assert_content_is_right(&handle);
    // A's three pieces count once; what it was asked and never sent came from B.
    assert_eq!(handle.counters.from_peers.load(Ordering::Relaxed), LEN as u64);
    let from_b = h.parents.asked_of(b).len();
    assert_eq!(from_b, layout().piece_count() as usize - 3, "B sends exactly what A did not");
}

#[tokio::test]
async fn a_piece_that_arrives_before_its_digest_waits_for_it_and_a_wrong_one_drops_its_parent() {
    let mut h = Harness::new(|_| {});
    let seed = h.parents.add(1001, Script { seed: true, corrupt: vec![2], ..Default::default() });
    let other = h.parents.add(1002, Script::default());
    let handle = h.start(false);
    let mut s = h.session().await;
    s.register().await;
    s.task_info();
    s.parent(seed, true);
    // The seed hands pieces out before the scheduler has relayed a single digest: none may
    // be stored unverified.
    until("the seed sent pieces", || h.parents.sent.load(Ordering::SeqCst) >= 3).await;
    assert_eq!(handle.progress.borrow().completed_bytes, 0, "nothing stored before its digest");
    assert!(h.parents.asked_of(seed).iter().all(|a| *a == Ask::Any), "only dispensed pieces, none by index");
    s.digests(&h.data);
    assert_eq!(s.parent_failed(seed).await, FailReason::BadPiece, "the corrupt piece is caught");
    s.parent(other, false);
    s.finished().await;
    outcome(&handle).await.expect("the task completes");
    h.assert_content_is_right(&handle);
    assert_eq!(h.env.counters.pieces_rejected.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_origin_that_fails_mid_way_is_read_on_from_the_first_missing_piece() {
    let mut h = Harness::new(|_| {});
    h.origin.plan.lock().unwrap().push_back(Open::BreakAt(3 * PIECE as u64 + 5000));
    let handle = h.start(true);
    let mut s = h.session().await;
    assert!(s.register().await.from_origin);
    s.finished().await;
    // It parks only after every piece's digest has gone out: children verify against them.
    s.expect("Park", |m| matches!(m, peer_message::Message::Park(_))).await;
    outcome(&handle).await.expect("the task completes");
    h.assert_content_is_right(&handle);
    assert_eq!(*h.origin.opens.lock().unwrap(), vec![0, 3 * PIECE as u64], "reopened at the broken piece");
    assert_eq!(handle.counters.from_origin.load(Ordering::Relaxed), LEN as u64, "no piece stored twice");
    // Every piece's digest went to the scheduler (children verify against them).
    let reported = s.origin_digests();
    for i in 0..layout().piece_count() {
        assert_eq!(reported.get(&i), Some(&PieceDigest::of(piece(&h.data, i)).0.to_vec()), "piece {i}");
    }
}

#[tokio::test]
async fn an_origin_that_fails_for_good_fails_the_task_reports_it_and_leaves_nothing() {
    let mut h = Harness::new(|_| {});
    h.origin.plan.lock().unwrap().extend([Open::BreakAt(2 * PIECE as u64), Open::Status(404)]);
    let handle = h.start(true);
    let mut s = h.session().await;
    s.register().await;
    let err = outcome(&handle).await.expect_err("a 404 is final");
    assert!(matches!(*err, DaemonError::Origin(BackendError::Status { status: 404, .. })), "{err}");
    let failed = s.expect("Failed", |m| matches!(m, peer_message::Message::Failed(_))).await;
    let peer_message::Message::Failed(f) = failed else { unreachable!() };
    assert_eq!(f.failure.unwrap().http_status, 404);
    h.assert_forgotten();
}

#[tokio::test]
async fn a_restarted_task_registers_with_what_it_holds_and_fetches_only_the_rest() {
    let mut h = Harness::new(|_| {});
    h.hold(4);
    let a = h.parents.add(1001, Script::default());
    let handle = h.start(false);
    let mut s = h.session().await;
    let reg = s.register().await;
    assert_eq!(reg.held, vec![0, 1, 2, 3]);
    let want: Vec<Vec<u8>> = (0..4).map(|i| PieceDigest::of(piece(&h.data, i)).0.to_vec()).collect();
    assert_eq!(reg.held_digests, want, "held pieces come with their digests");
    assert_eq!(reg.info.map(|i| i.content_length), Some(LEN as u64), "and the layout");
    s.digests(&h.data);
    s.parent(a, false);
    s.finished().await;
    outcome(&handle).await.expect("the task completes");
    h.assert_content_is_right(&handle);
    let asked = h.parents.asked_of(a);
    assert!(asked.iter().all(|k| matches!(k, Ask::Index(i) if *i >= 4)), "asked only for missing pieces: {asked:?}");
    assert_eq!(handle.counters.from_cache.load(Ordering::Relaxed), 4 * PIECE as u64);
    assert_eq!(handle.counters.from_peers.load(Ordering::Relaxed), LEN as u64 - 4 * PIECE as u64);
}

#[tokio::test]
async fn a_task_cancelled_by_the_user_ends_reports_it_and_is_forgotten() {
    let mut h = Harness::new(|o| o.piece_timeout = Duration::from_secs(60));
    let a = h.parents.add(1001, Script { stall_after: Some(2), ..Default::default() });
    let handle = h.start(false);
    let mut s = h.session().await;
    s.register().await;
    s.everything_and_parent(&h.data, a);
    until("two pieces are stored", || h.env.store.held(h.id, &layout()).unwrap().len() == 2).await;
    handle.cancel.cancel();
    let err = outcome(&handle).await.expect_err("cancelled");
    assert!(matches!(*err, DaemonError::Cancelled), "{err}");
    s.expect("Failed", |m| matches!(m, peer_message::Message::Failed(_))).await;
    h.assert_forgotten();
}

#[tokio::test]
async fn a_finished_task_parks_and_a_new_driver_registers_it_again_with_everything_held() {
    let mut h = Harness::new(|_| {});
    let a = h.parents.add(1001, Script::default());
    let handle = h.start(false);
    let mut s = h.session().await;
    s.register().await;
    s.everything_and_parent(&h.data, a);
    s.finished().await;
    s.expect("Park", |m| matches!(m, peer_message::Message::Park(_))).await;
    let closed = tokio::time::timeout(WAIT, s.from_peer.recv()).await.expect("the stream closes");
    assert!(closed.is_none(), "nothing after Park: {closed:?}");
    outcome(&handle).await.expect("complete");
    assert_eq!(handle.parked_at().map(|p| p.scheduler), Some("scripted".to_owned()));
    // The scheduler restarted: the daemon drives the task again, from what it holds.
    handle.set_parked(None);
    tokio::spawn(super::drive(h.env.clone(), handle.clone(), false, 0));
    let mut s = h.session().await;
    let reg = s.register().await;
    assert_eq!(reg.held, (0..layout().piece_count()).collect::<Vec<_>>(), "registers holding every piece");
    assert_eq!(reg.held_digests.len(), reg.held.len());
    s.finished().await;
    s.expect("Park", |m| matches!(m, peer_message::Message::Park(_))).await;
    assert!(handle.parked_at().is_some());
    assert_eq!(h.parents.asked_of(a).len(), layout().piece_count() as usize, "nothing fetched again");
}

#[tokio::test]
async fn a_parent_the_scheduler_drops_is_left_without_blame_and_its_pieces_go_to_another() {
    let mut h = Harness::new(|_| {});
    let a = h.parents.add(1001, Script { stall_after: Some(3), ..Default::default() });
    let b = h.parents.add(1002, Script::default());
    let handle = h.start(false);
    let mut s = h.session().await;
    s.register().await;
    s.everything_and_parent(&h.data, a);
    until("A sent its three pieces", || h.parents.sent.load(Ordering::SeqCst) >= 3).await;
    let drop = ferry_proto::scheduler::DropParents { host_id: vec![format!("parent-{}", a.port())] };
    s.send(peer_command::Command::DropParents(drop));
    until("A's worker hung up", || h.parents.hung_up.lock().unwrap().contains(&a)).await;
    s.parent(b, false);
    s.finished().await;
    outcome(&handle).await.expect("the task completes");
    h.assert_content_is_right(&handle);
    let blamed = s.seen.iter().any(|m| matches!(m, peer_message::Message::ParentFailed(_)));
    assert!(!blamed, "a dropped parent is not reported as failed: {:?}", s.seen);
    assert_eq!(handle.counters.from_peers.load(Ordering::Relaxed), LEN as u64, "no piece stored twice");
    assert_eq!(h.parents.asked_of(b).len(), layout().piece_count() as usize - 3, "B sends what A did not");
}
