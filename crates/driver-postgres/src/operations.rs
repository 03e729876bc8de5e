//! Operation ids: [`StorageDriver::write_once`](kernel_core::StorageDriver::write_once),
//! [`StorageDriver::operation`](kernel_core::StorageDriver::operation) and
//! [`Transaction::commit_once`](kernel_core::Transaction::commit_once) on `kernel_operations`.
//!
//! Each call runs one SQL transaction on one pooled connection:
//!
//! 1. [`CLAIM`] inserts a placeholder row for `(namespace, id)`, or finds the row already there.
//!    The primary key makes a concurrent claim of the same id wait for the first transaction to
//!    end: then it sees the committed record (and replays it), or, if the first rolled back,
//!    inserts its own. An expired record is taken over as if absent.
//! 2. A live record is replayed ([`Record::replay`]) and the transaction rolled back: nothing
//!    is written.
//! 3. Otherwise the write runs with the plain method's SQL (the put statements, `kernel_delete`,
//!    `kernel_tx_commit`), [`RECORD`] stores its outcome in the placeholder, and the transaction
//!    commits: write and record are one atomic unit. A failed write rolls the placeholder back
//!    with it, so a failure records nothing.
//!
//! Expired rows are deleted by [`PURGE`], at most [`PURGE_BATCH`] of them after every
//! [`PURGE_EVERY`]th recorded operation of a driver: more than one row per write, so the expired
//! backlog never grows, at a bounded cost per call (an index range scan and a TID delete).

use std::sync::atomic::Ordering;

use deadpool_postgres::Transaction;
use kernel_core::operation::Record;
use kernel_core::validate;
use kernel_core::{Applied, Entry, Error, OperationId, Outcome, Result, Value, Write};

use crate::PostgresDriver;
use crate::error::{BACKEND, pg, pg_write};
use crate::jsonb::Jsonb;
use crate::rows::micros;
use crate::statement::Statements;
use crate::storage::{DELETE, DeleteArrays, PutArrays, write_error_with};
use crate::transaction::{COMMIT, CommitArrays, commit_error};

/// Claims `($1 namespace, $2 id)` for this transaction with fingerprint `$3` and a window of
/// `$4` microseconds, or finds the record there. Returns the row's fingerprint and outcome: a
/// NULL outcome means this transaction holds a fresh (or taken-over expired) placeholder; a
/// non-NULL one is a live record committed earlier (a committed row always has an outcome).
///
/// A live row is "updated" to itself only so `RETURNING` hands back its values in the same
/// round trip; the caller rolls back, so that update is never written. `now()` (the
/// transaction's start) is the one clock of the statement, so all three `CASE`s agree.
const CLAIM: &str = "INSERT INTO kernel_operations AS o \
     (namespace, operation_id, fingerprint, outcome, expires_at) \
     VALUES ($1, $2, $3, NULL, now() + $4::bigint * interval '1 microsecond') \
     ON CONFLICT (namespace, operation_id) DO UPDATE SET \
     fingerprint = CASE WHEN o.expires_at <= now() THEN EXCLUDED.fingerprint \
                   ELSE o.fingerprint END, \
     outcome = CASE WHEN o.expires_at <= now() THEN NULL ELSE o.outcome END, \
     expires_at = CASE WHEN o.expires_at <= now() THEN EXCLUDED.expires_at \
                  ELSE o.expires_at END \
     RETURNING o.fingerprint, o.outcome";

/// Stores the outcome `$3` in the placeholder of `($1, $2)` claimed by this transaction.
const RECORD: &str = "UPDATE kernel_operations o SET outcome = $3 \
     WHERE o.namespace = $1 AND o.operation_id = $2";

/// The live record of `($1, $2)`.
const LOOKUP: &str = "SELECT o.outcome FROM kernel_operations o \
     WHERE o.namespace = $1 AND o.operation_id = $2 AND o.expires_at > now() \
     AND o.outcome IS NOT NULL";

/// Deletes rows expired before this purge, oldest first, at most `$1` ([`PURGE_BATCH`]). Rows
/// a concurrent claim is taking over are skipped, not waited for.
const PURGE: &str = "DELETE FROM kernel_operations o WHERE o.ctid = ANY (ARRAY( \
     SELECT p.ctid FROM kernel_operations p WHERE p.expires_at <= now() \
     ORDER BY p.expires_at LIMIT $1::bigint FOR UPDATE SKIP LOCKED))";

/// Most rows one [`PURGE`] deletes.
pub(crate) const PURGE_BATCH: i64 = 100;

/// A driver purges after every this many recorded operations.
pub(crate) const PURGE_EVERY: u64 = 64;

/// A validated write, ready for its SQL.
enum Prepared {
    Put(PutArrays),
    PutMany(PutArrays),
    Delete(DeleteArrays),
    DeleteMany(DeleteArrays),
}

impl Prepared {
    /// Validates `write` exactly as the plain method does, before any I/O.
    fn of(driver: &PostgresDriver, namespace: &str, write: Write) -> Result<Prepared> {
        match write {
            Write::Put {
                key,
                value,
                options,
            } => PutArrays::one(driver, namespace, &key, value, options).map(Prepared::Put),
            Write::Delete { key, condition } => {
                DeleteArrays::one(namespace, &key, condition).map(Prepared::Delete)
            }
            Write::PutMany(items) => {
                PutArrays::many(driver, namespace, items).map(Prepared::PutMany)
            }
            Write::DeleteMany(items) => {
                DeleteArrays::many(namespace, items).map(Prepared::DeleteMany)
            }
            other => {
                Err(Error::unsupported_variant("write", &other.name())
                    .with_context("backend", BACKEND))
            }
        }
    }

    /// Runs the write in `tx` and returns what the plain method would.
    async fn apply(self, st: Statements, tx: &Transaction<'_>, namespace: &str) -> Result<Outcome> {
        match self {
            Prepared::Put(arrays) => {
                let mut entries = put(st, tx, namespace, arrays).await?;
                entries.pop().map(Outcome::Put).ok_or_else(|| {
                    Error::internal("kernel_put returned no row")
                        .with_context("namespace", namespace)
                })
            }
            Prepared::PutMany(arrays) if arrays.is_empty() => Ok(Outcome::PutMany(Vec::new())),
            Prepared::PutMany(arrays) => put(st, tx, namespace, arrays).await.map(Outcome::PutMany),
            Prepared::Delete(arrays) => Ok(Outcome::Delete(
                delete(st, tx, namespace, arrays).await? > 0,
            )),
            Prepared::DeleteMany(arrays) if arrays.is_empty() => Ok(Outcome::DeleteMany(0)),
            Prepared::DeleteMany(arrays) => delete(st, tx, namespace, arrays)
                .await
                .map(Outcome::DeleteMany),
        }
    }
}

async fn put(
    st: Statements,
    tx: &Transaction<'_>,
    namespace: &str,
    arrays: PutArrays,
) -> Result<Vec<Entry>> {
    // Not committed yet: a broken connection rolls it back, so nothing was applied.
    arrays.write(st, tx.into(), namespace, pg).await
}

async fn delete(
    st: Statements,
    tx: &Transaction<'_>,
    namespace: &str,
    arrays: DeleteArrays,
) -> Result<u64> {
    let row = st
        .query_one(tx, DELETE, &arrays.params(&namespace))
        .await
        .map_err(|e| write_error_with(e, namespace, pg))?;
    DeleteArrays::count(&row)
}

/// Claims `id` in `namespace` for `tx`: `None` when this transaction now holds the placeholder
/// and must apply the write, or the live record to replay.
async fn claim(
    st: Statements,
    tx: &Transaction<'_>,
    namespace: &str,
    id: &OperationId,
    fingerprint: &str,
    window_us: i64,
) -> Result<Option<Record>> {
    let row = st
        .query_one(
            tx,
            CLAIM,
            &[&namespace, &id.as_str(), &fingerprint, &window_us],
        )
        .await
        .map_err(pg)?;
    let outcome: Option<Value> = row.try_get(1).map_err(pg)?;
    match outcome {
        None => Ok(None),
        Some(outcome) => Ok(Some(Record {
            fingerprint: row.try_get(0).map_err(pg)?,
            outcome: Outcome::from_json(&outcome)
                .map_err(|e| e.with_context("backend", BACKEND))?,
        })),
    }
}

/// Stores `outcome` in the placeholder `tx` claimed.
async fn record(
    st: Statements,
    tx: &Transaction<'_>,
    namespace: &str,
    id: &OperationId,
    outcome: &Outcome,
) -> Result<()> {
    let n = st
        .execute(
            tx,
            RECORD,
            &[&namespace, &id.as_str(), &Jsonb(outcome.to_json())],
        )
        .await
        .map_err(pg)?;
    if n != 1 {
        return Err(Error::internal(format!(
            "the operation record claimed in this transaction was not found to store its \
             outcome ({n} rows)"
        )));
    }
    Ok(())
}

impl PostgresDriver {
    fn window_us(&self) -> i64 {
        micros(self.inner.config.operation_window)
    }

    /// [`kernel_core::StorageDriver::write_once`]; see the module docs.
    pub(crate) async fn apply_once(
        &self,
        namespace: &str,
        id: &OperationId,
        write: Write,
    ) -> Result<Applied> {
        let context = |e: Error| {
            e.with_context("namespace", namespace)
                .with_context("operation_id", id)
                .with_operation("write_once")
        };
        let fingerprint = write.fingerprint(namespace);
        let prepared = Prepared::of(self, namespace, write).map_err(context)?;
        let mut client = self.client().await.map_err(context)?;
        let tx = client.transaction().await.map_err(|e| context(pg(e)))?;
        if let Some(found) = claim(
            self.statements(),
            &tx,
            namespace,
            id,
            &fingerprint,
            self.window_us(),
        )
        .await
        .map_err(context)?
        {
            // Dropping the transaction rolls it back (sent without waiting for the answer).
            drop(tx);
            return found.replay(namespace, id, &fingerprint);
        }
        let outcome = prepared
            .apply(self.statements(), &tx, namespace)
            .await
            .map_err(context)?;
        record(self.statements(), &tx, namespace, id, &outcome)
            .await
            .map_err(context)?;
        tx.commit().await.map_err(|e| context(pg_write(e)))?;
        self.purge_now_and_then(&client).await;
        Ok(Applied::fresh(outcome))
    }

    /// [`kernel_core::Transaction::commit_once`]: `staged` is `None` for a transaction that
    /// touched nothing (its commit still records the id).
    pub(crate) async fn commit_once(
        &self,
        namespace: &str,
        id: &OperationId,
        staged: Option<CommitArrays>,
    ) -> Result<Applied> {
        let context = |e: Error| {
            e.with_context("namespace", namespace)
                .with_context("operation_id", id)
                .with_operation("commit_once")
        };
        validate::namespace(namespace).map_err(context)?;
        let mut client = self.client().await.map_err(context)?;
        let tx = client.transaction().await.map_err(|e| context(pg(e)))?;
        // A transaction has no fingerprint: the empty one. An id recorded by a `write_once`
        // (which has one) is therefore a Conflict, not a replay of something else.
        if let Some(found) = claim(self.statements(), &tx, namespace, id, "", self.window_us())
            .await
            .map_err(context)?
        {
            drop(tx);
            return found.replay(namespace, id, "");
        }
        if let Some(arrays) = staged {
            self.statements()
                .execute(&tx, COMMIT, &arrays.params())
                .await
                .map_err(|e| context(commit_error(e, pg)))?;
        }
        record(self.statements(), &tx, namespace, id, &Outcome::Commit)
            .await
            .map_err(context)?;
        tx.commit().await.map_err(|e| context(pg_write(e)))?;
        self.purge_now_and_then(&client).await;
        Ok(Applied::fresh(Outcome::Commit))
    }

    /// [`kernel_core::StorageDriver::operation`].
    pub(crate) async fn recorded_operation(
        &self,
        namespace: &str,
        id: &OperationId,
    ) -> Result<Option<Outcome>> {
        let context = |e: Error| {
            e.with_context("namespace", namespace)
                .with_context("operation_id", id)
                .with_operation("operation")
        };
        validate::namespace(namespace).map_err(context)?;
        let client = self.client().await.map_err(context)?;
        let row = self
            .statements()
            .query_opt(&client, LOOKUP, &[&namespace, &id.as_str()])
            .await
            .map_err(|e| context(pg(e)))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let outcome: Value = row.try_get(0).map_err(|e| context(pg(e)))?;
                Outcome::from_json(&outcome)
                    .map(Some)
                    .map_err(|e| context(e.with_context("backend", BACKEND)))
            }
        }
    }

    /// Runs [`PURGE`] after every [`PURGE_EVERY`]th recorded operation. Its failure is logged,
    /// not returned: the write it follows is committed, and the next purge tries again.
    async fn purge_now_and_then(&self, client: &deadpool_postgres::Object) {
        let n = self.inner.operations.fetch_add(1, Ordering::Relaxed);
        if n % PURGE_EVERY != 0 {
            return;
        }
        match purge(self.statements(), client).await {
            Ok(gone) => {
                tracing::debug!(gone, "purged expired operation ids");
            }
            Err(e) => tracing::warn!(error = %e, "purging expired operation ids failed"),
        }
    }

    /// Deletes up to 100 expired operation records now; returns how many went.
    /// The driver does this by itself as it records operations; this is for maintenance jobs
    /// that want the table trimmed on their own schedule.
    pub async fn purge_operations(&self) -> Result<u64> {
        let client = self.client().await?;
        purge(self.statements(), &client).await
    }
}

async fn purge(st: Statements, client: &deadpool_postgres::Object) -> Result<u64> {
    st.execute(client, PURGE, &[&PURGE_BATCH])
        .await
        .map_err(|e| pg_write(e).with_operation("purge_operations"))
}
