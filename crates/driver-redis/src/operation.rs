//! Operation ids ([`StorageDriver::write_once`], [`StorageDriver::operation`],
//! [`kernel_core::Transaction::commit_once`]) on Redis.
//!
//! Each recorded id is one string key, `P{d:NS}:op:ID`, in the namespace's hash tag and so in
//! its cluster slot. The write scripts are wrapped by `once.lua`, which looks the record up,
//! runs the plain script only when there is none, and on an `ok` reply stores the record with
//! `PX` = the operation window — all in one script, so Redis' one-script-at-a-time execution
//! makes the check, the write and the record one atomic unit. Redis expires records itself:
//! nothing is ever scanned or purged.
//!
//! The record keeps the fingerprint, the outcome kind, the request arguments the outcome is
//! built from (a put's keys, values and metadata) and the script's raw reply (versions,
//! server times in microseconds, stored metadata) as length-prefixed strings. Nothing is
//! re-encoded in Lua (cjson would round numbers above 14 digits), and a replayed reply goes
//! through the same decoder as a fresh one, so a replay returns the first outcome exactly.
//!
//! [`StorageDriver::write_once`]: kernel_core::StorageDriver::write_once
//! [`StorageDriver::operation`]: kernel_core::StorageDriver::operation

use fred::interfaces::KeysInterface;
use fred::types::Value as RedisValue;
use kernel_core::operation::Record;
use kernel_core::validate::{self, escape};
use kernel_core::{
    Applied, BatchDelete, BatchPut, Error, ErrorCode, Metadata, OperationId, Outcome, PutOptions,
    Result, Value, Write,
};

use crate::RedisDriver;
use crate::codec::Reply;
use crate::error::map_err;
use crate::scripts::Lua;
use crate::storage::{delete_args, delete_outcome, put_args, put_outcome};

/// The record layout `once.lua` writes; a record in another layout is `Corrupted`.
const RECORD_FORMAT: &str = "v1";

/// Fields of a put item in `put.lua`'s arguments.
const PUT_ARGS_PER_ITEM: usize = 7;

/// What a `once.lua` call answered.
pub(crate) enum Once {
    /// The id was recorded: the stored record, nothing written.
    Replay(Vec<u8>),
    /// The wrapped script ran: its own reply (recorded when `ok`).
    Fresh(Reply),
}

/// A `once.lua` call: the wrapped script's keys and arguments plus what the record needs.
pub(crate) struct OnceCall<'a> {
    pub(crate) lua: &'a Lua,
    pub(crate) operation: &'static str,
    pub(crate) namespace: &'a str,
    pub(crate) id: &'a OperationId,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<RedisValue>,
    /// How many leading arguments the record keeps to rebuild the outcome from.
    pub(crate) kept: usize,
    pub(crate) fingerprint: &'a str,
    /// [`Outcome::name`] of the outcome recorded.
    pub(crate) kind: &'static str,
}

impl RedisDriver {
    /// Runs a `once.lua`-wrapped script. Its errors are the plain script's (`MaybeApplied` for a
    /// lost answer included) with the namespace and the operation id named.
    pub(crate) async fn run_once(&self, call: OnceCall<'_>) -> Result<Once> {
        let OnceCall {
            lua,
            operation,
            namespace,
            id,
            mut keys,
            mut args,
            kept,
            fingerprint,
            kind,
        } = call;
        keys.push(self.inner.keys.operation(namespace, id.as_str()));
        // PX counts whole milliseconds; the config refuses windows under 1 ms.
        let window = self.inner.config.operation_window.as_millis().max(1);
        args.extend([
            RedisValue::from(kept as i64),
            fingerprint.into(),
            kind.into(),
            window.to_string().into(),
        ]);
        let reply = self
            .run(lua, operation, keys, args)
            .await
            .map_err(|e| with_id(e, namespace, id))?;
        if let RedisValue::Array(items) = &reply {
            if items.len() == 2 && items[0].as_str().as_deref() == Some("replay") {
                let raw = match &items[1] {
                    RedisValue::String(s) => s.as_bytes().to_vec(),
                    RedisValue::Bytes(b) => b.to_vec(),
                    other => {
                        return Err(with_id(
                            crate::error::bad_reply(
                                operation,
                                format!("a replayed record is a {:?}", other.kind()),
                            ),
                            namespace,
                            id,
                        ));
                    }
                };
                return Ok(Once::Replay(raw));
            }
        }
        Ok(Once::Fresh(Reply::new(reply, operation)))
    }

    /// [`kernel_core::StorageDriver::write_once`]: every error names the namespace, the id and,
    /// for a single put or delete, the key.
    pub(crate) async fn write_once_impl(
        &self,
        ns: &str,
        id: &OperationId,
        write: Write,
    ) -> Result<Applied> {
        let key = write.key().map(str::to_owned);
        self.apply_once(ns, id, write).await.map_err(|e| {
            let e = with_id(e, ns, id);
            match &key {
                Some(k) if e.context_value("key").is_none() => e.with_context("key", escape(k)),
                _ => e,
            }
        })
    }

    async fn apply_once(&self, ns: &str, id: &OperationId, write: Write) -> Result<Applied> {
        write.validate(ns, &self.inner.config.limits)?;
        let fingerprint = write.fingerprint(ns);
        let kind = write.name();
        let nk = self.inner.keys.namespace(ns);
        let scripts = &self.inner.scripts;
        let call = |lua, args: Vec<RedisValue>, kept| OnceCall {
            lua,
            operation: "write_once",
            namespace: ns,
            id,
            keys: nk.all(),
            args,
            kept,
            fingerprint: &fingerprint,
            kind,
        };
        let replay = |raw: Vec<u8>| decode_record(ns, id, &raw)?.replay(ns, id, &fingerprint);
        let outcome = match write {
            Write::Put {
                key,
                value,
                options,
            } => {
                let items = vec![BatchPut::new(key, value).with_options(options)];
                let args = put_args(ns, &items, self.purge_due())?;
                // The record keeps the request, not the trailing purge flag.
                let kept = args.len() - 1;
                match self.run_once(call(&scripts.put_once, args, kept)).await? {
                    Once::Replay(raw) => return replay(raw),
                    Once::Fresh(reply) => Outcome::Put(
                        put_outcome(ns, items, reply)?
                            .pop()
                            .ok_or_else(|| no_entry("write_once"))?,
                    ),
                }
            }
            Write::PutMany(items) => {
                let args = put_args(ns, &items, self.purge_due())?;
                // The record keeps the request, not the trailing purge flag.
                let kept = args.len() - 1;
                match self.run_once(call(&scripts.put_once, args, kept)).await? {
                    Once::Replay(raw) => return replay(raw),
                    Once::Fresh(reply) => Outcome::PutMany(put_outcome(ns, items, reply)?),
                }
            }
            Write::Delete { key, condition } => {
                let items = [BatchDelete { key, condition }];
                let args = delete_args(ns, &items)?;
                match self.run_once(call(&scripts.delete_once, args, 0)).await? {
                    Once::Replay(raw) => return replay(raw),
                    Once::Fresh(reply) => Outcome::Delete(delete_outcome(ns, &items, reply)? > 0),
                }
            }
            Write::DeleteMany(items) => {
                let args = delete_args(ns, &items)?;
                match self.run_once(call(&scripts.delete_once, args, 0)).await? {
                    Once::Replay(raw) => return replay(raw),
                    Once::Fresh(reply) => Outcome::DeleteMany(delete_outcome(ns, &items, reply)?),
                }
            }
            other => return Err(Error::unsupported_variant("write", &other)),
        };
        Ok(Applied::fresh(outcome))
    }

    /// [`kernel_core::StorageDriver::operation`]: one `GET` of the record; Redis has already
    /// dropped it when the window is over.
    pub(crate) async fn operation_impl(
        &self,
        ns: &str,
        id: &OperationId,
    ) -> Result<Option<Outcome>> {
        validate::namespace(ns).map_err(|e| e.with_context("operation_id", id))?;
        self.ensure_open("operation")?;
        let found: RedisValue = self
            .inner
            .pool
            .get(self.inner.keys.operation(ns, id.as_str()))
            .await
            .map_err(|e| with_id(map_err(e, "operation"), ns, id))?;
        let raw = match found {
            RedisValue::Null => return Ok(None),
            RedisValue::String(s) => s.as_bytes().to_vec(),
            RedisValue::Bytes(b) => b.to_vec(),
            other => {
                return Err(with_id(
                    crate::error::bad_reply(
                        "operation",
                        format!("GET of a record returned a {:?}", other.kind()),
                    ),
                    ns,
                    id,
                ));
            }
        };
        decode_record(ns, id, &raw)
            .map(|r| Some(r.outcome))
            .map_err(|e| with_id(e, ns, id))
    }
}

/// Names the namespace and the operation id on an error (keeping names already there).
pub(crate) fn with_id(e: Error, ns: &str, id: &OperationId) -> Error {
    e.with_context("namespace", ns)
        .with_context("operation_id", id)
}

fn no_entry(operation: &'static str) -> Error {
    crate::error::bad_reply(operation, "no entry in the reply")
}

/// Decodes a record `once.lua` wrote into the fingerprint and outcome it holds.
pub(crate) fn decode_record(ns: &str, id: &OperationId, raw: &[u8]) -> Result<Record> {
    let corrupted = |what: String| {
        Error::corrupted(format!("stored operation record cannot be decoded: {what}"))
            .with_context("backend", "redis")
            .with_context("namespace", ns)
            .with_context("operation_id", id)
    };
    let fields = split_fields(raw).ok_or_else(|| corrupted("bad field framing".to_owned()))?;
    let mut fields = fields.into_iter();
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| corrupted(format!("no {what} field")))
    };
    let format = next("format")?;
    if format != RECORD_FORMAT {
        return Err(corrupted(format!(
            "unknown record format {:?}",
            escape(&format)
        )));
    }
    let fingerprint = next("fingerprint")?;
    let kind = next("kind")?;
    let kept: usize = next("argument count")?
        .parse()
        .map_err(|_| corrupted("bad argument count".to_owned()))?;
    let args = (0..kept)
        .map(|_| next("argument"))
        .collect::<Result<Vec<_>>>()?;
    let reply: Vec<RedisValue> = fields.map(RedisValue::from).collect();
    if reply.first().and_then(RedisValue::as_str).as_deref() != Some("ok") {
        return Err(corrupted("the recorded reply is not a success".to_owned()));
    }
    let reply = Reply::new(RedisValue::Array(reply), "operation");
    // A stored reply that does not decode is damaged data, whatever the decoder calls it.
    let damaged = |e: Error| {
        if e.code() == ErrorCode::Corrupted {
            e
        } else {
            corrupted(e.to_string())
        }
    };
    let outcome = match kind.as_str() {
        "put" | "put_many" => {
            let items =
                put_items(&args).ok_or_else(|| corrupted("bad put arguments".to_owned()))?;
            let mut entries = put_outcome(ns, items, reply).map_err(damaged)?;
            if kind == "put" {
                if entries.len() != 1 {
                    return Err(corrupted(format!("a put with {} entries", entries.len())));
                }
                Outcome::Put(entries.remove(0))
            } else {
                Outcome::PutMany(entries)
            }
        }
        "delete" => Outcome::Delete(delete_outcome(ns, &[], reply).map_err(damaged)? > 0),
        "delete_many" => Outcome::DeleteMany(delete_outcome(ns, &[], reply).map_err(damaged)?),
        "commit" => Outcome::Commit,
        other => {
            return Err(corrupted(format!(
                "unknown outcome kind {:?}",
                escape(other)
            )));
        }
    };
    Ok(Record {
        fingerprint,
        outcome,
    })
}

/// Splits `LEN:BYTES` fields (UTF-8 text each); `None` if the framing is broken.
fn split_fields(raw: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let colon = rest.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let body = rest.get(colon + 1..colon + 1 + len)?;
        out.push(String::from_utf8(body.to_vec()).ok()?);
        rest = &rest[colon + 1 + len..];
    }
    Some(out)
}

/// The put items (key, value, metadata: what the outcome is built from) in `put.lua`'s
/// arguments, as `put_args` wrote them.
fn put_items(args: &[String]) -> Option<Vec<BatchPut>> {
    let (n, items) = args.split_first()?;
    let n: usize = n.parse().ok()?;
    if items.len() != n.checked_mul(PUT_ARGS_PER_ITEM)? {
        return None;
    }
    items
        .chunks_exact(PUT_ARGS_PER_ITEM)
        .map(|a| {
            // key, condition, version, ttl, has_meta, metadata, value
            let value: Value = serde_json::from_str(&a[6]).ok()?;
            let mut options = PutOptions::new();
            if a[4] == "1" {
                let metadata: Metadata = serde_json::from_str(&a[5]).ok()?;
                options = options.metadata(metadata);
            }
            Some(BatchPut::new(a[0].clone(), value).with_options(options))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(s: &str) -> String {
        format!("{}:{s}", s.len())
    }

    fn record(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .map(|p| field(p))
            .collect::<String>()
            .into_bytes()
    }

    fn id() -> OperationId {
        OperationId::new("op-1").unwrap()
    }

    #[test]
    fn a_put_record_decodes_exactly() {
        let value = r#"{"big":18446744073709551615,"f":0.1,"neg":-9223372036854775808}"#;
        let raw = record(&[
            "v1",
            "fp",
            "put",
            "8",
            "1",
            "k:é",
            "a",
            "",
            "",
            "0",
            "",
            value,
            "ok",
            "1700000000123456",
            "3",
            "1600000000000001",
            "",
            r#"{"m":12345678901234567}"#,
        ]);
        let rec = decode_record("ns", &id(), &raw).unwrap();
        assert_eq!(rec.fingerprint, "fp");
        let Outcome::Put(e) = rec.outcome else {
            panic!("{:?}", rec.outcome)
        };
        assert_eq!(e.key, "k:é");
        assert_eq!(e.value, serde_json::from_str::<Value>(value).unwrap());
        assert_eq!(e.version, 3);
        assert_eq!(e.metadata["m"], serde_json::json!(12345678901234567u64));
        assert_eq!(
            e.updated_at,
            crate::codec::from_micros(1_700_000_000_123_456)
        );
        assert_eq!(e.expires_at, None);
    }

    #[test]
    fn delete_and_commit_records_decode() {
        let raw = record(&["v1", "fp", "delete_many", "0", "ok", "2", "1", "1"]);
        assert_eq!(
            decode_record("ns", &id(), &raw).unwrap().outcome,
            Outcome::DeleteMany(2)
        );
        let raw = record(&["v1", "fp", "delete", "0", "ok", "0", "0"]);
        assert_eq!(
            decode_record("ns", &id(), &raw).unwrap().outcome,
            Outcome::Delete(false)
        );
        let raw = record(&["v1", "", "commit", "0", "ok", "1700000000000000"]);
        let rec = decode_record("ns", &id(), &raw).unwrap();
        assert_eq!(
            (rec.fingerprint.as_str(), rec.outcome),
            ("", Outcome::Commit)
        );
    }

    #[test]
    fn damaged_records_are_corrupted_naming_the_id() {
        for raw in [
            b"".to_vec(),
            b"5:v1".to_vec(),
            record(&["v9", "fp", "commit", "0", "ok"]),
            record(&["v1", "fp", "frobnicate", "0", "ok"]),
            record(&["v1", "fp", "put", "1", "1", "ok", "1"]),
            record(&["v1", "fp", "delete", "0", "conflict", "1", ""]),
            record(&["v1", "fp", "delete", "0", "ok", "x"]),
        ] {
            let e = decode_record("ns", &id(), &raw).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Corrupted, "{raw:?}: {e}");
            assert_eq!(e.context_value("operation_id"), Some("op-1"), "{e}");
            assert_eq!(e.context_value("namespace"), Some("ns"), "{e}");
        }
    }
}
