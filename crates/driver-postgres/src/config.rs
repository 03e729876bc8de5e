//! Settings of the PostgreSQL driver, and the password redaction every log and `Debug` uses.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kernel_core::operation::DEFAULT_OPERATION_WINDOW;
use kernel_core::redact::redact_url;
use kernel_core::settings::{duration_ms, serialize_redacted};
use kernel_core::subscription::SubscriptionConfig;
use kernel_core::{Error, Limits, Result};
use serde::{Deserialize, Serialize};

/// How the driver connects and behaves. Build it with [`PostgresConfig::new`] and override
/// fields, or deserialize it (kernel-bootstrap reads it as the `[postgres]` table of its
/// configuration; every field is optional there and defaults to [`PostgresConfig::default`]):
///
/// ```
/// use std::time::Duration;
/// use driver_postgres::PostgresConfig;
///
/// let config = PostgresConfig {
///     pool_size: 32,
///     statement_timeout: Duration::from_secs(10),
///     ..PostgresConfig::new("postgres://app:secret@db.internal:5432/app")
/// };
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string: `postgres://user:password@host:port/dbname?...` or the key=value form.
    /// Serialized with its password masked.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Most pooled connections (the notification listener uses one more of its own).
    pub pool_size: usize,
    /// Longest wait to open a connection (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "duration_ms")]
    pub connect_timeout: Duration,
    /// Server-side limit on every statement (`statement_timeout`); an exceeded one is `Timeout`.
    /// It also bounds how long an append waits for its global positions
    /// (`statement_timeout_ms`).
    #[serde(rename = "statement_timeout_ms", with = "duration_ms")]
    pub statement_timeout: Duration,
    /// Longest wait for a free pooled connection before a `Timeout` naming the pool
    /// (`pool_wait_timeout_ms`).
    #[serde(rename = "pool_wait_timeout_ms", with = "duration_ms")]
    pub pool_wait_timeout: Duration,
    /// Run pending migrations in [`crate::PostgresDriver::connect`].
    pub migrate_on_boot: bool,
    /// Size and depth limits for values and metadata. Not part of the `[postgres]` table:
    /// the bootstrap sets it from `[limits]`, shared by every driver.
    #[serde(skip)]
    pub limits: Limits,
    /// Page size of subscription reads and the poll interval that backs up notifications.
    pub subscription: SubscriptionConfig,
    /// `application_name` of the driver's sessions, as seen in `pg_stat_activity`; the listener
    /// connection adds `-listener`.
    pub application_name: String,
    /// How long an operation id is remembered after its write
    /// ([`kernel_core::StorageDriver::write_once`]): a repeat within it replays, a later one is
    /// a new write (`operation_window_ms`, default 24 hours, at most
    /// [`PostgresConfig::MAX_OPERATION_WINDOW`]).
    #[serde(rename = "operation_window_ms", with = "duration_ms")]
    pub operation_window: Duration,
    /// A PEM file of CA certificates to trust for TLS (`tls_ca_file`), e.g. the CA a hosted
    /// PostgreSQL publishes. The URL's `sslrootcert` wins over it. Setting it without an
    /// `sslmode` in the URL means `verify-full`. See `docs/postgres.md`, "TLS".
    pub tls_ca_file: Option<PathBuf>,
    /// Trust the operating system's CA store too (`tls_system_roots`, default on): enough for
    /// a server whose certificate is signed by a public CA.
    pub tls_system_roots: bool,
}

impl PostgresConfig {
    /// The longest [`PostgresConfig::operation_window`] accepted: 366 days. Records are kept
    /// for the whole window, so a longer one is almost certainly a unit mistake (seconds given
    /// as milliseconds...) that would grow `kernel_operations` without bound.
    pub const MAX_OPERATION_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    /// Defaults: 16 connections, 5 s connect timeout, 30 s statement timeout, 10 s pool wait,
    /// migrations on boot, default limits, 256-event pages, 1 s poll safety net, 24 h operation
    /// window.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            pool_wait_timeout: Duration::from_secs(10),
            migrate_on_boot: true,
            limits: Limits::DEFAULT,
            subscription: SubscriptionConfig::default(),
            application_name: "kernel".to_owned(),
            operation_window: DEFAULT_OPERATION_WINDOW,
            tls_ca_file: None,
            tls_system_roots: true,
        }
    }

    /// The connection string with its password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks every setting without connecting. Every failure is `Config` naming the setting
    /// (`postgres.pool_size`...); the URL itself is never echoed (it may hold a password).
    pub fn validate(&self) -> Result<()> {
        self.pg_config().map(drop)
    }

    /// The TLS mode and connector these settings give (the URL's `sslmode` / `sslrootcert`,
    /// [`PostgresConfig::tls_ca_file`], [`PostgresConfig::tls_system_roots`]).
    pub fn tls(&self) -> Result<crate::tls::PgTls> {
        self.pg_config().map(|(_, tls)| tls)
    }

    /// Checks the settings and parses the URL. Every failure is `Config` naming the setting;
    /// the URL itself is never echoed (it may hold a password).
    pub(crate) fn pg_config(&self) -> Result<(tokio_postgres::Config, crate::tls::PgTls)> {
        if self.url.trim().is_empty() {
            return Err(Error::config(
                "postgres.url",
                "no PostgreSQL connection string is set (DATABASE_URL or postgres.url), e.g. \
                 postgres://user:password@host:5432/db",
            )
            .with_context("backend", "postgres"));
        }
        // tokio-postgres knows neither verify-ca / verify-full nor sslrootcert: take them out.
        let (rest, url_tls) = crate::tls::split_url(&self.url);
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            Error::config(
                "postgres.url",
                format!(
                    "DATABASE_URL is not a valid PostgreSQL connection string ({}): {e}",
                    self.redacted_url()
                ),
            )
            .with_context("backend", "postgres")
        })?;
        if pg.get_hosts().is_empty() {
            return Err(Error::config(
                "postgres.url",
                format!(
                    "the connection string names no host ({})",
                    self.redacted_url()
                ),
            )
            .with_context("backend", "postgres"));
        }
        if self.pool_size == 0 {
            return Err(
                Error::config("postgres.pool_size", "pool size must be at least 1")
                    .with_context("backend", "postgres"),
            );
        }
        for (name, value) in [
            ("postgres.connect_timeout_ms", self.connect_timeout),
            ("postgres.statement_timeout_ms", self.statement_timeout),
            ("postgres.pool_wait_timeout_ms", self.pool_wait_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(name, "timeout must be above zero")
                    .with_context("backend", "postgres"));
            }
        }
        if self.subscription.page_size == 0 {
            return Err(Error::config(
                "postgres.subscription.page_size",
                "the subscription page size must be above zero",
            )
            .with_context("backend", "postgres"));
        }
        if self.subscription.poll_interval.is_zero() {
            return Err(Error::config(
                "postgres.subscription.poll_interval_ms",
                "the subscription poll interval must be above zero",
            )
            .with_context("backend", "postgres"));
        }
        if self.operation_window.is_zero() || self.operation_window > Self::MAX_OPERATION_WINDOW {
            return Err(Error::config(
                "postgres.operation_window_ms",
                format!(
                    "the operation window must be above zero and at most {} ms (366 days); \
                     got {} ms",
                    Self::MAX_OPERATION_WINDOW.as_millis(),
                    self.operation_window.as_millis()
                ),
            )
            .with_context("backend", "postgres"));
        }
        self.limits.validate()?;
        if pg.get_user().is_none() {
            // libpq's default: the operating-system user.
            if let Ok(user) = std::env::var("USER") {
                pg.user(user);
            }
        }
        pg.connect_timeout(self.connect_timeout);
        pg.application_name(&self.application_name);
        let statement_ms = self.statement_timeout.as_millis().max(1);
        let mut options = pg.get_options().map(str::to_owned).unwrap_or_default();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!("-c statement_timeout={statement_ms}"));
        pg.options(options);
        let tls = crate::tls::configure(self, &url_tls, &mut pg)?;
        Ok((pg, tls))
    }
}

impl Default for PostgresConfig {
    /// [`PostgresConfig::new`] with no URL: set one before connecting.
    fn default() -> Self {
        PostgresConfig::new("")
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("pool_wait_timeout", &self.pool_wait_timeout)
            .field("migrate_on_boot", &self.migrate_on_boot)
            .field("limits", &self.limits)
            .field("subscription", &self.subscription)
            .field("application_name", &self.application_name)
            .field("operation_window", &self.operation_window)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_system_roots", &self.tls_system_roots)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let config = PostgresConfig::new("postgres://app:hunter2@db/app?password=hunter3");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(shown.contains("app:***@db"), "{shown}");
    }

    #[test]
    fn malformed_url_is_a_config_error_without_the_secret() {
        let config = PostgresConfig::new("postgres://app:hunter2@db:notaport/app");
        let err = config.pg_config().unwrap_err();
        assert_eq!(err.code(), kernel_core::ErrorCode::Config);
        assert_eq!(err.context_value("setting"), Some("postgres.url"));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn operation_window_is_bounded_and_read_in_ms() {
        for bad in [
            Duration::ZERO,
            PostgresConfig::MAX_OPERATION_WINDOW + Duration::from_secs(1),
        ] {
            let config = PostgresConfig {
                operation_window: bad,
                ..PostgresConfig::new("postgres://u@h/db")
            };
            let err = config.pg_config().unwrap_err();
            assert_eq!(err.code(), kernel_core::ErrorCode::Config);
            assert_eq!(
                err.context_value("setting"),
                Some("postgres.operation_window_ms")
            );
        }
        let config: PostgresConfig =
            serde_json::from_str(r#"{"url": "postgres://u@h/db", "operation_window_ms": 1500}"#)
                .unwrap();
        assert_eq!(config.operation_window, Duration::from_millis(1500));
        assert!(config.validate().is_ok());
        assert_eq!(
            PostgresConfig::default().operation_window,
            DEFAULT_OPERATION_WINDOW
        );
    }

    #[test]
    fn zero_pool_is_rejected() {
        let config = PostgresConfig {
            pool_size: 0,
            ..PostgresConfig::new("postgres://u@h/db")
        };
        let err = config.pg_config().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.pool_size"));
    }
}
