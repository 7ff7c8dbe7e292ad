//! The one retry policy of the daemon: capped exponential backoff with jitter (`backon`),
//! started over when the thing retried makes progress. Every loop that tries again (origin
//! reads, scheduler sessions, task registration, connecting to a parent) takes its pauses
//! from here, so a thousand daemons that lost the same scheduler do not knock on it in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

pub struct Backoff {
    policy: ExponentialBuilder,
    pauses: ExponentialBackoff,
}

impl Backoff {
    /// Pauses from `min` doubling to at most `max`, each plus a random part of itself;
    /// `times` pauses at most (then [`Backoff::next_pause`] says stop), unbounded when `None`.
    pub fn new(min: Duration, max: Duration, times: Option<usize>) -> Self {
        let policy = ExponentialBuilder::default().with_jitter().with_min_delay(min).with_max_delay(max);
        let policy = match times {
            Some(n) => policy.with_max_times(n),
            None => policy.without_max_times(),
        };
        Self { policy, pauses: policy.build() }
    }

    /// How long to wait before the next try; `None` once the tries are used up.
    pub fn next_pause(&mut self) -> Option<Duration> {
        self.pauses.next()
    }

    /// Progress was made: the next failure starts from the shortest pause again.
    pub fn reset(&mut self) {
        self.pauses = self.policy.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_stops_and_starts_over() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(400));
        let mut b = Backoff::new(min, max, Some(4));
        let pauses: Vec<Duration> = std::iter::from_fn(|| b.next_pause()).collect();
        assert_eq!(pauses.len(), 4);
        assert!(pauses[0] >= min && pauses[0] < min * 2, "{pauses:?}");
        // Jitter adds at most the pause itself on top of the cap.
        assert!(pauses.iter().all(|p| *p <= max * 2), "{pauses:?}");
        assert!(pauses[3] >= max, "{pauses:?}");
        b.reset();
        assert!(b.next_pause().is_some_and(|p| p < min * 2));
    }

    #[test]
    fn jitter_spreads_daemons_apart() {
        let firsts: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_millis(100), Duration::from_secs(1), None).next_pause().unwrap())
            .collect();
        assert!(firsts.len() > 1, "every daemon would retry at the same moment");
    }
}
