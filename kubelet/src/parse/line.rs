//! One line of the exposition format: its grammar, the metric it names, and
//! its numbers converted exactly.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{Error, MAX_QUOTED_TEXT, Result};

/// The metrics of the kubelet's resource collector that we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Metric {
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

    pub(super) fn name(self) -> &'static str {
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
pub(super) enum Scope {
    Node,
    Pod,
    Container,
}

/// One accepted sample, already converted.
#[derive(Debug)]
pub(super) struct Sample {
    pub(super) metric: Metric,
    /// `(namespace, pod)` for pod and container series.
    pub(super) pod: Option<(String, String)>,
    pub(super) container: Option<String>,
    pub(super) value: Value,
    pub(super) time: SystemTime,
}

#[derive(Debug)]
pub(super) enum Value {
    /// Core-nanoseconds, nanoseconds since the epoch, or bytes.
    Integer(u64),
    Flag(bool),
}

/// Parses one line (without its `\n` or `\r\n`). `Ok(None)` for blank lines,
/// comments and metrics we do not read.
pub(super) fn parse_line(
    raw: &[u8],
    line: usize,
    scrape_time: SystemTime,
) -> Result<Option<Sample>> {
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
pub(super) fn parse_labels<'a>(cur: &mut Cursor<'a>, line: usize) -> Result<Labels<'a>> {
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
pub(super) fn parse_label_value<'a>(cur: &mut Cursor<'a>, line: usize) -> Result<Cow<'a, str>> {
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

pub(super) fn required_label(
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

pub(super) fn pod_ref(
    labels: &Labels<'_>,
    metric: Metric,
    line: usize,
) -> Result<(String, String)> {
    Ok((
        required_label(labels, "namespace", metric, line)?,
        required_label(labels, "pod", metric, line)?,
    ))
}

/// A byte cursor over one line. The bytes it stops at are all ASCII, so every
/// slice it hands out falls on a UTF-8 character boundary.
pub(super) struct Cursor<'a> {
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

pub(super) fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

pub(super) fn is_label_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Milliseconds since the epoch, as the exposition format's timestamps are.
pub(super) fn millis_to_time(ms: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// Truncates text quoted back in an error, on a character boundary.
pub(super) fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses with Go's `ParseFloat` rules as far as Rust's `f64` grammar goes,
/// and rejects `NaN`/`±Inf`.
pub(super) fn parse_finite(text: &str, metric: Metric, line: usize) -> Result<f64> {
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
pub(super) fn decimal_to_u64(text: &str, scale: u32, metric: Metric, line: usize) -> Result<u64> {
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
