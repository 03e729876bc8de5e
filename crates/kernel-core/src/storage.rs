//! The `StorageDriver` trait: namespaced JSON documents.

use async_trait::async_trait;
use serde_json::Value;

use crate::Metadata;
use crate::document::{
    BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, ListOptions, ListPage,
    MetadataMode, NamespaceInfo, PutOptions, Status,
};
use crate::error::{Error, Result};
use crate::index::{IndexInfo, IndexSpec};
use crate::operation::{Applied, OperationId, Outcome, Write};
use crate::query::{Filter, Query};

/// Namespaced JSON documents with versions, conditions, TTL, atomic batches, ordered listing,
/// queries and transactions.
///
/// Object-safe: use it as `Arc<dyn StorageDriver>`. Typed conveniences (`get_as`, `put_as`,
/// `list_keys`, ...) live in [`crate::StorageExt`].
///
/// # Contract
///
/// Every driver behaves identically; `kernel-testkit`'s storage suite checks each point.
///
/// * **Validation first.** Namespace, key, value, metadata, list options and queries are checked
///   with [`crate::validate`] before any I/O; a rejected input is `InvalidInput` and nothing is
///   written.
/// * **Versions.** A new key gets version 1; every write (put, `set_metadata`) adds 1. A delete
///   followed by a put creates the key anew at version 1.
/// * **Conditions.** [`crate::PutCondition::IfAbsent`] on a live key fails with `AlreadyExists`;
///   `IfVersion(n)` on another version (or an absent key) fails with `Conflict` whose
///   [`crate::Error::current_version`] is the current version (`None` when absent).
/// * **TTL.** An expired entry is invisible to `get`, `exists`, `get_many`, `list`, `query`,
///   `count` and conditions (it counts as absent), whether or not it has been cleaned up.
/// * **Batches** are atomic: if any condition fails, nothing is written and the error names the
///   key. A batch holds at most [`crate::validate::MAX_BATCH_SIZE`] items, all in one namespace,
///   with no key twice.
/// * **Listing** is byte-wise lexicographic order of the UTF-8 keys; see [`ListOptions`].
/// * **Namespaces** are created by the first write into them or by `create_namespace`.
/// * Reading a namespace that does not exist is not an error: it is empty.
/// * **Operation ids** ([`StorageDriver::write_once`], [`Transaction::commit_once`]): a write
///   named by an [`OperationId`] is applied at most once per namespace within the driver's
///   operation window; a repeat with the same request returns the first outcome with
///   [`Applied::replayed`] set and writes nothing, a repeat with another request is a permanent
///   `Conflict`, and a write that failed left no record (its id may be used again). Concurrent
///   calls with one id apply it once. See [`crate::operation`].
#[async_trait]
pub trait StorageDriver: Send + Sync + std::fmt::Debug {
    /// What this driver can do.
    fn capabilities(&self) -> Capabilities;

    /// Health and size, measured now.
    async fn status(&self) -> Result<Status>;

    /// The live entry at `key`, or `None`.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>>;

    /// Writes `value` at `key` under `options`; returns the entry as written.
    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry>;

    /// Removes `key`; `true` if a live entry was removed.
    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool>;

    /// Whether a live entry is at `key`.
    async fn exists(&self, namespace: &str, key: &str) -> Result<bool>;

    /// The live entries at `keys`, in request order, `None` for missing ones.
    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>>;

    /// Writes every item or none; returns the entries as written, in request order.
    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>>;

    /// Removes every item or none (if a condition fails); returns how many live entries went.
    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64>;

    /// One page of live entries in key order.
    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage>;

    /// Live entries matching the query, sorted, with offset and limit.
    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>>;

    /// How many live entries match (all of them without a filter).
    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64>;

    /// Removes every entry of the namespace (which stays); returns how many live entries went.
    async fn clear(&self, namespace: &str) -> Result<u64>;

    /// Creates an empty namespace with metadata; `AlreadyExists` if it exists.
    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo>;

    /// Drops a namespace; a non-empty one only when `recursive` (otherwise `Conflict`).
    /// `false` if it did not exist.
    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool>;

    /// Every namespace, by name.
    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>>;

    /// The metadata of the live entry at `key`, or `None`. Provided: a `get` that keeps only the
    /// metadata; a driver overrides it only if it can fetch less.
    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        Ok(self.get(namespace, key).await?.map(|e| e.metadata))
    }

    /// Replaces or merges the metadata of the live entry at `key` (a write: the version goes up,
    /// the value and TTL stay). `NotFound` if there is no live entry.
    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry>;

    /// Starts a transaction; `Unsupported` when [`Capabilities::transactions`] is false.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// Applies `write` in `namespace` at most once for `id`, recording the id, the request's
    /// [`Write::fingerprint`] and the outcome atomically with the write, for the driver's
    /// operation window.
    ///
    /// * First call: the write is validated and applied exactly as the plain method would
    ///   (same conditions, same errors); on success the outcome is recorded and returned with
    ///   `replayed: false`. A write that fails records nothing.
    /// * A later call with the same id and the same request, within the window: nothing is
    ///   written; the recorded outcome is returned with `replayed: true`, whatever happened to
    ///   the keys since.
    /// * The same id with a different request: a permanent `Conflict` naming the id.
    ///
    /// So any write may be retried after any error, `MaybeApplied` included: the retry either
    /// applies it (the first attempt did not) or returns what the first attempt did.
    async fn write_once(&self, namespace: &str, id: &OperationId, write: Write) -> Result<Applied>;

    /// The recorded outcome of operation `id` in `namespace`, or `None` if no write with that
    /// id succeeded there within the operation window. Lets a caller ask before repeating a
    /// whole transaction.
    async fn operation(&self, namespace: &str, id: &OperationId) -> Result<Option<Outcome>>;

    /// Declares an index on a field of `namespace`'s documents (see [`crate::index`]) and
    /// returns it once it is built. Idempotent: declaring an index that exists is `Ok`. The
    /// namespace need not exist yet; dropping the namespace drops its indexes. Queries return
    /// the same entries with or without it. `Unsupported` when
    /// [`Capabilities::field_indexes`] is false.
    async fn create_index(&self, namespace: &str, spec: &IndexSpec) -> Result<IndexInfo> {
        spec.validate(namespace)?;
        Err(unsupported_index("create_index", namespace))
    }

    /// Removes the index on `field` of `namespace`; `false` if there was none. `Unsupported`
    /// when [`Capabilities::field_indexes`] is false.
    async fn drop_index(&self, namespace: &str, field: &str) -> Result<bool> {
        IndexSpec::new(field).validate(namespace)?;
        Err(unsupported_index("drop_index", namespace))
    }

    /// The indexes declared on `namespace`, by field. `Unsupported` when
    /// [`Capabilities::field_indexes`] is false.
    async fn list_indexes(&self, namespace: &str) -> Result<Vec<IndexInfo>> {
        crate::validate::namespace(namespace)?;
        Err(unsupported_index("list_indexes", namespace))
    }
}

/// The `Unsupported` of the index methods' default implementations.
fn unsupported_index(operation: &str, namespace: &str) -> Error {
    Error::unsupported(format!(
        "this driver has no field indexes ({operation}); queries scan the namespace"
    ))
    .with_context("operation", operation)
    .with_context("namespace", namespace)
}

/// A transaction over documents: reads see its own writes; writes take effect at `commit`.
///
/// Dropping a transaction without committing rolls it back. A commit that lost a race to a
/// concurrent writer fails with a retryable `Conflict` and writes nothing; conditions on puts
/// and deletes are checked against the transaction's view when the operation is called. Each
/// staged write to a key adds 1 to its version, as outside a transaction.
#[async_trait]
pub trait Transaction: Send {
    /// The live entry at `key` as this transaction sees it.
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>>;

    /// Stages a put; returns the entry as it will be written.
    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry>;

    /// Stages a delete; `true` if a live entry is there to remove.
    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool>;

    /// Applies every staged write atomically.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Commits at most once for `id`, recorded in `namespace` atomically with the staged
    /// writes. If `id` is already recorded there (a transaction with that id committed within
    /// the operation window), nothing is written and the result is [`Outcome::Commit`] with
    /// `replayed: true`. A transaction has no fingerprint: only the id is compared.
    ///
    /// Conditions staged by a repeated transaction are checked when staged, before this call;
    /// a caller that repeats a whole transaction asks [`StorageDriver::operation`] first.
    async fn commit_once(self: Box<Self>, namespace: &str, id: &OperationId) -> Result<Applied>;

    /// Discards every staged write.
    async fn rollback(self: Box<Self>) -> Result<()>;
}
