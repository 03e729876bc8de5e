//! How entries, events and snapshots are laid out in Redis strings, and how replies are read.
//!
//! Each stored string is a short `:`-separated header of decimal numbers followed by JSON, so
//! the Lua scripts read versions, stamps and expiry without decoding user JSON (which Redis'
//! cjson would re-encode lossily) and Rust decodes the JSON once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::types::Value as RedisValue;
use kernel_core::validate::escape;
use kernel_core::{Entry, Error, Metadata, RecordedEvent, Result, Snapshot, Uuid, Value};
use serde::{Deserialize, Serialize};

/// Microseconds since the epoch as a `SystemTime`.
pub(crate) fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Splits `n` leading `:`-terminated decimal fields off `raw`.
fn header<const N: usize>(raw: &[u8]) -> Option<([Option<u64>; N], &[u8])> {
    let mut fields = [None; N];
    let mut rest = raw;
    for field in fields.iter_mut() {
        let colon = rest.iter().position(|b| *b == b':')?;
        let text = std::str::from_utf8(&rest[..colon]).ok()?;
        *field = if text.is_empty() {
            None
        } else {
            Some(text.parse().ok()?)
        };
        rest = &rest[colon + 1..];
    }
    Some((fields, rest))
}

/// A document entry as stored, plus the stamp of the write that produced it.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub(crate) entry: Entry,
    pub(crate) stamp: u64,
}

/// Decodes `VERSION:CREATED:UPDATED:EXPIRES:REV:METALEN:<meta><value>`.
pub(crate) fn decode_entry(ns: &str, key: &str, raw: &[u8]) -> Result<StoredEntry> {
    let bad = |what: &str| {
        Error::corrupted(format!("stored entry cannot be decoded: {what}"))
            .with_context("backend", "redis")
            .with_context("namespace", ns)
            .with_context("key", escape(key))
    };
    let (fields, body) = header::<6>(raw).ok_or_else(|| bad("bad header"))?;
    let [
        Some(version),
        Some(created),
        Some(updated),
        expires,
        Some(stamp),
        Some(meta_len),
    ] = fields
    else {
        return Err(bad("missing header field"));
    };
    let meta_len = usize::try_from(meta_len).map_err(|_| bad("metadata length"))?;
    if meta_len > body.len() {
        return Err(bad("metadata length past the end"));
    }
    let (meta, value) = body.split_at(meta_len);
    let metadata: Metadata = serde_json::from_slice(meta)
        .map_err(|e| bad("metadata is not a JSON object").with_source(e))?;
    let value: Value =
        serde_json::from_slice(value).map_err(|e| bad("value is not JSON").with_source(e))?;
    Ok(StoredEntry {
        entry: Entry {
            namespace: ns.to_owned(),
            key: key.to_owned(),
            value,
            metadata,
            version,
            created_at: from_micros(created),
            updated_at: from_micros(updated),
            expires_at: expires.map(from_micros),
        },
        stamp,
    })
}

/// What an event carries besides the place the append script gives it.
#[derive(Serialize)]
pub(crate) struct EventBodyRef<'a> {
    pub(crate) id: &'a Uuid,
    pub(crate) stream: &'a str,
    #[serde(rename = "type")]
    pub(crate) event_type: &'a str,
    pub(crate) payload: &'a Value,
    pub(crate) metadata: &'a Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) causation_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct EventBody {
    id: Uuid,
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    payload: Value,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
}

/// Decodes `POSITION:VERSION:RECORDED_US:<body JSON>`.
pub(crate) fn decode_event(raw: &[u8]) -> Result<RecordedEvent> {
    let bad = |what: &str| {
        Error::corrupted(format!("stored event cannot be decoded: {what}"))
            .with_context("backend", "redis")
    };
    let (fields, body) = header::<3>(raw).ok_or_else(|| bad("bad header"))?;
    let [Some(position), Some(version), Some(recorded)] = fields else {
        return Err(bad("missing header field"));
    };
    let body: EventBody = serde_json::from_slice(body).map_err(|e| {
        bad("body is not the expected JSON")
            .with_context("position", position)
            .with_source(e)
    })?;
    Ok(RecordedEvent {
        id: body.id,
        stream: body.stream,
        version,
        position,
        event_type: body.event_type,
        payload: body.payload,
        metadata: body.metadata,
        correlation_id: body.correlation_id,
        causation_id: body.causation_id,
        recorded_at: from_micros(recorded),
    })
}

/// Decodes `VERSION:CREATED_US:<state JSON>`.
pub(crate) fn decode_snapshot(stream: &str, raw: &[u8]) -> Result<Snapshot> {
    let bad = |what: &str| {
        Error::corrupted(format!("stored snapshot cannot be decoded: {what}"))
            .with_context("backend", "redis")
            .with_context("stream", stream)
    };
    let (fields, body) = header::<2>(raw).ok_or_else(|| bad("bad header"))?;
    let [Some(version), Some(created)] = fields else {
        return Err(bad("missing header field"));
    };
    let state: Value =
        serde_json::from_slice(body).map_err(|e| bad("state is not JSON").with_source(e))?;
    Ok(Snapshot {
        stream: stream.to_owned(),
        version,
        state,
        created_at: from_micros(created),
    })
}

/// Serializes JSON for storage.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::invalid_input("value cannot be serialized as JSON").with_source(e))
}

/// Reads script replies, naming the operation in every error.
pub(crate) struct Reply {
    items: std::vec::IntoIter<RedisValue>,
    operation: &'static str,
}

impl Reply {
    pub(crate) fn new(value: RedisValue, operation: &'static str) -> Reply {
        let items = match value {
            RedisValue::Array(items) => items,
            RedisValue::Null => Vec::new(),
            other => vec![other],
        };
        Reply {
            items: items.into_iter(),
            operation,
        }
    }

    fn bad(&self, what: &str) -> Error {
        crate::error::bad_reply(
            self.operation,
            format!("unexpected reply from Redis: {what}"),
        )
    }

    pub(crate) fn remaining(&self) -> usize {
        self.items.len()
    }

    /// The next item; `None` for a nil (Lua `false`).
    pub(crate) fn next_raw(&mut self) -> Result<Option<RedisValue>> {
        match self.items.next() {
            None => Err(self.bad("reply ended early")),
            Some(RedisValue::Null) => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    }

    pub(crate) fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        match self.next_raw()? {
            None => Ok(None),
            Some(RedisValue::String(s)) => Ok(Some(s.as_bytes().to_vec())),
            Some(RedisValue::Bytes(b)) => Ok(Some(b.to_vec())),
            Some(RedisValue::Integer(i)) => Ok(Some(i.to_string().into_bytes())),
            Some(other) => Err(self.bad(&format!("expected a string, got {:?}", other.kind()))),
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>> {
        self.opt_bytes()?
            .ok_or_else(|| self.bad("expected a string, got nil"))
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b).map_err(|_| self.bad("expected UTF-8 text"))
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>> {
        match self.next_raw()? {
            None => Ok(None),
            Some(RedisValue::Integer(i)) => u64::try_from(i)
                .map(Some)
                .map_err(|_| self.bad("negative number")),
            Some(RedisValue::String(s)) if s.is_empty() => Ok(None),
            Some(RedisValue::String(s)) => s
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.bad(&format!("expected a number, got {:?}", escape(&s)))),
            Some(other) => Err(self.bad(&format!("expected a number, got {:?}", other.kind()))),
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.opt_u64()?
            .ok_or_else(|| self.bad("expected a number, got nil"))
    }
}
