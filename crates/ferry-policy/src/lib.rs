//! Ferry's scheduling policy, as pure code.
//!
//! Everything here takes plain data and returns a decision: no clock, no IO, no async and no
//! randomness but an RNG passed in. The scheduler service feeds it the state it keeps; a
//! simulator could feed it 10,000 synthetic hosts. The invariants are written beside the
//! rules they belong to and each rule has a test.

mod budget;
mod decide;
mod grace;
mod graph;
mod picker;
mod rank;

pub use budget::BackToSourceBudget;
pub use decide::{decide, pick_seed, Decision, DecisionInput, SeedCandidate};
pub use grace::seed_only_mask;
pub use graph::Dag;
pub use picker::{Offer, PiecePicker, PIECES_IN_FLIGHT};
pub use rank::{rank_parents, Candidate, ChildView, Locality, PeerState, RankOptions, Weights};
