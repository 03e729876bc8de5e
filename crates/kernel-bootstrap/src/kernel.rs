//! The `Kernel`: the configured drivers behind the four traits, with health and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use driver_memory::MemoryDriver;
use driver_postgres::{PostgresConfig, PostgresDriver};
use driver_redis::{RedisConfig, RedisDriver};
use kernel_core::{Error, EventStore, Lock, RateLimiter, Result, StorageDriver};
use serde::Serialize;

use crate::config::{BackendKind, KernelConfig, ResolvedConfig, Role};
use crate::layers::{Layer, StandardLayers, Stores, circuit_breaker::CircuitBreaker};
use crate::pipeline::{ChangeFailure, ChangePipeline};

/// How long one health probe may take before the component counts as unhealthy.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One booted backend, shared by every role it serves.
#[derive(Debug, Clone)]
enum Backend {
    Memory(MemoryDriver),
    Postgres(PostgresDriver),
    Redis(RedisDriver),
}

/// Runs the same expression on whichever driver a backend holds (every driver implements
/// every trait, so the arms differ only in type).
macro_rules! on_driver {
    ($backend:expr, $d:ident => $body:expr) => {
        match $backend {
            Backend::Memory($d) => $body,
            Backend::Postgres($d) => $body,
            Backend::Redis($d) => $body,
        }
    };
}

impl Backend {
    fn kind(&self) -> BackendKind {
        match self {
            Backend::Memory(_) => BackendKind::Memory,
            Backend::Postgres(_) => BackendKind::Postgres,
            Backend::Redis(_) => BackendKind::Redis,
        }
    }

    fn storage(&self) -> Arc<dyn StorageDriver> {
        on_driver!(self, d => Arc::new(d.clone()))
    }

    fn events(&self) -> Arc<dyn EventStore> {
        on_driver!(self, d => Arc::new(d.clone()))
    }

    fn locks(&self) -> Arc<dyn Lock> {
        on_driver!(self, d => Arc::new(d.clone()))
    }

    fn rate_limiter(&self) -> Arc<dyn RateLimiter> {
        on_driver!(self, d => Arc::new(d.clone()))
    }

    async fn probe(&self) -> Result<()> {
        let status = on_driver!(self, d => StorageDriver::status(d).await?);
        if status.healthy {
            Ok(())
        } else {
            Err(Error::unavailable("backend reports itself unhealthy")
                .with_context("backend", self.kind()))
        }
    }

    async fn shutdown(&self) {
        match self {
            Backend::Memory(d) => d.shutdown(),
            Backend::Postgres(d) => d.shutdown().await,
            Backend::Redis(d) => {
                if let Err(e) = d.shutdown().await {
                    tracing::warn!(backend = "redis", error = %e, "redis shutdown reported an error");
                }
            }
        }
    }
}

async fn connect(kind: BackendKind, config: &ResolvedConfig) -> Result<Backend> {
    match kind {
        BackendKind::Memory => Ok(Backend::Memory(MemoryDriver::with_limits(config.limits))),
        BackendKind::Redis => {
            let settings = config.redis.as_ref().ok_or_else(|| {
                Error::config(
                    "REDIS_URL",
                    "a role uses redis but no Redis settings resolved",
                )
            })?;
            let driver = RedisDriver::connect(RedisConfig {
                url: settings.url.expose().to_owned(),
                pool_size: settings.pool_size,
                connect_timeout: settings.connect_timeout,
                operation_timeout: settings.operation_timeout,
                key_prefix: settings.key_prefix.clone(),
                limits: config.limits,
            })
            .await?;
            Ok(Backend::Redis(driver))
        }
        BackendKind::Postgres => {
            let settings = config.postgres.as_ref().ok_or_else(|| {
                Error::config(
                    "DATABASE_URL",
                    "a role uses postgres but no Postgres settings resolved",
                )
            })?;
            let mut pg = PostgresConfig::new(settings.url.expose());
            pg.pool_size = settings.pool_size;
            pg.connect_timeout = settings.connect_timeout;
            pg.statement_timeout = settings.operation_timeout;
            pg.pool_wait_timeout = settings.operation_timeout;
            pg.migrate_on_boot = settings.migrate_on_boot;
            pg.subscription.poll_interval = settings.poll_interval;
            pg.limits = config.limits;
            Ok(Backend::Postgres(PostgresDriver::connect(pg).await?))
        }
    }
}

/// The storage kernel: documents, events, locks and rate limits, each served by the backend
/// the configuration chose.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kernel_core::Result<()> {
/// use kernel_bootstrap::{Kernel, KernelConfig};
/// use kernel_core::{json, PutOptions};
///
/// let kernel = Kernel::boot(KernelConfig::default()).await?; // memory everywhere
/// kernel.storage().put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
/// assert!(kernel.health().await.healthy);
/// kernel.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Kernel {
    config: ResolvedConfig,
    backends: Vec<Backend>,
    storage: Arc<dyn StorageDriver>,
    events: Arc<dyn EventStore>,
    locks: Arc<dyn Lock>,
    rate_limiter: Arc<dyn RateLimiter>,
    /// The standard layers of each booted backend, in `backends` order.
    layers: Vec<StandardLayers>,
    pipeline: ChangePipeline,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("config", &self.config)
            .field("shut_down", &self.shut_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Reads the configuration from the environment (and `KERNEL_CONFIG_FILE`) and boots.
    pub async fn from_env() -> Result<Kernel> {
        Kernel::boot(KernelConfig::from_env()?).await
    }

    /// Resolves the configuration, connects each backend once (roles on the same backend share
    /// it), health-checks them, and fails naming the backend that failed. Each role's store is
    /// wrapped in its backend's [`StandardLayers`] (timeout, circuit breaker, retry,
    /// observability), and the change pipeline writes through those layered stores.
    pub async fn boot(config: KernelConfig) -> Result<Kernel> {
        let resolved = config.resolve()?;
        // The resolved configuration's Debug redacts every password.
        tracing::info!(config = ?resolved, "booting the kernel");
        let mut backends: Vec<Backend> = Vec::new();
        for role in Role::ALL {
            let kind = resolved.backend(role);
            if !backends.iter().any(|b| b.kind() == kind) {
                let backend = connect(kind, &resolved).await?;
                backend.probe().await.map_err(|e| {
                    Error::unavailable(format!("{kind} backend failed its boot health check"))
                        .with_context("backend", kind)
                        .with_source(e)
                })?;
                tracing::info!(backend = %kind, "kernel backend connected");
                backends.push(backend);
            }
        }
        let pick = |role: Role| -> Result<&Backend> {
            let kind = resolved.backend(role);
            backends.iter().find(|b| b.kind() == kind).ok_or_else(|| {
                Error::internal("no backend booted for a role").with_context("role", role.as_str())
            })
        };
        let layers: Vec<StandardLayers> = backends
            .iter()
            .map(|b| StandardLayers::for_backend(b.kind(), &resolved))
            .collect();
        let stack = |role: Role| -> Result<&StandardLayers> {
            let kind = resolved.backend(role);
            let at = backends.iter().position(|b| b.kind() == kind);
            at.and_then(|i| layers.get(i)).ok_or_else(|| {
                Error::internal("no layers built for a role").with_context("role", role.as_str())
            })
        };
        let storage = stack(Role::Storage)?.storage(pick(Role::Storage)?.storage());
        let events = stack(Role::Events)?.events(pick(Role::Events)?.events());
        let locks = stack(Role::Locks)?.locks(pick(Role::Locks)?.locks());
        let rate_limiter =
            stack(Role::RateLimits)?.rate_limiter(pick(Role::RateLimits)?.rate_limiter());
        let pipeline = ChangePipeline::new(storage.clone(), events.clone(), resolved.pipeline);
        Ok(Kernel {
            config: resolved,
            backends,
            storage,
            events,
            locks,
            rate_limiter,
            layers,
            pipeline,
            shut_down: AtomicBool::new(false),
        })
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

    /// The circuit breaker in front of a backend, when breakers are enabled and the backend
    /// serves a role.
    pub fn circuit_breaker(&self, backend: BackendKind) -> Option<&CircuitBreaker> {
        let at = self.backends.iter().position(|b| b.kind() == backend)?;
        self.layers.get(at)?.circuit_breaker()
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

    /// The resolved configuration (secrets redacted in its Debug).
    pub fn config(&self) -> &ResolvedConfig {
        &self.config
    }

    /// Probes every backend once (with [`HEALTH_PROBE_TIMEOUT`]) and reports each role.
    pub async fn health(&self) -> HealthReport {
        let probes = futures::future::join_all(self.backends.iter().map(|b| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, b.probe()).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!(
                    "health probe took longer than {} ms",
                    HEALTH_PROBE_TIMEOUT.as_millis()
                ))
                .with_context("backend", b.kind())),
            };
            (b.kind(), outcome, started.elapsed())
        }))
        .await;
        let components: Vec<ComponentHealth> = Role::ALL
            .iter()
            .filter_map(|role| {
                let kind = self.config.backend(*role);
                let (_, outcome, latency) = probes.iter().find(|(k, _, _)| *k == kind)?;
                Some(ComponentHealth {
                    component: role.as_str().to_owned(),
                    backend: kind.as_str().to_owned(),
                    healthy: outcome.is_ok(),
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    error: outcome.as_ref().err().map(ToString::to_string),
                })
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
    /// then ends subscriptions and closes every backend (pools included). Returns the pipeline
    /// failures no `flush` returned yet (each was also logged when it happened). A second call
    /// does nothing and returns nothing.
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
        for b in &self.backends {
            b.shutdown().await;
            tracing::info!(backend = %b.kind(), "kernel backend shut down");
        }
        failures
    }
}

/// Health of every role and an overall verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Every component is healthy (and the kernel is not shut down).
    pub healthy: bool,
    /// One entry per role.
    pub components: Vec<ComponentHealth>,
}

/// Health of one role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// `documents`, `events`, `locks` or `rate_limits`.
    pub component: String,
    /// The backend serving it.
    pub backend: String,
    /// Whether its probe succeeded.
    pub healthy: bool,
    /// Probe latency in milliseconds.
    pub latency_ms: f64,
    /// The probe's error, if any.
    pub error: Option<String>,
}
