//! What a peer asking for parents is told.
//!
//! Order of preference, first that applies:
//! 1. the peer asked for origin after waiting without progress, and the task's
//!    back-to-source budget allows -> `BackToSource` (even when parents exist: parents that
//!    cannot feed it, e.g. pieces nobody can verify, must not keep it waiting forever);
//! 2. ranked parents exist -> `Parents`;
//! 3. a seed was already asked to fetch this task -> `WaitForSeed` (one fetch per task,
//!    however many peers ask at once);
//! 4. a live seed exists -> `AskSeed` (the caller records the request, then waits);
//! 5. no seed: the budget allows -> `BackToSource`, else `WaitForSeed`.
//!
//! While the origin host is at its cluster-wide cap of concurrent reads (`origin_full`),
//! nothing that reads it is decided (no `BackToSource`, no `AskSeed`): the peer waits.

use ferry_types::{HostId, TaskId};

use crate::BackToSourceBudget;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Parents,
    WaitForSeed,
    AskSeed(HostId),
    BackToSource,
}

pub struct DecisionInput<'a> {
    pub has_parents: bool,
    pub want_origin: bool,
    pub seed_requested: bool,
    pub seeds: &'a [SeedCandidate],
    pub task: &'a TaskId,
    /// The request's origin host already has as many reads under way as it may.
    pub origin_full: bool,
}

#[derive(Clone, Debug)]
pub struct SeedCandidate {
    pub host: HostId,
    pub uploads_active: u32,
    pub upload_slots: u32,
}

pub fn decide(input: &DecisionInput<'_>, budget: &mut BackToSourceBudget) -> Decision {
    if input.origin_full {
        return if input.has_parents { Decision::Parents } else { Decision::WaitForSeed };
    }
    if input.want_origin && budget.try_grant() {
        return Decision::BackToSource;
    }
    if input.has_parents {
        return Decision::Parents;
    }
    if input.seed_requested {
        return Decision::WaitForSeed;
    }
    if let Some(seed) = pick_seed(input.seeds, input.task) {
        return Decision::AskSeed(seed);
    }
    if budget.try_grant() {
        Decision::BackToSource
    } else {
        Decision::WaitForSeed
    }
}

/// The least loaded seed; among equals, the one the task hashes to (so repeated decisions for
/// one task agree).
pub fn pick_seed(seeds: &[SeedCandidate], task: &TaskId) -> Option<HostId> {
    let load = |s: &SeedCandidate| s.uploads_active as f64 / s.upload_slots.max(1) as f64;
    let tie = |s: &SeedCandidate| {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in task.0.iter().chain(s.host.as_str().as_bytes()) {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
        h
    };
    seeds.iter().min_by(|a, b| load(a).total_cmp(&load(b)).then_with(|| tie(a).cmp(&tie(b)))).map(|s| s.host.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str, active: u32) -> SeedCandidate {
        SeedCandidate { host: HostId::new(name).unwrap(), uploads_active: active, upload_slots: 10 }
    }

    fn input<'a>(seeds: &'a [SeedCandidate], task: &'a TaskId) -> DecisionInput<'a> {
        DecisionInput { has_parents: false, want_origin: false, seed_requested: false, seeds, task, origin_full: false }
    }

    const T: TaskId = TaskId([1; 32]);

    #[test]
    fn parents_win() {
        let mut b = BackToSourceBudget::new(1);
        let i = DecisionInput { has_parents: true, ..input(&[], &T) };
        assert_eq!(decide(&i, &mut b), Decision::Parents);
        assert_eq!(b.granted(), 0);
    }

    #[test]
    fn a_starving_peer_may_go_to_origin_even_with_parents() {
        let mut b = BackToSourceBudget::new(1);
        let i = DecisionInput { has_parents: true, want_origin: true, ..input(&[], &T) };
        assert_eq!(decide(&i, &mut b), Decision::BackToSource);
        assert_eq!(decide(&i, &mut b), Decision::Parents);
    }

    #[test]
    fn asks_one_seed_once_then_waits() {
        let seeds = [seed("s1", 0)];
        let mut b = BackToSourceBudget::new(1);
        assert_eq!(decide(&input(&seeds, &T), &mut b), Decision::AskSeed(seeds[0].host.clone()));
        let again = DecisionInput { seed_requested: true, ..input(&seeds, &T) };
        assert_eq!(decide(&again, &mut b), Decision::WaitForSeed);
        assert_eq!(b.granted(), 0);
    }

    #[test]
    fn without_seed_back_to_source_is_bounded() {
        let mut b = BackToSourceBudget::new(2);
        let i = input(&[], &T);
        assert_eq!(decide(&i, &mut b), Decision::BackToSource);
        assert_eq!(decide(&i, &mut b), Decision::BackToSource);
        assert_eq!(decide(&i, &mut b), Decision::WaitForSeed);
    }

    #[test]
    fn waiting_peer_may_go_to_origin_within_budget() {
        let seeds = [seed("s1", 0)];
        let mut b = BackToSourceBudget::new(1);
        let i = DecisionInput { want_origin: true, seed_requested: true, ..input(&seeds, &T) };
        assert_eq!(decide(&i, &mut b), Decision::BackToSource);
        assert_eq!(decide(&i, &mut b), Decision::WaitForSeed);
    }

    #[test]
    fn picks_least_loaded_seed() {
        let seeds = [seed("s1", 9), seed("s2", 1)];
        assert_eq!(pick_seed(&seeds, &T).unwrap().as_str(), "s2");
        assert_eq!(pick_seed(&[], &T), None);
    }

    #[test]
    fn a_full_origin_is_never_read_more() {
        let seeds = [seed("s", 0)];
        let mut b = BackToSourceBudget::new(4);
        let full = DecisionInput { origin_full: true, want_origin: true, ..input(&seeds, &T) };
        assert_eq!(decide(&full, &mut b), Decision::WaitForSeed, "no seed asked, no grant");
        assert_eq!(b.granted(), 0);
        let with_parents = DecisionInput { has_parents: true, ..full };
        assert_eq!(decide(&with_parents, &mut b), Decision::Parents);
    }
}
