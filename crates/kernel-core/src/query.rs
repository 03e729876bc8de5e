//! The query language: filters on JSON fields by dotted path, sort, limit and offset, and the
//! shared evaluator that drivers without native query use so results are identical everywhere.
//!
//! # Semantics
//!
//! * A path is dot-separated: `address.city`. A segment that is a decimal number also indexes
//!   arrays (`tags.0`). The empty path `""` is not allowed.
//! * `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `in` match only when the field exists and has the same
//!   JSON type as the operand (all numbers are one type and compare numerically, so `1 == 1.0`).
//!   A mismatched type or a missing field never matches and never errors: `ne("age", 3)` does
//!   not match a document without `age` or with `age: "3"`; use `not(eq(..))` for that.
//! * Ordering (`gt`...) is defined for numbers, strings (byte-wise) and booleans (`false < true`);
//!   on `null`, arrays and objects it never matches.
//! * `contains`: a string field contains the string operand as a substring, or an array field has
//!   an element equal to the operand.
//! * `starts_with` / `ends_with`: a string field and a string operand.
//! * `exists(true)`: the path is present (a `null` value counts as present); `exists(false)`: it is not.
//! * `and([])` is true, `or([])` is false, `not(f)` is the negation of `f`.
//!
//! Sorting uses one total order across types — missing < `null` < booleans < numbers < strings <
//! arrays < objects — with numbers numeric, strings byte-wise, and arrays and objects equal among
//! themselves. Ties are broken by key, ascending, whatever the direction.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::error::{Error, Result};

/// Most nodes a filter tree may have.
pub const MAX_FILTER_NODES: usize = 256;
/// Most operands an `in` filter may have.
pub const MAX_IN_VALUES: usize = 1000;
/// Most segments a field path may have.
pub const MAX_PATH_SEGMENTS: usize = 32;

/// A comparison applied to one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
#[non_exhaustive]
pub enum Op {
    /// Equal, same type.
    Eq(Value),
    /// Present, same type, not equal.
    Ne(Value),
    /// Greater than (numbers, strings, booleans).
    Gt(Value),
    /// Greater than or equal.
    Gte(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Lte(Value),
    /// Substring of a string field, or element of an array field.
    Contains(Value),
    /// String field starts with.
    StartsWith(String),
    /// String field ends with.
    EndsWith(String),
    /// Equal to one of the values.
    In(Vec<Value>),
    /// Path present (`true`) or absent (`false`).
    Exists(bool),
}

/// A filter tree.
///
/// ```
/// use kernel_core::Filter;
/// use serde_json::json;
///
/// let f = Filter::eq("status", "active").and(Filter::gte("age", 18));
/// assert!(f.matches(&json!({"status": "active", "age": 30})));
/// assert!(!f.matches(&json!({"status": "active", "age": "30"})));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Filter {
    /// A comparison on the field at a dotted path.
    Field {
        /// Dotted path into the value.
        path: String,
        /// The comparison.
        #[serde(flatten)]
        op: Op,
    },
    /// Every child matches.
    And(Vec<Filter>),
    /// At least one child matches.
    Or(Vec<Filter>),
    /// The child does not match.
    Not(Box<Filter>),
}

macro_rules! op_ctor {
    ($(#[$doc:meta] $name:ident => $variant:ident),* $(,)?) => {
        $(
            #[$doc]
            pub fn $name(path: impl Into<String>, value: impl Into<Value>) -> Filter {
                Filter::Field { path: path.into(), op: Op::$variant(value.into()) }
            }
        )*
    };
}

impl Filter {
    op_ctor! {
        /// `path == value`.
        eq => Eq,
        /// `path != value` (present, same type).
        ne => Ne,
        /// `path > value`.
        gt => Gt,
        /// `path >= value`.
        gte => Gte,
        /// `path < value`.
        lt => Lt,
        /// `path <= value`.
        lte => Lte,
        /// Substring or array element.
        contains => Contains,
    }

    /// String field starts with `prefix`.
    pub fn starts_with(path: impl Into<String>, prefix: impl Into<String>) -> Filter {
        Filter::Field {
            path: path.into(),
            op: Op::StartsWith(prefix.into()),
        }
    }

    /// String field ends with `suffix`.
    pub fn ends_with(path: impl Into<String>, suffix: impl Into<String>) -> Filter {
        Filter::Field {
            path: path.into(),
            op: Op::EndsWith(suffix.into()),
        }
    }

    /// Field equals one of `values`.
    pub fn is_in<V: Into<Value>>(
        path: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Filter {
        Filter::Field {
            path: path.into(),
            op: Op::In(values.into_iter().map(Into::into).collect()),
        }
    }

    /// Path present (`true`) or absent (`false`).
    pub fn exists(path: impl Into<String>, present: bool) -> Filter {
        Filter::Field {
            path: path.into(),
            op: Op::Exists(present),
        }
    }

    /// Both this and `other`.
    #[must_use]
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::And(mut v) => {
                v.push(other);
                Filter::And(v)
            }
            f => Filter::And(vec![f, other]),
        }
    }

    /// This or `other`.
    #[must_use]
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::Or(mut v) => {
                v.push(other);
                Filter::Or(v)
            }
            f => Filter::Or(vec![f, other]),
        }
    }

    /// The negation of `f`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(f: Filter) -> Filter {
        Filter::Not(Box::new(f))
    }

    /// Checks paths, sizes and operand shapes; drivers call this before any I/O.
    pub fn validate(&self) -> Result<()> {
        let mut nodes = 0usize;
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            nodes += 1;
            if nodes > MAX_FILTER_NODES {
                return Err(Error::invalid_input(format!(
                    "filter has more than {MAX_FILTER_NODES} nodes"
                )));
            }
            match f {
                Filter::Field { path, op } => {
                    validate_path(path)?;
                    if let Op::In(values) = op {
                        if values.len() > MAX_IN_VALUES {
                            return Err(Error::invalid_input(format!(
                                "`in` filter has {} values; the limit is {MAX_IN_VALUES}",
                                values.len()
                            ))
                            .with_context("path", crate::validate::escape(path)));
                        }
                    }
                }
                Filter::And(children) | Filter::Or(children) => stack.extend(children.iter()),
                Filter::Not(child) => stack.push(child),
            }
        }
        Ok(())
    }

    /// Whether a document value matches. Never errors: mismatched types simply do not match.
    pub fn matches(&self, value: &Value) -> bool {
        match self {
            Filter::Field { path, op } => op_matches(op, lookup(value, path)),
            Filter::And(children) => children.iter().all(|c| c.matches(value)),
            Filter::Or(children) => children.iter().any(|c| c.matches(value)),
            Filter::Not(child) => !child.matches(value),
        }
    }
}

/// Checks a dotted path: 1..=32 non-empty segments of at most 256 bytes, no NUL.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |msg: &str| {
        Err(Error::invalid_input(format!("field path {msg}"))
            .with_context("path", crate::validate::escape(path)))
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.contains('\0') {
        return bad("must not contain NUL");
    }
    let mut n = 0;
    for seg in path.split('.') {
        n += 1;
        if seg.is_empty() {
            return bad("has an empty segment");
        }
        if seg.len() > crate::validate::MAX_LABEL_LEN {
            return bad("has a segment longer than 256 bytes");
        }
    }
    if n > MAX_PATH_SEGMENTS {
        return bad("has more than 32 segments");
    }
    Ok(())
}

/// The value at a dotted path, if present.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => {
                let i: usize = parse_index(seg)?;
                items.get(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// An array index segment: decimal digits only, no sign, no leading zeros (so `"01"` is a key,
/// never an index), as Postgres' `#>` reads it.
pub fn parse_index(seg: &str) -> Option<usize> {
    if seg.is_empty() || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if seg.len() > 1 && seg.starts_with('0') {
        return None;
    }
    seg.parse().ok()
}

fn op_matches(op: &Op, field: Option<&Value>) -> bool {
    let Some(field) = field else {
        return matches!(op, Op::Exists(false));
    };
    match op {
        Op::Exists(present) => *present,
        Op::Eq(v) => json_eq(field, v),
        Op::Ne(v) => same_type(field, v) && !json_eq(field, v),
        Op::Gt(v) => order(field, v) == Some(Ordering::Greater),
        Op::Gte(v) => matches!(order(field, v), Some(Ordering::Greater | Ordering::Equal)),
        Op::Lt(v) => order(field, v) == Some(Ordering::Less),
        Op::Lte(v) => matches!(order(field, v), Some(Ordering::Less | Ordering::Equal)),
        Op::Contains(v) => match (field, v) {
            (Value::String(s), Value::String(sub)) => s.contains(sub.as_str()),
            (Value::Array(items), v) => items.iter().any(|i| json_eq(i, v)),
            _ => false,
        },
        Op::StartsWith(p) => matches!(field, Value::String(s) if s.starts_with(p.as_str())),
        Op::EndsWith(p) => matches!(field, Value::String(s) if s.ends_with(p.as_str())),
        Op::In(values) => values.iter().any(|v| json_eq(field, v)),
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// JSON equality with numbers compared numerically (`1 == 1.0`), objects by members.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn order(field: &Value, operand: &Value) -> Option<Ordering> {
    match (field, operand) {
        (Value::Number(x), Value::Number(y)) => Some(cmp_numbers(x, y)),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Numeric comparison exact for integers (i64 / u64) and IEEE for the rest.
pub fn cmp_numbers(x: &Number, y: &Number) -> Ordering {
    fn as_i128(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (as_i128(x), as_i128(y)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => {
            let a = x.as_f64().unwrap_or(f64::NAN);
            let b = y.as_f64().unwrap_or(f64::NAN);
            a.partial_cmp(&b).unwrap_or(Ordering::Equal)
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Ascending,
    /// Largest first.
    Descending,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    /// Dotted path into the value.
    pub path: String,
    /// Direction.
    #[serde(default)]
    pub direction: Direction,
}

/// A query: filter, sort, limit, offset.
///
/// ```
/// use kernel_core::{Filter, Query};
///
/// let q = Query::new()
///     .filter(Filter::eq("kind", "book"))
///     .sort_desc("price")
///     .limit(10);
/// assert_eq!(q.limit, Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Query {
    /// Which documents; `None` is all of them.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Sort keys in priority order; ties (and an empty list) are ordered by key ascending.
    #[serde(default)]
    pub sort: Vec<SortKey>,
    /// At most this many results.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip this many results first.
    #[serde(default)]
    pub offset: usize,
}

impl Query {
    /// All documents, by key.
    pub fn new() -> Query {
        Query::default()
    }

    /// Sets the filter.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Query {
        self.filter = Some(filter);
        self
    }

    /// Adds an ascending sort key.
    #[must_use]
    pub fn sort_asc(mut self, path: impl Into<String>) -> Query {
        self.sort.push(SortKey {
            path: path.into(),
            direction: Direction::Ascending,
        });
        self
    }

    /// Adds a descending sort key.
    #[must_use]
    pub fn sort_desc(mut self, path: impl Into<String>) -> Query {
        self.sort.push(SortKey {
            path: path.into(),
            direction: Direction::Descending,
        });
        self
    }

    /// Sets the limit.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Query {
        self.limit = Some(limit);
        self
    }

    /// Sets the offset.
    #[must_use]
    pub fn offset(mut self, offset: usize) -> Query {
        self.offset = offset;
        self
    }

    /// Checks the filter and sort paths; drivers call this before any I/O.
    pub fn validate(&self) -> Result<()> {
        if let Some(f) = &self.filter {
            f.validate()?;
        }
        if self.sort.len() > 8 {
            return Err(Error::invalid_input("query has more than 8 sort keys"));
        }
        for s in &self.sort {
            validate_path(&s.path)?;
        }
        Ok(())
    }

    /// Orders `(key, value)` pairs by the sort keys, ties by key. Drivers that scan use this.
    pub fn compare(&self, a: (&str, &Value), b: (&str, &Value)) -> Ordering {
        for s in &self.sort {
            let ord = sort_cmp(lookup(a.1, &s.path), lookup(b.1, &s.path));
            let ord = match s.direction {
                Direction::Ascending => ord,
                Direction::Descending => ord.reverse(),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a.0.as_bytes().cmp(b.0.as_bytes())
    }

    /// Runs the whole query over an unordered scan: filter, sort, offset, limit. `key` and
    /// `value` read each item's key and value, so nothing is cloned: pass references (`&Entry`)
    /// and clone only what comes back.
    pub fn apply<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> &str,
        value: impl Fn(&T) -> &Value,
    ) -> Vec<T> {
        let mut hits: Vec<T> = items
            .into_iter()
            .filter(|t| self.filter.as_ref().is_none_or(|f| f.matches(value(t))))
            .collect();
        hits.sort_by(|a, b| self.compare((key(a), value(a)), (key(b), value(b))));
        hits.into_iter()
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

/// Rank of a value's type in the cross-type sort order (missing is 0).
pub fn type_rank(v: Option<&Value>) -> u8 {
    match v {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// The total order used for sorting (see the module docs).
pub fn sort_cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => cmp_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operators() {
        let doc = json!({"n": 5, "s": "hello", "b": true, "a": [1, "x"], "o": {"p": null}});
        assert!(Filter::eq("n", 5.0).matches(&doc));
        assert!(!Filter::eq("n", "5").matches(&doc));
        assert!(Filter::ne("n", 4).matches(&doc));
        assert!(!Filter::ne("n", "4").matches(&doc));
        assert!(!Filter::ne("missing", 4).matches(&doc));
        assert!(Filter::gt("n", 4).matches(&doc));
        assert!(!Filter::gt("s", 4).matches(&doc));
        assert!(Filter::lt("s", "help").matches(&doc));
        assert!(Filter::gte("b", false).matches(&doc));
        assert!(Filter::contains("s", "ell").matches(&doc));
        assert!(Filter::contains("a", 1).matches(&doc));
        assert!(!Filter::contains("a", "1").matches(&doc));
        assert!(Filter::starts_with("s", "he").matches(&doc));
        assert!(Filter::ends_with("s", "lo").matches(&doc));
        assert!(Filter::is_in("n", [json!(1), json!(5)]).matches(&doc));
        assert!(Filter::exists("o.p", true).matches(&doc));
        assert!(Filter::exists("o.q", false).matches(&doc));
        assert!(Filter::eq("a.1", "x").matches(&doc));
        assert!(Filter::not(Filter::eq("missing", 1)).matches(&doc));
        assert!(Filter::And(vec![]).matches(&doc));
        assert!(!Filter::Or(vec![]).matches(&doc));
    }

    #[test]
    fn serde_round_trip() {
        let f = Filter::eq("a", 1).and(Filter::not(Filter::exists("b", true)));
        let s = serde_json::to_string(&f).unwrap();
        let back: Filter = serde_json::from_str(&s).unwrap();
        assert_eq!(f, back);
    }

    #[test]
    fn validation() {
        assert!(Filter::eq("", 1).validate().is_err());
        assert!(Filter::eq("a..b", 1).validate().is_err());
        assert!(Filter::eq("a.b", 1).validate().is_ok());
    }
}
