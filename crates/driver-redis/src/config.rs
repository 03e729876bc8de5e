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
        self.limits.validate()?;
        Ok(())
    }
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
