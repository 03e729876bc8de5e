//! The driver's settings; `Debug` shows the URL through kernel-core's redaction.

use std::fmt;
use std::time::Duration;

use kernel_core::redact::redact_url;
use kernel_core::settings::{duration_ms, serialize_redacted};
use kernel_core::{Error, Limits, Result};
use serde::{Deserialize, Serialize};

/// Longest key prefix accepted: every Redis key carries it, so it should stay short.
pub const MAX_KEY_PREFIX_LEN: usize = 256;

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
    /// Value and metadata size / depth limits. Not part of the `[redis]` table: the bootstrap
    /// sets it from `[limits]`, shared by every driver.
    #[serde(skip)]
    pub limits: Limits,
}

impl RedisConfig {
    /// Defaults around `url`: 4 connections, 5 s connect and operation timeouts, prefix
    /// `kernel:`, default limits.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
            key_prefix: "kernel:".to_owned(),
            limits: Limits::DEFAULT,
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
            .field("limits", &self.limits)
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
    }
}
