//! Conveniences on top of the traits, for every implementation (including `dyn` ones).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::document::{DeleteCondition, Entry, ListOptions, PutCondition, PutOptions};
use crate::error::{Error, ErrorCode, Result};
use crate::event::{EventStore, ReadStream, RecordedEvent, Snapshot};
use crate::lock::{Lease, Lock};
use crate::operation::{OperationId, Write};
use crate::storage::StorageDriver;
use crate::validate;

/// Typed and looping helpers over any [`StorageDriver`].
///
/// ```
/// # async fn demo(store: &dyn kernel_core::StorageDriver) -> kernel_core::Result<()> {
/// use kernel_core::{PutOptions, StorageExt};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct User { name: String }
///
/// store.put_as("users", "alice", &User { name: "Alice".into() }, PutOptions::new()).await?;
/// let user: Option<User> = store.get_as("users", "alice").await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait StorageExt: StorageDriver {
    /// Gets and deserializes. A value that does not fit `T` is `InvalidInput` naming the key.
    async fn get_as<T: DeserializeOwned>(&self, namespace: &str, key: &str) -> Result<Option<T>> {
        match self.get(namespace, key).await? {
            None => Ok(None),
            Some(entry) => decode(&entry).map(Some),
        }
    }

    /// Serializes and puts.
    async fn put_as<T: Serialize + Sync>(
        &self,
        namespace: &str,
        key: &str,
        value: &T,
        options: PutOptions,
    ) -> Result<Entry> {
        let value = serde_json::to_value(value).map_err(|e| {
            Error::invalid_input("value cannot be serialized as JSON")
                .with_context("namespace", namespace)
                .with_context("key", validate::escape(key))
                .with_source(e)
        })?;
        self.put(namespace, key, value, options).await
    }

    /// A put named by an operation id ([`StorageDriver::write_once`]): the entry it wrote, or
    /// on a repeat the entry the first call wrote.
    ///
    /// ```
    /// # async fn demo(store: &dyn kernel_core::StorageDriver) -> kernel_core::Result<()> {
    /// use kernel_core::{json, OperationId, PutOptions, StorageExt};
    ///
    /// let id = OperationId::new("invoice-7:paid")?;
    /// // Safe to repeat after any error, MaybeApplied included.
    /// let entry = store
    ///     .put_once("invoices", "7", json!({"paid": true}), PutOptions::new().if_version(3), &id)
    ///     .await?;
    /// # let _ = entry; Ok(()) }
    /// ```
    async fn put_once(
        &self,
        namespace: &str,
        key: &str,
        value: serde_json::Value,
        options: PutOptions,
        id: &OperationId,
    ) -> Result<Entry> {
        self.write_once(namespace, id, Write::put(key, value, options))
            .await?
            .outcome
            .into_entry()
    }

    /// A delete named by an operation id: whether it removed a live entry, or on a repeat what
    /// the first call answered.
    async fn delete_once(
        &self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
        id: &OperationId,
    ) -> Result<bool> {
        self.write_once(namespace, id, Write::delete(key, condition))
            .await?
            .outcome
            .into_deleted()
    }

    /// The keys of one page.
    async fn list_keys(&self, namespace: &str, options: &ListOptions) -> Result<Vec<String>> {
        let page = self.list(namespace, options).await?;
        Ok(page.entries.into_iter().map(|e| e.key).collect())
    }

    /// Every live entry that `options` selects, following cursors page by page.
    async fn list_all(&self, namespace: &str, options: &ListOptions) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut opts = options.clone();
        if opts.limit.is_none() {
            opts.limit = Some(1000);
        }
        loop {
            let page = self.list(namespace, &opts).await?;
            out.extend(page.entries);
            match page.next_cursor {
                Some(c) => {
                    opts.after = Some(c);
                    opts.offset = 0;
                }
                None => return Ok(out),
            }
        }
    }

    /// Read-modify-write with compare-and-set, retried on `Conflict` up to `attempts` times.
    /// `f` gets the current value (`None` if absent) and returns the new one.
    async fn update<F>(&self, namespace: &str, key: &str, attempts: u32, f: F) -> Result<Entry>
    where
        F: Fn(Option<&serde_json::Value>) -> Result<serde_json::Value> + Send + Sync,
    {
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let current = self.get(namespace, key).await?;
            let condition = match &current {
                Some(e) => PutCondition::IfVersion(e.version),
                None => PutCondition::IfAbsent,
            };
            let next = f(current.as_ref().map(|e| &e.value))?;
            let options = PutOptions {
                condition,
                ttl: None,
                metadata: None,
            };
            match self.put(namespace, key, next, options).await {
                Ok(entry) => return Ok(entry),
                Err(e) if matches!(e.code(), ErrorCode::Conflict | ErrorCode::AlreadyExists) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..500))).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("update made no attempt")))
    }
}

impl<S: StorageDriver + ?Sized> StorageExt for S {}

/// Decodes an entry's value as `T`.
pub fn decode<T: DeserializeOwned>(entry: &Entry) -> Result<T> {
    T::deserialize(&entry.value).map_err(|e| {
        Error::invalid_input(format!(
            "stored value does not deserialize as {}",
            std::any::type_name::<T>()
        ))
        .with_context("namespace", &entry.namespace)
        .with_context("key", validate::escape(&entry.key))
        .with_source(e)
    })
}

/// An aggregate's latest snapshot and the events after it.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateHistory {
    /// The latest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// The events after the snapshot's version (all events without a snapshot), oldest first.
    pub events: Vec<RecordedEvent>,
}

impl AggregateHistory {
    /// The version the aggregate is at once every event is applied (0 for a new stream).
    pub fn version(&self) -> u64 {
        self.events
            .last()
            .map(|e| e.version)
            .or(self.snapshot.as_ref().map(|s| s.version))
            .unwrap_or(0)
    }
}

/// Helpers over any [`EventStore`].
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// The stream's last version (0 when it has no events).
    async fn stream_version(&self, stream: &str) -> Result<u64> {
        let last = self
            .read_stream(stream, ReadStream::backward().limit(1))
            .await?;
        Ok(last.first().map_or(0, |e| e.version))
    }

    /// Latest snapshot plus the events after it: everything needed to rebuild an aggregate.
    async fn load_aggregate(&self, stream: &str) -> Result<AggregateHistory> {
        let snapshot = self.load_snapshot(stream).await?;
        let from = snapshot.as_ref().map_or(1, |s| s.version + 1);
        let events = self
            .read_stream(stream, ReadStream::forward().from(from))
            .await?;
        Ok(AggregateHistory { snapshot, events })
    }
}

impl<E: EventStore + ?Sized> EventStoreExt for E {}

/// Run-under-lock over any [`Lock`].
#[async_trait]
pub trait LockExt: Lock {
    /// Acquires `key` (waiting up to `wait`), runs `f` with the lease, and releases the lease on
    /// every path: success, error and panic (the panic then continues). If the future is
    /// cancelled, the lease lapses at its TTL.
    ///
    /// A release that fails after `f` succeeded is returned as the error: the caller must learn
    /// that the lease may have lapsed while `f` ran.
    async fn with_lock<F, Fut, T>(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Lease) -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let lease = self.acquire(key, ttl, wait).await?;
        let outcome = AssertUnwindSafe(f(lease.clone())).catch_unwind().await;
        let released = self.release(&lease).await;
        match outcome {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Ok(Ok(v)) => released.map(|()| v),
        }
    }
}

impl<L: Lock + ?Sized> LockExt for L {}
