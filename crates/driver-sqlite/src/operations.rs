//! Operation ids: [`StorageDriver::write_once`](kernel_core::StorageDriver::write_once),
//! [`StorageDriver::operation`](kernel_core::StorageDriver::operation) and
//! [`Transaction::commit_once`](kernel_core::Transaction::commit_once).
//!
//! Records live in `kernel_operations`, keyed by `(namespace, operation_id)`. The lookup, the
//! write and the record are one writer job, so they share the writer's `BEGIN IMMEDIATE`
//! transaction (and the job's savepoint): SQLite's file-wide write lock serialises them against
//! every other writer, in this process or another, so two calls with one id cannot both miss
//! the record, and a write that fails rolls its record back with it.

use kernel_core::operation::Record;
use kernel_core::validate::{self, escape};
use kernel_core::{Applied, Error, OperationId, Outcome, Result, Value, Write};
use rusqlite::{Connection, OptionalExtension, params};

use crate::documents::{apply_delete, apply_delete_many, apply_put, apply_put_many};
use crate::error::{Db, corrupted};
use crate::writer::WriteCtx;
use crate::{SqliteDriver, unix_micros_now};

/// Expired records each `write_once` / `commit_once` deletes besides writing its own: more than
/// the one it adds, so the table shrinks back to the window's worth however writes are mixed,
/// while each call's extra cost stays a short index range scan.
const PURGE_PER_WRITE: i64 = 4;

/// The live (unexpired) record of `id` in `ns`.
pub(crate) fn load(
    conn: &Connection,
    ns: &str,
    id: &OperationId,
    now_us: i64,
) -> Result<Option<Record>> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT fingerprint, outcome FROM kernel_operations
             WHERE namespace = ?1 AND operation_id = ?2 AND expires_at > ?3",
        )
        .db()?
        .query_row(params![ns, id.as_str(), now_us], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .db()?;
    let Some((fingerprint, text)) = row else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| corrupted("operation outcome", e))?;
    let outcome = Outcome::from_json(&json).map_err(|e| e.with_context("backend", "sqlite"))?;
    Ok(Some(Record {
        fingerprint,
        outcome,
    }))
}

/// Records `id` in `ns` until `expires_us`. Replaces an expired record of the same id, which
/// [`load`] no longer sees (the caller looked first, in the same transaction).
pub(crate) fn store_record(
    conn: &Connection,
    ns: &str,
    id: &OperationId,
    fingerprint: &str,
    outcome: &Outcome,
    expires_us: i64,
) -> Result<()> {
    let text = serde_json::to_string(&outcome.to_json())
        .map_err(|e| Error::internal(format!("an operation outcome cannot be serialized: {e}")))?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO kernel_operations
             (namespace, operation_id, fingerprint, outcome, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .db()?
    .execute(params![ns, id.as_str(), fingerprint, text, expires_us])
    .db()?;
    Ok(())
}

/// Deletes up to `limit` expired records (all of them when `limit` is negative), oldest expiry
/// first through the expiry index; how many went.
pub(crate) fn purge(conn: &Connection, now_us: i64, limit: i64) -> Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM kernel_operations WHERE (namespace, operation_id) IN (
                 SELECT namespace, operation_id FROM kernel_operations
                 WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
        )
        .db()?
        .execute(params![now_us, limit])
        .db()?;
    Ok(n as u64)
}

/// Records `id` (after the write it names succeeded, in the same job) and purges a few expired
/// records.
pub(crate) fn finish(
    ctx: &mut WriteCtx<'_>,
    ns: &str,
    id: &OperationId,
    fingerprint: &str,
    outcome: &Outcome,
    window_us: i64,
) -> Result<()> {
    let now = unix_micros_now();
    store_record(
        ctx.conn,
        ns,
        id,
        fingerprint,
        outcome,
        now.saturating_add(window_us),
    )?;
    purge(ctx.conn, now, PURGE_PER_WRITE)?;
    Ok(())
}

/// Adds what every operation-id error names.
pub(crate) fn op_ctx(ns: &str, id: &OperationId) -> impl Fn(Error) -> Error {
    let ns = ns.to_owned();
    let id = id.as_str().to_owned();
    move |e| {
        e.with_context("namespace", &ns)
            .with_context("operation_id", &id)
    }
}

impl SqliteDriver {
    /// The operation window in microseconds (at least 1).
    pub(crate) fn window_micros(&self) -> i64 {
        let w = self.config().operation_window.as_micros();
        i64::try_from(w).unwrap_or(i64::MAX).max(1)
    }

    pub(crate) async fn write_once_impl(
        &self,
        ns: &str,
        id: &OperationId,
        write: Write,
    ) -> Result<Applied> {
        write
            .validate(ns, self.inner().limits())
            .map_err(op_ctx(ns, id))?;
        let fingerprint = write.fingerprint(ns);
        let window = self.window_micros();
        let key = write.key().map(escape);
        let op = match &write {
            Write::Put { .. } => "write_once.put",
            Write::Delete { .. } => "write_once.delete",
            Write::PutMany(_) => "write_once.put_many",
            _ => "write_once.delete_many",
        };
        let (n, i) = (ns.to_owned(), id.clone());
        self.inner()
            .write(op, move |ctx| {
                let now = unix_micros_now();
                if let Some(record) = load(ctx.conn, &n, &i, now)? {
                    return record.replay(&n, &i, &fingerprint);
                }
                let outcome = match write {
                    Write::Put {
                        key,
                        value,
                        options,
                    } => Outcome::Put(apply_put(ctx, &n, &key, value, options)?),
                    Write::Delete { key, condition } => {
                        Outcome::Delete(apply_delete(ctx, &n, &key, condition)?)
                    }
                    Write::PutMany(items) => Outcome::PutMany(apply_put_many(ctx, &n, items)?),
                    Write::DeleteMany(items) => {
                        Outcome::DeleteMany(apply_delete_many(ctx, &n, &items)?)
                    }
                    other => return Err(Error::unsupported_variant("write", &other)),
                };
                finish(ctx, &n, &i, &fingerprint, &outcome, window)?;
                Ok(Applied::fresh(outcome))
            })
            .await
            .map_err(|e| {
                let e = op_ctx(ns, id)(e);
                match &key {
                    Some(k) => e.with_context("key", k),
                    None => e,
                }
            })
    }

    pub(crate) async fn operation_impl(
        &self,
        ns: &str,
        id: &OperationId,
    ) -> Result<Option<Outcome>> {
        validate::namespace(ns).map_err(op_ctx(ns, id))?;
        let (n, i) = (ns.to_owned(), id.clone());
        self.inner()
            .read("operation", move |conn| {
                Ok(load(conn, &n, &i, unix_micros_now())?.map(|r| r.outcome))
            })
            .await
            .map_err(op_ctx(ns, id))
    }
}
