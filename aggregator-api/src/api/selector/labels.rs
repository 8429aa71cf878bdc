//! Label selectors: apimachinery `pkg/labels/selector.go`'s lexer, recursive
//! descent and matching.

use std::collections::BTreeMap;
use std::fmt;

use super::validation::*;
use super::{Error, Result, label_error};

/// How a [`Requirement`] relates its key to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`.
    NotIn,
    /// `key=a`.
    Equals,
    /// `key==a`.
    DoubleEquals,
    /// `key!=a`.
    NotEquals,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>1` (integer comparison).
    GreaterThan,
    /// `key<1` (integer comparison).
    LessThan,
}

/// One condition of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and deduplicated, as apimachinery's `sets.String.List()`.
    values: Vec<String>,
}

/// Where a selector reads labels from.
pub trait LabelSource {
    /// The value of `key`, if the label is set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelSource for crate::api::Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl Requirement {
    fn has_value(&self, value: &str) -> bool {
        self.values.iter().any(|v| v == value)
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// apimachinery `Requirement.Matches`.
    pub fn matches<L: LabelSource + ?Sized>(&self, labels: &L) -> bool {
        let value = labels.label(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| self.has_value(v))
            }
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !self.has_value(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), [want]) = (value, self.values.as_slice()) else {
                    return false;
                };
                let (Ok(have), Ok(want)) = (have.parse::<i64>(), want.parse::<i64>()) else {
                    return false;
                };
                match self.operator {
                    Operator::GreaterThan => have > want,
                    _ => have < want,
                }
            }
        }
    }

    /// apimachinery `NewRequirement` as the parser calls it: the key was already
    /// validated, the values are checked and every problem is reported.
    fn new(key: String, operator: Operator, values: Vec<String>) -> Result<Self> {
        let mut errs: Vec<String> = Vec::new();
        if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
            for (i, v) in values.iter().enumerate() {
                if v.parse::<i64>().is_err() {
                    errs.push(field_invalid(
                        &format!("values[{i}]"),
                        v,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
            }
        }
        for (i, v) in values.iter().enumerate() {
            let problems = is_valid_label_value(v);
            if !problems.is_empty() {
                errs.push(field_invalid(
                    &format!("values[{i}][{key}]"),
                    v,
                    &problems.join("; "),
                ));
            }
        }
        // utilerrors aggregate: one message alone, several deduplicated in brackets.
        let mut seen = std::collections::HashSet::with_capacity(errs.len());
        let mut unique: Vec<String> = errs
            .into_iter()
            .filter(|e| seen.insert(e.clone()))
            .collect();
        match unique.len() {
            0 => Ok(Requirement {
                key,
                operator,
                values,
            }),
            1 => Err(label_error(unique.remove(0))),
            _ => Err(label_error(format!("[{}]", unique.join(", ")))),
        }
    }
}

impl fmt::Display for Requirement {
    /// apimachinery `Requirement.String()`, handy for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A parsed `labelSelector`: all requirements must hold. The empty selector
/// matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// Sorted by key (stable), as apimachinery sorts them.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every object (an absent or empty parameter).
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the `labelSelector` parameter (apimachinery `labels.Parse`).
    pub fn parse(selector: &str) -> Result<Self> {
        let mut parser = Parser::new(selector);
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Whether this selector restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether an object with these labels is selected.
    pub fn matches<L: LabelSource + ?Sized>(&self, labels: &L) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(literal: &[u8]) -> Option<Token> {
    Some(match literal {
        b")" => Token::ClosedPar,
        b"," => Token::Comma,
        b"!" => Token::DoesNotExist,
        b"==" => Token::DoubleEquals,
        b"=" => Token::Equals,
        b">" => Token::GreaterThan,
        b"in" => Token::In,
        b"<" => Token::LessThan,
        b"!=" => Token::NotEquals,
        b"notin" => Token::NotIn,
        b"(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// apimachinery's byte lexer, kept state-machine for state-machine so odd
/// inputs (a NUL byte ends a token just as Go's `read()` returning 0 does)
/// tokenise identically.
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    fn read(&mut self) -> u8 {
        match self.s.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => 0,
        }
    }

    fn unread(&mut self) {
        self.pos = self.pos.saturating_sub(1);
    }

    fn scan_id_or_keyword(&mut self) -> (Token, String) {
        let mut buffer = Vec::new();
        loop {
            let ch = self.read();
            if ch == 0 {
                break;
            }
            if is_special_symbol(ch) || is_whitespace(ch) {
                self.unread();
                break;
            }
            buffer.push(ch);
        }
        let literal = String::from_utf8_lossy(&buffer).into_owned();
        (keyword(&buffer).unwrap_or(Token::Identifier), literal)
    }

    fn scan_special_symbol(&mut self) -> (Token, String) {
        let mut buffer = Vec::new();
        let mut last: Option<(Token, usize)> = None;
        loop {
            let ch = self.read();
            if ch == 0 {
                break;
            }
            if !is_special_symbol(ch) {
                self.unread();
                break;
            }
            buffer.push(ch);
            if let Some(token) = keyword(&buffer) {
                last = Some((token, buffer.len()));
            } else if last.is_some() {
                self.unread();
                break;
            }
        }
        match last {
            Some((token, len)) => (token, String::from_utf8_lossy(&buffer[..len]).into_owned()),
            // Every single special symbol is a token, so Go's ErrorToken cannot
            // occur; an identifier keeps the parser's error paths sound anyway.
            None => (
                Token::Identifier,
                String::from_utf8_lossy(&buffer).into_owned(),
            ),
        }
    }

    fn lex(&mut self) -> (Token, String) {
        let mut ch = self.read();
        while is_whitespace(ch) {
            ch = self.read();
        }
        if ch == 0 {
            return (Token::EndOfString, String::new());
        }
        self.unread();
        if is_special_symbol(ch) {
            self.scan_special_symbol()
        } else {
            self.scan_id_or_keyword()
        }
    }
}

/// Whether `in`/`notin` are operators (after a key) or plain words (as values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

/// apimachinery's recursive-descent parser over the scanned tokens.
struct Parser {
    items: Vec<(Token, String)>,
    position: usize,
}

impl Parser {
    fn new(selector: &str) -> Self {
        let mut lexer = Lexer {
            s: selector.as_bytes(),
            pos: 0,
        };
        let mut items = Vec::new();
        loop {
            let item = lexer.lex();
            let end = item.0 == Token::EndOfString;
            items.push(item);
            if end {
                break;
            }
        }
        Parser { items, position: 0 }
    }

    fn item(&self, index: usize, context: Context) -> (Token, String) {
        // The token list always ends with EndOfString; never read past it.
        let (tok, lit) = self
            .items
            .get(index)
            .or(self.items.last())
            .cloned()
            .unwrap_or((Token::EndOfString, String::new()));
        let tok = match (context, tok) {
            (Context::Values, Token::In | Token::NotIn) => Token::Identifier,
            (_, tok) => tok,
        };
        (tok, lit)
    }

    fn lookahead(&self, context: Context) -> (Token, String) {
        self.item(self.position, context)
    }

    fn consume(&mut self, context: Context) -> (Token, String) {
        let item = self.item(self.position, context);
        self.position += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let requirement = self
                        .parse_requirement()
                        .map_err(|e| label_error(format!("unable to parse requirement: {e}")))?;
                    requirements.push(requirement);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(label_error(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(label_error(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(label_error(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = inferred {
            return Requirement::new(key, op, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(key, operator, values)
    }

    /// Reads `[!]key`; infers `Exists`/`DoesNotExist` when no operator follows.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>)> {
        let mut operator = None;
        let (mut tok, mut literal) = self.consume(Context::Values);
        if tok == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (tok, literal) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return Err(label_error(format!(
                "found '{literal}', expected: identifier"
            )));
        }
        let problems = is_qualified_name(&literal);
        if !problems.is_empty() {
            // The parser validates with a nil field path, which Go prints as "<nil>".
            return Err(label_error(field_invalid(
                "<nil>",
                &literal,
                &problems.join("; "),
            )));
        }
        let (next, _) = self.lookahead(Context::Values);
        if matches!(next, Token::EndOfString | Token::Comma) && operator.is_none() {
            operator = Some(Operator::Exists);
        }
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => {
                return Err(label_error(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            }
        })
    }

    /// `(a,b,…)`; empty entries are the empty value, as upstream.
    fn parse_values(&mut self) -> Result<Vec<String>> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return Err(label_error(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let (closing, _) = self.consume(Context::Values);
                if closing != Token::ClosedPar {
                    // Upstream reports the list's first token here, not the offending one.
                    return Err(label_error(format!("found '{lit}', expected: ')'")));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(label_error(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    /// The values, sorted and without repeats (a `sets.String`); sorted once
    /// at the end, so that a long list costs n log n, not n².
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>> {
        let mut set = self.parse_identifiers_unsorted()?;
        set.sort_unstable();
        set.dedup();
        Ok(set)
    }

    fn parse_identifiers_unsorted(&mut self) -> Result<Vec<String>> {
        let mut set: Vec<String> = Vec::new();
        let insert = Vec::push;
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    insert(&mut set, lit);
                    let (tok2, lit2) = self.lookahead(Context::Values);
                    match tok2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(set),
                        _ => {
                            return Err(label_error(format!(
                                "found '{lit2}', expected: ',' or ')'"
                            )));
                        }
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        insert(&mut set, String::new());
                    }
                    let (tok2, _) = self.lookahead(Context::Values);
                    if tok2 == Token::ClosedPar {
                        insert(&mut set, String::new());
                        return Ok(set);
                    }
                    if tok2 == Token::Comma {
                        self.consume(Context::Values);
                        insert(&mut set, String::new());
                    }
                }
                _ => {
                    return Err(label_error(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>> {
        let (tok, _) = self.lookahead(Context::Values);
        if matches!(tok, Token::EndOfString | Token::Comma) {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(vec![lit]);
        }
        Err(label_error(format!("found '{lit}', expected: identifier")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(s: &str) -> LabelSelector {
        LabelSelector::parse(s).expect(s)
    }

    fn err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed as {sel}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   ", "\t\n"] {
            let sel = parse(s);
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[])));
            assert!(sel.matches(&labels(&[("a", "b")])));
        }
        assert!(LabelSelector::everything().matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn equality_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(parse("app=web").matches(&l));
        assert!(parse("app==web").matches(&l));
        assert!(!parse("app=db").matches(&l));
        assert!(parse("app!=db").matches(&l));
        assert!(!parse("app!=web").matches(&l));
        assert!(
            parse("missing!=x").matches(&l),
            "!= holds when the key is absent"
        );
        assert!(!parse("missing=x").matches(&l));
        assert!(parse("app=web,tier=front").matches(&l));
        assert!(!parse("app=web,tier=back").matches(&l));
    }

    #[test]
    fn set_operators() {
        let l = labels(&[("env", "prod")]);
        assert!(parse("env in (prod,staging)").matches(&l));
        assert!(!parse("env in (dev)").matches(&l));
        assert!(parse("env notin (dev)").matches(&l));
        assert!(!parse("env notin (prod, dev)").matches(&l));
        assert!(
            parse("other notin (x)").matches(&l),
            "notin holds when absent"
        );
        assert!(!parse("other in (x)").matches(&l));
        assert!(
            parse("env in (in,prod)").matches(&l),
            "'in' is a value inside ()"
        );
    }

    #[test]
    fn existence_operators() {
        let l = labels(&[("gpu", "")]);
        assert!(parse("gpu").matches(&l));
        assert!(!parse("!gpu").matches(&l));
        assert!(parse("!cpu").matches(&l));
        assert!(!parse("cpu").matches(&l));
        assert!(parse("gpu=").matches(&l), "empty value equality");
        assert!(parse("gpu in ()").matches(&l), "() is the empty value");
    }

    #[test]
    fn integer_comparisons() {
        let l = labels(&[("rank", "5"), ("name", "x")]);
        assert!(parse("rank>3").matches(&l));
        assert!(!parse("rank>5").matches(&l));
        assert!(parse("rank<6").matches(&l));
        assert!(!parse("missing<6").matches(&l));
        assert!(
            !parse("name>1").matches(&l),
            "non-integer label never matches"
        );
    }

    #[test]
    fn whitespace_is_insignificant_between_tokens() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        assert!(parse("  a = 1 ,\tb in ( 2 , 3 )\n").matches(&l));
        assert!(parse("a==1 , !c").matches(&l));
        assert!(parse("a,b").matches(&l));
    }

    #[test]
    fn requirements_are_sorted_and_printable() {
        let sel = parse("z=1,a in (c,b,b),!m,k");
        let keys: Vec<_> = sel.requirements().iter().map(|r| r.key()).collect();
        assert_eq!(keys, ["a", "k", "m", "z"]);
        assert_eq!(sel.to_string(), "a in (b,c),k,!m,z=1");
        assert_eq!(sel.requirements()[0].values(), ["b", "c"]);
        assert_eq!(sel.requirements()[0].operator(), Operator::In);
        assert_eq!(parse("x in (,)").requirements()[0].values(), [""]);
        assert_eq!(
            parse("x in (a,,b)").requirements()[0].values(),
            ["", "a", "b"]
        );
        assert_eq!(parse("x in (a,)").requirements()[0].values(), ["", "a"]);
        assert_eq!(parse("x notin (,a)").requirements()[0].values(), ["", "a"]);
        assert_eq!(parse("k.io/x!=y").to_string(), "k.io/x!=y");
        assert_eq!(parse("r<4").to_string(), "r<4");
    }

    #[test]
    fn prefixed_keys_are_accepted() {
        let l = labels(&[("kubernetes.io/hostname", "n1")]);
        assert!(parse("kubernetes.io/hostname=n1").matches(&l));
        assert!(
            parse("app.kubernetes.io/name").matches(&labels(&[("app.kubernetes.io/name", "x")]))
        );
    }

    #[test]
    fn syntax_errors_match_upstream() {
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(
            err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("=a"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert_eq!(
            err("!="),
            "found '!=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            err("a in"),
            "unable to parse requirement: found '' expected: '('"
        );
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in ("),
            "unable to parse requirement: found '', expected: ',', ')' or identifier"
        );
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b c)"),
            "unable to parse requirement: found 'c', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (,="),
            "unable to parse requirement: found '=', expected: ',', or identifier"
        );
        assert!(
            parse("a==").matches(&labels(&[("a", "")])),
            "missing value is empty"
        );
        assert_eq!(
            err("x in (,,)"),
            "unable to parse requirement: found ')', expected: ',', or identifier",
            "upstream rejects a doubled comma before ')'"
        );
        assert_eq!(
            err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            err("a in (b)="),
            "found '=', expected: ',' or 'end of string'"
        );
    }

    #[test]
    fn key_validation_errors_match_upstream() {
        assert_eq!(
            err("-a"),
            "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
             character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("/a"),
            "unable to parse requirement: <nil>: Invalid value: \"/a\": prefix part must be non-empty"
        );
        assert_eq!(
            err("a/"),
            "unable to parse requirement: <nil>: Invalid value: \"a/\": name part must be non-empty; \
             name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
             end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex \
             used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        assert_eq!(
            err("Example.com/a"),
            "unable to parse requirement: <nil>: Invalid value: \"Example.com/a\": prefix part a \
             lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            err("a/b/c"),
            "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a qualified name must \
             consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for \
             validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS \
             subdomain prefix and '/' (e.g. 'example.com/MyName')"
        );
        let long = "k".repeat(64);
        assert_eq!(
            err(&long),
            format!(
                "unable to parse requirement: <nil>: Invalid value: \"{long}\": name part must be \
                 no more than 63 characters"
            )
        );
        assert!(LabelSelector::parse(&"k".repeat(63)).is_ok());
        let long_prefix = format!("{}/a", "p".repeat(254));
        assert!(err(&long_prefix).contains("prefix part must be no more than 253 characters"));
    }

    #[test]
    fn value_validation_errors_match_upstream() {
        let value_rule = "a valid label must be an empty string or consist of alphanumeric \
                          characters, '-', '_' or '.', and must start and end with an alphanumeric \
                          character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for \
                          validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        assert_eq!(
            err("a=-b"),
            format!(
                "unable to parse requirement: values[0][a]: Invalid value: \"-b\": {value_rule}"
            )
        );
        assert_eq!(
            err("a in (ok,-b,_c)"),
            format!(
                "unable to parse requirement: [values[0][a]: Invalid value: \"-b\": {value_rule}, \
                 values[1][a]: Invalid value: \"_c\": {value_rule}]"
            )
        );
        assert_eq!(
            err("a>b"),
            "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' \
             operators, the value must be an integer"
        );
        let long = "v".repeat(64);
        assert_eq!(
            err(&format!("a={long}")),
            format!(
                "unable to parse requirement: values[0][a]: Invalid value: \"{long}\": must be no \
                 more than 63 characters"
            )
        );
        assert!(LabelSelector::parse(&format!("a={}", "v".repeat(63))).is_ok());
    }

    #[test]
    fn operators_are_lexed_greedily() {
        // "!==" is "!=" then "=", so the value is missing an identifier.
        assert_eq!(
            err("a!==b"),
            "unable to parse requirement: found '=', expected: identifier"
        );
        assert_eq!(
            err("a===b"),
            "unable to parse requirement: found '=', expected: identifier"
        );
        assert!(parse("a!=b").matches(&labels(&[("a", "c")])));
    }

    #[test]
    fn nul_byte_behaves_like_upstream_lexer() {
        // Go's read() returns 0 for a NUL byte as for the end: a token ends there
        // and the byte is consumed; a NUL where a token starts ends the input.
        assert!(parse("a\0").matches(&labels(&[("a", "x")])));
        assert!(parse("a \0 junk").matches(&labels(&[("a", "x")])));
        assert_eq!(
            err("a\0b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
    }
}
