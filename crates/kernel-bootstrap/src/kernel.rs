//! The `Kernel` (four layered stores with health and shutdown), the [`KernelBuilder`] that
//! assembles one from any stores, and [`Backend`], the unit the builder manages.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kernel_core::{Error, EventStore, IndexSpec, Lock, RateLimiter, Result, StorageDriver};
use serde::Serialize;

use crate::config::{BackendKind, KernelConfig, Role};
use crate::layers::circuit_breaker::CircuitBreaker;
use crate::layers::{Layer, LayerSettings, StandardLayers, Stores};
use crate::pipeline::{ChangeFailure, ChangePipeline, PipelineConfig};

/// How long one health probe may take before the component counts as unhealthy.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;
type Shutdown = Box<dyn FnOnce() -> BoxFuture<'static, Result<()>> + Send>;

/// One backend as a kernel manages it: a name (in health reports, metrics and its circuit
/// breaker), the stores it serves, a health probe and a shutdown hook.
///
/// Any implementation of the traits can be a backend — a built-in driver, a third-party one,
/// a wrapped store, a test double:
///
/// ```
/// use std::sync::Arc;
/// use driver_memory::MemoryDriver;
/// use kernel_bootstrap::Backend;
///
/// let docs = MemoryDriver::new();
/// let backend = Backend::new("my-docs")
///     .storage(Arc::new(docs.clone()))
///     .on_shutdown(move || {
///         docs.shutdown();
///         Box::pin(async { Ok(()) })
///     });
/// assert_eq!(backend.name(), "my-docs");
/// ```
pub struct Backend {
    name: String,
    stores: [Option<RoleStore>; 4],
    probe: Option<Probe>,
    shutdown: Option<Shutdown>,
    in_process: bool,
}

#[derive(Clone)]
enum RoleStore {
    Storage(Arc<dyn StorageDriver>),
    Events(Arc<dyn EventStore>),
    Locks(Arc<dyn Lock>),
    RateLimits(Arc<dyn RateLimiter>),
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("roles", &self.roles().collect::<Vec<_>>())
            .field("probe", &self.probe.is_some())
            .field("shutdown", &self.shutdown.is_some())
            .field("in_process", &self.in_process)
            .finish()
    }
}

impl Backend {
    /// A backend serving no role yet.
    pub fn new(name: impl Into<String>) -> Backend {
        Backend {
            name: name.into(),
            stores: [None, None, None, None],
            probe: None,
            shutdown: None,
            in_process: false,
        }
    }

    /// Declares that the backend's calls never fail with a transient error: an in-process
    /// store, with no connection to lose and nothing to wait for. The kernel then puts no retry
    /// layer in front of it (the other standard layers stay): a retry layer could only copy
    /// every repeatable write's arguments — a whole 1,000-entry `put_many` — for a second
    /// attempt that never comes. [`Kernel::boot`] declares the built-in memory driver so.
    #[must_use]
    pub fn in_process(mut self) -> Backend {
        self.in_process = true;
        self
    }

    /// Serves every role with one driver (`D` implements all four traits), probed through
    /// [`StorageDriver::status`] — also when [`Backend::only`] keeps none of its documents
    /// role (a Redis serving locks alone is still probed). Add a shutdown hook with
    /// [`Backend::on_shutdown`].
    pub fn all<D>(name: impl Into<String>, driver: D) -> Backend
    where
        D: StorageDriver + EventStore + Lock + RateLimiter + 'static,
    {
        let name = name.into();
        let driver = Arc::new(driver);
        let probe = status_probe(name.clone(), driver.clone());
        let mut backend = Backend::new(name)
            .storage(driver.clone())
            .events(driver.clone())
            .locks(driver.clone())
            .rate_limiter(driver);
        backend.probe = Some(probe);
        backend
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The roles it serves.
    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        Role::ALL
            .into_iter()
            .filter(|r| self.stores[r.index()].is_some())
    }

    /// Serves the documents role.
    #[must_use]
    pub fn storage(mut self, store: Arc<dyn StorageDriver>) -> Backend {
        self.stores[Role::Storage.index()] = Some(RoleStore::Storage(store));
        self
    }

    /// Serves the events role.
    #[must_use]
    pub fn events(mut self, store: Arc<dyn EventStore>) -> Backend {
        self.stores[Role::Events.index()] = Some(RoleStore::Events(store));
        self
    }

    /// Serves the locks role.
    #[must_use]
    pub fn locks(mut self, store: Arc<dyn Lock>) -> Backend {
        self.stores[Role::Locks.index()] = Some(RoleStore::Locks(store));
        self
    }

    /// Serves the rate-limits role.
    #[must_use]
    pub fn rate_limiter(mut self, store: Arc<dyn RateLimiter>) -> Backend {
        self.stores[Role::RateLimits.index()] = Some(RoleStore::RateLimits(store));
        self
    }

    /// Keeps only the roles `keep` accepts (the configuration gives a driver some roles).
    #[must_use]
    pub fn only(mut self, keep: impl Fn(Role) -> bool) -> Backend {
        for role in Role::ALL {
            if !keep(role) {
                self.stores[role.index()] = None;
            }
        }
        self
    }

    /// Replaces the health probe. Without one, the backend is probed through the first store
    /// that can answer: `status()` of its documents store, else `head_position()` of its event
    /// store; a backend serving only locks or rate limits then always counts as healthy.
    #[must_use]
    pub fn probe(
        mut self,
        probe: impl Fn() -> BoxFuture<'static, Result<()>> + Send + Sync + 'static,
    ) -> Backend {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Runs `hook` once when the kernel shuts down (closing pools, ending subscriptions), or
    /// when [`KernelBuilder::build`] fails or hands the backend's roles to later backends. Its
    /// error is logged at `warn` with the backend's name, never dropped.
    #[must_use]
    pub fn on_shutdown(
        mut self,
        hook: impl FnOnce() -> BoxFuture<'static, Result<()>> + Send + 'static,
    ) -> Backend {
        self.shutdown = Some(Box::new(hook));
        self
    }

    fn default_probe(&self) -> Probe {
        let storage = self.stores.iter().flatten().find_map(|s| match s {
            RoleStore::Storage(s) => Some(s.clone()),
            _ => None,
        });
        let events = self.stores.iter().flatten().find_map(|s| match s {
            RoleStore::Events(e) => Some(e.clone()),
            _ => None,
        });
        match storage {
            Some(storage) => status_probe(self.name.clone(), storage),
            None => {
                let name = self.name.clone();
                Arc::new(move || {
                    let events = events.clone();
                    let name = name.clone();
                    Box::pin(async move {
                        if let Some(e) = events {
                            e.head_position()
                                .await
                                .map_err(|err| err.with_context("backend", name))?;
                        }
                        Ok(())
                    })
                })
            }
        }
    }
}

/// A probe through `status()`: healthy when the store answers and says it is.
fn status_probe(name: String, store: Arc<dyn StorageDriver>) -> Probe {
    Arc::new(move || {
        let store = store.clone();
        let name = name.clone();
        Box::pin(async move {
            let status = store.status().await?;
            if status.healthy {
                Ok(())
            } else {
                // The driver's reason (a lost connection, a data loss) is what an operator
                // reading the health report needs.
                let reason = status.details.get("error").map_or_else(
                    || "backend reports itself unhealthy".to_owned(),
                    |e| format!("backend reports itself unhealthy: {e}"),
                );
                Err(Error::unavailable(reason).with_context("backend", name))
            }
        })
    })
}

/// Assembles a [`Kernel`] from backends: any `Arc<dyn StorageDriver>` / `EventStore` / `Lock`
/// / `RateLimiter` per role, plus the settings of the standard layers and the pipeline.
/// [`Kernel::boot`] is one caller of it, with the built-in drivers the configuration names.
///
/// Each call to [`KernelBuilder::backend`] gives that backend the roles it serves, taking them
/// from backends added earlier; a backend left serving no role is not part of the kernel.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kernel_core::Result<()> {
/// use std::sync::Arc;
/// use driver_memory::MemoryDriver;
/// use kernel_bootstrap::{Backend, KernelBuilder};
/// use kernel_core::{PutOptions, json};
///
/// let kernel = KernelBuilder::new()
///     .backend(Backend::all("memory", MemoryDriver::new()))
///     // Documents from a store of our own (here another memory driver):
///     .backend(Backend::new("docs").storage(Arc::new(MemoryDriver::new())))
///     .build()
///     .await?;
/// kernel.storage().put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
/// let report = kernel.health().await;
/// assert_eq!(report.components[0].backend, "docs");
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct KernelBuilder {
    backends: Vec<Backend>,
    layers: LayerSettings,
    pipeline: PipelineConfig,
    config: Option<KernelConfig>,
    /// Field indexes declared once the kernel is built.
    indexes: Vec<(String, IndexSpec)>,
}

impl KernelBuilder {
    /// No backends, default layer and pipeline settings.
    pub fn new() -> KernelBuilder {
        KernelBuilder::default()
    }

    /// Adds a backend; it takes over every role it serves.
    #[must_use]
    pub fn backend(mut self, backend: Backend) -> KernelBuilder {
        for role in backend.roles().collect::<Vec<_>>() {
            for earlier in &mut self.backends {
                earlier.stores[role.index()] = None;
            }
        }
        self.backends.push(backend);
        self
    }

    /// Settings of the standard layers (retry, timeout, circuit breaker).
    #[must_use]
    pub fn layers(mut self, layers: LayerSettings) -> KernelBuilder {
        self.layers = layers;
        self
    }

    /// Settings of the change pipeline.
    #[must_use]
    pub fn pipeline(mut self, pipeline: PipelineConfig) -> KernelBuilder {
        self.pipeline = pipeline;
        self
    }

    /// Declares a field index on `namespace` when the kernel is built
    /// ([`StorageDriver::create_index`], through the layers; idempotent, so every boot may
    /// declare it). A storage backend without field indexes fails the build with
    /// `Unsupported`; so does an invalid namespace or path, with `InvalidInput`.
    #[must_use]
    pub fn index(mut self, namespace: impl Into<String>, spec: IndexSpec) -> KernelBuilder {
        self.indexes.push((namespace.into(), spec));
        self
    }

    /// Checks the settings, probes every backend once (failing with `Unavailable` naming the
    /// backend that did not answer within [`BOOT_PROBE_TIMEOUT`]), wraps each role's store in
    /// its backend's [`StandardLayers`], and starts the change pipeline. A role no backend
    /// serves is a `Config` error naming it. On failure every backend's shutdown hook runs, so
    /// nothing connected is left open.
    pub async fn build(self) -> Result<Kernel> {
        let (mut backends, retired): (Vec<Backend>, Vec<Backend>) = self
            .backends
            .into_iter()
            .partition(|b| b.roles().next().is_some());
        // A backend whose roles were all taken is closed at once: the builder owns it now.
        close_all(retired.into_iter().filter_map(|mut b| {
            let hook = b.shutdown.take()?;
            Some((b.name, hook))
        }))
        .await;
        let checked = self
            .layers
            .validate()
            .and(self.pipeline.validate())
            .and_then(|()| {
                match Role::ALL
                    .into_iter()
                    .find(|role| !backends.iter().any(|b| b.stores[role.index()].is_some()))
                {
                    Some(role) => Err(Error::config(
                        &format!("backends.{role}"),
                        format!("no backend serves the {role} role"),
                    )),
                    None => Ok(()),
                }
            });
        let mut probes = Vec::with_capacity(backends.len());
        let mut failure = checked.err();
        for backend in &backends {
            if failure.is_some() {
                break;
            }
            let probe = backend
                .probe
                .clone()
                .unwrap_or_else(|| backend.default_probe());
            let outcome = match tokio::time::timeout(BOOT_PROBE_TIMEOUT, probe()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::timeout(format!(
                    "the probe took longer than {} ms",
                    BOOT_PROBE_TIMEOUT.as_millis()
                ))),
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(backend = %backend.name, "kernel backend ready");
                    probes.push(probe);
                }
                Err(e) => {
                    failure = Some(
                        Error::unavailable(format!(
                            "backend {} failed its boot health check",
                            backend.name
                        ))
                        .with_context("backend", &backend.name)
                        .with_source(e),
                    );
                }
            }
        }
        if let Some(error) = failure {
            // Nothing will own these backends: close what was connected before failing.
            close_all(backends.iter_mut().filter_map(|b| {
                let hook = b.shutdown.take()?;
                Some((b.name.clone(), hook))
            }))
            .await;
            return Err(error);
        }
        let managed: Vec<Managed> = backends
            .iter_mut()
            .zip(probes)
            .map(|(backend, probe)| Managed {
                name: backend.name.clone(),
                layers: {
                    let layers = StandardLayers::new(&backend.name, &self.layers);
                    if backend.in_process {
                        layers.without_retry()
                    } else {
                        layers
                    }
                },
                probe,
                shutdown: std::sync::Mutex::new(backend.shutdown.take()),
            })
            .collect();
        let mut roles = [0usize; 4];
        let mut stores: [Option<RoleStore>; 4] = [None, None, None, None];
        for (i, backend) in backends.iter().enumerate() {
            for role in Role::ALL {
                if let Some(store) = &backend.stores[role.index()] {
                    roles[role.index()] = i;
                    stores[role.index()] = Some(store.clone());
                }
            }
        }
        let layered = |role: Role| &managed[roles[role.index()]].layers;
        let [
            Some(RoleStore::Storage(storage)),
            Some(RoleStore::Events(events)),
            Some(RoleStore::Locks(locks)),
            Some(RoleStore::RateLimits(rate_limiter)),
        ] = stores
        else {
            return Err(Error::internal(
                "a role's store is missing after assignment",
            ));
        };
        let storage = layered(Role::Storage).storage(storage);
        let events = layered(Role::Events).events(events);
        let locks = layered(Role::Locks).locks(locks);
        let rate_limiter = layered(Role::RateLimits).rate_limiter(rate_limiter);
        let pipeline = ChangePipeline::new(storage.clone(), events.clone(), self.pipeline);
        let kernel = Kernel {
            config: self.config,
            backends: managed,
            roles,
            storage,
            events,
            locks,
            rate_limiter,
            pipeline,
            shut_down: AtomicBool::new(false),
        };
        for (namespace, spec) in &self.indexes {
            if let Err(e) = kernel.storage.create_index(namespace, spec).await {
                // Nothing will own the kernel: close its backends before failing.
                kernel.shutdown().await;
                return Err(e
                    .with_context("namespace", namespace)
                    .with_context("field", kernel_core::validate::escape(&spec.field)));
            }
        }
        Ok(kernel)
    }
}

/// How long a backend's probe may take while building a kernel.
pub const BOOT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs shutdown hooks one by one, logging each failure with the backend's name.
async fn close_all(hooks: impl IntoIterator<Item = (String, Shutdown)>) {
    for (name, hook) in hooks {
        match hook().await {
            Ok(()) => tracing::info!(backend = %name, "kernel backend shut down"),
            Err(e) => tracing::warn!(
                backend = %name,
                error = %e,
                "kernel backend reported an error while shutting down"
            ),
        }
    }
}

/// A backend inside a built kernel.
struct Managed {
    name: String,
    layers: StandardLayers,
    probe: Probe,
    shutdown: std::sync::Mutex<Option<Shutdown>>,
}

/// The storage kernel: documents, events, locks and rate limits, each served by a backend and
/// wrapped in that backend's standard layers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kernel_core::Result<()> {
/// use kernel_bootstrap::{Kernel, KernelConfig};
/// use kernel_core::{PutOptions, json};
///
/// let kernel = Kernel::boot(KernelConfig::default()).await?; // memory everywhere
/// kernel.storage().put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
/// assert!(kernel.health().await.healthy);
/// kernel.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Kernel {
    config: Option<KernelConfig>,
    backends: Vec<Managed>,
    /// Index into `backends` of the backend serving each role.
    roles: [usize; 4],
    storage: Arc<dyn StorageDriver>,
    events: Arc<dyn EventStore>,
    locks: Arc<dyn Lock>,
    rate_limiter: Arc<dyn RateLimiter>,
    pipeline: ChangePipeline,
    shut_down: AtomicBool,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field(
                "backends",
                &self.backends.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .field("shut_down", &self.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// A builder, for a kernel over stores of your own.
    pub fn builder() -> KernelBuilder {
        KernelBuilder::new()
    }

    /// Reads the configuration from the environment (and `KERNEL_CONFIG_FILE`) and boots.
    pub async fn from_env() -> Result<Kernel> {
        Kernel::boot(KernelConfig::from_env()?).await
    }

    /// Validates the configuration, connects each built-in backend it names once (roles on
    /// the same backend share it), and hands them to a [`KernelBuilder`] with the configured
    /// layer and pipeline settings. Fails naming the setting or the backend that failed.
    pub async fn boot(config: KernelConfig) -> Result<Kernel> {
        config.validate()?;
        // KernelConfig's Debug redacts every password (the drivers' configs do).
        tracing::info!(config = ?config, "booting the kernel");
        let mut builder = KernelBuilder::new()
            .layers(LayerSettings::from_config(&config))
            .pipeline(config.pipeline);
        for (namespace, field) in &config.storage.indexes.0 {
            builder = builder.index(namespace.clone(), IndexSpec::new(field.clone()));
        }
        let mut connected = Vec::new();
        for role in Role::ALL {
            let kind = config.backend(role);
            if connected.contains(&kind) {
                continue;
            }
            connected.push(kind);
            let mut backend = crate::drivers::connect(kind, &config)
                .await?
                .only(|r| config.backend(r) == kind);
            if kind == BackendKind::Memory {
                backend = backend.in_process();
            }
            builder = builder.backend(backend);
        }
        let mut kernel = builder.build().await?;
        kernel.config = Some(config);
        Ok(kernel)
    }

    /// The four layered stores together, to stack more layers on (a tenant, a principal, an
    /// interceptor of your own) with [`Stores::layer`]; the kernel's own stores stay as they are.
    pub fn stores(&self) -> Stores {
        Stores {
            storage: self.storage.clone(),
            events: self.events.clone(),
            locks: self.locks.clone(),
            rate_limiter: self.rate_limiter.clone(),
        }
    }

    /// The asynchronous change pipeline, writing through [`Kernel::storage`] and
    /// [`Kernel::events`].
    pub fn pipeline(&self) -> &ChangePipeline {
        &self.pipeline
    }

    /// The circuit breaker in front of the backend named `backend`, when breakers are enabled.
    pub fn circuit_breaker(&self, backend: &str) -> Option<&CircuitBreaker> {
        self.backends
            .iter()
            .find(|b| b.name == backend)?
            .layers
            .circuit_breaker()
    }

    /// The name of the backend serving a role.
    pub fn backend_of(&self, role: Role) -> &str {
        &self.backends[self.roles[role.index()]].name
    }

    /// Documents.
    pub fn storage(&self) -> &Arc<dyn StorageDriver> {
        &self.storage
    }

    /// Events.
    pub fn events(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    /// Locks.
    pub fn locks(&self) -> &Arc<dyn Lock> {
        &self.locks
    }

    /// Rate limits.
    pub fn rate_limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.rate_limiter
    }

    /// The configuration it booted from (secrets redacted in its Debug); `None` for a kernel
    /// assembled with [`KernelBuilder`].
    pub fn config(&self) -> Option<&KernelConfig> {
        self.config.as_ref()
    }

    /// Probes every backend once (with [`HEALTH_PROBE_TIMEOUT`]) and reports each role.
    ///
    /// A backend whose probe succeeds has its circuit breaker closed, so "healthy" and "calls
    /// go through" agree: a load balancer that sends traffic back on a green report does not
    /// meet a kernel still failing fast for the rest of a cool-down.
    pub async fn health(&self) -> HealthReport {
        let probes = futures::future::join_all(self.backends.iter().map(|b| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, (b.probe)()).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!(
                    "health probe took longer than {} ms",
                    HEALTH_PROBE_TIMEOUT.as_millis()
                ))
                .with_context("backend", &b.name)),
            };
            if outcome.is_ok() {
                if let Some(breaker) = b.layers.circuit_breaker() {
                    breaker.backend_answered_probe();
                }
            }
            (outcome, started.elapsed())
        }))
        .await;
        let components: Vec<ComponentHealth> = Role::ALL
            .iter()
            .map(|role| {
                let at = self.roles[role.index()];
                let (outcome, latency) = &probes[at];
                ComponentHealth {
                    component: role.as_str().to_owned(),
                    backend: self.backends[at].name.clone(),
                    healthy: outcome.is_ok(),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    error: outcome.as_ref().err().map(ToString::to_string),
                }
            })
            .collect();
        let healthy =
            !self.shut_down.load(Ordering::SeqCst) && components.iter().all(|c| c.healthy);
        HealthReport {
            healthy,
            components,
        }
    }

    /// Shuts down gracefully: stops the pipeline's intake, applies everything already queued,
    /// then runs every backend's shutdown hook (ending subscriptions, closing pools). Returns
    /// the pipeline failures no `flush` returned yet (each was also logged when it happened);
    /// a backend whose shutdown failed is logged at `warn` with its error. A second call does
    /// nothing and returns nothing.
    pub async fn shutdown(&self) -> Vec<ChangeFailure> {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        let pending = self.pipeline.pending();
        let failures = self.pipeline.close().await;
        tracing::info!(
            drained = pending,
            failed = failures.len(),
            "kernel change pipeline drained"
        );
        // From here on every call says "shut down", permanently, instead of reaching a closing
        // driver whose errors would read as backend trouble.
        for b in &self.backends {
            b.layers.close();
        }
        let hooks: Vec<(String, Shutdown)> = self
            .backends
            .iter()
            .filter_map(|b| {
                let hook = b
                    .shutdown
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()?;
                Some((b.name.clone(), hook))
            })
            .collect();
        close_all(hooks).await;
        failures
    }
}

/// Health of every role and an overall verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// Every component is healthy (and the kernel is not shut down).
    pub healthy: bool,
    /// One entry per role.
    pub components: Vec<ComponentHealth>,
}

/// Health of one role.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// `storage`, `events`, `locks` or `rate_limits`.
    pub component: String,
    /// The name of the backend serving it.
    pub backend: String,
    /// Whether its probe succeeded.
    pub healthy: bool,
    /// Probe latency in milliseconds.
    pub latency_ms: f64,
    /// The probe's error, if any.
    pub error: Option<String>,
}
