//! Time as Kubernetes' Go code writes it: `metav1.Duration` text (Go's
//! `time.Duration.String()` and `time.ParseDuration`) and `metav1.Time`
//! (RFC 3339 in whole seconds). The served objects and the flags use both.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::go_quote;

/// Parses a Go duration flag value (`10s`, `1m30s`), for clap.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|e| e.to_string())
}

/// Text that is not a Go duration; the message mirrors Go's `time` package.
#[derive(Debug, thiserror::Error)]
#[error("time: {reason} {}", go_quote(.input))]
pub struct DurationError {
    /// Go's wording: `invalid duration`, `missing unit in duration`, …
    reason: String,
    /// The text given.
    input: String,
}

/// Formats like Go's `time.Duration.String()`: `"15.002s"`, `"1m0s"`,
/// `"500ms"`, `"1h2m3s"`, `"1.5µs"`, `"0s"`.
///
/// Go durations are int64 nanoseconds; longer values saturate at Go's maximum
/// (`2562047h47m16.854775807s`) so every output parses in Go.
pub fn go_duration(duration: Duration) -> String {
    let nanos = u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64);
    if nanos < 1_000_000_000 {
        // Below a second Go switches to the largest fitting smaller unit.
        let (precision, unit) = match nanos {
            0 => return "0s".to_owned(),
            1..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (whole, fraction) = split_fraction(nanos, precision);
        return format!("{whole}{fraction}{unit}");
    }
    let (seconds, fraction) = split_fraction(nanos, 9);
    let mut out = String::new();
    let minutes = seconds / 60;
    if minutes > 0 {
        let hours = minutes / 60;
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        out.push_str(&format!("{}m", minutes % 60));
    }
    out.push_str(&format!("{}{fraction}s", seconds % 60));
    out
}

/// Go's `fmtFrac`: `value / 10^precision` and its fraction as `.ddd` without
/// trailing zeros (empty when the fraction is zero).
fn split_fraction(value: u64, precision: u32) -> (u64, String) {
    let mut value = value;
    let mut digits = Vec::new();
    let mut significant = false;
    for _ in 0..precision {
        let digit = value % 10;
        significant = significant || digit != 0;
        if significant {
            digits.push(char::from(b'0' + digit as u8));
        }
        value /= 10;
    }
    if digits.is_empty() {
        return (value, String::new());
    }
    digits.push('.');
    (value, digits.into_iter().rev().collect())
}

/// Parses Go `time.ParseDuration` text (`"15s"`, `"1m30s"`, `"1.5h"`,
/// `"500ms"`, `"2µs"`), for configuration values written the way
/// metrics-server's flags are and to prove [`go_duration`] round-trips.
/// Negative durations are rejected (a `std::time::Duration` cannot hold them).
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError {
        reason: reason.to_owned(),
        input: text.to_owned(),
    };
    let mut s = text;
    if let Some(rest) = s.strip_prefix('-') {
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        return Err(fail("negative duration"));
    }
    s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(fail("invalid duration"));
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let mut rest = rest;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (frac_part, rest) = after_dot.split_at(frac_len);
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(fail("invalid duration"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let (unit, remainder) = rest.split_at(unit_len);
        let unit_nanos: u64 = match unit {
            "" => return Err(fail("missing unit in duration")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError {
                    reason: format!("unknown unit {} in duration", go_quote(other)),
                    input: text.to_owned(),
                });
            }
        };
        let whole: u64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| fail("invalid duration"))?
        };
        let mut value = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| fail("invalid duration"))?;
        // Fractions are exact up to the nanosecond; extra digits are dropped
        // like Go drops those that would overflow.
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for digit in frac_part.bytes().take(30) {
            numerator = numerator * 10 + u128::from(digit - b'0');
            denominator *= 10;
        }
        let fraction = numerator * u128::from(unit_nanos) / denominator;
        value = u64::try_from(fraction)
            .ok()
            .and_then(|f| value.checked_add(f))
            .ok_or_else(|| fail("invalid duration"))?;
        total = total
            .checked_add(value)
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| fail("invalid duration"))?;
        s = remainder;
    }
    Ok(Duration::from_nanos(total))
}

/// Formats a time as RFC 3339 UTC with whole seconds, like `metav1.Time`
/// (`"2021-12-17T17:57:42Z"`). Sub-second parts are truncated, as Go does.
pub fn rfc3339_seconds(time: SystemTime) -> String {
    let seconds: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // Floor, so 0.5 s before the epoch is 23:59:59 of the previous day.
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    };
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), so no date crate is needed for one format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn go_duration_matches_go() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ns"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(1), "1µs"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(1_500), "1.5ms"),
            (Duration::from_nanos(1_000_001), "1.000001ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(15_002), "15.002s"),
            (Duration::from_secs(15), "15s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_nanos(3_723_000_000_001), "1h2m3.000000001s"),
            (Duration::from_secs(100 * 3600), "100h0m0s"),
            (
                Duration::from_nanos(i64::MAX as u64),
                "2562047h47m16.854775807s",
            ),
            (Duration::MAX, "2562047h47m16.854775807s"),
        ];
        for (d, want) in cases {
            assert_eq!(go_duration(*d), *want, "{d:?}");
        }
    }

    #[test]
    fn parse_go_duration_accepts_go_syntax() {
        let ok = |s: &str| parse_go_duration(s).expect(s);
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("15s"), Duration::from_secs(15));
        assert_eq!(ok("+15s"), Duration::from_secs(15));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("15.002s"), Duration::from_millis(15_002));
        assert_eq!(ok("1.5µs"), Duration::from_nanos(1_500));
        assert_eq!(ok("2μs"), Duration::from_micros(2), "Greek mu too");
        assert_eq!(ok("3us"), Duration::from_micros(3));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok("1ns1ns"), Duration::from_nanos(2));
    }

    #[test]
    fn parse_go_duration_rejects_like_go() {
        let msg = |s: &str| parse_go_duration(s).expect_err(s).to_string();
        assert_eq!(msg(""), "time: invalid duration \"\"");
        assert_eq!(msg("1"), "time: missing unit in duration \"1\"");
        assert_eq!(msg("1x"), "time: unknown unit \"x\" in duration \"1x\"");
        assert_eq!(msg("s"), "time: invalid duration \"s\"");
        assert_eq!(msg("."), "time: invalid duration \".\"");
        assert_eq!(msg("-1s"), "time: negative duration \"-1s\"");
        assert_eq!(
            msg("9999999999999999999h"),
            "time: invalid duration \"9999999999999999999h\""
        );
        assert_eq!(msg("2562048h"), "time: invalid duration \"2562048h\"");
    }

    proptest! {
        #[test]
        fn go_duration_round_trips(n in 0u64..=(i64::MAX as u64)) {
            let d = Duration::from_nanos(n);
            prop_assert_eq!(parse_go_duration(&go_duration(d)).ok(), Some(d));
        }

        #[test]
        fn rfc3339_is_well_formed(secs in 0u64..253_402_300_800) {
            let text = rfc3339_seconds(at(secs));
            prop_assert_eq!(text.len(), 20);
            prop_assert!(text.ends_with('Z'));
        }
    }

    #[test]
    fn rfc3339_matches_go() {
        assert_eq!(rfc3339_seconds(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(at(1_639_763_862)), "2021-12-17T17:57:42Z");
        assert_eq!(
            rfc3339_seconds(at(1_639_763_862) + Duration::from_millis(999)),
            "2021-12-17T17:57:42Z",
            "truncated, not rounded"
        );
        assert_eq!(rfc3339_seconds(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_seconds(at(4_107_542_399)), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_seconds(at(253_402_300_799)), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH - Duration::from_secs(86_400 * 365)),
            "1969-01-01T00:00:00Z"
        );
    }
}
