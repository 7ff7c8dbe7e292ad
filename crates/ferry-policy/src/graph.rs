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
        self.parents.entry(child.clone()).or_default().insert(parent.clone());
        true
    }

    /// Adds the edge even if it closes a cycle (cycle avoidance switched off).
    pub fn add_edge_unchecked(&mut self, child: &HostId, parent: &HostId) {
        self.parents.entry(child.clone()).or_default().insert(parent.clone());
    }

    pub fn remove_edge(&mut self, child: &HostId, parent: &HostId) {
        if let Some(ps) = self.parents.get_mut(child) {
            ps.remove(parent);
        }
    }

    /// A child that finished needs no parents: its edges stop counting against their limits.
    pub fn clear_parents(&mut self, child: &HostId) {
        self.parents.remove(child);
    }

    /// Drops a peer and every edge that touches it.
    pub fn remove_node(&mut self, host: &HostId) {
        self.parents.remove(host);
        for ps in self.parents.values_mut() {
            ps.remove(host);
        }
    }

    pub fn children_of(&self, parent: &HostId) -> u32 {
        self.parents.values().filter(|ps| ps.contains(parent)).count() as u32
    }

    pub fn parents_of(&self, child: &HostId) -> impl Iterator<Item = &HostId> {
        self.parents.get(child).into_iter().flatten()
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
}
