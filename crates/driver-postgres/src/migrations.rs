//! Schema migrations and their runner: the kernel's own (in this crate's `migrations/` folder,
//! embedded at build time) and an application's, each in a version space of its own.
//!
//! Applied migrations are recorded in `kernel_schema_migrations (space, version, name,
//! checksum, applied_at)`, primary key `(space, version)`. The kernel's migrations are space
//! [`KERNEL_SPACE`]; an application picks its own space name and numbers its migrations from 1
//! without regard to the kernel's, read from a folder at run time ([`Migrator::from_dir`]) or
//! embedded in its binary ([`Migrator::embedded`]).
//!
//! Per space, the runner refuses to go on when an applied migration's file changed (its
//! SHA-256 differs), runs each migration in its own transaction, and serialises concurrent
//! runners of every space (two processes booting at once) with one transaction-scoped advisory
//! lock ([`crate::advisory::MIGRATE`]), re-reading the applied set under the lock so each
//! migration runs exactly once.
//!
//! Databases set up before the table had its `kernel_` prefix keep their record in
//! `schema_migrations (version, name, checksum, applied_at)`, a name other tools (Rails,
//! golang-migrate, ...) use too. The first runner of any space that finds no
//! `kernel_schema_migrations` adopts such a table, under the lock and in the transaction that
//! creates the new one, only when it is certainly the kernel's: exactly those four columns, at
//! least one row, and every row one of this build's migrations with its name and checksum. The
//! rows move to space `kernel` and the old table is dropped. Any other `schema_migrations` is
//! left alone.
//!
//! ```no_run
//! # async fn demo(client: &tokio_postgres::Client) -> kernel_core::Result<()> {
//! use driver_postgres::migrations::Migrator;
//!
//! // The kernel's schema, then the application's own migrations.
//! Migrator::new().up(client).await?;
//! let app = Migrator::from_dir("billing", "migrations/billing")?;
//! let applied = app.up(client).await?;
//! for status in app.status(client).await? {
//!     println!("{:04} {} {:?}", status.version, status.name, status.state);
//! }
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kernel_core::{Error, Result};
use tokio_postgres::Client;

use crate::advisory;
use crate::error::{BACKEND, pg};
use crate::statement::Statements;

/// The version space of the kernel's own migrations ([`MIGRATIONS`]).
pub const KERNEL_SPACE: &str = "kernel";

/// The table that records applied migrations of every space.
pub const TABLE: &str = "kernel_schema_migrations";

/// The table earlier builds recorded the kernel's migrations in (adopted, see the module docs).
pub const LEGACY_TABLE: &str = "schema_migrations";

/// The setting named by `Config` errors about migrations.
const SETTING: &str = "migrations";

/// Longest space name, in bytes (PostgreSQL's identifier length, so a space can name a schema).
pub const MAX_SPACE_BYTES: usize = 63;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS kernel_schema_migrations (
    space       text COLLATE \"C\" NOT NULL,
    version     bigint NOT NULL CHECK (version > 0),
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (space, version))";

/// One numbered migration: the SQL to apply it and to revert it.
///
/// Build embedded ones with the `const` [`Migration::new`]:
///
/// ```
/// use driver_postgres::migrations::Migration;
///
/// static APP: &[Migration] = &[
///     Migration::new(1, "accounts", "CREATE TABLE accounts (id bigint)", "DROP TABLE accounts"),
/// ];
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// Its number (the file's `0001_` prefix), above 0 and unique in its space.
    pub version: i64,
    /// Its name (the file's name after the number): letters, digits, `_` and `-`.
    pub name: Cow<'static, str>,
    /// The `.up.sql` file.
    pub up: Cow<'static, str>,
    /// The `.down.sql` file.
    pub down: Cow<'static, str>,
}

impl Migration {
    /// A migration from static text (`include_str!` of its files).
    pub const fn new(
        version: i64,
        name: &'static str,
        up: &'static str,
        down: &'static str,
    ) -> Migration {
        Migration {
            version,
            name: Cow::Borrowed(name),
            up: Cow::Borrowed(up),
            down: Cow::Borrowed(down),
        }
    }

    /// `0001_init`: how files, errors and logs name it.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

impl fmt::Debug for Migration {
    // The SQL text would drown every other field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("up_bytes", &self.up.len())
            .field("down_bytes", &self.down.len())
            .finish()
    }
}

/// The kernel's migrations of this build, in order (space [`KERNEL_SPACE`]).
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "init",
        include_str!("../migrations/0001_init.up.sql"),
        include_str!("../migrations/0001_init.down.sql"),
    ),
    Migration::new(
        2,
        "event_txid",
        include_str!("../migrations/0002_event_txid.up.sql"),
        include_str!("../migrations/0002_event_txid.down.sql"),
    ),
    Migration::new(
        3,
        "operations",
        include_str!("../migrations/0003_operations.up.sql"),
        include_str!("../migrations/0003_operations.down.sql"),
    ),
    Migration::new(
        4,
        "generation",
        include_str!("../migrations/0004_generation.up.sql"),
        include_str!("../migrations/0004_generation.down.sql"),
    ),
    Migration::new(
        5,
        "event_recorded_at",
        include_str!("../migrations/0005_event_recorded_at.up.sql"),
        include_str!("../migrations/0005_event_recorded_at.down.sql"),
    ),
    Migration::new(
        6,
        "console_sql",
        include_str!("../migrations/0006_console_sql.up.sql"),
        include_str!("../migrations/0006_console_sql.down.sql"),
    ),
    Migration::new(
        7,
        "tenancy",
        include_str!("../migrations/0007_tenancy.up.sql"),
        include_str!("../migrations/0007_tenancy.down.sql"),
    ),
    Migration::new(
        8,
        "set_based_put",
        include_str!("../migrations/0008_set_based_put.up.sql"),
        include_str!("../migrations/0008_set_based_put.down.sql"),
    ),
    Migration::new(
        9,
        "event_appends",
        include_str!("../migrations/0009_event_appends.up.sql"),
        include_str!("../migrations/0009_event_appends.down.sql"),
    ),
    Migration::new(
        10,
        "field_indexes",
        include_str!("../migrations/0010_field_indexes.up.sql"),
        include_str!("../migrations/0010_field_indexes.down.sql"),
    ),
];

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

/// Runs one space's migrations against a database.
#[derive(Clone)]
pub struct Migrator {
    space: Cow<'static, str>,
    migrations: Cow<'static, [Migration]>,
}

impl Default for Migrator {
    fn default() -> Self {
        Migrator::new()
    }
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("space", &self.space)
            .field(
                "migrations",
                &self
                    .migrations
                    .iter()
                    .map(Migration::label)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

struct Applied {
    name: String,
    checksum: String,
    at: SystemTime,
}

impl Migrator {
    /// The kernel's migrations of this build ([`MIGRATIONS`], space [`KERNEL_SPACE`]).
    pub fn new() -> Migrator {
        Migrator {
            space: Cow::Borrowed(KERNEL_SPACE),
            migrations: Cow::Borrowed(MIGRATIONS),
        }
    }

    /// An application's migrations embedded in its binary, in version space `space`.
    ///
    /// `Config` when the space name is not 1..=63 bytes of `[a-z0-9_-]` starting with a letter,
    /// or is the kernel's; or when a migration has a version below 1, a name other than letters,
    /// digits, `_` and `-`, an empty up script, or a version another one has.
    pub fn embedded(space: &str, migrations: &'static [Migration]) -> Result<Migrator> {
        Migrator::checked(space, Cow::Borrowed(migrations))
    }

    /// An application's migrations read now from the folder `dir`, in version space `space`.
    ///
    /// The folder holds pairs `NNNN_name.up.sql` / `NNNN_name.down.sql` (any number of digits
    /// for a version above 0; the name of letters, digits, `_` and `-`). Files not ending in
    /// `.sql`, hidden files and subfolders are ignored. Every problem is a `Config` error
    /// naming the folder or the file: a missing folder, a `.sql` file with another name, an up
    /// file without its down file or the reverse, two files with one number (`0003_a` and
    /// `0003_b`, or `3_a` and `0003_a`), an empty up file, a file that cannot be read or is not
    /// UTF-8; and the space rules of [`Migrator::embedded`].
    pub fn from_dir(space: &str, dir: impl AsRef<Path>) -> Result<Migrator> {
        check_space(space)?;
        let migrations = read_dir(dir.as_ref())?;
        Migrator::checked(space, Cow::Owned(migrations))
    }

    fn checked(space: &str, migrations: Cow<'static, [Migration]>) -> Result<Migrator> {
        check_space(space)?;
        let mut migrations = migrations;
        if !migrations.is_sorted_by_key(|m| m.version) {
            migrations.to_mut().sort_by_key(|m| m.version);
        }
        for (i, m) in migrations.iter().enumerate() {
            if m.version < 1 {
                return Err(invalid(format!(
                    "migration {} of space {space} has version {}: versions start at 1",
                    m.name, m.version
                )));
            }
            if !valid_name(&m.name) {
                return Err(invalid(format!(
                    "migration {} of space {space} has the name {:?}: use letters, digits, \
                     `_` and `-`",
                    m.version, m.name
                )));
            }
            if m.up.trim().is_empty() {
                return Err(invalid(format!(
                    "migration {} of space {space} has an empty up script",
                    m.label()
                )));
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &migrations[p]) {
                if prev.version == m.version {
                    return Err(invalid(format!(
                        "migrations {} and {} of space {space} have the same number",
                        prev.label(),
                        m.label()
                    )));
                }
            }
        }
        Ok(Migrator {
            space: Cow::Owned(space.to_owned()),
            migrations,
        })
    }

    /// The version space it runs in.
    pub fn space(&self) -> &str {
        &self.space
    }

    /// The migrations this runner knows, in order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// A short fingerprint of the space, every migration's text and the bookkeeping table's
    /// shape: equal fingerprints mean equal schemas. Test harnesses use it to name a template
    /// database.
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        CREATE_TABLE.hash(&mut h);
        self.space.hash(&mut h);
        for m in self.migrations.iter() {
            m.version.hash(&mut h);
            m.up.hash(&mut h);
        }
        format!("{:016x}", h.finish())
    }

    /// Applies every pending migration of the space, each in its own transaction; returns the
    /// versions applied by this call (empty when another runner did them or nothing was
    /// pending). Refuses (`Config`) when an applied migration's file changed.
    pub async fn up(&self, client: &Client) -> Result<Vec<i64>> {
        let checksums = checksums(client, &self.migrations).await?;
        let checksums = &checksums;
        let mut done = Vec::new();
        for (m, checksum) in self.migrations.iter().zip(checksums) {
            let ran = locked(client, &self.space, |applied| async move {
                self.verify(&applied, checksums)?;
                if applied.contains_key(&m.version) {
                    return Ok(false);
                }
                client
                    .batch_execute(&m.up)
                    .await
                    .map_err(|e| self.failed(e, m))?;
                Statements::Unnamed
                    .execute(
                        client,
                        "INSERT INTO kernel_schema_migrations (space, version, name, checksum) \
                         VALUES ($1, $2, $3, $4)",
                        &[&self.space.as_ref(), &m.version, &m.name.as_ref(), checksum],
                    )
                    .await
                    .map_err(|e| self.failed(e, m))?;
                Ok(true)
            })
            .await?;
            if ran {
                tracing::info!(space = %self.space, version = m.version, name = %m.name, "applied migration");
                done.push(m.version);
            }
        }
        Ok(done)
    }

    /// Reverts the last `n` applied migrations of the space, newest first, each in its own
    /// transaction; returns the versions reverted.
    pub async fn rollback(&self, client: &Client, n: usize) -> Result<Vec<i64>> {
        let checksums = checksums(client, &self.migrations).await?;
        let checksums = &checksums;
        let mut done = Vec::new();
        for _ in 0..n {
            let reverted = locked(client, &self.space, |applied| async move {
                self.verify(&applied, checksums)?;
                let Some((&version, row)) = applied.iter().next_back() else {
                    return Ok(None);
                };
                let m = self
                    .migrations
                    .iter()
                    .find(|m| m.version == version)
                    .ok_or_else(|| {
                        invalid(format!(
                            "migration {version:04}_{} of space {} is applied but unknown to \
                             this build: it cannot be rolled back from here",
                            row.name, self.space
                        ))
                    })?;
                client
                    .batch_execute(&m.down)
                    .await
                    .map_err(|e| self.failed(e, m))?;
                Statements::Unnamed
                    .execute(
                        client,
                        "DELETE FROM kernel_schema_migrations WHERE space = $1 AND version = $2",
                        &[&self.space.as_ref(), &m.version],
                    )
                    .await
                    .map_err(|e| self.failed(e, m))?;
                Ok(Some(m))
            })
            .await?;
            match reverted {
                Some(m) => {
                    tracing::info!(space = %self.space, version = m.version, name = %m.name, "reverted migration");
                    done.push(m.version);
                }
                None => break,
            }
        }
        Ok(done)
    }

    /// Every known and every recorded migration of the space with its state, by version.
    ///
    /// Reads only: on a database whose kernel migrations are still in an adoptable
    /// `schema_migrations` (see the module docs), the kernel space reports them from there;
    /// the next [`Migrator::up`] of any space moves them.
    pub async fn status(&self, client: &Client) -> Result<Vec<MigrationStatus>> {
        let checksums = checksums(client, &self.migrations).await?;
        let applied = if table_exists(client, TABLE).await? {
            read_applied(client, &self.space).await?
        } else if self.space == KERNEL_SPACE {
            legacy_rows(client).await?.unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let mut out = Vec::new();
        for (m, sum) in self.migrations.iter().zip(&checksums) {
            let state = match applied.get(&m.version) {
                None => MigrationState::Pending,
                Some(row) if &row.checksum == sum => MigrationState::Applied { at: row.at },
                Some(row) => MigrationState::Changed { at: row.at },
            };
            out.push(MigrationStatus {
                version: m.version,
                name: m.name.clone().into_owned(),
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

    /// Whether every known migration of the space is applied unchanged.
    pub async fn is_current(&self, client: &Client) -> Result<bool> {
        Ok(self.status(client).await?.iter().all(|s| {
            matches!(
                s.state,
                MigrationState::Applied { .. } | MigrationState::Unknown { .. }
            )
        }))
    }

    fn verify(&self, applied: &BTreeMap<i64, Applied>, checksums: &[String]) -> Result<()> {
        for (m, sum) in self.migrations.iter().zip(checksums) {
            if let Some(row) = applied.get(&m.version) {
                if &row.checksum != sum {
                    return Err(invalid(format!(
                        "migration {} of space {} was changed after it was applied (recorded \
                         checksum {}, file {}): restore the file or write a new migration",
                        m.label(),
                        self.space,
                        row.checksum,
                        sum
                    )));
                }
            }
        }
        Ok(())
    }

    fn failed(&self, err: tokio_postgres::Error, m: &Migration) -> Error {
        pg(err)
            .with_context("space", &self.space)
            .with_context("migration", m.label())
    }
}

/// A `Config` error about migrations.
fn invalid(message: String) -> Error {
    Error::config(SETTING, message).with_context("backend", BACKEND)
}

/// Space names: 1..=63 bytes of `[a-z0-9_-]` starting with a letter, not the kernel's.
fn check_space(space: &str) -> Result<()> {
    if space == KERNEL_SPACE {
        return Err(invalid(format!(
            "the migration space {KERNEL_SPACE:?} is the kernel's own: give the application's \
             migrations a space of their own"
        )));
    }
    let ok = (1..=MAX_SPACE_BYTES).contains(&space.len())
        && space.starts_with(|c: char| c.is_ascii_lowercase())
        && space
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "the migration space {space:?} is not 1..={MAX_SPACE_BYTES} bytes of lowercase \
             letters, digits, `_` and `-` starting with a letter"
        )))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// `NNNN_name.up.sql` → (version, name, up); `None` for any other name.
fn parse_file_name(file: &str) -> Option<(i64, &str, Direction)> {
    let (stem, direction) = if let Some(stem) = file.strip_suffix(".up.sql") {
        (stem, Direction::Up)
    } else {
        (file.strip_suffix(".down.sql")?, Direction::Down)
    };
    let (number, name) = stem.split_once('_')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || !valid_name(name) {
        return None;
    }
    let version: i64 = number.parse().ok()?;
    (version > 0).then_some((version, name, direction))
}

/// One version's files while a folder is read.
struct Pair {
    name: String,
    up: Option<(PathBuf, String)>,
    down: Option<(PathBuf, String)>,
}

fn read_dir(dir: &Path) -> Result<Vec<Migration>> {
    let folder = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(invalid(format!("{folder} is not a migration folder"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(format!(
                "the migration folder {folder} does not exist"
            )));
        }
        Err(e) => {
            return Err(invalid(format!(
                "cannot read the migration folder {folder}: {e}"
            )));
        }
    }
    let mut paths = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| invalid(format!("cannot read the migration folder {folder}: {e}")))?;
    for entry in entries {
        let entry = entry
            .map_err(|e| invalid(format!("cannot read the migration folder {folder}: {e}")))?;
        paths.push(entry.path());
    }
    // Sorted, so the first problem reported is the same on every file system.
    paths.sort();
    let mut pairs: BTreeMap<i64, Pair> = BTreeMap::new();
    for path in paths {
        let shown = path.display();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        let sql = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("sql"));
        if hidden || !sql {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) => {
                return Err(invalid(format!(
                    "cannot read the migration file {shown}: {e}"
                )));
            }
        }
        let parsed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_file_name);
        let Some((version, name, direction)) = parsed else {
            return Err(invalid(format!(
                "the migration file {shown} is not named NNNN_name.up.sql or \
                 NNNN_name.down.sql (a number above 0, `_`, a name of letters, digits, `_` and \
                 `-`)"
            )));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                invalid(format!("the migration file {shown} is not UTF-8"))
            } else {
                invalid(format!("cannot read the migration file {shown}: {e}"))
            }
        })?;
        let pair = pairs.entry(version).or_insert_with(|| Pair {
            name: name.to_owned(),
            up: None,
            down: None,
        });
        let same = match direction {
            Direction::Up => &pair.up,
            Direction::Down => &pair.down,
        };
        if pair.name != name || same.is_some() {
            // Name the file this one collides with: the same direction's if there is one.
            let other = same
                .iter()
                .chain(&pair.up)
                .chain(&pair.down)
                .next()
                .map(|(p, _)| p.display().to_string())
                .unwrap_or_default();
            return Err(invalid(format!(
                "the migration files {other} and {shown} have the same number {version}: \
                 every migration needs a number of its own"
            )));
        }
        let slot = match direction {
            Direction::Up => &mut pair.up,
            Direction::Down => &mut pair.down,
        };
        *slot = Some((path.clone(), text));
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (version, pair) in pairs {
        match (pair.up, pair.down) {
            (Some((up_path, up)), Some((_, down))) => {
                if up.trim().is_empty() {
                    return Err(invalid(format!(
                        "the migration file {} is empty",
                        up_path.display()
                    )));
                }
                out.push(Migration {
                    version,
                    name: Cow::Owned(pair.name),
                    up: Cow::Owned(up),
                    down: Cow::Owned(down),
                });
            }
            (Some((path, _)), None) | (None, Some((path, _))) => {
                let missing = if path.to_string_lossy().ends_with(".up.sql") {
                    "down"
                } else {
                    "up"
                };
                return Err(invalid(format!(
                    "the migration file {} has no {missing} file: write \
                     {:04}_{}.{missing}.sql next to it",
                    path.display(),
                    version,
                    pair.name
                )));
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

/// SHA-256 of each migration's up file, computed by the server (no hashing crate needed).
async fn checksums(client: &Client, migrations: &[Migration]) -> Result<Vec<String>> {
    let texts: Vec<&str> = migrations.iter().map(|m| m.up.as_ref()).collect();
    let rows = Statements::Unnamed
        .query(
            client,
            "SELECT encode(sha256(convert_to(t.sql, 'UTF8')), 'hex')
             FROM unnest($1::text[]) WITH ORDINALITY AS t(sql, ord) ORDER BY t.ord",
            &[&texts],
        )
        .await
        .map_err(|e| pg(e).with_operation("migrate"))?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(pg))
        .collect()
}

/// Runs `step` in one transaction holding the migration lock, with the space's applied set
/// read under the lock (after creating the table, and adopting a legacy one, if need be);
/// commits on success, rolls back on error.
async fn locked<T, F, Fut>(client: &Client, space: &str, step: F) -> Result<T>
where
    F: FnOnce(BTreeMap<i64, Applied>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| pg(e).with_operation("migrate"))?;
    let outcome = async {
        Statements::Unnamed
            .execute(
                client,
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&advisory::MIGRATE.0, &advisory::MIGRATE.1],
            )
            .await
            .map_err(pg)?;
        if !table_exists(client, TABLE).await? {
            client.batch_execute(CREATE_TABLE).await.map_err(pg)?;
            adopt_legacy(client).await?;
        }
        let applied = read_applied(client, space).await?;
        step(applied).await
    }
    .await;
    match outcome {
        Ok(v) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| pg(e).with_operation("migrate"))?;
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::warn!(error = %rollback, "rollback after a failed migration step failed");
            }
            Err(e.with_operation("migrate").with_context("space", space))
        }
    }
}

/// Moves the rows of an adoptable `schema_migrations` into the new table (space `kernel`) and
/// drops it. Runs in the locked transaction that created the new table.
async fn adopt_legacy(client: &Client) -> Result<()> {
    let Some(rows) = legacy_rows(client).await? else {
        return Ok(());
    };
    let Some(legacy) = legacy_name(client).await? else {
        return Ok(());
    };
    for (version, row) in &rows {
        Statements::Unnamed
            .execute(
                client,
                "INSERT INTO kernel_schema_migrations (space, version, name, checksum, applied_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&KERNEL_SPACE, version, &row.name, &row.checksum, &row.at],
            )
            .await
            .map_err(pg)?;
    }
    // `legacy` is the server's own quoting of the table's name (regclass output).
    client
        .batch_execute(&format!("DROP TABLE {legacy}"))
        .await
        .map_err(pg)?;
    tracing::info!(
        table = %legacy,
        migrations = rows.len(),
        "adopted the kernel's migration record from {LEGACY_TABLE} into {TABLE}"
    );
    Ok(())
}

/// The name of `schema_migrations` as the search path finds it, quoted for SQL.
async fn legacy_name(client: &Client) -> Result<Option<String>> {
    Statements::Unnamed
        .query_one(client, "SELECT to_regclass($1)::text", &[&LEGACY_TABLE])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)
}

/// The rows of `schema_migrations` when it is certainly the kernel's record (see the module
/// docs); `None` when there is no such table or it may belong to another tool.
async fn legacy_rows(client: &Client) -> Result<Option<BTreeMap<i64, Applied>>> {
    // An ordinary table with exactly the kernel's four columns and types, in order.
    let row = Statements::Unnamed
        .query_opt(
            client,
            "SELECT (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), \
                                       ', ' ORDER BY a.attnum) \
                     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                     AND NOT a.attisdropped) \
             FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
            &[&LEGACY_TABLE],
        )
        .await
        .map_err(pg)?;
    // No row: no such table (or a view of that name); NULL: a table without columns.
    let shape: Option<String> = match row {
        Some(r) => r.try_get(0).map_err(pg)?,
        None => None,
    };
    const KERNEL_SHAPE: &str =
        "version bigint, name text, checksum text, applied_at timestamp with time zone";
    let Some(shape) = shape else {
        return Ok(None);
    };
    if shape != KERNEL_SHAPE {
        tracing::debug!(columns = %shape, "{LEGACY_TABLE} is not the kernel's: left alone");
        return Ok(None);
    }
    let Some(legacy) = legacy_name(client).await? else {
        return Ok(None);
    };
    // One row more than the kernel has migrations is enough to tell it is not ours.
    let limit = i64::try_from(MIGRATIONS.len())
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let rows = Statements::Unnamed
        .query(
            client,
            &format!(
                "SELECT version, name, checksum, applied_at FROM {legacy} \
                 ORDER BY version LIMIT $1"
            ),
            &[&limit],
        )
        .await
        .map_err(pg)?;
    let ours = checksums(client, MIGRATIONS).await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let version: i64 = r.try_get(0).map_err(pg)?;
        let row = Applied {
            name: r.try_get(1).map_err(pg)?,
            checksum: r.try_get(2).map_err(pg)?,
            at: r.try_get(3).map_err(pg)?,
        };
        let same = MIGRATIONS
            .iter()
            .zip(&ours)
            .find(|(m, _)| m.version == version && m.name == row.name);
        if let Some((m, sum)) = same {
            // With the kernel's tables present this is the kernel's own record of a migration
            // whose file changed since; without them, another tool's look-alike.
            if *sum != row.checksum && table_exists(client, "kernel_documents").await? {
                // Leaving it alone would re-apply 0001 over the existing schema. Refuse, as the
                // runner does for a changed migration in its own table.
                return Err(Error::config(
                    "postgres.migrations",
                    format!(
                        "{LEGACY_TABLE} records the kernel's migration {} with another checksum \
                         than this build's: the file changed after it was applied, so the \
                         record is not adopted into {TABLE}; reconcile the two before booting",
                        m.label()
                    ),
                )
                .with_context("table", LEGACY_TABLE)
                .with_context("version", version));
            }
        }
        let known = same.is_some_and(|(_, sum)| *sum == row.checksum);
        if !known {
            tracing::warn!(
                version,
                name = %row.name,
                "{LEGACY_TABLE} has the kernel's columns but a row that is not one of this \
                 build's migrations: not adopted, left alone"
            );
            return Ok(None);
        }
        out.insert(version, row);
    }
    Ok((!out.is_empty()).then_some(out))
}

async fn table_exists(client: &Client, table: &str) -> Result<bool> {
    Statements::Unnamed
        .query_one(client, "SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)
}

async fn read_applied(client: &Client, space: &str) -> Result<BTreeMap<i64, Applied>> {
    if !table_exists(client, TABLE).await? {
        return Ok(BTreeMap::new());
    }
    let rows = Statements::Unnamed
        .query(
            client,
            "SELECT version, name, checksum, applied_at FROM kernel_schema_migrations \
             WHERE space = $1",
            &[&space],
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
    fn kernel_migrations_are_numbered_in_order_and_paired() {
        // Strictly increasing from 1. Numbers may be skipped (a branch takes its number when
        // work on it starts); the runner applies whatever is pending, in order.
        let mut previous = 0;
        for m in MIGRATIONS {
            assert!(m.version > previous, "{} after {previous}", m.label());
            previous = m.version;
            assert!(!m.up.trim().is_empty() && !m.down.trim().is_empty());
            assert!(valid_name(&m.name), "{}", m.name);
        }
        assert_eq!(Migrator::new().fingerprint(), Migrator::new().fingerprint());
        assert_eq!(Migrator::new().space(), KERNEL_SPACE);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("0001_init.up.sql"),
            Some((1, "init", Direction::Up))
        );
        assert_eq!(
            parse_file_name("12_add-index_2.down.sql"),
            Some((12, "add-index_2", Direction::Down))
        );
        for bad in [
            "0001_init.sql",
            "0000_zero.up.sql",
            "init.up.sql",
            "_init.up.sql",
            "0001_.up.sql",
            "0001-init.up.sql",
            "0001_in it.up.sql",
            "x001_init.up.sql",
            "99999999999999999999_big.up.sql",
            "0001_init.UP.sql",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn space_names() {
        for good in ["app", "billing_v2", "a-b", "a1"] {
            assert!(check_space(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_SPACE_BYTES + 1);
        for bad in [
            "",
            "kernel",
            "App",
            "1app",
            "_app",
            "a b",
            "a\u{0}",
            too_long.as_str(),
        ] {
            let err = check_space(bad).err();
            assert!(
                err.as_ref()
                    .is_some_and(|e| e.code() == kernel_core::ErrorCode::Config),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn embedded_migrations_are_checked() {
        static SORTED: &[Migration] = &[
            Migration::new(1, "a", "SELECT 1", ""),
            Migration::new(2, "b", "SELECT 2", ""),
        ];
        static UNSORTED: &[Migration] = &[
            Migration::new(2, "b", "SELECT 2", ""),
            Migration::new(1, "a", "SELECT 1", ""),
        ];
        static DUPLICATE: &[Migration] = &[
            Migration::new(1, "a", "SELECT 1", ""),
            Migration::new(1, "b", "SELECT 2", ""),
        ];
        static ZERO: &[Migration] = &[Migration::new(0, "a", "SELECT 1", "")];
        static EMPTY_UP: &[Migration] = &[Migration::new(1, "a", "  \n", "")];
        static BAD_NAME: &[Migration] = &[Migration::new(1, "a b", "SELECT 1", "")];
        let m = Migrator::embedded("app", SORTED).map(|m| m.migrations().len());
        assert_eq!(m.ok(), Some(2));
        let m = Migrator::embedded("app", UNSORTED);
        assert_eq!(
            m.map(|m| m.migrations().iter().map(|m| m.version).collect::<Vec<_>>())
                .ok(),
            Some(vec![1, 2])
        );
        for bad in [DUPLICATE, ZERO, EMPTY_UP, BAD_NAME] {
            let err = Migrator::embedded("app", bad).err();
            assert!(
                err.is_some_and(|e| e.code() == kernel_core::ErrorCode::Config),
                "{bad:?}"
            );
        }
        assert!(Migrator::embedded("kernel", SORTED).is_err());
        assert!(Migrator::embedded("app", SORTED).is_ok_and(|m| {
            m.fingerprint()
                != Migrator::embedded("other", SORTED)
                    .map(|m| m.fingerprint())
                    .unwrap_or_default()
        }));
    }
}
