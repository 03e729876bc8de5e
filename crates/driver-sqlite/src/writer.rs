//! The one writer: a dedicated thread that owns the only read-write connection and drains a
//! queue of write jobs, committing everything queued as one transaction (group commit).
//!
//! Each job runs inside its own `SAVEPOINT`: a job that fails (or panics) is rolled back to its
//! savepoint and answered with its error, while the other jobs of the group commit. A job's
//! success is answered only after the group's `COMMIT` returned, so a caller never sees a write
//! that is not durable (to the degree `synchronous` promises). A failed `COMMIT` fails every job
//! of the group that had succeeded.
//!
//! Because there is one writer per process and SQLite holds a file-wide write lock for the whole
//! transaction (`BEGIN IMMEDIATE`), everything a job reads is current across processes, and
//! values it derives from the table (the next global position, the next fencing token) are
//! gapless and strictly increasing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_core::subscription::HeadSender;
use kernel_core::{Error, ErrorStatus, Result};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Db, shut_down};
use crate::unix_micros_now;

/// Most jobs committed in one transaction.
const MAX_GROUP: usize = 256;
/// Queue length before callers wait.
const QUEUE: usize = 4096;
/// How long the writer polls its queue (yielding the CPU) before it parks.
const SPIN: Duration = Duration::from_micros(50);
/// Writes between two sweeps of expired documents and spent rate-limit state.
const SWEEP_EVERY: u64 = 4096;
/// Most rows one sweep removes (it runs inside a group's transaction, so it stays short).
const SWEEP_LIMIT: i64 = 1000;

/// What a job sees: the connection inside the group's transaction, and the group's counters.
pub(crate) struct WriteCtx<'c> {
    pub(crate) conn: &'c Connection,
    /// The next document stamp, read from `kernel_meta` on first use in the group.
    next_stamp: Option<i64>,
    stamp_dirty: bool,
    /// The highest global position written by a job of this group (set by successful appends).
    pub(crate) head: Option<u64>,
}

impl WriteCtx<'_> {
    /// A fresh stamp for a document write. Stamps only grow (they are stored at the end of the
    /// group), so a transaction that read a key sees any later write to it as a changed stamp.
    pub(crate) fn stamp(&mut self) -> Result<i64> {
        let next = match self.next_stamp {
            Some(n) => n,
            None => {
                let stored: i64 = self
                    .conn
                    .prepare_cached("SELECT value FROM kernel_meta WHERE name = 'doc_stamp'")
                    .db()?
                    .query_row([], |r| r.get(0))
                    .db()?;
                stored + 1
            }
        };
        self.next_stamp = Some(next + 1);
        self.stamp_dirty = true;
        Ok(next)
    }

    fn flush(&mut self) -> Result<()> {
        if let (true, Some(next)) = (self.stamp_dirty, self.next_stamp) {
            self.conn
                .prepare_cached("UPDATE kernel_meta SET value = ?1 WHERE name = 'doc_stamp'")
                .db()?
                .execute([next - 1])
                .db()?;
        }
        Ok(())
    }
}

/// A queued write: runs inside a savepoint, then learns whether the group committed.
trait Job: Send {
    /// Runs the job; `true` if it succeeded (its savepoint is released, else rolled back).
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// Answers the caller: the job's own outcome if the group committed, else `commit`'s error.
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct TypedJob<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
{
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool {
        let out = match self.f.take() {
            Some(f) => match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
                Ok(r) => r,
                Err(_) => Err(Error::internal(
                    "a write job panicked; it was rolled back and the writer goes on",
                )),
            },
            None => Err(Error::internal("a write job ran twice")),
        };
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let out = match (self.out, commit) {
            (Some(Ok(_)), Err(e)) => Err(e),
            (Some(out), _) => out,
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(Error::internal("a write job was never run")),
        };
        // The caller may have gone away (its future dropped): nothing to tell then.
        let _ = self.reply.send(out);
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Stop,
}

/// Handle on the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Writer {
    /// Starts the thread owning `conn`. `head` is told the new last position after each commit
    /// that appended events.
    pub(crate) fn start(conn: Connection, head: Arc<HeadSender>) -> Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("kernel-sqlite-writer".to_owned())
            .spawn(move || {
                run(conn, rx, &head);
                let _ = done_tx.send(());
            })
            .map_err(|e| {
                Error::unavailable("cannot start the SQLite writer thread")
                    .with_source(e)
                    .with_context("backend", "sqlite")
            })?;
        Ok(Writer {
            tx,
            done: std::sync::Mutex::new(Some(done_rx)),
        })
    }

    /// Runs `f` in the writer's next group; its result once the group committed.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            f: Some(f),
            out: None,
            reply,
        });
        self.tx.send(Msg::Job(job)).await.map_err(|_| shut_down())?;
        match answer.await {
            Ok(r) => r,
            // The thread took the job and went away without answering: it may have committed.
            Err(_) => Err(shut_down().with_status(ErrorStatus::MaybeApplied)),
        }
    }

    /// Asks the thread to finish the queued jobs and stop; waits until it has closed the
    /// connection. Later calls fail with [`shut_down`].
    pub(crate) async fn stop(&self) {
        let _ = self.tx.send(Msg::Stop).await;
        let done = match self.done.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Msg>, head: &HeadSender) {
    let mut since_sweep: u64 = 0;
    let mut stopping = false;
    while !stopping {
        let Some(first) = next_message(&mut rx) else {
            break;
        };
        let mut jobs = Vec::new();
        match first {
            Msg::Job(j) => jobs.push(j),
            Msg::Stop => stopping = true,
        }
        while !stopping && jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        if stopping {
            // Refuse new work at once; jobs already queued behind the stop are still run.
            rx.close();
            while let Ok(m) = rx.try_recv() {
                if let Msg::Job(j) = m {
                    jobs.push(j);
                }
            }
        }
        if jobs.is_empty() {
            continue;
        }
        since_sweep += jobs.len() as u64;
        let sweep = since_sweep >= SWEEP_EVERY;
        if sweep {
            since_sweep = 0;
        }
        for chunk in chunks(jobs) {
            group(&conn, chunk, sweep, head);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the SQLite writer connection failed");
    }
}

/// The next message: polls briefly first (a caller that just got its answer often sends its
/// next write within microseconds, and waking a parked thread costs more than that), then
/// blocks.
fn next_message(rx: &mut mpsc::Receiver<Msg>) -> Option<Msg> {
    let spin_until = Instant::now() + SPIN;
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

fn chunks(mut jobs: Vec<Box<dyn Job>>) -> Vec<Vec<Box<dyn Job>>> {
    let mut out = Vec::new();
    while jobs.len() > MAX_GROUP {
        let rest = jobs.split_off(MAX_GROUP);
        out.push(jobs);
        jobs = rest;
    }
    out.push(jobs);
    out
}

/// Runs a statement that returns no rows, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql).db()?.execute([]).db()?;
    Ok(())
}

/// Runs one group: `BEGIN IMMEDIATE`, each job in a savepoint, `COMMIT`, answers. A group of one
/// job needs no savepoint: if it fails, the whole transaction is rolled back.
fn group(conn: &Connection, jobs: Vec<Box<dyn Job>>, sweep: bool, head: &HeadSender) {
    let started = Instant::now();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        for j in jobs {
            j.finish(Err(e.clone()));
        }
        return;
    }
    let mut ctx = WriteCtx {
        conn,
        next_stamp: None,
        stamp_dirty: false,
        head: None,
    };
    let mut jobs = jobs;
    let mut fatal: Option<Error> = None;
    let alone = jobs.len() == 1;
    let mut any_ok = false;
    for job in &mut jobs {
        if !alone {
            if let Err(e) = exec(conn, "SAVEPOINT job") {
                fatal = Some(e);
                break;
            }
        }
        let ok = job.run(&mut ctx);
        any_ok |= ok;
        if alone {
            break;
        }
        let end = if ok {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            fatal = Some(e);
            break;
        }
    }
    if fatal.is_none() && any_ok && sweep {
        sweep_expired(conn);
    }
    let outcome = match fatal {
        Some(e) => Err(e),
        // Nothing succeeded: nothing to commit (and a lone failed job must not be).
        None if !any_ok => exec(conn, "ROLLBACK"),
        None => ctx.flush().and_then(|()| exec(conn, "COMMIT")),
    };
    let outcome = match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            // Whatever is open is rolled back: the group is not applied (SQLite rolls back a
            // transaction whose COMMIT failed, or leaves it open for us to roll back).
            if !conn.is_autocommit() {
                if let Err(rb) = conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %rb, "rolling back a failed SQLite group failed");
                }
            }
            Err(e)
        }
    };
    let committed = outcome.is_ok();
    let new_head = ctx.head;
    for j in jobs {
        j.finish(outcome.clone());
    }
    if committed {
        if let Some(position) = new_head {
            head.send_modify(|s| s.position = s.position.max(position));
        }
    }
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "a SQLite write group took over 1 s"
        );
    }
}

/// Removes a bounded number of expired documents, rate-limit rows back at full burst and
/// operation-id records past their window. Expired
/// rows are invisible already; this only bounds the file's growth. Errors are logged, not fatal.
fn sweep_expired(conn: &Connection) {
    let now = unix_micros_now();
    let result = conn.execute_batch("SAVEPOINT sweep").and_then(|()| {
        conn.execute(
            "DELETE FROM kernel_documents WHERE (namespace, key) IN (
                     SELECT namespace, key FROM kernel_documents
                     WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            rusqlite::params![now, SWEEP_LIMIT],
        )?;
        conn.execute(
            "DELETE FROM kernel_rate_limits WHERE key IN (
                     SELECT key FROM kernel_rate_limits WHERE tat <= ?1 LIMIT ?2)",
            rusqlite::params![now, SWEEP_LIMIT],
        )?;
        conn.execute(
            "DELETE FROM kernel_operations WHERE (namespace, operation_id) IN (
                     SELECT namespace, operation_id FROM kernel_operations
                     WHERE expires_at <= ?1 LIMIT ?2)",
            rusqlite::params![now, SWEEP_LIMIT],
        )?;
        conn.execute_batch("RELEASE sweep")
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "sweeping expired SQLite rows failed");
        let _ = conn.execute_batch("ROLLBACK TO sweep; RELEASE sweep");
    }
}
