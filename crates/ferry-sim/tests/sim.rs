//! The simulator end to end at small sizes: runs repeat bit for bit, and every scenario
//! kind ends with every host that stayed holding the file, the origin read as the
//! scheduler allowed.

use ferry_sim::{run, Arrival, Scenario};

fn small() -> Scenario {
    Scenario { hosts: 24, size: 16 << 20, link_bps: 100e6, origin_bps: 100e6, ..Default::default() }
}

#[test]
fn the_same_seed_gives_the_same_run_twice_and_another_seed_another() {
    let sc = Scenario { churn: 0.2, arrival: Arrival::Staggered(0.5), slow_fraction: 0.1, slow_bps: 20e6, ..small() };
    let a = run(&sc);
    let b = run(&sc);
    assert_eq!(a, b, "same seed, same result");
    assert!(a.events > 10_000, "a real run: {} events", a.events);
    let c = run(&Scenario { seed: 2, ..sc });
    assert_ne!(a.hosts, c.hosts, "another seed draws other arrivals and choices");
}

#[test]
fn hosts_arriving_together_all_finish_near_the_bound_with_one_origin_read() {
    let r = run(&small());
    assert_eq!(r.scheduler_errors, 0);
    assert_eq!((r.finished, r.stayed), (24, 24));
    assert_eq!(r.origin_copies, 1.0, "the seed reads the origin once; nobody else does");
    // Links carry payload at less than their nominal rate, the bound assumes all of it: no
    // run can beat the bound.
    assert!(r.efficiency > 0.25 && r.efficiency < 1.0, "efficiency {}", r.efficiency);
    assert!(r.decisions_parents >= 23, "every peer was given parents: {}", r.decisions_parents);
}

#[test]
fn churn_staggering_and_slow_hosts_still_end_with_every_stayer_done() {
    let sc = Scenario { churn: 0.25, arrival: Arrival::Staggered(1.0), slow_fraction: 0.2, slow_bps: 20e6, ..small() };
    let r = run(&sc);
    assert_eq!(r.scheduler_errors, 0);
    assert!(r.hosts.iter().any(|h| h.left), "someone left");
    assert_eq!(r.finished, r.stayed);
    assert!(r.makespan_s.is_finite());
}

#[test]
fn seeds_on_their_own_hosts_and_no_seed_at_all() {
    let own = run(&Scenario { seeds: 2, seed_on_host: false, ..small() });
    assert_eq!((own.finished, own.stayed), (24, 24));
    assert_eq!(own.origin_copies, 1.0, "one seed fetch per task however many seeds");
    let none = run(&Scenario { seeds: 0, ..small() });
    assert_eq!((none.finished, none.stayed), (24, 24));
    assert_eq!(none.origin_copies, 1.0, "without a seed the back-to-source budget (1) reads once");
}
