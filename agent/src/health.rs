//! The agent's own health, for the kubelet's probes and for Prometheus:
//! `/livez`, `/readyz` and `/metrics` on a small plain-HTTP listener
//! (`--health-address`).
//!
//! - **Live** while the collector thread turns: its last turn is at most
//!   [`Health::stall_bound`] old. A stuck collector (a hung cgroupfs read) is
//!   what a restart cures; a missing aggregator is not.
//! - **Ready** once a sample was taken and, within the last
//!   [`Health::report_bound`], a report went out on an open stream that an
//!   aggregator took past its first report (where it refuses). Killing
//!   every aggregator makes the agent not ready, never dead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use export::{Observer, StreamEnd};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

fn label(end: StreamEnd) -> &'static str {
    match end {
        StreamEnd::Closed => "closed",
        StreamEnd::Refused => "refused",
        StreamEnd::Failed => "failed",
    }
}

#[derive(Debug, Default)]
struct Peer {
    connected: bool,
    sent: u64,
    /// Reports on the current stream.
    stream_sent: u64,
    ended: [u64; 3],
    last_sent: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    source: Option<&'static str>,
    containers: u64,
    lost_charges: Option<u64>,
    collections: u64,
    collection_seconds: f64,
    checks_agree: u64,
    checks_disagree: u64,
    scrape_errors: u64,
    peers: BTreeMap<String, Peer>,
}

/// What one collection turn produced, for [`Health::collected`].
#[derive(Debug, Clone, Copy)]
pub struct Collected {
    /// The CPU source of the sample (`iterator`, `switch`, `cgroupfs`,
    /// `kubelet`).
    pub source: &'static str,
    /// Container cgroups in the sample.
    pub containers: u64,
    /// Charges the eBPF program could not count, since the agent started
    /// (`None`: no eBPF program runs).
    pub lost_charges: Option<u64>,
}

/// Shared between the collector thread, the exporter tasks and the
/// listener.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    interval: Duration,
    /// Milliseconds after `started` of the collector's last turn, plus one
    /// (0: none yet).
    beat: AtomicU64,
    sampled: AtomicBool,
    state: Mutex<State>,
}

impl Health {
    /// For an agent sampling every `interval`.
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Health {
            started: Instant::now(),
            interval,
            beat: AtomicU64::new(0),
            sampled: AtomicBool::new(false),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The longest the collector may go without a turn and still be live:
    /// ten intervals, and never under a minute (a node under memory
    /// pressure can stall reads for seconds).
    pub fn stall_bound(&self) -> Duration {
        (self.interval * 10).max(Duration::from_secs(60))
    }

    /// How recent the last report must be for the agent to be ready: three
    /// intervals, at least ten seconds.
    pub fn report_bound(&self) -> Duration {
        (self.interval * 3).max(Duration::from_secs(10))
    }

    /// One collector turn, which took `took`, with its sample if any.
    pub fn collected(&self, took: Duration, sample: Option<Collected>) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.beat.store(ms, Ordering::Relaxed);
        let mut state = self.state();
        state.collections += 1;
        state.collection_seconds += took.as_secs_f64();
        if let Some(s) = sample {
            self.sampled.store(true, Ordering::Relaxed);
            state.source = Some(s.source);
            state.containers = s.containers;
            state.lost_charges = s.lost_charges;
        }
    }

    /// A kubelet cross-check's outcome.
    pub fn kubelet_check(&self, agree: bool) {
        let mut state = self.state();
        if agree {
            state.checks_agree += 1;
        } else {
            state.checks_disagree += 1;
        }
    }

    /// A kubelet scrape failed.
    pub fn kubelet_scrape_failed(&self) {
        self.state().scrape_errors += 1;
    }

    /// `Err(why)` when the collector stalled.
    pub fn live(&self) -> Result<(), String> {
        let beat = self.beat.load(Ordering::Relaxed);
        let since = match beat {
            0 => self.started.elapsed(),
            ms => self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(ms - 1)),
        };
        if since > self.stall_bound() {
            return Err(format!(
                "the collector has not completed a turn for {since:?} (bound {:?})",
                self.stall_bound()
            ));
        }
        Ok(())
    }

    /// `Err(why)` until a sample was taken and a report went out recently.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        if !self.sampled.load(Ordering::Relaxed) {
            return Err("no sample taken yet".to_owned());
        }
        let bound = self.report_bound();
        let state = self.state();
        // An aggregator refuses a stream at its first report (credentials,
        // node name, metadata): a stream that carried a second one was
        // taken.
        let reporting = state.peers.values().any(|p| {
            p.connected && p.stream_sent >= 2 && p.last_sent.is_some_and(|t| t.elapsed() <= bound)
        });
        if !reporting {
            let connected = state.peers.values().filter(|p| p.connected).count();
            return Err(format!(
                "no report went out in the last {bound:?} ({connected} of {} aggregators connected)",
                state.peers.len()
            ));
        }
        Ok(())
    }

    /// `/metrics` in Prometheus text format.
    pub fn render(&self) -> String {
        use support::process::{family, family_values};
        let mut out = String::with_capacity(4096);
        support::process::render_standard(&mut out, "nodepulse_agent", env!("CARGO_PKG_VERSION"));
        // Before the lock, which `ready` takes too.
        let ready = self.ready().is_ok();
        let state = self.state();
        let o = &mut out;
        family_values(
            o,
            "nodepulse_agent_ready",
            "gauge",
            "1 when /readyz passes: a sample was taken and a report went out recently.",
            [("", u8::from(ready))],
        );
        family_values(
            o,
            "nodepulse_agent_cpu_source",
            "gauge",
            "The source of CPU time in use (1 for the source named).",
            state
                .source
                .map(|source| (format!("{{source=\"{source}\"}}"), 1)),
        );
        family_values(
            o,
            "nodepulse_agent_containers",
            "gauge",
            "Container cgroups in the last sample.",
            [("", state.containers)],
        );
        family_values(
            o,
            "nodepulse_agent_ebpf_lost_charges_total",
            "counter",
            "Charges the eBPF switch program could not count (its warnings say why; 0 with another source).",
            [("", state.lost_charges.unwrap_or(0))],
        );
        family(
            o,
            "nodepulse_agent_collection_duration_seconds",
            "summary",
            "Time the collector spent per turn.",
        );
        let _ = writeln!(
            o,
            "nodepulse_agent_collection_duration_seconds_sum {}",
            state.collection_seconds
        );
        let _ = writeln!(
            o,
            "nodepulse_agent_collection_duration_seconds_count {}",
            state.collections
        );
        family_values(
            o,
            "nodepulse_agent_kubelet_checks_total",
            "counter",
            "Cross-checks of our figures against the kubelet's, by outcome.",
            [
                ("{result=\"agree\"}", state.checks_agree),
                ("{result=\"disagree\"}", state.checks_disagree),
            ],
        );
        family_values(
            o,
            "nodepulse_agent_kubelet_scrape_errors_total",
            "counter",
            "Failed scrapes of the kubelet's /metrics/resource.",
            [("", state.scrape_errors)],
        );

        // Per aggregator replica: each family's samples right after its
        // HELP and TYPE, as the text format wants them grouped.
        let peers: Vec<(String, &Peer)> = state
            .peers
            .iter()
            .map(|(uri, peer)| (format!("aggregator=\"{}\"", escape(uri)), peer))
            .collect();
        family_values(
            o,
            "nodepulse_agent_aggregator_up",
            "gauge",
            "1 while a stream to the aggregator replica is open.",
            peers
                .iter()
                .map(|(l, peer)| (format!("{{{l}}}"), u8::from(peer.connected))),
        );
        family_values(
            o,
            "nodepulse_agent_reports_sent_total",
            "counter",
            "Reports sent to the aggregator replica.",
            peers
                .iter()
                .map(|(l, peer)| (format!("{{{l}}}"), peer.sent)),
        );
        family_values(
            o,
            "nodepulse_agent_streams_ended_total",
            "counter",
            "Streams to the aggregator replica that ended: closed by it, refused by it, or failed.",
            peers.iter().flat_map(|(l, peer)| {
                [StreamEnd::Closed, StreamEnd::Refused, StreamEnd::Failed].map(|end| {
                    (
                        format!("{{{l},result=\"{}\"}}", label(end)),
                        peer.ended[end as usize],
                    )
                })
            }),
        );
        family_values(
            o,
            "nodepulse_agent_last_report_age_seconds",
            "gauge",
            "Seconds since a report last went out to the aggregator replica.",
            peers.iter().filter_map(|(l, peer)| {
                let at = peer.last_sent?;
                Some((format!("{{{l}}}"), at.elapsed().as_secs_f64()))
            }),
        );
        drop(peers);
        drop(state);
        out
    }
}

/// A label value in Prometheus text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/livez`, `/readyz` and `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, health: Arc<Health>, cancel: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "health listener: accept failed");
                    // Out of descriptors, most likely: let some close.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
            },
            () = cancel.cancelled() => return,
        };
        let health = Arc::clone(&health);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(answer(&health, &request)))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(error) = result {
                    debug!(%peer, %error, "health connection");
                },
                () = cancel.cancelled() => {}
            }
        });
    }
}

fn answer<B>(health: &Health, request: &Request<B>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    let probe = |result: Result<(), String>| match result {
        Ok(()) => text(StatusCode::OK, "ok\n".to_owned()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    };
    match request.uri().path() {
        "/livez" | "/healthz" => probe(health.live()),
        "/readyz" => probe(health.ready()),
        "/metrics" => {
            let mut response = text(StatusCode::OK, health.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /livez, /readyz, /metrics\n".to_owned(),
        ),
    }
}

/// The exporter's streams, by aggregator replica.
impl Observer for Health {
    fn stream_opened(&self, aggregator: &str) {
        let mut state = self.state();
        let peer = state.peers.entry(aggregator.to_owned()).or_default();
        peer.connected = true;
        peer.stream_sent = 0;
    }

    fn report_sent(&self, aggregator: &str) {
        let mut state = self.state();
        let peer = state.peers.entry(aggregator.to_owned()).or_default();
        peer.sent += 1;
        peer.stream_sent += 1;
        peer.last_sent = Some(Instant::now());
    }

    fn stream_ended(&self, aggregator: &str, end: StreamEnd) {
        let mut state = self.state();
        let peer = state.peers.entry(aggregator.to_owned()).or_default();
        peer.connected = false;
        peer.ended[end as usize] += 1;
    }

    fn replica_gone(&self, aggregator: &str) {
        self.state().peers.remove(aggregator);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Option<Collected> {
        Some(Collected {
            source: "iterator",
            containers: 7,
            lost_charges: None,
        })
    }

    #[test]
    fn ready_only_after_a_sample_and_a_report_and_not_after_the_stream_ends() {
        let health = Health::new(Duration::from_secs(1));
        assert!(health.live().is_ok(), "live while starting");
        assert!(health.ready().is_err(), "nothing yet");
        health.stream_opened("https://a:8443");
        health.report_sent("https://a:8443");
        assert!(health.ready().is_err(), "no sample yet");
        health.collected(Duration::from_millis(3), None);
        assert!(health.ready().is_err(), "a turn without a sample");
        health.collected(Duration::from_millis(3), sample());
        assert!(
            health.ready().is_err(),
            "one report: the stream may still be refused"
        );
        health.report_sent("https://a:8443");
        health.collected(Duration::from_millis(3), sample());
        assert!(health.ready().is_ok(), "sampled and reported");
        health.stream_ended("https://a:8443", StreamEnd::Failed);
        let why = health.ready().expect_err("the only stream ended");
        assert!(why.contains("0 of 1 aggregators connected"), "{why}");
        assert!(health.live().is_ok(), "not ready, still live");
        health.stream_opened("https://a:8443");
        health.report_sent("https://a:8443");
        health.report_sent("https://a:8443");
        assert!(
            health.ready().is_ok(),
            "ready again once the stream is back"
        );
    }

    #[test]
    fn metrics_name_every_family_and_each_aggregator() {
        let health = Health::new(Duration::from_secs(1));
        health.collected(
            Duration::from_millis(5),
            Some(Collected {
                source: "switch",
                containers: 12,
                lost_charges: Some(3),
            }),
        );
        health.kubelet_check(true);
        health.kubelet_check(false);
        health.kubelet_scrape_failed();
        health.stream_opened("https://10.0.0.1:8443");
        health.report_sent("https://10.0.0.1:8443");
        health.report_sent("https://10.0.0.1:8443");
        health.stream_ended("https://10.0.0.2:8443", StreamEnd::Refused);
        let text = health.render();
        for line in [
            "nodepulse_agent_ready 1",
            "nodepulse_agent_cpu_source{source=\"switch\"} 1",
            "nodepulse_agent_containers 12",
            "nodepulse_agent_ebpf_lost_charges_total 3",
            "nodepulse_agent_collection_duration_seconds_count 1",
            "nodepulse_agent_kubelet_checks_total{result=\"disagree\"} 1",
            "nodepulse_agent_kubelet_scrape_errors_total 1",
            "nodepulse_agent_aggregator_up{aggregator=\"https://10.0.0.1:8443\"} 1",
            "nodepulse_agent_aggregator_up{aggregator=\"https://10.0.0.2:8443\"} 0",
            "nodepulse_agent_reports_sent_total{aggregator=\"https://10.0.0.1:8443\"} 2",
            "nodepulse_agent_streams_ended_total{aggregator=\"https://10.0.0.2:8443\",result=\"refused\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(text.contains(
            "\nnodepulse_agent_last_report_age_seconds{aggregator=\"https://10.0.0.1:8443\"} "
        ));
        assert!(text.contains("nodepulse_agent_build_info{version="));
        // Each family's samples come right after its TYPE line.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or_default();
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(family),
                    "{line:?} outside its family {family}"
                );
            }
        }
        assert!(text.contains("\nprocess_resident_memory_bytes "));
    }
}
