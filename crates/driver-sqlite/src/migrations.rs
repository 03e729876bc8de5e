//! The schema: versioned SQL embedded in the crate (`migrations/NNNN_name.sql`), applied in
//! order when the driver opens a file, each in the same `BEGIN IMMEDIATE` transaction as its row
//! in `kernel_schema_migrations`, so two processes opening a fresh file at once apply it once.
//!
//! Only forward migrations exist (an embedded database is rolled back by restoring the file).
//! A file whose schema is newer than this driver knows is refused with a `Config` error naming
//! the file: an older driver must not write into tables it does not understand.

use kernel_core::{Error, Result};
use rusqlite::{Connection, OptionalExtension};

use crate::error::Db;
use crate::unix_micros_now;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version; applied in ascending order.
    pub version: i64,
    /// Its name.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration this driver knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "operations",
        sql: include_str!("../migrations/0002_operations.sql"),
    },
    Migration {
        version: 3,
        name: "generation",
        sql: include_str!("../migrations/0003_generation.sql"),
    },
];

/// The newest schema version this driver knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the schema of `conn`'s database up to [`latest_version`]; returns the versions it
/// applied. `path` names the file in errors.
pub(crate) fn migrate(conn: &mut Connection, path: &str) -> Result<Vec<i64>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS kernel_schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )
    .db()?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .db()?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM kernel_schema_migrations",
            [],
            |r| r.get(0),
        )
        .db()?;
    if current > latest_version() {
        return Err(Error::config(
            "sqlite.path",
            format!(
                "the database file's schema is at version {current}, newer than the {} this \
                 driver knows: it was written by a newer kernel; upgrade the kernel (or open \
                 another file)",
                latest_version()
            ),
        )
        .with_context("path", path)
        .with_context("backend", "sqlite"));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(|e| {
            crate::error::map_error(e)
                .with_context("migration", format!("{:04}_{}", m.version, m.name))
        })?;
        tx.execute(
            "INSERT INTO kernel_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, unix_micros_now()],
        )
        .db()?;
        applied.push(m.version);
    }
    tx.commit().db()?;
    Ok(applied)
}

/// The schema version recorded in the file (0 when none).
pub(crate) fn current_version(conn: &Connection) -> Result<i64> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kernel_schema_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    if exists.is_none() {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM kernel_schema_migrations",
        [],
        |r| r.get(0),
    )
    .db()
}
