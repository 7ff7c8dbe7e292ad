//! What a task needs from the daemon around it, and the three seams through which it meets
//! the outside: its scheduler ([`SchedulerLink`]), its parents ([`ParentDialer`]) and its
//! origin ([`OriginOpener`]).
//!
//! The driver and its workers see only a [`TaskEnv`], never the whole daemon: that keeps
//! the dependencies one-way (the daemon's wiring builds a `TaskEnv`; nothing here knows the
//! local API or the piece server), and lets the unit tests in `task/tests.rs` run a task
//! in-process against a scripted scheduler, scripted parents and a scripted origin, with
//! the real store, picker and verification in between.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_backend::{BackendError, Backends, SourceBody};
use ferry_proto::scheduler::{Host, PeerCommand, PeerMessage};
use ferry_storage::Store;
use ferry_transport::{ParentEvent, TransportError};
use ferry_types::{OriginRequest, TaskId};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;
use crate::gc::CacheGc;
use crate::registry::{ParkedAt, Registry};
use crate::DaemonOptions;

/// What every task on this daemon shares.
pub struct TaskEnv {
    pub opts: DaemonOptions,
    pub store: Arc<Store>,
    pub counters: Counters,
    pub registry: Arc<Registry>,
    pub gc: Arc<CacheGc>,
    /// What this host tells a scheduler about itself when it registers a task.
    pub host_info: Arc<dyn Fn() -> Host + Send + Sync>,
    /// The daemon stops.
    pub cancel: CancellationToken,
    pub scheduler: Arc<dyn SchedulerLink>,
    pub parents: Arc<dyn ParentDialer>,
    pub origin: Arc<dyn OriginOpener>,
}

/// What a scheduler says to a registered peer, until the session ends.
pub type Commands = BoxStream<'static, Result<PeerCommand, tonic::Status>>;

/// A task's session with the scheduler that owns it. Outbound messages are boxed: the
/// channel allocates 32 slots at once and lives as long as the task is held, and an unboxed
/// `PeerMessage` is 328 bytes.
pub trait SchedulerLink: Send + Sync {
    /// Opens a session for `task` carrying `outbound` (its first message is the
    /// registration). Returns the scheduler's address, for logs, and its commands.
    fn open(
        &self,
        task: TaskId,
        outbound: mpsc::UnboundedReceiver<Box<PeerMessage>>,
    ) -> BoxFuture<'static, (String, Result<Commands, tonic::Status>)>;

    /// The scheduler that owns `task` now, and this daemon's session generation there: a
    /// finished task parks only with its owner, and registers again when this changes.
    fn owner(&self, task: TaskId) -> ParkedAt;
}

/// What a parent sends, read off its connection by a task of its own (a frame read must
/// never be cancelled half-way); the channel closes after the first error.
pub type ParentEvents = mpsc::Receiver<Result<ParentEvent, TransportError>>;

/// The requests a child sends one parent.
pub trait ParentRequests: Send {
    fn request(&mut self, index: u32) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Asks a dispensing parent for a piece of its choosing.
    fn request_any(&mut self) -> BoxFuture<'_, Result<(), TransportError>>;
}

/// A connection to one parent for one task.
pub struct ParentConn {
    /// The parent's bitfield when the connection opened.
    pub has: Vec<bool>,
    pub events: ParentEvents,
    pub requests: Box<dyn ParentRequests>,
    /// Whatever must live as long as the connection (the reading task, aborted on drop).
    pub guard: Box<dyn Send>,
}

pub trait ParentDialer: Send + Sync {
    /// Connects to the parent at `addr` and says which task; pieces over `max_piece` bytes
    /// are refused.
    fn connect(
        &self,
        addr: SocketAddr,
        task: TaskId,
        max_piece: u32,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ParentConn, TransportError>>;
}

/// Back-to-source: opens the task's object at an offset.
pub trait OriginOpener: Send + Sync {
    fn open(&self, request: &OriginRequest, offset: u64) -> BoxFuture<'static, Result<SourceBody, BackendError>>;
}

/// Parents over the piece protocol on TCP (`ferry_transport`).
/// Parents over TCP; with membership (`tls`), mutual TLS with this host's certificate.
pub struct TcpParents {
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ParentDialer for TcpParents {
    fn connect(
        &self,
        addr: SocketAddr,
        task: TaskId,
        max_piece: u32,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ParentConn, TransportError>> {
        // The download's trace goes on to the parent's side of the connection.
        let trace = ferry_telemetry::trace::current_wire();
        let tls = self.tls.clone();
        Box::pin(async move {
            let (has, mut reader, writer) =
                ferry_transport::connect(addr, task, max_piece, timeout, trace, tls).await?;
            let (tx, events) = mpsc::channel(8);
            let read = tokio::spawn(async move {
                loop {
                    let ev = reader.next().await;
                    let stop = !matches!(ev, Ok(Some(_)));
                    let msg = match ev {
                        Ok(Some(e)) => Ok(e),
                        Ok(None) => Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                        Err(e) => Err(e),
                    };
                    if tx.send(msg).await.is_err() || stop {
                        return;
                    }
                }
            });
            Ok(ParentConn { has, events, requests: Box::new(writer), guard: Box::new(AbortOnDrop(read)) })
        })
    }
}

impl ParentRequests for ferry_transport::ParentWriter {
    fn request(&mut self, index: u32) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(ferry_transport::ParentWriter::request(self, index))
    }

    fn request_any(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(ferry_transport::ParentWriter::request_any(self))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Origins reached through the backend their URL scheme names.
pub struct Origins(pub Backends);

impl OriginOpener for Origins {
    fn open(&self, request: &OriginRequest, offset: u64) -> BoxFuture<'static, Result<SourceBody, BackendError>> {
        let (backends, request) = (self.0.clone(), request.clone());
        Box::pin(async move { backends.open(&request, offset).await })
    }
}
