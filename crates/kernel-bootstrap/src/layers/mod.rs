//! Layers: wrappers that implement the kernel traits over any inner implementation, in the
//! manner of object_store's wrappers and OpenDAL's layers, so they stack in any order and over
//! `Arc<dyn Trait>` as well as over a concrete driver.
//!
//! Two kinds live here:
//!
//! * **Interceptors** ([`Interceptor`]) run code around each call without changing its
//!   arguments: [`retry`], [`timeout`], [`circuit_breaker`], [`observe`]. One generic wrapper,
//!   [`Layered`], turns any interceptor into an implementation of all four traits (and wraps
//!   transaction handles), so a user can write their own interceptor in a few lines.
//! * **Scoping layers** change what a call may touch. One generic wrapper, [`scope::Scoped`],
//!   driven by a [`scope::ScopePolicy`], checks each call and maps its names before any I/O and
//!   maps them back on the way out. Two policies ship: [`tenant::Tenant`]
//!   ([`tenant::TenantScope`] rewrites every name into a tenant's space) and
//!   [`access::Principal`] ([`access::AccessControl`] checks permissions, renaming nothing);
//!   any `ScopePolicy + Clone` of your own is a [`Layer`] too.
//!
//! Every wrapper describes a call through the one operation table, [`ops`]: its role, name,
//! read / write access and whether it is safe to repeat, so the retry layer and access
//! control read the same facts. Every wrapper impl carries
//! `#[deny(clippy::missing_trait_methods)]`, so a method added to a trait (provided ones
//! included) cannot be forgotten by a wrapper.
//!
//! The kernel stacks the standard interceptors for each backend (see [`StandardLayers`]):
//!
//! ```text
//! caller -> Observed -> ShutdownGate -> CircuitBreaker -> Retry -> Timeout -> driver
//! ```
//!
//! and a caller who serves several tenants or principals stacks the scoping layers on top with
//! [`Stores::layer`]:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use kernel_bootstrap::layers::access::{Permission, Principal, Resource};
//! use kernel_bootstrap::layers::tenant::Tenant;
//! use kernel_bootstrap::{Kernel, KernelConfig};
//! use kernel_core::{json, ErrorCode, PutOptions};
//!
//! let kernel = Kernel::boot(KernelConfig::default()).await?;
//! let principal = Principal::new("billing-service")
//!     .allow(Resource::Namespace, "invoices*", Permission::ReadWrite)?;
//! // Inner first: the tenant rewrites names, access control checks the caller's own names.
//! let acme = kernel.stores().layer(&Tenant::new("acme")?).layer(&principal);
//! acme.storage.put("invoices", "1", json!({"total": 10}), PutOptions::new()).await?;
//! let denied = acme.storage.get("users", "alice").await.unwrap_err();
//! assert_eq!(denied.code(), ErrorCode::PermissionDenied);
//! // Another tenant sees nothing of acme's.
//! let globex = kernel.stores().layer(&Tenant::new("globex")?);
//! assert!(globex.storage.get("invoices", "1").await?.is_none());
//! # Ok(()) }
//! ```

pub mod access;
pub mod audit;
pub mod circuit_breaker;
pub mod fault;
mod layered;
pub mod observe;
pub mod ops;
pub mod retry;
pub mod scope;
pub mod shutdown;
mod standard;
pub mod tenant;
#[cfg(test)]
mod testing;
pub mod timeout;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kernel_core::{
    Error, EventFilter, EventStore, Lock, RateLimiter, RecordedEvent, Result, StorageDriver,
    validate,
};

use crate::config::{KernelConfig, Role, TimeoutSettings};

pub use layered::Layered;
pub use standard::Standard;

use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use observe::Observer;
use retry::RetryPolicy;
use timeout::TimeoutPolicy;

/// Whether an operation reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads only.
    Read,
    /// Changes state.
    Write,
}

/// One call passing through an interceptor: what it is and what it touches.
///
/// Layers read it to name the operation in errors, spans and metrics, to decide whether a retry
/// is safe (`repeatable`), and how long a call may legitimately take (`allowance`, e.g. a lock
/// wait).
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// The role (trait) the operation belongs to.
    pub role: Role,
    /// The operation's name: the trait method (`get`, `append`, `try_acquire`, `tx.commit`...).
    pub name: &'static str,
    /// Read or write.
    pub access: Access,
    /// Whether running it again after a failure cannot do harm nor change the answer's meaning
    /// (see the retry table in [`retry`]).
    pub repeatable: bool,
    /// The namespace involved, if any.
    pub namespace: Option<&'a str>,
    /// The document, lock or rate-limit key involved, if any.
    pub key: Option<&'a str>,
    /// The stream involved, if any.
    pub stream: Option<&'a str>,
    /// Time the operation may take on top of an ordinary call (a lock's `wait`).
    pub allowance: Duration,
}

impl<'a> Op<'a> {
    /// A new operation with nothing involved yet.
    pub fn new(role: Role, name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
        Op {
            role,
            name,
            access,
            repeatable,
            namespace: None,
            key: None,
            stream: None,
            allowance: Duration::ZERO,
        }
    }

    /// Sets the namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: &'a str) -> Op<'a> {
        self.namespace = Some(namespace);
        self
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: &'a str) -> Op<'a> {
        self.key = Some(key);
        self
    }

    /// Sets the stream.
    #[must_use]
    pub fn stream(mut self, stream: &'a str) -> Op<'a> {
        self.stream = Some(stream);
        self
    }

    /// Sets the extra time allowance.
    #[must_use]
    pub fn allowance(mut self, allowance: Duration) -> Op<'a> {
        self.allowance = allowance;
        self
    }

    /// Adds the operation and what it touches to an error a layer raises itself (errors from
    /// the inner store already name what they involve).
    pub fn annotate(&self, mut error: Error) -> Error {
        error = error.with_operation(self.name);
        if let Some(ns) = self.namespace {
            error = error.with_context("namespace", validate::escape(ns));
        }
        if let Some(key) = self.key {
            error = error.with_context("key", validate::escape(key));
        }
        if let Some(stream) = self.stream {
            error = error.with_context("stream", validate::escape(stream));
        }
        error
    }
}

/// Tells a call whether the interceptor may run it again, so owned arguments are cloned only
/// when a later attempt could need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Another attempt may follow: keep the arguments.
    Again,
    /// No attempt follows: the arguments may be moved into this one.
    Final,
}

impl Attempt {
    /// Takes the arguments for this attempt: a clone while more may follow, the originals on
    /// the final one. `None` once the originals are gone (an interceptor broke the protocol by
    /// calling again after `Final`).
    pub fn take<T: Clone>(self, slot: &mut Option<T>) -> Option<T> {
        match self {
            Attempt::Again => slot.clone(),
            Attempt::Final => slot.take(),
        }
    }
}

/// The call an interceptor wraps: invoke it once per attempt.
pub type Call<'a, R> = Box<dyn FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a>;

/// Code that runs around every call of a [`Layered`] store.
///
/// An interceptor calls `call` once with [`Attempt::Final`] (timeouts, breakers, observers) or
/// several times (retries, passing [`Attempt::Again`] while more attempts may follow), and
/// returns the outcome. It must never call again after passing `Final`.
///
/// ```
/// use futures::future::BoxFuture;
/// use kernel_bootstrap::layers::{Attempt, Call, Interceptor, Op};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Counts calls.
/// #[derive(Debug, Default)]
/// struct Counting(AtomicU64);
///
/// impl Interceptor for Counting {
///     fn around<'a, R: Send + 'a>(
///         &'a self,
///         _op: Op<'a>,
///         mut call: Call<'a, R>,
///     ) -> BoxFuture<'a, kernel_core::Result<R>> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         call(Attempt::Final)
///     }
/// }
/// ```
pub trait Interceptor: Send + Sync + fmt::Debug + 'static {
    /// Runs `call` (once or more) for `op` and returns the outcome.
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>>;
}

/// How a wrapper runs one call: what [`Layered`] is generic over.
///
/// Every [`Interceptor`] is one (it boxes the call and its own future: any interceptor, written
/// in a few lines). The kernel's standard stack ([`StandardLayers`]) implements it directly, so
/// its five layers run inline in the wrapper's future, with no allocation of their own per call.
pub trait Around: Send + Sync + fmt::Debug + 'static {
    /// Runs `call` (once, or again with [`Attempt::Again`] while more attempts may follow) for
    /// `op` and returns the outcome.
    fn run<'a, R, C>(&'a self, op: Op<'a>, call: C) -> impl Future<Output = Result<R>> + Send + 'a
    where
        R: Send + 'a,
        C: FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a;
}

impl<I: Interceptor> Around for I {
    fn run<'a, R, C>(&'a self, op: Op<'a>, call: C) -> impl Future<Output = Result<R>> + Send + 'a
    where
        R: Send + 'a,
        C: FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a,
    {
        self.around(op, Box::new(call))
    }
}

/// The four stores of a kernel, as trait objects: what layers wrap and callers use.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Documents.
    pub storage: Arc<dyn StorageDriver>,
    /// Events.
    pub events: Arc<dyn EventStore>,
    /// Locks.
    pub locks: Arc<dyn Lock>,
    /// Rate limits.
    pub rate_limiter: Arc<dyn RateLimiter>,
}

impl Stores {
    /// Wraps every store in `layer` (the new layer is outermost).
    #[must_use]
    pub fn layer(self, layer: &(impl Layer + ?Sized)) -> Stores {
        Stores {
            storage: layer.storage(self.storage),
            events: layer.events(self.events),
            locks: layer.locks(self.locks),
            rate_limiter: layer.rate_limiter(self.rate_limiter),
        }
    }
}

/// Something that wraps each of the four stores; used with [`Stores::layer`].
///
/// Every layer of this module implements it; an interceptor of your own gets it by wrapping it
/// in [`Intercept`].
pub trait Layer {
    /// Wraps the document store.
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver>;
    /// Wraps the event store.
    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore>;
    /// Wraps the lock service.
    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock>;
    /// Wraps the rate limiter.
    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter>;
}

/// Any [`Interceptor`] as a [`Layer`]: the four stores share the one interceptor (so a circuit
/// breaker's state, for instance, covers them all).
#[derive(Debug)]
pub struct Intercept<I>(pub Arc<I>);

impl<I> Intercept<I> {
    /// Wraps an interceptor.
    pub fn new(interceptor: I) -> Intercept<I> {
        Intercept(Arc::new(interceptor))
    }
}

impl<I: Interceptor> Layer for Intercept<I> {
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver> {
        Arc::new(Layered::shared(inner, self.0.clone()))
    }

    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(Layered::shared(inner, self.0.clone()))
    }

    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock> {
        Arc::new(Layered::shared(inner, self.0.clone()))
    }

    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        Arc::new(Layered::shared(inner, self.0.clone()))
    }
}

/// The settings of the standard layers, as the `[retry]`, `[timeouts]` and `[circuit_breaker]`
/// tables of the configuration give them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerSettings {
    /// The retry layer (`max_attempts == 1`: no retry layer).
    pub retry: RetryPolicy,
    /// The timeout layer.
    pub timeouts: TimeoutSettings,
    /// The circuit breaker (`enabled == false`: none).
    pub circuit_breaker: CircuitBreakerConfig,
}

impl LayerSettings {
    /// The layer settings of a configuration.
    pub fn from_config(config: &KernelConfig) -> LayerSettings {
        LayerSettings {
            retry: config.retry,
            timeouts: config.timeouts,
            circuit_breaker: config.circuit_breaker,
        }
    }

    /// Checks every setting; a `Config` error names the key.
    pub fn validate(&self) -> Result<()> {
        self.retry.validate()?;
        self.timeouts.validate()?;
        self.circuit_breaker.validate()
    }
}

/// The kernel's standard stack for one backend, innermost first: timeout, retry (when more
/// than one attempt is allowed), circuit breaker (when enabled), shutdown gate, observability.
///
/// Why this order:
///
/// * **Timeout innermost** bounds each single attempt at the driver, so a hung call becomes a
///   `Timeout` that the layers above can act on.
/// * **Retry above the timeout** repeats single attempts of operations that are safe to repeat.
/// * **Circuit breaker above the retry** counts *calls*, not attempts: a read that succeeded on
///   its second attempt is a success, and one call that failed after three attempts is one
///   failure, not three. While the circuit is open a call fails at once, without a retry
///   waiting on a dead backend.
/// * **Shutdown gate above the breaker** refuses every call once the kernel is shut down, with a
///   permanent error, before a retry or the breaker could mistake closed drivers for backend
///   trouble.
/// * **Observability outermost** records what the caller experiences: one span and one metric
///   sample per call, with the final outcome and the total latency including retries (each
///   retry is an event inside that span).
///
/// The five run as one wrapper, [`Standard`] (one [`Layered`] per store, no allocation of the
/// layers' own per call); each behaves exactly as its interceptor of this module does when
/// stacked in the order above.
#[derive(Debug, Clone)]
pub struct StandardLayers {
    stack: Arc<Standard>,
}

impl StandardLayers {
    /// The stack for one backend, named `backend` in breaker errors, spans and metrics (its
    /// circuit breaker is shared by every role that backend serves).
    pub fn new(backend: &str, settings: &LayerSettings) -> StandardLayers {
        StandardLayers {
            stack: Arc::new(Standard::new(
                Observer::new(backend),
                TimeoutPolicy::new(settings.timeouts.operation),
                (settings.retry.max_attempts > 1).then_some(settings.retry),
                settings
                    .circuit_breaker
                    .enabled
                    .then(|| Arc::new(CircuitBreaker::new(backend, settings.circuit_breaker))),
            )),
        }
    }

    /// The same stack without its retry layer, for a backend whose calls never fail with a
    /// transient error (an in-process store: no connection to lose, nothing to wait for). A
    /// retry layer there would only copy every write's arguments (a 1,000-entry batch, for
    /// `put_many`) for an attempt that never comes.
    #[must_use]
    pub fn without_retry(self) -> StandardLayers {
        StandardLayers {
            stack: Arc::new(self.stack.without_retry()),
        }
    }

    /// Closes the stack's shutdown gate: every later call through it fails at once with a
    /// permanent "shut down" error that no retry repeats and no breaker counts.
    pub fn close(&self) {
        self.stack.gate().close();
    }

    /// The circuit breaker, when enabled.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.stack.circuit_breaker()
    }
}

impl Layer for StandardLayers {
    fn storage(&self, inner: Arc<dyn StorageDriver>) -> Arc<dyn StorageDriver> {
        Arc::new(Layered::shared(inner, self.stack.clone()))
    }

    fn events(&self, inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(Layered::shared(inner, self.stack.clone()))
    }

    fn locks(&self, inner: Arc<dyn Lock>) -> Arc<dyn Lock> {
        Arc::new(Layered::shared(inner, self.stack.clone()))
    }

    fn rate_limiter(&self, inner: Arc<dyn RateLimiter>) -> Arc<dyn RateLimiter> {
        Arc::new(Layered::shared(inner, self.stack.clone()))
    }
}

/// `read_all` through a filter that only the layer can apply (a tenant's streams, a principal's
/// readable streams): pages through the inner log until it has `limit` events it may return,
/// or the log ends. `keep` may rewrite an event it keeps (to map its stream name back).
pub(crate) async fn read_all_kept<E: EventStore + ?Sized>(
    inner: &E,
    after: u64,
    filter: &EventFilter,
    limit: usize,
    keep: impl Fn(&mut RecordedEvent) -> bool,
) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    // Inner pages of at least 256: when the kept events are rare, pages of the caller's
    // `limit` (say 1) would cost a round trip per foreign event.
    let page_size = limit.max(256);
    let mut cursor = after;
    loop {
        let page = inner.read_all(cursor, filter, page_size).await?;
        let fetched = page.len();
        for mut e in page {
            cursor = cursor.max(e.position);
            if keep(&mut e) {
                out.push(e);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        // "At most `limit`": a short page may end a read, but an empty answer must mean the
        // log is exhausted, so keep paging while nothing was kept and the inner log goes on.
        if fetched == 0 || (fetched < page_size && !out.is_empty()) {
            return Ok(out);
        }
    }
}
