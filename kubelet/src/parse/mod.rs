//! Parser for the kubelet's `/metrics/resource` body (Prometheus text
//! exposition format 0.0.4) into typed node, pod and container samples.
//!
//! Owns the text grammar as the kubelet emits it, the metric names of the
//! resource-metrics collector (`pkg/kubelet/metrics/collectors/resource_metrics.go`
//! upstream) and the conversion of their float text into integers.
//!
//! Why a hand-written parser and not a Prometheus crate: we need twelve metric
//! names out of one small, machine-written document, and two properties the
//! general parsers do not give us:
//! - **no lost samples**: a malformed line is reported with its line number and
//!   skipped; every other sample is still returned ([`Parsed::errors`]);
//! - **exact integers**: the kubelet prints `float64(ns) / 1e9` with Go's
//!   shortest `'g'` formatting (`4.710898`, `1.5e-05`, `1.627430912e+09`).
//!   Multiplying the parsed `f64` by `1e9` and truncating, as metrics-server
//!   does, turns `16.4` into `16399999999` ns; we convert the decimal text
//!   itself, rounding half up, so `16.4` is exactly `16_400_000_000` ns.
//!
//! Metrics we do not use (`container_swap_limit_bytes`, Windows-only
//! `*_memory_commit_bytes`, anything a newer kubelet adds) are skipped without
//! validating the rest of their line: a grammar extension in a metric we ignore
//! must not show up as an error.
mod builder;
mod line;

use std::time::SystemTime;

use builder::Builder;
use line::parse_line;

/// How many per-line errors [`Parsed::errors`] keeps. The rest are only
/// counted in [`Parsed::error_count`]: a 16 MiB body of garbage must not turn
/// into millions of error values.
pub const MAX_RECORDED_ERRORS: usize = 64;

/// Longest value or timestamp text quoted back in an error.
const MAX_QUOTED_TEXT: usize = 64;

/// A line the parser could not turn into a sample. Every variant carries the
/// 1-based line number so an operator can find it in a saved scrape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("line {line}: malformed sample: {reason}")]
    Syntax { line: usize, reason: &'static str },
    #[error("line {line}: {metric}: value {value:?} is not a decimal number")]
    InvalidValue {
        line: usize,
        metric: &'static str,
        value: String,
    },
    /// `NaN`, `+Inf`, `-Inf`: valid exposition text, but no usable CPU time or
    /// byte count. Counted like any other invalid sample.
    #[error("line {line}: {metric}: value {value} is not finite")]
    NonFinite {
        line: usize,
        metric: &'static str,
        value: String,
    },
    /// Negative, or too large for a `u64` after scaling (nanoseconds or bytes).
    #[error("line {line}: {metric}: value {value} is out of range")]
    OutOfRange {
        line: usize,
        metric: &'static str,
        value: String,
    },
    #[error("line {line}: timestamp {text:?} is not an integer number of milliseconds")]
    InvalidTimestamp { line: usize, text: String },
    #[error("line {line}: {metric}: label {label:?} is missing or empty")]
    MissingLabel {
        line: usize,
        metric: &'static str,
        label: &'static str,
    },
    #[error("line {line}: label {label:?} appears more than once")]
    DuplicateLabel { line: usize, label: String },
    /// The same series twice in one body. The first value is kept, as the
    /// later one cannot be told apart as "more correct".
    #[error("line {line}: {metric}: series already seen earlier in this body; kept the first")]
    DuplicateSeries { line: usize, metric: &'static str },
}

impl Error {
    /// The 1-based line number the error refers to.
    pub fn line(&self) -> usize {
        match self {
            Error::NotUtf8 { line }
            | Error::Syntax { line, .. }
            | Error::InvalidValue { line, .. }
            | Error::NonFinite { line, .. }
            | Error::OutOfRange { line, .. }
            | Error::InvalidTimestamp { line, .. }
            | Error::MissingLabel { line, .. }
            | Error::DuplicateLabel { line, .. }
            | Error::DuplicateSeries { line, .. } => *line,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cumulative CPU counter reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuUsage {
    /// Core-nanoseconds since the cgroup was created.
    pub cumulative_ns: u64,
    /// When the kubelet (cAdvisor or the CRI runtime) read the counter; the
    /// scrape time when the line carried no timestamp.
    pub time: SystemTime,
}

/// A memory working-set reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Usage minus inactive file pages, as the kubelet computes it.
    pub working_set_bytes: u64,
    /// When it was read; the scrape time when the line carried no timestamp.
    pub time: SystemTime,
}

/// The node's totals. Present only when both CPU and memory were reported,
/// because a rate or a `NodeMetrics` item needs both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
    /// `None` where the kubelet does not report swap (Windows, older kubelets).
    pub swap_bytes: Option<u64>,
}

/// One container with both CPU and memory readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub name: String,
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
    pub swap_bytes: Option<u64>,
    /// From `container_start_time_seconds`; a change means a restart, which
    /// the rate code needs to know to avoid a negative or bogus rate.
    pub start_time: Option<SystemTime>,
}

/// One pod: its own cgroup totals (each optional, the kubelet omits what the
/// runtime did not report) and its complete containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStats {
    pub namespace: String,
    pub name: String,
    pub cpu: Option<CpuUsage>,
    pub memory: Option<MemoryUsage>,
    pub swap_bytes: Option<u64>,
    /// Containers with both a CPU and a memory reading, sorted by name.
    pub containers: Vec<ContainerStats>,
    /// Containers the body mentions but without both CPU and memory (a
    /// container that has just started has only a start time). Kept so the
    /// consumer can follow metrics-server: a pod is served only when every
    /// container has data.
    pub incomplete_containers: Vec<String>,
}

/// Everything of use in one `/metrics/resource` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KubeletStats {
    pub node: Option<NodeStats>,
    /// Sorted by namespace, then name.
    pub pods: Vec<PodStats>,
    /// The kubelet said (`scrape_error` or `resource_scrape_error` not 0) that
    /// it failed to collect container stats; the body is then empty or partial.
    pub scrape_error: bool,
}

/// The result of parsing one body: the stats plus every line that failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub stats: KubeletStats,
    /// The first [`MAX_RECORDED_ERRORS`] errors, in line order.
    pub errors: Vec<Error>,
    /// All errors, including those not kept in `errors`.
    pub error_count: usize,
    /// Samples of known metrics that were accepted.
    pub samples: usize,
}

/// Parses a `/metrics/resource` body.
///
/// `scrape_time` stands in for lines without a timestamp (the kubelet omits
/// it on `container_start_time_seconds` and the scrape-error gauges; a proxy
/// or an older kubelet may omit it everywhere), as metrics-server does with
/// its request time. Never fails as a whole: bad lines end up in
/// [`Parsed::errors`], and an empty or unrelated body yields empty stats.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// let body = b"node_cpu_usage_seconds_total 4.710898 1624396278302\n\
///              node_memory_working_set_bytes 1.5e+09 1624396278302\n";
/// let parsed = kubelet::parse::parse(body, SystemTime::now());
/// let node = parsed.stats.node.unwrap();
/// assert_eq!(node.cpu.cumulative_ns, 4_710_898_000);
/// assert_eq!(node.memory.working_set_bytes, 1_500_000_000);
/// assert_eq!(node.cpu.time, UNIX_EPOCH + Duration::from_millis(1624396278302));
/// ```
pub fn parse(body: &[u8], scrape_time: SystemTime) -> Parsed {
    let mut builder = Builder::default();
    let mut errors = Vec::new();
    let mut error_count = 0usize;
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let result = parse_line(raw, line, scrape_time)
            .and_then(|sample| sample.map_or(Ok(()), |s| builder.add(s, line)));
        if let Err(e) = result {
            error_count += 1;
            if errors.len() < MAX_RECORDED_ERRORS {
                errors.push(e);
            }
        }
    }
    Parsed {
        samples: builder.samples,
        stats: builder.finish(),
        errors,
        error_count,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::line::{Metric, decimal_to_u64};
    use super::*;

    const V1_31: &str = include_str!("../../tests/fixtures/kubelet/resource_v1_31.txt");
    const SCRAPE_ERROR: &str = include_str!("../../tests/fixtures/kubelet/scrape_error.txt");
    const ESCAPING: &str = include_str!("../../tests/fixtures/kubelet/escaping.txt");
    const MALFORMED: &str = include_str!("../../tests/fixtures/kubelet/malformed.txt");

    fn scrape_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_718_023_460)
    }

    fn ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn pod<'a>(stats: &'a KubeletStats, namespace: &str, name: &str) -> &'a PodStats {
        match stats
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
        {
            Some(p) => p,
            None => panic!("pod {namespace}/{name} missing from {:#?}", stats.pods),
        }
    }

    fn container<'a>(pod: &'a PodStats, name: &str) -> &'a ContainerStats {
        match pod.containers.iter().find(|c| c.name == name) {
            Some(c) => c,
            None => panic!("container {name} missing from {pod:#?}"),
        }
    }

    #[test]
    fn realistic_kubelet_body() {
        let parsed = parse(V1_31.as_bytes(), scrape_time());
        assert_eq!(parsed.errors, vec![], "a kubelet body parses cleanly");
        assert_eq!(parsed.error_count, 0);
        let stats = &parsed.stats;
        assert!(!stats.scrape_error);

        let node = stats.node.as_ref().expect("node stats");
        // 1.23456789012e+06 s, exactly.
        assert_eq!(node.cpu.cumulative_ns, 1_234_567_890_120_000);
        assert_eq!(node.cpu.time, ms(1_718_023_457_210));
        assert_eq!(node.memory.working_set_bytes, 1_627_430_912);
        assert_eq!(node.swap_bytes, Some(4096));

        let names: Vec<_> = stats
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(
            names,
            [
                "batch/report-28634190-5xk7w",
                "default/web-5d9c7b8f6d-7kq2p",
                "kube-system/coredns-7db6d8ff4d-x2x9q",
                "kube-system/kube-proxy-8m2fz",
                "monitoring/nodepulse-agent-q8kzt",
            ]
        );

        let web = pod(stats, "default", "web-5d9c7b8f6d-7kq2p");
        assert_eq!(web.containers.len(), 2);
        assert!(web.incomplete_containers.is_empty());
        assert_eq!(web.cpu.map(|c| c.cumulative_ns), Some(92_810_455_000));
        assert_eq!(web.memory.map(|m| m.working_set_bytes), Some(48_807_936));
        assert_eq!(web.swap_bytes, Some(4096));
        let nginx = container(web, "nginx");
        assert_eq!(nginx.cpu.cumulative_ns, 4_710_898_000);
        assert_eq!(nginx.cpu.time, ms(1_718_023_455_120));
        assert_eq!(nginx.memory.working_set_bytes, 3_932_160);
        assert_eq!(nginx.swap_bytes, Some(4096));
        assert_eq!(
            nginx.start_time,
            Some(UNIX_EPOCH + Duration::from_nanos(1_718_020_001_500_000_000))
        );
        let sidecar = container(web, "istio-proxy");
        assert_eq!(sidecar.cpu.cumulative_ns, 88_024_711_000);
        assert_eq!(sidecar.memory.working_set_bytes, 44_560_384);

        let agent = container(pod(stats, "monitoring", "nodepulse-agent-q8kzt"), "agent");
        // 1.5e-05 s.
        assert_eq!(agent.cpu.cumulative_ns, 15_000);
        assert_eq!(agent.swap_bytes, Some(0));
        assert_eq!(
            agent.start_time,
            Some(UNIX_EPOCH + Duration::from_nanos(1_718_023_447_415_264_600))
        );

        let coredns = container(
            pod(stats, "kube-system", "coredns-7db6d8ff4d-x2x9q"),
            "coredns",
        );
        assert_eq!(coredns.cpu.cumulative_ns, 412_587_611_000);
        assert_eq!(
            coredns.start_time,
            Some(UNIX_EPOCH + Duration::from_nanos(1_717_916_512_345_678_800))
        );

        // A container that just started: start time only.
        let proxy = container(pod(stats, "kube-system", "kube-proxy-8m2fz"), "kube-proxy");
        // metrics-server's `uint64(16.4 * 1e9)` gives 16399999999.
        assert_eq!(proxy.cpu.cumulative_ns, 16_400_000_000);

        let job = pod(stats, "batch", "report-28634190-5xk7w");
        assert!(job.containers.is_empty());
        assert_eq!(job.incomplete_containers, ["worker"]);
        assert_eq!(job.cpu.map(|c| c.cumulative_ns), Some(3_112_000));

        // Node 3, containers 5 × 4 + one lone start time, pods 5 × 3, two
        // scrape-error gauges; `container_swap_limit_bytes` is not counted.
        assert_eq!(parsed.samples, 3 + 21 + 15 + 2);
    }

    #[test]
    fn crlf_line_endings_give_the_same_result() {
        let crlf = V1_31.replace('\n', "\r\n");
        assert_eq!(
            parse(crlf.as_bytes(), scrape_time()),
            parse(V1_31.as_bytes(), scrape_time())
        );
        let malformed_crlf = MALFORMED.replace('\n', "\r\n");
        assert_eq!(
            parse(malformed_crlf.as_bytes(), scrape_time()),
            parse(MALFORMED.as_bytes(), scrape_time())
        );
    }

    #[test]
    fn scrape_error_is_reported() {
        let parsed = parse(SCRAPE_ERROR.as_bytes(), scrape_time());
        assert!(parsed.errors.is_empty());
        assert!(parsed.stats.scrape_error);
        assert_eq!(parsed.stats.node, None);
        assert!(parsed.stats.pods.is_empty());

        // Either gauge alone is enough (kubelets before 1.29 have only one).
        let only_old = parse(b"scrape_error 1\n", scrape_time());
        assert!(only_old.stats.scrape_error);
        let both_zero = parse(b"scrape_error 0\nresource_scrape_error 0\n", scrape_time());
        assert!(!both_zero.stats.scrape_error);
    }

    #[test]
    fn label_escapes_blanks_and_extra_labels() {
        let parsed = parse(ESCAPING.as_bytes(), scrape_time());
        assert_eq!(parsed.errors, vec![]);
        let stats = &parsed.stats;

        let odd = pod(stats, "back\\slash", "two\nlines");
        let c = container(odd, "say \"hi\"");
        assert_eq!(c.cpu.cumulative_ns, 1_500_000_000);
        assert_eq!(c.memory.working_set_bytes, 1_500_000_000);
        assert_eq!(c.memory.time, ms(1_718_023_455_120));

        let p = pod(stats, "ns", "p");
        let c = container(p, "c");
        assert_eq!(c.cpu.cumulative_ns, 2_000_000_000);
        assert_eq!(c.memory.working_set_bytes, 1024);
        assert_eq!(
            c.start_time,
            Some(UNIX_EPOCH + Duration::from_nanos(1_718_020_001_500_000_000))
        );
        let punct = container(p, "{}=,");
        assert_eq!(punct.memory.working_set_bytes, 4096);
    }

    #[test]
    fn malformed_lines_are_reported_and_the_rest_survives() {
        let parsed = parse(MALFORMED.as_bytes(), scrape_time());
        let lines: Vec<usize> = parsed.errors.iter().map(Error::line).collect();
        assert_eq!(
            lines,
            [5, 7, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 21, 23],
            "{:#?}",
            parsed.errors
        );
        assert_eq!(parsed.error_count, 14);
        let e = &parsed.errors;
        assert!(matches!(&e[0], Error::NonFinite { value, .. } if value == "NaN"));
        assert!(matches!(&e[1], Error::NonFinite { value, .. } if value == "+Inf"));
        assert_eq!(
            e[2],
            Error::Syntax {
                line: 9,
                reason: "missing value"
            }
        );
        assert_eq!(
            e[3],
            Error::Syntax {
                line: 10,
                reason: "unterminated label value"
            }
        );
        assert!(matches!(&e[4], Error::OutOfRange { value, .. } if value == "-1"));
        assert!(matches!(&e[5], Error::InvalidTimestamp { text, .. } if text == "16243962783.02"));
        assert!(matches!(
            &e[6],
            Error::MissingLabel {
                label: "pod",
                metric: "container_cpu_usage_seconds_total",
                ..
            }
        ));
        assert!(matches!(&e[7], Error::DuplicateLabel { label, .. } if label == "pod"));
        assert!(matches!(
            &e[8],
            Error::Syntax {
                reason: "invalid escape sequence in a label value",
                ..
            }
        ));
        assert!(matches!(&e[9], Error::InvalidValue { value, .. } if value == "0x1p-2"));
        assert!(matches!(
            &e[10],
            Error::Syntax {
                reason: "unexpected text after the timestamp",
                ..
            }
        ));
        assert!(matches!(&e[11], Error::DuplicateSeries { line: 19, .. }));
        assert!(matches!(&e[12], Error::OutOfRange { value, .. } if value == "1e30"));
        assert!(matches!(
            &e[13],
            Error::Syntax {
                reason: "expected a metric name",
                ..
            }
        ));

        let stats = &parsed.stats;
        let node = stats.node.as_ref().expect("node survives its bad lines");
        assert_eq!(node.cpu.cumulative_ns, 10_000_000_000);
        assert_eq!(node.memory.working_set_bytes, 1000);
        // No timestamp on the line: the scrape time stands in.
        assert_eq!(node.memory.time, scrape_time());
        assert_eq!(node.swap_bytes, None);

        let p = pod(stats, "ns", "p");
        let a = container(p, "a");
        // The duplicate on line 19 did not replace the first value.
        assert_eq!(a.cpu.cumulative_ns, 1_250_000_000);
        assert_eq!(a.memory.working_set_bytes, 2048);
        let b = container(p, "b");
        assert_eq!(b.cpu.cumulative_ns, 750_000_000);
        assert_eq!(b.cpu.time, scrape_time());
        assert_eq!(b.memory.working_set_bytes, 512);
        assert!(!stats.scrape_error);
    }

    #[test]
    fn blanks_around_labels_are_optional() {
        let parsed = parse(
            b"node_cpu_usage_seconds_total{}1 1000\n\
              pod_cpu_usage_seconds_total {namespace=\"ns\",pod=\"p\"}\t2\n\
              pod_memory_working_set_bytes{namespace=\"ns\",pod=\"p\"}3 1000\n\
              node_memory_working_set_bytes-1 1000\n",
            scrape_time(),
        );
        assert_eq!(
            parsed.errors,
            [Error::Syntax {
                line: 4,
                reason: "unexpected character after the metric name"
            }]
        );
        assert_eq!(parsed.samples, 3);
        let p = pod(&parsed.stats, "ns", "p");
        assert_eq!(p.cpu.map(|c| c.cumulative_ns), Some(2_000_000_000));
        assert_eq!(p.memory.map(|m| m.working_set_bytes), Some(3));
    }

    #[test]
    fn incomplete_node_is_dropped() {
        let parsed = parse(b"node_cpu_usage_seconds_total 10 1\n", scrape_time());
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.stats.node, None);
        assert_eq!(parsed.samples, 1);
    }

    #[test]
    fn errors_kept_are_bounded_but_all_counted() {
        // Not a metric name at all, so every line is an error (an unknown
        // but well-formed name would just be skipped).
        let body = "<garbage>\n".repeat(MAX_RECORDED_ERRORS + 10);
        let parsed = parse(body.as_bytes(), scrape_time());
        assert_eq!(parsed.errors.len(), MAX_RECORDED_ERRORS);
        assert_eq!(parsed.error_count, MAX_RECORDED_ERRORS + 10);
    }

    #[test]
    fn non_utf8_line_does_not_lose_others() {
        let mut body = b"node_cpu_usage_seconds_total 1 1000\n".to_vec();
        body.extend_from_slice(b"node_memory_working_set_bytes \xff\xfe 1000\n");
        body.extend_from_slice(b"node_memory_working_set_bytes 2 1000\n");
        let parsed = parse(&body, scrape_time());
        assert_eq!(parsed.errors, [Error::NotUtf8 { line: 2 }]);
        let node = parsed.stats.node.expect("node");
        assert_eq!(node.memory.working_set_bytes, 2);
    }

    #[test]
    fn empty_and_comment_only_bodies() {
        for body in ["", "\n", "\r\n", "# just a comment\n\n   \n\t\n"] {
            let parsed = parse(body.as_bytes(), scrape_time());
            assert_eq!(parsed, Parsed::default(), "{body:?}");
        }
    }

    #[test]
    fn no_trailing_newline() {
        let parsed = parse(
            b"node_cpu_usage_seconds_total 1 1000\nnode_memory_working_set_bytes 2 1000",
            scrape_time(),
        );
        assert!(parsed.errors.is_empty());
        assert_eq!(
            parsed.stats.node.map(|n| n.memory.working_set_bytes),
            Some(2)
        );
    }

    #[test]
    fn long_garbage_is_quoted_short() {
        let long = "9".repeat(10_000);
        let body = format!("node_memory_working_set_bytes {long} 1000\n");
        let parsed = parse(body.as_bytes(), scrape_time());
        match parsed.errors.as_slice() {
            [Error::OutOfRange { value, .. }] => {
                assert!(value.chars().count() <= MAX_QUOTED_TEXT + 1)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn timestamps_before_the_epoch_and_out_of_range() {
        let parsed = parse(
            b"node_cpu_usage_seconds_total 1 -1000\nnode_memory_working_set_bytes 1 99999999999999999999\n",
            scrape_time(),
        );
        assert_eq!(
            parsed.stats.node, None,
            "memory line is rejected, so the node is incomplete"
        );
        assert!(matches!(
            parsed.errors.as_slice(),
            [Error::InvalidTimestamp { line: 2, .. }]
        ));
    }

    fn conv(text: &str, scale: u32) -> Result<u64> {
        decimal_to_u64(text, scale, Metric::NodeCpu, 1)
    }

    #[test]
    fn decimal_conversion_is_exact_and_rounds_half_up() {
        let cases: &[(&str, u32, u64)] = &[
            ("0", 9, 0),
            ("-0", 9, 0),
            ("+0.0", 9, 0),
            ("1", 0, 1),
            ("10", 9, 10_000_000_000),
            ("4.710898", 9, 4_710_898_000),
            ("1.5e-05", 9, 15_000),
            ("1.5E+09", 0, 1_500_000_000),
            ("1.6243962483020916e+09", 9, 1_624_396_248_302_091_600),
            (".5", 9, 500_000_000),
            ("5.", 9, 5_000_000_000),
            ("0000.0001", 9, 100_000),
            // Rounding on the first dropped digit.
            ("0.0000000004", 9, 0),
            ("0.0000000005", 9, 1),
            ("0.00000000049999", 9, 0),
            ("1.9999999995", 9, 2_000_000_000),
            ("2.5", 0, 3),
            ("1e-400", 9, 0),
            ("1e-99999999999999999999999", 9, 0),
            // An exponent offset by many fractional digits.
            (&format!("0.{}1e1000", "0".repeat(999)), 0, 1),
            // Limits of u64.
            ("18446744073709551615", 0, u64::MAX),
            ("1.8446744073709551615e19", 0, u64::MAX),
            ("18446744073.709551615", 9, u64::MAX),
        ];
        for &(text, scale, want) in cases {
            assert_eq!(conv(text, scale), Ok(want), "{text} × 10^{scale}");
        }
    }

    #[test]
    fn decimal_conversion_rejects() {
        for text in [
            "18446744073709551616",
            "1e20",
            "1e400",
            "1e1000000000",
            "1e99999999999999999999999",
            "18446744073.7095516155",
        ] {
            assert!(
                matches!(
                    conv(text, if text.contains('.') { 9 } else { 0 }),
                    Err(Error::OutOfRange { .. })
                ),
                "{text}"
            );
        }
        for text in ["-1", "-0.1", "-1e-12"] {
            assert!(
                matches!(conv(text, 9), Err(Error::OutOfRange { .. })),
                "{text}"
            );
        }
        for text in ["NaN", "nan", "+Inf", "-Inf", "inf", "Infinity"] {
            assert!(
                matches!(conv(text, 9), Err(Error::NonFinite { .. })),
                "{text}"
            );
        }
        for text in [
            "", ".", "1e", "1e+", "0x10", "1_000", "1.2.3", "--1", "1 2", "e5",
        ] {
            assert!(
                matches!(conv(text, 9), Err(Error::InvalidValue { .. })),
                "{text:?}"
            );
        }
    }

    #[test]
    fn float_path_would_have_been_wrong() {
        // Guards the reason this module converts decimal text itself.
        let naive = |text: &str| text.parse::<f64>().map(|v| (v * 1e9) as u64);
        assert_eq!(naive("16.4"), Ok(16_399_999_999));
        assert_eq!(conv("16.4", 9), Ok(16_400_000_000));
        assert_eq!(naive("8.2"), Ok(8_199_999_999));
        assert_eq!(conv("8.2", 9), Ok(8_200_000_000));
    }
}
