//! The query string, decoded the way Go's `url.ParseQuery` does
//! (`application/x-www-form-urlencoded`: `+` is a space, `%XX` escapes), so
//! `labelSelector=app%3Dweb` and `labelSelector=app=web` mean the same.

/// Decoded query parameters in order; repeated keys are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string (without `?`). Pairs with bad escapes are
    /// dropped, as Go drops them.
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                Some((form_decode(key)?, form_decode(value)?))
            })
            .collect();
        Query { pairs }
    }

    /// The first value of `key` (Go's `Values.Get`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `watch` as Go's `strconv.ParseBool` reads it; `Err` carries the value.
    pub fn watch(&self) -> Result<bool, String> {
        match self.get("watch") {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(other.to_owned()),
        }
    }
}

/// `+` → space, `%XX` → byte; `None` on a bad escape (Go drops the pair).
/// Bytes that are not UTF-8 become U+FFFD: Go keeps them, and whatever parses
/// the value (a selector) then refuses it, rather than the parameter
/// vanishing and a selector matching everything.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
                let (hi, lo) = (hex(bytes.get(i + 1))?, hex(bytes.get(i + 2))?);
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_go() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&limit=10&watch&x=%zz&labelSelector=second",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(q.get("limit"), Some("10"));
        assert_eq!(q.get("watch"), Some(""));
        assert_eq!(q.get("x"), None, "bad escape dropped");
        assert_eq!(Query::parse(None), Query::default());
    }

    #[test]
    fn bytes_that_are_not_utf8_stay_visible() {
        let q = Query::parse(Some("labelSelector=%ff%fe&fieldSelector=role%3D%ff"));
        assert_eq!(q.get("labelSelector"), Some("\u{fffd}\u{fffd}"));
        assert_eq!(q.get("fieldSelector"), Some("role=\u{fffd}"));
    }

    #[test]
    fn watch_parses_like_parse_bool() {
        let w = |raw: &str| Query::parse(Some(raw)).watch();
        assert_eq!(w("watch=true"), Ok(true));
        assert_eq!(w("watch=1"), Ok(true));
        assert_eq!(w("watch=False"), Ok(false));
        assert_eq!(w(""), Ok(false));
        assert_eq!(w("watch=yes"), Err("yes".to_owned()));
    }
}
