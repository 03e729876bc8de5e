//! Serializable transactions by optimistic concurrency: reads record the stamp of what they
//! saw, writes are staged, and commit re-checks every recorded stamp under the write lock before
//! applying the staged writes. Any change in between fails the commit with a retryable
//! `Conflict`, which makes every committed transaction equivalent to running alone at its commit.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use kernel_core::operation::{Applied, OperationId, Outcome, Record};
use kernel_core::validate::escape;
use kernel_core::{DeleteCondition, Entry, Error, PutOptions, Result, Transaction, Value};

use crate::MemoryDriver;
use crate::documents::{DocState, Planned, check_delete_condition};

type Slot = (String, String);

pub(crate) struct MemoryTransaction {
    driver: MemoryDriver,
    /// Stamp of the live entry seen at each slot (`None`: absent or expired).
    reads: BTreeMap<Slot, Option<u64>>,
    /// Staged state of each written slot (`None`: deleted).
    writes: BTreeMap<Slot, Option<Entry>>,
}

impl MemoryTransaction {
    pub(crate) fn new(driver: MemoryDriver) -> MemoryTransaction {
        MemoryTransaction {
            driver,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// The slot as this transaction sees it, recording the read.
    fn view(&mut self, ns: &str, key: &str) -> Result<Option<Entry>> {
        let slot = (ns.to_owned(), key.to_owned());
        if let Some(staged) = self.writes.get(&slot) {
            return Ok(staged.clone());
        }
        let now = SystemTime::now();
        let docs = self.driver.docs_read()?;
        let seen = docs.live(ns, key, now);
        let stamp = seen.map(|s| s.stamp);
        let entry = seen.map(|s| s.entry.clone());
        drop(docs);
        self.reads.entry(slot).or_insert(stamp);
        Ok(entry)
    }
}

#[async_trait]
impl Transaction for MemoryTransaction {
    async fn get(&mut self, ns: &str, key: &str) -> Result<Option<Entry>> {
        kernel_core::validate::namespace(ns)?;
        kernel_core::validate::key(key).map_err(|e| e.with_context("namespace", ns))?;
        self.view(ns, key)
    }

    async fn put(
        &mut self,
        ns: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        kernel_core::validate::put(ns, key, &value, &options, self.driver.value_limits())?;
        let current = self.view(ns, key)?;
        let entry =
            DocState::plan_put(current.as_ref(), ns, key, value, options, SystemTime::now())?;
        self.writes
            .insert((ns.to_owned(), key.to_owned()), Some(entry.clone()));
        Ok(entry)
    }

    async fn delete(&mut self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        kernel_core::validate::namespace(ns)?;
        kernel_core::validate::key(key).map_err(|e| e.with_context("namespace", ns))?;
        let current = self.view(ns, key)?;
        check_delete_condition(current.as_ref(), ns, key, condition)?;
        self.writes.insert((ns.to_owned(), key.to_owned()), None);
        Ok(current.is_some())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let now = SystemTime::now();
        let driver = self.driver.clone();
        let mut docs = driver.docs_write()?;
        self.apply(&mut docs, now)
    }

    async fn commit_once(self: Box<Self>, ns: &str, id: &OperationId) -> Result<Applied> {
        kernel_core::validate::namespace(ns)?;
        let now = SystemTime::now();
        let driver = self.driver.clone();
        let mut docs = driver.docs_write()?;
        // Checked under the lock the commit holds, so two transactions with one id commit once.
        if let Some(record) = docs.operation(ns, id, now) {
            return record.clone().replay(ns, id, "");
        }
        self.apply(&mut docs, now)?;
        let record = Record {
            fingerprint: String::new(),
            outcome: Outcome::Commit,
        };
        docs.record_operation(ns, id, record, now);
        Ok(Applied::fresh(Outcome::Commit))
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl MemoryTransaction {
    /// Validates the reads and applies the staged writes, under the caller's write lock.
    fn apply(self, docs: &mut DocState, now: SystemTime) -> Result<()> {
        for ((ns, key), seen) in &self.reads {
            let stamp = docs.live(ns, key, now).map(|s| s.stamp);
            if stamp != *seen {
                return Err(Error::conflict(
                    "transaction lost a race: an entry it read changed before commit",
                )
                .with_context("namespace", ns)
                .with_context("key", escape(key))
                .with_retryable(true));
            }
        }
        for ((ns, key), staged) in self.writes {
            let planned = match staged {
                Some(mut entry) => {
                    // Timestamps and TTL count from the commit, when the write becomes visible.
                    if let Some(exp) = entry.expires_at {
                        let ttl = exp.duration_since(entry.updated_at).unwrap_or_default();
                        entry.expires_at = Some(now + ttl);
                    }
                    if entry.version == 1 {
                        entry.created_at = now;
                    }
                    entry.updated_at = now;
                    Planned::Put(entry)
                }
                None => Planned::Delete,
            };
            docs.apply(&ns, &key, planned, now);
        }
        Ok(())
    }
}
