//! [`Scoped`]: one wrapper that changes what a call may touch, driven by a [`ScopePolicy`].
//!
//! A scoping layer does two things around every call, both decided by its policy:
//!
//! * **before any I/O**, it checks the operation ([`ScopePolicy::check`], given the [`Op`] of
//!   the shared table in [`super::ops`], with the caller's names) and maps every name the caller
//!   passes to the name the store keeps ([`ScopePolicy::namespace_in`] and its siblings);
//! * **on the way out**, it gives the caller's own names back: an entry, event, snapshot or
//!   lease of a call that named one namespace, stream or key carries the caller's name again;
//!   what a call reads across names (`list_namespaces`, `read_all`, `subscribe`) passes through
//!   [`ScopePolicy::keep_namespace`] / [`ScopePolicy::keep_event`], which may rename or drop
//!   each item; and [`ScopePolicy::status_out`] hides what `status` must not tell.
//!
//! Two policies ship: [`super::tenant::Tenant`] (every name moves into the tenant's space) and
//! [`super::access::Principal`] (permission checks, no renaming). Any policy is a [`Layer`], so
//! scoping stacks with [`super::Stores::layer`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use std::sync::Arc;
//!
//! use driver_memory::MemoryDriver;
//! use kernel_bootstrap::layers::scope::{ScopePolicy, Scoped};
//! use kernel_bootstrap::layers::{Access, Op};
//! use kernel_core::{Error, ErrorCode, StorageDriver, json, PutOptions};
//!
//! /// A store nobody may write to.
//! #[derive(Debug, Clone)]
//! struct ReadOnly;
//!
//! impl ScopePolicy for ReadOnly {
//!     fn check(&self, op: &Op<'_>) -> kernel_core::Result<()> {
//!         match op.access {
//!             Access::Read => Ok(()),
//!             Access::Write => Err(Error::new(ErrorCode::PermissionDenied, "read-only")),
//!         }
//!     }
//! }
//!
//! let store = Scoped::new(Arc::new(MemoryDriver::new()), ReadOnly);
//! let e = store.put("ns", "k", json!(1), PutOptions::new()).await.unwrap_err();
//! assert_eq!((e.code(), e.operation()), (ErrorCode::PermissionDenied, Some("put")));
//! assert!(store.get("ns", "k").await?.is_none());
//! # Ok(()) }
//! ```
//!
//! Errors the layer raises itself (a refused check, a name the policy cannot map) name the
//! operation ([`kernel_core::Error::operation`]) and the caller's names, escaped; errors from
//! the inner store get the operation when they lack one and keep the names the store saw.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kernel_core::{
    AppendResult, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, EventFilter,
    EventStore, EventSubscription, ExpectedVersion, Filter, IndexInfo, IndexSpec, Lease,
    ListOptions, ListPage, Lock, Metadata, MetadataMode, NamespaceInfo, NewEvent, PutOptions,
    Query, Quota, RateDecision, RateLimiter, ReadStream, RecordedEvent, Result, Snapshot, Status,
    StorageDriver, Transaction, Value,
};
use kernel_core::{Applied, OperationId, Outcome, Write as WriteOp};

use super::{Layer, Op, ops, read_all_kept};
use crate::config::Role;

/// What a [`Scoped`] store checks, how it renames, and what it hides.
///
/// Every method has a default that allows everything and renames nothing, so a policy states
/// only what it changes. A policy that renames must map both ways: whatever `*_in` renames,
/// [`ScopePolicy::keep_namespace`] and [`ScopePolicy::keep_event`] must rename back (and drop
/// what is not the caller's), or names from another scope leak through listings and the
/// global log. The shipped policies implement every method, under
/// `#[deny(clippy::missing_trait_methods)]`, so a method added here cannot be left to its
/// default by accident.
///
/// The mapping methods return [`Cow::Borrowed`] when the name stays as it is, so a policy that
/// renames nothing costs no allocation. They run before any I/O; an error they return is
/// given to the caller with the operation and the caller's names added.
pub trait ScopePolicy: Send + Sync + fmt::Debug + 'static {
    /// Whether the operation may run at all (permissions). Called first, with the caller's
    /// names, for every operation but `capabilities` (which does no I/O), transaction steps
    /// included.
    fn check(&self, _op: &Op<'_>) -> Result<()> {
        Ok(())
    }

    /// The stored name of a namespace the caller names.
    fn namespace_in<'n>(&self, namespace: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(namespace))
    }

    /// The stored name of a stream the caller names.
    fn stream_in<'n>(&self, stream: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(stream))
    }

    /// The stored name of a category in an event filter (`read_all`, `subscribe`).
    fn category_in<'n>(&self, category: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(category))
    }

    /// The stored form of a lock key (also of the key of a lease passed back).
    fn lock_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(key))
    }

    /// The stored form of a rate-limit key.
    fn rate_limit_key_in<'n>(&self, key: &'n str) -> Result<Cow<'n, str>> {
        Ok(Cow::Borrowed(key))
    }

    /// Whether `list_namespaces` shows a stored namespace; may rename it to the caller's name.
    fn keep_namespace(&self, _info: &mut NamespaceInfo) -> bool {
        true
    }

    /// Whether an event of the global log (`read_all`, `subscribe`) reaches the caller; may
    /// rename its stream to the caller's name.
    fn keep_event(&self, _event: &mut RecordedEvent) -> bool {
        true
    }

    /// Removes from a backend's status what the caller must not see, or adds what it should.
    fn status_out(&self, _status: &mut Status) {}

    /// The tenant the calls of this scope run for, if any: every call of the store below runs
    /// inside [`kernel_core::tenancy::scope`] with it, so a driver that enforces tenants
    /// itself (PostgreSQL with row-level security) knows whose call it is.
    fn tenant(&self) -> Option<&Arc<str>> {
        None
    }
}

/// Any policy scopes each of the four stores (each gets its own copy of the policy).
///
/// This is what makes `stores.layer(&Tenant::new("acme")?)` work; a type that implements
/// [`ScopePolicy`] therefore cannot implement [`Layer`] in another way.
impl<P: ScopePolicy + Clone> Layer for P {
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver> {
        Arc::new(Scoped::new(inner, self.clone()))
    }

    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(Scoped::new(inner, self.clone()))
    }

    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock> {
        Arc::new(Scoped::new(inner, self.clone()))
    }

    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        Arc::new(Scoped::new(inner, self.clone()))
    }
}

/// An inner store seen through a [`ScopePolicy`]. Implements whichever of [`StorageDriver`],
/// [`EventStore`], [`Lock`] and [`RateLimiter`] the inner one does, over a concrete store or
/// `Arc<dyn Trait>`.
#[derive(Debug)]
pub struct Scoped<P, T: ?Sized> {
    policy: Arc<P>,
    inner: Arc<T>,
}

impl<P, T: ?Sized> Scoped<P, T> {
    /// Scopes `inner` by `policy`.
    pub fn new(inner: Arc<T>, policy: P) -> Scoped<P, T> {
        Scoped::shared(inner, Arc::new(policy))
    }

    /// Scopes `inner` by a policy shared with other stores.
    pub fn shared(inner: Arc<T>, policy: Arc<P>) -> Scoped<P, T> {
        Scoped { policy, inner }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }
}

impl<P, T: ?Sized> Clone for Scoped<P, T> {
    fn clone(&self) -> Self {
        Scoped {
            policy: self.policy.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// Checks `op`, then maps the one name it touches (the namespace, stream or key its role is
/// scoped by, as the operation table sets it) to the stored name, so the name checked is the
/// name mapped.
fn enter<'a, P: ScopePolicy>(policy: &P, op: &Op<'a>) -> Result<Cow<'a, str>> {
    admit(policy, op)?;
    let stored = match (op.role, op.namespace, op.stream, op.key) {
        (Role::Storage, Some(namespace), _, _) => policy.namespace_in(namespace),
        (Role::Events, _, Some(stream), _) => policy.stream_in(stream),
        (Role::Locks, _, _, Some(key)) => policy.lock_key_in(key),
        (Role::RateLimits, _, _, Some(key)) => policy.rate_limit_key_in(key),
        // The table test pins which operations name their resource; this is a wrapper bug.
        _ => Err(Error::internal("the operation names nothing to scope")),
    };
    stored.map_err(|e| op.annotate(e))
}

/// Checks an operation that names nothing to map.
fn admit<P: ScopePolicy>(policy: &P, op: &Op<'_>) -> Result<()> {
    policy.check(op).map_err(|e| op.annotate(e))
}

/// Runs a call of the inner store in the policy's tenant, if it has one.
async fn within<P: ScopePolicy + ?Sized, F: Future>(policy: &P, call: F) -> F::Output {
    match policy.tenant() {
        Some(tenant) => kernel_core::tenancy::scope(tenant.clone(), call).await,
        None => call.await,
    }
}

/// Names the operation in an error of the inner store that does not name one; its other
/// context stays, as it names what the store saw.
fn inner_err<R>(op: &Op<'_>, result: Result<R>) -> Result<R> {
    result.map_err(|e| e.with_operation(op.name))
}

/// Gives an entry the caller's namespace back.
fn named(mut entry: Entry, namespace: &str) -> Entry {
    namespace.clone_into(&mut entry.namespace);
    entry
}

/// Checks `op`, then gives the filter the stored categories (borrowed when none is renamed).
fn filter_in<'f, P: ScopePolicy>(
    policy: &P,
    op: &Op<'_>,
    filter: &'f EventFilter,
) -> Result<Cow<'f, EventFilter>> {
    admit(policy, op)?;
    let stored = filter
        .categories
        .iter()
        .map(|c| policy.category_in(c))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| op.annotate(e))?;
    if stored.iter().all(|c| matches!(c, Cow::Borrowed(_))) {
        return Ok(Cow::Borrowed(filter));
    }
    let mut mapped = filter.clone();
    mapped.categories = stored.into_iter().map(Cow::into_owned).collect();
    Ok(Cow::Owned(mapped))
}

/// The lease the store knows: the caller's with the stored key.
fn lease_in<'l>(lease: &'l Lease, key: Cow<'_, str>) -> Cow<'l, Lease> {
    match key {
        Cow::Borrowed(_) => Cow::Borrowed(lease),
        Cow::Owned(key) => {
            let mut stored = lease.clone();
            stored.key = key;
            Cow::Owned(stored)
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: ScopePolicy, T: StorageDriver + ?Sized> StorageDriver for Scoped<P, T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn status(&self) -> Result<Status> {
        let op = ops::status();
        admit(&*self.policy, &op)?;
        let mut status = inner_err(&op, within(&*self.policy, self.inner.status()).await)?;
        self.policy.status_out(&mut status);
        Ok(status)
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = ops::get(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        let found = inner_err(&op, within(&*self.policy, self.inner.get(&ns, key)).await)?;
        Ok(found.map(|e| named(e, namespace)))
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let op = ops::put(namespace, key, options.condition);
        let ns = enter(&*self.policy, &op)?;
        let entry = inner_err(
            &op,
            within(&*self.policy, self.inner.put(&ns, key, value, options)).await,
        )?;
        Ok(named(entry, namespace))
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        let op = ops::delete(namespace, key, condition);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.delete(&ns, key, condition)).await,
        )
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        let op = ops::exists(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.exists(&ns, key)).await,
        )
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let op = ops::get_many(namespace);
        let ns = enter(&*self.policy, &op)?;
        let found = inner_err(
            &op,
            within(&*self.policy, self.inner.get_many(&ns, keys)).await,
        )?;
        Ok(found
            .into_iter()
            .map(|e| e.map(|e| named(e, namespace)))
            .collect())
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let op = ops::put_many(namespace, &items);
        let ns = enter(&*self.policy, &op)?;
        let entries = inner_err(
            &op,
            within(&*self.policy, self.inner.put_many(&ns, items)).await,
        )?;
        Ok(entries.into_iter().map(|e| named(e, namespace)).collect())
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        let op = ops::delete_many(namespace, &items);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.delete_many(&ns, items)).await,
        )
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        let op = ops::list(namespace);
        let ns = enter(&*self.policy, &op)?;
        let mut page = inner_err(
            &op,
            within(&*self.policy, self.inner.list(&ns, options)).await,
        )?;
        for e in &mut page.entries {
            namespace.clone_into(&mut e.namespace);
        }
        Ok(page)
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        let op = ops::query(namespace);
        let ns = enter(&*self.policy, &op)?;
        let entries = inner_err(
            &op,
            within(&*self.policy, self.inner.query(&ns, query)).await,
        )?;
        Ok(entries.into_iter().map(|e| named(e, namespace)).collect())
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        let op = ops::count(namespace);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.count(&ns, filter)).await,
        )
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        let op = ops::clear(namespace);
        let ns = enter(&*self.policy, &op)?;
        inner_err(&op, within(&*self.policy, self.inner.clear(&ns)).await)
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        let op = ops::create_namespace(namespace);
        let ns = enter(&*self.policy, &op)?;
        let mut info = inner_err(
            &op,
            within(&*self.policy, self.inner.create_namespace(&ns, metadata)).await,
        )?;
        namespace.clone_into(&mut info.name);
        Ok(info)
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        let op = ops::drop_namespace(namespace);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.drop_namespace(&ns, recursive)).await,
        )
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let op = ops::list_namespaces();
        admit(&*self.policy, &op)?;
        let mut all = inner_err(
            &op,
            within(&*self.policy, self.inner.list_namespaces()).await,
        )?;
        all.retain_mut(|info| self.policy.keep_namespace(info));
        Ok(all)
    }

    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        let op = ops::get_metadata(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.get_metadata(&ns, key)).await,
        )
    }

    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        let op = ops::set_metadata(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        let entry = inner_err(
            &op,
            within(
                &*self.policy,
                self.inner.set_metadata(&ns, key, metadata, mode),
            )
            .await,
        )?;
        Ok(named(entry, namespace))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let op = ops::begin();
        admit(&*self.policy, &op)?;
        let inner = inner_err(&op, within(&*self.policy, self.inner.begin()).await)?;
        Ok(Box::new(ScopedTx {
            policy: self.policy.clone(),
            inner,
        }))
    }

    async fn write_once(
        &self,
        namespace: &str,
        id: &OperationId,
        write: WriteOp,
    ) -> Result<Applied> {
        let key = write.key().map(str::to_owned);
        let op = ops::write_once(namespace, key.as_deref());
        let ns = enter(&*self.policy, &op)?;
        let mut applied = inner_err(
            &op,
            within(&*self.policy, self.inner.write_once(&ns, id, write)).await,
        )?;
        applied.outcome = outcome_named(applied.outcome, namespace);
        Ok(applied)
    }

    async fn operation(&self, namespace: &str, id: &OperationId) -> Result<Option<Outcome>> {
        let op = ops::operation(namespace);
        let ns = enter(&*self.policy, &op)?;
        let found = inner_err(
            &op,
            within(&*self.policy, self.inner.operation(&ns, id)).await,
        )?;
        Ok(found.map(|o| outcome_named(o, namespace)))
    }

    async fn create_index(&self, namespace: &str, spec: &IndexSpec) -> Result<IndexInfo> {
        let op = ops::create_index(namespace);
        let ns = enter(&*self.policy, &op)?;
        let mut info = inner_err(
            &op,
            within(&*self.policy, self.inner.create_index(&ns, spec)).await,
        )?;
        namespace.clone_into(&mut info.namespace);
        Ok(info)
    }

    async fn drop_index(&self, namespace: &str, field: &str) -> Result<bool> {
        let op = ops::drop_index(namespace);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.drop_index(&ns, field)).await,
        )
    }

    async fn list_indexes(&self, namespace: &str) -> Result<Vec<IndexInfo>> {
        let op = ops::list_indexes(namespace);
        let ns = enter(&*self.policy, &op)?;
        let mut all = inner_err(
            &op,
            within(&*self.policy, self.inner.list_indexes(&ns)).await,
        )?;
        for info in &mut all {
            namespace.clone_into(&mut info.namespace);
        }
        Ok(all)
    }
}

/// An outcome with its entries under the caller's namespace again.
fn outcome_named(outcome: Outcome, namespace: &str) -> Outcome {
    match outcome {
        Outcome::Put(e) => Outcome::Put(named(e, namespace)),
        Outcome::PutMany(es) => {
            Outcome::PutMany(es.into_iter().map(|e| named(e, namespace)).collect())
        }
        other => other,
    }
}

/// A transaction whose every step is checked and renamed like a call of its store.
struct ScopedTx<P> {
    policy: Arc<P>,
    inner: Box<dyn Transaction>,
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: ScopePolicy> Transaction for ScopedTx<P> {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = ops::tx_get(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        let found = inner_err(&op, within(&*self.policy, self.inner.get(&ns, key)).await)?;
        Ok(found.map(|e| named(e, namespace)))
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let op = ops::tx_put(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        let entry = inner_err(
            &op,
            within(&*self.policy, self.inner.put(&ns, key, value, options)).await,
        )?;
        Ok(named(entry, namespace))
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        let op = ops::tx_delete(namespace, key);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.delete(&ns, key, condition)).await,
        )
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let op = ops::tx_commit();
        // A refused commit drops the transaction, which rolls it back.
        admit(&*self.policy, &op)?;
        inner_err(&op, within(&*self.policy, self.inner.commit()).await)
    }

    async fn commit_once(self: Box<Self>, namespace: &str, id: &OperationId) -> Result<Applied> {
        let op = ops::tx_commit_once(namespace);
        let ns = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.commit_once(&ns, id)).await,
        )
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let op = ops::tx_rollback();
        admit(&*self.policy, &op)?;
        inner_err(&op, within(&*self.policy, self.inner.rollback()).await)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: ScopePolicy, T: EventStore + ?Sized> EventStore for Scoped<P, T> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let op = ops::append(stream);
        let s = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.append(&s, expected, events)).await,
        )
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        let op = ops::read_stream(stream);
        let s = enter(&*self.policy, &op)?;
        let mut events = inner_err(
            &op,
            within(&*self.policy, self.inner.read_stream(&s, options)).await,
        )?;
        for e in &mut events {
            stream.clone_into(&mut e.stream);
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let op = ops::read_all();
        let filter = filter_in(&*self.policy, &op, filter)?;
        let kept = read_all_kept(&*self.inner, after, &filter, limit, |e| {
            self.policy.keep_event(e)
        });
        inner_err(&op, within(&*self.policy, kept).await)
    }

    async fn head_position(&self) -> Result<u64> {
        let op = ops::head_position();
        admit(&*self.policy, &op)?;
        inner_err(&op, within(&*self.policy, self.inner.head_position()).await)
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        let op = ops::subscribe();
        let filter = filter_in(&*self.policy, &op, &filter)?.into_owned();
        let feed = inner_err(
            &op,
            within(&*self.policy, self.inner.subscribe(after, filter)).await,
        )?;
        let policy = self.policy.clone();
        // Errors of the feed go on to the caller: they end it, and the caller resumes.
        Ok(feed
            .filter_map(move |item| {
                let kept = match item {
                    Ok(mut e) => policy.keep_event(&mut e).then_some(Ok(e)),
                    Err(err) => Some(Err(err)),
                };
                futures::future::ready(kept)
            })
            .boxed())
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        let op = ops::save_snapshot(stream);
        let s = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.save_snapshot(&s, version, state)).await,
        )
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let op = ops::load_snapshot(stream);
        let s = enter(&*self.policy, &op)?;
        let found = inner_err(
            &op,
            within(&*self.policy, self.inner.load_snapshot(&s)).await,
        )?;
        Ok(found.map(|mut snap| {
            stream.clone_into(&mut snap.stream);
            snap
        }))
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: ScopePolicy, T: Lock + ?Sized> Lock for Scoped<P, T> {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let op = ops::try_acquire(key);
        let k = enter(&*self.policy, &op)?;
        let lease = inner_err(
            &op,
            within(&*self.policy, self.inner.try_acquire(&k, ttl)).await,
        )?;
        Ok(lease.map(|mut lease| {
            key.clone_into(&mut lease.key);
            lease
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let op = ops::release(lease);
        let k = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.release(&lease_in(lease, k))).await,
        )
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let op = ops::extend(lease);
        let k = enter(&*self.policy, &op)?;
        let mut extended = inner_err(
            &op,
            within(&*self.policy, self.inner.extend(&lease_in(lease, k), ttl)).await,
        )?;
        extended.key.clone_from(&lease.key);
        Ok(extended)
    }

    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let op = ops::acquire(key, wait);
        let k = enter(&*self.policy, &op)?;
        let mut lease = inner_err(
            &op,
            within(&*self.policy, self.inner.acquire(&k, ttl, wait)).await,
        )?;
        key.clone_into(&mut lease.key);
        Ok(lease)
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<P: ScopePolicy, T: RateLimiter + ?Sized> RateLimiter for Scoped<P, T> {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        let op = ops::check(key, cost);
        let k = enter(&*self.policy, &op)?;
        inner_err(
            &op,
            within(&*self.policy, self.inner.check(&k, quota, cost)).await,
        )
    }

    async fn reset(&self, key: &str) -> Result<()> {
        let op = ops::reset(key);
        let k = enter(&*self.policy, &op)?;
        inner_err(&op, within(&*self.policy, self.inner.reset(&k)).await)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use futures::StreamExt;
    use kernel_core::{
        BatchDelete, BatchPut, DeleteCondition, Error, ErrorCode, EventFilter, EventStore,
        ExpectedVersion, ListOptions, Lock, Metadata, MetadataMode, NewEvent, PutOptions, Query,
        Quota, RateLimiter, ReadStream, Result, StorageDriver, json,
    };

    use super::{ScopePolicy, Scoped};
    use crate::config::Role;
    use crate::layers::fault::flaky;
    use crate::layers::ops::tests::every_op;
    use crate::layers::{Access, Op};

    type Seen = Arc<Mutex<Vec<(Role, &'static str, Access)>>>;

    /// Records every operation it is asked about; refuses the one named `refuse`.
    #[derive(Debug, Clone, Default)]
    struct Recording {
        seen: Seen,
        refuse: Option<&'static str>,
    }

    impl Recording {
        fn seen(&self) -> Vec<(Role, &'static str, Access)> {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl ScopePolicy for Recording {
        fn check(&self, op: &Op<'_>) -> Result<()> {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((op.role, op.name, op.access));
            if self.refuse == Some(op.name) {
                return Err(Error::new(ErrorCode::PermissionDenied, "refused"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_method_is_checked_once_with_its_table_entry() {
        let policy = Recording::default();
        let s = Scoped::new(Arc::new(MemoryDriver::new()), policy.clone());
        let keys = ["k".to_owned()];
        s.status().await.unwrap();
        s.put("n", "k", json!(1), PutOptions::new()).await.unwrap();
        s.get("n", "k").await.unwrap().unwrap();
        s.exists("n", "k").await.unwrap();
        s.get_many("n", &keys).await.unwrap();
        s.put_many("n", vec![BatchPut::new("j", json!(2))])
            .await
            .unwrap();
        s.delete_many("n", vec![BatchDelete::new("j")])
            .await
            .unwrap();
        s.list("n", &ListOptions::new()).await.unwrap();
        s.query("n", &Query::new()).await.unwrap();
        s.count("n", None).await.unwrap();
        s.get_metadata("n", "k").await.unwrap().unwrap();
        s.set_metadata("n", "k", Metadata::new(), MetadataMode::Merge)
            .await
            .unwrap();
        s.delete("n", "k", DeleteCondition::Always).await.unwrap();
        s.clear("n").await.unwrap();
        s.create_namespace("m", Metadata::new()).await.unwrap();
        s.drop_namespace("m", true).await.unwrap();
        s.list_namespaces().await.unwrap();
        let mut tx = s.begin().await.unwrap();
        tx.put("n", "t", json!(1), PutOptions::new()).await.unwrap();
        tx.get("n", "t").await.unwrap().unwrap();
        tx.delete("n", "t", DeleteCondition::Always).await.unwrap();
        tx.commit().await.unwrap();
        s.begin().await.unwrap().rollback().await.unwrap();
        let id = kernel_core::OperationId::new("op").unwrap();
        let put_once = kernel_core::Write::put("k", json!(1), PutOptions::new().if_version(1));
        s.write_once("n", &id, put_once).await.unwrap_err();
        let batch_once = kernel_core::Write::PutMany(vec![BatchPut::new("k", json!(1))]);
        s.write_once("n", &id, batch_once).await.unwrap();
        s.operation("n", &id).await.unwrap().unwrap();
        let info = s
            .create_index("n", &kernel_core::IndexSpec::new("a.b"))
            .await
            .unwrap();
        assert_eq!(info.namespace, "n", "the caller's namespace");
        let listed = s.list_indexes("n").await.unwrap();
        assert_eq!(listed[0].namespace, "n", "the caller's namespace");
        assert!(s.drop_index("n", "a.b").await.unwrap());
        let tx = s.begin().await.unwrap();
        tx.commit_once("n", &kernel_core::OperationId::new("tx").unwrap())
            .await
            .unwrap();
        s.append(
            "s-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", json!({}))],
        )
        .await
        .unwrap();
        s.read_stream("s-1", ReadStream::forward()).await.unwrap();
        s.read_all(0, &EventFilter::all(), 10).await.unwrap();
        s.head_position().await.unwrap();
        let mut feed = s.subscribe(0, EventFilter::all()).await.unwrap();
        feed.next().await.unwrap().unwrap();
        drop(feed);
        s.save_snapshot("s-1", 1, json!({})).await.unwrap();
        s.load_snapshot("s-1").await.unwrap().unwrap();
        let ttl = Duration::from_secs(5);
        let lease = s.try_acquire("l", ttl).await.unwrap().unwrap();
        let lease = s.extend(&lease, ttl).await.unwrap();
        s.release(&lease).await.unwrap();
        s.acquire("l", ttl, Duration::from_secs(1)).await.unwrap();
        s.check("r", &Quota::per_second(5), 1).await.unwrap();
        s.check("r", &Quota::per_second(5), 0).await.unwrap();
        s.reset("r").await.unwrap();

        let seen = policy.seen();
        let names: Vec<_> = seen.iter().map(|(_, name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "status",
                "put",
                "get",
                "exists",
                "get_many",
                "put_many",
                "delete_many",
                "list",
                "query",
                "count",
                "get_metadata",
                "set_metadata",
                "delete",
                "clear",
                "create_namespace",
                "drop_namespace",
                "list_namespaces",
                "begin",
                "tx.put",
                "tx.get",
                "tx.delete",
                "tx.commit",
                "begin",
                "tx.rollback",
                "write_once",
                "write_once",
                "operation",
                "create_index",
                "list_indexes",
                "drop_index",
                "begin",
                "tx.commit_once",
                "append",
                "read_stream",
                "read_all",
                "head_position",
                "subscribe",
                "save_snapshot",
                "load_snapshot",
                "try_acquire",
                "extend",
                "release",
                "acquire",
                "check",
                "check",
                "reset",
            ],
            "one check per call, in call order"
        );
        let seen: HashSet<_> = seen.into_iter().collect();
        let table: HashSet<_> = every_op()
            .iter()
            .map(|op| (op.role, op.name, op.access))
            .collect();
        assert_eq!(seen, table, "every call is described by its table entry");
    }

    #[tokio::test]
    async fn errors_name_the_operation_and_the_callers_names_escaped() {
        let policy = Recording {
            refuse: Some("get"),
            ..Recording::default()
        };
        let s = Scoped::new(Arc::new(flaky(MemoryDriver::new())), policy);
        let e = s.get("bad\nns", "k\u{0}").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.operation(), Some("get"));
        assert_eq!(e.context_value("namespace"), Some("bad\\nns"));
        assert_eq!(e.context_value("key"), Some("k\\0"));
        assert_eq!(s.inner().faults().calls(), 0, "refused before any I/O");

        // An error of the inner store keeps what it says and gains the operation.
        s.inner().faults().fail_next(1, ErrorCode::Unavailable);
        let e = s.count("n", None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.operation(), Some("count"));
        let e = s
            .put("n", "k", json!(1), PutOptions::new().if_version(3))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert_eq!(e.operation(), Some("put"));
    }
}
