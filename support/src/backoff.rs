//! Exponential backoff with jitter, so a fleet of agents that lost an
//! aggregator (or kube-apiserver) at the same instant does not come back in
//! lockstep. The one backoff of the workspace: gRPC reconnects use it
//! directly, kube-runtime's watchers as a [`WatchBackoff`].
use std::time::Duration;

use tokio::time::Instant;

pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self {
            base,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay: uniform in [ceiling/2, ceiling], where the ceiling
    /// doubles per attempt up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: enough randomness for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }
}

/// [`Backoff`] for a kube-runtime watcher stream.
///
/// The stream resets its backoff on every event that is not an error, and
/// the watcher emits one (`Init`) before each attempt to list: with a plain
/// reset, lists refused again and again (a 429, a 403, kube-apiserver
/// restarting) would be retried at the first, shortest pause forever. Here a
/// reset counts only once no pause was needed for twice the longest one.
pub struct WatchBackoff {
    backoff: Backoff,
    quiet: Duration,
    last_pause: Option<Instant>,
}

impl WatchBackoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        WatchBackoff {
            backoff: Backoff::new(base, max),
            quiet: max.saturating_mul(2),
            last_pause: None,
        }
    }
}

/// Never gives up: a watch is retried for as long as the process runs.
impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.next_delay();
        self.last_pause = Some(Instant::now() + delay);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        if self
            .last_pause
            .is_none_or(|ended| ended.elapsed() >= self.quiet)
        {
            self.backoff.reset();
            self.last_pause = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(2));
        }
        assert!(last >= Duration::from_secs(1), "capped ceiling: {last:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_backoff_starts_over_only_after_a_quiet_spell() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next().expect("never gives up");
        assert!(first <= Duration::from_millis(100), "{first:?}");
        // The watcher's `Init` before the next list: not progress yet.
        b.reset();
        let second = b.next().expect("never gives up");
        assert!(second >= Duration::from_millis(100), "grows: {second:?}");
        tokio::time::advance(second + Duration::from_secs(2)).await;
        b.reset();
        let after = b.next().expect("never gives up");
        assert!(
            after <= Duration::from_millis(100),
            "started over: {after:?}"
        );
    }
}
