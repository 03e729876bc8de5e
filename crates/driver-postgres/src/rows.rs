//! Decoding rows into kernel types, and the small conversions the SQL needs.

use std::time::{Duration, SystemTime};

use kernel_core::{Entry, Metadata, RecordedEvent, Result, Value};
use tokio_postgres::Row;

use crate::error::{corrupted, pg};

/// [`ENTRY_COLUMNS`] as a literal, for statements built with `concat!` at compile time (the
/// hot reads send a `&'static str`, not a string formatted on every call).
macro_rules! entry_columns {
    () => {
        "d.key, d.value, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at"
    };
}
pub(crate) use entry_columns;

/// [`LIVE`] as a literal, for `concat!`.
macro_rules! live {
    () => {
        "(d.expires_at IS NULL OR d.expires_at > clock_timestamp())"
    };
}
pub(crate) use live;

/// The columns every entry read selects, in this order.
pub(crate) const ENTRY_COLUMNS: &str = entry_columns!();

/// The live-row condition on `kernel_documents d`.
pub(crate) const LIVE: &str = live!();

/// An entry from a row selected with [`ENTRY_COLUMNS`].
pub(crate) fn entry(namespace: &str, row: &Row) -> Result<Entry> {
    let value: Value = row.try_get(1).map_err(pg)?;
    Ok(Entry {
        namespace: namespace.to_owned(),
        key: row.try_get(0).map_err(pg)?,
        value,
        metadata: metadata(row.try_get(2).map_err(pg)?)?,
        version: version(row.try_get(3).map_err(pg)?)?,
        created_at: row.try_get(4).map_err(pg)?,
        updated_at: row.try_get(5).map_err(pg)?,
        expires_at: row.try_get(6).map_err(pg)?,
    })
}

/// A metadata column, which must hold a JSON object.
pub(crate) fn metadata(value: Value) -> Result<Metadata> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(corrupted("metadata that is not a JSON object")),
    }
}

/// A version or position column, which must be positive.
pub(crate) fn version(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupted("a negative version"))
}

/// A u64 the kernel passes to SQL as bigint (values above i64::MAX cannot be stored, so they
/// saturate: no stored version or position is that large).
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A usize limit as bigint.
pub(crate) fn limit_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A TTL in microseconds for SQL intervals.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The columns every event read selects (`e` events joined with `l` the log), in this order.
pub(crate) const EVENT_COLUMNS: &str = "e.id, e.stream, e.version, l.position, e.event_type, \
     e.payload, e.metadata, e.correlation_id, e.causation_id, e.recorded_at";

/// An event from a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event(row: &Row) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        id: row.try_get(0).map_err(pg)?,
        stream: row.try_get(1).map_err(pg)?,
        version: version(row.try_get(2).map_err(pg)?)?,
        position: version(row.try_get(3).map_err(pg)?)?,
        event_type: row.try_get(4).map_err(pg)?,
        payload: row.try_get(5).map_err(pg)?,
        metadata: metadata(row.try_get(6).map_err(pg)?)?,
        correlation_id: row.try_get(7).map_err(pg)?,
        causation_id: row.try_get(8).map_err(pg)?,
        recorded_at: row.try_get::<_, SystemTime>(9).map_err(pg)?,
    })
}

/// Whether a JSON value holds U+0000 in a string or an object key: JSONB cannot store it
/// (SQLSTATE 22P05), so the driver refuses it before any I/O and names what held it.
pub(crate) fn has_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// The `InvalidInput` for a value holding U+0000.
pub(crate) fn nul_error(what: &str) -> kernel_core::Error {
    kernel_core::Error::invalid_input(format!(
        "{what} holds U+0000 in a string, which PostgreSQL JSONB cannot store"
    ))
    .with_context("backend", "postgres")
}

/// Checks a value and optional metadata for U+0000.
pub(crate) fn check_nul(value: Option<&Value>, metadata: Option<&Metadata>) -> Result<()> {
    if value.is_some_and(has_nul) {
        return Err(nul_error("the value"));
    }
    if let Some(m) = metadata {
        if m.keys().any(|k| k.contains('\0')) || m.values().any(has_nul) {
            return Err(nul_error("the metadata"));
        }
    }
    Ok(())
}
