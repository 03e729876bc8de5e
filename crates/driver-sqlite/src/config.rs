//! Settings of the SQLite driver.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kernel_core::operation::DEFAULT_OPERATION_WINDOW;
use kernel_core::settings::duration_ms;
use kernel_core::subscription::SubscriptionConfig;
use kernel_core::{Error, Limits, Result};
use serde::{Deserialize, Serialize};

/// Most read connections accepted.
pub const MAX_READ_CONNECTIONS: usize = 64;

/// Longest operation window accepted: a year. Records are kept that long, so a longer window
/// is far more likely a unit mistake (seconds given as milliseconds) than an intent.
pub const MAX_OPERATION_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// SQLite's `PRAGMA synchronous` for the writer connection: how hard a commit waits for the
/// disk. The database always runs in WAL mode, where SQLite's documentation gives these
/// guarantees:
///
/// * `normal` (the default): a commit is atomic and consistent, and survives a crash of the
///   *application*; after a power loss or an operating-system crash the last commits before it
///   may be rolled back (the database stays intact). Commits do not wait for `fsync`.
/// * `full`: every commit also waits for the WAL to be synced, so a commit that returned
///   survives a power loss too. Slower per commit; group commit amortises it.
/// * `extra`: `full`, plus syncing the directory after a journal change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Synchronous {
    /// `PRAGMA synchronous = NORMAL`.
    #[default]
    Normal,
    /// `PRAGMA synchronous = FULL`.
    Full,
    /// `PRAGMA synchronous = EXTRA`.
    Extra,
}

impl Synchronous {
    /// The pragma's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// How the driver opens and runs its database file. Build it with [`SqliteConfig::new`] and
/// override fields, or deserialize it (kernel-bootstrap reads it as the `[sqlite]` table of its
/// configuration; every field is optional there and defaults to [`SqliteConfig::default`]):
///
/// ```
/// use std::time::Duration;
/// use driver_sqlite::{SqliteConfig, Synchronous};
///
/// let config = SqliteConfig {
///     synchronous: Synchronous::Full,
///     poll_interval: Duration::from_millis(50),
///     ..SqliteConfig::new("/var/lib/app/kernel.db")
/// };
/// assert!(config.validate().is_ok());
/// assert!(SqliteConfig::default().validate().is_err(), "no path set");
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; created (with its directory's `-wal` and `-shm` companions) if
    /// missing. Its directory must exist. Several processes may open the same file.
    pub path: String,
    /// How long a statement waits for a lock another connection (usually another process)
    /// holds before failing with a retryable `Unavailable` (`busy_timeout_ms`).
    #[serde(rename = "busy_timeout_ms", with = "duration_ms")]
    pub busy_timeout: Duration,
    /// Read connections: how many reads run in parallel (at least 1). Writes always go through
    /// the one writer connection.
    pub read_connections: usize,
    /// How often the driver checks whether *another process* committed to the file
    /// (`PRAGMA data_version`), to wake its subscriptions; this bounds the cross-process delivery
    /// delay. Commits of this process wake subscriptions at once (`poll_interval_ms`).
    #[serde(rename = "poll_interval_ms", with = "duration_ms")]
    pub poll_interval: Duration,
    /// Durability of a commit; see [`Synchronous`].
    pub synchronous: Synchronous,
    /// Page size of subscription reads, and the interval at which an idle subscription re-reads
    /// even without a wake-up: the safety net behind the writer's and the watcher's wake-ups
    /// (`subscription.page_size`, `subscription.poll_interval_ms`; 256 events, 1 s).
    pub subscription: SubscriptionConfig,
    /// How long an operation id ([`kernel_core::StorageDriver::write_once`],
    /// [`kernel_core::Transaction::commit_once`]) is remembered: a repeat within it is a replay,
    /// a later one a new write (`operation_window_ms`; 24 h, at most
    /// [`MAX_OPERATION_WINDOW`]).
    #[serde(rename = "operation_window_ms", with = "duration_ms")]
    pub operation_window: Duration,
    /// Size and depth limits for values and metadata. Not part of the `[sqlite]` table: the
    /// bootstrap sets it from `[limits]`, shared by every driver.
    #[serde(skip)]
    pub limits: Limits,
}

impl SqliteConfig {
    /// Defaults around `path`: 5 s busy timeout, 4 read connections, 100 ms cross-process poll,
    /// `synchronous = normal`, 256-event subscription pages with a 1 s safety-net re-read,
    /// a 24 h operation window, default limits.
    pub fn new(path: impl Into<String>) -> SqliteConfig {
        SqliteConfig {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            poll_interval: Duration::from_millis(100),
            synchronous: Synchronous::Normal,
            subscription: SubscriptionConfig::default(),
            operation_window: DEFAULT_OPERATION_WINDOW,
            limits: Limits::DEFAULT,
        }
    }

    /// The path as a `PathBuf`.
    pub fn path_buf(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }

    /// Checks every setting without touching the file. Every failure is `Config` naming the
    /// setting (`sqlite.path`, ...).
    pub fn validate(&self) -> Result<()> {
        let err = |setting: &str, msg: String| {
            Error::config(setting, msg).with_context("backend", "sqlite")
        };
        if self.path.trim().is_empty() {
            return Err(err(
                "sqlite.path",
                "no SQLite database file is set (KERNEL_SQLITE_PATH or sqlite.path), e.g. \
                 /var/lib/app/kernel.db"
                    .to_owned(),
            ));
        }
        if self.path == ":memory:" || self.path.starts_with("file:") {
            return Err(err(
                "sqlite.path",
                format!(
                    "{:?} is not a file path: the driver needs a file that its writer and \
                     reader connections share (use the memory driver for an in-process store)",
                    self.path
                ),
            )
            .with_context("path", &self.path));
        }
        if self.busy_timeout.is_zero() {
            return Err(err(
                "sqlite.busy_timeout_ms",
                "must be greater than zero".to_owned(),
            ));
        }
        if !(1..=MAX_READ_CONNECTIONS).contains(&self.read_connections) {
            return Err(err(
                "sqlite.read_connections",
                format!(
                    "expected 1..={MAX_READ_CONNECTIONS}, got {}",
                    self.read_connections
                ),
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(err(
                "sqlite.poll_interval_ms",
                "must be greater than zero".to_owned(),
            ));
        }
        if self.subscription.page_size == 0 {
            return Err(err(
                "sqlite.subscription.page_size",
                "the subscription page size must be above zero".to_owned(),
            ));
        }
        if self.subscription.poll_interval.is_zero() {
            return Err(err(
                "sqlite.subscription.poll_interval_ms",
                "the subscription poll interval must be above zero".to_owned(),
            ));
        }
        if self.operation_window.is_zero() || self.operation_window > MAX_OPERATION_WINDOW {
            return Err(err(
                "sqlite.operation_window_ms",
                format!(
                    "expected 1 ms ..= {} ms (a year), got {} ms",
                    MAX_OPERATION_WINDOW.as_millis(),
                    self.operation_window.as_millis()
                ),
            ));
        }
        self.limits.validate()
    }
}

impl Default for SqliteConfig {
    /// [`SqliteConfig::new`] with no path: set one before opening.
    fn default() -> Self {
        SqliteConfig::new("")
    }
}

impl fmt::Debug for SqliteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConfig")
            .field("path", &self.path)
            .field("busy_timeout", &self.busy_timeout)
            .field("read_connections", &self.read_connections)
            .field("poll_interval", &self.poll_interval)
            .field("synchronous", &self.synchronous)
            .field("subscription", &self.subscription)
            .field("operation_window", &self.operation_window)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_setting() {
        let cases = [
            (SqliteConfig::default(), "sqlite.path"),
            (SqliteConfig::new(":memory:"), "sqlite.path"),
            (
                SqliteConfig {
                    read_connections: 0,
                    ..SqliteConfig::new("x.db")
                },
                "sqlite.read_connections",
            ),
            (
                SqliteConfig {
                    poll_interval: Duration::ZERO,
                    ..SqliteConfig::new("x.db")
                },
                "sqlite.poll_interval_ms",
            ),
            (
                SqliteConfig {
                    operation_window: Duration::ZERO,
                    ..SqliteConfig::new("x.db")
                },
                "sqlite.operation_window_ms",
            ),
            (
                SqliteConfig {
                    operation_window: MAX_OPERATION_WINDOW + Duration::from_millis(1),
                    ..SqliteConfig::new("x.db")
                },
                "sqlite.operation_window_ms",
            ),
            (
                SqliteConfig {
                    busy_timeout: Duration::ZERO,
                    ..SqliteConfig::new("x.db")
                },
                "sqlite.busy_timeout_ms",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.code(), kernel_core::ErrorCode::Config, "{err}");
            assert_eq!(err.context_value("setting"), Some(setting), "{err}");
        }
    }

    #[test]
    fn deserializes_with_defaults() {
        let c: SqliteConfig =
            serde_json::from_str(r#"{"path": "a.db", "synchronous": "full"}"#).unwrap();
        assert_eq!(c.synchronous, Synchronous::Full);
        assert_eq!(c.read_connections, 4);
        assert_eq!(c.operation_window, DEFAULT_OPERATION_WINDOW);
        let c: SqliteConfig =
            serde_json::from_str(r#"{"path": "a.db", "operation_window_ms": 1500}"#).unwrap();
        assert_eq!(c.operation_window, Duration::from_millis(1500));
        assert!(serde_json::from_str::<SqliteConfig>(r#"{"pathh": "a.db"}"#).is_err());
    }
}
