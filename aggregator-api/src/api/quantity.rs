//! Kubernetes resource quantities: the canonical strings metrics-server puts
//! under `usage.cpu` and `usage.memory`, and a parser for the quantity grammar.
//!
//! Consumers accept any valid quantity, but byte-for-byte parity with
//! metrics-server needs apimachinery's canonical form
//! (`pkg/api/resource/quantity.go` `CanonicalizeBytes`, `amount.go`):
//! - cpu is a `DecimalSI` quantity of nanocores: trailing zeros move into the
//!   exponent (starting at 10^-9), the exponent is then *lowered* to a multiple
//!   of three, and the exponent picks the suffix `n`/`u`/`m`/``/`k`/`M`/`G`.
//! - memory is a `BinarySI` quantity of bytes: values with magnitude below 1024
//!   are printed as `DecimalSI` (so 1000 bytes is `1k`, as apimachinery prints
//!   it), larger values are divided by 1024 while that is exact and get
//!   `Ki`/`Mi`/`Gi`/`Ti`/`Pi`/`Ei`.
//!
//! The parser exists so tests (and property tests) can prove every formatted
//! string means exactly the number it came from; it follows apimachinery's
//! grammar and error messages.

use std::fmt::{self, Write};

/// What can go wrong reading a quantity or converting it to an integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text does not follow the quantity grammar (apimachinery `ErrFormatWrong`).
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    /// The suffix is made of valid characters but means nothing (apimachinery `ErrSuffix`).
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// More significant digits than fit in 128 bits; apimachinery would keep
    /// them, but no usage value needs them.
    #[error("quantity has more significant digits than supported")]
    TooPrecise,
    /// The value does not fit the integer asked for.
    #[error("quantity is out of range for the requested integer")]
    OutOfRange,
    /// The value is not a whole number of the requested unit.
    #[error("quantity is not a whole multiple of 10^{scale}")]
    Inexact {
        /// The power of ten of the requested unit (-9 for nano).
        scale: i32,
    },
    /// A negative value where only non-negative ones make sense.
    #[error("quantity is negative")]
    Negative,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Powers of 10 to suffixes for `DecimalSI`, as apimachinery's suffixer.
fn decimal_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// Powers of 1024 to suffixes for `BinarySI`.
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Canonical `DecimalSI` text for `mantissa × 10^exponent`, as
/// `int64Amount.AsCanonicalBytes` followed by the decimal suffixer.
fn write_decimal(out: &mut impl Write, mantissa: u128, exponent: i32) -> fmt::Result {
    if mantissa == 0 {
        return out.write_str("0");
    }
    let (mut mantissa, mut exponent) = (mantissa, exponent);
    // u128 division is a library call; every real value fits a u64.
    if let Ok(mut small) = u64::try_from(mantissa) {
        while small % 10 == 0 {
            small /= 10;
            exponent += 1;
        }
        mantissa = u128::from(small);
    } else {
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exponent += 1;
        }
    }
    // Lower the exponent to a multiple of three; the mantissa grows instead.
    // rem_euclid gives Go's {1,-2} → ×10 and {2,-1} → ×100 cases.
    match exponent.rem_euclid(3) {
        1 => {
            mantissa *= 10;
            exponent -= 1;
        }
        2 => {
            mantissa *= 100;
            exponent -= 2;
        }
        _ => {}
    }
    match u64::try_from(mantissa) {
        Ok(small) => write!(out, "{small}")?,
        Err(_) => write!(out, "{mantissa}")?,
    }
    match decimal_suffix(exponent) {
        Some(suffix) => out.write_str(suffix),
        // Beyond the SI table apimachinery falls back to an exponent; a u64 of
        // nanocores or bytes never gets here, but the function stays total.
        None => write!(out, "e{exponent}"),
    }
}

fn to_string(write: impl FnOnce(&mut String) -> fmt::Result) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write(&mut out);
    out
}

/// Canonical quantity for a CPU rate in nanocores, as metrics-server renders
/// `resource.NewScaledQuantity(n, -9)` with `DecimalSI`.
///
/// `7338891` → `"7338891n"`, `13000000` → `"13m"`, `2500000` → `"2500u"`,
/// `10^9` → `"1"`, `1500000000` → `"1500m"`, `10^12` → `"1k"`, `0` → `"0"`.
///
/// Values above `i64::MAX` are formatted exactly; metrics-server drops a
/// decimal digit there to fit an int64 (unreachable for real CPU rates).
pub fn format_cpu_nanocores(nanocores: u64) -> String {
    to_string(|out| write_cpu_nanocores(out, nanocores))
}

/// [`format_cpu_nanocores`] into `out`, without allocating.
pub fn write_cpu_nanocores(out: &mut impl Write, nanocores: u64) -> fmt::Result {
    write_decimal(out, u128::from(nanocores), -9)
}

/// Canonical quantity for a byte count, as metrics-server renders
/// `resource.NewQuantity(b, BinarySI)`.
///
/// `0` → `"0"`, `512` → `"512"`, `1000` → `"1k"` (below 1024 apimachinery
/// switches to `DecimalSI`), `1536` → `"1536"`, `1024000` → `"1000Ki"`,
/// `14868480` → `"14520Ki"`, `4194304` → `"4Mi"`, `123456789` → `"123456789"`.
pub fn format_bytes(bytes: u64) -> String {
    to_string(|out| write_bytes(out, bytes))
}

/// [`format_bytes`] into `out`, without allocating.
pub fn write_bytes(out: &mut impl Write, bytes: u64) -> fmt::Result {
    if bytes < 1024 {
        return write_decimal(out, u128::from(bytes), 0);
    }
    let mut mantissa = bytes;
    let mut power = 0usize;
    while mantissa.is_multiple_of(1024) && power + 1 < BINARY_SUFFIXES.len() {
        mantissa /= 1024;
        power += 1;
    }
    write!(out, "{mantissa}")?;
    out.write_str(BINARY_SUFFIXES[power])
}

/// A `fmt::Write` over a byte buffer, so text can be formatted straight into
/// a response body.
pub struct ByteSink<'a>(pub &'a mut Vec<u8>);

impl Write for ByteSink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// An exactly represented quantity: `±mantissa × 10^exp10 × 2^exp2`.
///
/// Only what round-tripping and range checks need; it does not re-format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i64,
    exp2: u32,
}

impl Quantity {
    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative && self.mantissa != 0
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// The value in units of `10^scale` (scale -9: nano units), when it is a
    /// non-negative whole number of them that fits in 128 bits.
    pub fn to_scaled(&self, scale: i32) -> Result<u128> {
        if self.mantissa == 0 {
            return Ok(0);
        }
        if self.negative {
            return Err(Error::Negative);
        }
        let two_power = 2u128.checked_pow(self.exp2).ok_or(Error::OutOfRange)?;
        let mut value = self
            .mantissa
            .checked_mul(two_power)
            .ok_or(Error::OutOfRange)?;
        let shift = self.exp10 - i64::from(scale);
        if shift >= 0 {
            let factor = u32::try_from(shift)
                .ok()
                .and_then(|s| 10u128.checked_pow(s))
                .ok_or(Error::OutOfRange)?;
            value = value.checked_mul(factor).ok_or(Error::OutOfRange)?;
        } else {
            let divisor = u32::try_from(-shift)
                .ok()
                .and_then(|s| 10u128.checked_pow(s));
            match divisor {
                Some(d) if value % d == 0 => value /= d,
                // A divisor beyond u128 exceeds any non-zero value: not whole.
                _ => return Err(Error::Inexact { scale }),
            }
        }
        Ok(value)
    }

    /// The value as whole nanounits (cpu: nanocores).
    pub fn to_nanos(&self) -> Result<u64> {
        u64::try_from(self.to_scaled(-9)?).map_err(|_| Error::OutOfRange)
    }

    /// The value as a whole number of units (memory: bytes).
    pub fn to_units(&self) -> Result<u64> {
        u64::try_from(self.to_scaled(0)?).map_err(|_| Error::OutOfRange)
    }
}

impl std::str::FromStr for Quantity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        parse_quantity(s)
    }
}

/// Characters apimachinery allows in a suffix before an optional signed exponent.
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";

/// Parses a quantity in apimachinery's grammar:
/// `[+-]?(digits | digits. | digits.digits | .digits)(suffix)` where suffix is
/// one of `n u m "" k M G T P E`, `Ki Mi Gi Ti Pi Ei`, or `e`/`E` and a signed
/// integer exponent.
///
/// Stricter than apimachinery on degenerate input: a number with no digit at
/// all (`"."`, `"-"`) is rejected rather than read as zero.
pub fn parse_quantity(text: &str) -> Result<Quantity> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(Error::Format);
    }
    let mut pos = 0;
    let mut negative = false;
    match bytes[0] {
        b'-' => {
            negative = true;
            pos += 1;
        }
        b'+' => pos += 1,
        _ => {}
    }
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_digits = &text[int_start..pos];
    let mut frac_digits = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_digits = &text[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(Error::Format);
    }

    // The suffix: letters from the suffix alphabet, then an optional signed number.
    let suffix_start = pos;
    while pos < bytes.len() && SUFFIX_CHARS.contains(&bytes[pos]) {
        pos += 1;
    }
    if pos < bytes.len() && (bytes[pos] == b'-' || bytes[pos] == b'+') {
        pos += 1;
    }
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos != bytes.len() {
        return Err(Error::Format);
    }
    let (suffix_exp10, exp2) = interpret_suffix(&text[suffix_start..])?;

    // Significant digits: drop leading zeros, fold trailing zeros into the exponent.
    let digits: String = int_digits.chars().chain(frac_digits.chars()).collect();
    let significant = digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    let trailing_zeros = (significant.len() - trimmed.len()) as i64;
    let mantissa = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse::<u128>().map_err(|_| Error::TooPrecise)?
    };
    let exp10 = suffix_exp10 + trailing_zeros - frac_digits.len() as i64;
    Ok(Quantity {
        negative,
        mantissa,
        exp10,
        exp2,
    })
}

/// Maps a suffix to (power of ten, power of two), as apimachinery's
/// `suffixHandler.interpret`: the SI tables first, then `e<int>`/`E<int>`.
fn interpret_suffix(suffix: &str) -> Result<(i64, u32)> {
    let decimal = match suffix {
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exp10) = decimal {
        return Ok((exp10, 0));
    }
    if let Some(power) = BINARY_SUFFIXES[1..].iter().position(|s| *s == suffix) {
        return Ok((0, 10 * (power as u32 + 1)));
    }
    let mut chars = suffix.chars();
    if suffix.len() > 1 && matches!(chars.next(), Some('e' | 'E')) {
        let exponent: i64 = chars.as_str().parse().map_err(|_| Error::Suffix)?;
        // Go keeps the exponent as an int32.
        if i32::try_from(exponent).is_err() {
            return Err(Error::Suffix);
        }
        return Ok((exponent, 0));
    }
    Err(Error::Suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu_examples_from_the_contract() {
        assert_eq!(format_cpu_nanocores(7_338_891), "7338891n");
        assert_eq!(format_cpu_nanocores(13_000_000), "13m");
        assert_eq!(format_cpu_nanocores(2_500_000), "2500u");
        assert_eq!(format_cpu_nanocores(1_000_000_000), "1");
        assert_eq!(format_cpu_nanocores(0), "0");
        assert_eq!(format_cpu_nanocores(1_500_000_000), "1500m");
        assert_eq!(format_cpu_nanocores(2_000_000_000), "2");
        assert_eq!(format_cpu_nanocores(1_000_000_000_000), "1k");
    }

    #[test]
    fn cpu_exponent_is_lowered_to_a_multiple_of_three() {
        assert_eq!(format_cpu_nanocores(1), "1n");
        assert_eq!(format_cpu_nanocores(10), "10n");
        assert_eq!(format_cpu_nanocores(100), "100n");
        assert_eq!(format_cpu_nanocores(1_000), "1u");
        assert_eq!(format_cpu_nanocores(20_000), "20u");
        assert_eq!(format_cpu_nanocores(120_000_000), "120m");
        assert_eq!(format_cpu_nanocores(10_000_000_000), "10");
        assert_eq!(format_cpu_nanocores(100_000_000_000), "100");
        assert_eq!(format_cpu_nanocores(123_000_000_000), "123");
        assert_eq!(format_cpu_nanocores(1_000_000_000_000_000), "1M");
        assert_eq!(format_cpu_nanocores(10_000_000_000_000_000_000), "10G");
        assert_eq!(format_cpu_nanocores(u64::MAX), "18446744073709551615n");
    }

    #[test]
    fn bytes_examples_from_the_contract() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(14_868_480), "14520Ki");
        assert_eq!(format_bytes(4_194_304), "4Mi");
        assert_eq!(format_bytes(123_456_789), "123456789");
    }

    #[test]
    fn bytes_follow_apimachinery_binary_si() {
        assert_eq!(format_bytes(1), "1");
        assert_eq!(format_bytes(512), "512");
        assert_eq!(format_bytes(1023), "1023");
        // Below 1024 apimachinery prints DecimalSI, so 1000 bytes is "1k".
        assert_eq!(format_bytes(1000), "1k");
        assert_eq!(format_bytes(100), "100");
        assert_eq!(format_bytes(1010), "1010");
        assert_eq!(format_bytes(1024), "1Ki");
        assert_eq!(format_bytes(1536), "1536");
        assert_eq!(format_bytes(2000), "2000");
        assert_eq!(format_bytes(1024 * 1000), "1000Ki");
        assert_eq!(format_bytes(1024 * 1024 * 1024), "1Gi");
        assert_eq!(format_bytes(3 << 40), "3Ti");
        assert_eq!(format_bytes(1 << 50), "1Pi");
        assert_eq!(format_bytes(1 << 60), "1Ei");
        assert_eq!(format_bytes(1 << 63), "8Ei");
        assert_eq!(format_bytes(u64::MAX), "18446744073709551615");
    }

    #[test]
    fn parses_the_suffix_families() {
        let q = |s: &str| parse_quantity(s).expect(s);
        assert_eq!(q("7338891n").to_nanos(), Ok(7_338_891));
        assert_eq!(q("13m").to_nanos(), Ok(13_000_000));
        assert_eq!(q("2500u").to_nanos(), Ok(2_500_000));
        assert_eq!(q("1").to_nanos(), Ok(1_000_000_000));
        assert_eq!(q("1k").to_units(), Ok(1000));
        assert_eq!(q("14520Ki").to_units(), Ok(14_868_480));
        assert_eq!(q("4Mi").to_units(), Ok(4_194_304));
        assert_eq!(q("1.5Ki").to_units(), Ok(1536));
        assert_eq!(q("1.5").to_nanos(), Ok(1_500_000_000));
        assert_eq!(q(".5").to_nanos(), Ok(500_000_000));
        assert_eq!(q("5.").to_units(), Ok(5));
        assert_eq!(q("1e3").to_units(), Ok(1000));
        assert_eq!(q("1E3").to_units(), Ok(1000));
        assert_eq!(q("1e+3").to_units(), Ok(1000));
        assert_eq!(q("15e-1").to_nanos(), Ok(1_500_000_000));
        assert_eq!(q("+7").to_units(), Ok(7));
        assert_eq!(q("007").to_units(), Ok(7));
        assert_eq!(q("1E").to_scaled(15), Ok(1000), "bare E is exa");
        assert_eq!(q("2G").to_units(), Ok(2_000_000_000));
        assert_eq!(q("0").to_units(), Ok(0));
        assert_eq!(q("0.000").to_nanos(), Ok(0));
        assert_eq!(q("-0").to_units(), Ok(0));
        assert!(q("-1").is_negative());
        assert!(q("0").is_zero());
    }

    #[test]
    fn rejects_what_apimachinery_rejects() {
        assert_eq!(parse_quantity(""), Err(Error::Format));
        assert_eq!(parse_quantity("abc"), Err(Error::Format));
        assert_eq!(parse_quantity("1.2.3"), Err(Error::Format));
        assert_eq!(parse_quantity(" 1"), Err(Error::Format));
        assert_eq!(parse_quantity("1 "), Err(Error::Format));
        assert_eq!(parse_quantity("1Kix"), Err(Error::Format));
        assert_eq!(parse_quantity("."), Err(Error::Format));
        assert_eq!(parse_quantity("-"), Err(Error::Format));
        assert_eq!(parse_quantity("1K"), Err(Error::Suffix));
        assert_eq!(parse_quantity("1e"), Err(Error::Suffix));
        assert_eq!(parse_quantity("1mm"), Err(Error::Suffix));
        assert_eq!(parse_quantity("1e99999999999"), Err(Error::Suffix));
    }

    #[test]
    fn error_messages_match_apimachinery() {
        assert_eq!(
            Error::Format.to_string(),
            "quantities must match the regular expression \
             '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(
            Error::Suffix.to_string(),
            "unable to parse quantity's suffix"
        );
    }

    #[test]
    fn integer_conversions_check_exactness_and_range() {
        let q = |s: &str| parse_quantity(s).expect(s);
        assert_eq!(q("1n").to_units(), Err(Error::Inexact { scale: 0 }));
        assert_eq!(q("1.5").to_units(), Err(Error::Inexact { scale: 0 }));
        assert_eq!(q("1e-100").to_units(), Err(Error::Inexact { scale: 0 }));
        assert_eq!(q("-1").to_units(), Err(Error::Negative));
        assert_eq!(q("20Ei").to_units(), Err(Error::OutOfRange));
        assert_eq!(q("1e100").to_units(), Err(Error::OutOfRange));
        assert_eq!(q("1e40").to_scaled(0), Err(Error::OutOfRange));
        // Trailing zeros fold into the exponent, so long round numbers parse.
        let long = format!("1{}", "0".repeat(45));
        assert_eq!(
            long.parse::<Quantity>().map(|q| q.to_scaled(40)),
            Ok(Ok(100_000))
        );
        assert_eq!(
            parse_quantity("1234567890123456789012345678901234567891"),
            Err(Error::TooPrecise)
        );
    }

    /// Splits canonical output into its number and suffix.
    fn split(text: &str) -> (u128, &str) {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        (text[..end].parse().unwrap_or(0), &text[end..])
    }

    proptest! {
        #[test]
        fn cpu_round_trips(n in any::<u64>()) {
            let text = format_cpu_nanocores(n);
            prop_assert_eq!(parse_quantity(&text).and_then(|q| q.to_nanos()), Ok(n));
        }

        #[test]
        fn cpu_is_canonical(n in 1u64..) {
            let text = format_cpu_nanocores(n);
            let (mantissa, suffix) = split(&text);
            prop_assert!(["n", "u", "m", "", "k", "M", "G"].contains(&suffix), "{}", text);
            // A mantissa divisible by 1000 would have used the next suffix.
            prop_assert!(mantissa % 1000 != 0, "{}", text);
        }

        #[test]
        fn bytes_round_trip(b in any::<u64>()) {
            let text = format_bytes(b);
            prop_assert_eq!(parse_quantity(&text).and_then(|q| q.to_units()), Ok(b));
        }

        #[test]
        fn small_cpu_values_round_trip(n in 0u64..10_000_000_000) {
            let text = format_cpu_nanocores(n);
            prop_assert_eq!(parse_quantity(&text).and_then(|q| q.to_nanos()), Ok(n));
        }

        #[test]
        fn bytes_are_canonical(b in 1024u64..) {
            let text = format_bytes(b);
            let (mantissa, suffix) = split(&text);
            prop_assert!(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&suffix), "{}", text);
            // Whatever is left is not a multiple of 1024, or it would be divided again.
            prop_assert!(mantissa % 1024 != 0, "{}", text);
        }

        #[test]
        fn binary_multiples_get_binary_suffixes(m in 1u64..1024, p in 1u32..=5) {
            let b = m << (10 * p);
            let text = format_bytes(b);
            prop_assert_eq!(text, format!("{}{}", m, BINARY_SUFFIXES[p as usize]));
        }

        #[test]
        fn parser_never_panics(s in "[-+]?[0-9.]{0,6}[eEinumkKMGTP]{0,3}[-+]?[0-9]{0,4}") {
            let _ = parse_quantity(&s).map(|q| q.to_scaled(-9));
        }
    }
}
