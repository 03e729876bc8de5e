//! Data-loss detection: a generation marker in the file, and the highest global position seen.
//!
//! A SQLite file loses data when it is replaced by an older copy (a restore from a backup, a
//! snapshot of the volume, a file copied over the live one) or edited by hand. A driver that
//! did not notice would hand out global positions a second time (a subscriber past them never
//! hears of the new events), store an acknowledged event id again and give a lease to a second
//! holder.
//!
//! So the file carries a marker (`kernel_generation`, one row, `<unix ms>-<random>`) that the
//! migration creates and an opening driver creates when it is missing; the driver remembers the
//! marker it opened (or acknowledged) and the highest global position it has itself seen (its
//! appends, its reads of events, the watcher's head). The store has lost data when the marker
//! changed or is gone, or when the event log's head is below that position.
//!
//! Appends check both inside their writer job, atomically with the append, every time (one
//! primary-key read of a one-row table; the head is read by the append anyway). Lock operations
//! (inside their writer job) and subscription pages check at most once a second; `status()`
//! checks at once. After a loss is found, appends, lock operations and subscriptions fail with a
//! permanent `Corrupted` error saying what happened, and `status()` is unhealthy with the same
//! reason, until [`SqliteDriver::acknowledge_data_loss`] (or a new process: an opening driver
//! adopts what it finds, as it cannot know what was there before).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use kernel_core::{Error, Result, Uuid};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Db;
use crate::{SqliteDriver, from_sql_int, unix_micros_now};

/// How long a successful check is trusted by lock operations and subscriptions.
const RECHECK: Duration = Duration::from_secs(1);

/// What the driver knows of the file's generation.
#[derive(Debug)]
pub(crate) struct Generation {
    state: Mutex<State>,
    /// The highest global event position this driver has seen in the file.
    seen: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// The marker this driver opened (or acknowledged).
    expected: String,
    /// The loss found, once found: every guarded operation fails with it.
    lost: Option<Error>,
    verified_at: Option<Instant>,
}

/// What a check reads from the file, and the position it must not be below.
pub(crate) struct Found {
    marker: Option<String>,
    head: u64,
    seen: u64,
}

fn new_marker() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms}-{}", Uuid::new_v4().simple())
}

/// The file's marker (`None`: the row is gone).
pub(crate) fn read_marker(conn: &Connection) -> Result<Option<String>> {
    conn.prepare_cached("SELECT marker FROM kernel_generation WHERE id = 1")
        .db()?
        .query_row([], |r| r.get(0))
        .optional()
        .db()
}

/// The event log's head (0 when empty).
pub(crate) fn read_head(conn: &Connection) -> Result<u64> {
    let p: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM kernel_events")
        .db()?
        .query_row([], |r| r.get(0))
        .db()?;
    from_sql_int(p, "event position")
}

/// Creates the marker if the file has none, and returns the file's marker and head: what an
/// opening (or acknowledging) driver adopts. Needs a read-write connection.
pub(crate) fn adopt(conn: &Connection) -> Result<(String, u64)> {
    // One statement: two processes adopting a file without a marker agree on the one inserted
    // first.
    conn.prepare_cached(
        "INSERT OR IGNORE INTO kernel_generation (id, marker, created_at) VALUES (1, ?1, ?2)",
    )
    .db()?
    .execute(params![new_marker(), unix_micros_now()])
    .db()?;
    let marker = read_marker(conn)?.ok_or_else(|| {
        Error::unavailable("the SQLite generation marker vanished right after it was set")
            .with_context("backend", "sqlite")
    })?;
    Ok((marker, read_head(conn)?))
}

impl Generation {
    pub(crate) fn new(expected: String, head: u64) -> Generation {
        Generation {
            state: Mutex::new(State {
                expected,
                lost: None,
                verified_at: Some(Instant::now()),
            }),
            seen: AtomicU64::new(head),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A small struct every writer leaves valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The marker this driver expects.
    pub(crate) fn expected(&self) -> String {
        self.lock().expected.clone()
    }

    /// The loss found and not acknowledged, if any.
    pub(crate) fn lost(&self) -> Option<Error> {
        self.lock().lost.clone()
    }

    /// Fails with the recorded loss, if any.
    pub(crate) fn refuse_if_lost(&self, operation: &'static str) -> Result<()> {
        match &self.lock().lost {
            Some(lost) => Err(lost.clone().with_operation(operation)),
            None => Ok(()),
        }
    }

    /// The highest global position this driver has seen.
    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Remembers that the file held an event at `position`.
    pub(crate) fn note_seen(&self, position: u64) {
        self.seen.fetch_max(position, Ordering::AcqRel);
    }

    /// Fails with the recorded loss; otherwise whether a check is due (always with `force`,
    /// else when the last one is older than a second).
    pub(crate) fn due(&self, operation: &'static str, force: bool) -> Result<bool> {
        let s = self.lock();
        if let Some(lost) = &s.lost {
            return Err(lost.clone().with_operation(operation));
        }
        Ok(force || s.verified_at.is_none_or(|t| t.elapsed() >= RECHECK))
    }

    /// Reads what a check compares. The position seen is taken first: every position noted
    /// was committed before, so a read that starts afterwards finds a head at least as high
    /// unless the file lost it (taken after, a concurrent append would look like a loss).
    fn read(&self, conn: &Connection) -> Result<Found> {
        let seen = self.seen.load(Ordering::Acquire);
        Ok(Found {
            marker: read_marker(conn)?,
            head: read_head(conn)?,
            seen,
        })
    }

    /// Judges what a check read: records and returns the loss if the marker is not the
    /// expected one or the head is below the highest position seen.
    fn judge(&self, found: &Found, operation: &'static str) -> Result<()> {
        let seen = found.seen;
        let mut s = self.lock();
        if let Some(lost) = &s.lost {
            return Err(lost.clone().with_operation(operation));
        }
        if found.marker.as_deref() == Some(s.expected.as_str()) && found.head >= seen {
            s.verified_at = Some(Instant::now());
            return Ok(());
        }
        let e = loss_error(&s.expected, found);
        tracing::error!(error = %e, "SQLite data loss detected");
        s.lost = Some(e.clone());
        Err(e.with_operation(operation))
    }

    /// Reads and judges when a check is due (see [`Generation::due`]).
    pub(crate) fn check(
        &self,
        conn: &Connection,
        operation: &'static str,
        force: bool,
    ) -> Result<()> {
        if self.due(operation, force)? {
            self.judge(&self.read(conn)?, operation)?;
        }
        Ok(())
    }

    /// Makes the file's current marker and head the expected ones and forgets the loss.
    fn reset(&self, marker: String, head: u64) -> Option<Error> {
        let mut s = self.lock();
        s.expected = marker;
        s.verified_at = Some(Instant::now());
        self.seen.store(head, Ordering::Release);
        s.lost.take()
    }
}

/// The error every guarded operation gets once a loss is found.
fn loss_error(expected: &str, found: &Found) -> Error {
    let seen = found.seen;
    let what = match found.marker.as_deref() {
        None => format!("the generation marker this driver opened ({expected}) is gone"),
        Some(m) if m != expected => format!(
            "the generation marker this driver opened ({expected}) is now {m} (the file was \
             replaced or restored from another copy)"
        ),
        Some(_) => format!(
            "the event log ends at global position {}, below position {seen} that this driver \
             has already seen (the file was restored from an older copy, or events were deleted)",
            found.head
        ),
    };
    Error::corrupted(format!(
        "the SQLite database lost the kernel's data: {what}. Global positions, event ids and \
         leases from before may be gone or handed out again; appends, lock operations and \
         subscriptions are refused until an operator acknowledges the loss \
         (SqliteDriver::acknowledge_data_loss, or a restart of this process; see docs/sqlite.md)"
    ))
    .with_context("backend", "sqlite")
    .with_context("generation_expected", expected)
    .with_context(
        "generation_found",
        found.marker.as_deref().unwrap_or("none"),
    )
    .with_context("head", found.head)
    .with_context("seen_position", seen)
}

impl SqliteDriver {
    /// The data loss this driver found and nobody acknowledged yet, if any: the permanent
    /// `Corrupted` error appends, lock operations and subscriptions fail with.
    pub fn data_loss(&self) -> Option<Error> {
        self.inner().generation.lost()
    }

    /// Accepts a loss this driver found: adopts the file's current generation marker (creating
    /// one if there is none) and its current event head, and lets appends, lock operations and
    /// new subscriptions through again. Global positions go on from the file's head, so
    /// positions handed out before the loss may be handed out again: tell consumers that keep
    /// positions outside the file to reset them. Harmless without a loss.
    ///
    /// Returns the marker now expected.
    pub async fn acknowledge_data_loss(&self) -> Result<String> {
        let (marker, head) = self
            .inner()
            .write("acknowledge_data_loss", |ctx| adopt(ctx.conn))
            .await?;
        if let Some(lost) = self.inner().generation.reset(marker.clone(), head) {
            tracing::warn!(generation = %marker, head, loss = %lost, "SQLite data loss acknowledged");
        }
        Ok(marker)
    }
}
