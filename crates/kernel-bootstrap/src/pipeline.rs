//! The asynchronous change pipeline: callers submit document writes and event appends without
//! waiting on I/O; a bounded queue applies them through the stores, in order per key / stream,
//! in parallel across keys; [`ChangePipeline::flush`] waits for everything submitted so far and
//! hands back every failure.
//!
//! How it holds its promises:
//!
//! * **Order per key.** Each change goes to one of `workers` lanes chosen by hashing its
//!   ordering key (`namespace` + `key` for documents, the stream for events); a lane applies its
//!   changes one at a time in submission order. Changes to different keys may land in different
//!   lanes and run in parallel. Order between a document and an event is not kept.
//! * **Bounded.** At most `capacity` changes are queued or being applied. [`ChangePipeline::submit`]
//!   waits for room; [`ChangePipeline::try_submit`] never waits and hands the change back in
//!   [`SubmitError::Full`].
//! * **No failure is silent.** A change that fails is logged (`error` level, naming its id,
//!   namespace / key or stream, and the error) and kept until a `flush` (or `close`) returns it,
//!   with the change itself so the caller can resubmit. Each failure is returned exactly once.
//!   A panic while applying a change is caught and reported as an `Internal` failure.
//! * **Retries** are the stores' business: the kernel's pipeline writes through the kernel's
//!   layered stores, so transient failures are retried under the retry policy before they count.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use kernel_bootstrap::{Change, Kernel, KernelConfig};
//! use kernel_core::{json, ExpectedVersion, NewEvent, StorageDriver};
//!
//! let kernel = Kernel::boot(KernelConfig::default()).await?;
//! let pipeline = kernel.pipeline();
//! pipeline.submit(Change::put("users", "ada", json!({"plan": "pro"}))).await?;
//! pipeline
//!     .submit(Change::append("user-ada", ExpectedVersion::Exact(5), vec![NewEvent::new("Upgraded", json!({}))]))
//!     .await?;
//! let failures = pipeline.flush().await;
//! assert_eq!(failures.len(), 1, "the stream is not at version 5");
//! assert!(kernel.storage().get("users", "ada").await?.is_some());
//! # Ok(()) }
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use kernel_core::{
    DeleteCondition, Error, EventStore, ExpectedVersion, NewEvent, PutOptions, Result,
    StorageDriver, Value, validate,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};
use tokio::task::JoinHandle;

/// Pipeline settings (`[pipeline]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Changes queued or being applied before submitters wait.
    pub capacity: usize,
    /// Lanes applying changes in parallel (order is kept within a lane).
    pub workers: usize,
}

impl Default for PipelineConfig {
    /// 1024 changes, 4 lanes.
    fn default() -> Self {
        PipelineConfig {
            capacity: 1024,
            workers: 4,
        }
    }
}

impl PipelineConfig {
    /// Checks the settings; a `Config` error names the `pipeline.*` key.
    pub fn validate(&self) -> kernel_core::Result<()> {
        crate::config::check_range("pipeline.capacity", self.capacity, 1..=1_000_000)?;
        crate::config::check_range("pipeline.workers", self.workers, 1..=256)
    }
}

/// One change to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A document put.
    Put {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Value.
        value: Value,
        /// Condition, TTL, metadata.
        options: PutOptions,
    },
    /// A document delete.
    Delete {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// Condition.
        condition: DeleteCondition,
    },
    /// An event append.
    Append {
        /// Stream.
        stream: String,
        /// Expected version.
        expected: ExpectedVersion,
        /// Events.
        events: Vec<NewEvent>,
    },
}

impl Change {
    /// An unconditional put.
    pub fn put(namespace: impl Into<String>, key: impl Into<String>, value: Value) -> Change {
        Change::Put {
            namespace: namespace.into(),
            key: key.into(),
            value,
            options: PutOptions::new(),
        }
    }

    /// A put with options.
    pub fn put_with(
        namespace: impl Into<String>,
        key: impl Into<String>,
        value: Value,
        options: PutOptions,
    ) -> Change {
        Change::Put {
            namespace: namespace.into(),
            key: key.into(),
            value,
            options,
        }
    }

    /// An unconditional delete.
    pub fn delete(namespace: impl Into<String>, key: impl Into<String>) -> Change {
        Change::Delete {
            namespace: namespace.into(),
            key: key.into(),
            condition: DeleteCondition::Always,
        }
    }

    /// An append.
    pub fn append(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Change {
        Change::Append {
            stream: stream.into(),
            expected,
            events,
        }
    }

    /// What the change touches, for logs and errors (never the value).
    pub fn target(&self) -> String {
        match self {
            // Not validated yet when a submission is refused: escape what reaches the logs.
            Change::Put { namespace, key, .. } | Change::Delete { namespace, key, .. } => {
                format!("{}/{}", validate::escape(namespace), validate::escape(key))
            }
            Change::Append { stream, .. } => format!("stream {}", validate::escape(stream)),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            Change::Put { namespace, key, .. } | Change::Delete { namespace, key, .. } => {
                validate::document(namespace, key)
            }
            Change::Append { stream, events, .. } => {
                validate::stream(stream)?;
                if events.is_empty() {
                    return Err(Error::invalid_input("append needs at least one event")
                        .with_context("stream", stream));
                }
                Ok(())
            }
        }
    }

    fn lane(&self, hasher: &RandomState, lanes: usize) -> usize {
        let hash = match self {
            Change::Put { namespace, key, .. } | Change::Delete { namespace, key, .. } => {
                hasher.hash_one((0u8, namespace, key))
            }
            Change::Append { stream, .. } => hasher.hash_one((1u8, stream)),
        };
        // The remainder is below `lanes`, which is a usize.
        usize::try_from(hash % lanes.max(1) as u64).unwrap_or(0)
    }
}

/// A change that failed, with the error. `id` is what `submit` returned for it.
#[derive(Debug)]
pub struct ChangeFailure {
    /// The submission id.
    pub id: u64,
    /// The change, to resubmit if wanted.
    pub change: Change,
    /// Why it failed.
    pub error: Error,
}

impl fmt::Display for ChangeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "change {} ({}) failed: {}",
            self.id,
            self.change.target(),
            self.error
        )
    }
}

/// Why a change was not accepted. Every variant gives the change back.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full (only from [`ChangePipeline::try_submit`]).
    Full(Box<Change>),
    /// The pipeline is closed.
    Closed(Box<Change>),
    /// The change breaks an input rule.
    Invalid(Box<Change>, Error),
}

impl SubmitError {
    /// The change that was not accepted.
    pub fn into_change(self) -> Change {
        match self {
            SubmitError::Full(c) | SubmitError::Closed(c) | SubmitError::Invalid(c, _) => *c,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(c) => write!(f, "change pipeline is full ({})", c.target()),
            SubmitError::Closed(c) => write!(f, "change pipeline is shut down ({})", c.target()),
            SubmitError::Invalid(c, e) => write!(f, "change rejected ({}): {e}", c.target()),
        }
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubmitError::Invalid(_, e) => Some(e),
            _ => None,
        }
    }
}

impl From<SubmitError> for Error {
    fn from(e: SubmitError) -> Error {
        match e {
            SubmitError::Full(c) => Error::unavailable("change pipeline queue is full")
                .with_context("change", c.target()),
            SubmitError::Closed(c) => Error::unavailable("change pipeline is shut down")
                .with_retryable(false)
                .with_context("change", c.target()),
            SubmitError::Invalid(_, e) => e,
        }
    }
}

/// A change on its way through a lane. The permit is its place in the bounded queue.
struct Job {
    id: u64,
    change: Change,
    _permit: OwnedSemaphorePermit,
}

/// The submitting side of a lane. `enqueued` counts jobs sent; the lane publishes how many it
/// has finished on `done`, so `flush` waits for `done >= enqueued` as seen when it started:
/// lanes are first-in first-out, so that covers every change submitted before.
struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    enqueued: u64,
    done: watch::Receiver<u64>,
}

/// What the lanes share. Holds no lane sender, so dropping the pipeline ends the lanes once
/// they have drained.
struct Applier {
    storage: Arc<dyn StorageDriver>,
    events: Arc<dyn EventStore>,
    pending: AtomicUsize,
    failures: Mutex<Vec<ChangeFailure>>,
}

impl Applier {
    fn failures(&self) -> MutexGuard<'_, Vec<ChangeFailure>> {
        // A push or a take never leaves the vector half-changed.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn apply(&self, change: &Change) -> Result<()> {
        match change.clone() {
            Change::Put {
                namespace,
                key,
                value,
                options,
            } => self
                .storage
                .put(&namespace, &key, value, options)
                .await
                .map(drop),
            Change::Delete {
                namespace,
                key,
                condition,
            } => self
                .storage
                .delete(&namespace, &key, condition)
                .await
                .map(drop),
            Change::Append {
                stream,
                expected,
                events,
            } => self
                .events
                .append(&stream, expected, events)
                .await
                .map(drop),
        }
    }

    async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        done: watch::Sender<u64>,
    ) {
        while let Some(Job {
            id,
            change,
            _permit,
        }) = jobs.recv().await
        {
            let outcome = AssertUnwindSafe(self.apply(&change))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Error::internal("applying the change panicked")));
            if let Err(error) = outcome {
                tracing::error!(
                    change_id = id,
                    change = %change.target(),
                    error = %error,
                    "change pipeline failed to apply a change; flush() returns it"
                );
                self.failures().push(ChangeFailure { id, change, error });
            }
            self.pending.fetch_sub(1, Ordering::SeqCst);
            done.send_modify(|n| *n += 1);
            // `_permit` drops here, making room for one more change.
        }
    }
}

/// The asynchronous change pipeline. See the module docs.
pub struct ChangePipeline {
    applier: Arc<Applier>,
    permits: Arc<Semaphore>,
    lanes: Mutex<Option<Vec<Lane>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    lane_count: usize,
    hasher: RandomState,
    next_id: AtomicU64,
    closed: AtomicBool,
    config: PipelineConfig,
}

impl fmt::Debug for ChangePipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangePipeline")
            .field("config", &self.config)
            .field("pending", &self.pending())
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl ChangePipeline {
    /// Starts the lanes (on the current tokio runtime) writing through `storage` and `events`.
    pub fn new(
        storage: Arc<dyn StorageDriver>,
        events: Arc<dyn EventStore>,
        config: PipelineConfig,
    ) -> ChangePipeline {
        let lane_count = config.workers.max(1);
        let applier = Arc::new(Applier {
            storage,
            events,
            pending: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
        });
        let mut lanes = Vec::with_capacity(lane_count);
        let mut workers = Vec::with_capacity(lane_count);
        for _ in 0..lane_count {
            // Unbounded per lane, bounded overall by the semaphore: one limit for the whole
            // pipeline however the keys spread over lanes.
            let (jobs, rx) = mpsc::unbounded_channel();
            let (done_tx, done) = watch::channel(0u64);
            lanes.push(Lane {
                jobs,
                enqueued: 0,
                done,
            });
            workers.push(tokio::spawn(applier.clone().run(rx, done_tx)));
        }
        ChangePipeline {
            applier,
            permits: Arc::new(Semaphore::new(config.capacity.max(1))),
            lanes: Mutex::new(Some(lanes)),
            workers: Mutex::new(workers),
            lane_count,
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> PipelineConfig {
        self.config
    }

    /// Changes submitted and not yet applied (queued or in flight).
    pub fn pending(&self) -> usize {
        self.applier.pending.load(Ordering::SeqCst)
    }

    /// Whether [`ChangePipeline::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Queues a change, waiting for room while the queue is full. Returns the change's id
    /// (failures carry it). Does not wait for the change to be applied.
    pub async fn submit(&self, change: Change) -> Result<u64, SubmitError> {
        if let Err(e) = self.admit(&change) {
            return Err(e.attach(change));
        }
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => self.enqueue(change, permit),
            Err(_closed) => Err(SubmitError::Closed(Box::new(change))),
        }
    }

    /// Queues a change if there is room now; otherwise [`SubmitError::Full`] with the change.
    pub fn try_submit(&self, change: Change) -> Result<u64, SubmitError> {
        if let Err(e) = self.admit(&change) {
            return Err(e.attach(change));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => self.enqueue(change, permit),
            Err(TryAcquireError::NoPermits) => Err(SubmitError::Full(Box::new(change))),
            Err(TryAcquireError::Closed) => Err(SubmitError::Closed(Box::new(change))),
        }
    }

    fn admit(&self, change: &Change) -> Result<(), Refusal> {
        if self.is_closed() {
            return Err(Refusal::Closed);
        }
        change.validate().map_err(Refusal::Invalid)
    }

    fn lanes(&self) -> MutexGuard<'_, Option<Vec<Lane>>> {
        // Sending (with its count) and taking the lanes out are all-or-nothing under this lock.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enqueue(&self, change: Change, permit: OwnedSemaphorePermit) -> Result<u64, SubmitError> {
        let index = change.lane(&self.hasher, self.lane_count);
        let mut lanes = self.lanes();
        let Some(lane) = lanes.as_mut().and_then(|l| l.get_mut(index)) else {
            return Err(SubmitError::Closed(Box::new(change)));
        };
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.applier.pending.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            id,
            change,
            _permit: permit,
        };
        match lane.jobs.send(job) {
            Ok(()) => {
                lane.enqueued += 1;
                Ok(id)
            }
            Err(mpsc::error::SendError(job)) => {
                // The lane ended (its runtime is shutting down): hand the change back.
                self.applier.pending.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::Closed(Box::new(job.change)))
            }
        }
    }

    /// Waits until every change submitted before this call is applied (or failed), then
    /// returns every failure not yet returned, in no particular order.
    #[must_use = "the failures are the only report of changes that were not applied"]
    pub async fn flush(&self) -> Vec<ChangeFailure> {
        let waits: Vec<(u64, watch::Receiver<u64>)> = self
            .lanes()
            .iter()
            .flatten()
            .map(|lane| (lane.enqueued, lane.done.clone()))
            .collect();
        for (target, mut done) in waits {
            if done.wait_for(|n| *n >= target).await.is_err() {
                // Only a lane whose runtime is shutting down ends with work unfinished.
                tracing::error!("a change pipeline lane ended before finishing its changes");
            }
        }
        std::mem::take(&mut *self.applier.failures())
    }

    /// Stops intake (later submits get [`SubmitError::Closed`], waiting ones wake with it),
    /// applies everything already queued, waits for the lanes to end, and returns every
    /// failure not yet returned. A second call returns what failed since (normally nothing).
    #[must_use = "the failures are the only report of changes that were not applied"]
    pub async fn close(&self) -> Vec<ChangeFailure> {
        self.closed.store(true, Ordering::SeqCst);
        self.permits.close();
        drop(self.lanes().take());
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for worker in workers {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "a change pipeline lane ended abnormally");
            }
        }
        std::mem::take(&mut *self.applier.failures())
    }
}

enum Refusal {
    Closed,
    Invalid(Error),
}

impl Refusal {
    fn attach(self, change: Change) -> SubmitError {
        match self {
            Refusal::Closed => SubmitError::Closed(Box::new(change)),
            Refusal::Invalid(e) => SubmitError::Invalid(Box::new(change), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use kernel_core::{
        ErrorCode, EventStore, ExpectedVersion, Limits, NewEvent, ReadStream, StorageDriver, json,
    };

    use futures::future::BoxFuture;

    use super::{Change, ChangePipeline, PipelineConfig, SubmitError};
    use crate::layers::fault::flaky;
    use crate::layers::{Attempt, Call, Interceptor, Layered, Op};

    fn pipeline_over(driver: MemoryDriver, capacity: usize, workers: usize) -> ChangePipeline {
        let d = Arc::new(driver);
        ChangePipeline::new(d.clone(), d, PipelineConfig { capacity, workers })
    }

    #[tokio::test]
    async fn applies_in_order_per_key() {
        let mem = MemoryDriver::new();
        let p = pipeline_over(mem.clone(), 64, 4);
        for i in 0..300 {
            p.submit(Change::put("o", format!("k{}", i % 3), json!(i)))
                .await
                .unwrap();
            p.submit(Change::append(
                format!("s-{}", i % 2),
                ExpectedVersion::Exact(i / 2),
                vec![NewEvent::new("E", json!(i))],
            ))
            .await
            .unwrap();
        }
        assert!(p.flush().await.is_empty());
        assert_eq!(p.pending(), 0);
        for k in 0..3 {
            let e = mem.get("o", &format!("k{k}")).await.unwrap().unwrap();
            assert_eq!(e.value, json!(297 + k));
            assert_eq!(e.version, 100, "every put applied once");
        }
        let s0 = mem.read_stream("s-0", ReadStream::forward()).await.unwrap();
        let payloads: Vec<_> = s0.iter().map(|e| e.payload.clone()).collect();
        let expected: Vec<_> = (0..300).step_by(2).map(|i| json!(i)).collect();
        assert_eq!(payloads, expected, "appends kept their order");
    }

    /// Holds every call on key `a` until a call on a key starting with `b` has finished.
    #[derive(Debug, Default)]
    struct Gate(tokio::sync::Notify);

    impl Interceptor for Gate {
        fn around<'a, R: Send + 'a>(
            &'a self,
            op: Op<'a>,
            mut call: Call<'a, R>,
        ) -> BoxFuture<'a, kernel_core::Result<R>> {
            Box::pin(async move {
                if op.key == Some("a") {
                    let opened = tokio::time::timeout(Duration::from_secs(5), self.0.notified());
                    if opened.await.is_err() {
                        return Err(kernel_core::Error::timeout("b never ran while a waited"));
                    }
                }
                let outcome = call(Attempt::Final).await;
                if op.key.is_some_and(|k| k.starts_with('b')) {
                    self.0.notify_one();
                }
                outcome
            })
        }
    }

    #[tokio::test]
    async fn different_keys_run_in_parallel() {
        let store = Arc::new(Layered::new(Arc::new(MemoryDriver::new()), Gate::default()));
        let p = ChangePipeline::new(
            store.clone(),
            Arc::new(MemoryDriver::new()),
            PipelineConfig {
                capacity: 64,
                workers: 64,
            },
        );
        let lane = |k: &str| Change::put("p", k, json!(0)).lane(&p.hasher, 64);
        let b = (0..1000)
            .map(|i| format!("b{i}"))
            .find(|b| lane(b) != lane("a"))
            .unwrap();
        // `a` is submitted first and cannot finish until `b…` has: only a separate lane lets it.
        p.submit(Change::put("p", "a", json!(1))).await.unwrap();
        p.submit(Change::put("p", b, json!(2))).await.unwrap();
        let failures = p.flush().await;
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(store.count("p", None).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn full_queue_pushes_back() {
        let store = Arc::new(flaky(MemoryDriver::new()));
        store.faults().set_delay(Duration::from_millis(150));
        let p = Arc::new(ChangePipeline::new(
            store.clone(),
            Arc::new(MemoryDriver::new()),
            PipelineConfig {
                capacity: 2,
                workers: 1,
            },
        ));
        p.try_submit(Change::put("b", "1", json!(1))).unwrap();
        p.try_submit(Change::put("b", "2", json!(2))).unwrap();
        assert_eq!(p.pending(), 2);
        match p.try_submit(Change::put("b", "3", json!(3))) {
            Err(SubmitError::Full(c)) => assert_eq!(*c, Change::put("b", "3", json!(3))),
            other => panic!("expected Full, got {other:?}"),
        }
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.submit(Change::put("b", "3", json!(3))).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "submit waits while the queue is full"
        );
        waiting.await.unwrap().unwrap();
        assert!(p.flush().await.is_empty());
        assert_eq!(store.count("b", None).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn every_failure_is_returned_once_and_logged() {
        let small = MemoryDriver::with_limits(Limits {
            max_value_bytes: 16,
            max_depth: 8,
        });
        let p = pipeline_over(small.clone(), 16, 2);
        let ok = p.submit(Change::put("f", "ok", json!(1))).await.unwrap();
        let big = p
            .submit(Change::put("f", "big", json!("x".repeat(100))))
            .await
            .unwrap();
        let conflict = p
            .submit(Change::append(
                "acct-1",
                ExpectedVersion::Exact(3),
                vec![NewEvent::new("E", json!({}))],
            ))
            .await
            .unwrap();
        assert!(ok < big && big < conflict);
        let mut failures = p.flush().await;
        failures.sort_by_key(|f| f.id);
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].id, big);
        assert_eq!(failures[0].error.code(), ErrorCode::InvalidInput);
        assert!(matches!(&failures[0].change, Change::Put { key, .. } if key == "big"));
        assert_eq!(failures[1].id, conflict);
        assert_eq!(failures[1].error.code(), ErrorCode::Conflict);
        assert!(failures[1].to_string().contains("stream acct-1"));
        assert!(p.flush().await.is_empty(), "each failure is returned once");
        assert!(small.exists("f", "ok").await.unwrap());
    }

    #[tokio::test]
    async fn invalid_changes_are_refused_at_submit() {
        let p = pipeline_over(MemoryDriver::new(), 4, 1);
        match p.submit(Change::put("bad ns", "k", json!(1))).await {
            Err(SubmitError::Invalid(_, e)) => assert_eq!(e.code(), ErrorCode::InvalidInput),
            other => panic!("expected Invalid, got {other:?}"),
        }
        let e: kernel_core::Error = p
            .try_submit(Change::append("nostream", ExpectedVersion::Any, vec![]))
            .unwrap_err()
            .into();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert_eq!(p.pending(), 0);
    }

    #[tokio::test]
    async fn close_drains_then_refuses() {
        let store = Arc::new(flaky(MemoryDriver::new()));
        store.faults().set_delay(Duration::from_millis(5));
        let p = ChangePipeline::new(
            store.clone(),
            Arc::new(MemoryDriver::new()),
            PipelineConfig {
                capacity: 100,
                workers: 2,
            },
        );
        for i in 0..40 {
            p.submit(Change::put("d", format!("k{i}"), json!(i)))
                .await
                .unwrap();
        }
        assert!(p.pending() > 0);
        assert!(p.close().await.is_empty());
        assert_eq!(p.pending(), 0);
        assert_eq!(store.count("d", None).await.unwrap(), 40);
        assert!(matches!(
            p.submit(Change::delete("d", "k1")).await,
            Err(SubmitError::Closed(_))
        ));
        assert!(matches!(
            p.try_submit(Change::delete("d", "k1")),
            Err(SubmitError::Closed(_))
        ));
        assert!(p.close().await.is_empty(), "a second close is harmless");
        assert!(p.flush().await.is_empty());
    }

    #[tokio::test]
    async fn events_pipeline_appends_through_the_event_store() {
        let mem = MemoryDriver::new();
        let p = pipeline_over(mem.clone(), 8, 2);
        p.submit(Change::append(
            "cart-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", json!({}))],
        ))
        .await
        .unwrap();
        assert!(p.flush().await.is_empty());
        assert_eq!(mem.head_position().await.unwrap(), 1);
    }
}
