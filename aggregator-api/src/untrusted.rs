//! Strings from the outside (agents' node and pod names, clients' input) as
//! they may appear in logs and error messages: short, and with anything that
//! could forge a line or drive a terminal escaped.

/// At most this many characters of an untrusted string are shown.
pub const SHOWN: usize = 80;

/// `s` with control characters, quotes and backslashes escaped as Rust's
/// `escape_debug` does (a newline becomes `\n`, ESC `\u{1b}`), cut to
/// [`SHOWN`] characters (`…` marks the cut).
pub fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(SHOWN) + 8);
    for (i, c) in s.chars().enumerate() {
        if i == SHOWN {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cannot_be_forged_and_length_is_bounded() {
        assert_eq!(shown("node-a"), "node-a");
        assert_eq!(
            shown("a\nINFO forged line\u{1b}[31m\u{7}"),
            "a\\nINFO forged line\\u{1b}[31m\\u{7}"
        );
        let long = "x".repeat(1 << 20);
        assert_eq!(shown(&long).chars().count(), SHOWN + 1);
    }
}
