//! A task's lifecycle on this host: one enum, and one function that says which step leads
//! where. What entering a phase sets off (reporting completion, settling a failure) is done
//! by the driver in `TaskRun::enter`; this table is kept pure so its rules are tested alone.
//!
//! ```text
//!   Resolving --Layout--> Fetching --Complete--> Seeding --Park--> Parked
//!       |                     |                     |
//!       +--------End----------+---------End---------+--> Ended
//! ```
//!
//! A resumed task whose pieces are all on disk goes through `Fetching` to `Seeding` at once.
//! Which source brings pieces (parents, the origin, both) is not a phase: a fetching task
//! may read the origin and take pieces from parents at the same time.

/// Where a task is in its life on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The content's layout is not known yet: the store, the scheduler or the origin will say.
    Resolving,
    /// Layout known; pieces arriving from parents, the origin, or both.
    Fetching,
    /// Every piece held and verified: served to other peers, with a stream to the scheduler.
    Seeding,
    /// Still held and served, but the scheduler keeps this peer as a parent without a stream
    /// (`Park`), and the driver has ended: thousands of finished tasks cost no stream or
    /// driver each. A new driver starts if the task must register again.
    Parked,
    /// Failed, cancelled, evicted, or the daemon stopped. Nothing follows.
    Ended,
}

/// What moves a task on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The layout became known.
    Layout,
    /// Every piece is held and verified.
    Complete,
    /// The scheduler was told to keep this finished peer without a stream.
    Park,
    /// A failure this host cannot recover from, a cancel, an eviction, or shutdown.
    End,
}

impl Phase {
    /// The phase after `step`, or `None` when the step changes nothing here: a layout heard
    /// again, a completion seen again, anything after the end, or a completion before the
    /// layout (impossible: pieces exist only under a layout).
    pub fn after(self, step: Step) -> Option<Phase> {
        match (self, step) {
            (Phase::Ended | Phase::Parked, _) => None,
            (_, Step::End) => Some(Phase::Ended),
            (Phase::Seeding, Step::Park) => Some(Phase::Parked),
            (Phase::Resolving | Phase::Fetching, Step::Park) => None,
            (Phase::Resolving, Step::Layout) => Some(Phase::Fetching),
            (Phase::Fetching, Step::Complete) => Some(Phase::Seeding),
            (Phase::Resolving, Step::Complete) | (Phase::Fetching | Phase::Seeding, Step::Layout) => None,
            (Phase::Seeding, Step::Complete) => None,
        }
    }

    /// Pieces may still arrive and must be stored.
    pub fn fetching(self) -> bool {
        matches!(self, Phase::Resolving | Phase::Fetching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Phase; 5] = [Phase::Resolving, Phase::Fetching, Phase::Seeding, Phase::Parked, Phase::Ended];
    const STEPS: [Step; 4] = [Step::Layout, Step::Complete, Step::Park, Step::End];

    #[test]
    fn the_happy_path_is_resolving_fetching_seeding() {
        let p = Phase::Resolving.after(Step::Layout).unwrap();
        assert_eq!(p, Phase::Fetching);
        assert_eq!(p.after(Step::Complete), Some(Phase::Seeding));
    }

    #[test]
    fn every_live_phase_can_end_and_the_end_and_parking_are_final() {
        for p in [Phase::Resolving, Phase::Fetching, Phase::Seeding] {
            assert_eq!(p.after(Step::End), Some(Phase::Ended), "{p:?}");
        }
        for s in STEPS {
            assert_eq!(Phase::Ended.after(s), None);
            assert_eq!(Phase::Parked.after(s), None);
        }
    }

    #[test]
    fn only_a_seeding_task_parks() {
        assert_eq!(Phase::Seeding.after(Step::Park), Some(Phase::Parked));
        assert_eq!(Phase::Resolving.after(Step::Park), None);
        assert_eq!(Phase::Fetching.after(Step::Park), None);
    }

    #[test]
    fn repeated_or_premature_steps_change_nothing() {
        assert_eq!(Phase::Resolving.after(Step::Complete), None);
        assert_eq!(Phase::Fetching.after(Step::Layout), None);
        assert_eq!(Phase::Seeding.after(Step::Layout), None);
        assert_eq!(Phase::Seeding.after(Step::Complete), None);
    }

    #[test]
    fn no_step_leads_back() {
        let rank = |p: Phase| ALL.iter().position(|q| *q == p).unwrap();
        for p in ALL {
            for s in STEPS {
                if let Some(q) = p.after(s) {
                    assert!(rank(q) > rank(p), "{p:?} --{s:?}--> {q:?}");
                }
            }
        }
    }
}
