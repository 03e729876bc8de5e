//! `EventStore` on `kernel_events`, `kernel_event_log` and friends.
//!
//! An append is two server transactions sent together in one network round trip on one
//! connection: `kernel_append_stage` (stream lock, idempotency, expected version, insert without
//! position; commits) and `kernel_event_positions` (a sequencer pass, then the positions). When
//! an older transaction elsewhere is still running, the events cannot be numbered yet; the
//! append then polls the positions with a short backoff (any pass, by anyone, numbers them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures::FutureExt;
use kernel_core::event::{check_idempotent, validate_append};
use kernel_core::subscription::{paged, SubscriptionConfig};
use kernel_core::validate;
use kernel_core::{
    AppendResult, Error, EventFilter, EventStore, EventSubscription, ExpectedVersion, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Result, Snapshot, Uuid, Value,
};

use crate::error::{self, kernel_state, pg, BACKEND};
use crate::rows::{self, limit_i64, to_i64, EVENT_COLUMNS};
use crate::PostgresDriver;

const STAGE: &str = "SELECT o_written, o_stream_version, o_stored \
     FROM kernel_append_stage($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const POSITIONS: &str = "SELECT kernel_event_positions($1, $2)";
const LOOKUP: &str = "SELECT array_agg(l.position ORDER BY t.ord) \
     FROM unnest($2::uuid[]) WITH ORDINALITY AS t(id, ord) \
     LEFT JOIN kernel_events e ON e.stream = $1 AND e.id = t.id \
     LEFT JOIN kernel_event_log l ON l.seq = e.seq";

/// Reads the global log: what `read_all` and subscriptions run.
#[derive(Clone)]
pub(crate) struct LogReader {
    pool: Pool,
    pool_size: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl LogReader {
    pub(crate) async fn read(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| error::pool(e, self.pool_size))?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM kernel_event_log l JOIN kernel_events e ON e.seq = l.seq \
                 WHERE l.position > $1 \
                 AND ($2::text[] IS NULL OR e.category = ANY ($2)) \
                 AND ($3::text[] IS NULL OR e.event_type = ANY ($3)) \
                 AND ($4::text IS NULL OR e.correlation_id = $4) \
                 AND ($5::timestamptz IS NULL OR e.recorded_at >= $5) \
                 AND ($6::timestamptz IS NULL OR e.recorded_at < $6) \
                 ORDER BY l.position LIMIT $7"
            ))
            .await
            .map_err(pg)?;
        let categories = (!filter.categories.is_empty()).then_some(&filter.categories);
        let types = (!filter.event_types.is_empty()).then_some(&filter.event_types);
        let rows = client
            .query(
                &stmt,
                &[
                    &to_i64(after),
                    &categories,
                    &types,
                    &filter.correlation_id,
                    &filter.since,
                    &filter.until,
                    &limit_i64(limit),
                ],
            )
            .await
            .map_err(|e| pg(e).with_context("operation", "read_all"))?;
        rows.iter().map(rows::event).collect()
    }
}

impl PostgresDriver {
    fn log_reader(&self) -> LogReader {
        LogReader {
            pool: self.inner.pool.clone(),
            pool_size: self.inner.config.pool_size,
            shutdown: self.inner.shutdown.subscribe(),
        }
    }

    /// Waits until every one of `ids` in `stream` has a global position.
    ///
    /// Passes are coalesced in-process, like group commit: an appender needs a pass that
    /// *started* after its commit; if one ran while it queued on the gate, a plain lookup
    /// suffices, otherwise it runs the pass itself for everyone queued behind it. Across
    /// processes, passes serialise on the database's sequencer lock.
    async fn await_positions(
        &self,
        stream: &str,
        ids: &[Uuid],
        first: Option<Vec<Option<i64>>>,
    ) -> Result<Vec<u64>> {
        let deadline = Instant::now() + self.inner.config.statement_timeout;
        let mut backoff = Duration::from_micros(200);
        let mut current = first;
        let seq = &self.inner.sequencer;
        loop {
            if let Some(positions) = &current {
                if positions.len() == ids.len() && positions.iter().all(Option::is_some) {
                    return positions
                        .iter()
                        .map(|p| rows::version(p.unwrap_or_default()))
                        .collect();
                }
                // Numbered nothing yet although a pass ran after our commit: an older
                // transaction holds the horizon back. Wait a little before the next pass.
                if Instant::now() >= deadline {
                    return Err(Error::timeout(format!(
                        "the events are stored but had no global position within {} ms: an \
                         older transaction on the server is still running; retrying the append \
                         returns their positions",
                        self.inner.config.statement_timeout.as_millis()
                    ))
                    .with_context("stream", stream)
                    .with_context("backend", BACKEND));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
            let need = seq.started.load(Ordering::Acquire) + 1;
            let gate = seq.gate.lock().await;
            let result = if seq.finished.load(Ordering::Acquire) < need {
                seq.started.fetch_add(1, Ordering::AcqRel);
                let result = self.locate(stream, ids, true).await;
                seq.finished
                    .store(seq.started.load(Ordering::Acquire), Ordering::Release);
                drop(gate);
                result
            } else {
                // A pass that started after our commit has finished: just look (without
                // holding the gate, so lookups run in parallel).
                drop(gate);
                self.locate(stream, ids, false).await
            };
            current = Some(result?);
        }
    }

    /// The positions of `ids` in `stream` (NULL where not numbered yet), after a sequencer
    /// pass when `pass`.
    async fn locate(&self, stream: &str, ids: &[Uuid], pass: bool) -> Result<Vec<Option<i64>>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(if pass { POSITIONS } else { LOOKUP })
            .await
            .map_err(pg)?;
        let row = client
            .query_one(&stmt, &[&stream, &ids])
            .await
            .map_err(|e| pg(e).with_context("stream", stream))?;
        let positions: Option<Vec<Option<i64>>> = row.try_get(0).map_err(pg)?;
        Ok(positions.unwrap_or_default())
    }
}

/// In-process coalescing of sequencer passes (see `await_positions`).
#[derive(Default)]
pub(crate) struct Sequencer {
    gate: tokio::sync::Mutex<()>,
    started: AtomicU64,
    finished: AtomicU64,
}

fn expected_args(expected: ExpectedVersion) -> (i16, Option<i64>) {
    match expected {
        ExpectedVersion::Any => (0, None),
        ExpectedVersion::NoStream => (1, None),
        ExpectedVersion::StreamExists => (2, None),
        ExpectedVersion::Exact(0) => (1, None),
        ExpectedVersion::Exact(v) => (3, Some(to_i64(v))),
    }
}

#[async_trait]
impl EventStore for PostgresDriver {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, &self.inner.config.limits)?;
        for e in &events {
            rows::check_nul(Some(&e.payload), Some(&e.metadata)).map_err(|err| {
                err.with_context("stream", stream)
                    .with_context("event_id", e.id)
            })?;
        }
        let n = events.len();
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
        let metadata: Vec<Value> = events
            .iter()
            .map(|e| Value::Object(e.metadata.clone()))
            .collect();
        let correlation: Vec<Option<&str>> =
            events.iter().map(|e| e.correlation_id.as_deref()).collect();
        let causation: Vec<Option<&str>> =
            events.iter().map(|e| e.causation_id.as_deref()).collect();
        let (kind, version) = expected_args(expected);

        let client = self.client().await?;
        let stage = client.prepare_cached(STAGE).await.map_err(pg)?;
        let stage_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &stream,
            &kind,
            &version,
            &ids,
            &types,
            &payloads,
            &metadata,
            &correlation,
            &causation,
        ];
        let seq = &self.inner.sequencer;
        let (staged, located) = match seq.gate.try_lock() {
            Ok(gate) => {
                // Nobody in this process is numbering: send the stage and the pass together,
                // one network round trip; the server runs the pass right after the stage
                // transaction commits.
                let positions = client.prepare_cached(POSITIONS).await.map_err(pg)?;
                let position_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                    [&stream, &ids];
                seq.started.fetch_add(1, Ordering::AcqRel);
                let (staged, located) = futures::join!(
                    client.query_one(&stage, &stage_params),
                    client
                        .query_one(&positions, &position_params)
                        .map(|r| r.and_then(|row| row.try_get::<_, Option<Vec<Option<i64>>>>(0))),
                );
                seq.finished
                    .store(seq.started.load(Ordering::Acquire), Ordering::Release);
                drop(gate);
                (staged, located)
            }
            Err(_) => (client.query_one(&stage, &stage_params).await, Ok(None)),
        };
        drop(client);
        let staged = staged.map_err(|e| match kernel_state(&e) {
            Some(s) if s.code == "KR004" => {
                expected.conflict(stream, s.current_version().unwrap_or_default())
            }
            _ => pg(e).with_context("stream", stream),
        })?;
        // A failed position pass is not fatal: the events are committed; poll again below.
        let located = match located {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(stream, error = %e, "position lookup after append failed; retrying");
                None
            }
        };
        let written: bool = staged.try_get(0).map_err(pg)?;
        let stream_version = rows::version(staged.try_get(1).map_err(pg)?)?;
        let stream_version = if written {
            stream_version
        } else {
            let stored: Vec<Option<i64>> = staged.try_get(2).map_err(pg)?;
            let by_id: std::collections::HashMap<Uuid, u64> = ids
                .iter()
                .zip(&stored)
                .filter_map(|(id, v)| v.and_then(|v| u64::try_from(v).ok()).map(|v| (*id, v)))
                .collect();
            match check_idempotent(stream, expected, &events, |id| by_id.get(id).copied())? {
                Some(first) => first + n as u64 - 1,
                None => {
                    return Err(Error::internal(
                        "append stage reported stored ids but none matched",
                    )
                    .with_context("stream", stream))
                }
            }
        };
        let positions = self.await_positions(stream, &ids, located).await?;
        Ok(AppendResult {
            stream_version,
            positions,
            written,
        })
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        validate::stream(stream)?;
        if options.limit == Some(0) {
            return Ok(Vec::new());
        }
        let limit = options.limit.map(limit_i64);
        let client = self.client().await?;
        let (sql, from) = match options.direction {
            ReadDirection::Forward => (
                format!(
                    "SELECT {EVENT_COLUMNS} FROM kernel_events e JOIN kernel_event_log l ON l.seq = e.seq \
                     WHERE e.stream = $1 AND e.version >= $2 ORDER BY e.version ASC LIMIT $3"
                ),
                options.from_version.map_or(1, to_i64),
            ),
            ReadDirection::Backward => (
                format!(
                    "SELECT {EVENT_COLUMNS} FROM kernel_events e JOIN kernel_event_log l ON l.seq = e.seq \
                     WHERE e.stream = $1 AND e.version <= $2 ORDER BY e.version DESC LIMIT $3"
                ),
                options.from_version.map_or(i64::MAX, to_i64),
            ),
        };
        let stmt = client.prepare_cached(&sql).await.map_err(pg)?;
        let rows = client
            .query(&stmt, &[&stream, &from, &limit])
            .await
            .map_err(|e| pg(e).with_context("stream", stream))?;
        rows.iter().map(rows::event).collect()
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        filter.validate()?;
        self.log_reader().read(after, filter, limit).await
    }

    async fn head_position(&self) -> Result<u64> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT coalesce(max(position), 0) FROM kernel_event_log")
            .await
            .map_err(pg)?;
        let row = client.query_one(&stmt, &[]).await.map_err(pg)?;
        rows::version(row.try_get(0).map_err(pg)?)
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        filter.validate()?;
        let reader = self.log_reader();
        let config: SubscriptionConfig = self.inner.config.subscription;
        let wake = self.inner.head.subscribe();
        Ok(paged(
            after,
            wake,
            config,
            Box::new(move |after, limit| {
                let reader = reader.clone();
                let filter = filter.clone();
                async move {
                    // After shutdown the pool is closed: the subscription ends cleanly (an
                    // empty page with the closed signal) instead of failing.
                    if *reader.shutdown.borrow() {
                        return Ok(Vec::new());
                    }
                    reader.read(after, &filter, limit).await
                }
                .boxed()
            }),
        ))
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        validate::stream(stream)?;
        validate::value(&state, &self.inner.config.limits)
            .and_then(|()| rows::check_nul(Some(&state), None))
            .map_err(|e| e.with_context("stream", stream))?;
        let client = self.client().await?;
        // One statement: the version check against the stream and the upsert that keeps the
        // highest version.
        let stmt = client
            .prepare_cached(
                "WITH cur AS (SELECT coalesce((SELECT max(e.version) FROM kernel_events e WHERE e.stream = $1::text), 0) AS v), \
                 ins AS (INSERT INTO kernel_snapshots AS k (stream, version, state, created_at) \
                   SELECT $1::text, $2::bigint, $3::jsonb, clock_timestamp() FROM cur WHERE $2::bigint BETWEEN 1 AND cur.v \
                   ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, \
                     created_at = EXCLUDED.created_at WHERE k.version <= EXCLUDED.version \
                   RETURNING 1) \
                 SELECT cur.v FROM cur",
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_one(&stmt, &[&stream, &to_i64(version), &state])
            .await
            .map_err(|e| pg(e).with_context("stream", stream))?;
        let current = rows::version(row.try_get(0).map_err(pg)?)?;
        if version == 0 || version > current {
            return Err(Error::invalid_input(format!(
                "snapshot version {version} is outside the stream's versions 1..={current}"
            ))
            .with_context("stream", stream));
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::stream(stream)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT version, state, created_at FROM kernel_snapshots WHERE stream = $1",
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&stream])
            .await
            .map_err(|e| pg(e).with_context("stream", stream))?;
        row.map(|r| {
            Ok(Snapshot {
                stream: stream.to_owned(),
                version: rows::version(r.try_get(0).map_err(pg)?)?,
                state: r.try_get(1).map_err(pg)?,
                created_at: r.try_get(2).map_err(pg)?,
            })
        })
        .transpose()
    }
}
