//! The simulated daemons: what `ferry-daemon`'s task driver and parent workers do with
//! commands, connections and pieces, around Ferry's own picker, availability and seed grace.

use ferry_policy::{seed_only_mask, PiecePicker};
use ferry_proto::scheduler::{peer_command, peer_message, FailReason, FinishedPiece, ParentFailed, TaskInfo};
use ferry_transport::avail::{unpack_bits, AnyOutcome, EXHAUSTED};
use ferry_transport::Availability;

use crate::sim::{ConnId, Event, NodeId, Sim, ToSched};

/// `RequestAny`s a worker keeps waiting at a seed (`from_parent::ANY_DEPTH`).
const ANY_DEPTH: usize = 2;

/// The digest the simulated origin's piece `index` has (its bytes are never modelled).
fn digest(index: u32) -> [u8; 32] {
    let mut d = [1u8; 32];
    d[..4].copy_from_slice(&index.to_be_bytes());
    d
}

impl Sim {
    pub(crate) fn on_command(&mut self, n: NodeId, c: peer_command::Command) {
        if self.nodes[n].left {
            return;
        }
        match c {
            peer_command::Command::TaskInfo(_) => self.init_content(n),
            peer_command::Command::Digests(d) => {
                for i in d.index {
                    if let Some(v) = self.nodes[n].verifiable.get_mut(i as usize) {
                        *v = true;
                    }
                    if let Some(p) = self.nodes[n].picker.as_mut() {
                        p.set_verifiable(i);
                    }
                }
                self.ask_all(n);
            }
            peer_command::Command::Parents(ps) => {
                for p in ps.parents {
                    self.add_parent(n, &p.host_id);
                }
            }
            peer_command::Command::DropParents(d) => {
                for id in d.host_id {
                    self.drop_parent(n, &id);
                }
            }
            peer_command::Command::BackToSource(_) => self.start_origin(n),
            peer_command::Command::Wait(_) => {}
            peer_command::Command::TaskFailed(_) => self.sched_errors += 1,
        }
    }

    /// The layout is known: the picker and the availability exist from now on.
    pub(crate) fn init_content(&mut self, n: NodeId) {
        if self.nodes[n].picker.is_some() {
            return;
        }
        let count = self.layout.piece_count();
        let node = &mut self.nodes[n];
        let mut picker = PiecePicker::new(count);
        for (i, v) in node.verifiable.iter().enumerate() {
            if *v {
                picker.set_verifiable(i as u32);
            }
        }
        node.picker = Some(picker);
        let avail = Availability::new(count, node.host.seed);
        node.haves = Some(avail.subscribe().2);
        node.avail = Some(avail);
        for c in self.nodes[n].children.clone() {
            self.attach_child(c);
        }
        self.ask_all(n);
    }

    /// The child of an open connection becomes known to its parent's availability, and
    /// `RequestAny`s that came early are answered.
    fn attach_child(&mut self, c: ConnId) {
        let Some(p) = self.conns[c].parent else { return };
        let Some(avail) = &self.nodes[p].avail else { return };
        if self.conns[c].child_id.is_none() {
            self.conns[c].child_id = Some(avail.open_child());
        }
        for _ in 0..std::mem::take(&mut self.conns[c].pending_any) {
            self.request_any_at(c);
        }
    }

    /// A seed asked to fetch, or a peer sent back to source: the origin answers after a
    /// round trip.
    pub(crate) fn start_origin(&mut self, n: NodeId) {
        if self.nodes[n].origin.is_some() || self.nodes[n].done.is_some() {
            return;
        }
        let c = self.new_conn(n, None);
        self.nodes[n].origin = Some(c);
        self.after(2.0 * self.sc.latency_s, Event::OriginHeader(n));
    }

    pub(crate) fn origin_header(&mut self, n: NodeId) {
        let Some(c) = self.nodes[n].origin else { return };
        if self.nodes[n].left || self.conns[c].closed {
            return;
        }
        if self.nodes[n].picker.is_none() {
            self.init_content(n);
            let info = TaskInfo {
                content_length: self.layout.content_length(),
                piece_size: self.layout.piece_size(),
                ..Default::default()
            };
            self.send_message(n, peer_message::Message::TaskInfo(info));
        }
        let picker = self.nodes[n].picker.as_ref().expect("initialised above");
        let missing: Vec<u32> = (0..self.layout.piece_count()).filter(|i| !picker.is_done(*i)).collect();
        self.conns[c].open = true;
        for i in missing {
            self.send_piece(c, i);
        }
    }

    fn add_parent(&mut self, n: NodeId, id: &str) {
        let Some(&p) = self.ids.get(id) else { return };
        let node = &self.nodes[n];
        if p == n || node.parents.contains_key(&p) || node.blocked.contains(&p) || node.done.is_some() {
            return;
        }
        let c = self.new_conn(n, Some(p));
        self.nodes[n].parents.insert(p, c);
        // Connect, hello, bitfield: a round trip and a half.
        self.after(3.0 * self.sc.latency_s, Event::ConnOpen(c));
    }

    pub(crate) fn conn_open(&mut self, c: ConnId) {
        let p = self.conns[c].parent.expect("a parent connection");
        if self.conns[c].closed {
            return;
        }
        if self.nodes[p].left {
            self.parent_gone(c);
            return;
        }
        self.conns[c].open = true;
        self.nodes[p].children.push(c);
        if self.nodes[p].host.seed {
            self.conns[c].waiter = Some(tokio::sync::mpsc::unbounded_channel());
        }
        self.attach_child(c);
        if let Some(a) = &self.nodes[p].avail {
            let (bits, count, _) = a.subscribe();
            self.conns[c].w.has = unpack_bits(&bits, count);
        }
        if !self.conns[c].w.seed {
            let child = self.conns[c].child;
            let w = &mut self.conns[c].w;
            for (i, h) in w.has.iter().enumerate() {
                if *h {
                    self.nodes[child].holders[i] += 1;
                    w.offer.push(i as u32);
                }
            }
        }
        self.ask(c);
    }

    /// `from_parent::Worker::ask`: keep `RequestAny`s waiting at a seed, and requests by
    /// index in flight, picked by the task's picker among what the parent shows (at a seed,
    /// only pieces whose grace ran out).
    pub(crate) fn ask(&mut self, c: ConnId) {
        let child = self.conns[c].child;
        let conn = &self.conns[c];
        if !conn.open || conn.closed || self.nodes[child].done.is_some() || self.nodes[child].picker.is_none() {
            return;
        }
        let lat = self.sc.latency_s;
        while !self.conns[c].w.exhausted && self.conns[c].w.any_waiting < ANY_DEPTH {
            self.conns[c].w.any_waiting += 1;
            self.after(lat, Event::RequestAnyAt(c));
        }
        let now = self.instant(self.now);
        let grace = std::time::Duration::from_secs_f64(self.sc.daemon.seed_grace_s);
        let mut grace_due = None;
        while self.conns[c].w.inflight.len() < self.sc.daemon.pieces_in_flight {
            let node = &mut self.nodes[child];
            let w = &mut self.conns[c].w;
            let Some(picker) = node.picker.as_mut() else { break };
            let mask = || match w.seed {
                true => {
                    let (mask, next) = seed_only_mask(&w.has, &node.holders, &mut w.since, now, grace, &node.host.id);
                    grace_due = next;
                    mask
                }
                false => w.has.clone(),
            };
            let busy = w.inflight.iter().map(|(i, _)| *i);
            let offer = (!w.seed).then_some(&mut w.offer);
            let Some(index) = picker.pick_for_parent(offer, &w.has, mask, busy, &mut node.rng) else { break };
            w.inflight.push_back((index, self.now));
            self.after(lat, Event::RequestAt(c, index));
        }
        // One timer per worker, for the earliest seed-only piece coming due.
        if let Some(at) = grace_due.map(|next| next.duration_since(self.base).as_secs_f64()) {
            let w = &mut self.conns[c].w;
            if w.grace_at.is_none_or(|g| at < g) {
                w.grace_at = Some(at);
                self.at(at, Event::Grace(c));
            }
        }
    }

    /// Something the workers wait on changed (digests, a stored piece): every worker of
    /// the node with room for another request looks again.
    pub(crate) fn ask_all(&mut self, n: NodeId) {
        let conns: Vec<ConnId> = self.nodes[n].parents.values().copied().collect();
        let room = self.sc.daemon.pieces_in_flight;
        for c in conns {
            let w = &self.conns[c].w;
            if w.inflight.len() < room || (!w.exhausted && w.any_waiting < ANY_DEPTH) {
                self.ask(c);
            }
        }
    }

    /// Whatever a parent's availability has to tell: pieces its children may now see, and
    /// pieces a seed handed to a waiting `RequestAny`.
    pub(crate) fn drain_avail(&mut self, p: NodeId) {
        let mut shown = vec![];
        if let Some(rx) = self.nodes[p].haves.as_mut() {
            loop {
                match rx.try_recv() {
                    Ok(i) => shown.push(i),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        unreachable!("drained after every change, the channel cannot lag")
                    }
                    Err(_) => break,
                }
            }
        }
        let lat = self.sc.latency_s;
        for k in 0..self.nodes[p].children.len() {
            let c = self.nodes[p].children[k];
            for &i in &shown {
                self.after(lat, Event::Have(c, i));
            }
            let mut given = vec![];
            if let Some((_, rx)) = self.conns[c].waiter.as_mut() {
                while let Ok(i) = rx.try_recv() {
                    given.push(i);
                }
            }
            for i in given {
                if i == EXHAUSTED {
                    self.after(lat, Event::Exhausted(c));
                } else {
                    self.send_piece(c, i);
                }
            }
        }
    }

    /// At the parent: a request by index (a seed may refuse: it is still reading the
    /// origin and handed that piece to a child that is still there).
    pub(crate) fn request_at(&mut self, c: ConnId, index: u32) {
        let p = self.conns[c].parent.expect("a parent connection");
        if self.conns[c].closed {
            return;
        }
        let lat = self.sc.latency_s;
        let held = self.nodes[p].avail.as_ref().is_some_and(|a| a.has(index));
        let child_id = self.conns[c].child_id.unwrap_or(0);
        if !held {
            self.after(lat, Event::Reject { conn: c, index, busy: false });
        } else if !self.nodes[p].avail.as_ref().expect("held").claim_by_index(child_id, index) {
            self.after(lat, Event::Reject { conn: c, index, busy: true });
        } else {
            self.send_piece(c, index);
        }
        self.drain_avail(p);
    }

    pub(crate) fn request_any_at(&mut self, c: ConnId) {
        let p = self.conns[c].parent.expect("a parent connection");
        if self.conns[c].closed {
            return;
        }
        let (Some(avail), Some(child_id)) = (&self.nodes[p].avail, self.conns[c].child_id) else {
            self.conns[c].pending_any += 1;
            return;
        };
        let waiter = &self.conns[c].waiter.as_ref().expect("a seed connection has a waiter").0;
        match avail.request_any(child_id, waiter) {
            AnyOutcome::Given(i) => self.send_piece(c, i),
            AnyOutcome::Queued => {}
            AnyOutcome::Exhausted => self.after(self.sc.latency_s, Event::Exhausted(c)),
        }
        self.drain_avail(p);
    }

    /// A piece arrived at the child (`on_piece` then `store_piece`).
    pub(crate) fn deliver(&mut self, c: ConnId, index: u32) {
        let child = self.conns[c].child;
        if self.conns[c].closed || self.nodes[child].left {
            return;
        }
        let parent = self.conns[c].parent;
        match parent {
            None => {
                self.store(child, index, None, 0.0);
                if self.conns[c].queue.is_empty() && !self.conns[c].active {
                    self.conns[c].closed = true;
                    self.nodes[child].origin = None;
                }
            }
            Some(_) => {
                // Asked by index, or handed out by a seed for a `RequestAny`.
                let w = &mut self.conns[c].w;
                let asked = match w.inflight.iter().position(|(i, _)| *i == index) {
                    Some(pos) => w.inflight.remove(pos).expect("valid position").1,
                    None => {
                        w.any_waiting = w.any_waiting.saturating_sub(1);
                        w.last_arrival
                    }
                };
                let cost = self.now - asked.max(w.last_arrival);
                w.last_arrival = self.now;
                // A duplicate (end game) is dropped by `store`; releasing its slot in the
                // picker would change nothing, it is done.
                self.store(child, index, parent, cost);
            }
        }
        if self.nodes[child].done.is_none() {
            self.ask_all(child);
        }
    }

    /// Stores a verified piece: the picker and availability learn it, children hear of
    /// it, the scheduler will.
    fn store(&mut self, n: NodeId, index: u32, parent: Option<NodeId>, cost: f64) {
        let Some(picker) = self.nodes[n].picker.as_mut() else { return };
        if !picker.mark_done(index) {
            self.duplicates += 1;
            return;
        }
        let complete = picker.is_complete();
        self.nodes[n].avail.as_ref().expect("with the picker").insert(index, digest(index));
        self.nodes[n].last_progress = self.now;
        let len = self.piece_len(index) as u32;
        let piece = match parent {
            None => FinishedPiece { index, digest: digest(index).to_vec(), length: len, ..Default::default() },
            Some(p) => FinishedPiece {
                index,
                parent: self.nodes[p].host.id.clone(),
                cost_micros: (cost * 1e6).clamp(1.0, u32::MAX as f64) as u32,
                length: len,
                ..Default::default()
            },
        };
        self.nodes[n].pending.push(piece);
        if parent.is_none() {
            // Children cannot verify it before the scheduler relays its digest.
            self.flush(n);
        }
        self.drain_avail(n);
        if complete {
            self.complete(n);
        }
    }

    fn complete(&mut self, n: NodeId) {
        self.nodes[n].done = Some(self.now);
        self.outstanding -= usize::from(self.nodes[n].counted);
        self.finished(n);
        // Its workers end: their connections close.
        for c in self.nodes[n].parents.values().copied().collect::<Vec<_>>() {
            self.close_conn(c);
        }
        self.nodes[n].parents.clear();
    }

    pub(crate) fn have(&mut self, c: ConnId, index: u32) {
        if self.conns[c].closed {
            return;
        }
        let child = self.conns[c].child;
        let w = &mut self.conns[c].w;
        if !std::mem::replace(&mut w.has[index as usize], true) && !w.seed {
            self.nodes[child].holders[index as usize] += 1;
            w.offer.push(index);
        }
        self.ask(c);
    }

    pub(crate) fn reject(&mut self, c: ConnId, index: u32, busy: bool) {
        if self.conns[c].closed {
            return;
        }
        let child = self.conns[c].child;
        let w = &mut self.conns[c].w;
        if let Some(pos) = w.inflight.iter().position(|(i, _)| *i == index) {
            w.inflight.remove(pos);
            if let Some(p) = self.nodes[child].picker.as_mut() {
                p.release(index);
            }
        }
        if busy {
            w.since[index as usize] = Some(self.base + std::time::Duration::from_secs_f64(self.now));
        } else if std::mem::replace(&mut w.has[index as usize], false) && !w.seed {
            let h = &mut self.nodes[child].holders[index as usize];
            *h = h.saturating_sub(1);
        }
        // The piece is missing again: every worker (this one too) may ask for it.
        self.ask_all(child);
    }

    pub(crate) fn exhausted(&mut self, c: ConnId) {
        self.conns[c].w.exhausted = true;
        self.conns[c].w.any_waiting = 0;
        self.ask(c);
    }

    /// The child's worker for this parent ends: what it asked goes back to the picker, the
    /// scheduler hears which parent failed.
    pub(crate) fn parent_gone(&mut self, c: ConnId) {
        let Some((child, p)) = self.unlink(c) else { return };
        if self.nodes[child].done.is_none() {
            self.nodes[child].blocked.insert(p);
            let parent = self.nodes[p].host.id.clone();
            let failed = ParentFailed { parent, reason: FailReason::Unreachable as i32 };
            self.send_message(child, peer_message::Message::ParentFailed(failed));
            self.ask_all(child);
        }
    }

    /// The scheduler took `id` from `n`'s parents (`DropParents`): the worker ends, what it
    /// asked goes back to the picker, and no one is blamed.
    fn drop_parent(&mut self, n: NodeId, id: &str) {
        let Some(&p) = self.ids.get(id) else { return };
        let Some(&c) = self.nodes[n].parents.get(&p) else { return };
        if self.unlink(c).is_some() {
            self.ask_all(n);
        }
    }

    /// Closes the child's side of connection `c`, once: its asked pieces go back to the
    /// picker, what the parent held no longer counts. Returns (child, parent) unless the
    /// connection was closed already or the child has left.
    fn unlink(&mut self, c: ConnId) -> Option<(NodeId, NodeId)> {
        if self.conns[c].closed {
            return None;
        }
        let child = self.conns[c].child;
        let p = self.conns[c].parent.expect("a parent connection");
        self.close_conn(c);
        if self.nodes[child].left {
            return None;
        }
        let w = &mut self.conns[c].w;
        let inflight: Vec<u32> = w.inflight.drain(..).map(|(i, _)| i).collect();
        let held: Vec<usize> = if w.seed { vec![] } else { (0..w.has.len()).filter(|i| w.has[*i]).collect() };
        let node = &mut self.nodes[child];
        if let Some(picker) = node.picker.as_mut() {
            inflight.into_iter().for_each(|i| picker.release(i));
        }
        for i in held {
            node.holders[i] = node.holders[i].saturating_sub(1);
        }
        if node.parents.get(&p) == Some(&c) {
            node.parents.remove(&p);
        }
        Some((child, p))
    }

    /// The host goes away: its connections break at both ends, its stream to the
    /// scheduler ends.
    pub(crate) fn leave(&mut self, n: NodeId) {
        if self.nodes[n].left || self.nodes[n].done.is_some() {
            return;
        }
        self.nodes[n].left = true;
        self.outstanding -= usize::from(self.nodes[n].counted);
        for c in self.nodes[n].children.clone() {
            self.stop_flow(c);
            let lat = self.sc.latency_s;
            self.after(lat, Event::ParentGone(c));
        }
        for c in self.nodes[n].parents.values().copied().collect::<Vec<_>>() {
            self.close_conn(c);
        }
        if let Some(c) = self.nodes[n].origin {
            self.close_conn(c);
        }
        self.send(n, ToSched::Unregister);
    }
}
