//! Configuration: one serde tree, read from a TOML file and from environment variables.
//!
//! Every setting exists once: as a field of a type that derives `Deserialize`, with its default
//! in that type's `Default` impl — the drivers' own [`PostgresConfig`], [`RedisConfig`] and
//! [`SqliteConfig`], the
//! layers' [`RetryPolicy`], [`CircuitBreakerConfig`], the [`PipelineConfig`], kernel-core's
//! [`Limits`]. [`KernelConfig`] only nests them. The environment variable of a setting is
//! derived from its TOML key (`retry.max_attempts` is `KERNEL_RETRY_MAX_ATTEMPTS`), so
//! [`KernelConfig::settings`] can list every key, variable and default, and a test checks the
//! table in `docs/configuration.md` against that list.
//!
//! The loader is small and hand-written (see `docs/architecture.md` for why not figment): the
//! TOML file becomes a JSON tree, each variable that is set is parsed by the type of its
//! default and put at its key, and the tree is deserialized with `serde_path_to_error`, so an
//! error names the setting.
//!
//! ```
//! use kernel_bootstrap::{BackendKind, KernelConfig, Role};
//!
//! let cfg = KernelConfig::from_toml_str(r#"
//!     storage_mode = "IN_MEMORY"
//!     [limits]
//!     max_value_bytes = 65536
//! "#).unwrap();
//! cfg.validate().unwrap();
//! assert_eq!(cfg.backend(Role::Locks), BackendKind::Memory);
//! assert_eq!(cfg.limits.max_value_bytes, 65536);
//! ```

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use kernel_core::redact::redact_url;
use kernel_core::settings::duration_ms;
use kernel_core::{Error, Limits, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[cfg(feature = "postgres")]
pub use driver_postgres::PostgresConfig;
#[cfg(feature = "redis")]
pub use driver_redis::RedisConfig;
#[cfg(feature = "sqlite")]
pub use driver_sqlite::SqliteConfig;

pub use crate::layers::circuit_breaker::CircuitBreakerConfig;
pub use crate::layers::retry::RetryPolicy;
pub use crate::pipeline::PipelineConfig;

/// Which built-in backend serves a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BackendKind {
    /// In-process (`driver-memory`, always built in); accepts `memory`, `in_memory`,
    /// `in-memory`, `IN_MEMORY`.
    #[default]
    Memory,
    /// PostgreSQL (`driver-postgres`, feature `postgres`); accepts `postgres`, `postgresql`,
    /// `SUPABASE`.
    Postgres,
    /// Redis (`driver-redis`, feature `redis`); accepts `redis`.
    Redis,
    /// SQLite, an embedded file (`driver-sqlite`, feature `sqlite`); accepts `sqlite`,
    /// `sqlite3`.
    Sqlite,
}

impl BackendKind {
    /// The canonical name, also the backend's name in health reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Postgres => "postgres",
            BackendKind::Redis => "redis",
            BackendKind::Sqlite => "sqlite",
        }
    }

    /// Whether this build of kernel-bootstrap can connect to it (its Cargo feature is on).
    pub fn is_built_in(self) -> bool {
        match self {
            BackendKind::Memory => true,
            BackendKind::Postgres => cfg!(feature = "postgres"),
            BackendKind::Redis => cfg!(feature = "redis"),
            BackendKind::Sqlite => cfg!(feature = "sqlite"),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "memory" | "in_memory" | "inmemory" => Ok(BackendKind::Memory),
            "postgres" | "postgresql" | "supabase" => Ok(BackendKind::Postgres),
            "redis" => Ok(BackendKind::Redis),
            "sqlite" | "sqlite3" => Ok(BackendKind::Sqlite),
            // A connection string put here by mistake must not show its password.
            _ => Err(format!(
                "expected memory, postgres, redis or sqlite (aliases: IN_MEMORY, SUPABASE); got {:?}",
                kernel_core::validate::escape(&redact_url(s))
            )),
        }
    }
}

impl Serialize for BackendKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The four roles a kernel fills, named after their traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// `StorageDriver`: namespaced documents ([`crate::Kernel::storage`]).
    Storage,
    /// `EventStore` ([`crate::Kernel::events`]).
    Events,
    /// `Lock` ([`crate::Kernel::locks`]).
    Locks,
    /// `RateLimiter` ([`crate::Kernel::rate_limiter`]).
    RateLimits,
}

impl Role {
    /// Every role, in report order.
    pub const ALL: [Role; 4] = [Role::Storage, Role::Events, Role::Locks, Role::RateLimits];

    /// The role's name in reports and settings (`backends.<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Events => "events",
            Role::Locks => "locks",
            Role::RateLimits => "rate_limits",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Role::Storage => 0,
            Role::Events => 1,
            Role::Locks => 2,
            Role::RateLimits => 3,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Per-role backend overrides (`[backends]`); an unset role uses `storage_mode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleBackends {
    /// The documents store.
    pub storage: Option<BackendKind>,
    /// The event store.
    pub events: Option<BackendKind>,
    /// Locks.
    pub locks: Option<BackendKind>,
    /// Rate limits.
    pub rate_limits: Option<BackendKind>,
}

/// `[timeouts]`: the timeout layer in front of every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutSettings {
    /// Deadline of one call (one attempt) of any operation (`operation_ms`).
    #[serde(rename = "operation_ms", with = "duration_ms")]
    pub operation: Duration,
}

impl Default for TimeoutSettings {
    /// 30 s.
    fn default() -> Self {
        TimeoutSettings {
            operation: Duration::from_secs(30),
        }
    }
}

impl TimeoutSettings {
    /// Checks the deadline is above zero and at most an hour.
    pub fn validate(&self) -> Result<()> {
        check_ms("timeouts.operation_ms", self.operation)
    }
}

/// The whole configuration. See `docs/configuration.md` for the table of keys, variables and
/// defaults ([`KernelConfig::settings`] lists them too).
///
/// Every field has its default, so an empty TOML file or an empty environment is the
/// in-process kernel. The `postgres`, `redis` and `sqlite` tables exist when their Cargo feature
/// is on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KernelConfig {
    /// Default backend of every role (`KERNEL_STORAGE_MODE`).
    pub storage_mode: BackendKind,
    /// Per-role overrides.
    pub backends: RoleBackends,
    /// Document settings of the kernel (`[storage]`): field indexes declared at boot.
    pub storage: StorageSettings,
    /// Value limits, given to every driver.
    pub limits: Limits,
    /// PostgreSQL (the driver's own settings type).
    #[cfg(feature = "postgres")]
    pub postgres: PostgresConfig,
    /// Redis (the driver's own settings type).
    #[cfg(feature = "redis")]
    pub redis: RedisConfig,
    /// SQLite (the driver's own settings type).
    #[cfg(feature = "sqlite")]
    pub sqlite: SqliteConfig,
    /// Retry layer.
    pub retry: RetryPolicy,
    /// Timeout layer.
    pub timeouts: TimeoutSettings,
    /// Circuit breaker layer.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Change pipeline.
    pub pipeline: PipelineConfig,
}

/// Document settings of the kernel (`[storage]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StorageSettings {
    /// Field indexes the kernel declares when it boots (`storage.indexes`,
    /// `KERNEL_STORAGE_INDEXES`): see [`IndexDeclarations`]. Declaring is idempotent, so every
    /// boot declares them; a storage backend without field indexes fails the boot.
    pub indexes: IndexDeclarations,
}

/// Field indexes to declare, as `(namespace, field path)` pairs: in TOML an array of
/// `{ namespace = "orders", field = "customer.id" }` tables, or (also in the environment) one
/// string `"orders:customer.id,users:email"` — a namespace holds no `:`, so each item splits at
/// its first one (a path holding `,` needs the table form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexDeclarations(pub Vec<(String, String)>);

impl Serialize for IndexDeclarations {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let items: Vec<String> = self.0.iter().map(|(ns, f)| format!("{ns}:{f}")).collect();
        s.serialize_str(&items.join(","))
    }
}

impl<'de> Deserialize<'de> for IndexDeclarations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Declared {
            namespace: String,
            field: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Tables(Vec<Declared>),
        }
        match Repr::deserialize(d)? {
            Repr::Tables(list) => Ok(IndexDeclarations(
                list.into_iter().map(|i| (i.namespace, i.field)).collect(),
            )),
            Repr::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| match item.split_once(':') {
                    Some((ns, field)) => Ok((ns.trim().to_owned(), field.trim().to_owned())),
                    None => Err(serde::de::Error::custom(format!(
                        "index {:?} is not `namespace:field`",
                        kernel_core::validate::escape(item)
                    ))),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(IndexDeclarations),
        }
    }
}

/// Names a TOML file to read before the environment.
pub const CONFIG_FILE_ENV: &str = "KERNEL_CONFIG_FILE";

/// Every derived variable name starts with this.
pub const ENV_PREFIX: &str = "KERNEL_";

/// Variables that set a key under a name of their own (the names twelve-factor apps and
/// hosting platforms use for connection strings).
pub const ENV_ALIASES: &[(&str, &str)] =
    &[("DATABASE_URL", "postgres.url"), ("REDIS_URL", "redis.url")];

/// Variables of earlier versions, with the key that replaced each: setting one is a `Config`
/// error that names the new variable, never a silently ignored setting.
const RENAMED: &[(&str, &str)] = &[
    ("KERNEL_DOCUMENTS_BACKEND", "backends.storage"),
    ("KERNEL_EVENTS_BACKEND", "backends.events"),
    ("KERNEL_LOCKS_BACKEND", "backends.locks"),
    ("KERNEL_RATE_LIMITS_BACKEND", "backends.rate_limits"),
    ("KERNEL_MAX_VALUE_BYTES", "limits.max_value_bytes"),
    ("KERNEL_MAX_DEPTH", "limits.max_depth"),
    ("KERNEL_OPERATION_TIMEOUT_MS", "timeouts.operation_ms"),
    ("KERNEL_KEY_PREFIX", "redis.key_prefix"),
    ("KERNEL_MIGRATE_ON_BOOT", "postgres.migrate_on_boot"),
    (
        "KERNEL_POSTGRES_POLL_INTERVAL_MS",
        "postgres.subscription.poll_interval_ms",
    ),
    (
        "KERNEL_POSTGRES_OPERATION_TIMEOUT_MS",
        "postgres.statement_timeout_ms",
    ),
];

/// One setting: its TOML key, its environment variable(s) and its default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Setting {
    /// Dotted TOML key (`postgres.pool_size`).
    pub key: String,
    /// The variable derived from the key (`KERNEL_POSTGRES_POOL_SIZE`).
    pub env: String,
    /// Another variable that sets it too (`DATABASE_URL`), if any.
    pub alias: Option<&'static str>,
    /// The default, as JSON (`null`: unset).
    pub default: Value,
}

/// The variable derived from a TOML key.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

impl KernelConfig {
    /// Every setting of this build (features decide whether `postgres.*`, `redis.*` and
    /// `sqlite.*` exist),
    /// in the order of the tree.
    pub fn settings() -> Vec<Setting> {
        let mut out = Vec::new();
        // Serializing the defaults cannot fail: every type here serializes to plain JSON.
        let tree = serde_json::to_value(KernelConfig::default()).unwrap_or(Value::Null);
        leaves(&tree, String::new(), &mut out);
        out
    }

    /// Parses TOML text.
    pub fn from_toml_str(text: &str) -> Result<KernelConfig> {
        KernelConfig::from_tree(toml_tree(text)?)
    }

    /// Reads a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<KernelConfig> {
        let path = path.as_ref();
        read_toml_file(path)
            .and_then(KernelConfig::from_tree)
            .map_err(|e| e.with_context("path", path.display()))
    }

    /// Reads the process environment: the file named by `KERNEL_CONFIG_FILE` if set, then every
    /// variable of [`KernelConfig::settings`] (and [`ENV_ALIASES`]) on top.
    pub fn from_env() -> Result<KernelConfig> {
        KernelConfig::from_env_with(Vec::new())
    }

    /// [`KernelConfig::from_env`] with `overrides` (variables in the same form, e.g.
    /// `("KERNEL_CONFIG_FILE", path)` or `("KERNEL_POSTGRES_POOL_SIZE", "4")`) taking
    /// precedence over the process environment: what a command line's flags do.
    pub fn from_env_with(overrides: Vec<(String, String)>) -> Result<KernelConfig> {
        // Only the kernel's own names: `std::env::vars()` would panic on any variable of the
        // process that is not UTF-8, however unrelated.
        let settings = KernelConfig::settings();
        let names = std::iter::once(CONFIG_FILE_ENV.to_owned())
            .chain(settings.iter().map(|s| s.env.clone()))
            .chain(ENV_ALIASES.iter().map(|(n, _)| (*n).to_owned()))
            .chain(RENAMED.iter().map(|(n, _)| (*n).to_owned()));
        let mut vars = Vec::new();
        for name in names {
            match std::env::var(&name) {
                Ok(value) => vars.push((name, value)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::config(
                        &setting_of(&name).unwrap_or(name.clone()),
                        "the value is not valid UTF-8",
                    )
                    .with_context("env", &name));
                }
            }
        }
        // Later variables win (`from_vars` looks from the end).
        vars.extend(overrides);
        KernelConfig::from_vars(vars)
    }

    /// Like [`KernelConfig::from_env`] over any set of variables (tests use this instead of
    /// mutating the process environment). Variables that are not the kernel's are ignored; an
    /// empty value counts as unset.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<KernelConfig> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim())
        };
        let mut tree = match get(CONFIG_FILE_ENV) {
            Some(path) => {
                read_toml_file(Path::new(path)).map_err(|e| e.with_context("path", path))?
            }
            None => Value::Object(Map::new()),
        };
        for (old, key) in RENAMED {
            if get(old).is_some() {
                return Err(Error::config(
                    key,
                    format!("{old} was renamed: set {} instead", env_name(key)),
                )
                .with_context("env", old));
            }
        }
        for setting in KernelConfig::settings() {
            let raw = get(&setting.env)
                .map(|v| (setting.env.as_str(), v))
                .or_else(|| setting.alias.and_then(|a| get(a).map(|v| (a, v))));
            let Some((name, raw)) = raw else { continue };
            let value = parse_like(&setting.default, raw)
                .map_err(|msg| Error::config(&setting.key, msg).with_context("env", name))?;
            insert(&mut tree, &setting.key, value);
        }
        KernelConfig::from_tree(tree)
    }

    fn from_tree(tree: Value) -> Result<KernelConfig> {
        serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            // serde's messages quote the offending value (`invalid type: string "postgres://
            // u:pw@h/db", expected ...`): every quoted part goes through the redaction.
            let message = redact_quoted(&e.inner().to_string());
            let message = match unknown_feature_table(&key, &message) {
                Some(feature) => format!(
                    "this build of kernel-bootstrap has no `{feature}` feature, so it has no \
                     [{feature}] settings: enable the feature or remove the table"
                ),
                None => format!("invalid configuration: {message}"),
            };
            if key == "." {
                Error::config("config", message)
            } else {
                Error::config(&key, message).with_context("env", env_names(&key))
            }
        })
    }

    /// The backend serving a role: its `backends` override, else `storage_mode`.
    pub fn backend(&self, role: Role) -> BackendKind {
        let chosen = match role {
            Role::Storage => self.backends.storage,
            Role::Events => self.backends.events,
            Role::Locks => self.backends.locks,
            Role::RateLimits => self.backends.rate_limits,
        };
        chosen.unwrap_or(self.storage_mode)
    }

    /// Checks every setting in use (a backend's table only when a role uses it). A `Config`
    /// error names the TOML key (`setting`) and its variable (`env`).
    pub fn validate(&self) -> Result<()> {
        self.validate_inner()
            .map_err(|e| match e.context_value("setting") {
                Some(key) if e.context_value("env").is_none() => {
                    let env = env_name(key);
                    e.with_context("env", env)
                }
                _ => e,
            })
    }

    fn validate_inner(&self) -> Result<()> {
        self.limits.validate()?;
        for (namespace, field) in &self.storage.indexes.0 {
            kernel_core::IndexSpec::new(field.clone())
                .validate(namespace)
                .map_err(|e| Error::config("storage.indexes", e.to_string()))?;
        }
        for role in Role::ALL {
            let kind = self.backend(role);
            if !kind.is_built_in() {
                return Err(Error::config(
                    &role_key(role, self),
                    format!(
                        "the {role} role is set to {kind}, but this build of kernel-bootstrap \
                         has no `{kind}` feature (enable it in Cargo.toml)"
                    ),
                ));
            }
        }
        #[cfg(feature = "postgres")]
        if self.uses(BackendKind::Postgres) {
            self.postgres_config().validate()?;
        }
        #[cfg(feature = "redis")]
        if self.uses(BackendKind::Redis) {
            self.redis_config().validate()?;
        }
        #[cfg(feature = "sqlite")]
        if self.uses(BackendKind::Sqlite) {
            self.sqlite_config().validate()?;
        }
        self.retry.validate()?;
        self.timeouts.validate()?;
        self.circuit_breaker.validate()?;
        self.pipeline.validate()
    }

    /// Whether any role uses `kind`.
    pub fn uses(&self, kind: BackendKind) -> bool {
        Role::ALL.iter().any(|r| self.backend(*r) == kind)
    }

    /// The PostgreSQL driver's settings with the shared `[limits]` applied.
    #[cfg(feature = "postgres")]
    pub fn postgres_config(&self) -> PostgresConfig {
        PostgresConfig {
            limits: self.limits,
            ..self.postgres.clone()
        }
    }

    /// The Redis driver's settings with the shared `[limits]` applied.
    #[cfg(feature = "redis")]
    pub fn redis_config(&self) -> RedisConfig {
        RedisConfig {
            limits: self.limits,
            ..self.redis.clone()
        }
    }

    /// The SQLite driver's settings with the shared `[limits]` applied.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_config(&self) -> SqliteConfig {
        SqliteConfig {
            limits: self.limits,
            ..self.sqlite.clone()
        }
    }
}

fn role_key(role: Role, config: &KernelConfig) -> String {
    let overridden = match role {
        Role::Storage => config.backends.storage.is_some(),
        Role::Events => config.backends.events.is_some(),
        Role::Locks => config.backends.locks.is_some(),
        Role::RateLimits => config.backends.rate_limits.is_some(),
    };
    if overridden {
        format!("backends.{role}")
    } else {
        "storage_mode".to_owned()
    }
}

/// Checks a duration setting is above zero and at most an hour; the error names `key`.
pub(crate) fn check_ms(key: &str, d: Duration) -> Result<()> {
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err(Error::config(
            key,
            format!(
                "expected milliseconds between 1 and 3600000, got {}",
                d.as_millis()
            ),
        ));
    }
    Ok(())
}

/// Checks a count setting is within `allowed`; the error names `key`.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
) -> Result<()> {
    if !allowed.contains(&value) {
        return Err(Error::config(
            key,
            format!(
                "expected a value between {} and {}, got {value}",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
    Ok(())
}

/// The variables that set `key`, for an error's `env` context: the derived one, and its alias
/// when there is one (`KERNEL_POSTGRES_URL or DATABASE_URL`). The value may also have come
/// from the TOML file; the `setting` context names the key either way.
fn env_names(key: &str) -> String {
    match ENV_ALIASES.iter().find(|(_, k)| *k == key) {
        Some((alias, _)) => format!("{} or {alias}", env_name(key)),
        None => env_name(key),
    }
}

/// The TOML key a variable sets, if it is one of the kernel's.
fn setting_of(env: &str) -> Option<String> {
    ENV_ALIASES
        .iter()
        .chain(RENAMED)
        .find(|(n, _)| *n == env)
        .map(|(_, k)| (*k).to_owned())
        .or_else(|| {
            KernelConfig::settings()
                .into_iter()
                .find(|s| s.env == env)
                .map(|s| s.key)
        })
}

fn leaves(node: &Value, key: String, out: &mut Vec<Setting>) {
    match node {
        Value::Object(map) => {
            for (name, child) in map {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                leaves(child, child_key, out);
            }
        }
        _ => out.push(Setting {
            env: env_name(&key),
            alias: ENV_ALIASES.iter().find(|(_, k)| *k == key).map(|(n, _)| *n),
            key,
            default: node.clone(),
        }),
    }
}

/// Reads an environment value as the type of the setting's default: numbers and booleans are
/// parsed (so a typo is an error naming the variable), everything else stays a string.
fn parse_like(default: &Value, raw: &str) -> std::result::Result<Value, String> {
    // A connection string put in the wrong variable must not show its password.
    let shown = || kernel_core::validate::escape(&redact_url(raw));
    match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected true or false, got {:?}", shown())),
        },
        Value::Number(_) => raw
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("expected a whole number, got {:?}", shown())),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

fn insert(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn toml_tree(text: &str) -> Result<Value> {
    toml::from_str::<Value>(text).map_err(|e| {
        Error::config(
            "config",
            format!("invalid TOML: {}", redact_quoted(e.message())),
        )
        .with_context("span", format!("{:?}", e.span()))
    })
}

fn read_toml_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(CONFIG_FILE_ENV, "cannot read the configuration file")
            .with_context("path", path.display())
            .with_source(e)
    })?;
    toml_tree(&text)
}

/// The feature a rejected top-level table belongs to, when the rejection is only that the
/// feature is off.
fn unknown_feature_table(key: &str, message: &str) -> Option<&'static str> {
    ["postgres", "redis", "sqlite"].into_iter().find(|feature| {
        (key == *feature || key == ".") && message.contains(&format!("unknown field `{feature}`"))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_setting_has_a_derived_variable() {
        let settings = KernelConfig::settings();
        let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        for key in [
            "storage_mode",
            "backends.storage",
            "limits.max_value_bytes",
            "retry.max_attempts",
            "timeouts.operation_ms",
            "circuit_breaker.enabled",
            "pipeline.workers",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let retry = settings
            .iter()
            .find(|s| s.key == "retry.max_attempts")
            .unwrap();
        assert_eq!(retry.env, "KERNEL_RETRY_MAX_ATTEMPTS");
        assert_eq!(retry.default, Value::from(3));
    }

    #[test]
    fn environment_overrides_the_file_and_parses_by_type() {
        let cfg = KernelConfig::from_vars(vars(&[
            ("KERNEL_RETRY_MAX_ATTEMPTS", "7"),
            ("KERNEL_CIRCUIT_BREAKER_ENABLED", "off"),
            ("KERNEL_BACKENDS_LOCKS", "IN_MEMORY"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(cfg.retry.max_attempts, 7);
        assert!(!cfg.circuit_breaker.enabled);
        assert_eq!(cfg.backends.locks, Some(BackendKind::Memory));
        let e = KernelConfig::from_vars(vars(&[("KERNEL_PIPELINE_WORKERS", "many")])).unwrap_err();
        assert_eq!(e.context_value("setting"), Some("pipeline.workers"));
        assert_eq!(e.context_value("env"), Some("KERNEL_PIPELINE_WORKERS"));
    }

    #[test]
    fn renamed_variables_are_refused_with_their_new_name() {
        let e = KernelConfig::from_vars(vars(&[("KERNEL_MAX_DEPTH", "3")])).unwrap_err();
        assert_eq!(e.code(), kernel_core::ErrorCode::Config);
        assert!(e.to_string().contains("KERNEL_LIMITS_MAX_DEPTH"), "{e}");
    }

    /// Cluster and Sentinel URLs pass the configuration as they are (the driver's fred reads
    /// them), and WAIT durability is read from its two variables.
    #[cfg(feature = "redis")]
    #[test]
    fn redis_topology_urls_and_wait_settings_are_accepted() {
        for url in [
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "rediss-cluster://:pw@cache.internal:7000",
            "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=main&node=127.0.0.1:26380",
        ] {
            let cfg = KernelConfig::from_vars(vars(&[
                ("KERNEL_STORAGE_MODE", "redis"),
                ("KERNEL_REDIS_URL", url),
                ("KERNEL_REDIS_WAIT_REPLICAS", "1"),
                ("KERNEL_REDIS_WAIT_TIMEOUT_MS", "250"),
            ]))
            .unwrap();
            cfg.validate().unwrap();
            let redis = cfg.redis_config();
            assert_eq!(redis.url, url);
            assert_eq!(redis.wait_replicas, 1);
            assert_eq!(redis.wait_timeout, std::time::Duration::from_millis(250));
        }
        let e = KernelConfig::from_vars(vars(&[
            ("KERNEL_STORAGE_MODE", "redis"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("KERNEL_REDIS_WAIT_REPLICAS", "1"),
            ("KERNEL_REDIS_WAIT_TIMEOUT_MS", "0"),
        ]))
        .and_then(|cfg| cfg.validate())
        .unwrap_err();
        assert_eq!(
            e.context_value("setting"),
            Some("redis.wait_timeout_ms"),
            "{e}"
        );
        assert_eq!(
            e.context_value("env"),
            Some("KERNEL_REDIS_WAIT_TIMEOUT_MS"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors_name_the_key() {
        let e = KernelConfig::from_toml_str("[retry]\nmax_attempts = \"three\"").unwrap_err();
        assert_eq!(
            e.context_value("setting"),
            Some("retry.max_attempts"),
            "{e}"
        );
        let e = KernelConfig::from_toml_str("[retry]\nmax_tries = 3").unwrap_err();
        assert!(e.to_string().contains("max_tries"), "{e}");
    }
}

/// `docs/configuration.md`'s table of settings, checked against [`KernelConfig::settings`]: the
/// table's key, variable and default columns must be exactly what the code derives.
#[cfg(all(test, feature = "postgres", feature = "redis", feature = "sqlite"))]
mod docs_table {
    use super::*;

    fn shown(v: &Value) -> String {
        match v {
            Value::Null => "unset".to_owned(),
            Value::String(s) if s.is_empty() => "unset".to_owned(),
            Value::String(s) => format!("`{s}`"),
            other => format!("`{other}`"),
        }
    }

    fn expected_rows() -> Vec<String> {
        KernelConfig::settings()
            .iter()
            .map(|s| {
                let env = match s.alias {
                    Some(alias) => format!("`{}`, `{alias}`", s.env),
                    None => format!("`{}`", s.env),
                };
                format!("| `{}` | {env} | {} |", s.key, shown(&s.default))
            })
            .collect()
    }

    #[test]
    fn the_documented_table_is_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let text = std::fs::read_to_string(path).unwrap();
        let begin = text
            .find("<!-- settings:begin -->")
            .expect("table start marker");
        let end = text
            .find("<!-- settings:end -->")
            .expect("table end marker");
        // The first three columns of every row; the fourth (meaning) is prose.
        let documented: Vec<String> = text[begin..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                format!("{} | {} | {} |", cells[0], cells[1], cells[2])
            })
            .collect();
        let expected = expected_rows();
        assert!(
            documented == expected,
            "docs/configuration.md's table is out of date; its first three columns must be:\n{}",
            expected.join("\n")
        );
    }
}

/// Built without a backend's feature, the configuration says so instead of failing obscurely.
#[cfg(all(
    test,
    not(all(feature = "postgres", feature = "redis", feature = "sqlite"))
))]
mod missing_features {
    use super::*;

    fn off() -> (BackendKind, &'static str) {
        if !cfg!(feature = "postgres") {
            (BackendKind::Postgres, "postgres")
        } else if !cfg!(feature = "redis") {
            (BackendKind::Redis, "redis")
        } else {
            (BackendKind::Sqlite, "sqlite")
        }
    }

    #[test]
    fn choosing_a_backend_without_its_feature_is_a_config_error() {
        let (kind, name) = off();
        assert!(!kind.is_built_in());
        let cfg = KernelConfig::from_vars([("KERNEL_BACKENDS_LOCKS".to_owned(), name.to_owned())])
            .unwrap();
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.code(), kernel_core::ErrorCode::Config);
        assert_eq!(e.context_value("setting"), Some("backends.locks"), "{e}");
        assert!(
            e.to_string().contains(&format!("no `{name}` feature")),
            "{e}"
        );
    }

    #[test]
    fn a_table_of_a_missing_feature_names_the_feature() {
        let (_, name) = off();
        let e = KernelConfig::from_toml_str(&format!("[{name}]\nurl = \"x://h\"")).unwrap_err();
        assert!(
            e.to_string().contains(&format!("no `{name}` feature")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn memory_boots_without_any_backend_feature() {
        let kernel = crate::Kernel::boot(KernelConfig::default()).await.unwrap();
        assert!(kernel.health().await.healthy);
        kernel.shutdown().await;
    }
}
