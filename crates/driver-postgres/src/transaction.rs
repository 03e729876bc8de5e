//! Optimistic document transactions.
//!
//! A transaction holds no connection and no lock while it runs: reads go to the pool and are
//! remembered with the version seen, writes are staged in memory. `commit` sends everything in
//! one call of `kernel_tx_commit`, which locks every touched key (advisory locks in hash order,
//! then the rows), checks that each still has the version the transaction saw, and applies the
//! writes — or raises and writes nothing. Because the trait only reads and writes single keys,
//! validating every touched key at commit makes the outcome serializable; a lost race is a
//! retryable `Conflict`. Holding no connection means a forgotten or slow transaction cannot
//! block other writers or exhaust the pool, and dropping it is the rollback.
//!
//! `commit_once` sends the same call inside the transaction that claims and records the
//! operation id (`crate::operations`), so the commit and its record are one atomic unit.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use kernel_core::document::{already_exists, version_conflict};
use kernel_core::validate;
use kernel_core::{
    Applied, DeleteCondition, Entry, Error, Metadata, OperationId, PutCondition, PutOptions,
    Result, StorageDriver, Transaction, Value,
};
use tokio_postgres::types::ToSql;

use crate::PostgresDriver;
use crate::codes::{KernelSqlState, TxOp};
use crate::error::{BACKEND, kernel_state, pg_write};
use crate::jsonb::Jsonb;
use crate::rows::{micros, to_i64};
use crate::storage::validate_put;

enum Staged {
    Read,
    Put { ttl_us: Option<i64> },
    Delete,
}

struct Touched {
    /// Live version when first read (`None`: absent).
    seen: Option<u64>,
    /// What the transaction sees now.
    view: Option<Entry>,
    staged: Staged,
}

/// A transaction of [`PostgresDriver`]; see the module docs.
pub(crate) struct PgTransaction {
    driver: PostgresDriver,
    touched: BTreeMap<(String, String), Touched>,
}

/// One call of `kernel_tx_commit`.
pub(crate) const COMMIT: &str = "SELECT kernel_tx_commit($1, $2, $3, $4, $5, $6, $7, $8)";

/// The parallel arrays of one call of [`COMMIT`]: every key the transaction touched.
pub(crate) struct CommitArrays {
    ns: Vec<String>,
    keys: Vec<String>,
    seen: Vec<Option<i64>>,
    ops: Vec<i16>,
    values: Vec<Option<Jsonb<Value>>>,
    metadata: Vec<Option<Jsonb<Value>>>,
    versions: Vec<Option<i64>>,
    ttls: Vec<Option<i64>>,
}

impl CommitArrays {
    /// The parameters of [`COMMIT`].
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.ns,
            &self.keys,
            &self.seen,
            &self.ops,
            &self.values,
            &self.metadata,
            &self.versions,
            &self.ttls,
        ]
    }
}

/// Maps a failed [`COMMIT`]: a lost race (`KR003`) is a retryable `Conflict` naming the key;
/// anything else goes through `other` (`pg_write` when the call commits by itself, `pg` inside
/// a transaction not yet committed).
pub(crate) fn commit_error(
    e: tokio_postgres::Error,
    other: fn(tokio_postgres::Error) -> Error,
) -> Error {
    match kernel_state(&e) {
        Some(s) if s.state == KernelSqlState::TransactionConflict => {
            let (namespace, key) = s.detail.split_once('/').unwrap_or(("", &s.detail));
            Error::conflict(
                "transaction lost a race: a key it used was changed by another writer \
                 before commit; nothing was written",
            )
            .with_context("namespace", namespace)
            .with_context("key", validate::escape(key))
            .with_context("backend", BACKEND)
            .with_retryable(true)
        }
        _ => other(e).with_operation("commit"),
    }
}

impl PgTransaction {
    /// The arrays [`COMMIT`] takes, from the staged writes.
    fn into_arrays(self) -> CommitArrays {
        let n = self.touched.len();
        let mut a = CommitArrays {
            ns: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            seen: Vec::with_capacity(n),
            ops: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            ttls: Vec::with_capacity(n),
        };
        for ((namespace, key), t) in self.touched {
            let (op, ttl) = match (&t.staged, &t.view) {
                (Staged::Read, _) => (TxOp::Read, None),
                (Staged::Put { ttl_us }, Some(_)) => (TxOp::Put, *ttl_us),
                (Staged::Delete, _) | (Staged::Put { .. }, None) => (TxOp::Delete, None),
            };
            a.ns.push(namespace);
            a.keys.push(key);
            a.seen.push(t.seen.map(to_i64));
            a.ops.push(op.code());
            match (op, t.view) {
                (TxOp::Put, Some(e)) => {
                    a.values.push(Some(Jsonb(e.value)));
                    a.metadata.push(Some(Jsonb(Value::Object(e.metadata))));
                    a.versions.push(Some(to_i64(e.version)));
                }
                _ => {
                    a.values.push(None);
                    a.metadata.push(None);
                    a.versions.push(None);
                }
            }
            a.ttls.push(ttl);
        }
        a
    }

    pub(crate) fn new(driver: PostgresDriver) -> PgTransaction {
        PgTransaction {
            driver,
            touched: BTreeMap::new(),
        }
    }

    /// The transaction's record of a key, reading it on first touch.
    async fn touch(&mut self, namespace: &str, key: &str) -> Result<&mut Touched> {
        let id = (namespace.to_owned(), key.to_owned());
        if !self.touched.contains_key(&id) {
            let current = self.driver.get(namespace, key).await?;
            self.touched.insert(
                id.clone(),
                Touched {
                    seen: current.as_ref().map(|e| e.version),
                    view: current,
                    staged: Staged::Read,
                },
            );
        }
        self.touched
            .get_mut(&id)
            .ok_or_else(|| Error::internal("transaction lost a key it just read"))
    }
}

#[async_trait]
impl Transaction for PgTransaction {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(namespace, key)?;
        Ok(self.touch(namespace, key).await?.view.clone())
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        validate_put(&self.driver, namespace, key, &value, &options)?;
        let t = self.touch(namespace, key).await?;
        let current = t.view.as_ref().map(|e| e.version);
        match options.condition {
            PutCondition::Always => {}
            PutCondition::IfAbsent => {
                if current.is_some() {
                    return Err(already_exists(namespace, key));
                }
            }
            PutCondition::IfVersion(v) => {
                if current != Some(v) {
                    return Err(version_conflict(namespace, key, v, current));
                }
            }
            other => {
                return Err(Error::unsupported_variant("put condition", &other)
                    .with_context("backend", BACKEND));
            }
        }
        let now = SystemTime::now();
        let metadata: Metadata = match (options.metadata, &t.view) {
            (Some(m), _) => m,
            (None, Some(e)) => e.metadata.clone(),
            (None, None) => Metadata::new(),
        };
        let entry = Entry {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value,
            metadata,
            version: current.map_or(1, |v| v + 1),
            created_at: t.view.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
            expires_at: options.ttl.map(|ttl| now + ttl),
        };
        t.view = Some(entry.clone());
        t.staged = Staged::Put {
            ttl_us: options.ttl.map(micros),
        };
        Ok(entry)
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        validate::document(namespace, key)?;
        let t = self.touch(namespace, key).await?;
        let current = t.view.as_ref().map(|e| e.version);
        match condition {
            DeleteCondition::Always => {}
            DeleteCondition::IfVersion(v) => {
                if current != Some(v) {
                    return Err(version_conflict(namespace, key, v, current));
                }
            }
            other => {
                return Err(Error::unsupported_variant("delete condition", &other)
                    .with_context("backend", BACKEND));
            }
        }
        t.view = None;
        t.staged = Staged::Delete;
        Ok(current.is_some())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let driver = self.driver.clone();
        let arrays = (*self).into_arrays();
        let client = driver.client().await?;
        driver
            .statements()
            .execute(&client, COMMIT, &arrays.params())
            .await
            .map_err(|e| commit_error(e, pg_write))?;
        Ok(())
    }

    async fn commit_once(self: Box<Self>, namespace: &str, id: &OperationId) -> Result<Applied> {
        let driver = self.driver.clone();
        let arrays = (!self.touched.is_empty()).then(|| (*self).into_arrays());
        driver.commit_once(namespace, id, arrays).await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        // Nothing was sent: staged writes live only in this value.
        Ok(())
    }
}
