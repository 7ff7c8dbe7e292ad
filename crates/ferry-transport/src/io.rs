//! Frame IO on tokio streams, and `sendfile` from a file to a socket.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use ferry_proto::frame::{self, Frame, Head, Kind, PieceHead};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::TransportError;

/// One frame as read from the wire; piece bytes are read into memory by the caller.
pub enum Incoming {
    Control(Frame),
    Piece(PieceHead),
}

/// Once a frame's first byte has arrived, the rest of its head and control body must follow
/// within this long. A peer that starts a frame and stalls is cut off instead of holding a
/// connection and a buffer (a slow-loris); piece bytes are read by the caller and not bound
/// by it, since a 64 MiB piece on a slow link legitimately takes longer.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// Reads the next frame head (and the body, for control frames). `Ok(None)` on clean EOF.
/// Waiting for a frame to start is not bounded here: a child may stay quiet while its parent
/// has nothing new.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Incoming>, TransportError> {
    read_frame_of(r, |_| true).await
}

/// As [`read_frame`], but a frame whose kind `accept` refuses is an error decided from its
/// 6-byte head, before any body byte is buffered.
pub async fn read_frame_of<R: AsyncRead + Unpin>(
    r: &mut R,
    accept: impl Fn(Kind) -> bool,
) -> Result<Option<Incoming>, TransportError> {
    let mut head = [0u8; frame::HEAD_LEN];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    let rest = async {
        r.read_exact(&mut head[1..]).await?;
        let Head { kind, body_len } = frame::decode_head(&head)?;
        if !accept(kind) {
            return Err(TransportError::Unexpected { expected: "another frame kind", got: format!("{kind:?}") });
        }
        if kind == Kind::Piece {
            let mut ph = [0u8; frame::PIECE_HEAD_LEN];
            r.read_exact(&mut ph).await?;
            return Ok(Some(Incoming::Piece(frame::decode_piece_head(body_len, &ph)?)));
        }
        let mut body = vec![0u8; body_len as usize];
        r.read_exact(&mut body).await?;
        Ok(Some(Incoming::Control(frame::decode_control(kind, &body)?)))
    };
    tokio::time::timeout(FRAME_DEADLINE, rest).await.map_err(|_| TransportError::Stalled(FRAME_DEADLINE))?
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64);
    frame::encode(f, &mut buf);
    w.write_all(&buf).await
}

/// Where a piece server writes: a socket half that can send a range of a file as it is.
pub trait PieceSink: AsyncWrite + Unpin + Send {
    fn send_file<'a>(
        &'a mut self,
        file: &'a File,
        offset: u64,
        len: usize,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send + 'a;
}

/// Plain TCP: `sendfile(2)`, the bytes never pass through user space.
impl PieceSink for tokio::net::tcp::OwnedWriteHalf {
    async fn send_file(&mut self, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
        sendfile_all(self.as_ref(), file, offset, len).await
    }
}

/// TLS: the bytes are read into user space to be encrypted, in chunks of this size.
const TLS_CHUNK: usize = 256 << 10;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PieceSink for tokio::io::WriteHalf<tokio_rustls::server::TlsStream<S>> {
    async fn send_file(&mut self, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; TLS_CHUNK.min(len)];
        let mut done = 0;
        while done < len {
            let n = TLS_CHUNK.min(len - done);
            file.read_exact_at(&mut buf[..n], offset + done as u64)?;
            self.write_all(&buf[..n]).await?;
            done += n;
        }
        Ok(())
    }
}

/// Sends `len` bytes of `file` from `offset` to the socket without copying through user space.
pub async fn sendfile_all(sock: &TcpStream, file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    let mut off = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        sock.writable().await?;
        let res = sock.try_io(Interest::WRITABLE, || {
            // SAFETY: both fds are open for the duration of the call; `off` is a valid pointer.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
