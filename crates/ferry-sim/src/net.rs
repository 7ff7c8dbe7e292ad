//! Links and the max-min fair share of them.
//!
//! Every node has an uplink and a downlink with a capacity in bytes per second; a transfer
//! from A to B crosses A's uplink and B's downlink. Concurrent transfers share links max-min
//! fairly (what long-lived TCP flows on capped links approach): no transfer can go faster
//! without slowing one that is no faster than it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub type LinkId = usize;

/// Max-min fair rates of `flows` (each an (uplink, downlink) pair) over links of capacity
/// `caps`, by progressive filling: the link with the smallest fair share fixes the rate of
/// every flow still open on it, those flows leave the other links they cross, repeat.
/// `O((flows + links) log links)`.
pub fn max_min(caps: &[f64], flows: &[(LinkId, LinkId)]) -> Vec<f64> {
    let links = caps.len();
    let mut count = vec![0u32; links];
    for &(u, d) in flows {
        count[u] += 1;
        count[d] += 1;
    }
    // Flows of each link, packed (CSR).
    let mut start = vec![0usize; links + 1];
    for l in 0..links {
        start[l + 1] = start[l] + count[l] as usize;
    }
    let mut fill = start.clone();
    let mut on_link = vec![0usize; start[links]];
    for (f, &(u, d)) in flows.iter().enumerate() {
        for l in [u, d] {
            on_link[fill[l]] = f;
            fill[l] += 1;
        }
    }
    let mut remaining = caps.to_vec();
    let mut version = vec![0u32; links];
    // Shares are non-negative, so their bit patterns order like the numbers.
    let share = |rem: f64, n: u32| (rem.max(0.0) / n as f64).to_bits();
    let mut heap: BinaryHeap<Reverse<(u64, LinkId, u32)>> =
        (0..links).filter(|l| count[*l] > 0).map(|l| Reverse((share(remaining[l], count[l]), l, 0))).collect();
    let mut rate = vec![f64::NAN; flows.len()];
    while let Some(Reverse((s, l, v))) = heap.pop() {
        if v != version[l] || count[l] == 0 {
            continue;
        }
        let s = f64::from_bits(s);
        for &f in &on_link[start[l]..start[l + 1]] {
            if !rate[f].is_nan() {
                continue;
            }
            rate[f] = s;
            let (u, d) = flows[f];
            let other = if u == l { d } else { u };
            if other == l {
                continue;
            }
            remaining[other] -= s;
            count[other] -= 1;
            version[other] += 1;
            if count[other] > 0 {
                heap.push(Reverse((share(remaining[other], count[other]), other, version[other])));
            }
        }
        count[l] = 0;
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9 * y.abs().max(1.0))
    }

    #[test]
    fn flows_on_one_link_share_it_equally() {
        // Links: 0 = A up (10), 1 = B down (100), 2 = C down (100).
        assert!(close(&max_min(&[10.0, 100.0, 100.0], &[(0, 1), (0, 2)]), &[5.0, 5.0]));
    }

    #[test]
    fn capacity_a_flow_cannot_use_goes_to_the_others() {
        // A up 10 feeds B (down 2) and C (down 100): B takes 2, C the other 8.
        assert!(close(&max_min(&[10.0, 2.0, 100.0], &[(0, 1), (0, 2)]), &[2.0, 8.0]));
    }

    #[test]
    fn the_classic_parking_lot() {
        // Uplinks 0 (cap 6) and 1 (cap 9); downlinks 2 (cap 4) and 3 (unbounded). Flows:
        // 0->2, 0->3, 1->2, 1->3. Link 2 is the bottleneck: 2 each; then 0 has 4 left for
        // one flow, 1 has 7.
        let r = max_min(&[6.0, 9.0, 4.0, f64::INFINITY], &[(0, 2), (0, 3), (1, 2), (1, 3)]);
        assert!(close(&r, &[2.0, 4.0, 2.0, 7.0]), "{r:?}");
    }

    #[test]
    fn no_link_is_oversubscribed_and_every_flow_is_bottlenecked() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let caps: Vec<f64> = (0..40).map(|_| rng.gen_range(1.0..100.0)).collect();
        let flows: Vec<(usize, usize)> = (0..300).map(|_| (rng.gen_range(0..20), rng.gen_range(20..40))).collect();
        let r = max_min(&caps, &flows);
        let mut used = vec![0.0; caps.len()];
        for (f, &(u, d)) in flows.iter().enumerate() {
            used[u] += r[f];
            used[d] += r[f];
        }
        for (l, c) in caps.iter().enumerate() {
            assert!(used[l] <= c * (1.0 + 1e-9), "link {l}: {} > {c}", used[l]);
        }
        // Max-min: each flow crosses a saturated link on which it is among the fastest.
        for (f, &(u, d)) in flows.iter().enumerate() {
            let bottleneck = [u, d].into_iter().any(|l| {
                let full = used[l] >= caps[l] * (1.0 - 1e-9);
                full && flows.iter().enumerate().filter(|(_, x)| x.0 == l || x.1 == l).all(|(g, _)| r[g] <= r[f] + 1e-9)
            });
            assert!(bottleneck, "flow {f} could go faster");
        }
    }
}
