//! The download graph of one task: an edge child -> parent for every parent a child was given.
//!
//! Invariant: the graph stays acyclic. A cycle would let two peers wait on each other for
//! pieces neither can get, and makes "who fed whom" impossible to reason about when a peer
//! fails. `would_cycle` is checked before every edge is added.

use std::collections::{BTreeMap, BTreeSet};

use ferry_types::HostId;

#[derive(Clone, Debug, Default)]
pub struct Dag {
    parents: BTreeMap<HostId, BTreeSet<HostId>>,
    /// The same edges the other way (parent -> children), so a parent's load and a peer's
    /// departure cost its own edges, not a scan of every peer's.
    children: BTreeMap<HostId, BTreeSet<HostId>>,
}

impl Dag {
    /// True when `parent` already (transitively) downloads from `child`, or is `child`.
    pub fn would_cycle(&self, child: &HostId, parent: &HostId) -> bool {
        if child == parent {
            return true;
        }
        let mut stack = vec![parent];
        let mut seen = BTreeSet::new();
        while let Some(h) = stack.pop() {
            if h == child {
                return true;
            }
            if seen.insert(h) {
                if let Some(ps) = self.parents.get(h) {
                    stack.extend(ps.iter());
                }
            }
        }
        false
    }

    /// Adds the edge unless it would close a cycle; returns whether it was added.
    pub fn add_edge(&mut self, child: &HostId, parent: &HostId) -> bool {
        if self.would_cycle(child, parent) {
            return false;
        }
        self.add_edge_unchecked(child, parent);
        true
    }

    /// Adds the edge even if it closes a cycle (cycle avoidance switched off).
    pub fn add_edge_unchecked(&mut self, child: &HostId, parent: &HostId) {
        if self.parents.entry(child.clone()).or_default().insert(parent.clone()) {
            self.children.entry(parent.clone()).or_default().insert(child.clone());
        }
    }

    pub fn remove_edge(&mut self, child: &HostId, parent: &HostId) {
        if let Some(ps) = self.parents.get_mut(child) {
            if ps.remove(parent) {
                unlink(&mut self.children, parent, child);
            }
        }
    }

    /// A child that finished needs no parents: its edges stop counting against their limits.
    pub fn clear_parents(&mut self, child: &HostId) {
        for p in self.parents.remove(child).unwrap_or_default() {
            unlink(&mut self.children, &p, child);
        }
    }

    /// Drops a peer and every edge that touches it.
    pub fn remove_node(&mut self, host: &HostId) {
        self.clear_parents(host);
        for c in self.children.remove(host).unwrap_or_default() {
            if let Some(ps) = self.parents.get_mut(&c) {
                ps.remove(host);
            }
        }
    }

    pub fn children_of(&self, parent: &HostId) -> u32 {
        self.children.get(parent).map_or(0, |c| c.len() as u32)
    }

    pub fn parents_of(&self, child: &HostId) -> impl Iterator<Item = &HostId> {
        self.parents.get(child).into_iter().flatten()
    }

    /// Whether `a` and `b` feed each other (an edge each way).
    pub fn trade(&self, a: &HostId, b: &HostId) -> bool {
        let has = |c: &HostId, p: &HostId| self.parents.get(c).is_some_and(|ps| ps.contains(p));
        has(a, b) && has(b, a)
    }
}

/// Removes `child` from `parent`'s children, and `parent`'s entry once it has none.
fn unlink(children: &mut BTreeMap<HostId, BTreeSet<HostId>>, parent: &HostId, child: &HostId) {
    if let Some(cs) = children.get_mut(parent) {
        cs.remove(child);
        if cs.is_empty() {
            children.remove(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    #[test]
    fn refuses_direct_and_transitive_cycles() {
        let mut g = Dag::default();
        assert!(g.add_edge(&h("b"), &h("a")));
        assert!(g.add_edge(&h("c"), &h("b")));
        assert!(g.would_cycle(&h("a"), &h("b")));
        assert!(g.would_cycle(&h("a"), &h("c")));
        assert!(!g.add_edge(&h("a"), &h("c")));
        assert!(g.would_cycle(&h("a"), &h("a")));
        assert!(!g.would_cycle(&h("c"), &h("a")));
    }

    #[test]
    fn removing_a_node_frees_its_edges() {
        let mut g = Dag::default();
        g.add_edge(&h("b"), &h("a"));
        g.add_edge(&h("c"), &h("b"));
        g.remove_node(&h("b"));
        assert!(!g.would_cycle(&h("a"), &h("c")));
        assert_eq!(g.parents_of(&h("c")).count(), 0);
    }

    /// The children index always says what a scan of every child's parents would.
    #[test]
    fn children_counts_follow_every_change() {
        let names: Vec<HostId> = (0..12).map(|i| h(&format!("p{i}"))).collect();
        let mut g = Dag::default();
        let mut x: u64 = 42;
        let mut next = |n: usize| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize % n
        };
        for _ in 0..5000 {
            let (a, b) = (names[next(12)].clone(), names[next(12)].clone());
            match next(5) {
                0 | 1 => g.add_edge_unchecked(&a, &b),
                2 => g.remove_edge(&a, &b),
                3 => g.clear_parents(&a),
                _ => g.remove_node(&a),
            }
            for p in &names {
                let scanned = g.parents.values().filter(|ps| ps.contains(p)).count() as u32;
                assert_eq!(g.children_of(p), scanned, "{p}");
            }
        }
    }
}
