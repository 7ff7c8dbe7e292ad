//! Membership under tonic: servers accept through [`incoming`], which runs the TLS handshake
//! (each in its own task, bounded by [`crate::HANDSHAKE_TIMEOUT`]) and hands every request the
//! [`PeerInfo`] of its connection; [`MemberGate`] refuses calls from non-members; clients dial
//! through [`channel`], which presents this host's certificate and checks the server's.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::creds::{peer_member, server_name};
use crate::{Member, Role};

/// Who is at the other end of a server's connection: its address, and the member its
/// certificate names (`None` on a plain connection or one that presented none).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub member: Option<Member>,
}

/// The member a request came from, if its connection proved one.
pub fn member_of<T>(req: &tonic::Request<T>) -> Option<&Member> {
    req.extensions().get::<PeerInfo>().and_then(|p| p.member.as_ref())
}

/// A server-side connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(_, p) | Conn::Tls(_, p) => p.clone(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s, _) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s, _) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Connections accepted on `listener` (Nagle off: a scheduler's answers are small writes),
/// TLS-wrapped with `tls` when given. A handshake that fails or takes too long is logged once
/// with the peer's address and dropped. Ends when `cancel` fires.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    cancel: CancellationToken,
) -> impl futures::Stream<Item = Result<Conn, std::io::Error>> {
    // Bounded: when tonic does not take connections as fast as they come, accepting waits
    // and new ones queue in the kernel's backlog.
    let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (sock, remote) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if tx.send(Conn::Plain(sock, PeerInfo { remote, member: None })).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(&acceptor, sock, remote).await {
                    let _ = tx.send(conn).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) })
}

async fn handshake(acceptor: &tokio_rustls::TlsAcceptor, sock: TcpStream, remote: SocketAddr) -> Option<Conn> {
    match tokio::time::timeout(crate::HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(tls)) => {
            let member = peer_member(tls.get_ref().1.peer_certificates());
            Some(Conn::Tls(Box::new(tls), PeerInfo { remote, member }))
        }
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "refused a connection: TLS handshake failed (no valid cluster certificate?)");
            None
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a connection: TLS handshake not done within {:?}", crate::HANDSHAKE_TIMEOUT);
            None
        }
    }
}

/// Refuses every call whose connection did not prove membership, when membership is on.
#[derive(Clone, Copy, Debug)]
pub struct MemberGate {
    pub required: bool,
}

impl tonic::service::Interceptor for MemberGate {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.required || member_of(&req).is_some() {
            return Ok(req);
        }
        let remote = req.extensions().get::<PeerInfo>().map(|p| p.remote.to_string()).unwrap_or_default();
        tracing::warn!(%remote, "refused a call from a host that presented no cluster certificate");
        Err(tonic::Status::unauthenticated(
            "not a member of this cluster: connect with a certificate from its CA (--join-token-file)",
        ))
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Dials for tonic: TCP with Nagle off, then TLS when configured, and checks that the server
/// is a member with the `expect`ed role.
#[derive(Clone)]
struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
    expect: Option<Role>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, expect) = (self.tls.clone(), self.expect);
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
            let sock = TcpStream::connect(&authority).await?;
            sock.set_nodelay(true)?;
            let Some(tls) = tls else { return Ok(TokioIo::new(Box::new(sock) as Box<dyn Io>)) };
            let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name(), sock).await?;
            let member = peer_member(stream.get_ref().1.peer_certificates());
            check_role(member.as_ref(), expect, &authority)?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}

/// Whether the server at `addr` is the member a client wanted.
pub fn check_role(member: Option<&Member>, expect: Option<Role>, addr: &str) -> std::io::Result<()> {
    match (member, expect) {
        (Some(m), Some(role)) if m.role != role => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{addr} is {m}, not a {role} of this cluster"),
        )),
        (None, _) => Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{addr} named no member"))),
        _ => Ok(()),
    }
}

/// A lazy channel to `ep`: over TLS with `tls` (the server must be a member, of role
/// `expect` when given), else plain TCP.
pub fn channel(ep: Endpoint, tls: Option<Arc<rustls::ClientConfig>>, expect: Option<Role>) -> Channel {
    ep.connect_with_connector_lazy(Connector { tls, expect })
}
