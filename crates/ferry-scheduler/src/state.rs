//! The scheduler's books.

use std::collections::HashMap;
use std::time::Instant;

use ferry_policy::{BackToSourceBudget, Candidate, Dag, Locality, PeerState};
use ferry_proto::scheduler::{peer_command, Host, HostCommand, PeerCommand};
use ferry_types::{HostId, TaskId};
use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

pub type PeerTx = UnboundedSender<Result<PeerCommand, Status>>;
pub type HostTx = UnboundedSender<Result<HostCommand, Status>>;

pub struct HostEntry {
    pub host: Host,
    pub tx: HostTx,
    pub last_seen: Instant,
    /// Distinguishes a host's new session from its old one when both overlap briefly.
    pub session: u64,
}

pub struct PeerEntry {
    pub host: Host,
    pub tx: PeerTx,
    pub state: PeerState,
    pub pieces_held: u32,
    pub from_origin: bool,
    pub blocklist: Vec<HostId>,
    pub throughput: Option<u64>,
    /// Told to wait; scheduled again when something changes.
    pub waiting: bool,
    pub session: u64,
}

pub struct TaskEntry {
    pub url: String,
    pub headers: Vec<ferry_proto::scheduler::Header>,
    pub piece_size_hint: u32,
    pub info: Option<(u64, u32)>,
    pub digests: HashMap<u32, Vec<u8>>,
    pub peers: HashMap<HostId, PeerEntry>,
    pub dag: Dag,
    pub budget: BackToSourceBudget,
    pub seed_requested: Option<HostId>,
    pub last_active: Instant,
}

impl TaskEntry {
    pub fn new(url: String, back_to_source_limit: u32, now: Instant) -> Self {
        Self {
            url,
            headers: vec![],
            piece_size_hint: 0,
            info: None,
            digests: HashMap::new(),
            peers: HashMap::new(),
            dag: Dag::default(),
            budget: BackToSourceBudget::new(back_to_source_limit),
            seed_requested: None,
            last_active: now,
        }
    }

    pub fn piece_count(&self) -> Option<u32> {
        self.info.map(|(len, ps)| len.div_ceil(ps as u64) as u32)
    }

    /// Every peer of the task as the policy sees it.
    pub fn candidates(&self, hosts: &HashMap<HostId, HostEntry>) -> Vec<Candidate> {
        self.peers
            .iter()
            .map(|(id, p)| {
                let host = hosts.get(id).map(|h| &h.host).unwrap_or(&p.host);
                Candidate {
                    host: id.clone(),
                    state: p.state,
                    pieces_held: p.pieces_held,
                    is_seed: host.seed,
                    upload_slots: host.upload_slots,
                    uploads_active: host.uploads_active,
                    throughput: p.throughput,
                    children: self.dag.children_of(id),
                    feeds: p.pieces_held > 0 || p.from_origin || self.dag.parents_of(id).next().is_some(),
                    locality: locality(host),
                }
            })
            .collect()
    }

    pub fn broadcast(&self, cmd: peer_command::Command, except: Option<&HostId>) {
        for (id, p) in &self.peers {
            if Some(id) != except {
                let _ = p.tx.send(Ok(PeerCommand { command: Some(cmd.clone()) }));
            }
        }
    }
}

pub fn locality(h: &Host) -> Locality {
    Locality { zone: h.zone.clone(), rack: h.rack.clone() }
}

#[derive(Default)]
pub struct State {
    pub hosts: HashMap<HostId, HostEntry>,
    pub tasks: HashMap<TaskId, TaskEntry>,
    pub next_session: u64,
    pub seed_fetches: u64,
    pub back_to_source_grants: u64,
}

impl State {
    pub fn session(&mut self) -> u64 {
        self.next_session += 1;
        self.next_session
    }
}
