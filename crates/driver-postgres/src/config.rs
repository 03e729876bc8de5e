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
    /// Whether the database enforces tenants too (`tenancy`, `off` by default): with
    /// [`Tenancy::Rls`] every call of a tenant-scoped store runs with `kernel.tenant` set to
    /// its tenant, and the row-level security policies of migration 0007 hold. See
    /// `docs/postgres.md`, "Row-level security".
    pub tenancy: Tenancy,
    /// What [`PostgresConfig::url`] points at (`pooler`, default `none`): the server itself, or
    /// a connection pooler (PgBouncer, Supavisor) in `session` or `transaction` mode. Poolers
    /// refuse the startup `options` the driver sets `statement_timeout` with; a transaction
    /// pooler also rules out named prepared statements, session settings and LISTEN. See
    /// [`Pooler`] and `docs/deployment.md`, "PostgreSQL".
    pub pooler: Pooler,
    /// A connection string for the LISTEN connection (`listen_url`), when it must not use
    /// [`PostgresConfig::url`]: a direct connection (or a session pooler) next to a transaction
    /// pooler, where it is required. Unset, the listener uses `url`. Its own `sslmode` /
    /// `sslrootcert` apply, with [`PostgresConfig::tls_ca_file`] and
    /// [`PostgresConfig::tls_system_roots`]. Serialized with its password masked.
    #[serde(serialize_with = "serialize_redacted_option")]
    pub listen_url: Option<String>,
}

/// What the driver's [`PostgresConfig::url`] points at ([`PostgresConfig::pooler`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Pooler {
    /// The PostgreSQL server itself: `statement_timeout` travels in the startup `options`,
    /// statements are prepared once per connection.
    #[default]
    None,
    /// A pooler in session mode (PgBouncer `pool_mode = session`, Supavisor's session port):
    /// a client keeps one server session, so everything works; `statement_timeout` is set with
    /// `SET` on each new connection, as the pooler refuses startup `options`.
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, Supavisor's port
    /// 6543): each transaction may run on another server session. The driver sends unnamed
    /// statements only and no session setting; `statement_timeout` must be the server's own
    /// (set on the role, checked at connect); LISTEN needs
    /// [`PostgresConfig::listen_url`]; `tenancy = "rls"` is refused (a session setting).
    Transaction,
}

/// [`serialize_redacted`] for an optional URL.
fn serialize_redacted_option<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_some(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// Whether PostgreSQL itself separates tenants ([`PostgresConfig::tenancy`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tenancy {
    /// The tenant layer alone keeps tenants apart (by name), on every driver alike.
    #[default]
    Off,
    /// Row-level security as well: every connection the driver uses for a call carries the
    /// call's tenant (`kernel.tenant`, from [`kernel_core::tenancy::current`]) and the
    /// database shows a role subject to row-level security only that tenant's rows. At
    /// connect the driver checks that row-level security is on (and turns it on when it may
    /// migrate).
    Rls,
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
            tenancy: Tenancy::Off,
            pooler: Pooler::None,
            listen_url: None,
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
        if self.pooler == Pooler::None {
            let statement_ms = self.statement_timeout_ms();
            let mut options = pg.get_options().map(str::to_owned).unwrap_or_default();
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c statement_timeout={statement_ms}"));
            pg.options(options);
        } else {
            self.check_pooler(&pg)?;
        }
        let tls = crate::tls::configure(self, &url_tls, &mut pg)?;
        Ok((pg, tls))
    }
}

impl PostgresConfig {
    /// [`PostgresConfig::statement_timeout`] in whole milliseconds (at least 1), as the server
    /// setting takes it.
    pub(crate) fn statement_timeout_ms(&self) -> u128 {
        self.statement_timeout.as_millis().max(1)
    }

    /// What a pooler rules out, checked without connecting: startup `options` in the URL (any
    /// pooler), and with [`Pooler::Transaction`] a missing [`PostgresConfig::listen_url`] and
    /// [`Tenancy::Rls`].
    fn check_pooler(&self, pg: &tokio_postgres::Config) -> Result<()> {
        let pooler = match self.pooler {
            Pooler::None => return Ok(()),
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        };
        if pg.get_options().is_some_and(|o| !o.trim().is_empty()) {
            return Err(Error::config(
                "postgres.url",
                format!(
                    "the connection string sets startup `options`, but postgres.pooler =                      {pooler}: connection poolers refuse them (PgBouncer: \"unsupported startup \
                     parameter: options\") or drop them. Set those settings on the role instead \
                     (ALTER ROLE .. SET ..) and remove `options` from the URL ({})",
                    self.redacted_url()
                ),
            )
            .with_context("backend", "postgres"));
        }
        if self.pooler != Pooler::Transaction {
            return Ok(());
        }
        if self
            .listen_url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
        {
            return Err(Error::config(
                "postgres.listen_url",
                "postgres.pooler = transaction needs postgres.listen_url (KERNEL_POSTGRES_LISTEN_URL), \
                 a direct connection string for LISTEN: through a transaction pooler LISTEN \
                 succeeds but notifications go to a server session the driver no longer holds, \
                 so subscriptions would only ever wake by polling",
            )
            .with_context("backend", "postgres"));
        }
        if self.tenancy == Tenancy::Rls {
            return Err(Error::config(
                "postgres.tenancy",
                "tenancy = rls cannot work through a transaction pooler (postgres.pooler = \
                 transaction): the tenant is a session setting (kernel.tenant) made before each \
                 call, and the call's statements may run on another server session with another \
                 tenant. Connect directly or through a session pooler (pooler = session), or \
                 turn tenancy off",
            )
            .with_context("backend", "postgres"));
        }
        Ok(())
    }

    /// The LISTEN connection's settings: [`PostgresConfig::listen_url`] parsed like `url`
    /// (its own `sslmode` / `sslrootcert`), or `None` to use the pool's. Failures are `Config`
    /// naming `postgres.listen_url`, without the URL's password.
    pub(crate) fn listen_config(
        &self,
    ) -> Result<Option<(tokio_postgres::Config, crate::tls::PgTls)>> {
        let Some(url) = self.listen_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let (rest, url_tls) = crate::tls::split_url(url);
        let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            Error::config(
                "postgres.listen_url",
                format!(
                    "postgres.listen_url is not a valid PostgreSQL connection string ({}): {e}",
                    redact_url(url)
                ),
            )
            .with_context("backend", "postgres")
        })?;
        if pg.get_hosts().is_empty() {
            return Err(Error::config(
                "postgres.listen_url",
                format!("postgres.listen_url names no host ({})", redact_url(url)),
            )
            .with_context("backend", "postgres"));
        }
        if pg.get_user().is_none() {
            if let Ok(user) = std::env::var("USER") {
                pg.user(user);
            }
        }
        pg.connect_timeout(self.connect_timeout);
        let tls = crate::tls::configure(self, &url_tls, &mut pg)
            .map_err(|e| e.with_context("connection", "postgres.listen_url"))?;
        Ok(Some((pg, tls)))
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
            .field("tenancy", &self.tenancy)
            .field("pooler", &self.pooler)
            .field("listen_url", &self.listen_url.as_deref().map(redact_url))
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
    fn poolers_are_checked_without_connecting() {
        let direct = PostgresConfig::new("postgres://u:hunter2@h/db");
        assert!(direct.validate().is_ok());
        let (pg, _) = direct.pg_config().unwrap();
        assert!(pg.get_options().unwrap().contains("statement_timeout"));

        let session = PostgresConfig {
            pooler: Pooler::Session,
            ..direct.clone()
        };
        let (pg, _) = session.pg_config().unwrap();
        assert_eq!(
            pg.get_options(),
            None,
            "no startup options through a pooler"
        );

        let with_options = PostgresConfig {
            pooler: Pooler::Session,
            ..PostgresConfig::new("postgres://u:hunter2@h/db?options=-c%20search_path%3Dx")
        };
        let err = with_options.validate().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.url"));
        assert!(!format!("{err} {err:?}").contains("hunter2"));

        let transaction = PostgresConfig {
            pooler: Pooler::Transaction,
            ..direct.clone()
        };
        let err = transaction.validate().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.listen_url"));

        let transaction = PostgresConfig {
            listen_url: Some("postgres://u:hunter3@direct/db".to_owned()),
            ..transaction
        };
        assert!(transaction.validate().is_ok());
        let (listen, _) = transaction.listen_config().unwrap().unwrap();
        assert_eq!(listen.get_dbname(), Some("db"));
        let shown = format!(
            "{transaction:?} {}",
            serde_json::to_string(&transaction).unwrap()
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );

        let rls = PostgresConfig {
            tenancy: Tenancy::Rls,
            ..transaction.clone()
        };
        let err = rls.validate().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.tenancy"));

        let bad_listen = PostgresConfig {
            listen_url: Some("postgres://u:hunter3@direct:notaport/db".to_owned()),
            ..transaction
        };
        let err = bad_listen.listen_config().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.listen_url"));
        assert!(!format!("{err} {err:?}").contains("hunter3"));

        let parsed: PostgresConfig = serde_json::from_str(
            r#"{"url": "postgres://u@h/db", "pooler": "transaction", "listen_url": "postgres://u@d/db"}"#,
        )
        .unwrap();
        assert_eq!(parsed.pooler, Pooler::Transaction);
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
