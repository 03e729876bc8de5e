//! [`Layered`]: any [`Around`] (every [`super::Interceptor`] is one) over any implementation of the
//! four traits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use kernel_core::{
    AppendResult, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, EventFilter,
    EventStore, EventSubscription, ExpectedVersion, Filter, IndexInfo, IndexSpec, Lease,
    ListOptions, ListPage, Lock, Metadata, MetadataMode, NamespaceInfo, NewEvent, PutOptions,
    Query, Quota, RateDecision, RateLimiter, ReadStream, RecordedEvent, Result, Snapshot, Status,
    StorageDriver, Transaction, Value,
};
use kernel_core::{Applied, OperationId, Outcome, Write as WriteOp};

use super::{Around, Attempt, Op, ops};

/// An inner store with an interceptor around every call. Implements whichever of
/// [`StorageDriver`], [`EventStore`], [`Lock`] and [`RateLimiter`] the inner one does, so
/// layers stack in any order, over concrete drivers or `Arc<dyn Trait>`. Each call reaches the
/// interceptor described by its entry of the operation table, [`super::ops`].
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

impl<I: Around, T: ?Sized> Layered<I, T> {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        call: impl FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a,
    ) -> impl Future<Output = Result<R>> + Send + 'a {
        self.interceptor.run(op, call)
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

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<I: Around, T: StorageDriver + ?Sized> StorageDriver for Layered<I, T> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn status(&self) -> Result<Status> {
        self.around(ops::status(), move |_| self.inner.status())
            .await
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = ops::get(namespace, key);
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
        let op = ops::put(namespace, key, options.condition);
        let mut args = Some((value, options));
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some((value, options)) => self.inner.put(namespace, key, value, options),
            None => exhausted(&op),
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        let op = ops::delete(namespace, key, condition);
        self.around(op, move |_| self.inner.delete(namespace, key, condition))
            .await
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        let op = ops::exists(namespace, key);
        self.around(op, move |_| self.inner.exists(namespace, key))
            .await
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let op = ops::get_many(namespace);
        self.around(op, move |_| self.inner.get_many(namespace, keys))
            .await
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let op = ops::put_many(namespace, &items);
        let mut args = Some(items);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(items) => self.inner.put_many(namespace, items),
            None => exhausted(&op),
        })
        .await
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        let op = ops::delete_many(namespace, &items);
        let mut args = Some(items);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(items) => self.inner.delete_many(namespace, items),
            None => exhausted(&op),
        })
        .await
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        let op = ops::list(namespace);
        self.around(op, move |_| self.inner.list(namespace, options))
            .await
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        let op = ops::query(namespace);
        self.around(op, move |_| self.inner.query(namespace, query))
            .await
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        let op = ops::count(namespace);
        self.around(op, move |_| self.inner.count(namespace, filter))
            .await
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        let op = ops::clear(namespace);
        self.around(op, move |_| self.inner.clear(namespace)).await
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        let op = ops::create_namespace(namespace);
        let mut args = Some(metadata);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(metadata) => self.inner.create_namespace(namespace, metadata),
            None => exhausted(&op),
        })
        .await
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        let op = ops::drop_namespace(namespace);
        self.around(op, move |_| self.inner.drop_namespace(namespace, recursive))
            .await
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let op = ops::list_namespaces();
        self.around(op, move |_| self.inner.list_namespaces()).await
    }

    async fn get_metadata(&self, namespace: &str, key: &str) -> Result<Option<Metadata>> {
        let op = ops::get_metadata(namespace, key);
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
        let op = ops::set_metadata(namespace, key);
        let mut args = Some(metadata);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(metadata) => self.inner.set_metadata(namespace, key, metadata, mode),
            None => exhausted(&op),
        })
        .await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let op = ops::begin();
        let tx = self.around(op, move |_| self.inner.begin()).await?;
        Ok(Box::new(LayeredTx {
            interceptor: self.interceptor.clone(),
            inner: tx,
        }))
    }

    async fn write_once(
        &self,
        namespace: &str,
        id: &OperationId,
        write: WriteOp,
    ) -> Result<Applied> {
        // The op borrows a copy of the key (not of the write: a batch may be large), since the
        // write itself moves into the final attempt.
        let key = write.key().map(str::to_owned);
        let op = ops::write_once(namespace, key.as_deref());
        let mut args = Some(write);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(write) => self.inner.write_once(namespace, id, write),
            None => exhausted(&op),
        })
        .await
    }

    async fn operation(&self, namespace: &str, id: &OperationId) -> Result<Option<Outcome>> {
        let op = ops::operation(namespace);
        self.around(op, move |_| self.inner.operation(namespace, id))
            .await
    }

    async fn create_index(&self, namespace: &str, spec: &IndexSpec) -> Result<IndexInfo> {
        let op = ops::create_index(namespace);
        self.around(op, move |_| self.inner.create_index(namespace, spec))
            .await
    }

    async fn drop_index(&self, namespace: &str, field: &str) -> Result<bool> {
        let op = ops::drop_index(namespace);
        self.around(op, move |_| self.inner.drop_index(namespace, field))
            .await
    }

    async fn list_indexes(&self, namespace: &str) -> Result<Vec<IndexInfo>> {
        let op = ops::list_indexes(namespace);
        self.around(op, move |_| self.inner.list_indexes(namespace))
            .await
    }
}

/// A transaction handle whose every step passes through the interceptor. Steps are never
/// repeated: a transaction is retried as a whole by its caller.
struct LayeredTx<I> {
    interceptor: Arc<I>,
    inner: Box<dyn Transaction>,
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<I: Around> Transaction for LayeredTx<I> {
    async fn get(&mut self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        let op = ops::tx_get(namespace, key);
        let fut = self.inner.get(namespace, key);
        self.interceptor.run(op, once(op, fut)).await
    }

    async fn put(
        &mut self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let op = ops::tx_put(namespace, key);
        let fut = self.inner.put(namespace, key, value, options);
        self.interceptor.run(op, once(op, fut)).await
    }

    async fn delete(
        &mut self,
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<bool> {
        let op = ops::tx_delete(namespace, key);
        let fut = self.inner.delete(namespace, key, condition);
        self.interceptor.run(op, once(op, fut)).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let op = ops::tx_commit();
        let LayeredTx { interceptor, inner } = *self;
        interceptor.run(op, once(op, inner.commit())).await
    }

    async fn commit_once(self: Box<Self>, namespace: &str, id: &OperationId) -> Result<Applied> {
        let op = ops::tx_commit_once(namespace);
        let LayeredTx { interceptor, inner } = *self;
        interceptor
            .run(op, once(op, inner.commit_once(namespace, id)))
            .await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        let op = ops::tx_rollback();
        let LayeredTx { interceptor, inner } = *self;
        interceptor.run(op, once(op, inner.rollback())).await
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<I: Around, T: EventStore + ?Sized> EventStore for Layered<I, T> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let op = ops::append(stream);
        let mut args = Some(events);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(events) => self.inner.append(stream, expected, events),
            None => exhausted(&op),
        })
        .await
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        let op = ops::read_stream(stream);
        self.around(op, move |_| self.inner.read_stream(stream, options))
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let op = ops::read_all();
        self.around(op, move |_| self.inner.read_all(after, filter, limit))
            .await
    }

    async fn head_position(&self) -> Result<u64> {
        let op = ops::head_position();
        self.around(op, move |_| self.inner.head_position()).await
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        // Only opening the subscription passes through the interceptor: the feed itself is
        // long-lived, and an error in it ends it (resume from the last position seen).
        let op = ops::subscribe();
        self.around(op, move |_| self.inner.subscribe(after, filter.clone()))
            .await
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        let op = ops::save_snapshot(stream);
        let mut args = Some(state);
        self.around(op, move |attempt| match attempt.take(&mut args) {
            Some(state) => self.inner.save_snapshot(stream, version, state),
            None => exhausted(&op),
        })
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let op = ops::load_snapshot(stream);
        self.around(op, move |_| self.inner.load_snapshot(stream))
            .await
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<I: Around, T: Lock + ?Sized> Lock for Layered<I, T> {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        let op = ops::try_acquire(key);
        self.around(op, move |_| self.inner.try_acquire(key, ttl))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let op = ops::release(lease);
        self.around(op, move |_| self.inner.release(lease)).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let op = ops::extend(lease);
        self.around(op, move |_| self.inner.extend(lease, ttl))
            .await
    }

    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let op = ops::acquire(key, wait);
        self.around(op, move |_| self.inner.acquire(key, ttl, wait))
            .await
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<I: Around, T: RateLimiter + ?Sized> RateLimiter for Layered<I, T> {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        let op = ops::check(key, cost);
        self.around(op, move |_| self.inner.check(key, quota, cost))
            .await
    }

    async fn reset(&self, key: &str) -> Result<()> {
        let op = ops::reset(key);
        self.around(op, move |_| self.inner.reset(key)).await
    }
}
