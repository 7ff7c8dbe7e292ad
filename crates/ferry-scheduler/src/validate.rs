//! Every message a daemon sends, checked once into `ferry-types` values before the scheduler
//! touches its books. Whatever a peer sends, the answer is `InvalidArgument` for that peer's
//! stream and never a panic: one malformed message must not stop scheduling for anyone else.

use std::net::IpAddr;

use ferry_proto::scheduler::{FinishedPiece, Host, Register, TaskInfo};
use ferry_types::{FileDigest, HostId, OriginRequest, PieceDigest, PieceIndex, PieceLayout, TaskId};
use tonic::Status;

fn invalid(what: impl Into<String>) -> Status {
    Status::invalid_argument(what.into())
}

/// A task's layout and origin validators as a peer reported them.
#[derive(Clone, Debug)]
pub struct TaskMeta {
    pub layout: PieceLayout,
    pub info: TaskInfo,
}

/// With membership, a host speaks only for itself: the id it sends is the one its
/// certificate names, and only a seed's certificate may claim to be a seed. Without
/// membership (`member` is `None`) anything goes, as the start-up warning says.
pub fn claim(member: Option<&ferry_membership::Member>, host: Option<&Host>) -> Result<(), Status> {
    let (Some(m), Some(h)) = (member, host) else { return Ok(()) };
    if h.id != m.host.as_str() {
        return Err(Status::permission_denied(format!("{m} cannot speak for host {}", h.id)));
    }
    if h.seed && m.role != ferry_membership::Role::Seed {
        return Err(Status::permission_denied(format!("{m} is not a seed")));
    }
    Ok(())
}

pub fn task_info(info: &TaskInfo) -> Result<TaskMeta, Status> {
    let layout =
        PieceLayout::new(info.content_length, info.piece_size).map_err(|e| invalid(format!("task info: {e}")))?;
    if info.etag.len() > 1024 || info.last_modified.len() > 256 {
        return Err(invalid("task info: validators longer than any origin sends"));
    }
    Ok(TaskMeta { layout, info: info.clone() })
}

/// A host as it announces itself: id, an IP address and a port others can dial.
pub fn host(h: Option<&Host>) -> Result<(HostId, Host), Status> {
    let h = h.ok_or_else(|| invalid("message without host"))?;
    let id = HostId::new(h.id.clone()).map_err(|e| invalid(e.to_string()))?;
    h.ip.parse::<IpAddr>().map_err(|_| invalid(format!("host {id}: `{}` is not an IP address", h.ip)))?;
    if h.piece_port == 0 || h.piece_port > u16::MAX as u32 {
        return Err(invalid(format!("host {id}: piece port {} is not a TCP port", h.piece_port)));
    }
    Ok((id, h.clone()))
}

pub struct ValidRegister {
    pub task: TaskId,
    pub peer: HostId,
    pub host: Host,
    pub request: OriginRequest,
    pub meta: Option<TaskMeta>,
    /// Held pieces with their digests where the peer sent one.
    pub held: Vec<(PieceIndex, Option<PieceDigest>)>,
    pub from_origin: bool,
    pub piece_size_hint: u32,
    pub pinned_until: u64,
    pub reading_origin: bool,
}

/// `known` is the layout the scheduler already has for the task, if any; held pieces are
/// checked against it, else against the one the peer sends.
pub fn register(reg: &Register, known: impl FnOnce(&TaskId) -> Option<PieceLayout>) -> Result<ValidRegister, Status> {
    let task = TaskId::from_slice(&reg.task_id).ok_or_else(|| invalid("task_id must be 32 bytes"))?;
    let (peer, host) = host(reg.host.as_ref())?;
    let url = url::Url::parse(&reg.url).map_err(|e| invalid(format!("register: URL: {e}")))?;
    let digest = match reg.digest.as_str() {
        "" => None,
        d => Some(d.parse::<FileDigest>().map_err(|e| invalid(e.to_string()))?),
    };
    let headers = reg.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    let request = OriginRequest::new(url, headers, digest, vec![]).map_err(|e| invalid(e.to_string()))?;
    let meta = reg.info.as_ref().map(task_info).transpose()?;
    if reg.piece_size != 0 && PieceLayout::new(0, reg.piece_size).is_err() {
        return Err(invalid(format!("register: piece size {} is not a valid piece size", reg.piece_size)));
    }
    let layout = known(&task).or(meta.as_ref().map(|m| m.layout));
    if !reg.held_digests.is_empty() && reg.held_digests.len() != reg.held.len() {
        return Err(invalid("register: held_digests must be empty or one per held piece"));
    }
    let mut held = Vec::with_capacity(reg.held.len());
    if !reg.held.is_empty() {
        let layout = layout.ok_or_else(|| invalid("register: held pieces of a task without a layout"))?;
        for (n, i) in reg.held.iter().enumerate() {
            let index = layout.index(*i).map_err(|e| invalid(format!("register: {e}")))?;
            let digest = match reg.held_digests.get(n).map(|d| d.as_slice()) {
                None | Some([]) => None,
                Some(d) => {
                    Some(PieceDigest::from_slice(d).ok_or_else(|| invalid("register: a digest is not 32 bytes"))?)
                }
            };
            held.push((index, digest));
        }
        held.sort_by_key(|(i, _)| *i);
        held.dedup_by_key(|(i, _)| *i);
    }
    Ok(ValidRegister {
        task,
        peer,
        host,
        request,
        meta,
        held,
        from_origin: reg.from_origin,
        piece_size_hint: reg.piece_size,
        pinned_until: reg.pinned_until,
        reading_origin: reg.reading_origin,
    })
}

/// Most task ids one host message may name.
pub const MAX_DROPPED: usize = 4096;

/// Task ids a host names (`HostMessage.dropped`): each 32 bytes, at most [`MAX_DROPPED`].
pub fn task_ids(ids: &[Vec<u8>]) -> Result<Vec<TaskId>, Status> {
    if ids.len() > MAX_DROPPED {
        return Err(invalid(format!("{} task ids in one message; at most {MAX_DROPPED}", ids.len())));
    }
    ids.iter().map(|b| TaskId::from_slice(b).ok_or_else(|| invalid("a task id is not 32 bytes"))).collect()
}

/// A reported piece: its index inside the layout, the origin digest when sent, the parent
/// it came from (empty: from origin).
pub struct ValidPiece {
    pub index: PieceIndex,
    pub digest: Option<PieceDigest>,
    pub parent: Option<HostId>,
    pub cost_micros: u32,
    pub length: u32,
}

pub fn pieces(layout: Option<PieceLayout>, pieces: &[FinishedPiece]) -> Result<Vec<ValidPiece>, Status> {
    if pieces.is_empty() {
        return Ok(vec![]);
    }
    let layout = layout.ok_or_else(|| invalid("pieces reported before the task's layout"))?;
    pieces
        .iter()
        .map(|p| {
            let index = layout.index(p.index).map_err(|e| invalid(format!("pieces: {e}")))?;
            let digest = match p.digest.as_slice() {
                [] => None,
                d => Some(PieceDigest::from_slice(d).ok_or_else(|| invalid("pieces: a digest is not 32 bytes"))?),
            };
            let parent = match p.parent.as_str() {
                "" => None,
                s => Some(HostId::new(s).map_err(|e| invalid(e.to_string()))?),
            };
            if p.length != layout.len(index) {
                return Err(invalid(format!(
                    "pieces: piece {} is {} bytes, not {}",
                    p.index,
                    p.length,
                    layout.len(index)
                )));
            }
            Ok(ValidPiece { index, digest, parent, cost_micros: p.cost_micros, length: p.length })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host { id: "h".into(), ip: "127.0.0.1".into(), piece_port: 1, ..Default::default() }
    }

    fn reg() -> Register {
        Register { task_id: vec![1; 32], host: Some(host()), url: "http://o/f".into(), ..Default::default() }
    }

    #[test]
    fn malformed_registrations_are_refused() {
        let none = |_: &TaskId| None;
        assert!(register(&reg(), none).is_ok());
        let bad_info =
            Register { info: Some(TaskInfo { content_length: 10, piece_size: 0, ..Default::default() }), ..reg() };
        assert!(register(&bad_info, none).is_err(), "piece size 0");
        let huge = Register {
            info: Some(TaskInfo { content_length: u64::MAX, piece_size: 16384, ..Default::default() }),
            ..reg()
        };
        assert!(register(&huge, none).is_err(), "more pieces than a bitfield holds");
        let held_without_layout = Register { held: vec![0], ..reg() };
        assert!(register(&held_without_layout, none).is_err());
        let info = Some(TaskInfo { content_length: 20_000, piece_size: 16384, ..Default::default() });
        let beyond = Register { held: vec![2], info: info.clone(), ..reg() };
        assert!(register(&beyond, none).is_err(), "index beyond count");
        let wrong_len = Register { held: vec![0, 1], held_digests: vec![vec![0; 32]], info: info.clone(), ..reg() };
        assert!(register(&wrong_len, none).is_err(), "digest list of the wrong length");
        let short_digest = Register { held: vec![0], held_digests: vec![vec![0; 3]], info, ..reg() };
        assert!(register(&short_digest, none).is_err());
        let bad_host = Register { host: Some(Host { ip: "nope".into(), ..host() }), ..reg() };
        assert!(register(&bad_host, none).is_err());
        let bad_header = Register {
            headers: vec![ferry_proto::scheduler::Header { name: "Range".into(), value: "bytes=0-1".into() }],
            ..reg()
        };
        assert!(register(&bad_header, none).is_err(), "content-changing header");
    }

    #[test]
    fn pieces_are_checked_against_the_layout() {
        let l = PieceLayout::new(20_000, 16384).unwrap();
        let p = |index, length| FinishedPiece { index, length, ..Default::default() };
        assert!(pieces(Some(l), &[p(0, 16384), p(1, 20_000 - 16384)]).is_ok());
        assert!(pieces(Some(l), &[p(2, 1)]).is_err());
        assert!(pieces(Some(l), &[p(0, 5)]).is_err());
        assert!(pieces(None, &[p(0, 16384)]).is_err());
        let bad_digest = FinishedPiece { digest: vec![1; 31], ..p(0, 16384) };
        assert!(pieces(Some(l), &[bad_digest]).is_err());
    }
}
