//! Serializable transactions by optimistic concurrency, as in the memory driver: reads (on the
//! read connections) record the write stamp of the row they saw, writes are staged in memory,
//! and `commit` is one writer job that re-checks every recorded stamp under SQLite's write lock
//! and applies every staged write, or fails with a retryable `Conflict` and applies nothing.
//!
//! Stamps come from a counter in `kernel_meta` that only the writer (of any process) advances,
//! inside its transaction, so a write by another process to a key the transaction read is seen
//! too. Nothing is held open between `begin` and `commit`: an abandoned transaction costs
//! nothing.
//!
//! `commit_once` is the same job with the operation-id lookup in front and the record behind, so
//! a repeat of a committed id writes nothing and a lost race records nothing.

use std::collections::BTreeMap;

use async_trait::async_trait;
use kernel_core::validate::{self, escape};
use kernel_core::{
    Applied, DeleteCondition, Entry, Error, OperationId, Outcome, PutOptions, Result, Transaction,
    Value,
};

use crate::documents::{load_live, plan_put, remove, store};
use crate::operations::{self, op_ctx};
use crate::writer::WriteCtx;
use crate::{SqliteDriver, from_micros, to_micros, unix_micros_now};

type Slot = (String, String);

pub(crate) struct SqliteTransaction {
    driver: SqliteDriver,
    /// Stamp of the live row seen at each slot (`None`: absent or expired).
    reads: BTreeMap<Slot, Option<i64>>,
    /// Staged state of each written slot (`None`: deleted).
    writes: BTreeMap<Slot, Option<Entry>>,
}

impl SqliteTransaction {
    pub(crate) fn new(driver: SqliteDriver) -> SqliteTransaction {
        SqliteTransaction {
            driver,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// The slot as this transaction sees it, recording the read.
    async fn view(&mut self, op: &'static str, ns: &str, key: &str) -> Result<Option<Entry>> {
        let slot = (ns.to_owned(), key.to_owned());
        if let Some(staged) = self.writes.get(&slot) {
            return Ok(staged.clone());
        }
        let (n, k) = slot.clone();
        let seen = self
            .driver
            .inner()
            .read(op, move |conn| load_live(conn, &n, &k, unix_micros_now()))
            .await
            .map_err(|e| {
                e.with_context("namespace", ns)
                    .with_context("key", escape(key))
            })?;
        let stamp = seen.as_ref().map(|(_, s)| *s);
        self.reads.entry(slot).or_insert(stamp);
        Ok(seen.map(|(e, _)| e))
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn get(&mut self, ns: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(ns, key)?;
        self.view("tx.get", ns, key).await
    }

    async fn put(
        &mut self,
        ns: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        validate::put(ns, key, &value, &options, self.driver.inner().limits())?;
        let current = self.view("tx.put", ns, key).await?;
        let entry = plan_put(current.as_ref(), ns, key, value, options, unix_micros_now())?;
        self.writes
            .insert((ns.to_owned(), key.to_owned()), Some(entry.clone()));
        Ok(entry)
    }

    async fn delete(&mut self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        validate::document(ns, key)?;
        let current = self.view("tx.delete", ns, key).await?;
        condition.check(ns, key, current.as_ref().map(|e| e.version))?;
        self.writes.insert((ns.to_owned(), key.to_owned()), None);
        Ok(current.is_some())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let SqliteTransaction {
            driver,
            reads,
            writes,
        } = *self;
        if writes.is_empty() && reads.is_empty() {
            return Ok(());
        }
        driver
            .inner()
            .write("tx.commit", move |ctx| apply(ctx, &reads, writes))
            .await
    }

    async fn commit_once(self: Box<Self>, ns: &str, id: &OperationId) -> Result<Applied> {
        validate::namespace(ns).map_err(op_ctx(ns, id))?;
        let SqliteTransaction {
            driver,
            reads,
            writes,
        } = *self;
        let window = driver.window_micros();
        let (n, i) = (ns.to_owned(), id.clone());
        // Even an empty transaction goes to the writer: its id is recorded all the same.
        driver
            .inner()
            .write("tx.commit_once", move |ctx| {
                if let Some(record) = operations::load(ctx.conn, &n, &i, unix_micros_now())? {
                    // A transaction has no fingerprint (""): an id recorded by a transaction is
                    // replayed, one recorded by a `write_once` is a Conflict (another request).
                    return record.replay(&n, &i, "");
                }
                apply(ctx, &reads, writes)?;
                operations::finish(ctx, &n, &i, "", &Outcome::Commit, window)?;
                Ok(Applied::fresh(Outcome::Commit))
            })
            .await
            .map_err(op_ctx(ns, id))
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The commit, as a writer job: re-checks every read stamp under the write lock, then applies
/// every staged write; a lost race is a retryable `Conflict` and nothing is applied.
fn apply(
    ctx: &mut WriteCtx<'_>,
    reads: &BTreeMap<Slot, Option<i64>>,
    writes: BTreeMap<Slot, Option<Entry>>,
) -> Result<()> {
    let now = unix_micros_now();
    for ((ns, key), seen) in reads {
        let stamp = load_live(ctx.conn, ns, key, now)?.map(|(_, s)| s);
        if stamp != *seen {
            return Err(Error::conflict(
                "transaction lost a race: an entry it read changed before commit",
            )
            .with_context("namespace", ns)
            .with_context("key", escape(key))
            .with_retryable(true));
        }
    }
    for ((ns, key), staged) in writes {
        match staged {
            Some(mut entry) => {
                // Timestamps and TTL count from the commit, when the write becomes visible.
                if let Some(exp) = entry.expires_at {
                    let ttl = to_micros(exp) - to_micros(entry.updated_at);
                    entry.expires_at = Some(from_micros(now.saturating_add(ttl)));
                }
                if entry.version == 1 {
                    entry.created_at = from_micros(now);
                }
                entry.updated_at = from_micros(now);
                store(ctx, &entry, now)?;
            }
            None => remove(ctx.conn, &ns, &key)?,
        }
    }
    Ok(())
}
