//! Field selectors: apimachinery `pkg/fields/selector.go` with the field
//! labels every metrics resource converts (`metadata.name`,
//! `metadata.namespace`).

use super::{Error, Result};

/// A metadata field a metrics field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaField {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
}

/// Field selector comparison (`=` and `==` are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOp {
    /// `=` or `==`.
    Equals,
    /// `!=`.
    NotEquals,
}

/// One `field op value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// The field compared.
    pub field: MetaField,
    /// The comparison.
    pub op: FieldOp,
    /// The unescaped value.
    pub value: String,
}

/// A parsed `fieldSelector`: all terms must hold. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the `fieldSelector` parameter and checks its fields, in
    /// apimachinery's order: every term's syntax first (terms sorted as text),
    /// then the field names, so the reported error is the one upstream reports.
    pub fn parse(selector: &str) -> Result<Self> {
        let mut parts = split_terms(selector);
        parts.sort_unstable();
        let mut raw = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(Error::FieldSyntax {
                    message: format!("invalid selector: '{selector}'; can't understand '{part}'"),
                });
            };
            raw.push((lhs, op, unescape_value(rhs)?));
        }
        let mut terms = Vec::with_capacity(raw.len());
        for (lhs, op, value) in raw {
            let field = match lhs {
                "metadata.name" => MetaField::Name,
                "metadata.namespace" => MetaField::Namespace,
                other => {
                    return Err(Error::UnknownField {
                        field: other.to_owned(),
                    });
                }
            };
            terms.push(FieldTerm { field, op, value });
        }
        Ok(FieldSelector { terms })
    }

    /// Whether this selector restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms, in apimachinery's (sorted) order.
    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// Whether an object with this name and namespace is selected. Pass `""` as
    /// the namespace of a node: like metrics-server, a node's field set has no
    /// `metadata.namespace`, which then reads as empty (`metadata.namespace=`
    /// matches every node, `metadata.namespace=x` none).
    pub fn matches(&self, name: &str, namespace: &str) -> bool {
        self.terms.iter().all(|t| {
            let have = match t.field {
                MetaField::Name => name,
                MetaField::Namespace => namespace,
            };
            match t.op {
                FieldOp::Equals => have == t.value,
                FieldOp::NotEquals => have != t.value,
            }
        })
    }
}

impl std::str::FromStr for FieldSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// Splits on commas not escaped by a backslash (the backslash stays).
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in selector.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits at the first operator; `!=` and `==` win over `=` at the same place.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (token, op) in [
            ("!=", FieldOp::NotEquals),
            ("==", FieldOp::Equals),
            ("=", FieldOp::Equals),
        ] {
            if let Some(rhs) = rest.strip_prefix(token) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

/// apimachinery `fields.UnescapeValue`: only `\\`, `\,` and `\=` are escapes,
/// and `,`/`=` must be escaped. Go prints the offending rune with `%v`, i.e.
/// as its number, and the messages keep that.
fn unescape_value(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(Error::FieldSyntax {
                        message: format!(
                            "invalid field selector: invalid escape sequence: \\{other}"
                        ),
                    });
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                return Err(Error::FieldSyntax {
                    message: format!(
                        "invalid field selector: unescaped character in value: {}",
                        c as u32
                    ),
                });
            }
            other => out.push(other),
        }
    }
    if in_slash {
        return Err(Error::FieldSyntax {
            message: "invalid field selector: invalid escape sequence: \\".to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_parse_and_match() {
        let sel = FieldSelector::parse("metadata.name=web-1").expect("valid");
        assert!(sel.matches("web-1", "default"));
        assert!(!sel.matches("web-2", "default"));

        let sel = FieldSelector::parse("metadata.namespace==kube-system,metadata.name!=x")
            .expect("valid");
        assert!(sel.matches("y", "kube-system"));
        assert!(!sel.matches("x", "kube-system"));
        assert!(!sel.matches("y", "default"));
        assert_eq!(sel.terms().len(), 2);
        assert_eq!(
            sel.terms()[0].field,
            MetaField::Name,
            "terms are sorted as text"
        );

        for empty in ["", ",", ",,"] {
            let sel = FieldSelector::parse(empty).expect("empty");
            assert!(sel.is_empty());
            assert!(sel.matches("anything", "anywhere"));
        }
        assert!(FieldSelector::everything().matches("a", "b"));
    }

    #[test]
    fn nodes_have_no_namespace_field() {
        // Accepted (upstream's conversion knows the field) but reads as empty.
        let any = FieldSelector::parse("metadata.namespace=").expect("valid");
        assert!(any.matches("node-1", ""));
        let none = FieldSelector::parse("metadata.namespace=default").expect("valid");
        assert!(!none.matches("node-1", ""));
        let all = FieldSelector::parse("metadata.namespace!=default").expect("valid");
        assert!(all.matches("node-1", ""));
    }

    #[test]
    fn field_values_unescape() {
        let sel = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").expect("valid");
        assert_eq!(sel.terms()[0].value, r"a,b=c\d");
        assert!(sel.matches(r"a,b=c\d", ""));
        let sel = FieldSelector::parse("metadata.name=!x").expect("leftmost operator");
        assert_eq!(sel.terms()[0].value, "!x");
    }

    #[test]
    fn unknown_fields_are_rejected_with_upstream_message() {
        let e = FieldSelector::parse("spec.nodeName=node-1").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "\"spec.nodeName\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
        // Not trimmed, like upstream.
        let e = FieldSelector::parse("metadata.name=a, metadata.namespace=b").expect_err("space");
        assert_eq!(
            e,
            Error::UnknownField {
                field: " metadata.namespace".to_owned()
            }
        );
        // Sorted terms: the first unknown in text order is reported.
        let e = FieldSelector::parse("zz=1,status.phase=Running").expect_err("unknown");
        assert_eq!(
            e,
            Error::UnknownField {
                field: "status.phase".to_owned()
            }
        );
        let e = FieldSelector::parse("=x").expect_err("empty field");
        assert_eq!(
            e.to_string(),
            "\"\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        );
    }

    #[test]
    fn field_syntax_errors_match_upstream() {
        let msg = |s: &str| FieldSelector::parse(s).expect_err(s).to_string();
        assert_eq!(
            msg("metadata.name"),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            msg("spec.x=1,bogus"),
            "invalid selector: 'spec.x=1,bogus'; can't understand 'bogus'",
            "syntax is checked before field names"
        );
        assert_eq!(
            msg("metadata.name!==x"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            msg(r"metadata.name=a\x"),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            msg(r"metadata.name=a\"),
            r"invalid field selector: invalid escape sequence: \"
        );
    }

    #[test]
    fn escaped_commas_do_not_split_terms() {
        assert_eq!(split_terms(r"a=b\,c,d=e"), vec![r"a=b\,c", "d=e"]);
        assert_eq!(split_terms(r"a=b\\,d=e"), vec![r"a=b\\", "d=e"]);
        assert!(split_terms("").is_empty());
    }
}
