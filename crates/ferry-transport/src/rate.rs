//! A token bucket for bytes: a daemon's upload (or download) rate, shared by every
//! connection. A sender takes what it is about to send, going into debt if it must, and
//! sleeps until the debt is paid: over any stretch longer than the burst, the rate holds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most bytes that may go at once after an idle stretch.
    burst: f64,
    /// May be negative: bytes promised beyond the rate, paid by waiting.
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `rate` bytes per second, bursts of a tenth of a second's worth (at least 64 KiB).
    pub fn new(rate: u64) -> Self {
        let (rate, burst) = Self::shape(rate);
        Self { bucket: Mutex::new(Bucket { rate, burst, tokens: burst, at: Instant::now() }) }
    }

    /// No limit until [`set_rate`](Self::set_rate) sets one.
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    fn shape(rate: u64) -> (f64, f64) {
        let rate = rate.max(1) as f64;
        (rate, (rate / 10.0).max(64.0 * 1024.0))
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bucket().rate as u64
    }

    /// Changes the rate from now on (`u64::MAX`: no limit); debt already taken stays.
    pub fn set_rate(&self, rate: u64) {
        let (rate, burst) = Self::shape(rate);
        let mut b = self.bucket();
        b.rate = rate;
        b.burst = burst;
        b.tokens = b.tokens.min(burst);
    }

    /// How long the caller must wait before sending `n` bytes, having taken them.
    fn take(&self, n: u64, now: Instant) -> Duration {
        let mut b = self.bucket();
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.burst);
        b.at = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / b.rate)
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn acquire(&self, n: u64) {
        let wait = self.take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_many_takes() {
        let r = RateLimit::new(1_000_000);
        let t0 = Instant::now();
        // 10 MB in 100 KB steps, each taken when the previous wait is over.
        let mut now = t0;
        for _ in 0..100 {
            now += r.take(100_000, now);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        // The first 100 KB of burst go at once.
        assert!((secs - 9.9).abs() < 0.01, "{secs}");
    }

    #[test]
    fn a_changed_rate_holds_from_then_on() {
        let r = RateLimit::unlimited();
        let t0 = Instant::now();
        assert_eq!(r.take(1 << 30, t0), Duration::ZERO, "no limit");
        r.set_rate(1_000_000);
        let mut now = t0;
        for _ in 0..50 {
            now += r.take(100_000, now);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 4.9).abs() < 0.01, "{secs}");
    }

    #[test]
    fn an_idle_bucket_allows_only_its_burst() {
        let r = RateLimit::new(1_000_000);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(r.take(100_000, later), Duration::ZERO);
        let w = r.take(100_000, later);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
    }
}
