//! The ingest's batch window (`--ingest-batch-window`): how long its threads
//! let reports gather before reading them.
use std::{sync::Arc, time::Duration};

use crate::store::Store;

/// How long the ingest threads let reports gather (`--ingest-batch-window`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchWindow {
    /// A share of the shortest interval the nodes report at: a sample is
    /// held back by at most a twentieth of its own interval.
    Auto,
    Fixed(Duration),
}

/// `auto`'s window is this share of the shortest interval.
const AUTO_SHARE: u32 = 20;
/// `auto`'s least window: before any node has reported twice, and however
/// often a node reports (one reporting every few milliseconds cannot make
/// the ingest wake for each report again).
const AUTO_FLOOR: Duration = Duration::from_millis(50);
/// Everything on the ingest port waits for the window, watch streams and
/// keep-alive pings included: a second at most, whatever the interval.
pub(super) const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);

impl BatchWindow {
    /// The window while the shortest interval the nodes report at is
    /// `shortest` (`None`: not known yet).
    pub fn given(self, shortest: Option<Duration>) -> Duration {
        match self {
            Self::Fixed(window) => window,
            Self::Auto => shortest.map_or(AUTO_FLOOR, |s| {
                (s / AUTO_SHARE).clamp(AUTO_FLOOR, MAX_BATCH_WINDOW)
            }),
        }
    }
}

/// The window to sleep before each wait for I/O: `window`, following the
/// intervals `store` notes when it is `auto`.
pub fn following(window: BatchWindow, store: Arc<Store>) -> impl Fn() -> Duration + Send + Sync {
    move || window.given(store.shortest_interval())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_holds_a_sample_a_twentieth_of_the_shortest_interval_within_bounds() {
        let auto = |shortest: Option<Duration>| BatchWindow::Auto.given(shortest);
        let ms = Duration::from_millis;
        assert_eq!(auto(None), ms(50), "before any node reported twice");
        assert_eq!(auto(Some(ms(1000))), ms(50));
        assert_eq!(auto(Some(ms(15_000))), ms(750));
        assert_eq!(auto(Some(ms(60_000))), ms(1000), "at most a second");
        assert_eq!(auto(Some(ms(10))), ms(50), "at least 50ms");
        let fixed = BatchWindow::Fixed(ms(200));
        assert_eq!(fixed.given(Some(ms(15_000))), ms(200));
        assert_eq!(fixed.given(None), ms(200));
    }

    #[test]
    fn auto_follows_what_the_store_notes() {
        use proto::v1::{NodeMetadata, NodeReport, Usage};
        let store = Arc::new(Store::default());
        let window = following(BatchWindow::Auto, Arc::clone(&store));
        let fixed = following(BatchWindow::Fixed(Duration::ZERO), Arc::clone(&store));
        let report = |secs: u64| NodeReport {
            node: "n1".into(),
            sample_unix_nanos: ((1_800_000_000 + secs) * 1_000_000_000) as i64,
            node_usage: Some(Usage {
                cpu_ns: secs * 1_000_000,
                memory_working_set_bytes: 1 << 30,
                ..Usage::default()
            }),
            metadata: Some(NodeMetadata::default()),
            cpu_source: 1,
            seq: secs,
            agent_epoch: 1,
            ..NodeReport::default()
        };
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100);
        assert_eq!(window(), Duration::from_millis(50), "nothing reported yet");
        store.apply(&report(0), now).expect("applies");
        store.apply(&report(15), now).expect("applies");
        store.evict(Duration::from_secs(600));
        assert_eq!(window(), Duration::from_millis(750), "nodes at 15 s");
        assert_eq!(fixed(), Duration::ZERO, "a fixed window stays");
    }
}
