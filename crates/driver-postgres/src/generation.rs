//! Data-loss detection: a generation marker row, and the highest event position seen.
//!
//! A database restored from an older backup, replaced by another one at the same address, or
//! emptied by hand is not the one a running driver was writing to. Unnoticed, the driver would
//! hand out global positions a second time (a subscriber already past them never hears of the
//! new events), store an acknowledged event id again, and grant a lease a second time.
//!
//! Two signs give such a loss away:
//!
//! * **The marker.** `kernel_generation` holds one row, a marker (`<unix ms>-<random>`) the first
//!   driver to connect creates. Every driver remembers the marker it found when it connected;
//!   if the row is gone or holds another marker, this is not the database it connected to.
//! * **The head.** Each driver remembers the highest global position it has seen (appended,
//!   read, or the head when it connected). If the event log's head is below it, events the
//!   driver saw are gone: a restore from a backup older than them (which keeps the marker).
//!
//! Appends, lock operations and subscriptions check at most once a second ([`RECHECK`]), and
//! `status()` at once. A loss found is kept: those operations then fail with a permanent
//! `Corrupted` error saying what happened, and `status()` reports the backend unhealthy with the
//! reason, until an operator calls [`crate::PostgresDriver::acknowledge_data_loss`] (or restarts
//! the process: a connecting driver adopts what it finds, as it cannot know what was there
//! before). Documents, reads and rate limits go on: they have no history to contradict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use kernel_core::{Error, Result, Uuid};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::error::{BACKEND, pg, pg_write};

/// How long a successful check is trusted by appends, lock operations and subscriptions.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// Most sequencer passes a check runs when the head is below the highest position seen (see
/// [`Generation::verify`]); each numbers up to 10000 events.
const REPAIR_PASSES: usize = 100;

const CREATE: &str =
    "INSERT INTO kernel_generation (id, marker) VALUES (true, $1) ON CONFLICT DO NOTHING";

/// The marker (NULL when the row is gone) and the event log's head, in one round trip.
const READ: &str = "SELECT (SELECT g.marker FROM kernel_generation g WHERE g.id), \
     coalesce((SELECT l.position FROM kernel_event_log l ORDER BY l.position DESC LIMIT 1), 0)";

/// What a driver knows of its database's generation.
#[derive(Debug, Default)]
pub(crate) struct Generation {
    state: Mutex<State>,
    /// Highest global position this driver has seen.
    seen: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The marker this driver connected to (or acknowledged); `None` while the schema has no
    /// `kernel_generation` table yet, which turns detection off.
    expected: Option<String>,
    /// The loss found, once found: every guarded operation fails with it.
    lost: Option<Error>,
    verified_at: Option<Instant>,
}

/// What a check found wrong.
enum Finding {
    Marker(Option<String>),
    Regressed { head: u64, seen: u64 },
}

fn new_marker() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms}-{}", Uuid::new_v4().simple())
}

fn loss_error(expected: &str, finding: &Finding) -> Error {
    let what = match finding {
        Finding::Marker(None) => format!(
            "the generation marker this driver connected to ({expected}) is gone from \
             kernel_generation (the database was restored from a backup or dump without it, \
             emptied, or replaced by another database at the same address)"
        ),
        Finding::Marker(Some(found)) => format!(
            "the generation marker this driver connected to ({expected}) is now {found} (the \
             database was replaced or restored from another one)"
        ),
        Finding::Regressed { head, seen } => format!(
            "the event log ends at position {head}, below position {seen} that this driver has \
             already seen (the database was restored from an older backup or point in time, \
             or events were deleted)"
        ),
    };
    let mut e = Error::corrupted(format!(
        "PostgreSQL lost the kernel's data: {what}. Stream positions, event ids and leases from \
         before may be gone or handed out again; appends, lock operations and subscriptions are \
         refused until an operator acknowledges the loss \
         (PostgresDriver::acknowledge_data_loss, or a restart of this process; see \
         docs/postgres.md, \"Data-loss detection\")"
    ))
    .with_context("backend", BACKEND)
    .with_context("generation_expected", expected);
    e = match finding {
        Finding::Marker(found) => {
            e.with_context("generation_found", found.as_deref().unwrap_or("none"))
        }
        Finding::Regressed { head, seen } => e
            .with_context("head_position", head)
            .with_context("seen_position", seen),
    };
    e
}

/// [`READ`]; `None` when the schema has no `kernel_generation` table yet.
async fn read_if_migrated(client: &Client) -> Result<Option<(Option<String>, u64)>> {
    match client.query_typed(READ, &[]).await {
        Ok(rows) => {
            let row = rows
                .first()
                .ok_or_else(|| Error::internal("reading the generation marker returned no row"))?;
            head_of(row).map(Some)
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(pg(e)),
    }
}

fn head_of(row: &tokio_postgres::Row) -> Result<(Option<String>, u64)> {
    let marker: Option<String> = row.try_get(0).map_err(pg)?;
    let head: i64 = row.try_get(1).map_err(pg)?;
    Ok((marker, crate::rows::version(head)?))
}

impl Generation {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A small struct every writer leaves valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a global position this driver handed out or read.
    pub(crate) fn saw(&self, position: u64) {
        self.seen.fetch_max(position, Ordering::Relaxed);
    }

    /// The loss found and not acknowledged yet, if any.
    pub(crate) fn lost(&self) -> Option<Error> {
        self.lock().lost.clone()
    }

    /// The marker this driver expects (`None`: detection is off, the schema predates it).
    pub(crate) fn expected(&self) -> Option<String> {
        self.lock().expected.clone()
    }

    /// Reads the database's marker, creating it when there is none, and makes it and the
    /// current head what this driver expects; clears a recorded loss. `Ok(None)` when the
    /// schema has no `kernel_generation` table yet (detection stays off).
    pub(crate) async fn adopt(&self, client: &Client) -> Result<Option<String>> {
        let Some((mut marker, mut head)) = read_if_migrated(client).await? else {
            let mut s = self.lock();
            s.expected = None;
            s.lost = None;
            return Ok(None);
        };
        if marker.is_none() {
            // Written only when missing, so a driver on a read-only standby with a marker
            // connects as before.
            client
                .query_typed(CREATE, &[(&new_marker(), Type::TEXT)])
                .await
                .map_err(pg_write)?;
            // A statement of its own: it sees a marker a concurrent driver committed meanwhile.
            (marker, head) = read_if_migrated(client).await?.unwrap_or((None, head));
        }
        let marker = marker.ok_or_else(|| {
            Error::unavailable("the generation marker vanished right after it was created")
                .with_context("backend", BACKEND)
        })?;
        let mut s = self.lock();
        s.expected = Some(marker.clone());
        s.lost = None;
        s.verified_at = Some(Instant::now());
        self.seen.store(head, Ordering::Relaxed);
        Ok(Some(marker))
    }

    /// Whether a guarded operation must check now: `Err` with the recorded loss, `Ok(false)`
    /// when the last check is recent enough (or detection is off), `Ok(true)` otherwise (always
    /// with `force`).
    pub(crate) fn due(&self, operation: &'static str, force: bool) -> Result<bool> {
        let s = self.lock();
        if let Some(lost) = &s.lost {
            return Err(lost.clone().with_operation(operation));
        }
        if s.expected.is_none() {
            return Ok(false);
        }
        Ok(force || s.verified_at.is_none_or(|t| t.elapsed() >= RECHECK))
    }

    /// Reads the marker and the head and fails, recording the loss, if the marker changed or
    /// the head is below the highest position seen.
    ///
    /// A head below it is not yet proof: sequencer passes commit without waiting for their WAL
    /// flush (`docs/postgres.md`), so a server crash can drop the newest positions, which the
    /// next pass gives again, identically. So the check runs passes first and compares after.
    pub(crate) async fn verify(&self, client: &Client, operation: &'static str) -> Result<()> {
        // Read before the query: every position noted by then is committed, so visible to it.
        let seen = self.seen.load(Ordering::Relaxed);
        let (mut marker, mut head) = self.read(client, operation).await?;
        let mut passes = 0;
        while head < seen
            && passes < REPAIR_PASSES
            && marker.as_deref() == self.expected().as_deref()
        {
            let numbered = client
                .query_typed("SELECT kernel_sequence()", &[])
                .await
                .map_err(|e| pg_write(e).with_operation(operation))?;
            let progressed = numbered
                .first()
                .and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten())
                .is_some();
            (marker, head) = self.read(client, operation).await?;
            if !progressed {
                break;
            }
            passes += 1;
        }
        let mut s = self.lock();
        let Some(expected) = s.expected.clone() else {
            return Ok(());
        };
        let finding = if marker.as_deref() != Some(expected.as_str()) {
            Finding::Marker(marker)
        } else if head < seen {
            Finding::Regressed { head, seen }
        } else {
            s.verified_at = Some(Instant::now());
            return Ok(());
        };
        if let Some(lost) = &s.lost {
            return Err(lost.clone().with_operation(operation));
        }
        let e = loss_error(&expected, &finding);
        tracing::error!(error = %e, "PostgreSQL data loss detected");
        s.lost = Some(e.clone());
        Err(e.with_operation(operation))
    }

    async fn read(
        &self,
        client: &Client,
        operation: &'static str,
    ) -> Result<(Option<String>, u64)> {
        let rows = client
            .query_typed(READ, &[])
            .await
            .map_err(|e| pg(e).with_operation(operation))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("reading the generation marker returned no row"))?;
        head_of(row)
    }
}
