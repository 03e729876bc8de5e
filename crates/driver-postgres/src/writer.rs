//! Group commit for appends: the appends that arrive while earlier ones are being written go to
//! the server together, as one `kernel_append_batch` statement in one transaction.
//!
//! A single-event append costs the server a statement, a transaction and a WAL flush, which
//! is several times the cost of inserting its row. Appenders therefore hand their append to one
//! task per driver, which keeps one batch on the wire ([`BATCHES_IN_FLIGHT`]) and starts the
//! next batch with everything that queued meanwhile. Under light load a batch holds one append
//! and goes out at once (no added wait); under load the batches grow and the per-append cost
//! falls towards the cost of its rows. A batch smaller than the one before it waits up to
//! [`GATHER_WAIT`] for the appenders still on their way back from the last batch's pass.
//!
//! Each append in a batch is checked and written on its own: a failed expected version writes
//! nothing of that append and does not affect the others. The batch takes every stream's lock
//! before its first write, so per-stream version order and the sequencer's gapless numbering
//! hold as for single appends (see `migrations/0002_event_txid.up.sql`), but without waiting: an
//! append whose stream another transaction holds comes back busy and is written again on its
//! own, waiting for the lock, so it does not hold up the batch. A cancelled appender's append
//! may still be written, as with any statement already sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use kernel_core::{Error, ErrorStatus, NewEvent, Result, Uuid, Value};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use crate::codes::{AppendStatus, ExpectedKind};
use crate::error::{self, BACKEND, pg};
use crate::jsonb::Jsonb;
use crate::statement::Statements;

const BATCH: &str = "SELECT o_status, o_stream_version, o_stored, o_seqs \
     FROM kernel_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
const LAST_POSITIONS: &str = "SELECT o_seq, o_position FROM kernel_last_append_positions()";

/// A batch stops growing at this many appends...
const MAX_APPENDS: usize = 256;
/// ... or when the next append would take it past this many events (one append may exceed it
/// alone: it then goes in a batch of its own).
const MAX_EVENTS: usize = 1000;

/// One batch on the wire at a time (per driver). While it executes, the next one gathers;
/// its slot is given back at commit, so the next batch runs while the pass behind the last one
/// does. More batches in flight measured slower on the benchmark: concurrent batches of one
/// driver hold each other's events back from numbering (the sequencer numbers only below the
/// oldest running transaction), and split the queue into smaller batches.
const BATCHES_IN_FLIGHT: usize = 1;

/// The longest a batch waits for appends to make it as large as the one before it. Under steady
/// load each batch's appenders come back with their next append only after the pass behind
/// their batch has answered, while the next batch leaves at the previous one's commit, before
/// that pass: without a wait, concurrent appenders split into two alternating half-size
/// batches, each paying a whole commit (measured: 16 appenders, batches of about 8). The wait
/// ends as soon as the batch is as large as the last one, so a single appender never waits,
/// and a shrinking load costs one wait before the batches shrink with it.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// One append, as the writer needs it.
pub(crate) struct AppendRequest {
    pub(crate) stream: String,
    /// What the stream's version must be; `expected` holds the version for
    /// [`ExpectedKind::Exact`].
    pub(crate) kind: ExpectedKind,
    pub(crate) expected: Option<i64>,
    pub(crate) events: Arc<Vec<NewEvent>>,
    /// With row-level security: the tenant the append runs for. A batch holds appends of one
    /// tenant only (the session setting is one value).
    pub(crate) tenant: Option<Arc<str>>,
}

/// What the server did with one append.
#[derive(Debug)]
pub(crate) enum Staged {
    /// Written: the stream's new version, the events' seqs, and their positions when the pass
    /// sent behind the batch could already give them.
    Written {
        stream_version: i64,
        seqs: Vec<Option<i64>>,
        positions: Option<Vec<i64>>,
    },
    /// Nothing written because some id is already in the stream: the stored version and seq
    /// of every id (`None` where absent), for the idempotency check.
    Stored {
        stored: Vec<Option<i64>>,
        seqs: Vec<Option<i64>>,
    },
    /// Nothing written: the stream is at `current`, not at the expected version.
    Mismatch { current: i64 },
    /// Nothing written: another transaction held the stream's lock (never returned to an
    /// appender: the writer sends the append again on its own, waiting for the lock).
    Busy,
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Staged>>,
}

/// A handle on the driver's writer task; the task ends when every handle is dropped.
pub(crate) struct AppendWriter {
    queue: mpsc::UnboundedSender<Pending>,
}

/// What every batch needs: where to write, and whom to tell that a batch has committed (the
/// sequencer: events it waits for may have been held back by that batch).
#[derive(Clone)]
struct Target {
    pool: Pool,
    pool_size: usize,
    committed: Arc<Notify>,
    /// Row-level security: set each batch's tenant on its connection.
    rls: bool,
    /// Prepared and cached, or unnamed (transaction pooler).
    statements: Statements,
}

impl AppendWriter {
    /// Starts the task. `committed` is notified after every batch.
    pub(crate) fn spawn(
        pool: Pool,
        pool_size: usize,
        committed: Arc<Notify>,
        rls: bool,
        statements: Statements,
    ) -> AppendWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            Target {
                pool,
                pool_size,
                committed,
                rls,
                statements,
            },
            rx,
        ));
        AppendWriter { queue }
    }

    /// Writes one append (with whatever others are waiting) and says what became of it.
    pub(crate) async fn stage(&self, request: AppendRequest) -> Result<Staged> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::unavailable("the postgres driver's append writer has stopped (driver dropped)")
        .with_context("backend", BACKEND)
}

async fn run(target: Target, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // How many appends the last batch held: under steady load about as many appenders come
    // back for the next one (see `GATHER_WAIT`).
    let mut last_len = 1;
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Wait for a free slot *before* gathering: appends queue up meanwhile and leave in
        // one batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut events = first.request.events.len();
        let mut batch = vec![first];
        let mut deadline = None;
        while batch.len() < MAX_APPENDS {
            let next = match rx.try_recv() {
                Ok(next) => next,
                // Fewer than last time: the rest are likely on their way back from the pass
                // behind the last batch. Wait for them a moment rather than send a batch of
                // half of them now and the other half right behind it.
                Err(_) if batch.len() < last_len => {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + GATHER_WAIT);
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            if events + next.request.events.len() > MAX_EVENTS
                || next.request.tenant != batch[0].request.tenant
            {
                carried = Some(next);
                break;
            }
            events += next.request.events.len();
            batch.push(next);
        }
        last_len = batch.len();
        // An appender that gave up before its append left is not written for.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let target = target.clone();
        tokio::spawn(async move {
            write(&target, batch, permit).await;
        });
    }
}

/// Writes `batch`; `permit` (its slot among the batches in flight) is given back as soon as the
/// batch has committed, before the pass behind it answers.
async fn write(target: &Target, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    match execute(target, &batch, false, &mut permit).await {
        Ok(staged) => {
            for (pending, staged) in batch.into_iter().zip(staged) {
                if let Staged::Busy = staged {
                    // Another transaction holds the stream: wait for it on a connection of its
                    // own, outside the batches.
                    let target = target.clone();
                    tokio::spawn(async move { alone(&target, pending).await });
                } else {
                    // The appender may have given up meanwhile: nothing to tell it then.
                    let _ = pending.reply.send(Ok(staged));
                }
            }
        }
        Err(e) if batch.len() > 1 && e.status() == ErrorStatus::Permanent => {
            // A permanent failure may belong to one append only (data the client-side checks
            // let through): write each alone, so only that one fails.
            tracing::debug!(error = %e, appends = batch.len(), "append batch failed; writing its appends one by one");
            // The one-by-one writes run outside the batches: free the slot for the next one.
            drop(permit.take());
            for pending in batch {
                alone(target, pending).await;
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Writes one append on its own, waiting for its stream's lock when another transaction holds it.
async fn alone(target: &Target, pending: Pending) {
    let result = execute(target, std::slice::from_ref(&pending), true, &mut None)
        .await
        .and_then(|staged| match staged.into_iter().next() {
            Some(Staged::Busy) | None => Err(Error::internal(
                "kernel_append_batch did not write an append it was allowed to wait for",
            )
            .with_context("backend", BACKEND)),
            Some(staged) => Ok(staged),
        });
    let _ = pending.reply.send(result);
}

/// Runs one `kernel_append_batch` for `batch` (one row per append, in order), with a sequencer
/// pass for its events right behind it in the same round trip.
/// With `wait`, it waits for stream locks other transactions hold; without, those appends come
/// back [`Staged::Busy`].
async fn execute(
    target: &Target,
    batch: &[Pending],
    wait: bool,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Result<Vec<Staged>> {
    let events = batch.iter().map(|p| p.request.events.len()).sum();
    let mut streams = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let mut ids: Vec<Uuid> = Vec::with_capacity(events);
    let mut types: Vec<&str> = Vec::with_capacity(events);
    let mut payloads: Vec<Jsonb<&Value>> = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    let mut correlation: Vec<Option<&str>> = Vec::with_capacity(events);
    let mut causation: Vec<Option<&str>> = Vec::with_capacity(events);
    let mut recorded: Vec<Option<std::time::SystemTime>> = Vec::with_capacity(events);
    for pending in batch {
        let r = &pending.request;
        streams.push(r.stream.as_str());
        kinds.push(r.kind.code());
        expected.push(r.expected);
        // At most 1000 events per append (validated before it got here).
        counts.push(i32::try_from(r.events.len()).unwrap_or(i32::MAX));
        for e in r.events.iter() {
            ids.push(e.id);
            types.push(e.event_type.as_str());
            payloads.push(Jsonb(&e.payload));
            metadata.push(Jsonb(&e.metadata));
            correlation.push(e.correlation_id.as_deref());
            causation.push(e.causation_id.as_deref());
            recorded.push(e.recorded_at);
        }
    }
    let client = target
        .pool
        .get()
        .await
        .map_err(|e| error::pool(e, target.pool_size))?;
    if target.rls {
        // One tenant per batch (see `run`); a connection never keeps another call's tenant.
        let tenant = batch.first().and_then(|p| p.request.tenant.as_deref());
        crate::tenancy::enter(&client, tenant).await?;
    }
    let params: [&(dyn ToSql + Sync); 12] = [
        &streams,
        &kinds,
        &expected,
        &counts,
        &ids,
        &types,
        &payloads,
        &metadata,
        &correlation,
        &causation,
        &recorded,
        &wait,
    ];
    // Both go out before either answer comes back; the server runs the pass after the batch
    // has committed. Through a transaction pooler the second may run on another server
    // session, whose `kernel.last_append` names another transaction: its rows then match none
    // of this batch's seqs, and the sequencer gives the positions instead.
    let (rows, numbered) = tokio::join!(
        async {
            let r = target.statements.query(&client, BATCH, &params).await;
            // Committed (or failed): the next batch may go, and events held back by this one
            // may be numbered now.
            drop(permit.take());
            target.committed.notify_one();
            r
        },
        target.statements.query(&client, LAST_POSITIONS, &[])
    );
    drop(client);
    let rows = rows.map_err(error::pg_write)?;
    // The pass is an optimisation: when it fails, the sequencer gives the positions.
    let numbered: HashMap<i64, i64> = match numbered {
        Ok(numbered) => numbered
            .iter()
            .filter_map(|r| {
                let seq: i64 = r.try_get(0).ok()?;
                let position: Option<i64> = r.try_get(1).ok()?;
                Some((seq, position?))
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "the pass behind an append batch failed; the sequencer will number it");
            HashMap::new()
        }
    };
    if rows.len() != batch.len() {
        return Err(Error::internal(format!(
            "kernel_append_batch returned {} rows for {} appends",
            rows.len(),
            batch.len()
        ))
        .with_context("backend", BACKEND));
    }
    rows.iter()
        .map(|row| {
            let status: i16 = row.try_get(0).map_err(pg)?;
            let version: Option<i64> = row.try_get(1).map_err(pg)?;
            let stored: Option<Vec<Option<i64>>> = row.try_get(2).map_err(pg)?;
            let seqs: Option<Vec<Option<i64>>> = row.try_get(3).map_err(pg)?;
            match AppendStatus::from_code(status) {
                Some(AppendStatus::Written) => {
                    let seqs = seqs.unwrap_or_default();
                    let positions = seqs
                        .iter()
                        .map(|seq| seq.and_then(|seq| numbered.get(&seq).copied()))
                        .collect();
                    Ok(Staged::Written {
                        stream_version: version.unwrap_or_default(),
                        seqs,
                        positions,
                    })
                }
                Some(AppendStatus::Stored) => Ok(Staged::Stored {
                    stored: stored.unwrap_or_default(),
                    seqs: seqs.unwrap_or_default(),
                }),
                Some(AppendStatus::Mismatch) => Ok(Staged::Mismatch {
                    current: version.unwrap_or_default(),
                }),
                Some(AppendStatus::Busy) => Ok(Staged::Busy),
                None => Err(Error::internal(format!(
                    "kernel_append_batch returned the unknown status {status}"
                ))
                .with_context("backend", BACKEND)),
            }
        })
        .collect()
}
