//! [`Layered`]: any [`Interceptor`] over any implementation of the four traits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use kernel_core::{
    AppendResult, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, EventFilter,
    EventStore, EventSubscription, ExpectedVersion, Filter, Lease, ListOptions, ListPage, Lock,
    Metadata, MetadataMode, NamespaceInfo, NewEvent, PutCondition, PutOptions, Query, Quota,
    RateDecision, RateLimiter, ReadStream, RecordedEvent, Result, Snapshot, Status, StorageDriver,
    Transaction, Value,
};

use super::{Access, Attempt, Interceptor, Op};
use crate::config::Role;

/// An inner store with an interceptor around every call. Implements whichever of
/// [`StorageDriver`], [`EventStore`], [`Lock`] and [`RateLimiter`] the inner one does, so
/// layers stack in any order, over concrete drivers or `Arc<dyn Trait>`.
///
/// ```
/// use std::sync::Arc;
/// use driver_memory::MemoryDriver;
/// use kernel_bootstrap::layers::{retry::RetryPolicy, timeout::TimeoutPolicy, Layered};
/// use kernel_core::StorageDriver;
/// use std::time::Duration;
///
/// let timed = Layered::new(Arc::new(MemoryDriver::new()), TimeoutPolicy::new(Duration::from_secs(1)));
/// let store: Arc<dyn StorageDriver> = Arc::new(Layered::new(Arc::new(timed), RetryPolicy::default()));
/// ```
pub struct Layered<I, T: ?Sized> {
    interceptor: Arc<I>,
    inner: Arc<T>,
}

impl<I, T: ?Sized> Layered<I, T> {
    /// Wraps `inner` in `interceptor`.
    pub fn new(inner: Arc<T>, interceptor: I) -> Layered<I, T> {
        Layered::shared(inner, Arc::new(interceptor))
    }

    /// Wraps `inner` in an interceptor shared with other stores (one circuit breaker for every
    /// role on a backend, for instance).
    pub fn shared(inner: Arc<T>, interceptor: Arc<I>) -> Layered<I, T> {
        Layered { interceptor, inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    /// The interceptor.
    pub fn interceptor(&self) -> &Arc<I> {
        &self.interceptor
    }
}

impl<I, T: ?Sized> Clone for Layered<I, T> {
    fn clone(&self) -> Self {
        Layered {
            interceptor: self.interceptor.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<I: fmt::Debug, T: fmt::Debug + ?Sized> fmt::Debug for Layered<I, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("interceptor", &self.interceptor)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<I: Interceptor, T: ?Sized> Layered<I, T> {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        call: impl FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a,
    ) -> BoxFuture<'a, Result<R>> {
        self.interceptor.around(op, Box::new(call))
    }
}

/// The answer when an interceptor calls again after the final attempt: a bug in that
/// interceptor, reported instead of panicking.
fn exhausted<'a, R: Send + 'a>(op: &Op<'_>) -> BoxFuture<'a, Result<R>> {
    let err = op.annotate(Error::internal(
        "a layer called the operation again after its final attempt",
    ));
    Box::pin(async move { Err(err) })
}

/// A call that can run once: for operations that are never repeated (transaction steps) and
/// whose future borrows state mutably.
fn once<'a, R: Send + 'a>(
    op: Op<'a>,
    fut: BoxFuture<'a, Result<R>>,
) -> impl FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a {
    let mut fut = Some(fut);
    move |_| fut.take().unwrap_or_else(|| exhausted(&op))
}

fn doc<'a>(name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
    Op::new(Role::Storage, name, access, repeatable)
}

fn ev<'a>(name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
    Op::new(Role::Events, name, access, repeatable)
}

#[async_trait]
impl<I: Interceptor, T: StorageDriver + ?Sized> StorageDriver for Layered<I, T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn status(&self) -> Result<Status> {
        self.around(doc("status", Access::Read, true), move |_| {
            self.inner.status()
        })
        .await
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = doc("get", Access::Read, true).namespace(namespace).key(key);
        self.around(op, move |_| self.inner.get(namespace, key))
            .await
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        // A conditional put that failed in transit may have been applied: repeating it would
        // report `AlreadyExists` / `Conflict` for a write that succeeded.
        let repeatable = options.condition == PutCondition::Always;
        let op = doc("put", Access::Write, repeatable)
            .namespace(namespace)
            .key(key);
        let mut args = Some((value, options));
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some((value, options)) => self.inner.put(namespace, key, value, options),
            None => exhausted(&op),
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        let repeatable = condition == DeleteCondition::Always;
        let op = doc("delete", Access::Write, repeatable)
            .namespace(namespace)
            .key(key);
        self.around(op, move |_| self.inner.delete(namespace, key, condition))
            .await
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        let op = doc("exists", Access::Read, true)
            .namespace(namespace)
            .key(key);
        self.around(op, move |_| self.inner.exists(namespace, key))
            .await
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let op = doc("get_many", Access::Read, true).namespace(namespace);
        self.around(op, move |_| self.inner.get_many(namespace, keys))
            .await
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let repeatable = items
            .iter()
            .all(|i| i.options.condition == PutCondition::Always);
        let op = doc("put_many", Access::Write, repeatable).namespace(namespace);
        let mut args = Some(items);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(items) => self.inner.put_many(namespace, items),
            None => exhausted(&op),
        })
        .await
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        let repeatable = items.iter().all(|i| i.condition == DeleteCondition::Always);
        let op = doc("delete_many", Access::Write, repeatable).namespace(namespace);
        let mut args = Some(items);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(items) => self.inner.delete_many(namespace, items),
            None => exhausted(&op),
        })
        .await
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        let op = doc("list", Access::Read, true).namespace(namespace);
        self.around(op, move |_| self.inner.list(namespace, options))
            .await
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        let op = doc("query", Access::Read, true).namespace(namespace);
        self.around(op, move |_| self.inner.query(namespace, query))
            .await
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        let op = doc("count", Access::Read, true).namespace(namespace);
        self.around(op, move |_| self.inner.count(namespace, filter))
            .await
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        let op = doc("clear", Access::Write, true).namespace(namespace);
        self.around(op, move |_| self.inner.clear(namespace)).await
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        // Not repeatable: a create that was applied in transit answers `AlreadyExists` again.
        let op = doc("create_namespace", Access::Write, false).namespace(namespace);
        let mut args = Some(metadata);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(metadata) => self.inner.create_namespace(namespace, metadata),
            None => exhausted(&op),
        })
        .await
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        let op = doc("drop_namespace", Access::Write, true).namespace(namespace);
        self.around(op, move |_| self.inner.drop_namespace(namespace, recursive))
            .await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let op = doc("list_namespaces", Access::Read, true);
        self.around(op, move |_| self.inner.list_namespaces()).await
    }

    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        let op = doc("get_metadata", Access::Read, true)
            .namespace(namespace)
            .key(key);
        self.around(op, move |_| self.inner.get_metadata(namespace, key))
            .await
    }

    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        // Replacing or merging the same object twice leaves the same metadata.
        let op = doc("set_metadata", Access::Write, true)
            .namespace(namespace)
            .key(key);
        let mut args = Some(metadata);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(metadata) => self.inner.set_metadata(namespace, key, metadata, mode),
            None => exhausted(&op),
        })
        .await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let op = doc("begin", Access::Read, true);
        let tx = self.around(op, move |_| self.inner.begin()).await?;
        Ok(Box::new(LayeredTx {
            interceptor: self.interceptor.clone(),
            inner: tx,
        }))
    }
}

/// A transaction handle whose every step passes through the interceptor. Steps are never
/// repeated: a transaction is retried as a whole by its caller.
struct LayeredTx<I> {
    interceptor: Arc<I>,
    inner: Box<dyn Transaction>,
}

#[async_trait]
impl<I: Interceptor> Transaction for LayeredTx<I> {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = doc("tx.get", Access::Read, false)
            .namespace(namespace)
            .key(key);
        let fut = self.inner.get(namespace, key);
        self.interceptor.around(op, Box::new(once(op, fut))).await
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let op = doc("tx.put", Access::Write, false)
            .namespace(namespace)
            .key(key);
        let fut = self.inner.put(namespace, key, value, options);
        self.interceptor.around(op, Box::new(once(op, fut))).await
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        let op = doc("tx.delete", Access::Write, false)
            .namespace(namespace)
            .key(key);
        let fut = self.inner.delete(namespace, key, condition);
        self.interceptor.around(op, Box::new(once(op, fut))).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let op = doc("tx.commit", Access::Write, false);
        let LayeredTx { interceptor, inner } = *self;
        interceptor
            .around(op, Box::new(once(op, inner.commit())))
            .await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let op = doc("tx.rollback", Access::Write, false);
        let LayeredTx { interceptor, inner } = *self;
        interceptor
            .around(op, Box::new(once(op, inner.rollback())))
            .await
    }
}

#[async_trait]
impl<I: Interceptor, T: EventStore + ?Sized> EventStore for Layered<I, T> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        // Repeatable whatever the expected version: the events' ids make a re-append of a batch
        // that was stored in transit an idempotent success with the same positions.
        let op = ev("append", Access::Write, true).stream(stream);
        let mut args = Some(events);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(events) => self.inner.append(stream, expected, events),
            None => exhausted(&op),
        })
        .await
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        let op = ev("read_stream", Access::Read, true).stream(stream);
        self.around(op, move |_| self.inner.read_stream(stream, options))
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let op = ev("read_all", Access::Read, true);
        self.around(op, move |_| self.inner.read_all(after, filter, limit))
            .await
    }

    async fn head_position(&self) -> Result<u64> {
        let op = ev("head_position", Access::Read, true);
        self.around(op, move |_| self.inner.head_position()).await
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        // Only opening the subscription passes through the interceptor: the feed itself is
        // long-lived, and an error in it ends it (resume from the last position seen).
        let op = ev("subscribe", Access::Read, true);
        self.around(op, move |_| self.inner.subscribe(after, filter.clone()))
            .await
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        // Saving the same state at the same version again stores the same snapshot.
        let op = ev("save_snapshot", Access::Write, true).stream(stream);
        let mut args = Some(state);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(state) => self.inner.save_snapshot(stream, version, state),
            None => exhausted(&op),
        })
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let op = ev("load_snapshot", Access::Read, true).stream(stream);
        self.around(op, move |_| self.inner.load_snapshot(stream))
            .await
    }
}

#[async_trait]
impl<I: Interceptor, T: Lock + ?Sized> Lock for Layered<I, T> {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        // Not repeatable: an acquisition applied in transit holds the lock, and a retry would
        // answer `None` (held) while the lease we own is lost until its TTL.
        let op = Op::new(Role::Locks, "try_acquire", Access::Write, false).key(key);
        self.around(op, move |_| self.inner.try_acquire(key, ttl))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        // Not repeatable: a release applied in transit makes the retry fail with
        // `LockNotHeld`, which would report a successful release as a failure.
        let op = Op::new(Role::Locks, "release", Access::Write, false).key(&lease.key);
        self.around(op, move |_| self.inner.release(lease)).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        // Repeatable: extending keeps the token, so a retry after an applied extension extends
        // again from now.
        let op = Op::new(Role::Locks, "extend", Access::Write, true).key(&lease.key);
        self.around(op, move |_| self.inner.extend(lease, ttl))
            .await
    }

    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let op = Op::new(Role::Locks, "acquire", Access::Write, false)
            .key(key)
            .allowance(wait);
        self.around(op, move |_| self.inner.acquire(key, ttl, wait))
            .await
    }
}

#[async_trait]
impl<I: Interceptor, T: RateLimiter + ?Sized> RateLimiter for Layered<I, T> {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        // A check consumes quota: repeating one that was counted in transit would count it
        // twice. A cost-0 check only peeks, so it is safe.
        let op = Op::new(Role::RateLimits, "check", Access::Write, cost == 0).key(key);
        self.around(op, move |_| self.inner.check(key, quota, cost))
            .await
    }

    async fn reset(&self, key: &str) -> Result<()> {
        let op = Op::new(Role::RateLimits, "reset", Access::Write, true).key(key);
        self.around(op, move |_| self.inner.reset(key)).await
    }
}
