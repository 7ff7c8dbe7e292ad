//! Ferry's data-plane frames.
//!
//! Every frame is `len: u32 BE | version: u8 | kind: u8 | body`, where `len` counts the
//! version, kind and body bytes. Control frames are small and bounded by
//! [`MAX_CONTROL_BODY`]; a `Piece` frame's body is a 40-byte piece header (index, length,
//! and the BLAKE3 digest the sender recorded when it verified the piece, zeros when it has
//! none) followed by the piece bytes, bounded by [`MAX_PIECE_BODY`], so the sender can `sendfile` the bytes
//! straight from its content file after writing the header.
//!
//! One connection carries one task. The child opens with `Hello(task)` — followed, when the
//! child exports traces, by the trace context of its download (trace id, span id, flags: 25
//! bytes), so the parent's serving joins that trace; the parent answers
//! `Bitfield` (or `Reject` when it does not know the task) and then sends `Have` for every
//! piece it finishes later. The child pipelines `Request`s; the parent answers each in order
//! with `Piece` or `Reject`.
//!
//! A parent that reads the origin (a seed) *dispenses*: it shows children only pieces it has
//! already handed out, and answers `RequestAny` with a piece of its choosing that nobody has
//! been given yet, in the order children asked (or `Reject(u32::MAX, Exhausted)` once it has
//! nothing left to hand out). Each new piece thus leaves the seed once and the children
//! trade it among themselves (the super-seeding idea). `RequestAny` answers come when a piece
//! is available, so they may overtake `Request` answers on the same connection.
//!
//! The decoder never trusts a length before checking it against the exact limit for its kind
//! ([`Kind::max_body`]): a `Hello` is 32 bytes, a `Request` 4, so a peer that announces a
//! large frame and then sends nothing costs a clear error, not a buffer.

use bytes::{BufMut, BytesMut};

/// 2: the piece header carries the sender's recorded digest.
/// (A `Hello` may carry a trace context; a parent of this version reads both forms.)
pub const VERSION: u8 = 2;
/// `len | version | kind`.
pub const HEAD_LEN: usize = 6;
pub const MAX_CONTROL_BODY: u32 = 1024 * 1024;
/// Largest piece plus its header.
pub const MAX_PIECE_BODY: u32 = 64 * 1024 * 1024 + PIECE_HEAD_LEN as u32;
/// `index: u32 | len: u32 | digest: [u8; 32]`.
pub const PIECE_HEAD_LEN: usize = 40;
/// A `Hello` body: the task id, then optionally `trace_id: [u8; 16] | span_id: [u8; 8] | flags: u8`.
const HELLO: usize = 32;
const HELLO_TRACED: usize = HELLO + TRACE_LEN;
pub const TRACE_LEN: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Bitfield = 2,
    Have = 3,
    Request = 4,
    Piece = 5,
    Reject = 6,
    RequestAny = 7,
}

impl Kind {
    /// The largest body a frame of this kind may have. Fixed-size kinds allow exactly their
    /// size; a bitfield is bounded by [`MAX_CONTROL_BODY`] (8 Mi pieces), a piece by
    /// [`MAX_PIECE_BODY`].
    pub fn max_body(self) -> u32 {
        match self {
            Self::Hello => HELLO_TRACED as u32,
            Self::Have | Self::Request => 4,
            Self::RequestAny => 0,
            Self::Reject => 5,
            Self::Bitfield => MAX_CONTROL_BODY,
            Self::Piece => MAX_PIECE_BODY,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::Bitfield,
            3 => Self::Have,
            4 => Self::Request,
            5 => Self::Piece,
            6 => Self::Reject,
            7 => Self::RequestAny,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectCode {
    NotHeld = 1,
    UnknownTask = 2,
    Busy = 3,
    /// Answer to `RequestAny`: every piece has been handed out; ask for pieces by index.
    Exhausted = 4,
}

/// A decoded control frame. Piece bytes are not part of it: see [`PieceHead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello { task_id: [u8; 32], trace: Option<[u8; TRACE_LEN]> },
    Bitfield { piece_count: u32, bits: Vec<u8> },
    Have { index: u32 },
    Request { index: u32 },
    RequestAny,
    Reject { index: u32, code: RejectCode },
}

/// The fixed part of a `Piece` frame; `len` piece bytes follow it on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceHead {
    pub index: u32,
    pub len: u32,
    /// The digest the sender recorded for this piece, all zeros when it knows none. A
    /// receiver checks bytes against the scheduler's digest; this one stands in only while
    /// no scheduler answers (see the daemon's `Shared::store_piece`).
    pub digest: [u8; 32],
}

impl PieceHead {
    pub fn claimed_digest(&self) -> Option<[u8; 32]> {
        (self.digest != [0; 32]).then_some(self.digest)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported frame version {0} (this peer speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {len} bytes exceeds the {max}-byte limit for its kind")]
    TooLarge { len: u32, max: u32 },
    #[error("frame body of {len} bytes is malformed for kind {kind:?}")]
    Malformed { kind: Kind, len: u32 },
}

/// What the 6-byte head announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    pub body_len: u32,
}

pub fn decode_head(head: &[u8; HEAD_LEN]) -> Result<Head, FrameError> {
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if head[4] != VERSION {
        return Err(FrameError::Version(head[4]));
    }
    let kind = Kind::from_u8(head[5]).ok_or(FrameError::Kind(head[5]))?;
    if len < 2 {
        return Err(FrameError::Malformed { kind, len });
    }
    let body_len = len - 2;
    let max = kind.max_body();
    if body_len > max {
        return Err(FrameError::TooLarge { len: body_len, max });
    }
    Ok(Head { kind, body_len })
}

/// Decodes the body of a control frame (any kind but `Piece`).
pub fn decode_control(kind: Kind, body: &[u8]) -> Result<Frame, FrameError> {
    let bad = || FrameError::Malformed { kind, len: body.len() as u32 };
    let u32_at = |at: usize| -> Result<u32, FrameError> {
        let b = body.get(at..at + 4).ok_or_else(bad)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    };
    let exact = |n: usize| if body.len() == n { Ok(()) } else { Err(bad()) };
    match kind {
        Kind::Hello => {
            let task_id = body.get(..HELLO).ok_or_else(bad)?.try_into().expect("32 bytes");
            let trace = match body.len() {
                HELLO => None,
                HELLO_TRACED => Some(body[HELLO..].try_into().expect("25 bytes")),
                _ => return Err(bad()),
            };
            Ok(Frame::Hello { task_id, trace })
        }
        Kind::Bitfield => {
            let piece_count = u32_at(0)?;
            let bits = body[4..].to_vec();
            if bits.len() != (piece_count as usize).div_ceil(8) {
                return Err(bad());
            }
            Ok(Frame::Bitfield { piece_count, bits })
        }
        Kind::Have => exact(4).and_then(|_| Ok(Frame::Have { index: u32_at(0)? })),
        Kind::Request => exact(4).and_then(|_| Ok(Frame::Request { index: u32_at(0)? })),
        Kind::RequestAny => exact(0).map(|_| Frame::RequestAny),
        Kind::Reject => {
            exact(5)?;
            let code = match body[4] {
                1 => RejectCode::NotHeld,
                2 => RejectCode::UnknownTask,
                3 => RejectCode::Busy,
                4 => RejectCode::Exhausted,
                _ => return Err(bad()),
            };
            Ok(Frame::Reject { index: u32_at(0)?, code })
        }
        Kind::Piece => Err(bad()),
    }
}

/// Decodes the header that opens a `Piece` body and checks it against the frame.
pub fn decode_piece_head(body_len: u32, head: &[u8; PIECE_HEAD_LEN]) -> Result<PieceHead, FrameError> {
    let index = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
    if body_len as u64 != PIECE_HEAD_LEN as u64 + len as u64 {
        return Err(FrameError::Malformed { kind: Kind::Piece, len: body_len });
    }
    let digest = head[8..40].try_into().expect("32 bytes");
    Ok(PieceHead { index, len, digest })
}

fn put_head(buf: &mut BytesMut, kind: Kind, body_len: usize) {
    buf.put_u32((body_len + 2) as u32);
    buf.put_u8(VERSION);
    buf.put_u8(kind as u8);
}

/// Appends a control frame to `buf`.
pub fn encode(frame: &Frame, buf: &mut BytesMut) {
    match frame {
        Frame::Hello { task_id, trace } => {
            put_head(buf, Kind::Hello, if trace.is_some() { HELLO_TRACED } else { HELLO });
            buf.put_slice(task_id);
            if let Some(t) = trace {
                buf.put_slice(t);
            }
        }
        Frame::Bitfield { piece_count, bits } => {
            put_head(buf, Kind::Bitfield, 4 + bits.len());
            buf.put_u32(*piece_count);
            buf.put_slice(bits);
        }
        Frame::Have { index } => {
            put_head(buf, Kind::Have, 4);
            buf.put_u32(*index);
        }
        Frame::Request { index } => {
            put_head(buf, Kind::Request, 4);
            buf.put_u32(*index);
        }
        Frame::RequestAny => put_head(buf, Kind::RequestAny, 0),
        Frame::Reject { index, code } => {
            put_head(buf, Kind::Reject, 5);
            buf.put_u32(*index);
            buf.put_u8(*code as u8);
        }
    }
}

/// Appends the head of a `Piece` frame; the caller sends `head.len` piece bytes after it.
pub fn encode_piece_head(head: PieceHead, buf: &mut BytesMut) {
    put_head(buf, Kind::Piece, PIECE_HEAD_LEN + head.len as usize);
    buf.put_u32(head.index);
    buf.put_u32(head.len);
    buf.put_slice(&head.digest);
}

/// Decodes one frame from the front of an in-memory buffer: `Ok(None)` when more bytes are
/// needed. Piece frames come back as their head and the body slice. Used by tests and fuzzing;
/// the transport reads frames from sockets with the same functions.
pub fn decode_buf(buf: &[u8]) -> Result<Option<(Decoded<'_>, usize)>, FrameError> {
    let Some(head) = buf.get(..HEAD_LEN) else {
        return Ok(None);
    };
    let head = decode_head(head.try_into().expect("6 bytes"))?;
    let end = HEAD_LEN + head.body_len as usize;
    let Some(body) = buf.get(HEAD_LEN..end) else {
        return Ok(None);
    };
    let decoded = if head.kind == Kind::Piece {
        let ph: &[u8; PIECE_HEAD_LEN] = body
            .get(..PIECE_HEAD_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FrameError::Malformed { kind: Kind::Piece, len: head.body_len })?;
        Decoded::Piece(decode_piece_head(head.body_len, ph)?, &body[PIECE_HEAD_LEN..])
    } else {
        Decoded::Control(decode_control(head.kind, body)?)
    };
    Ok(Some((decoded, end)))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Control(Frame),
    Piece(PieceHead, &'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(f: Frame) {
        let mut buf = BytesMut::new();
        encode(&f, &mut buf);
        let (d, used) = decode_buf(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(d, Decoded::Control(f));
    }

    #[test]
    fn control_frames_round_trip() {
        round_trip(Frame::Hello { task_id: [7; 32], trace: None });
        round_trip(Frame::Hello { task_id: [7; 32], trace: Some([9; TRACE_LEN]) });
        round_trip(Frame::Bitfield { piece_count: 9, bits: vec![0xff, 0x80] });
        round_trip(Frame::Have { index: 3 });
        round_trip(Frame::Request { index: u32::MAX });
        round_trip(Frame::Reject { index: 1, code: RejectCode::Busy });
        round_trip(Frame::RequestAny);
        round_trip(Frame::Reject { index: u32::MAX, code: RejectCode::Exhausted });
    }

    #[test]
    fn piece_frame_round_trips() {
        let mut buf = BytesMut::new();
        let head = PieceHead { index: 4, len: 3, digest: [9; 32] };
        encode_piece_head(head, &mut buf);
        buf.put_slice(b"abc");
        let (d, used) = decode_buf(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(d, Decoded::Piece(head, b"abc"));
        assert_eq!(head.claimed_digest(), Some([9; 32]));
        assert_eq!(PieceHead { digest: [0; 32], ..head }.claimed_digest(), None);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let mut buf = BytesMut::new();
        encode(&Frame::Have { index: 3 }, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode_buf(&buf[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn rejects_oversize_before_reading_body() {
        let mut head = [0u8; HEAD_LEN];
        head[..4].copy_from_slice(&(MAX_CONTROL_BODY + 3).to_be_bytes());
        head[4] = VERSION;
        head[5] = Kind::Bitfield as u8;
        assert!(matches!(decode_head(&head), Err(FrameError::TooLarge { .. })));
        head[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        head[5] = Kind::Piece as u8;
        assert!(matches!(decode_head(&head), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn fixed_size_kinds_refuse_a_larger_announced_body() {
        // A `Hello` announcing a megabyte is refused from its 6-byte head.
        let mut head = [0u8; HEAD_LEN];
        head[..4].copy_from_slice(&(1024 * 1024u32).to_be_bytes());
        head[4] = VERSION;
        head[5] = Kind::Hello as u8;
        assert_eq!(decode_head(&head), Err(FrameError::TooLarge { len: 1024 * 1024 - 2, max: 57 }));
        head[..4].copy_from_slice(&34u32.to_be_bytes());
        assert!(decode_head(&head).is_ok());
        // A body between the two `Hello` forms is malformed.
        assert!(decode_control(Kind::Hello, &[0; 40]).is_err());
        assert!(decode_control(Kind::Hello, &[0; 57]).is_ok());
    }

    #[test]
    fn rejects_wrong_version_and_kind() {
        assert_eq!(decode_head(&[0, 0, 0, 6, 1, 3]), Err(FrameError::Version(1)));
        assert_eq!(decode_head(&[0, 0, 0, 6, VERSION, 99]), Err(FrameError::Kind(99)));
    }

    #[test]
    fn rejects_piece_whose_inner_length_disagrees() {
        let mut buf = BytesMut::new();
        encode_piece_head(PieceHead { index: 0, len: 10, digest: [0; 32] }, &mut buf);
        buf.put_slice(&[0; 4]);
        // Shrink the outer length to match what is there; inner still says 10.
        let outer = (2 + PIECE_HEAD_LEN + 4) as u32;
        buf[..4].copy_from_slice(&outer.to_be_bytes());
        assert!(matches!(decode_buf(&buf), Err(FrameError::Malformed { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut rest = &bytes[..];
            while let Ok(Some((_, used))) = decode_buf(rest) {
                prop_assert!(used > 0);
                rest = &rest[used..];
            }
        }

        #[test]
        fn valid_head_with_random_body_never_panics(
            kind in 1u8..=7,
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = vec![];
            buf.extend_from_slice(&((body.len() + 2) as u32).to_be_bytes());
            buf.push(VERSION);
            buf.push(kind);
            buf.extend_from_slice(&body);
            let _ = decode_buf(&buf);
        }
    }
}
