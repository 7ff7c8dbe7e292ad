//! The simulated daemons' side of the scheduler: registering, reporting, asking, and the
//! commands coming back, all through the real scheduler service in-process. A message
//! reaches the scheduler one latency after it is sent, and so does a command its host.

use ferry_proto::scheduler::{host_command, peer_message, Finished, NeedParents, PiecesFinished, Register};
use tokio::sync::mpsc;

use crate::sim::{Event, NodeId, Sim, ToSched, URL};

/// How often a daemon reports stored pieces (`ferry-daemon`'s session flush).
const FLUSH_S: f64 = 0.02;
/// Ticks between two watchdog rounds (500 ms).
const WATCHDOG_TICKS: u64 = 25;

impl Sim {
    /// A seed's host session opens at the start.
    pub(crate) fn join_seed(&mut self, n: NodeId) {
        let (tx, rx) = mpsc::unbounded_channel();
        match self.svc.join_host(Some(&self.nodes[n].host), tx) {
            Ok(_) => self.nodes[n].host_rx = Some(rx),
            Err(_) => self.sched_errors += 1,
        }
    }

    pub(crate) fn send(&mut self, n: NodeId, m: ToSched) {
        let lat = self.sc.latency_s;
        self.after(lat, Event::ToScheduler(n, Box::new(m)));
    }

    pub(crate) fn send_message(&mut self, n: NodeId, m: peer_message::Message) {
        self.send(n, ToSched::Message(m));
    }

    fn register_message(&self, n: NodeId) -> Register {
        let node = &self.nodes[n];
        Register {
            task_id: self.task.0.to_vec(),
            host: Some(node.host.clone()),
            url: URL.to_owned(),
            from_origin: node.from_origin,
            piece_size: self.layout.piece_size(),
            ..Default::default()
        }
    }

    /// A host asks for the file: its daemon registers the task.
    pub(crate) fn arrive(&mut self, n: NodeId) {
        if self.nodes[n].left {
            return;
        }
        self.nodes[n].last_progress = self.now;
        self.nodes[n].last_ask = self.now;
        let reg = self.register_message(n);
        self.send(n, ToSched::Register(reg));
        self.after(FLUSH_S, Event::Tick(n));
    }

    pub(crate) fn at_scheduler(&mut self, n: NodeId, m: ToSched) {
        let peer = ferry_types::HostId::new(self.nodes[n].host.id.clone()).expect("a valid host id");
        match m {
            ToSched::Register(reg) => {
                let (tx, rx) = mpsc::unbounded_channel();
                match self.svc.register(&reg, tx) {
                    Ok((_, _, session)) => {
                        self.nodes[n].session = Some(session);
                        self.nodes[n].cmd_rx = Some(rx);
                    }
                    Err(_) => self.sched_errors += 1,
                }
            }
            ToSched::Message(m) => {
                if self.svc.on_message(&self.task, &peer, m).is_err() {
                    self.sched_errors += 1;
                }
            }
            ToSched::Unregister => {
                if let Some(s) = self.nodes[n].session {
                    self.svc.unregister(&self.task, &peer, s);
                }
            }
        }
        // Commands leave in batches, at the next multiple of the latency: checking every
        // host's stream after every call would cost hosts x calls.
        if !self.drain_pending {
            self.drain_pending = true;
            let step = self.sc.latency_s.max(1e-6);
            self.at(((self.now / step).floor() + 1.0) * step, Event::SchedulerOut);
        }
    }

    /// Whatever the scheduler said to anyone since the last batch, on its way to them.
    pub(crate) fn collect_commands(&mut self) {
        self.drain_pending = false;
        let lat = self.sc.latency_s;
        let mut out = vec![];
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(rx) = node.cmd_rx.as_mut() {
                while let Ok(c) = rx.try_recv() {
                    match *c {
                        Ok(c) => out.extend(c.command.map(|c| Event::Command(i, Box::new(c)))),
                        Err(_) => self.sched_errors += 1,
                    }
                }
            }
            if let Some(rx) = node.host_rx.as_mut() {
                while let Ok(c) = rx.try_recv() {
                    match c {
                        Ok(c) => out.extend(c.command.map(|c| Event::HostCommand(i, Box::new(c)))),
                        Err(_) => self.sched_errors += 1,
                    }
                }
            }
        }
        for ev in out {
            self.after(lat, ev);
        }
    }

    pub(crate) fn on_host_command(&mut self, n: NodeId, c: host_command::Command) {
        if let host_command::Command::Fetch(_) = c {
            if self.nodes[n].left || self.nodes[n].session.is_some() {
                return;
            }
            // The seed opens the task as a peer reading the origin for everyone.
            self.nodes[n].from_origin = true;
            self.nodes[n].last_progress = self.now;
            let reg = self.register_message(n);
            self.send(n, ToSched::Register(reg));
            self.start_origin(n);
            self.after(FLUSH_S, Event::Tick(n));
        }
    }

    pub(crate) fn flush(&mut self, n: NodeId) {
        if !self.nodes[n].pending.is_empty() {
            let pieces = std::mem::take(&mut self.nodes[n].pending);
            self.send_message(n, peer_message::Message::Pieces(PiecesFinished { pieces }));
        }
    }

    /// Reports every 20 ms; twice a second the watchdog asks for parents when short of
    /// them, or for the origin after long without progress.
    pub(crate) fn tick(&mut self, n: NodeId) {
        if self.nodes[n].left {
            return;
        }
        self.flush(n);
        if self.nodes[n].done.is_some() {
            return;
        }
        self.nodes[n].ticks += 1;
        if self.nodes[n].ticks.is_multiple_of(WATCHDOG_TICKS) && self.nodes[n].origin.is_none() {
            let k = &self.sc.daemon;
            let node = &self.nodes[n];
            if self.now - node.last_progress >= k.back_to_source_after_s {
                self.nodes[n].last_progress = self.now;
                self.send_message(n, peer_message::Message::NeedParents(NeedParents { want_origin: true }));
            } else if node.parents.len() < k.want_parents && self.now - node.last_ask >= k.parent_refresh_s {
                self.nodes[n].last_ask = self.now;
                self.send_message(n, peer_message::Message::NeedParents(NeedParents { want_origin: false }));
            }
        }
        self.after(FLUSH_S, Event::Tick(n));
    }

    pub(crate) fn finished(&mut self, n: NodeId) {
        self.flush(n);
        self.send_message(n, peer_message::Message::Finished(Finished {}));
    }
}
