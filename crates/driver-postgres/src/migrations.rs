//! The schema migrations in `migrations/` (embedded at build time) and their runner.
//!
//! Applied migrations are recorded in `schema_migrations` (version, name, checksum,
//! applied_at). The runner refuses to go on when an applied migration's file changed (its
//! SHA-256 differs), runs each migration in its own transaction, and serialises concurrent
//! runners (two processes booting at once) with a transaction-scoped advisory lock, re-reading
//! the applied set under the lock so each migration runs exactly once.
//!
//! ```no_run
//! # async fn demo(client: &tokio_postgres::Client) -> kernel_core::Result<()> {
//! use driver_postgres::migrations::Migrator;
//!
//! let migrator = Migrator::new();
//! let applied = migrator.up(client).await?;
//! for status in migrator.status(client).await? {
//!     println!("{:04} {} {:?}", status.version, status.name, status.state);
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::SystemTime;

use kernel_core::{Error, Result};
use tokio_postgres::Client;

use crate::error::{BACKEND, pg};

/// One numbered migration: the SQL to apply it and to revert it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number (the file's `0001_` prefix).
    pub version: i64,
    /// Its name (the file's name after the number).
    pub name: &'static str,
    /// The `.up.sql` file.
    pub up: &'static str,
    /// The `.down.sql` file.
    pub down: &'static str,
}

/// Every migration of this build, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        up: include_str!("../../../migrations/0001_init.up.sql"),
        down: include_str!("../../../migrations/0001_init.down.sql"),
    },
    Migration {
        version: 2,
        name: "event_txid",
        up: include_str!("../../../migrations/0002_event_txid.up.sql"),
        down: include_str!("../../../migrations/0002_event_txid.down.sql"),
    },
];

/// Advisory lock (two-int form, class `KRNL`) that serialises migration runners.
const LOCK_CLASS: i32 = 1_263_685_452;
const LOCK_MIGRATE: i32 = 2;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     bigint PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp())";

/// Where one migration stands on a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, and the file is unchanged since.
    Applied {
        /// When it was applied.
        at: SystemTime,
    },
    /// Applied, but the file's checksum differs from the recorded one.
    Changed {
        /// When it was applied.
        at: SystemTime,
    },
    /// Not applied yet.
    Pending,
    /// Recorded in the database but unknown to this build (applied by a newer one).
    Unknown {
        /// When it was applied.
        at: SystemTime,
    },
}

/// One row of [`Migrator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Number.
    pub version: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: MigrationState,
}

/// Runs the embedded migrations against a database.
#[derive(Debug, Clone, Copy)]
pub struct Migrator {
    migrations: &'static [Migration],
}

impl Default for Migrator {
    fn default() -> Self {
        Migrator::new()
    }
}

struct Applied {
    name: String,
    checksum: String,
    at: SystemTime,
}

impl Migrator {
    /// The migrations embedded in this build.
    pub fn new() -> Migrator {
        Migrator {
            migrations: MIGRATIONS,
        }
    }

    /// A runner over other migrations (tests, tools).
    pub fn with_migrations(migrations: &'static [Migration]) -> Migrator {
        Migrator { migrations }
    }

    /// The migrations this runner knows, in order.
    pub fn migrations(&self) -> &'static [Migration] {
        self.migrations
    }

    /// A short fingerprint of every migration's text: equal fingerprints mean equal schemas.
    /// Test harnesses use it to name a template database.
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for m in self.migrations {
            m.version.hash(&mut h);
            m.up.hash(&mut h);
        }
        format!("{:016x}", h.finish())
    }

    /// Applies every pending migration, each in its own transaction; returns the versions
    /// applied by this call (empty when another runner did them or nothing was pending).
    /// Refuses (`Config`) when an applied migration's file changed.
    pub async fn up(&self, client: &Client) -> Result<Vec<i64>> {
        let checksums = self.checksums(client).await?;
        let checksums = &checksums;
        let mut done = Vec::new();
        for (m, checksum) in self.migrations.iter().zip(checksums) {
            let ran = locked(client, |applied| async move {
                self.verify(&applied, checksums)?;
                if applied.contains_key(&m.version) {
                    return Ok(false);
                }
                client.batch_execute(m.up).await.map_err(|e| {
                    pg(e).with_context("migration", format!("{:04}_{}", m.version, m.name))
                })?;
                client
                    .execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        &[&m.version, &m.name, checksum],
                    )
                    .await
                    .map_err(pg)?;
                Ok(true)
            })
            .await?;
            if ran {
                tracing::info!(version = m.version, name = m.name, "applied migration");
                done.push(m.version);
            }
        }
        Ok(done)
    }

    /// Reverts the last `n` applied migrations, newest first, each in its own transaction;
    /// returns the versions reverted.
    pub async fn rollback(&self, client: &Client, n: usize) -> Result<Vec<i64>> {
        let checksums = self.checksums(client).await?;
        let checksums = &checksums;
        let mut done = Vec::new();
        for _ in 0..n {
            let reverted = locked(client, |applied| async move {
                self.verify(&applied, checksums)?;
                let Some((&version, row)) = applied.iter().next_back() else {
                    return Ok(None);
                };
                let m = self
                    .migrations
                    .iter()
                    .find(|m| m.version == version)
                    .ok_or_else(|| {
                        Error::config(
                            "migrations",
                            format!(
                                "migration {version:04}_{} is applied but unknown to this build: \
                                 it cannot be rolled back from here",
                                row.name
                            ),
                        )
                        .with_context("backend", BACKEND)
                    })?;
                client.batch_execute(m.down).await.map_err(|e| {
                    pg(e).with_context("migration", format!("{:04}_{}", m.version, m.name))
                })?;
                client
                    .execute(
                        "DELETE FROM schema_migrations WHERE version = $1",
                        &[&m.version],
                    )
                    .await
                    .map_err(pg)?;
                Ok(Some(*m))
            })
            .await?;
            match reverted {
                Some(m) => {
                    tracing::info!(version = m.version, name = m.name, "reverted migration");
                    done.push(m.version);
                }
                None => break,
            }
        }
        Ok(done)
    }

    /// Every known and every recorded migration with its state, by version.
    pub async fn status(&self, client: &Client) -> Result<Vec<MigrationStatus>> {
        let checksums = self.checksums(client).await?;
        let applied = read_applied(client).await?;
        let mut out = Vec::new();
        for (m, sum) in self.migrations.iter().zip(&checksums) {
            let state = match applied.get(&m.version) {
                None => MigrationState::Pending,
                Some(row) if &row.checksum == sum => MigrationState::Applied { at: row.at },
                Some(row) => MigrationState::Changed { at: row.at },
            };
            out.push(MigrationStatus {
                version: m.version,
                name: m.name.to_owned(),
                state,
            });
        }
        for (version, row) in &applied {
            if !self.migrations.iter().any(|m| m.version == *version) {
                out.push(MigrationStatus {
                    version: *version,
                    name: row.name.clone(),
                    state: MigrationState::Unknown { at: row.at },
                });
            }
        }
        out.sort_by_key(|s| s.version);
        Ok(out)
    }

    /// Whether every known migration is applied unchanged.
    pub async fn is_current(&self, client: &Client) -> Result<bool> {
        Ok(self.status(client).await?.iter().all(|s| {
            matches!(
                s.state,
                MigrationState::Applied { .. } | MigrationState::Unknown { .. }
            )
        }))
    }

    /// SHA-256 of each migration's up file, computed by the server (no hashing crate needed).
    async fn checksums(&self, client: &Client) -> Result<Vec<String>> {
        let texts: Vec<&str> = self.migrations.iter().map(|m| m.up).collect();
        let rows = client
            .query(
                "SELECT encode(sha256(convert_to(t.sql, 'UTF8')), 'hex')
                 FROM unnest($1::text[]) WITH ORDINALITY AS t(sql, ord) ORDER BY t.ord",
                &[&texts],
            )
            .await
            .map_err(|e| pg(e).with_context("operation", "migrate"))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg))
            .collect()
    }

    fn verify(&self, applied: &BTreeMap<i64, Applied>, checksums: &[String]) -> Result<()> {
        for (m, sum) in self.migrations.iter().zip(checksums) {
            if let Some(row) = applied.get(&m.version) {
                if &row.checksum != sum {
                    return Err(Error::config(
                        "migrations",
                        format!(
                            "migration {:04}_{} was changed after it was applied (recorded \
                             checksum {}, file {}): restore the file or write a new migration",
                            m.version, m.name, row.checksum, sum
                        ),
                    )
                    .with_context("backend", BACKEND));
                }
            }
        }
        Ok(())
    }
}

/// Runs `step` in one transaction holding the migration lock, with the applied set read under
/// the lock; commits on success, rolls back on error.
async fn locked<T, F, Fut>(client: &Client, step: F) -> Result<T>
where
    F: FnOnce(BTreeMap<i64, Applied>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let outcome = async {
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&LOCK_CLASS, &LOCK_MIGRATE],
            )
            .await
            .map_err(pg)?;
        client.batch_execute(CREATE_TABLE).await.map_err(pg)?;
        let applied = read_applied(client).await?;
        step(applied).await
    }
    .await;
    match outcome {
        Ok(v) => {
            client.batch_execute("COMMIT").await.map_err(pg)?;
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::warn!(error = %rollback, "rollback after a failed migration step failed");
            }
            Err(e.with_context("operation", "migrate"))
        }
    }
}

async fn read_applied(client: &Client) -> Result<BTreeMap<i64, Applied>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = client
        .query(
            "SELECT version, name, checksum, applied_at FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg)?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(
            r.try_get::<_, i64>(0).map_err(pg)?,
            Applied {
                name: r.try_get(1).map_err(pg)?,
                checksum: r.try_get(2).map_err(pg)?,
                at: r.try_get(3).map_err(pg)?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_paired() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
            assert!(!m.up.trim().is_empty() && !m.down.trim().is_empty());
        }
        assert_eq!(Migrator::new().fingerprint(), Migrator::new().fingerprint());
    }
}
