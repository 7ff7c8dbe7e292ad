//! Frame IO on tokio streams, and `sendfile` from a file to a socket.

use std::fs::File;
use std::os::fd::AsRawFd;

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

/// Reads the next frame head (and the body, for control frames). `Ok(None)` on clean EOF.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Incoming>, TransportError> {
    let mut head = [0u8; frame::HEAD_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let Head { kind, body_len } = frame::decode_head(&head)?;
    if kind == Kind::Piece {
        let mut ph = [0u8; frame::PIECE_HEAD_LEN];
        r.read_exact(&mut ph).await?;
        return Ok(Some(Incoming::Piece(frame::decode_piece_head(body_len, &ph)?)));
    }
    let mut body = vec![0u8; body_len as usize];
    r.read_exact(&mut body).await?;
    Ok(Some(Incoming::Control(frame::decode_control(kind, &body)?)))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64);
    frame::encode(f, &mut buf);
    w.write_all(&buf).await
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
