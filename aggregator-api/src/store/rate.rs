//! Last and previous point of one cumulative counter series, and the rate
//! between them: the arithmetic metrics-server does, with its edge cases made
//! explicit (resets, restarts, out-of-order and too-close samples, absurd rates).
use std::time::{Duration, SystemTime};

/// One reading of a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub time: SystemTime,
    /// Cumulative CPU, ns.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub swap_bytes: Option<u64>,
}

/// What happened to a point offered to a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Became the last point; a rate is available if there is a previous one.
    Accepted,
    /// The counter went backwards, or the start time changed: the series
    /// restarted. The point is kept as the only point.
    Reset,
    /// The rate would exceed [`MAX_CORES`]: treated as a reset.
    Absurd,
    /// Not newer than the last point (duplicate or reordered): dropped.
    Stale,
    /// Closer than [`MIN_WINDOW`] to the last point: dropped, it would make a
    /// noisy rate over a tiny window.
    TooSoon,
}

/// Smallest window a rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_millis(100);
/// No real container uses more; a faster counter is corrupt or reset.
pub const MAX_CORES: u64 = 4096;

/// Last and previous points of a series, plus the start time they belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    pub last: Point,
    pub prev: Option<Point>,
    /// Start time of what is measured (container start), `0` when unknown.
    pub start_unix_nanos: i64,
}

/// A rate over a true window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub timestamp: SystemTime,
    pub window: Duration,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    pub swap_bytes: Option<u64>,
}

impl Series {
    pub fn new(point: Point, start_unix_nanos: i64) -> Self {
        Self {
            last: point,
            prev: None,
            start_unix_nanos,
        }
    }

    /// Offers the next point.
    pub fn push(&mut self, point: Point, start_unix_nanos: i64) -> Outcome {
        if start_unix_nanos != self.start_unix_nanos {
            *self = Self::new(point, start_unix_nanos);
            return Outcome::Reset;
        }
        let Ok(window) = point.time.duration_since(self.last.time) else {
            return Outcome::Stale;
        };
        if window.is_zero() {
            return Outcome::Stale;
        }
        if window < MIN_WINDOW {
            return Outcome::TooSoon;
        }
        if point.cpu_ns < self.last.cpu_ns {
            *self = Self::new(point, start_unix_nanos);
            return Outcome::Reset;
        }
        if nanocores(point.cpu_ns - self.last.cpu_ns, window) > MAX_CORES * 1_000_000_000 {
            *self = Self::new(point, start_unix_nanos);
            return Outcome::Absurd;
        }
        self.prev = Some(self.last);
        self.last = point;
        Outcome::Accepted
    }

    /// The time between the two points, when there are two (and the
    /// later is later).
    pub fn window(&self) -> Option<Duration> {
        self.last.time.duration_since(self.prev?.time).ok()
    }

    /// The rate between the two points, when there are two.
    pub fn rate(&self) -> Option<Rate> {
        let prev = self.prev?;
        let window = self.window()?;
        Some(Rate {
            timestamp: self.last.time,
            window,
            cpu_nanocores: nanocores(self.last.cpu_ns.checked_sub(prev.cpu_ns)?, window),
            memory_bytes: self.last.memory_bytes,
            swap_bytes: self.last.swap_bytes,
        })
    }
}

/// Δns of CPU over a window, in nanocores (integer, rounded down).
pub fn nanocores(delta_ns: u64, window: Duration) -> u64 {
    let w = window.as_nanos();
    if w == 0 {
        return 0;
    }
    u64::try_from(u128::from(delta_ns) * 1_000_000_000 / w).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, cpu_ms: u64) -> Point {
        Point {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms),
            cpu_ns: cpu_ms * 1_000_000,
            memory_bytes: 42,
            swap_bytes: None,
        }
    }

    #[test]
    fn rate_over_the_true_window() {
        let mut s = Series::new(at(0, 0), 7);
        assert_eq!(s.rate(), None, "one point is no rate");
        assert_eq!(s.push(at(1500, 750), 7), Outcome::Accepted);
        let r = s.rate().expect("two points");
        assert_eq!(r.window, Duration::from_millis(1500));
        assert_eq!(r.cpu_nanocores, 500_000_000);
        assert_eq!(r.timestamp, at(1500, 0).time);
        assert_eq!(r.memory_bytes, 42);
        // The next point slides the window.
        assert_eq!(s.push(at(2500, 1750), 7), Outcome::Accepted);
        assert_eq!(s.rate().expect("rate").cpu_nanocores, 1_000_000_000);
    }

    #[test]
    fn counter_reset_never_gives_a_negative_or_huge_rate() {
        let mut s = Series::new(at(0, 5000), 0);
        assert_eq!(s.push(at(1000, 5500), 0), Outcome::Accepted);
        assert_eq!(s.push(at(2000, 100), 0), Outcome::Reset);
        assert_eq!(s.rate(), None);
        assert_eq!(s.push(at(3000, 600), 0), Outcome::Accepted);
        assert_eq!(s.rate().expect("rate").cpu_nanocores, 500_000_000);
    }

    #[test]
    fn restart_with_new_start_time_drops_the_previous_point() {
        let mut s = Series::new(at(0, 0), 1);
        s.push(at(1000, 900), 1);
        // Restarted container whose counter happens to be larger.
        assert_eq!(s.push(at(2000, 5000), 2), Outcome::Reset);
        assert_eq!(s.rate(), None);
    }

    #[test]
    fn stale_and_too_close_points_are_dropped() {
        let mut s = Series::new(at(1000, 10), 0);
        assert_eq!(s.push(at(1000, 20), 0), Outcome::Stale);
        assert_eq!(s.push(at(500, 20), 0), Outcome::Stale);
        assert_eq!(s.push(at(1050, 20), 0), Outcome::TooSoon);
        assert_eq!(s.last, at(1000, 10));
        assert_eq!(s.prev, None);
    }

    #[test]
    fn absurd_rates_are_resets() {
        let mut s = Series::new(at(0, 0), 0);
        // 10,000 cores for a second.
        assert_eq!(s.push(at(1000, 10_000_000), 0), Outcome::Absurd);
        assert_eq!(s.rate(), None);
        assert_eq!(s.push(at(2000, 10_000_500), 0), Outcome::Accepted);
        assert_eq!(s.rate().expect("rate").cpu_nanocores, 500_000_000);
    }

    #[test]
    fn nanocores_rounds_down_and_never_overflows() {
        assert_eq!(nanocores(1, Duration::from_secs(3)), 0);
        assert_eq!(nanocores(7_338_891, Duration::from_secs(1)), 7_338_891);
        assert_eq!(nanocores(u64::MAX, Duration::from_nanos(1)), u64::MAX);
        assert_eq!(nanocores(5, Duration::ZERO), 0);
    }
}
