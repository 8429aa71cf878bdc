//! The server's own Prometheus metrics, exposed on `/metrics` in the text
//! format: requests by verb, resource and code with a latency histogram,
//! authentication and authorization outcomes, connections and TLS handshake
//! failures.
//!
//! Hand-written because a handful of counters does not justify a metrics
//! crate. Every label takes values from a small fixed set (verbs are folded
//! to `GET`/`LIST`/`WATCH`/`OTHER`, resources to route kinds), so a client
//! cannot grow the series count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use support::process::family;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Counters shared by all connections.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    durations: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    authentication: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    authorization: Mutex<BTreeMap<&'static str, u64>>,
    open_connections: AtomicI64,
    handshake_errors: AtomicU64,
}

/// Folds an authorization verb into a bounded label value.
pub fn verb_label(verb: &str) -> &'static str {
    match verb {
        "get" | "head" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Records a finished request.
    pub fn request(&self, verb: &'static str, resource: &'static str, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((verb, resource, code))
            .or_default() += 1;
        self.durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((verb, resource))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Records an authentication outcome (`success`/`failure`) and method.
    pub fn authentication(&self, result: &'static str, method: &'static str) {
        *self
            .authentication
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((result, method))
            .or_default() += 1;
    }

    /// Records an authorization decision (`allowed`/`denied`/`error`).
    pub fn authorization(&self, decision: &'static str) {
        *self
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(decision)
            .or_default() += 1;
    }

    /// A connection was accepted (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.open_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// A TLS handshake failed or timed out.
    pub fn handshake_error(&self) {
        self.handshake_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "apiserver_request_total",
            "counter",
            "Requests by verb, resource and HTTP code.",
        );
        for ((verb, resource, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
            );
        }
        family(
            &mut out,
            "apiserver_request_duration_seconds",
            "histogram",
            "Request latency, authentication included.",
        );
        for ((verb, resource), h) in self
            .durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let labels = format!("verb=\"{verb}\",resource=\"{resource}\"");
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        family(
            &mut out,
            "nodepulse_authentication_attempts_total",
            "counter",
            "Authentication outcomes by method.",
        );
        for ((result, method), n) in self
            .authentication
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "nodepulse_authentication_attempts_total{{result=\"{result}\",method=\"{method}\"}} {n}"
            );
        }
        family(
            &mut out,
            "nodepulse_authorization_decisions_total",
            "counter",
            "Authorization decisions.",
        );
        for (decision, n) in self
            .authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "nodepulse_authorization_decisions_total{{decision=\"{decision}\"}} {n}"
            );
        }
        family(
            &mut out,
            "apiserver_open_connections",
            "gauge",
            "Open client connections.",
        );
        let _ = writeln!(
            out,
            "apiserver_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "apiserver_tls_handshake_errors_total",
            "counter",
            "Failed or timed-out TLS handshakes.",
        );
        let _ = writeln!(
            out,
            "apiserver_tls_handshake_errors_total {}",
            self.handshake_errors.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request("LIST", "nodes", 200, Duration::from_millis(3));
        m.request("LIST", "nodes", 200, Duration::from_millis(30));
        m.request("GET", "pods", 404, Duration::from_millis(1));
        m.authentication("success", "requestheader");
        m.authorization("denied");
        m.connection(1);
        m.handshake_error();
        let text = m.render();
        assert!(
            text.contains(
                "apiserver_request_total{verb=\"LIST\",resource=\"nodes\",code=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"nodes\",le=\"0.005\"} 1\n"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"nodes\",le=\"0.05\"} 2\n"));
        assert!(text.contains(
            "apiserver_request_duration_seconds_count{verb=\"LIST\",resource=\"nodes\"} 2\n"
        ));
        assert!(text.contains(
            "nodepulse_authentication_attempts_total{result=\"success\",method=\"requestheader\"} 1\n"
        ));
        assert!(text.contains("nodepulse_authorization_decisions_total{decision=\"denied\"} 1\n"));
        assert!(text.contains("apiserver_open_connections 1\n"));
        assert!(text.contains("apiserver_tls_handshake_errors_total 1\n"));
    }

    #[test]
    fn verbs_fold_into_a_fixed_set() {
        assert_eq!(verb_label("list"), "LIST");
        assert_eq!(verb_label("head"), "GET");
        assert_eq!(verb_label("brew"), "OTHER");
    }
}
