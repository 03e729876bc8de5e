//! Declared field indexes: per namespace and path, a map from the field's value class to the
//! keys whose document has a value of that class there.
//!
//! A class is a canonical text of the value in which numbers are written by their `f64` bits:
//! values equal under [`kernel_core::query::json_eq`] (`1 == 1.0`, objects member by member)
//! always share a class, though a class may also hold values it does not call equal (two large
//! integers with one nearest `f64`). So an index only picks candidates: the query still runs
//! its whole filter on each ([`kernel_core::Query::apply`]), and answers exactly what a scan
//! would.
//!
//! Kept in the documents' state, behind the same lock, and updated by every change of a
//! stored value ([`DocState`](crate::documents::DocState) calls [`Indexes::replace`]); expired
//! entries stay indexed until swept, as they stay stored: queries skip them alike.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use kernel_core::query::{Filter, Op, lookup};
use kernel_core::{IndexInfo, Value};

/// The indexes of one namespace, by path.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    by_path: BTreeMap<String, FieldIndex>,
}

/// One path's index: value class → keys.
#[derive(Debug, Default)]
struct FieldIndex {
    classes: HashMap<String, BTreeSet<String>>,
}

impl FieldIndex {
    fn insert(&mut self, path: &str, key: &str, value: &Value) {
        if let Some(v) = lookup(value, path) {
            self.classes
                .entry(class(v))
                .or_default()
                .insert(key.to_owned());
        }
    }

    fn remove(&mut self, path: &str, key: &str, value: &Value) {
        if let Some(v) = lookup(value, path) {
            let c = class(v);
            if let Some(keys) = self.classes.get_mut(&c) {
                keys.remove(key);
                if keys.is_empty() {
                    self.classes.remove(&c);
                }
            }
        }
    }
}

impl Indexes {
    /// Declares `path`, indexing the stored `entries`; `false` if it was declared already.
    pub(crate) fn declare<'a>(
        &mut self,
        path: &str,
        entries: impl Iterator<Item = (&'a str, &'a Value)>,
    ) -> bool {
        if self.by_path.contains_key(path) {
            return false;
        }
        let mut index = FieldIndex::default();
        for (key, value) in entries {
            index.insert(path, key, value);
        }
        self.by_path.insert(path.to_owned(), index);
        true
    }

    /// Forgets `path`; whether it was declared.
    pub(crate) fn remove_path(&mut self, path: &str) -> bool {
        self.by_path.remove(path).is_some()
    }

    /// The declared indexes, by path.
    pub(crate) fn infos(&self, namespace: &str) -> Vec<IndexInfo> {
        self.by_path
            .keys()
            .map(|p| IndexInfo::new(namespace, p.clone(), format!("memory:{p}")))
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The stored value at `key` goes from `old` to `new` (`None`: absent).
    pub(crate) fn replace(&mut self, key: &str, old: Option<&Value>, new: Option<&Value>) {
        for (path, index) in &mut self.by_path {
            if let Some(v) = old {
                index.remove(path, key, v);
            }
            if let Some(v) = new {
                index.insert(path, key, v);
            }
        }
    }

    /// Every stored entry went (`clear`): the declarations stay.
    pub(crate) fn clear(&mut self) {
        for index in self.by_path.values_mut() {
            index.classes.clear();
        }
    }

    /// The keys that may match `filter`, when an indexed equality decides it: an `eq` or `in`
    /// on a declared path at the top or under `and`s (the smallest candidate set of those).
    /// `None`: no index applies, scan.
    pub(crate) fn candidates(&self, filter: &Filter) -> Option<BTreeSet<&str>> {
        match filter {
            Filter::Field { path, op } => {
                let index = self.by_path.get(path)?;
                let operands: Vec<&Value> = match op {
                    Op::Eq(v) => vec![v],
                    Op::In(values) => values.iter().collect(),
                    _ => return None,
                };
                let mut keys = BTreeSet::new();
                for v in operands {
                    if let Some(found) = index.classes.get(&class(v)) {
                        keys.extend(found.iter().map(String::as_str));
                    }
                }
                Some(keys)
            }
            Filter::And(children) => children
                .iter()
                .filter_map(|c| self.candidates(c))
                .min_by_key(BTreeSet::len),
            _ => None,
        }
    }
}

/// The class of a value (see the module documentation).
fn class(v: &Value) -> String {
    let mut out = String::new();
    write_class(v, &mut out);
    out
}

fn write_class(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push('n'),
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Number(n) => {
            // +0.0 for -0.0 too: they compare equal.
            let f = n.as_f64().unwrap_or(f64::NAN) + 0.0;
            let _ = write!(out, "d{:016x}", f.to_bits());
        }
        Value::String(s) => {
            let _ = write!(out, "s{}:", s.len());
            out.push_str(s);
        }
        Value::Array(items) => {
            let _ = write!(out, "[{}:", items.len());
            for i in items {
                write_class(i, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let _ = write!(out, "{{{}:", members.len());
            for (k, v) in members {
                let _ = write!(out, "{}:", k.len());
                out.push_str(k);
                write_class(v, out);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_core::json;
    use kernel_core::query::json_eq;

    #[test]
    fn equal_values_share_a_class() {
        let pairs = [
            (json!(1), json!(1.0)),
            (json!({"a": 1, "b": [2]}), json!({"b": [2.0], "a": 1.0})),
            (json!(12345678901234567_u64), json!(12345678901234567.0)),
        ];
        for (a, b) in pairs {
            assert!(json_eq(&a, &b));
            assert_eq!(class(&a), class(&b), "{a} {b}");
        }
        assert_ne!(class(&json!("1")), class(&json!(1)));
        assert_ne!(class(&json!(["ab"])), class(&json!(["a", "b"])));
        assert_ne!(class(&json!(null)), class(&json!("n")));
    }
}
