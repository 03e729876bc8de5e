//! Configuration: one type loadable from a TOML file and from environment variables with the
//! same keys (environment wins), resolved into checked settings before anything connects.
//!
//! Every setting is `Option` in the raw form (as in deadpool-postgres' `Config`), so "not set"
//! and "set" are different things and defaults live in one place: [`KernelConfig::resolve`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use kernel_core::redact::redact_url;
use kernel_core::{Error, Limits, Result};
use serde::Deserialize;

use crate::layers::circuit_breaker::CircuitBreakerConfig;
use crate::layers::retry::RetryPolicy;
use crate::pipeline::PipelineConfig;
use crate::secret::SecretUrl;

/// Which backend serves a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// In-process (`driver-memory`); accepts `memory`, `in_memory`, `in-memory`, `IN_MEMORY`.
    Memory,
    /// PostgreSQL (`driver-postgres`); accepts `postgres`, `postgresql`, `SUPABASE`.
    Postgres,
    /// Redis (`driver-redis`); accepts `redis`.
    Redis,
}

impl BackendKind {
    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Postgres => "postgres",
            BackendKind::Redis => "redis",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "memory" | "in_memory" | "inmemory" => Ok(BackendKind::Memory),
            "postgres" | "postgresql" | "supabase" => Ok(BackendKind::Postgres),
            "redis" => Ok(BackendKind::Redis),
            // A connection string put here by mistake must not show its password.
            _ => Err(format!(
                "expected memory, postgres or redis (aliases: IN_MEMORY, SUPABASE); got {:?}",
                kernel_core::validate::escape(&redact_url(s))
            )),
        }
    }
}

/// The four roles a kernel fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `StorageDriver`.
    Storage,
    /// `EventStore`.
    Events,
    /// `Lock`.
    Locks,
    /// `RateLimiter`.
    RateLimits,
}

impl Role {
    /// Every role, in report order.
    pub const ALL: [Role; 4] = [Role::Storage, Role::Events, Role::Locks, Role::RateLimits];

    /// The role's name in reports and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Events => "events",
            Role::Locks => "locks",
            Role::RateLimits => "rate_limits",
        }
    }
}

/// Per-role backend overrides (`[backends]` in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBackends {
    /// `KERNEL_DOCUMENTS_BACKEND` / `backends.documents`.
    pub documents: Option<String>,
    /// `KERNEL_EVENTS_BACKEND` / `backends.events`.
    pub events: Option<String>,
    /// `KERNEL_LOCKS_BACKEND` / `backends.locks`.
    pub locks: Option<String>,
    /// `KERNEL_RATE_LIMITS_BACKEND` / `backends.rate_limits`.
    pub rate_limits: Option<String>,
}

/// `[postgres]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `DATABASE_URL` / `postgres.url`.
    pub url: Option<SecretUrl>,
    /// `KERNEL_POSTGRES_POOL_SIZE` / `postgres.pool_size` (default 16).
    pub pool_size: Option<usize>,
    /// `KERNEL_POSTGRES_CONNECT_TIMEOUT_MS` (default 5000).
    pub connect_timeout_ms: Option<u64>,
    /// `KERNEL_POSTGRES_OPERATION_TIMEOUT_MS` (default 30000).
    pub operation_timeout_ms: Option<u64>,
    /// `KERNEL_MIGRATE_ON_BOOT` / `postgres.migrate_on_boot` (default true).
    pub migrate_on_boot: Option<bool>,
    /// `KERNEL_POSTGRES_POLL_INTERVAL_MS` / `postgres.poll_interval_ms` (default 1000): how often
    /// an idle subscription reads again when no notification woke it.
    pub poll_interval_ms: Option<u64>,
}

/// `[redis]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `REDIS_URL` / `redis.url`.
    pub url: Option<SecretUrl>,
    /// `KERNEL_REDIS_POOL_SIZE` (default 8).
    pub pool_size: Option<usize>,
    /// `KERNEL_REDIS_CONNECT_TIMEOUT_MS` (default 5000).
    pub connect_timeout_ms: Option<u64>,
    /// `KERNEL_REDIS_OPERATION_TIMEOUT_MS` (default 10000).
    pub operation_timeout_ms: Option<u64>,
    /// `KERNEL_KEY_PREFIX` / `redis.key_prefix` (default `kernel:`).
    pub key_prefix: Option<String>,
}

/// `[limits]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// `KERNEL_MAX_VALUE_BYTES` / `limits.max_value_bytes` (default 1048576).
    pub max_value_bytes: Option<usize>,
    /// `KERNEL_MAX_DEPTH` / `limits.max_depth` (default 64).
    pub max_depth: Option<usize>,
}

/// `[retry]` settings: the retry layer in front of every backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// `KERNEL_RETRY_MAX_ATTEMPTS` / `retry.max_attempts`, first attempt included; 1 turns
    /// retries off (default 3).
    pub max_attempts: Option<u32>,
    /// `KERNEL_RETRY_INITIAL_BACKOFF_MS` / `retry.initial_backoff_ms` (default 50).
    pub initial_backoff_ms: Option<u64>,
    /// `KERNEL_RETRY_MAX_BACKOFF_MS` / `retry.max_backoff_ms` (default 2000).
    pub max_backoff_ms: Option<u64>,
    /// `KERNEL_RETRY_MAX_ELAPSED_MS` / `retry.max_elapsed_ms` (default 10000).
    pub max_elapsed_ms: Option<u64>,
}

/// `[timeouts]` settings: the timeout layer in front of every backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    /// `KERNEL_OPERATION_TIMEOUT_MS` / `timeouts.operation_ms`: deadline of one call (one
    /// attempt) of any operation (default 30000).
    pub operation_ms: Option<u64>,
}

/// `[circuit_breaker]` settings: one breaker per backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    /// `KERNEL_CIRCUIT_BREAKER_ENABLED` / `circuit_breaker.enabled` (default true).
    pub enabled: Option<bool>,
    /// `KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD` / `circuit_breaker.failure_threshold`
    /// (default 5).
    pub failure_threshold: Option<u32>,
    /// `KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS` / `circuit_breaker.cool_down_ms` (default 10000).
    pub cool_down_ms: Option<u64>,
}

/// `[pipeline]` settings: the asynchronous change pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// `KERNEL_PIPELINE_CAPACITY` / `pipeline.capacity`: changes queued or in flight before
    /// submitters wait (default 1024).
    pub capacity: Option<usize>,
    /// `KERNEL_PIPELINE_WORKERS` / `pipeline.workers`: lanes applying changes in parallel
    /// (default 4).
    pub workers: Option<usize>,
}

/// The raw configuration, as read. See `docs/configuration.md` for the table of keys.
///
/// ```
/// use kernel_bootstrap::{BackendKind, KernelConfig, Role};
///
/// let cfg = KernelConfig::from_toml_str(r#"
///     storage_mode = "IN_MEMORY"
///     [limits]
///     max_value_bytes = 65536
/// "#).unwrap();
/// let resolved = cfg.resolve().unwrap();
/// assert_eq!(resolved.backend(Role::Locks), BackendKind::Memory);
/// assert_eq!(resolved.limits.max_value_bytes, 65536);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// `KERNEL_STORAGE_MODE` / `storage_mode`: default backend of every role (default memory).
    pub storage_mode: Option<String>,
    /// Per-role overrides.
    #[serde(default)]
    pub backends: RoleBackends,
    /// PostgreSQL.
    #[serde(default)]
    pub postgres: PostgresSettings,
    /// Redis.
    #[serde(default)]
    pub redis: RedisSettings,
    /// Value limits.
    #[serde(default)]
    pub limits: LimitSettings,
    /// Retry layer.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Timeout layer.
    #[serde(default)]
    pub timeouts: TimeoutSettings,
    /// Circuit breaker layer.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSettings,
    /// Change pipeline.
    #[serde(default)]
    pub pipeline: PipelineSettings,
}

/// Environment variables read by [`KernelConfig::from_env`], with the TOML key each sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("KERNEL_STORAGE_MODE", "storage_mode"),
    ("KERNEL_DOCUMENTS_BACKEND", "backends.documents"),
    ("KERNEL_EVENTS_BACKEND", "backends.events"),
    ("KERNEL_LOCKS_BACKEND", "backends.locks"),
    ("KERNEL_RATE_LIMITS_BACKEND", "backends.rate_limits"),
    ("DATABASE_URL", "postgres.url"),
    ("KERNEL_POSTGRES_POOL_SIZE", "postgres.pool_size"),
    (
        "KERNEL_POSTGRES_CONNECT_TIMEOUT_MS",
        "postgres.connect_timeout_ms",
    ),
    (
        "KERNEL_POSTGRES_OPERATION_TIMEOUT_MS",
        "postgres.operation_timeout_ms",
    ),
    ("KERNEL_MIGRATE_ON_BOOT", "postgres.migrate_on_boot"),
    (
        "KERNEL_POSTGRES_POLL_INTERVAL_MS",
        "postgres.poll_interval_ms",
    ),
    ("REDIS_URL", "redis.url"),
    ("KERNEL_REDIS_POOL_SIZE", "redis.pool_size"),
    (
        "KERNEL_REDIS_CONNECT_TIMEOUT_MS",
        "redis.connect_timeout_ms",
    ),
    (
        "KERNEL_REDIS_OPERATION_TIMEOUT_MS",
        "redis.operation_timeout_ms",
    ),
    ("KERNEL_KEY_PREFIX", "redis.key_prefix"),
    ("KERNEL_MAX_VALUE_BYTES", "limits.max_value_bytes"),
    ("KERNEL_MAX_DEPTH", "limits.max_depth"),
    ("KERNEL_RETRY_MAX_ATTEMPTS", "retry.max_attempts"),
    (
        "KERNEL_RETRY_INITIAL_BACKOFF_MS",
        "retry.initial_backoff_ms",
    ),
    ("KERNEL_RETRY_MAX_BACKOFF_MS", "retry.max_backoff_ms"),
    ("KERNEL_RETRY_MAX_ELAPSED_MS", "retry.max_elapsed_ms"),
    ("KERNEL_OPERATION_TIMEOUT_MS", "timeouts.operation_ms"),
    ("KERNEL_CIRCUIT_BREAKER_ENABLED", "circuit_breaker.enabled"),
    (
        "KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "circuit_breaker.failure_threshold",
    ),
    (
        "KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS",
        "circuit_breaker.cool_down_ms",
    ),
    ("KERNEL_PIPELINE_CAPACITY", "pipeline.capacity"),
    ("KERNEL_PIPELINE_WORKERS", "pipeline.workers"),
];

/// Names a TOML file to read before the environment.
pub const CONFIG_FILE_ENV: &str = "KERNEL_CONFIG_FILE";

impl KernelConfig {
    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<KernelConfig> {
        toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending value (`invalid type: string "postgres://
            // u:pw@h/db", expected ...` when a URL is given where a table belongs): every
            // quoted part goes through the redaction.
            Error::config(
                "toml",
                format!("invalid configuration: {}", redact_quoted(e.message())),
            )
            .with_context("span", format!("{:?}", e.span()))
        })
    }

    /// Reads a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<KernelConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(CONFIG_FILE_ENV, "cannot read the configuration file")
                .with_context("path", path.display())
                .with_source(e)
        })?;
        KernelConfig::from_toml_str(&text).map_err(|e| e.with_context("path", path.display()))
    }

    /// Reads the process environment: the file named by `KERNEL_CONFIG_FILE` if set, then every
    /// variable in [`ENV_KEYS`] on top.
    pub fn from_env() -> Result<KernelConfig> {
        // Only the kernel's own names: `std::env::vars()` would panic on any variable of the
        // process that is not UTF-8, however unrelated.
        let mut vars = Vec::new();
        for name in std::iter::once(CONFIG_FILE_ENV).chain(ENV_KEYS.iter().map(|(n, _)| *n)) {
            match std::env::var(name) {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::config(name, "the value is not valid UTF-8"));
                }
            }
        }
        KernelConfig::from_vars(vars)
    }

    /// Like [`KernelConfig::from_env`] over any set of variables (tests use this instead of
    /// mutating the process environment).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<KernelConfig> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut cfg = match get(CONFIG_FILE_ENV) {
            Some(path) if !path.trim().is_empty() => KernelConfig::from_toml_file(path.trim())?,
            _ => KernelConfig::default(),
        };
        cfg.apply_vars(|name| get(name))?;
        Ok(cfg)
    }

    /// Overlays environment-style variables on this configuration.
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        for (env, _) in ENV_KEYS {
            let Some(raw) = get(env) else { continue };
            let value = raw.trim().to_owned();
            if value.is_empty() {
                continue;
            }
            self.set(env, value)?;
        }
        Ok(())
    }

    fn set(&mut self, env: &str, v: String) -> Result<()> {
        match env {
            "KERNEL_STORAGE_MODE" => self.storage_mode = Some(v),
            "KERNEL_DOCUMENTS_BACKEND" => self.backends.documents = Some(v),
            "KERNEL_EVENTS_BACKEND" => self.backends.events = Some(v),
            "KERNEL_LOCKS_BACKEND" => self.backends.locks = Some(v),
            "KERNEL_RATE_LIMITS_BACKEND" => self.backends.rate_limits = Some(v),
            "DATABASE_URL" => self.postgres.url = Some(SecretUrl::new(v)),
            "KERNEL_POSTGRES_POOL_SIZE" => self.postgres.pool_size = Some(parse(env, &v)?),
            "KERNEL_POSTGRES_CONNECT_TIMEOUT_MS" => {
                self.postgres.connect_timeout_ms = Some(parse(env, &v)?)
            }
            "KERNEL_POSTGRES_OPERATION_TIMEOUT_MS" => {
                self.postgres.operation_timeout_ms = Some(parse(env, &v)?)
            }
            "KERNEL_MIGRATE_ON_BOOT" => self.postgres.migrate_on_boot = Some(parse_bool(env, &v)?),
            "KERNEL_POSTGRES_POLL_INTERVAL_MS" => {
                self.postgres.poll_interval_ms = Some(parse(env, &v)?)
            }
            "REDIS_URL" => self.redis.url = Some(SecretUrl::new(v)),
            "KERNEL_REDIS_POOL_SIZE" => self.redis.pool_size = Some(parse(env, &v)?),
            "KERNEL_REDIS_CONNECT_TIMEOUT_MS" => {
                self.redis.connect_timeout_ms = Some(parse(env, &v)?)
            }
            "KERNEL_REDIS_OPERATION_TIMEOUT_MS" => {
                self.redis.operation_timeout_ms = Some(parse(env, &v)?)
            }
            "KERNEL_KEY_PREFIX" => self.redis.key_prefix = Some(v),
            "KERNEL_MAX_VALUE_BYTES" => self.limits.max_value_bytes = Some(parse(env, &v)?),
            "KERNEL_MAX_DEPTH" => self.limits.max_depth = Some(parse(env, &v)?),
            "KERNEL_RETRY_MAX_ATTEMPTS" => self.retry.max_attempts = Some(parse(env, &v)?),
            "KERNEL_RETRY_INITIAL_BACKOFF_MS" => {
                self.retry.initial_backoff_ms = Some(parse(env, &v)?)
            }
            "KERNEL_RETRY_MAX_BACKOFF_MS" => self.retry.max_backoff_ms = Some(parse(env, &v)?),
            "KERNEL_RETRY_MAX_ELAPSED_MS" => self.retry.max_elapsed_ms = Some(parse(env, &v)?),
            "KERNEL_OPERATION_TIMEOUT_MS" => self.timeouts.operation_ms = Some(parse(env, &v)?),
            "KERNEL_CIRCUIT_BREAKER_ENABLED" => {
                self.circuit_breaker.enabled = Some(parse_bool(env, &v)?)
            }
            "KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD" => {
                self.circuit_breaker.failure_threshold = Some(parse(env, &v)?)
            }
            "KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS" => {
                self.circuit_breaker.cool_down_ms = Some(parse(env, &v)?)
            }
            "KERNEL_PIPELINE_CAPACITY" => self.pipeline.capacity = Some(parse(env, &v)?),
            "KERNEL_PIPELINE_WORKERS" => self.pipeline.workers = Some(parse(env, &v)?),
            other => {
                return Err(Error::internal("unknown configuration variable")
                    .with_context("setting", other));
            }
        }
        Ok(())
    }

    /// Checks every setting and fills the defaults.
    pub fn resolve(&self) -> Result<ResolvedConfig> {
        let default = match &self.storage_mode {
            Some(s) => kind("KERNEL_STORAGE_MODE", s)?,
            None => BackendKind::Memory,
        };
        let role = |env: &str, v: &Option<String>| match v {
            Some(s) => kind(env, s),
            None => Ok(default),
        };
        let roles = [
            role("KERNEL_DOCUMENTS_BACKEND", &self.backends.documents)?,
            role("KERNEL_EVENTS_BACKEND", &self.backends.events)?,
            role("KERNEL_LOCKS_BACKEND", &self.backends.locks)?,
            role("KERNEL_RATE_LIMITS_BACKEND", &self.backends.rate_limits)?,
        ];
        let limits = Limits {
            max_value_bytes: range(
                "KERNEL_MAX_VALUE_BYTES",
                self.limits.max_value_bytes,
                Limits::DEFAULT.max_value_bytes,
                1..=256 * 1024 * 1024,
            )?,
            max_depth: range(
                "KERNEL_MAX_DEPTH",
                self.limits.max_depth,
                Limits::DEFAULT.max_depth,
                1..=1024,
            )?,
        };
        let postgres = if roles.contains(&BackendKind::Postgres) {
            let url = self.postgres.url.clone().ok_or_else(|| {
                Error::config(
                    "DATABASE_URL",
                    "a role uses postgres, so DATABASE_URL (postgres.url) must be set, e.g. \
                     postgres://user:password@host:5432/db",
                )
            })?;
            check_url("DATABASE_URL", &url, &["postgres", "postgresql"])?;
            Some(PostgresResolved {
                url,
                pool_size: range(
                    "KERNEL_POSTGRES_POOL_SIZE",
                    self.postgres.pool_size,
                    16,
                    1..=1000,
                )?,
                connect_timeout: ms(
                    "KERNEL_POSTGRES_CONNECT_TIMEOUT_MS",
                    self.postgres.connect_timeout_ms,
                    5_000,
                )?,
                operation_timeout: ms(
                    "KERNEL_POSTGRES_OPERATION_TIMEOUT_MS",
                    self.postgres.operation_timeout_ms,
                    30_000,
                )?,
                migrate_on_boot: self.postgres.migrate_on_boot.unwrap_or(true),
                poll_interval: ms(
                    "KERNEL_POSTGRES_POLL_INTERVAL_MS",
                    self.postgres.poll_interval_ms,
                    1_000,
                )?,
            })
        } else {
            None
        };
        let redis = if roles.contains(&BackendKind::Redis) {
            let url = self.redis.url.clone().ok_or_else(|| {
                Error::config(
                    "REDIS_URL",
                    "a role uses redis, so REDIS_URL (redis.url) must be set, e.g. \
                     redis://127.0.0.1:6379",
                )
            })?;
            check_url("REDIS_URL", &url, &["redis", "rediss"])?;
            let key_prefix = self
                .redis
                .key_prefix
                .clone()
                .unwrap_or_else(|| "kernel:".into());
            if key_prefix.is_empty()
                || key_prefix.len() > 64
                || key_prefix.contains(['{', '}', ' ', '\0'])
            {
                return Err(Error::config(
                    "KERNEL_KEY_PREFIX",
                    "key prefix must be 1..=64 bytes without '{', '}', spaces or NUL",
                ));
            }
            Some(RedisResolved {
                url,
                pool_size: range("KERNEL_REDIS_POOL_SIZE", self.redis.pool_size, 8, 1..=256)?,
                connect_timeout: ms(
                    "KERNEL_REDIS_CONNECT_TIMEOUT_MS",
                    self.redis.connect_timeout_ms,
                    5_000,
                )?,
                operation_timeout: ms(
                    "KERNEL_REDIS_OPERATION_TIMEOUT_MS",
                    self.redis.operation_timeout_ms,
                    10_000,
                )?,
                key_prefix,
            })
        } else {
            None
        };
        Ok(ResolvedConfig {
            roles,
            postgres,
            redis,
            limits,
            retry: self.resolve_retry()?,
            operation_timeout: ms(
                "KERNEL_OPERATION_TIMEOUT_MS",
                self.timeouts.operation_ms,
                30_000,
            )?,
            circuit_breaker: self.resolve_circuit_breaker()?,
            pipeline: PipelineConfig {
                capacity: range(
                    "KERNEL_PIPELINE_CAPACITY",
                    self.pipeline.capacity,
                    PipelineConfig::default().capacity,
                    1..=1_000_000,
                )?,
                workers: range(
                    "KERNEL_PIPELINE_WORKERS",
                    self.pipeline.workers,
                    PipelineConfig::default().workers,
                    1..=256,
                )?,
            },
        })
    }

    fn resolve_retry(&self) -> Result<RetryPolicy> {
        let default = RetryPolicy::default();
        let r = &self.retry;
        let max_attempts = range(
            "KERNEL_RETRY_MAX_ATTEMPTS",
            r.max_attempts.map(|n| n as usize),
            default.max_attempts as usize,
            1..=100,
        )?;
        let ms_or = |setting: &str, v: Option<u64>, d: Duration| {
            ms(setting, v, u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let policy = RetryPolicy {
            max_attempts: u32::try_from(max_attempts).unwrap_or(default.max_attempts),
            initial_backoff: ms_or(
                "KERNEL_RETRY_INITIAL_BACKOFF_MS",
                r.initial_backoff_ms,
                default.initial_backoff,
            )?,
            max_backoff: ms_or(
                "KERNEL_RETRY_MAX_BACKOFF_MS",
                r.max_backoff_ms,
                default.max_backoff,
            )?,
            max_elapsed: ms_or(
                "KERNEL_RETRY_MAX_ELAPSED_MS",
                r.max_elapsed_ms,
                default.max_elapsed,
            )?,
        };
        if policy.initial_backoff > policy.max_backoff {
            return Err(Error::config(
                "KERNEL_RETRY_INITIAL_BACKOFF_MS",
                format!(
                    "the initial backoff ({} ms) must not exceed KERNEL_RETRY_MAX_BACKOFF_MS ({} ms)",
                    policy.initial_backoff.as_millis(),
                    policy.max_backoff.as_millis()
                ),
            ));
        }
        Ok(policy)
    }

    fn resolve_circuit_breaker(&self) -> Result<Option<CircuitBreakerConfig>> {
        let c = &self.circuit_breaker;
        let default = CircuitBreakerConfig::default();
        let threshold = range(
            "KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
            c.failure_threshold.map(|n| n as usize),
            default.failure_threshold as usize,
            1..=10_000,
        )?;
        let cool_down = ms(
            "KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS",
            c.cool_down_ms,
            u64::try_from(default.cool_down.as_millis()).unwrap_or(u64::MAX),
        )?;
        Ok(c.enabled.unwrap_or(true).then_some(CircuitBreakerConfig {
            failure_threshold: u32::try_from(threshold).unwrap_or(default.failure_threshold),
            cool_down,
        }))
    }
}

/// Checked settings with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConfig {
    roles: [BackendKind; 4],
    /// Present when a role uses Postgres.
    pub postgres: Option<PostgresResolved>,
    /// Present when a role uses Redis.
    pub redis: Option<RedisResolved>,
    /// Value limits for every driver.
    pub limits: Limits,
    /// The retry layer's policy (`max_attempts == 1`: no retry layer).
    pub retry: RetryPolicy,
    /// The timeout layer's deadline for one call.
    pub operation_timeout: Duration,
    /// The circuit breaker's settings; `None` when disabled.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The change pipeline's settings.
    pub pipeline: PipelineConfig,
}

impl ResolvedConfig {
    /// The backend serving a role.
    pub fn backend(&self, role: Role) -> BackendKind {
        self.roles[Role::ALL.iter().position(|r| *r == role).unwrap_or(0)]
    }
}

/// Checked Postgres settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresResolved {
    /// Connection URL (redacted in Debug).
    pub url: SecretUrl,
    /// Pool size.
    pub pool_size: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-operation timeout.
    pub operation_timeout: Duration,
    /// Run pending migrations at boot.
    pub migrate_on_boot: bool,
    /// How often an idle subscription reads again without a notification.
    pub poll_interval: Duration,
}

/// Checked Redis settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisResolved {
    /// Connection URL (redacted in Debug).
    pub url: SecretUrl,
    /// Pool size.
    pub pool_size: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-operation timeout.
    pub operation_timeout: Duration,
    /// Prefix of every key.
    pub key_prefix: String,
}

fn kind(setting: &str, value: &str) -> Result<BackendKind> {
    value
        .parse()
        .map_err(|msg: String| Error::config(setting, msg))
}

fn parse<T: FromStr>(setting: &str, value: &str) -> Result<T> {
    value.parse().map_err(|_| {
        Error::config(
            setting,
            format!(
                "expected a whole number, got {:?}",
                kernel_core::validate::escape(value)
            ),
        )
    })
}

fn parse_bool(setting: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::config(
            setting,
            format!(
                "expected true or false, got {:?}",
                kernel_core::validate::escape(value)
            ),
        )),
    }
}

fn range(
    setting: &str,
    value: Option<usize>,
    default: usize,
    allowed: std::ops::RangeInclusive<usize>,
) -> Result<usize> {
    let v = value.unwrap_or(default);
    if !allowed.contains(&v) {
        return Err(Error::config(
            setting,
            format!(
                "expected a value between {} and {}, got {v}",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
    Ok(v)
}

fn ms(setting: &str, value: Option<u64>, default: u64) -> Result<Duration> {
    let v = value.unwrap_or(default);
    if v == 0 || v > 3_600_000 {
        return Err(Error::config(
            setting,
            format!("expected milliseconds between 1 and 3600000, got {v}"),
        ));
    }
    Ok(Duration::from_millis(v))
}

fn check_url(setting: &str, url: &SecretUrl, schemes: &[&str]) -> Result<()> {
    let raw = url.expose();
    let scheme = raw.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme {
        Some(s) if schemes.contains(&s.as_str()) => Ok(()),
        // Postgres also accepts `key=value` connection strings.
        None if schemes.contains(&"postgres") && raw.contains('=') => Ok(()),
        _ => Err(Error::config(
            setting,
            format!(
                "expected a URL starting with {}://, got {}",
                schemes[0],
                url.redacted()
            ),
        )),
    }
}

/// `message` with every `"..."` part passed through [`redact_url`].
fn redact_quoted(message: &str) -> String {
    message
        .split('"')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                redact_url(part)
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\"")
}
