//! Settings of the PostgreSQL driver, and the password redaction every log and `Debug` uses.

use std::fmt;
use std::time::Duration;

use kernel_core::subscription::SubscriptionConfig;
use kernel_core::{Error, Limits, Result};

/// How the driver connects and behaves. Build it with [`PostgresConfig::new`] and override
/// fields:
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
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection string: `postgres://user:password@host:port/dbname?...` or the key=value form.
    pub url: String,
    /// Most pooled connections (the notification listener uses one more of its own).
    pub pool_size: usize,
    /// Longest wait to open a connection.
    pub connect_timeout: Duration,
    /// Server-side limit on every statement (`statement_timeout`); an exceeded one is `Timeout`.
    /// It also bounds how long an append waits for its global positions.
    pub statement_timeout: Duration,
    /// Longest wait for a free pooled connection before a `Timeout` naming the pool.
    pub pool_wait_timeout: Duration,
    /// Run pending migrations in [`crate::PostgresDriver::connect`].
    pub migrate_on_boot: bool,
    /// Size and depth limits for values and metadata.
    pub limits: Limits,
    /// Page size of subscription reads and the poll interval that backs up notifications.
    pub subscription: SubscriptionConfig,
    /// `application_name` of the driver's sessions, as seen in `pg_stat_activity`; the listener
    /// connection adds `-listener`.
    pub application_name: String,
}

impl PostgresConfig {
    /// Defaults: 16 connections, 5 s connect timeout, 30 s statement timeout, 10 s pool wait,
    /// migrations on boot, default limits, 256-event pages, 1 s poll safety net.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            pool_wait_timeout: Duration::from_secs(10),
            migrate_on_boot: true,
            limits: Limits::DEFAULT,
            subscription: SubscriptionConfig {
                page_size: 256,
                poll_interval: Duration::from_secs(1),
            },
            application_name: "kernel".to_owned(),
        }
    }

    /// The connection string with its password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks the settings and parses the URL. Every failure is `Config` naming the setting;
    /// the URL itself is never echoed (it may hold a password).
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config =
            self.url.parse().map_err(|e: tokio_postgres::Error| {
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
            ("postgres.connect_timeout", self.connect_timeout),
            ("postgres.statement_timeout", self.statement_timeout),
            ("postgres.pool_wait_timeout", self.pool_wait_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(name, "timeout must be above zero")
                    .with_context("backend", "postgres"));
            }
        }
        if self.subscription.page_size == 0 || self.subscription.poll_interval.is_zero() {
            return Err(Error::config(
                "postgres.subscription",
                "subscription page size and poll interval must be above zero",
            )
            .with_context("backend", "postgres"));
        }
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
        Ok(pg)
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
            .finish()
    }
}

/// Replaces the password of a connection string (URL userinfo, `?password=` parameter or
/// key=value `password=`) with `***`. Anything it cannot parse is redacted whole after the
/// scheme, so a malformed string cannot leak a secret either.
pub fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            trimmed
                .strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        // The authority ends at the first '/', '?' or '#'; userinfo is before its last '@'.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rfind('@') {
            Some(at) => {
                let (userinfo, host) = authority.split_at(at);
                match userinfo.find(':') {
                    Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                    None => format!("{userinfo}{host}"),
                }
            }
            None => authority.to_owned(),
        };
        return format!("{scheme}{authority}{}", redact_params(tail, '&'));
    }
    if trimmed.contains("://") {
        // Some other scheme: nothing to rely on.
        return "***".to_owned();
    }
    redact_params(trimmed, ' ')
}

/// Redacts `password=...` pairs separated by `sep` (query string or key=value form).
fn redact_params(text: &str, sep: char) -> String {
    let lower = text.to_ascii_lowercase();
    let Some(start) = lower.find("password") else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    let mut rest_start = 0;
    let mut search_from = start;
    while let Some(rel) = lower[search_from..].find("password") {
        let idx = search_from + rel;
        let after_name = idx + "password".len();
        let tail = &text[after_name..];
        let eq = tail.len() - tail.trim_start().len();
        if !tail.trim_start().starts_with('=') {
            search_from = after_name;
            continue;
        }
        let value_start = after_name + eq + 1;
        let value_tail = &text[value_start..];
        let spaces = value_tail.len() - value_tail.trim_start().len();
        let value_start = value_start + spaces;
        let value_tail = &text[value_start..];
        let value_len = if let Some(quoted) = value_tail.strip_prefix('\'') {
            // key=value form allows quoted values with \' escapes.
            let mut len = 1;
            let mut escaped = false;
            for c in quoted.chars() {
                len += c.len_utf8();
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '\'' {
                    break;
                }
            }
            len
        } else {
            value_tail
                .find(|c: char| c == sep || (sep == '&' && c == '#') || c.is_whitespace())
                .unwrap_or(value_tail.len())
        };
        out.push_str(&text[rest_start..value_start]);
        out.push_str("***");
        rest_start = value_start + value_len;
        search_from = rest_start;
    }
    out.push_str(&text[rest_start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        let cases = [
            (
                "postgres://app:s3cr%40t@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "postgresql://app:pw@db/app?sslmode=disable",
                "postgresql://app:***@db/app?sslmode=disable",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            (
                "postgres://db/app?user=a&password=pw&x=1",
                "postgres://db/app?user=a&password=***&x=1",
            ),
            (
                "host=db user=app password=pw dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            (
                "host=db password = 'p w\\'x' dbname=app",
                "host=db password = *** dbname=app",
            ),
            ("mysql://u:pw@h/db", "***"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

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
    fn zero_pool_is_rejected() {
        let config = PostgresConfig {
            pool_size: 0,
            ..PostgresConfig::new("postgres://u@h/db")
        };
        let err = config.pg_config().unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.pool_size"));
    }
}
