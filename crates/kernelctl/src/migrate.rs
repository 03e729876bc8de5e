//! `migrate`: the schema of every PostgreSQL and SQLite store the configuration uses.
//! Memory and Redis have no schema.

use kernel_bootstrap::{BackendKind, KernelConfig};
use kernel_core::{Error, Result};

use crate::Outcome;
use crate::cli::MigrateArgs;

pub(crate) async fn run(config: &KernelConfig, args: MigrateArgs) -> Result<Outcome> {
    let mut kinds: Vec<BackendKind> = kernel_bootstrap::Role::ALL
        .iter()
        .map(|r| config.backend(*r))
        .collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    if args.dir.is_some() && !kinds.contains(&BackendKind::Postgres) {
        return Err(Error::config(
            "storage_mode",
            "--dir and --space migrate an application's PostgreSQL schema, but no role of this \
             configuration is on PostgreSQL",
        ));
    }
    let mut migrated = false;
    for kind in kinds {
        match kind {
            BackendKind::Postgres => {
                postgres::run(config, &args).await?;
                migrated = true;
            }
            BackendKind::Sqlite => {
                if args.dir.is_none() {
                    sqlite::run(config, &args.action).await?;
                    migrated = true;
                }
            }
            BackendKind::Memory | BackendKind::Redis => {
                println!("{kind}: no schema to migrate");
            }
            other => {
                return Err(Error::unsupported(format!(
                    "kernelctl does not know how to migrate the `{other}` backend"
                )));
            }
        }
    }
    if !migrated {
        println!("nothing to migrate: no role of this configuration is on PostgreSQL or SQLite");
    }
    Ok(Outcome::Done)
}

mod postgres {
    use driver_postgres::migrations::{MigrationState, Migrator};
    use kernel_bootstrap::KernelConfig;
    use kernel_core::Result;

    use crate::cli::{MigrateAction, MigrateArgs};
    use crate::ndjson::time_text;

    pub(crate) async fn run(config: &KernelConfig, args: &MigrateArgs) -> Result<()> {
        // Read the folder before connecting: a bad file is reported without touching the
        // database.
        let migrator = match (&args.dir, &args.space) {
            (Some(dir), Some(space)) => Migrator::from_dir(space, dir)?,
            _ => Migrator::new(),
        };
        let pg_config = config.postgres_config();
        let redacted = pg_config.redacted_url();
        // The driver's own connector: the same sslmode / sslrootcert / CA settings as the pool.
        let (client, task) = driver_postgres::tls::connect_single(&pg_config).await?;
        let space = migrator.space().to_owned();
        let outcome = match args.action {
            MigrateAction::Up => migrator.up(&client).await.map(|applied| {
                if applied.is_empty() {
                    println!("postgres ({space}): schema is up to date");
                }
                for v in applied {
                    println!("postgres ({space}): applied {v:04}");
                }
            }),
            MigrateAction::Rollback { n } => migrator.rollback(&client, n).await.map(|reverted| {
                if reverted.is_empty() {
                    println!("postgres ({space}): nothing to roll back");
                }
                for v in reverted {
                    println!("postgres ({space}): reverted {v:04}");
                }
            }),
            MigrateAction::Status => migrator.status(&client).await.map(|rows| {
                println!("postgres ({space}) at {redacted}");
                println!("{:<8} {:<28} {:<10} applied at", "version", "name", "state");
                for s in rows {
                    let (state, at) = match &s.state {
                        MigrationState::Applied { at } => ("applied", Some(*at)),
                        MigrationState::Changed { at } => ("CHANGED", Some(*at)),
                        MigrationState::Pending => ("pending", None),
                        MigrationState::Unknown { at } => ("unknown", Some(*at)),
                    };
                    println!(
                        "{:<8} {:<28} {:<10} {}",
                        format!("{:04}", s.version),
                        s.name,
                        state,
                        at.map(time_text).unwrap_or_default()
                    );
                }
            }),
        };
        drop(client);
        if let Err(e) = task.await {
            eprintln!("postgres: the connection task failed: {e}");
        }
        outcome
    }
}

mod sqlite {
    use driver_sqlite::SqliteDriver;
    use driver_sqlite::migrations::MIGRATIONS;
    use kernel_bootstrap::KernelConfig;
    use kernel_core::{Error, Result};

    use crate::cli::MigrateAction;

    pub(crate) async fn run(config: &KernelConfig, action: &MigrateAction) -> Result<()> {
        let sqlite = config.sqlite_config();
        let path = sqlite.path.clone();
        match action {
            MigrateAction::Rollback { .. } => Err(Error::unsupported(
                "SQLite migrations are forward-only: roll back by restoring the file from a \
                 backup taken before the upgrade",
            )
            .with_context("path", &path)),
            MigrateAction::Up => {
                let before = applied(&path)?;
                // Opening the driver applies every pending migration, in one transaction each.
                let driver = SqliteDriver::open(sqlite.clone()).await?;
                driver.shutdown().await;
                let after = applied(&path)?;
                let new: Vec<i64> = after.into_iter().filter(|v| !before.contains(v)).collect();
                if new.is_empty() {
                    println!("sqlite ({path}): schema is up to date");
                }
                for v in new {
                    println!("sqlite ({path}): applied {v:04}");
                }
                Ok(())
            }
            MigrateAction::Status => {
                let done = applied(&path)?;
                println!("sqlite at {path}");
                println!("{:<8} {:<28} state", "version", "name");
                for m in MIGRATIONS {
                    let state = if done.contains(&m.version) {
                        "applied"
                    } else {
                        "pending"
                    };
                    println!("{:<8} {:<28} {state}", format!("{:04}", m.version), m.name);
                }
                Ok(())
            }
        }
    }

    /// The versions recorded in the file (none for a file that does not exist yet).
    fn applied(path: &str) -> Result<Vec<i64>> {
        if !std::path::Path::new(path).exists() {
            return Ok(Vec::new());
        }
        let fail = |e: rusqlite::Error| {
            Error::unavailable("cannot read the schema version")
                .with_context("path", path)
                .with_source(e)
        };
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(fail)?;
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'kernel_schema_migrations'",
                [],
                |r| r.get(0),
            )
            .map_err(fail)?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare("SELECT version FROM kernel_schema_migrations ORDER BY version")
            .map_err(fail)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(fail)?;
        rows.collect::<std::result::Result<Vec<i64>, _>>()
            .map_err(fail)
    }
}
