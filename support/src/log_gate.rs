//! A gate for log lines that a flood of events would repeat.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Lets one log line through per interval, so an error repeated by every
/// request (a misconfigured client, an unreachable kube-apiserver) is
/// logged, not flooded; metrics count every occurrence.
#[derive(Debug)]
pub struct LogGate {
    start: Instant,
    interval: Duration,
    /// Milliseconds after `start` of the last line let through, plus one
    /// (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogGate {
    /// A gate opening at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogGate {
            start: Instant::now(),
            interval,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn open(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < interval {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_gate_lets_one_line_per_interval() {
        let gate = LogGate::new(Duration::from_secs(3600));
        assert_eq!(gate.open(), Some(0));
        assert_eq!(gate.open(), None);
        assert_eq!(gate.open(), None);
        let open = LogGate::new(Duration::ZERO);
        assert_eq!(open.open(), Some(0));
        assert_eq!(open.open(), Some(0));
    }
}
