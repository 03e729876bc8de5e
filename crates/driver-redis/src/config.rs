//! The driver's settings; `Debug` shows the URL through kernel-core's redaction.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kernel_core::operation::DEFAULT_OPERATION_WINDOW;
use kernel_core::redact::redact_url;
use kernel_core::settings::{duration_ms, serialize_redacted};
use kernel_core::{Error, Limits, Result};
use serde::{Deserialize, Serialize};

/// Longest key prefix accepted: every Redis key carries it, so it should stay short.
pub const MAX_KEY_PREFIX_LEN: usize = 256;

/// Longest operation window accepted (366 days): every record is a Redis key holding a copy of
/// its outcome for the whole window, so a longer one is a configuration mistake.
pub const MAX_OPERATION_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Most replicas [`RedisConfig::wait_replicas`] may ask for.
pub const MAX_WAIT_REPLICAS: u32 = 64;

/// Longest [`RedisConfig::wait_timeout`] accepted (60 s): a write blocks its connection for up
/// to this long, so a longer one is a configuration mistake.
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of a [`crate::RedisDriver`].
///
/// A plain struct: start from [`RedisConfig::new`], or deserialize it (kernel-bootstrap reads
/// it as the `[redis]` table of its configuration; every field is optional there and defaults
/// to [`RedisConfig::default`]). `Debug` and `Serialize` never show the password of `url`.
///
/// ```
/// use driver_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://app:s3cret@cache.internal:6379/0");
/// let shown = format!("{config:?}");
/// assert!(!shown.contains("s3cret"));
/// assert!(shown.contains("cache.internal"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]` (also `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`, as fred reads them).
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Connections in the pool (at least 1). Each runs scripts one at a time, so this bounds how
    /// many scripts one driver has in flight.
    pub pool_size: usize,
    /// How long connecting (TCP, AUTH, SELECT) may take (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "duration_ms")]
    pub connect_timeout: Duration,
    /// How long one command may take before it fails with `Timeout` (`operation_timeout_ms`).
    #[serde(rename = "operation_timeout_ms", with = "duration_ms")]
    pub operation_timeout: Duration,
    /// Put before every Redis key, so several applications (and tests) share one server.
    /// At most [`MAX_KEY_PREFIX_LEN`] bytes, without `{` or `}` (they would break hash tags).
    pub key_prefix: String,
    /// How long an operation id is remembered after its write
    /// ([`kernel_core::StorageDriver::write_once`], `operation_window_ms`): Redis expires each
    /// record (`PX`) this long after it was made. At least 1 ms, at most
    /// [`MAX_OPERATION_WINDOW`]; 24 hours by default.
    #[serde(rename = "operation_window_ms", with = "duration_ms")]
    pub operation_window: Duration,
    /// Value and metadata size / depth limits. Not part of the `[redis]` table: the bootstrap
    /// sets it from `[limits]`, shared by every driver.
    #[serde(skip)]
    pub limits: Limits,
    /// A PEM file of CA certificates to trust for `rediss://` (`tls_ca_file`), e.g. the CA of a
    /// managed Redis. Refused with a `redis://` URL. See `docs/redis.md`, "TLS".
    pub tls_ca_file: Option<PathBuf>,
    /// Trust the operating system's CA store too for `rediss://` (`tls_system_roots`, default
    /// on).
    pub tls_system_roots: bool,
    /// WAIT-based durability (`wait_replicas`): after every write the driver sends
    /// `WAIT wait_replicas wait_timeout_ms` on the connection that wrote (in cluster mode, to
    /// the master of the written key's slot) and fails the call with a `MaybeApplied`
    /// `Unavailable` error when fewer replicas confirm it. `0` (the default) turns it off. At
    /// most [`MAX_WAIT_REPLICAS`]. See `docs/redis.md`, "WAIT durability".
    pub wait_replicas: u32,
    /// How long `WAIT` may block for the replicas' confirmation (`wait_timeout_ms`, default
    /// 1000 ms): 1 ms ..= [`MAX_WAIT_TIMEOUT`]. Only read when `wait_replicas > 0`; the command
    /// itself may take `operation_timeout` on top.
    #[serde(rename = "wait_timeout_ms", with = "duration_ms")]
    pub wait_timeout: Duration,
}

impl RedisConfig {
    /// Defaults around `url`: 4 connections, 5 s connect and operation timeouts, prefix
    /// `kernel:`, a 24-hour operation window, default limits.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
            key_prefix: "kernel:".to_owned(),
            operation_window: DEFAULT_OPERATION_WINDOW,
            limits: Limits::DEFAULT,
            tls_ca_file: None,
            tls_system_roots: true,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks every setting; each error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            return Err(Error::config(
                "redis.url",
                "no Redis URL is set (REDIS_URL or redis.url), e.g. redis://127.0.0.1:6379",
            ));
        }
        check_topology(&self.url)?;
        if self.pool_size == 0 {
            return Err(Error::config(
                "redis.pool_size",
                "the pool needs at least 1 connection",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "redis.connect_timeout_ms",
                "must be greater than zero",
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(Error::config(
                "redis.operation_timeout_ms",
                "must be greater than zero",
            ));
        }
        if self.key_prefix.len() > MAX_KEY_PREFIX_LEN {
            return Err(Error::config(
                "redis.key_prefix",
                format!(
                    "is {} bytes; the limit is {MAX_KEY_PREFIX_LEN}",
                    self.key_prefix.len()
                ),
            ));
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(Error::config(
                "redis.key_prefix",
                "must not contain '{' or '}': they would move keys out of their hash-tag slot",
            ));
        }
        // Records expire with PX, which counts whole milliseconds and refuses 0.
        if self.operation_window < Duration::from_millis(1) {
            return Err(Error::config(
                "redis.operation_window_ms",
                "must be at least 1 ms",
            ));
        }
        if self.operation_window > MAX_OPERATION_WINDOW {
            return Err(Error::config(
                "redis.operation_window_ms",
                format!(
                    "is {} ms; the limit is {} ms (366 days): every record keeps a copy of its \
                     outcome in Redis for the whole window",
                    self.operation_window.as_millis(),
                    MAX_OPERATION_WINDOW.as_millis()
                ),
            ));
        }
        if self.wait_replicas > MAX_WAIT_REPLICAS {
            return Err(Error::config(
                "redis.wait_replicas",
                format!(
                    "is {}; the limit is {MAX_WAIT_REPLICAS} (0 turns WAIT off)",
                    self.wait_replicas
                ),
            ));
        }
        if self.wait_replicas > 0
            && (self.wait_timeout < Duration::from_millis(1)
                || self.wait_timeout > MAX_WAIT_TIMEOUT)
        {
            return Err(Error::config(
                "redis.wait_timeout_ms",
                format!(
                    "is {} ms; with redis.wait_replicas set it must be 1 ..= {} ms (WAIT 0 \
                     would block for ever)",
                    self.wait_timeout.as_millis(),
                    MAX_WAIT_TIMEOUT.as_millis()
                ),
            ));
        }
        self.limits.validate()?;
        Ok(())
    }
}

/// The deployment a URL's scheme names, as fred's `Config::from_url` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// `redis://`, `rediss://` (and `valkey[s]://`): one server.
    Single,
    /// `redis-cluster://`, `rediss-cluster://`: seed nodes of a Redis Cluster.
    Cluster,
    /// `redis-sentinel://`, `rediss-sentinel://`: sentinels and a service name.
    Sentinel,
}

/// The topology of `url`, from its scheme (`None`: not a scheme this driver reads).
pub(crate) fn topology(url: &str) -> Option<Topology> {
    let scheme = url.trim().split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "redis" | "rediss" | "valkey" | "valkeys" => Some(Topology::Single),
        "redis-cluster" | "rediss-cluster" | "valkey-cluster" | "valkeys-cluster" => {
            Some(Topology::Cluster)
        }
        "redis-sentinel" | "rediss-sentinel" | "valkey-sentinel" | "valkeys-sentinel" => {
            Some(Topology::Sentinel)
        }
        _ => None,
    }
}

/// Refuses URLs whose parts fred would silently ignore for their scheme: `node=` or
/// `sentinelServiceName=` on a single-server URL (it would connect to the first host alone), a
/// database other than 0 on a cluster URL (Redis Cluster has only database 0), a sentinel URL
/// without its service name. Errors name `redis.url` and show the URL redacted.
fn check_topology(url: &str) -> Result<()> {
    let shown = redact_url(url);
    let bad = |why: String| Error::config("redis.url", format!("{why} (URL {shown})"));
    let Some(topology) = topology(url) else {
        return Err(bad(
            "the scheme must be redis://, rediss://, redis-cluster://, rediss-cluster://, \
             redis-sentinel:// or rediss-sentinel://"
                .to_owned(),
        ));
    };
    let rest = url.trim().split_once("://").map_or("", |(_, r)| r);
    let rest = rest.split('#').next().unwrap_or("");
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .collect();
    let path = before_query.split_once('/').map_or("", |(_, p)| p);
    match topology {
        Topology::Single => {
            if let Some(p) = params
                .iter()
                .find(|p| matches!(**p, "node" | "sentinelServiceName"))
            {
                return Err(bad(format!(
                    "`{p}=` is only read with a redis-cluster:// or redis-sentinel:// URL; this \
                     single-server URL would connect to its first host alone"
                )));
            }
        }
        Topology::Cluster => {
            if !matches!(path, "" | "0") {
                return Err(bad(format!(
                    "a Redis Cluster has only database 0; remove `/{path}` from the URL"
                )));
            }
            if params.contains(&"sentinelServiceName") {
                return Err(bad(
                    "`sentinelServiceName=` belongs to a redis-sentinel:// URL".to_owned(),
                ));
            }
        }
        Topology::Sentinel => {
            if !params.contains(&"sentinelServiceName") {
                return Err(bad(
                    "a redis-sentinel:// URL needs `?sentinelServiceName=NAME` (the name the \
                     sentinels monitor the master under)"
                        .to_owned(),
                ));
            }
        }
    }
    Ok(())
}

impl Default for RedisConfig {
    /// [`RedisConfig::new`] with no URL: set one before connecting.
    fn default() -> Self {
        RedisConfig::new("")
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout)
            .field("operation_timeout_ms", &self.operation_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("operation_window_ms", &self.operation_window)
            .field("limits", &self.limits)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_system_roots", &self.tls_system_roots)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout_ms", &self.wait_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let config = RedisConfig::new("redis://user:hunter2@h");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("user:***@h"), "{debug}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = RedisConfig::default();
        assert_eq!(
            c.validate().unwrap_err().context_value("setting"),
            Some("redis.url")
        );
        c = RedisConfig::new("redis://127.0.0.1:6379");
        assert!(c.validate().is_ok());
        c.key_prefix = "a{b".into();
        assert_eq!(
            c.validate().unwrap_err().context_value("setting"),
            Some("redis.key_prefix")
        );
        c = RedisConfig::new("redis://127.0.0.1:6379");
        c.pool_size = 0;
        assert_eq!(
            c.validate().unwrap_err().context_value("setting"),
            Some("redis.pool_size")
        );
        c = RedisConfig::new("redis://127.0.0.1:6379");
        c.operation_timeout = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().context_value("setting"),
            Some("redis.operation_timeout_ms")
        );
        for window in [
            Duration::ZERO,
            Duration::from_micros(999),
            MAX_OPERATION_WINDOW + Duration::from_millis(1),
        ] {
            c = RedisConfig::new("redis://127.0.0.1:6379");
            c.operation_window = window;
            assert_eq!(
                c.validate().unwrap_err().context_value("setting"),
                Some("redis.operation_window_ms"),
                "{window:?}"
            );
        }
        c.operation_window = MAX_OPERATION_WINDOW;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn wait_settings_are_checked_and_read_from_milliseconds() {
        let c: RedisConfig = serde_json::from_str(
            r#"{"url": "redis://h", "wait_replicas": 1, "wait_timeout_ms": 250}"#,
        )
        .unwrap();
        assert_eq!(c.wait_replicas, 1);
        assert_eq!(c.wait_timeout, Duration::from_millis(250));
        assert!(c.validate().is_ok());
        assert_eq!(RedisConfig::default().wait_replicas, 0, "off by default");
        let mut bad = c.clone();
        bad.wait_timeout = Duration::ZERO;
        assert_eq!(
            bad.validate().unwrap_err().context_value("setting"),
            Some("redis.wait_timeout_ms")
        );
        bad.wait_replicas = 0;
        assert!(
            bad.validate().is_ok(),
            "the timeout is unused with WAIT off"
        );
        bad = c.clone();
        bad.wait_replicas = MAX_WAIT_REPLICAS + 1;
        assert_eq!(
            bad.validate().unwrap_err().context_value("setting"),
            Some("redis.wait_replicas")
        );
        bad = c;
        bad.wait_timeout = MAX_WAIT_TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            bad.validate().unwrap_err().context_value("setting"),
            Some("redis.wait_timeout_ms")
        );
    }

    #[test]
    fn topology_urls_are_checked() {
        for good in [
            "redis://127.0.0.1:6379/2",
            "rediss://:pw@h:6380",
            "redis-cluster://h:7000?node=h:7001&node=h:7002",
            "redis-cluster://h:7000/0",
            "rediss-cluster://u:pw@h:7000",
            "redis-sentinel://h:26379/1?sentinelServiceName=main&node=h2:26379",
            "rediss-sentinel://u:pw@h/0?sentinelServiceName=main&sentinelPassword=spw",
        ] {
            let c = RedisConfig::new(good);
            assert!(c.validate().is_ok(), "{good}: {:?}", c.validate());
        }
        for (bad, says) in [
            ("redis://h:7000?node=h:7001", "node="),
            ("redis://h?sentinelServiceName=main", "sentinelServiceName="),
            ("redis-cluster://h:7000/3", "database 0"),
            ("redis-sentinel://:s3cret@h:26379/0", "sentinelServiceName"),
            ("http://h:6379", "scheme"),
        ] {
            let e = RedisConfig::new(bad).validate().unwrap_err();
            assert_eq!(e.context_value("setting"), Some("redis.url"), "{bad}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        assert_eq!(topology("REDIS-CLUSTER://h:1"), Some(Topology::Cluster));
        assert_eq!(topology("rediss-sentinel://h"), Some(Topology::Sentinel));
    }

    #[test]
    fn the_operation_window_reads_as_milliseconds() {
        let c: RedisConfig =
            serde_json::from_str(r#"{"url": "redis://h", "operation_window_ms": 1500}"#).unwrap();
        assert_eq!(c.operation_window, Duration::from_millis(1500));
        assert_eq!(
            RedisConfig::default().operation_window,
            DEFAULT_OPERATION_WINDOW
        );
        let shown = serde_json::to_value(&c).unwrap();
        assert_eq!(shown["operation_window_ms"], 1500);
    }
}
