//! A child's connection to one parent for one task.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_proto::frame::{Frame, RejectCode};
use ferry_types::TaskId;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::avail::unpack_bits;
use crate::io::{read_frame, write_frame, Incoming};
use crate::TransportError;

pub enum ParentEvent {
    Have(u32),
    /// `claimed`: the digest the parent recorded for it, if it sent one.
    Piece {
        index: u32,
        bytes: Vec<u8>,
        claimed: Option<[u8; 32]>,
    },
    Reject {
        index: u32,
        code: RejectCode,
    },
}

pub struct ParentReader {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    max_piece: u32,
}

pub struct ParentWriter {
    wr: Box<dyn AsyncWrite + Send + Unpin>,
}

/// Connects (over TLS with `tls`: this host's member certificate, and the parent must show
/// one of the same cluster), says which task, and returns the parent's current bitfield with
/// both halves.
pub async fn connect(
    addr: SocketAddr,
    task: TaskId,
    max_piece: u32,
    timeout: Duration,
    trace: Option<[u8; ferry_proto::frame::TRACE_LEN]>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Vec<bool>, ParentReader, ParentWriter), TransportError> {
    let a = addr.to_string();
    let dial = async {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let Some(tls) = tls else {
            let (rd, wr) = sock.into_split();
            return Ok::<_, std::io::Error>((
                Box::new(rd) as Box<dyn AsyncRead + Send + Unpin>,
                Box::new(wr) as Box<_>,
            ));
        };
        let stream =
            tokio_rustls::TlsConnector::from(tls).connect(ferry_membership::creds::server_name(), sock).await?;
        let (rd, wr) = tokio::io::split(stream);
        Ok((Box::new(rd) as Box<_>, Box::new(wr) as Box<_>))
    };
    let (mut rd, mut wr) = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| TransportError::ConnectTimeout { addr: a.clone() })?
        .map_err(|source| TransportError::ConnectParent { addr: a.clone(), source })?;
    write_frame(&mut wr, &Frame::Hello { task_id: task.0, trace }).await?;
    let first = tokio::time::timeout(timeout, read_frame(&mut rd))
        .await
        .map_err(|_| TransportError::ConnectTimeout { addr: a.clone() })??;
    match first {
        Some(Incoming::Control(Frame::Bitfield { piece_count, bits })) => {
            Ok((unpack_bits(&bits, piece_count), ParentReader { rd, max_piece }, ParentWriter { wr }))
        }
        Some(Incoming::Control(Frame::Reject { code: RejectCode::UnknownTask, .. })) => {
            Err(TransportError::UnknownTask { addr: a })
        }
        other => Err(TransportError::Unexpected {
            expected: "Bitfield",
            got: match other {
                None => "end of stream".into(),
                Some(Incoming::Control(f)) => format!("{f:?}"),
                Some(Incoming::Piece(h)) => format!("{h:?}"),
            },
        }),
    }
}

impl ParentWriter {
    pub async fn request(&mut self, index: u32) -> Result<(), TransportError> {
        Ok(write_frame(&mut self.wr, &Frame::Request { index }).await?)
    }

    /// Asks a dispensing parent for a piece of its choosing (see `ferry_proto::frame`).
    pub async fn request_any(&mut self) -> Result<(), TransportError> {
        Ok(write_frame(&mut self.wr, &Frame::RequestAny).await?)
    }
}

impl ParentReader {
    /// The next event from the parent; `Ok(None)` when it closed the connection.
    pub async fn next(&mut self) -> Result<Option<ParentEvent>, TransportError> {
        match read_frame(&mut self.rd).await? {
            None => Ok(None),
            Some(Incoming::Control(Frame::Have { index })) => Ok(Some(ParentEvent::Have(index))),
            Some(Incoming::Control(Frame::Reject { index, code })) => Ok(Some(ParentEvent::Reject { index, code })),
            Some(Incoming::Piece(h)) => {
                if h.len > self.max_piece {
                    return Err(TransportError::Unexpected { expected: "piece within layout", got: format!("{h:?}") });
                }
                // Read into spare capacity: no zeroing of a buffer about to be overwritten.
                let len = h.len as usize;
                let mut bytes = Vec::with_capacity(len);
                while bytes.len() < len {
                    if (&mut self.rd).take((len - bytes.len()) as u64).read_buf(&mut bytes).await? == 0 {
                        return Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Ok(Some(ParentEvent::Piece { index: h.index, bytes, claimed: h.claimed_digest() }))
            }
            Some(Incoming::Control(f)) => {
                Err(TransportError::Unexpected { expected: "Have, Piece or Reject", got: format!("{f:?}") })
            }
        }
    }
}
