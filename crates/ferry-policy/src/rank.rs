//! Parent ranking for one child peer.
//!
//! Filters (a candidate is dropped when any holds):
//! - it is on the child's own host;
//! - the child blocklisted it (it failed the child or sent a bad piece);
//! - it is in a bad state (failed or leaving);
//! - it cannot feed anyone (no pieces, no origin, no parent of its own);
//! - it already feeds as many children in this task as it may (`seed_max_children` for a
//!   seed, `peer_max_children` for others): a seed that feeds everyone sends every piece
//!   once per peer, and its upload, not the swarm's, becomes the limit;
//! - the edge child -> candidate would close a cycle in the task's download graph.
//!
//! Score (higher is better), each term in 0..=1 and weighted by [`Weights`]:
//! pieces the candidate holds, its free upload slots, its recently measured throughput
//! (relative to the best candidate), locality (same rack > same zone > elsewhere), and
//! whether it is a seed. Ties break by host id so a ranking is deterministic.

use ferry_types::HostId;

use crate::Dag;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Downloading (it may hold no piece yet, but will: children follow it by `Have`).
    Running,
    /// Holds the whole task.
    Succeeded,
    Failed,
    Leaving,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub zone: String,
    pub rack: String,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub host: HostId,
    pub state: PeerState,
    pub pieces_held: u32,
    pub is_seed: bool,
    pub upload_slots: u32,
    pub uploads_active: u32,
    /// Bytes per second recently measured by children of this parent, if any.
    pub throughput: Option<u64>,
    /// Children it already feeds in this task.
    pub children: u32,
    /// It holds pieces, reads the origin, or has a parent of its own: it has or will have
    /// something to give. A peer with none of these would leave its children waiting forever.
    pub feeds: bool,
    pub locality: Locality,
}

#[derive(Clone, Debug)]
pub struct ChildView<'a> {
    pub host: &'a HostId,
    pub locality: &'a Locality,
    pub blocklist: &'a [HostId],
    /// Pieces in the task, when known.
    pub piece_count: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub pieces: f64,
    pub free_slots: f64,
    pub throughput: f64,
    pub locality: f64,
    pub seed: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self { pieces: 0.3, free_slots: 0.25, throughput: 0.2, locality: 0.15, seed: 0.1 }
    }
}

#[derive(Clone, Debug)]
pub struct RankOptions {
    pub max_parents: usize,
    pub seed_max_children: u32,
    pub peer_max_children: u32,
    /// Refuse edges that close a cycle in the task's download graph (see `Dag`). Off by
    /// default: two peers then trade pieces both ways, as BitTorrent peers do, and a piece a
    /// seed hands to one peer reaches every other peer in one hop.
    pub avoid_cycles: bool,
    pub weights: Weights,
}

impl Default for RankOptions {
    fn default() -> Self {
        Self {
            max_parents: 16,
            seed_max_children: 16,
            peer_max_children: 16,
            avoid_cycles: false,
            weights: Weights::default(),
        }
    }
}

fn locality_score(child: &Locality, c: &Locality) -> f64 {
    let same_zone = !child.zone.is_empty() && child.zone == c.zone;
    let same_rack = same_zone && !child.rack.is_empty() && child.rack == c.rack;
    match (same_rack, same_zone) {
        (true, _) => 1.0,
        (false, true) => 0.5,
        _ => 0.0,
    }
}

/// True when the candidate may serve this child at all.
pub fn admissible(child: &ChildView<'_>, c: &Candidate, dag: &Dag, opts: &RankOptions) -> bool {
    c.host != *child.host
        && c.children < child_limit(c, opts)
        && !child.blocklist.contains(&c.host)
        && matches!(c.state, PeerState::Running | PeerState::Succeeded)
        && c.feeds
        && !(opts.avoid_cycles && dag.would_cycle(child.host, &c.host))
}

fn child_limit(c: &Candidate, opts: &RankOptions) -> u32 {
    if c.is_seed {
        opts.seed_max_children
    } else {
        opts.peer_max_children
    }
}

fn score(child: &ChildView<'_>, c: &Candidate, best_throughput: u64, opts: &RankOptions) -> f64 {
    let w = &opts.weights;
    let pieces = match (child.piece_count, c.state) {
        (_, PeerState::Succeeded) => 1.0,
        (Some(n), _) if n > 0 => (c.pieces_held.min(n) as f64) / n as f64,
        _ => 0.0,
    };
    // Free capacity is the tighter of what the host reports (all its tasks, a second old) and
    // how many children it already has in this task (exact, now). The second spreads a swarm
    // that arrives at once: without it every peer picks the same few parents, and measured at
    // 16 hosts, 7 of them uploaded nothing.
    let host_free = if c.upload_slots == 0 {
        0.0
    } else {
        c.upload_slots.saturating_sub(c.uploads_active) as f64 / c.upload_slots as f64
    };
    let limit = child_limit(c, opts).max(1);
    let task_free = limit.saturating_sub(c.children) as f64 / limit as f64;
    let free_slots = host_free.min(task_free);
    let throughput = match c.throughput {
        Some(t) if best_throughput > 0 => t as f64 / best_throughput as f64,
        // Unmeasured parents get the benefit of the doubt, so new peers get tried.
        _ => 0.5,
    };
    w.pieces * pieces
        + w.free_slots * free_slots
        + w.throughput * throughput
        + w.locality * locality_score(child.locality, &c.locality)
        + w.seed * if c.is_seed { 1.0 } else { 0.0 }
}

/// Ranks candidates for a child, best first, at most `opts.max_parents` of them.
pub fn rank_parents<'c>(
    child: &ChildView<'_>,
    candidates: &'c [Candidate],
    dag: &Dag,
    opts: &RankOptions,
) -> Vec<&'c Candidate> {
    let best = candidates.iter().filter_map(|c| c.throughput).max().unwrap_or(0);
    let mut scored: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| admissible(child, c, dag, opts))
        .map(|c| (score(child, c, best, opts), c))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.host.cmp(&b.1.host)));
    scored.into_iter().take(opts.max_parents).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    fn cand(name: &str) -> Candidate {
        Candidate {
            host: h(name),
            state: PeerState::Running,
            pieces_held: 0,
            is_seed: false,
            upload_slots: 8,
            uploads_active: 0,
            throughput: None,
            feeds: true,
            children: 0,
            locality: Locality::default(),
        }
    }

    fn rank(child: &str, cs: &[Candidate], dag: &Dag, blocklist: &[HostId]) -> Vec<String> {
        let loc = Locality { zone: "z1".into(), rack: "r1".into() };
        let me = h(child);
        let view = ChildView { host: &me, locality: &loc, blocklist, piece_count: Some(10) };
        rank_parents(&view, cs, dag, &RankOptions::default()).into_iter().map(|c| c.host.to_string()).collect()
    }

    #[test]
    fn excludes_own_host() {
        assert_eq!(rank("a", &[cand("a"), cand("b")], &Dag::default(), &[]), ["b"]);
    }

    #[test]
    fn excludes_blocklisted() {
        assert_eq!(rank("a", &[cand("b"), cand("c")], &Dag::default(), &[h("b")]), ["c"]);
    }

    #[test]
    fn excludes_bad_states() {
        let mut failed = cand("b");
        failed.state = PeerState::Failed;
        let mut leaving = cand("c");
        leaving.state = PeerState::Leaving;
        let mut done = cand("d");
        done.state = PeerState::Succeeded;
        assert_eq!(rank("a", &[failed, leaving, done], &Dag::default(), &[]), ["d"]);
    }

    #[test]
    fn excludes_peers_that_cannot_feed() {
        let mut empty = cand("b");
        empty.feeds = false;
        assert_eq!(rank("a", &[empty, cand("c")], &Dag::default(), &[]), ["c"]);
    }

    #[test]
    fn excludes_parents_at_their_child_limit() {
        let mut seed = cand("s");
        seed.is_seed = true;
        seed.children = RankOptions::default().seed_max_children;
        let mut full = cand("c");
        full.children = RankOptions::default().peer_max_children;
        let mut peer = cand("b");
        peer.children = RankOptions::default().peer_max_children - 1;
        assert_eq!(rank("a", &[seed, full, peer], &Dag::default(), &[]), ["b"]);
    }

    #[test]
    fn avoids_cycles_in_dag_mode() {
        let mut dag = Dag::default();
        dag.add_edge(&h("b"), &h("a"));
        dag.add_edge(&h("c"), &h("b"));
        let loc = Locality::default();
        let me = h("a");
        let view = ChildView { host: &me, locality: &loc, blocklist: &[], piece_count: Some(10) };
        let opts = RankOptions { avoid_cycles: true, ..Default::default() };
        let candidates = [cand("b"), cand("c"), cand("d")];
        let ranked: Vec<_> =
            rank_parents(&view, &candidates, &dag, &opts).into_iter().map(|c| c.host.as_str()).collect();
        assert_eq!(ranked, ["d"]);
    }

    #[test]
    fn mesh_by_default_lets_peers_trade_both_ways() {
        let mut dag = Dag::default();
        dag.add_edge(&h("b"), &h("a"));
        assert_eq!(rank("a", &[cand("b")], &dag, &[]), ["b"]);
    }

    #[test]
    fn prefers_more_pieces() {
        let mut rich = cand("b");
        rich.pieces_held = 9;
        assert_eq!(rank("a", &[cand("c"), rich], &Dag::default(), &[]), ["b", "c"]);
    }

    #[test]
    fn prefers_free_upload_slots() {
        let mut busy = cand("b");
        busy.uploads_active = 8;
        assert_eq!(rank("a", &[busy, cand("c")], &Dag::default(), &[]), ["c", "b"]);
    }

    #[test]
    fn prefers_parents_with_fewer_children_in_the_task() {
        let mut crowded = cand("b");
        crowded.children = 6;
        assert_eq!(rank("a", &[crowded, cand("c")], &Dag::default(), &[]), ["c", "b"]);
    }

    #[test]
    fn prefers_measured_throughput() {
        let (mut fast, mut slow) = (cand("c"), cand("b"));
        fast.throughput = Some(1000);
        slow.throughput = Some(10);
        assert_eq!(rank("a", &[slow, fast], &Dag::default(), &[]), ["c", "b"]);
    }

    #[test]
    fn prefers_same_rack_then_same_zone() {
        let mut rack = cand("d");
        rack.locality = Locality { zone: "z1".into(), rack: "r1".into() };
        let mut zone = cand("c");
        zone.locality = Locality { zone: "z1".into(), rack: "r9".into() };
        assert_eq!(rank("a", &[cand("b"), zone, rack], &Dag::default(), &[]), ["d", "c", "b"]);
    }

    #[test]
    fn prefers_seed_when_otherwise_equal() {
        let mut seed = cand("c");
        seed.is_seed = true;
        assert_eq!(rank("a", &[cand("b"), seed], &Dag::default(), &[]), ["c", "b"]);
    }

    #[test]
    fn returns_at_most_max_parents() {
        let cs: Vec<_> = (0..RankOptions::default().max_parents + 5).map(|i| cand(&format!("p{i}"))).collect();
        assert_eq!(rank("a", &cs, &Dag::default(), &[]).len(), RankOptions::default().max_parents);
    }

    proptest! {
        #[test]
        fn never_returns_own_host(
            n in 1usize..20,
            me in 0usize..20,
            held in proptest::collection::vec(0u32..10, 20),
            seeds in proptest::collection::vec(any::<bool>(), 20),
        ) {
            let cs: Vec<_> = (0..n).map(|i| {
                let mut c = cand(&format!("p{i}"));
                c.pieces_held = held[i];
                c.is_seed = seeds[i];
                c
            }).collect();
            let child = format!("p{me}");
            prop_assert!(!rank(&child, &cs, &Dag::default(), &[]).contains(&child));
        }
    }
}
