//! `/metrics` of the kubelet side: reads by result, the nodes read, and,
//! with the reads split across replicas, what was forwarded to the others.
use std::sync::atomic::{AtomicU64, Ordering};

use export::StreamEnd;
use support::process::family_values;

/// How one read of a kubelet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Not read: the node's agent is reporting.
    AgentReports,
    Unreachable,
    /// The serving certificate was refused (unknown CA, no IP SAN for the
    /// address, expired).
    Certificate,
    Tls,
    Timeout,
    Unauthorized,
    Forbidden,
    Status,
    /// Answered, but no node totals could be read from the body.
    Garbage,
    /// Read, but the store refused the figures (absurd values, clock skew).
    Rejected,
    Other,
}

const ALL: [Outcome; 12] = [
    Outcome::Success,
    Outcome::AgentReports,
    Outcome::Unreachable,
    Outcome::Certificate,
    Outcome::Tls,
    Outcome::Timeout,
    Outcome::Unauthorized,
    Outcome::Forbidden,
    Outcome::Status,
    Outcome::Garbage,
    Outcome::Rejected,
    Outcome::Other,
];

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::AgentReports => "agent_reports",
            Outcome::Unreachable => "unreachable",
            Outcome::Certificate => "certificate",
            Outcome::Tls => "tls",
            Outcome::Timeout => "timeout",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::Status => "status",
            Outcome::Garbage => "garbage",
            Outcome::Rejected => "rejected",
            Outcome::Other => "other",
        }
    }

    /// What an operator does about it (docs/operations.md says more).
    pub fn fix(self) -> &'static str {
        match self {
            Outcome::Success | Outcome::AgentReports => "",
            Outcome::Unreachable => {
                "check --kubelet-preferred-address-types and --kubelet-port, and that the network lets the aggregator reach the node"
            }
            Outcome::Certificate => {
                "set --kubelet-certificate-authority to the CA that signs the kubelets' serving certificates; a certificate without the address's IP SAN needs a Hostname address type or serverTLSBootstrap"
            }
            Outcome::Tls => "the kubelet's TLS settings and the aggregator's do not meet",
            Outcome::Timeout => "the kubelet answers too slowly; see --kubelet-request-timeout",
            Outcome::Unauthorized => {
                "the kubelet did not accept the token or client certificate (webhook authentication off, or an expired credential)"
            }
            Outcome::Forbidden => "grant the aggregator's ServiceAccount get on nodes/metrics",
            Outcome::Status => "the kubelet answered with an error",
            Outcome::Garbage => "the endpoint is not a kubelet's /metrics/resource",
            Outcome::Rejected => "the kubelet's figures were refused; the reason says why",
            Outcome::Other => "",
        }
    }

    fn index(self) -> usize {
        ALL.iter().position(|&o| o == self).unwrap_or(ALL.len() - 1)
    }
}

/// How forwarding streams ended, in the order rendered.
const ENDS: [StreamEnd; 3] = [StreamEnd::Closed, StreamEnd::Refused, StreamEnd::Failed];

/// `end`'s place in [`ENDS`], and its label.
fn end_of(end: StreamEnd) -> (usize, &'static str) {
    match end {
        StreamEnd::Closed => (0, "closed"),
        StreamEnd::Refused => (1, "refused"),
        StreamEnd::Failed => (2, "failed"),
    }
}

#[derive(Debug, Default)]
pub struct ScrapeStats {
    by_outcome: [AtomicU64; ALL.len()],
    /// Nodes with a loop here (each watches its pods).
    pub nodes: AtomicU64,
    /// Of those, the nodes whose kubelet this replica reads now: all, or
    /// its share where the reads are split.
    pub nodes_read: AtomicU64,
    /// Reads sent on to another replica (one per replica sent to).
    forwarded: AtomicU64,
    forward_opened: AtomicU64,
    /// Forwarding streams ended, by [`ENDS`].
    forward_ended: [AtomicU64; ENDS.len()],
}

/// The forwarding exporters' side of the streams.
impl export::Observer for ScrapeStats {
    fn stream_opened(&self, _replica: &str) {
        self.forward_opened.fetch_add(1, Ordering::Relaxed);
    }

    fn report_sent(&self, _replica: &str) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    fn stream_ended(&self, _replica: &str, end: StreamEnd) {
        self.forward_ended[end_of(end).0].fetch_add(1, Ordering::Relaxed);
    }

    fn replica_gone(&self, _replica: &str) {}
}

impl ScrapeStats {
    pub fn count(&self, outcome: Outcome) {
        self.by_outcome[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome.index()].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        family_values(
            out,
            "nodepulse_kubelet_nodes",
            "gauge",
            "Nodes without an agent, served from their kubelet (with the reads split, every replica serves each).",
            [("", self.nodes.load(Ordering::Relaxed))],
        );
        family_values(
            out,
            "nodepulse_kubelet_nodes_read",
            "gauge",
            "Nodes whose kubelet this replica reads itself (with the reads split, its share).",
            [("", self.nodes_read.load(Ordering::Relaxed))],
        );
        family_values(
            out,
            "nodepulse_kubelet_scrapes_total",
            "counter",
            "Reads of a node's kubelet by result (agent_reports: skipped, its agent reports).",
            ALL.map(|o| (format!("{{result=\"{}\"}}", o.label()), self.get(o))),
        );
        family_values(
            out,
            "nodepulse_kubelet_forwarded_reports_total",
            "counter",
            "Reads of a kubelet sent on to another replica (one per replica sent to).",
            [("", self.forwarded.load(Ordering::Relaxed))],
        );
        family_values(
            out,
            "nodepulse_kubelet_forward_streams_opened_total",
            "counter",
            "Streams opened to another replica's ingest to forward a node's reads.",
            [("", self.forward_opened.load(Ordering::Relaxed))],
        );
        family_values(
            out,
            "nodepulse_kubelet_forward_streams_ended_total",
            "counter",
            "Forwarding streams ended, by how (refused: the other replica's ingest refused them).",
            ENDS.iter().zip(&self.forward_ended).map(|(&end, n)| {
                let labels = format!("{{end=\"{}\"}}", end_of(end).1);
                (labels, n.load(Ordering::Relaxed))
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_is_rendered_with_its_count() {
        let stats = ScrapeStats::default();
        stats.count(Outcome::Success);
        stats.count(Outcome::Success);
        stats.count(Outcome::Certificate);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(
            out.contains("nodepulse_kubelet_scrapes_total{result=\"success\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("nodepulse_kubelet_scrapes_total{result=\"certificate\"} 1\n"));
        assert_eq!(
            out.matches("nodepulse_kubelet_scrapes_total{").count(),
            ALL.len()
        );
        let labels: std::collections::HashSet<_> = ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), ALL.len());
    }

    #[test]
    fn forwarding_is_counted_by_what_the_exporter_tells() {
        use export::Observer;
        let stats = ScrapeStats::default();
        stats.stream_opened("https://10.0.0.2:8443");
        stats.report_sent("https://10.0.0.2:8443");
        stats.report_sent("https://10.0.0.2:8443");
        stats.stream_ended("https://10.0.0.2:8443", StreamEnd::Refused);
        stats.stream_ended("https://10.0.0.3:8443", StreamEnd::Failed);
        let mut out = String::new();
        stats.render(&mut out);
        for line in [
            "nodepulse_kubelet_forwarded_reports_total 2\n",
            "nodepulse_kubelet_forward_streams_opened_total 1\n",
            "nodepulse_kubelet_forward_streams_ended_total{end=\"closed\"} 0\n",
            "nodepulse_kubelet_forward_streams_ended_total{end=\"refused\"} 1\n",
            "nodepulse_kubelet_forward_streams_ended_total{end=\"failed\"} 1\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }
}
