//! Translation of [`Filter`] and sort keys to parameterised SQL over `kernel_documents d`, with
//! the semantics of [`kernel_core::query`] exactly:
//!
//! * A field is `d.value #> $path` (SQL NULL when missing, JSON `null` when null). Postgres
//!   reads path segments like `01`, `-1` or `+1` as array indices where the kernel does not, so
//!   such a segment is guarded: it only resolves inside an object.
//! * Every leaf is wrapped in `coalesce(.., false)` so it is two-valued and `NOT` negates the
//!   kernel's way (a missing field makes `eq` false and `not(eq)` true).
//! * Comparisons first check the JSON type (`jsonb_typeof`) and compare within it: numbers as
//!   `numeric`, strings byte-wise (`COLLATE "C"`), booleans `false < true`. `CASE` makes sure a
//!   cast only runs on a value of the right type. JSONB equality compares numbers numerically
//!   (`1 = 1.0`) and containers member by member, like [`kernel_core::query::json_eq`].
//! * Sorting uses the cross-type rank (missing < null < bool < number < string < array <
//!   object), then the value within its type, then the key ascending.
//!
//! User input travels as bound parameters, with one exception: the paths of the namespace's
//! declared field indexes ([`SqlBuilder::indexed`]) and then the namespace itself are written
//! as quoted literals ([`quote_literal`]), because an expression index matches only a query
//! expression with the same constants (`value #> ARRAY['group']`), and a partial index's
//! `namespace = '…'` only a query that names the namespace. An equality (`eq`, `in`) on such a
//! path outside any `not` is written without its `coalesce(.., false)`: in a `WHERE` a NULL
//! rejects the row as `false` does, and the bare comparison is what an index scan can use.

use std::sync::Arc;

use kernel_core::query::{Direction, Filter, Op, SortKey, parse_index};
use kernel_core::{Error, Result, Value};
use tokio_postgres::types::{ToSql, Type};

use crate::error::BACKEND;

/// SQL text and its bound parameters.
pub(crate) struct SqlBuilder {
    /// The SQL so far.
    pub sql: String,
    params: Vec<(Box<dyn ToSql + Sync + Send>, Type)>,
    /// Paths with a declared index: written literally.
    indexed: Option<Arc<[String]>>,
}

impl SqlBuilder {
    /// Starts with `sql`.
    pub(crate) fn new(sql: &str) -> SqlBuilder {
        SqlBuilder {
            sql: sql.to_owned(),
            params: Vec::new(),
            indexed: None,
        }
    }

    /// Appends `d.namespace = … AND <live>`: the namespace as a literal when it has declared
    /// indexes (`indexed`, whose paths are then written literally too), else bound.
    pub(crate) fn namespace(
        &mut self,
        namespace: &str,
        indexed: Option<Arc<[String]>>,
        live: &str,
    ) {
        let ns = match &indexed {
            Some(_) => quote_literal(namespace),
            None => self.bind(namespace.to_owned(), Type::TEXT),
        };
        self.indexed = indexed;
        self.push(&format!("d.namespace = {ns} AND {live}"));
    }

    fn is_indexed(&self, path: &str) -> bool {
        self.indexed
            .as_ref()
            .is_some_and(|paths| paths.iter().any(|p| p == path))
    }

    /// Binds a parameter; returns its placeholder (`$n`).
    pub(crate) fn bind<T: ToSql + Sync + Send + 'static>(&mut self, value: T, ty: Type) -> String {
        self.params.push((Box::new(value), ty));
        format!("${}", self.params.len())
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    /// The parameters as `query_typed` wants them.
    pub(crate) fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }

    /// Appends the SQL of a filter (a boolean expression); `Unsupported` for a filter or
    /// operator added to kernel-core after this driver was written.
    pub(crate) fn filter(&mut self, filter: &Filter) -> Result<()> {
        self.filter_in(filter, true)
    }

    /// `positive`: not under any `not`, where NULL and `false` both reject the row.
    fn filter_in(&mut self, filter: &Filter, positive: bool) -> Result<()> {
        match filter {
            Filter::And(children) => self.join(children, " AND ", "true", positive),
            Filter::Or(children) => self.join(children, " OR ", "false", positive),
            Filter::Not(child) => {
                self.push("(NOT ");
                self.filter_in(child, false)?;
                self.push(")");
                Ok(())
            }
            Filter::Field { path, op } => {
                let field = self.field(path);
                let leaf = self.leaf(&field, op)?;
                if positive && matches!(op, Op::Eq(_) | Op::In(_)) && self.is_indexed(path) {
                    // Bare, so the planner can match it to the index.
                    self.push(&leaf);
                } else {
                    self.push("coalesce(");
                    self.push(&leaf);
                    self.push(", false)");
                }
                Ok(())
            }
            other => Err(unsupported("filter", other)),
        }
    }

    fn join(&mut self, children: &[Filter], sep: &str, empty: &str, positive: bool) -> Result<()> {
        if children.is_empty() {
            self.push(empty);
            return Ok(());
        }
        self.push("(");
        for (i, c) in children.iter().enumerate() {
            if i > 0 {
                self.push(sep);
            }
            self.filter_in(c, positive)?;
        }
        self.push(")");
        Ok(())
    }

    /// The SQL expression of the field at a dotted path (SQL NULL when missing): with its path
    /// bound, or literal when the path has a declared index.
    fn field(&mut self, path: &str) -> String {
        if self.is_indexed(path) {
            return field_expr("d.value", path, |segments| array_literal(&segments));
        }
        field_expr("d.value", path, |segments| {
            self.bind(segments, Type::TEXT_ARRAY)
        })
    }

    fn leaf(&mut self, f: &str, op: &Op) -> Result<String> {
        Ok(match op {
            Op::Exists(true) => format!("({f} IS NOT NULL)"),
            Op::Exists(false) => format!("({f} IS NULL)"),
            Op::Eq(v) => {
                let p = self.bind(v.clone(), Type::JSONB);
                format!("({f} = {p})")
            }
            Op::Ne(v) => {
                let ty = json_type(v);
                let p = self.bind(v.clone(), Type::JSONB);
                format!("(jsonb_typeof({f}) = '{ty}' AND {f} <> {p})")
            }
            Op::Gt(v) => self.order(f, v, ">"),
            Op::Gte(v) => self.order(f, v, ">="),
            Op::Lt(v) => self.order(f, v, "<"),
            Op::Lte(v) => self.order(f, v, "<="),
            Op::Contains(v) => match v {
                Value::String(s) => {
                    let text = self.bind(s.clone(), Type::TEXT);
                    let elem = self.bind(v.clone(), Type::JSONB);
                    format!(
                        "(CASE jsonb_typeof({f}) WHEN 'string' THEN strpos({f} #>> '{{}}', {text}) > 0 \
                         WHEN 'array' THEN {f} @> jsonb_build_array({elem}) ELSE false END)"
                    )
                }
                Value::Array(_) | Value::Object(_) => {
                    // Containment (`@>`) is not equality for containers: compare elements.
                    let elem = self.bind(v.clone(), Type::JSONB);
                    format!(
                        "(CASE WHEN jsonb_typeof({f}) = 'array' THEN EXISTS (SELECT 1 FROM \
                         jsonb_array_elements({f}) AS el(x) WHERE el.x = {elem}) END)"
                    )
                }
                _ => {
                    let elem = self.bind(v.clone(), Type::JSONB);
                    format!(
                        "(CASE WHEN jsonb_typeof({f}) = 'array' THEN {f} @> jsonb_build_array({elem}) END)"
                    )
                }
            },
            Op::StartsWith(s) => {
                let p = self.bind(s.clone(), Type::TEXT);
                format!(
                    "(CASE WHEN jsonb_typeof({f}) = 'string' THEN starts_with({f} #>> '{{}}', {p}) END)"
                )
            }
            Op::EndsWith(s) => {
                let p = self.bind(s.clone(), Type::TEXT);
                format!(
                    "(CASE WHEN jsonb_typeof({f}) = 'string' THEN \
                     right({f} #>> '{{}}', char_length({p})) = {p} END)"
                )
            }
            Op::In(values) => {
                let p = self.bind(values.clone(), Type::JSONB_ARRAY);
                format!("({f} = ANY ({p}))")
            }
            other => return Err(unsupported("filter operator", other)),
        })
    }

    fn order(&mut self, f: &str, v: &Value, cmp: &str) -> String {
        match v {
            Value::Number(_) => {
                let p = self.bind(v.clone(), Type::JSONB);
                format!(
                    "(CASE WHEN jsonb_typeof({f}) = 'number' THEN ({f})::numeric {cmp} ({p})::numeric END)"
                )
            }
            Value::String(s) => {
                let p = self.bind(s.clone(), Type::TEXT);
                format!(
                    "(CASE WHEN jsonb_typeof({f}) = 'string' THEN \
                     ({f} #>> '{{}}') COLLATE \"C\" {cmp} {p} COLLATE \"C\" END)"
                )
            }
            Value::Bool(b) => {
                let p = self.bind(*b, Type::BOOL);
                format!(
                    "(CASE WHEN jsonb_typeof({f}) = 'boolean' THEN ({f})::boolean {cmp} {p} END)"
                )
            }
            // Ordering is undefined on null, arrays and objects: never matches.
            _ => "false".to_owned(),
        }
    }

    /// Appends `ORDER BY` for the sort keys, ties by key ascending.
    pub(crate) fn order_by(&mut self, sort: &[SortKey]) {
        self.push(" ORDER BY ");
        for s in sort {
            let f = self.field(&s.path);
            let dir = match s.direction {
                Direction::Ascending => "ASC",
                Direction::Descending => "DESC",
            };
            self.push(&format!(
                "(CASE WHEN {f} IS NULL THEN 0 ELSE CASE jsonb_typeof({f}) WHEN 'null' THEN 1 \
                 WHEN 'boolean' THEN 2 WHEN 'number' THEN 3 WHEN 'string' THEN 4 \
                 WHEN 'array' THEN 5 ELSE 6 END END) {dir}, \
                 (CASE WHEN jsonb_typeof({f}) = 'boolean' THEN ({f})::boolean END) {dir}, \
                 (CASE WHEN jsonb_typeof({f}) = 'number' THEN ({f})::numeric END) {dir}, \
                 (CASE WHEN jsonb_typeof({f}) = 'string' THEN ({f} #>> '{{}}') COLLATE \"C\" END) {dir}, "
            ));
        }
        self.push("d.key ASC");
    }
}

/// The expression of the field at `path` of the JSON column `column`, each path array written by
/// `array` (a placeholder or a literal). Postgres reads segments like `01`, `-1` or `+1` as
/// array indices where the kernel does not, so such a segment only resolves inside an object.
pub(crate) fn field_expr(
    column: &str,
    path: &str,
    mut array: impl FnMut(Vec<String>) -> String,
) -> String {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    // Segments Postgres might read as an array index but the kernel does not.
    let guarded: Vec<usize> = segments
        .iter()
        .enumerate()
        .filter(|(_, s)| parse_index(s).is_none() && s.bytes().any(|b| b.is_ascii_digit()))
        .map(|(i, _)| i)
        .collect();
    let full = array(segments.clone());
    let lookup = format!("({column} #> {full})");
    if guarded.is_empty() {
        return lookup;
    }
    let mut conditions = Vec::new();
    for i in guarded {
        let parent = array(segments[..i].to_vec());
        conditions.push(format!("jsonb_typeof({column} #> {parent}) = 'object'"));
    }
    format!("(CASE WHEN {} THEN {lookup} END)", conditions.join(" AND "))
}

/// A text literal that means `s` whatever `standard_conforming_strings` says: an escape string
/// (`E'…'`) with backslashes and quotes doubled. `s` holds no NUL (paths and namespaces are
/// validated).
pub(crate) fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A `text[]` constant of literals.
fn array_literal(segments: &[String]) -> String {
    let items: Vec<String> = segments.iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

fn unsupported(what: &'static str, value: &impl std::fmt::Debug) -> Error {
    Error::unsupported_variant(what, value).with_context("backend", BACKEND)
}

/// The `jsonb_typeof` name of a value's type.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_input_never_reaches_the_sql_text() {
        let evil = "'; DROP TABLE kernel_documents; --";
        let f = Filter::eq(evil, evil)
            .and(Filter::starts_with("a", evil))
            .and(Filter::gt("b", evil))
            .and(Filter::is_in("c", [json!(evil)]));
        let mut b = SqlBuilder::new("SELECT 1 WHERE ");
        assert!(b.filter(&f).is_ok());
        b.order_by(&[SortKey {
            path: evil.to_owned(),
            direction: Direction::Descending,
        }]);
        assert!(!b.sql.contains("DROP"), "{}", b.sql);
        assert!(b.params().len() >= 8);
    }

    #[test]
    fn numeric_looking_segments_are_guarded() {
        let mut b = SqlBuilder::new("");
        let f = b.field("a.01.2");
        assert!(f.contains("jsonb_typeof(d.value #> $2) = 'object'"), "{f}");
        let mut b = SqlBuilder::new("");
        assert_eq!(b.field("a.2.b"), "(d.value #> $1)");
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("a'b\\c"), "E'a''b\\\\c'");
        assert_eq!(
            array_literal(&strings(&["a", "b"])),
            "ARRAY[E'a', E'b']::text[]"
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn indexed_paths_are_literal_and_bare_outside_not() {
        let mut b = SqlBuilder::new("");
        b.namespace("n's", Some(Arc::from(strings(&["g", "x.01"]))), "true");
        let f = Filter::eq("g", 1)
            .and(Filter::is_in("x.01", [json!(1)]))
            .and(Filter::not(Filter::eq("g", 2)))
            .and(Filter::eq("other", 3));
        assert!(b.filter(&f).is_ok());
        assert!(
            b.sql.starts_with("d.namespace = E'n''s' AND true"),
            "{}",
            b.sql
        );
        assert!(
            b.sql.contains("((d.value #> ARRAY[E'g']::text[]) = $1)"),
            "{}",
            b.sql
        );
        assert!(
            b.sql
                .contains("(NOT coalesce(((d.value #> ARRAY[E'g']::text[]) = $3), false))"),
            "{}",
            b.sql
        );
        assert!(
            b.sql
                .contains("jsonb_typeof(d.value #> ARRAY[E'x']::text[]) = 'object'"),
            "{}",
            b.sql
        );
        assert!(
            b.sql.contains("coalesce(((d.value #> $4) = $5), false)"),
            "{}",
            b.sql
        );
    }

    #[test]
    fn empty_and_or() {
        let mut b = SqlBuilder::new("");
        assert!(b.filter(&Filter::And(vec![])).is_ok());
        b.push(" ");
        assert!(b.filter(&Filter::Or(vec![])).is_ok());
        assert_eq!(b.sql, "true false");
    }
}
