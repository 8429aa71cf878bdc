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
use std::{
    borrow::Cow,
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
/// let parsed = agent::kubelet::parse::parse(body, SystemTime::now());
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

/// The metrics of the kubelet's resource collector that we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    NodeCpu,
    NodeMemory,
    NodeSwap,
    ContainerCpu,
    ContainerMemory,
    ContainerSwap,
    ContainerStartTime,
    PodCpu,
    PodMemory,
    PodSwap,
    ScrapeError,
    ResourceScrapeError,
}

impl Metric {
    const ALL: [Metric; 12] = [
        Metric::NodeCpu,
        Metric::NodeMemory,
        Metric::NodeSwap,
        Metric::ContainerCpu,
        Metric::ContainerMemory,
        Metric::ContainerSwap,
        Metric::ContainerStartTime,
        Metric::PodCpu,
        Metric::PodMemory,
        Metric::PodSwap,
        Metric::ScrapeError,
        Metric::ResourceScrapeError,
    ];

    fn name(self) -> &'static str {
        match self {
            Metric::NodeCpu => "node_cpu_usage_seconds_total",
            Metric::NodeMemory => "node_memory_working_set_bytes",
            Metric::NodeSwap => "node_swap_usage_bytes",
            Metric::ContainerCpu => "container_cpu_usage_seconds_total",
            Metric::ContainerMemory => "container_memory_working_set_bytes",
            Metric::ContainerSwap => "container_swap_usage_bytes",
            Metric::ContainerStartTime => "container_start_time_seconds",
            Metric::PodCpu => "pod_cpu_usage_seconds_total",
            Metric::PodMemory => "pod_memory_working_set_bytes",
            Metric::PodSwap => "pod_swap_usage_bytes",
            Metric::ScrapeError => "scrape_error",
            Metric::ResourceScrapeError => "resource_scrape_error",
        }
    }

    fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Which object the series belongs to, which decides the labels it needs.
    fn scope(self) -> Scope {
        match self {
            Metric::NodeCpu | Metric::NodeMemory | Metric::NodeSwap => Scope::Node,
            Metric::ContainerCpu
            | Metric::ContainerMemory
            | Metric::ContainerSwap
            | Metric::ContainerStartTime => Scope::Container,
            Metric::PodCpu | Metric::PodMemory | Metric::PodSwap => Scope::Pod,
            Metric::ScrapeError | Metric::ResourceScrapeError => Scope::Node,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Node,
    Pod,
    Container,
}

/// One accepted sample, already converted.
#[derive(Debug)]
struct Sample {
    metric: Metric,
    /// `(namespace, pod)` for pod and container series.
    pod: Option<(String, String)>,
    container: Option<String>,
    value: Value,
    time: SystemTime,
}

#[derive(Debug)]
enum Value {
    /// Core-nanoseconds, nanoseconds since the epoch, or bytes.
    Integer(u64),
    Flag(bool),
}

/// Parses one line (without its `\n` or `\r\n`). `Ok(None)` for blank lines,
/// comments and metrics we do not read.
fn parse_line(raw: &[u8], line: usize, scrape_time: SystemTime) -> Result<Option<Sample>> {
    let text = std::str::from_utf8(raw).map_err(|_| Error::NotUtf8 { line })?;
    let mut cur = Cursor::new(text);
    cur.skip_blanks();
    match cur.peek() {
        // Blank line, or `# HELP` / `# TYPE` / any comment.
        None | Some(b'#') => return Ok(None),
        // `{"quoted.name", ...}`: the UTF-8 metric-name syntax of newer
        // Prometheus formats. None of our metrics needs it.
        Some(b'{') => return Ok(None),
        Some(_) => {}
    }
    let name = cur.take_while(is_name_char);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(Error::Syntax {
            line,
            reason: "expected a metric name",
        });
    }
    let Some(metric) = Metric::from_name(name) else {
        return Ok(None);
    };

    // Blanks may separate the name from `{`, and `}` from the value, as in
    // Prometheus' own parser; without labels a blank must end the name.
    let blank_after_name = cur.skip_blanks();
    let labels = if cur.peek() == Some(b'{') {
        cur.bump();
        let labels = parse_labels(&mut cur, line)?;
        cur.skip_blanks();
        labels
    } else if blank_after_name || cur.peek().is_none() {
        Vec::new()
    } else {
        return Err(Error::Syntax {
            line,
            reason: "unexpected character after the metric name",
        });
    };
    let value_text = cur.take_while(|b| !is_blank(b));
    if value_text.is_empty() {
        return Err(Error::Syntax {
            line,
            reason: "missing value",
        });
    }
    cur.skip_blanks();
    let timestamp_text = cur.take_while(|b| !is_blank(b));
    cur.skip_blanks();
    if cur.peek().is_some() {
        return Err(Error::Syntax {
            line,
            reason: "unexpected text after the timestamp",
        });
    }

    let time = if timestamp_text.is_empty() {
        scrape_time
    } else {
        timestamp_text
            .parse::<i64>()
            .ok()
            .and_then(millis_to_time)
            .ok_or_else(|| Error::InvalidTimestamp {
                line,
                text: quote(timestamp_text),
            })?
    };

    let (pod, container) = match metric.scope() {
        Scope::Node => (None, None),
        Scope::Pod => (Some(pod_ref(&labels, metric, line)?), None),
        Scope::Container => {
            let container = required_label(&labels, "container", metric, line)?;
            (Some(pod_ref(&labels, metric, line)?), Some(container))
        }
    };

    let value = match metric {
        Metric::ScrapeError | Metric::ResourceScrapeError => {
            let v = parse_finite(value_text, metric, line)?;
            Value::Flag(v != 0.0)
        }
        Metric::NodeCpu | Metric::ContainerCpu | Metric::PodCpu | Metric::ContainerStartTime => {
            // Seconds → nanoseconds.
            Value::Integer(decimal_to_u64(value_text, 9, metric, line)?)
        }
        Metric::NodeMemory
        | Metric::NodeSwap
        | Metric::ContainerMemory
        | Metric::ContainerSwap
        | Metric::PodMemory
        | Metric::PodSwap => Value::Integer(decimal_to_u64(value_text, 0, metric, line)?),
    };

    Ok(Some(Sample {
        metric,
        pod,
        container,
        value,
        time,
    }))
}

type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Parses `name="value", ...}` (the `{` already consumed). Blanks are allowed
/// around every token and a trailing comma before `}`, as Prometheus' own
/// text parser allows.
fn parse_labels<'a>(cur: &mut Cursor<'a>, line: usize) -> Result<Labels<'a>> {
    let mut labels: Labels<'a> = Vec::new();
    loop {
        cur.skip_blanks();
        if cur.peek() == Some(b'}') {
            cur.bump();
            return Ok(labels);
        }
        let name = cur.take_while(is_label_name_char);
        if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
            return Err(Error::Syntax {
                line,
                reason: "expected a label name",
            });
        }
        cur.skip_blanks();
        if !cur.eat(b'=') {
            return Err(Error::Syntax {
                line,
                reason: "expected '=' after a label name",
            });
        }
        cur.skip_blanks();
        if !cur.eat(b'"') {
            return Err(Error::Syntax {
                line,
                reason: "expected '\"' to open a label value",
            });
        }
        let value = parse_label_value(cur, line)?;
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(Error::DuplicateLabel {
                line,
                label: name.to_owned(),
            });
        }
        labels.push((name, value));
        cur.skip_blanks();
        match cur.bump() {
            Some(b',') => {}
            Some(b'}') => return Ok(labels),
            _ => {
                return Err(Error::Syntax {
                    line,
                    reason: "expected ',' or '}' after a label value",
                });
            }
        }
    }
}

/// Reads a label value up to its closing quote (the opening one consumed),
/// resolving the three escapes the format defines: `\\`, `\"`, `\n`.
fn parse_label_value<'a>(cur: &mut Cursor<'a>, line: usize) -> Result<Cow<'a, str>> {
    let start = cur.pos;
    // Fast path: no escapes, borrow the slice.
    loop {
        match cur.peek() {
            None => {
                return Err(Error::Syntax {
                    line,
                    reason: "unterminated label value",
                });
            }
            Some(b'"') => {
                let value = &cur.text[start..cur.pos];
                cur.bump();
                return Ok(Cow::Borrowed(value));
            }
            Some(b'\\') => break,
            Some(_) => {
                cur.bump();
            }
        }
    }
    let mut owned = cur.text[start..cur.pos].to_owned();
    loop {
        // Non-ASCII text is copied a whole run at a time, so multi-byte
        // characters are never split.
        let run = cur.take_while(|b| b != b'"' && b != b'\\');
        owned.push_str(run);
        match cur.bump() {
            None => {
                return Err(Error::Syntax {
                    line,
                    reason: "unterminated label value",
                });
            }
            Some(b'"') => return Ok(Cow::Owned(owned)),
            Some(_backslash) => match cur.bump() {
                Some(b'\\') => owned.push('\\'),
                Some(b'"') => owned.push('"'),
                Some(b'n') => owned.push('\n'),
                _ => {
                    return Err(Error::Syntax {
                        line,
                        reason: "invalid escape sequence in a label value",
                    });
                }
            },
        }
    }
}

fn required_label(
    labels: &Labels<'_>,
    label: &'static str,
    metric: Metric,
    line: usize,
) -> Result<String> {
    labels
        .iter()
        .find(|(n, _)| *n == label)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .map(|v| v.clone().into_owned())
        .ok_or(Error::MissingLabel {
            line,
            metric: metric.name(),
            label,
        })
}

fn pod_ref(labels: &Labels<'_>, metric: Metric, line: usize) -> Result<(String, String)> {
    Ok((
        required_label(labels, "namespace", metric, line)?,
        required_label(labels, "pod", metric, line)?,
    ))
}

/// A byte cursor over one line. The bytes it stops at are all ASCII, so every
/// slice it hands out falls on a UTF-8 character boundary.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> bool {
        if self.peek() == Some(want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; true if it skipped any.
    fn skip_blanks(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Takes bytes while `pred` holds. `pred` must be false for at least one
    /// ASCII byte between any two characters it is true for, which all the
    /// predicates here are (they accept either only ASCII, or everything but
    /// some ASCII bytes).
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

fn is_label_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Milliseconds since the epoch, as the exposition format's timestamps are.
fn millis_to_time(ms: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// Truncates text quoted back in an error, on a character boundary.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses with Go's `ParseFloat` rules as far as Rust's `f64` grammar goes,
/// and rejects `NaN`/`±Inf`.
fn parse_finite(text: &str, metric: Metric, line: usize) -> Result<f64> {
    let v: f64 = text.parse().map_err(|_| Error::InvalidValue {
        line,
        metric: metric.name(),
        value: quote(text),
    })?;
    if v.is_finite() {
        return Ok(v);
    }
    // `NaN`/`Inf` spelled out are non-finite samples; digits that overflow
    // an `f64` (`1e400`) are a finite number out of our range.
    let spelled = text
        .trim_start_matches(['+', '-'])
        .starts_with(|c: char| c.is_ascii_alphabetic());
    Err(if spelled {
        Error::NonFinite {
            line,
            metric: metric.name(),
            value: quote(text),
        }
    } else {
        Error::OutOfRange {
            line,
            metric: metric.name(),
            value: quote(text),
        }
    })
}

/// Converts decimal text to `round(value × 10^scale)` as a `u64`, exactly:
/// the digits are shifted in decimal, never through a binary float, and the
/// result is rounded half up. Accepts `[+-]digits[.digits][(e|E)[+-]digits]`
/// (and `.5`, `5.`); rejects negatives, non-finite values and anything that
/// does not fit.
fn decimal_to_u64(text: &str, scale: u32, metric: Metric, line: usize) -> Result<u64> {
    // The float parse classifies the text (syntax, NaN/Inf, sign) with the
    // standard library's grammar; the exact conversion below does the rest.
    let approx = parse_finite(text, metric, line)?;
    let out_of_range = || Error::OutOfRange {
        line,
        metric: metric.name(),
        value: quote(text),
    };
    let invalid = || Error::InvalidValue {
        line,
        metric: metric.name(),
        value: quote(text),
    };
    if approx < 0.0 {
        return Err(out_of_range());
    }

    let bytes = text.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    // Significant digits (leading zeros dropped) and how many of all the
    // digits seen were after the point.
    let mut digits: Vec<u8> = Vec::new();
    let mut frac_digits: i64 = 0;
    let mut seen_digit = false;
    let mut seen_point = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'0'..=b'9' => {
                seen_digit = true;
                if !digits.is_empty() || b != b'0' {
                    digits.push(b - b'0');
                }
                if seen_point {
                    frac_digits += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => break,
        }
        i += 1;
    }
    if !seen_digit {
        return Err(invalid());
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            // Saturating: no line can hold enough digits to offset an
            // exponent anywhere near i64::MAX, so the result stays exact.
            exponent = exponent
                .saturating_mul(10)
                .saturating_add(i64::from(b - b'0'));
            i += 1;
        }
        if i == start {
            return Err(invalid());
        }
        if negative {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        // Something `f64` accepts but plain decimal is not (e.g. "inf" was
        // already rejected above; this catches any future grammar drift).
        return Err(invalid());
    }
    if digits.is_empty() {
        return Ok(0);
    }

    // value = digits × 10^shift
    let shift = exponent
        .saturating_sub(frac_digits)
        .saturating_add(i64::from(scale));
    let n = digits.len() as i64;
    // u64::MAX has 20 digits.
    let accumulate = |ds: &[u8]| -> Option<u128> {
        ds.iter().try_fold(0u128, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u128::from(d))
        })
    };
    let result: Option<u128> = if shift >= 0 {
        if n.saturating_add(shift) > 20 {
            None
        } else {
            let shift = u32::try_from(shift).map_err(|_| out_of_range())?;
            accumulate(&digits).and_then(|m| m.checked_mul(10u128.checked_pow(shift)?))
        }
    } else {
        // Drop the last `-shift` digits, rounding on the first dropped one.
        let keep = n.saturating_add(shift);
        if keep < 0 {
            // Below a tenth of the unit: rounds to zero.
            Some(0)
        } else if keep > 20 {
            None
        } else {
            let keep = keep as usize;
            let round_up = digits.get(keep).is_some_and(|&d| d >= 5);
            accumulate(&digits[..keep]).and_then(|m| m.checked_add(u128::from(round_up)))
        }
    };
    result
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(out_of_range)
}

#[derive(Default)]
struct PartialContainer {
    cpu: Option<CpuUsage>,
    memory: Option<MemoryUsage>,
    swap: Option<u64>,
    start_time: Option<SystemTime>,
}

#[derive(Default)]
struct PartialPod {
    cpu: Option<CpuUsage>,
    memory: Option<MemoryUsage>,
    swap: Option<u64>,
    containers: BTreeMap<String, PartialContainer>,
}

/// Collects samples into per-object slots; a slot filled twice is a
/// [`Error::DuplicateSeries`].
#[derive(Default)]
struct Builder {
    node_cpu: Option<CpuUsage>,
    node_memory: Option<MemoryUsage>,
    node_swap: Option<u64>,
    pods: BTreeMap<(String, String), PartialPod>,
    scrape_error: Option<bool>,
    resource_scrape_error: Option<bool>,
    samples: usize,
}

fn fill<T>(slot: &mut Option<T>, value: T, metric: Metric, line: usize) -> Result<()> {
    if slot.is_some() {
        return Err(Error::DuplicateSeries {
            line,
            metric: metric.name(),
        });
    }
    *slot = Some(value);
    Ok(())
}

impl Builder {
    fn add(&mut self, sample: Sample, line: usize) -> Result<()> {
        let Sample {
            metric,
            pod,
            container,
            value,
            time,
        } = sample;
        let int = match value {
            Value::Integer(v) => v,
            Value::Flag(flag) => {
                let slot = if metric == Metric::ScrapeError {
                    &mut self.scrape_error
                } else {
                    &mut self.resource_scrape_error
                };
                fill(slot, flag, metric, line)?;
                self.samples += 1;
                return Ok(());
            }
        };
        let cpu = CpuUsage {
            cumulative_ns: int,
            time,
        };
        let memory = MemoryUsage {
            working_set_bytes: int,
            time,
        };
        let pod = pod.map(|key| self.pods.entry(key).or_default());
        match (metric, pod, container) {
            (Metric::NodeCpu, _, _) => fill(&mut self.node_cpu, cpu, metric, line)?,
            (Metric::NodeMemory, _, _) => fill(&mut self.node_memory, memory, metric, line)?,
            (Metric::NodeSwap, _, _) => fill(&mut self.node_swap, int, metric, line)?,
            (Metric::PodCpu, Some(pod), _) => fill(&mut pod.cpu, cpu, metric, line)?,
            (Metric::PodMemory, Some(pod), _) => fill(&mut pod.memory, memory, metric, line)?,
            (Metric::PodSwap, Some(pod), _) => fill(&mut pod.swap, int, metric, line)?,
            (_, Some(pod), Some(name)) => {
                let c = pod.containers.entry(name).or_default();
                match metric {
                    Metric::ContainerCpu => fill(&mut c.cpu, cpu, metric, line)?,
                    Metric::ContainerMemory => fill(&mut c.memory, memory, metric, line)?,
                    Metric::ContainerSwap => fill(&mut c.swap, int, metric, line)?,
                    Metric::ContainerStartTime => {
                        let start = UNIX_EPOCH.checked_add(Duration::from_nanos(int)).ok_or(
                            Error::OutOfRange {
                                line,
                                metric: metric.name(),
                                value: int.to_string(),
                            },
                        )?;
                        fill(&mut c.start_time, start, metric, line)?;
                    }
                    // Unreachable by construction: `parse_line` gives every
                    // container metric a pod and a container name.
                    _ => return Ok(()),
                }
            }
            // Likewise unreachable: pod and container series always carry
            // their identity out of `parse_line`.
            _ => return Ok(()),
        }
        self.samples += 1;
        Ok(())
    }

    fn finish(self) -> KubeletStats {
        let node = match (self.node_cpu, self.node_memory) {
            (Some(cpu), Some(memory)) => Some(NodeStats {
                cpu,
                memory,
                swap_bytes: self.node_swap,
            }),
            _ => None,
        };
        let pods = self
            .pods
            .into_iter()
            .map(|((namespace, name), pod)| {
                let mut containers = Vec::new();
                let mut incomplete_containers = Vec::new();
                for (name, c) in pod.containers {
                    match (c.cpu, c.memory) {
                        (Some(cpu), Some(memory)) => containers.push(ContainerStats {
                            name,
                            cpu,
                            memory,
                            swap_bytes: c.swap,
                            start_time: c.start_time,
                        }),
                        _ => incomplete_containers.push(name),
                    }
                }
                PodStats {
                    namespace,
                    name,
                    cpu: pod.cpu,
                    memory: pod.memory,
                    swap_bytes: pod.swap,
                    containers,
                    incomplete_containers,
                }
            })
            .collect();
        KubeletStats {
            node,
            pods,
            scrape_error: self.scrape_error.unwrap_or(false)
                || self.resource_scrape_error.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
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
