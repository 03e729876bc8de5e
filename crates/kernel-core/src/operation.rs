//! Operation ids: durable idempotency for document writes.
//!
//! A write that fails with a retryable error may still have been applied
//! ([`crate::ErrorStatus::MaybeApplied`]): the connection broke after the request left. For an
//! unconditional put that is harmless to repeat; for a compare-and-set it is not — the repeat
//! answers `Conflict` although the change is in, or a caller who re-reads and retries applies
//! its change twice.
//!
//! [`crate::StorageDriver::write_once`] closes that gap the way payment APIs do with
//! idempotency keys: the caller names the write with an [`OperationId`]; the backend records
//! the id, a fingerprint of the request and its [`Outcome`] atomically with the write, and
//! keeps the record for the driver's operation window (24 hours unless configured). A repeat of
//! the same id with the same request inside the window writes nothing and returns the first
//! outcome ([`Applied::replayed`] is `true`) — whatever has happened to the key since. With it,
//! any retry of any write is safe, and the retry layer repeats `write_once` calls of every kind.
//!
//! ```
//! use kernel_core::{OperationId, PutOptions, Write, json};
//!
//! let id = OperationId::new("order-42:reserve").unwrap();
//! let write = Write::put("stock:apples", json!(7), PutOptions::new().if_version(3));
//! // The fingerprint covers the namespace and every part of the request.
//! assert_eq!(write.fingerprint("shop"), write.clone().fingerprint("shop"));
//! assert_ne!(write.fingerprint("shop"), write.fingerprint("other"));
//! assert!(OperationId::new("has space").is_err());
//! # let _ = id;
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::document::{BatchDelete, BatchPut, DeleteCondition, Entry, PutCondition, PutOptions};
use crate::error::{Error, Result};
use crate::validate::escape;

/// How long a backend remembers an operation id unless configured otherwise: 24 hours, the
/// window payment APIs give idempotency keys. A retry later than this is a new write.
pub const DEFAULT_OPERATION_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The caller's name for one write: 1..=128 bytes of printable ASCII without spaces
/// (`!`..=`~`). Scoped to a namespace: the same id in two namespaces names two operations.
///
/// Derive it from what the caller is doing (`"order-42:reserve"`) or make a random one with
/// [`OperationId::random`] and keep it across retries.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(String);

impl OperationId {
    /// Longest id in bytes.
    pub const MAX_LEN: usize = 128;

    /// Checks and wraps `id`; `InvalidInput` naming the rule otherwise.
    pub fn new(id: impl Into<String>) -> Result<OperationId> {
        let id = id.into();
        let err =
            |msg: String| Err(Error::invalid_input(msg).with_context("operation_id", escape(&id)));
        if id.is_empty() {
            return err("operation id must not be empty".to_owned());
        }
        if id.len() > OperationId::MAX_LEN {
            return err(format!(
                "operation id is {} bytes; the limit is {}",
                id.len(),
                OperationId::MAX_LEN
            ));
        }
        if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
            return err(format!(
                "operation id may contain only printable ASCII without spaces ('!'..='~'); \
                 found {c:?}"
            ));
        }
        Ok(OperationId(id))
    }

    /// A random id (a UUID v4).
    pub fn random() -> OperationId {
        OperationId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationId({:?})", self.0)
    }
}

impl std::str::FromStr for OperationId {
    type Err = Error;

    fn from_str(s: &str) -> Result<OperationId> {
        OperationId::new(s)
    }
}

/// One document write that [`crate::StorageDriver::write_once`] applies at most once: the
/// arguments of `put`, `delete`, `put_many` or `delete_many`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Write {
    /// A [`crate::StorageDriver::put`].
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Value,
        /// Condition, TTL, metadata.
        options: PutOptions,
    },
    /// A [`crate::StorageDriver::delete`].
    Delete {
        /// Key.
        key: String,
        /// Condition.
        condition: DeleteCondition,
    },
    /// A [`crate::StorageDriver::put_many`].
    PutMany(Vec<BatchPut>),
    /// A [`crate::StorageDriver::delete_many`].
    DeleteMany(Vec<BatchDelete>),
}

impl Write {
    /// A put.
    pub fn put(key: impl Into<String>, value: Value, options: PutOptions) -> Write {
        Write::Put {
            key: key.into(),
            value,
            options,
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<String>, condition: DeleteCondition) -> Write {
        Write::Delete {
            key: key.into(),
            condition,
        }
    }

    /// The name of the plain method this write is (`put`, `delete`, `put_many`, `delete_many`).
    pub fn name(&self) -> &'static str {
        match self {
            Write::Put { .. } => "put",
            Write::Delete { .. } => "delete",
            Write::PutMany(_) => "put_many",
            Write::DeleteMany(_) => "delete_many",
        }
    }

    /// The checks the plain method of this write makes before any I/O (names, keys, values,
    /// batch rules, TTLs), in the same order: what every driver's `write_once` runs first.
    pub fn validate(&self, namespace: &str, limits: &crate::Limits) -> Result<()> {
        match self {
            Write::Put {
                key,
                value,
                options,
            } => crate::validate::put(namespace, key, value, options, limits),
            Write::Delete { key, .. } => crate::validate::document(namespace, key),
            Write::PutMany(items) => {
                crate::validate::batch(namespace, items.iter().map(|i| i.key.as_str()), true)?;
                items.iter().try_for_each(|i| {
                    crate::validate::put(namespace, &i.key, &i.value, &i.options, limits)
                })
            }
            Write::DeleteMany(items) => {
                crate::validate::batch(namespace, items.iter().map(|i| i.key.as_str()), true)
            }
        }
    }

    /// The key of a single put or delete; `None` for a batch.
    pub fn key(&self) -> Option<&str> {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } => Some(key),
            Write::PutMany(_) | Write::DeleteMany(_) => None,
        }
    }

    /// A stable digest (hex SHA-256) of this write in `namespace`: every field of the request,
    /// with object members in sorted order, so the same request always gives the same
    /// fingerprint, on every platform and release. Backends store it beside an operation id to
    /// tell a retry (same fingerprint) from a reuse of the id for another write (`Conflict`).
    pub fn fingerprint(&self, namespace: &str) -> String {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different field sequences hash the same bytes.
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"kernel.write.v1");
        field(namespace.as_bytes());
        field(self.name().as_bytes());
        let put = |field: &mut dyn FnMut(&[u8]), key: &str, value: &Value, o: &PutOptions| {
            field(key.as_bytes());
            field(canonical(value).as_bytes());
            field(put_condition(o.condition).as_bytes());
            match o.ttl {
                Some(t) => field(format!("ttl:{}", t.as_nanos()).as_bytes()),
                None => field(b"no_ttl"),
            }
            match &o.metadata {
                Some(m) => field(canonical(&Value::Object(m.clone())).as_bytes()),
                None => field(b"keep"),
            }
        };
        match self {
            Write::Put {
                key,
                value,
                options,
            } => put(&mut field, key, value, options),
            Write::Delete { key, condition } => {
                field(key.as_bytes());
                field(delete_condition(*condition).as_bytes());
            }
            Write::PutMany(items) => {
                field(&(items.len() as u64).to_le_bytes());
                for i in items {
                    put(&mut field, &i.key, &i.value, &i.options);
                }
            }
            Write::DeleteMany(items) => {
                field(&(items.len() as u64).to_le_bytes());
                for i in items {
                    field(i.key.as_bytes());
                    field(delete_condition(i.condition).as_bytes());
                }
            }
        }
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn put_condition(c: PutCondition) -> String {
    match c {
        PutCondition::Always => "always".to_owned(),
        PutCondition::IfAbsent => "if_absent".to_owned(),
        PutCondition::IfVersion(v) => format!("if_version:{v}"),
    }
}

fn delete_condition(c: DeleteCondition) -> String {
    match c {
        DeleteCondition::Always => "always".to_owned(),
        DeleteCondition::IfVersion(v) => format!("if_version:{v}"),
    }
}

/// JSON text with object members sorted by key, whatever map order serde_json was built with.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                // Written as an array of pairs: the order survives any map implementation.
                Value::Array(
                    members
                        .into_iter()
                        .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), sorted(v)]))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    match value {
        Value::Object(_) => format!("o{}", sorted(value)),
        other => format!("v{}", sorted(other)),
    }
}

/// What a write returned: the value of the plain method it stands for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// A put's entry as written.
    Put(Entry),
    /// A delete's "a live entry was removed".
    Delete(bool),
    /// A `put_many`'s entries as written, in request order.
    PutMany(Vec<Entry>),
    /// A `delete_many`'s count of live entries removed.
    DeleteMany(u64),
    /// A transaction committed ([`crate::Transaction::commit_once`]).
    Commit,
}

impl Outcome {
    /// The name of the operation this is the outcome of.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Put(_) => "put",
            Outcome::Delete(_) => "delete",
            Outcome::PutMany(_) => "put_many",
            Outcome::DeleteMany(_) => "delete_many",
            Outcome::Commit => "commit",
        }
    }

    /// The entry of a put; `Internal` for any other outcome.
    pub fn into_entry(self) -> Result<Entry> {
        match self {
            Outcome::Put(e) => Ok(e),
            other => Err(other.mismatch("put")),
        }
    }

    /// Whether a delete removed a live entry; `Internal` for any other outcome.
    pub fn into_deleted(self) -> Result<bool> {
        match self {
            Outcome::Delete(d) => Ok(d),
            other => Err(other.mismatch("delete")),
        }
    }

    /// The entries of a `put_many`; `Internal` for any other outcome.
    pub fn into_entries(self) -> Result<Vec<Entry>> {
        match self {
            Outcome::PutMany(e) => Ok(e),
            other => Err(other.mismatch("put_many")),
        }
    }

    /// The count of a `delete_many`; `Internal` for any other outcome.
    pub fn into_deleted_count(self) -> Result<u64> {
        match self {
            Outcome::DeleteMany(n) => Ok(n),
            other => Err(other.mismatch("delete_many")),
        }
    }

    fn mismatch(&self, wanted: &str) -> Error {
        Error::internal(format!(
            "expected the outcome of a {wanted}, got the outcome of a {}",
            self.name()
        ))
    }

    /// The outcome as JSON, for backends that store it: exact (times in nanoseconds since the
    /// Unix epoch, values as given). [`Outcome::from_json`] reads it back.
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Put(e) => json!({"put": entry_json(e)}),
            Outcome::Delete(d) => json!({"delete": d}),
            Outcome::PutMany(es) => {
                json!({"put_many": es.iter().map(entry_json).collect::<Vec<_>>()})
            }
            Outcome::DeleteMany(n) => json!({"delete_many": n}),
            Outcome::Commit => json!({"commit": true}),
        }
    }

    /// Reads what [`Outcome::to_json`] wrote; `Corrupted` if it is something else.
    pub fn from_json(value: &Value) -> Result<Outcome> {
        let bad = || {
            Error::corrupted(format!(
                "a stored operation outcome is not one the kernel writes: {}",
                escape(&value.to_string())
            ))
        };
        let Some((tag, body)) = value
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next())
        else {
            return Err(bad());
        };
        match tag.as_str() {
            "put" => Ok(Outcome::Put(entry_from_json(body).ok_or_else(bad)?)),
            "delete" => body.as_bool().map(Outcome::Delete).ok_or_else(bad),
            "put_many" => body
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|e| entry_from_json(e).ok_or_else(bad))
                .collect::<Result<Vec<_>>>()
                .map(Outcome::PutMany),
            "delete_many" => body.as_u64().map(Outcome::DeleteMany).ok_or_else(bad),
            "commit" => Ok(Outcome::Commit),
            _ => Err(bad()),
        }
    }
}

fn nanos(t: SystemTime) -> Value {
    // Times before the epoch do not occur in entries; saturate instead of failing.
    let n = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Value::from(u64::try_from(n).unwrap_or(u64::MAX))
}

fn time(v: &Value) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_nanos(v.as_u64()?))
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "namespace": e.namespace,
        "key": e.key,
        "value": e.value,
        "metadata": e.metadata,
        "version": e.version,
        "created_at": nanos(e.created_at),
        "updated_at": nanos(e.updated_at),
        "expires_at": e.expires_at.map(nanos),
    })
}

fn entry_from_json(v: &Value) -> Option<Entry> {
    let m: &Map<String, Value> = v.as_object()?;
    Some(Entry {
        namespace: m.get("namespace")?.as_str()?.to_owned(),
        key: m.get("key")?.as_str()?.to_owned(),
        value: m.get("value")?.clone(),
        metadata: m.get("metadata")?.as_object()?.clone(),
        version: m.get("version")?.as_u64()?,
        created_at: time(m.get("created_at")?)?,
        updated_at: time(m.get("updated_at")?)?,
        expires_at: match m.get("expires_at")? {
            Value::Null => None,
            t => Some(time(t)?),
        },
    })
}

/// What [`crate::StorageDriver::write_once`] and [`crate::Transaction::commit_once`] return.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The outcome of the first (and only) application.
    pub outcome: Outcome,
    /// `true` when this call wrote nothing because the id was already recorded: the outcome is
    /// the one recorded then.
    pub replayed: bool,
}

impl Applied {
    /// A write applied by this call.
    pub fn fresh(outcome: Outcome) -> Applied {
        Applied {
            outcome,
            replayed: false,
        }
    }
}

/// An operation id's record as a backend keeps it: the fingerprint of the request and its
/// outcome. Drivers load it and call [`Record::replay`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// [`Write::fingerprint`] of the request (empty for a transaction, which has none).
    pub fingerprint: String,
    /// The outcome of the first application.
    pub outcome: Outcome,
}

impl Record {
    /// The answer to a repeat of `id` in `namespace` whose request has `fingerprint`: the
    /// recorded outcome, replayed, when the fingerprints match; a permanent `Conflict` naming
    /// the id when the id was used for another request.
    pub fn replay(self, namespace: &str, id: &OperationId, fingerprint: &str) -> Result<Applied> {
        if self.fingerprint != fingerprint {
            return Err(Error::conflict(format!(
                "operation id {id} was already used in namespace {namespace} for a different \
                 request (a {}); an operation id names exactly one write, so choose a new id \
                 for a new write",
                self.outcome.name()
            ))
            .with_context("namespace", namespace)
            .with_context("operation_id", id));
        }
        Ok(Applied {
            outcome: self.outcome,
            replayed: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let now = SystemTime::now();
        let mut e = Entry::after_put(
            None,
            "ns",
            "k",
            json!({"b": 1.5, "a": [1, -2]}),
            None,
            now,
            None,
        );
        e.expires_at = Some(now + Duration::from_nanos(1_234_567_891));
        e
    }

    #[test]
    fn outcomes_round_trip_exactly() {
        for o in [
            Outcome::Put(entry()),
            Outcome::Delete(true),
            Outcome::PutMany(vec![entry(), entry()]),
            Outcome::DeleteMany(7),
            Outcome::Commit,
        ] {
            assert_eq!(Outcome::from_json(&o.to_json()).unwrap(), o);
        }
        let e = Outcome::from_json(&json!({"put": 1})).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Corrupted);
    }

    #[test]
    fn fingerprints_see_every_field_and_ignore_member_order() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": {"p": 2, "q": 3}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": {"q": 3, "p": 2}, "x": 1}"#).unwrap();
        let fp = |v: &Value, o: PutOptions| Write::put("k", v.clone(), o).fingerprint("ns");
        assert_eq!(fp(&a, PutOptions::new()), fp(&b, PutOptions::new()));
        let base = fp(&a, PutOptions::new());
        assert_ne!(base, fp(&a, PutOptions::new().if_version(1)));
        assert_ne!(base, fp(&a, PutOptions::new().ttl(Duration::from_secs(1))));
        assert_ne!(base, fp(&json!({"x": 1}), PutOptions::new()));
        assert_ne!(
            base,
            Write::put("k2", a.clone(), PutOptions::new()).fingerprint("ns")
        );
        assert_ne!(
            Write::delete("k", DeleteCondition::Always).fingerprint("ns"),
            Write::DeleteMany(vec![BatchDelete::new("k")]).fingerprint("ns")
        );
        // The digest is fixed across releases: backends compare stored fingerprints.
        assert_eq!(
            Write::delete("k", DeleteCondition::Always)
                .fingerprint("ns")
                .len(),
            64
        );
    }

    #[test]
    fn replay_checks_the_fingerprint() {
        let id = OperationId::new("op-1").unwrap();
        let rec = Record {
            fingerprint: "aa".into(),
            outcome: Outcome::Delete(true),
        };
        assert!(rec.clone().replay("ns", &id, "aa").unwrap().replayed);
        let e = rec.replay("ns", &id, "bb").unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::Conflict);
        assert!(!e.is_retryable());
        assert_eq!(e.context_value("operation_id"), Some("op-1"));
    }

    #[test]
    fn ids_follow_the_rule() {
        assert!(OperationId::new("a").is_ok());
        assert!(OperationId::new("x".repeat(128)).is_ok());
        for bad in ["", "a b", "é", "tab\t", &"x".repeat(129)] {
            let e = OperationId::new(bad).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidInput, "{bad:?}");
        }
        assert_ne!(OperationId::random(), OperationId::random());
    }
}
