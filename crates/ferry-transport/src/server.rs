//! The piece server: answers other peers' requests for pieces this daemon holds.
//!
//! Per connection, a reader task turns `Request` frames into a bounded queue and a writer
//! task answers them in order, interleaving `Have` notices for pieces finished meanwhile.
//! The bounded queue is the pipeline depth a child gets; beyond it TCP back-pressure holds
//! the child's requests in its socket. A `RequestAny` to a dispensing parent waits in the
//! task's [`Availability`] until a piece is handed to it; the writer sends it when it comes.
//!
//! Bounds, so that no peer can make the server hold memory or sockets it did not earn: a cap
//! on connections in total and per remote address (checked at accept), a deadline for the
//! `Hello`, a deadline for the rest of any frame once it started, and per-kind frame limits
//! checked from the 6-byte head (a `Hello` is 32 bytes; only `Request`s follow it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::{self, Frame, Kind, PieceHead, RejectCode};
use ferry_storage::TaskFile;
use ferry_types::TaskId;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::avail::{AnyOutcome, EXHAUSTED};
use crate::io::{read_frame_of, write_frame, Incoming, PieceSink};
use crate::{Availability, TransportError};

/// Finds the content and availability of a task this daemon can serve.
pub trait TaskLookup: Send + Sync + 'static {
    fn lookup(&self, task: &TaskId) -> Option<(Arc<TaskFile>, Arc<Availability>)>;
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Test hook: flip a byte in every piece sent, to exercise children's verification.
    #[cfg(feature = "fault-injection")]
    pub corrupt_uploads: bool,
    /// Connections served at once; a new one beyond this is closed at once.
    pub max_connections: usize,
    /// Connections from one remote address that have not yet named a task this daemon
    /// serves (a `Hello`). Once one has, it counts only towards `max_connections`: two hosts
    /// may well share a connection per task for dozens of tasks at once.
    pub max_per_address: usize,
    /// A connection that has not said `Hello` within this long is closed.
    pub hello_timeout: Duration,
    /// The daemon's upload rate, shared by every connection; `None`: unlimited.
    pub upload_limit: Option<Arc<crate::RateLimit>>,
    /// Cluster membership: every connection is TLS and must present a member certificate
    /// (`Credentials::server_config(ClientAuth::Required)`); `None`: plain TCP, anyone.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerOptions {
    /// The test hook, constantly false in a build without `fault-injection`.
    fn corrupts_uploads(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.corrupt_uploads;
        #[cfg(not(feature = "fault-injection"))]
        false
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            #[cfg(feature = "fault-injection")]
            corrupt_uploads: false,
            max_connections: 1024,
            max_per_address: 64,
            hello_timeout: Duration::from_secs(10),
            upload_limit: None,
            tls: None,
        }
    }
}

/// Counts connections per remote address until they said `Hello` for a task served here; an
/// [`Admission`] gives its slot back when dropped.
#[derive(Default)]
struct Limits {
    per_addr: Mutex<HashMap<IpAddr, usize>>,
}

struct Admission {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    fn admit(self: &Arc<Self>, ip: IpAddr, opts: &ServerOptions, active: u64) -> Option<Admission> {
        let mut m = self.per_addr.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= opts.max_per_address || active as usize >= opts.max_connections {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(Admission { limits: self.clone(), ip })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut m = self.limits.per_addr.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct ServerStats {
    pub bytes_uploaded: AtomicU64,
    pub connections_active: AtomicU64,
    /// Connections closed at accept because a limit was reached, or (with membership)
    /// because the peer showed no valid cluster certificate.
    pub connections_refused: AtomicU64,
}

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    lookup: Arc<dyn TaskLookup>,
    opts: ServerOptions,
    stats: Arc<ServerStats>,
    cancel: CancellationToken,
) {
    let limits = Arc::new(Limits::default());
    loop {
        let (sock, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept piece connection");
                    continue;
                }
            },
        };
        let Some(admission) = limits.admit(peer.ip(), &opts, stats.connections_active.load(Ordering::Relaxed)) else {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "piece connection refused: connection limit reached");
            continue;
        };
        let (lookup, opts, stats, cancel) = (lookup.clone(), opts.clone(), stats.clone(), cancel.clone());
        let span = tracing::debug_span!("piece_conn", %peer);
        tokio::spawn(
            async move {
                stats.connections_active.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = handle(sock, lookup, &opts, &stats, admission) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "piece connection ended");
                        }
                    }
                }
                stats.connections_active.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr).await.map_err(|source| TransportError::Listen { addr: addr.to_string(), source })
}

async fn handle(
    sock: TcpStream,
    lookup: Arc<dyn TaskLookup>,
    opts: &ServerOptions,
    stats: &ServerStats,
    admission: Admission,
) -> Result<(), TransportError> {
    sock.set_nodelay(true)?;
    let Some(tls) = &opts.tls else {
        let (rd, wr) = sock.into_split();
        return handle_split(rd, wr, lookup, opts, stats, admission).await;
    };
    let peer = sock.peer_addr()?;
    let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(sock);
    let stream = match tokio::time::timeout(ferry_membership::HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "refused a piece connection: no valid cluster certificate");
            return Ok(());
        }
        Err(_) => {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "refused a piece connection: TLS handshake not done in time");
            return Ok(());
        }
    };
    let (rd, wr) = tokio::io::split(stream);
    handle_split(rd, wr, lookup, opts, stats, admission).await
}

/// A connection's two halves, plain or TLS, from its `Hello` on.
async fn handle_split<R: AsyncRead + Unpin + Send, W: PieceSink>(
    mut rd: R,
    wr: W,
    lookup: Arc<dyn TaskLookup>,
    opts: &ServerOptions,
    stats: &ServerStats,
    admission: Admission,
) -> Result<(), TransportError> {
    let hello = read_frame_of(&mut rd, |k| k == Kind::Hello);
    let (task_id, trace) = match tokio::time::timeout(opts.hello_timeout, hello).await {
        Err(_) => return Err(TransportError::NoHello(opts.hello_timeout)),
        Ok(r) => match r? {
            Some(Incoming::Control(Frame::Hello { task_id, trace })) => (TaskId(task_id), trace),
            other => return Err(unexpected("Hello", other)),
        },
    };
    // Serving this child is part of its download's trace, when it sent one.
    let span = tracing::info_span!("serve_task", task = ?task_id);
    if let Some(t) = &trace {
        ferry_telemetry::trace::follow_wire(&span, t);
    }
    serve_task(rd, wr, task_id, lookup, opts, stats, admission).instrument(span).await
}

/// Serves one task on a connection whose `Hello` named it.
async fn serve_task<R: AsyncRead + Unpin + Send, W: PieceSink>(
    mut rd: R,
    mut wr: W,
    task_id: TaskId,
    lookup: Arc<dyn TaskLookup>,
    opts: &ServerOptions,
    stats: &ServerStats,
    admission: Admission,
) -> Result<(), TransportError> {
    let Some((file, avail)) = lookup.lookup(&task_id) else {
        write_frame(&mut wr, &Frame::Reject { index: u32::MAX, code: RejectCode::UnknownTask }).await?;
        return Ok(());
    };
    // Introduced for a task served here: no longer a stranger holding a slot of its address.
    drop(admission);
    let (bits, piece_count, haves) = avail.subscribe();
    write_frame(&mut wr, &Frame::Bitfield { piece_count, bits }).await?;

    let (req_tx, req_rx) = mpsc::channel::<Ask>(64);
    let reader = async move {
        loop {
            let ask = match read_frame_of(&mut rd, |k| matches!(k, Kind::Request | Kind::RequestAny)).await? {
                None => return Ok(()),
                Some(Incoming::Control(Frame::Request { index })) => Ask::Piece(index),
                Some(Incoming::Control(Frame::RequestAny)) => Ask::Any,
                other => return Err(unexpected("Request", other)),
            };
            if req_tx.send(ask).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = write_loop(wr, req_rx, haves, file, avail, opts, stats);
    // The writer ends when the reader's queue closes; the reader's error, if any, wins.
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

enum Ask {
    Piece(u32),
    Any,
}

fn unexpected(expected: &'static str, got: Option<Incoming>) -> TransportError {
    let got = match got {
        None => "end of stream".to_owned(),
        Some(Incoming::Control(f)) => format!("{f:?}"),
        Some(Incoming::Piece(h)) => format!("{h:?}"),
    };
    TransportError::Unexpected { expected, got }
}

async fn write_loop<W: PieceSink>(
    wr: W,
    mut requests: mpsc::Receiver<Ask>,
    mut haves: broadcast::Receiver<u32>,
    file: Arc<TaskFile>,
    avail: Arc<Availability>,
    opts: &ServerOptions,
    stats: &ServerStats,
) -> Result<(), TransportError> {
    let (given_tx, mut given_rx) = mpsc::unbounded_channel();
    let child = avail.open_child();
    let mut w = Writer { wr, file: &file, avail: &avail, opts, stats };
    let exhausted = Frame::Reject { index: EXHAUSTED, code: RejectCode::Exhausted };
    let mut haves_open = true;
    let r = loop {
        let step = tokio::select! {
            biased;
            have = haves.recv(), if haves_open => match have {
                Ok(index) => {
                    // Every notice pending goes out in one write: one segment, not one each.
                    let mut buf = BytesMut::new();
                    frame::encode(&Frame::Have { index }, &mut buf);
                    loop {
                        match haves.try_recv() {
                            Ok(index) => frame::encode(&Frame::Have { index }, &mut buf),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                encode_all_shown(&avail, &mut buf);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    w.wr.write_all(&buf).await.map_err(TransportError::from)
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed notices: resend the whole picture as Haves.
                    let mut buf = BytesMut::new();
                    encode_all_shown(&avail, &mut buf);
                    w.wr.write_all(&buf).await.map_err(TransportError::from)
                }
                Err(broadcast::error::RecvError::Closed) => {
                    haves_open = false;
                    Ok(())
                }
            },
            Some(index) = given_rx.recv() => match index {
                EXHAUSTED => write_frame(&mut w.wr, &exhausted).await.map_err(TransportError::from),
                index => w.send_piece(index).await,
            },
            req = requests.recv() => match req {
                None => break Ok(()),
                Some(Ask::Piece(index)) if avail.claim_by_index(child, index) => w.send_piece(index).await,
                Some(Ask::Piece(index)) => {
                    let busy = Frame::Reject { index, code: RejectCode::Busy };
                    write_frame(&mut w.wr, &busy).await.map_err(TransportError::from)
                }
                Some(Ask::Any) => match avail.request_any(child, &given_tx) {
                    AnyOutcome::Given(index) => w.send_piece(index).await,
                    AnyOutcome::Queued => Ok(()),
                    AnyOutcome::Exhausted => write_frame(&mut w.wr, &exhausted).await.map_err(TransportError::from),
                },
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    // Pieces handed to this child but never sent go to the next child that asks.
    given_rx.close();
    let mut unsent = vec![];
    while let Ok(i) = given_rx.try_recv() {
        unsent.push(i);
    }
    avail.close_child(child, unsent);
    r
}

fn encode_all_shown(avail: &Availability, buf: &mut BytesMut) {
    for index in (0..avail.piece_count()).filter(|i| avail.shown(*i)) {
        frame::encode(&Frame::Have { index }, buf);
    }
}

/// One connection's sending side.
struct Writer<'a, W> {
    wr: W,
    file: &'a TaskFile,
    avail: &'a Availability,
    opts: &'a ServerOptions,
    stats: &'a ServerStats,
}

impl<W: PieceSink> Writer<'_, W> {
    async fn send_piece(&mut self, index: u32) -> Result<(), TransportError> {
        let (file, wr) = (self.file, &mut self.wr);
        let layout = file.layout();
        let idx = match layout.index(index) {
            Ok(i) if self.avail.has(index) => i,
            _ => {
                write_frame(wr, &Frame::Reject { index, code: RejectCode::NotHeld }).await?;
                return Ok(());
            }
        };
        let len = layout.len(idx);
        if let Some(limit) = &self.opts.upload_limit {
            limit.acquire(len as u64).await;
        }
        let mut head = BytesMut::with_capacity(frame::HEAD_LEN + frame::PIECE_HEAD_LEN);
        let digest = self.avail.digest(index).unwrap_or([0; 32]);
        frame::encode_piece_head(PieceHead { index, len, digest }, &mut head);
        wr.write_all(&head).await?;
        if self.opts.corrupts_uploads() {
            let mut bytes = file.read_piece(idx).map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(b) = bytes.first_mut() {
                *b ^= 0xff;
            }
            wr.write_all(&bytes).await?;
            self.stats.bytes_uploaded.fetch_add(len as u64, Ordering::Relaxed);
            return Ok(());
        }
        let content = file.file().map_err(|e| std::io::Error::other(e.to_string()))?;
        wr.send_file(&content, layout.offset(idx), len as usize).await?;
        self.stats.bytes_uploaded.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }
}
