//! `labelSelector` and `fieldSelector` query parameters: parsing, validation
//! and matching, with apimachinery's semantics and error messages.
//!
//! The HPA and `kubectl top -l` send label selectors, and a 400 message is the
//! only thing a user sees when one is wrong, so the parser is a port of
//! apimachinery `pkg/labels/selector.go` (its lexer, its recursive descent, the
//! `validation.IsQualifiedName` / `IsValidLabelValue` checks and their texts).
//! Field selectors follow `pkg/fields/selector.go` plus the field-label
//! conversion every metrics resource uses
//! (`runtime.DefaultMetaV1FieldSelectorConversion`): only `metadata.name` and
//! `metadata.namespace` are known.
//!
//! Matching is against the Node's / Pod's own labels and metadata; the caller
//! passes those in, this module holds no state.

mod fields;
mod labels;
mod validation;

pub use fields::{FieldOp, FieldSelector, FieldTerm, MetaField};
pub use labels::{LabelSelector, LabelSource, Operator, Requirement};

use super::go_quote;

/// A selector the client sent that cannot be used. `Display` is the exact text
/// apimachinery produces, which becomes the message of the 400 `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The label selector is malformed or names an invalid key or value.
    #[error("{message}")]
    Label {
        /// apimachinery's message, e.g. `found ')', expected: !, identifier, or 'end of string'`.
        message: String,
    },
    /// The field selector is malformed (bad term or escape sequence).
    #[error("{message}")]
    FieldSyntax {
        /// apimachinery's message.
        message: String,
    },
    /// The field selector names a field the metrics resources do not have.
    #[error(
        "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
        go_quote(.field)
    )]
    UnknownField {
        /// The field as written, untrimmed (apimachinery does not trim it either).
        field: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn label_error(message: impl Into<String>) -> Error {
    Error::Label {
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Strings made of what selectors are made of.
        fn selector_like() -> impl Strategy<Value = String> {
            "(in|notin|[a-zA-Z0-9=!,() ./_-]){0,30}"
        }

        /// Valid selectors of every operator, spaced as people write them.
        fn valid_selector() -> impl Strategy<Value = String> {
            let term = prop_oneof![
                "[a-z]{1,3}(\\.io/[a-z]{1,2})? {0,1}(=|==|!=) {0,1}[a-z0-9]{0,3}",
                "[a-z]{1,3} (in|notin) \\( {0,1}[a-z]{1,2}(, {0,1}[a-z]{1,2}){0,2} {0,1}\\)",
                "!?[a-z]{1,3}",
                "[a-z]{1,3} {0,1}(>|<) {0,1}[0-9]{1,2}",
            ];
            prop::collection::vec(term, 0..4).prop_map(|terms| terms.join(","))
        }

        proptest! {
            #[test]
            fn label_selectors_round_trip(s in valid_selector()) {
                let selector = LabelSelector::parse(&s);
                prop_assert!(selector.is_ok(), "{} refused: {:?}", s, selector);
                let selector = selector.expect("checked");
                let text = selector.to_string();
                prop_assert_eq!(LabelSelector::parse(&text), Ok(selector), "{} printed as {}", s, text);
            }

            #[test]
            fn any_text_is_parsed_or_refused(s in any::<String>(), t in selector_like()) {
                for s in [s, t] {
                    if let Ok(selector) = LabelSelector::parse(&s) {
                        let text = selector.to_string();
                        prop_assert_eq!(LabelSelector::parse(&text), Ok(selector), "{} printed as {}", s, text);
                    }
                    let _ = FieldSelector::parse(&s);
                }
            }

            #[test]
            fn field_selectors_match_only_what_they_name(
                s in "(metadata\\.(name|namespace)|[a-z.]{0,3})(=|==|!=)[a-z-]{0,3}(,(metadata\\.(name|namespace))(=|!=)[a-z-]{0,3}){0,2}",
                name in "[a-z-]{0,3}",
                namespace in "[a-z-]{0,3}",
            ) {
                let Ok(selector) = FieldSelector::parse(&s) else { return Ok(()) };
                let expected = selector.terms().iter().all(|t| {
                    let value = match t.field { MetaField::Name => &name, MetaField::Namespace => &namespace };
                    match t.op { FieldOp::Equals => value == &t.value, FieldOp::NotEquals => value != &t.value }
                });
                prop_assert_eq!(selector.matches(&name, &namespace), expected);
            }
        }
    }
}
