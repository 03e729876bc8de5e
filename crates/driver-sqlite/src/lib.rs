//! # driver-sqlite
//!
//! The embedded, persistent driver: every kernel trait — [`StorageDriver`], [`EventStore`],
//! [`Lock`], [`RateLimiter`] — in one SQLite database file, with no service to run. Data
//! outlives the process, and several processes may open the same file: they see each other's
//! writes, their appends share one gapless global order, their fencing tokens keep increasing,
//! and a subscription in one process receives the events another appends (see
//! [`SqliteConfig::poll_interval`]).
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use driver_sqlite::{SqliteConfig, SqliteDriver};
//! use kernel_core::{json, PutOptions, StorageDriver};
//!
//! let dir = std::env::temp_dir().join(format!("kernel-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("kernel.db");
//! let driver = SqliteDriver::open(SqliteConfig::new(path.to_string_lossy())).await?;
//! let entry = driver.put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
//! assert_eq!(entry.version, 1);
//! driver.shutdown().await;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! ## Binding
//!
//! [`rusqlite`] with its `bundled` feature: the maintained, widely used SQLite binding, and the
//! bundled build compiles SQLite into the crate, so no system library (or its version) is
//! needed and every machine runs the same SQLite. Pinned to 0.37: the newest release (0.43)
//! requires Rust 1.89, above the workspace's declared 1.85.
//!
//! ## Design
//!
//! * **WAL mode**, `synchronous = NORMAL` by default ([`Synchronous`] says what each level
//!   promises; `FULL` is a setting away), and a `busy_timeout` for locks held by other
//!   processes.
//! * **One writer.** A dedicated thread owns the only read-write connection and drains a queue of
//!   write jobs, committing all that are queued in one transaction (*group commit*). Each job
//!   runs in its own `SAVEPOINT`, so a failing job is rolled back alone and the others commit;
//!   each caller is answered after the `COMMIT`. If the thread is gone, calls fail with
//!   `Unavailable` ("driver shut down").
//! * **Parallel readers.** A small pool of `query_only` connections serves reads on blocking
//!   tasks; in WAL mode they never wait for the writer.
//! * **Byte-wise keys.** Keys are stored as BLOBs of their UTF-8 bytes, so SQLite's `memcmp`
//!   order is the contract's byte-wise order.
//! * **TTL.** An `expires_at` column; every read filters expired rows out, and the writer deletes
//!   a bounded batch of them now and then.
//! * **Global positions** are assigned inside the writer's transaction, under SQLite's file-wide
//!   write lock, so they are gapless and become visible in order, across processes too.
//! * **Subscriptions** use kernel-core's paged loop (256-event pages). The writer wakes them
//!   after each commit that appended; a watcher thread polls `PRAGMA data_version` every
//!   `poll_interval` (100 ms by default) while subscriptions exist and wakes them when another
//!   process committed.
//! * **Transactions** are optimistic and serializable: reads record the stamp of the row they
//!   saw, writes are staged, and the commit — one writer job — re-checks every stamp under the
//!   write lock and applies everything, or fails with a retryable `Conflict`.
//! * **Operation ids** (`write_once`, `commit_once`): the lookup of the id, the write and its
//!   record in `kernel_operations` are one writer job, so one transaction under the file's write
//!   lock; records past [`SqliteConfig::operation_window`] are invisible and deleted a few at a
//!   time by later writes.
//! * **Data-loss detection**: a generation marker in the file and the highest global position
//!   the driver has seen; a changed or missing marker, or an event head below that position (a
//!   restore from an older copy), stops appends, lock operations and subscriptions with a
//!   permanent `Corrupted` error and turns `status()` unhealthy until
//!   [`SqliteDriver::acknowledge_data_loss`].
//! * **Migrations**: versioned SQL embedded in the crate, applied on open ([`migrations`]); a file
//!   with a newer schema is refused with a `Config` error naming it.
//!
//! [`StorageDriver`]: kernel_core::StorageDriver
//! [`EventStore`]: kernel_core::EventStore
//! [`Lock`]: kernel_core::Lock
//! [`RateLimiter`]: kernel_core::RateLimiter

mod config;
mod documents;
mod error;
mod events;
mod generation;
mod lock;
pub mod migrations;
mod operations;
mod pool;
mod rate_limit;
mod transaction;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kernel_core::subscription::{HeadSender, HeadSignal, SubscriptionConfig};
use kernel_core::{Error, ErrorCode, Limits, Result};
use rusqlite::{Connection, OpenFlags};

pub use config::{MAX_OPERATION_WINDOW, MAX_READ_CONNECTIONS, SqliteConfig, Synchronous};

use crate::error::{Db, map_error, shut_down, with_path};
use crate::generation::Generation;
use crate::pool::ReadPool;
use crate::writer::{WriteCtx, Writer};

/// The SQLite driver. Cheap to clone: clones share the writer, the readers and the file.
#[derive(Clone)]
pub struct SqliteDriver {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: SqliteConfig,
    path: String,
    writer: Writer,
    readers: ReadPool,
    head: Arc<HeadSender>,
    closed: Arc<AtomicBool>,
    watcher: Watcher,
    subscription: SubscriptionConfig,
    generation: Arc<Generation>,
}

impl std::fmt::Debug for SqliteDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDriver")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SqliteDriver {
    /// Opens (creating if needed) the database file, applies pending migrations, and starts the
    /// writer thread, the read connections and the cross-process watcher.
    ///
    /// Fails with `Config` naming the setting or the path when the configuration is invalid,
    /// the directory does not exist or the path is a directory; `PermissionDenied` naming the
    /// path when the file is read-only; `Corrupted` naming the path when the file is not a
    /// SQLite database or is damaged; `Config` when its schema is newer than this driver's.
    pub async fn open(config: SqliteConfig) -> Result<SqliteDriver> {
        config.validate()?;
        let setup = config.clone();
        let opened = tokio::task::spawn_blocking(move || open_files(&setup))
            .await
            .map_err(|e| {
                Error::internal("opening the SQLite database panicked")
                    .with_source(e)
                    .with_context("path", &config.path)
            })??;
        let Opened {
            writer,
            readers,
            watcher,
            marker,
            head: last,
        } = opened;
        let generation = Arc::new(Generation::new(marker, last));
        let (head, _) = tokio::sync::watch::channel(HeadSignal::default());
        let head = Arc::new(head);
        let closed = Arc::new(AtomicBool::new(false));
        let writer = Writer::start(writer, head.clone())
            .map_err(|e| e.with_context("path", &config.path))?;
        let watcher = Watcher::start(
            watcher,
            head.clone(),
            generation.clone(),
            config.poll_interval,
        )
        .map_err(|e| e.with_context("path", &config.path))?;
        let readers = ReadPool::new(readers, config.clone(), closed.clone());
        tracing::debug!(path = %config.path, "SQLite driver opened");
        Ok(SqliteDriver {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                subscription: config.subscription,
                config,
                writer,
                readers,
                head,
                closed,
                watcher,
                generation,
            }),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        Path::new(&self.inner.path)
    }

    /// The value limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    /// Ends every subscription (after it yields what it has read), lets the writer finish the
    /// jobs already queued, and closes every connection. Later operations fail with a permanent
    /// `Unavailable` ("driver shut down"). Calling it again is harmless.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.head.send_modify(|s| s.closed = true);
        self.inner.watcher.stop();
        self.inner.readers.close();
        self.inner.writer.stop().await;
    }

    /// Deletes expired documents now (the writer also does it, a bounded batch at a time, as
    /// writes go); returns how many went. Expired documents are invisible either way. Spent
    /// rate-limit state and operation-id records past the operation window go too (not
    /// counted).
    pub async fn purge_expired(&self) -> Result<u64> {
        self.inner
            .write("purge_expired", |ctx| {
                let n = ctx
                    .conn
                    .prepare_cached(
                        "DELETE FROM kernel_documents
                         WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                    )
                    .db()?
                    .execute([unix_micros_now()])
                    .db()?;
                ctx.conn
                    .prepare_cached("DELETE FROM kernel_rate_limits WHERE tat <= ?1")
                    .db()?
                    .execute([unix_micros_now()])
                    .db()?;
                operations::purge(ctx.conn, unix_micros_now(), -1)?;
                Ok(n as u64)
            })
            .await
    }
}

impl Inner {
    /// Runs `f` as a writer job; errors name the operation and, where it matters, the file.
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(shut_down()
                .with_operation(op)
                .with_context("path", &self.path));
        }
        self.writer
            .call(f)
            .await
            .map_err(|e| with_path(e, &self.path).with_operation(op))
    }

    /// Runs `f` on a read connection; errors name the operation and, where it matters, the file.
    pub(crate) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.readers
            .read(f)
            .await
            .map_err(|e| with_path(e, &self.path).with_operation(op))
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.config.limits
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Subscriptions end after their buffer; the writer thread ends when its queue's
        // senders are gone (this struct holds the only one) and closes its connection.
        self.head.send_modify(|s| s.closed = true);
        self.watcher.stop();
    }
}

struct Opened {
    writer: Connection,
    readers: Vec<Connection>,
    watcher: Connection,
    /// The generation marker adopted.
    marker: String,
    /// The event log's head at open.
    head: u64,
}

/// Checks the path, opens the writer (WAL, synchronous, migrations), the readers and the
/// watcher's connection.
fn open_files(config: &SqliteConfig) -> Result<Opened> {
    let path = Path::new(&config.path);
    check_path(path, &config.path)?;
    let mut writer = open_connection(path, config)?;
    let mode: String = writer
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| file_error(e, &config.path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::config(
            "sqlite.path",
            format!(
                "SQLite could not switch the database to WAL mode (it stays in {mode:?}); the \
                 file must be on a local file system that supports shared memory"
            ),
        )
        .with_context("path", &config.path)
        .with_context("backend", "sqlite"));
    }
    writer
        .pragma_update(None, "synchronous", config.synchronous.as_str())
        .map_err(|e| file_error(e, &config.path))?;
    let applied =
        migrations::migrate(&mut writer, &config.path).map_err(|e| with_path(e, &config.path))?;
    if !applied.is_empty() {
        tracing::info!(path = %config.path, ?applied, "applied SQLite migrations");
    }
    let (marker, head) = generation::adopt(&writer).map_err(|e| with_path(e, &config.path))?;
    let mut readers = Vec::with_capacity(config.read_connections);
    for _ in 0..config.read_connections {
        readers.push(pool::open_reader(path, config)?);
    }
    let watcher = pool::open_reader(path, config)?;
    Ok(Opened {
        writer,
        readers,
        watcher,
        marker,
        head,
    })
}

/// Clear errors before SQLite's generic ones: a missing directory, a directory given as the
/// file, a read-only file (checked by its permission bits, so it holds for root too).
fn check_path(path: &Path, shown: &str) -> Result<()> {
    let config_err = |msg: String| {
        Error::config("sqlite.path", msg)
            .with_context("path", shown)
            .with_context("backend", "sqlite")
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(config_err(format!(
            "the directory {} of the database file does not exist",
            parent.display()
        )));
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(config_err(
            "the path is a directory, not a database file".to_owned(),
        )),
        Ok(meta) if meta.permissions().readonly() => Err(Error::new(
            ErrorCode::PermissionDenied,
            "the database file is read-only: the driver writes to it",
        )
        .with_context("path", shown)
        .with_context("backend", "sqlite")),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(
            ErrorCode::PermissionDenied,
            "cannot read the database file's attributes",
        )
        .with_source(e)
        .with_context("path", shown)
        .with_context("backend", "sqlite")),
    }
}

/// Opens one connection to `path` (created if missing) with the busy timeout.
pub(crate) fn open_connection(path: &Path, config: &SqliteConfig) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| file_error(e, &config.path))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(|e| file_error(e, &config.path))?;
    Ok(conn)
}

/// A rusqlite error while opening or setting up the file, naming it.
pub(crate) fn file_error(e: rusqlite::Error, path: &str) -> Error {
    with_path(map_error(e), path)
}

/// Polls `PRAGMA data_version` while subscriptions exist and wakes them when another connection
/// (another process, or this process's writer) committed.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::Thread>>,
}

impl Watcher {
    fn start(
        conn: Connection,
        head: Arc<HeadSender>,
        generation: Arc<Generation>,
        every: Duration,
    ) -> Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("kernel-sqlite-watcher".to_owned())
            .spawn(move || watch(&conn, &head, &generation, every, &flag))
            .map_err(|e| {
                Error::unavailable("cannot start the SQLite watcher thread")
                    .with_source(e)
                    .with_context("backend", "sqlite")
            })?;
        Ok(Watcher {
            stop,
            thread: Mutex::new(Some(handle.thread().clone())),
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(t) = thread {
            t.unpark();
        }
    }
}

fn watch(
    conn: &Connection,
    head: &HeadSender,
    generation: &Generation,
    every: Duration,
    stop: &AtomicBool,
) {
    let version = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
    };
    let mut last = version(conn).ok();
    loop {
        std::thread::park_timeout(every);
        if stop.load(Ordering::Acquire) {
            return;
        }
        if head.receiver_count() == 0 {
            continue;
        }
        match version(conn) {
            Ok(v) if Some(v) != last => {
                last = Some(v);
                let position = conn
                    .query_row(
                        "SELECT COALESCE(MAX(position), 0) FROM kernel_events",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_or(0, |p| u64::try_from(p).unwrap_or(0));
                generation.note_seen(position);
                head.send_modify(|s| s.position = s.position.max(position));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "PRAGMA data_version failed; retrying"),
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn unix_micros_now() -> i64 {
    to_micros(SystemTime::now())
}

/// A time as microseconds since the Unix epoch (0 before it, saturating far after it).
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch as a time.
pub(crate) fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// `SystemTime` rounded up to the next whole microsecond (for `>=` / `<` bounds that must agree
/// with times stored in microseconds).
pub(crate) fn to_micros_ceil(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let us = d.as_micros() + u128::from(d.subsec_nanos() % 1000 != 0);
            i64::try_from(us).unwrap_or(i64::MAX)
        }
        Err(_) => 0,
    }
}

/// A `u64` for SQLite (whose integers are `i64`), saturating.
pub(crate) fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `usize` limit for SQLite's `LIMIT` (`-1`: none).
pub(crate) fn sql_limit(n: Option<usize>) -> i64 {
    n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// An `i64` read from SQLite as the `u64` the kernel uses (negative values are corruption).
pub(crate) fn from_sql_int(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| error::corrupted(what, format!("negative value {n}")))
}
