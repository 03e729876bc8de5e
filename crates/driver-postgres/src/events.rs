//! `EventStore` on `kernel_events`, `kernel_event_log` and friends.
//!
//! An append goes to the driver's writer task (`crate::writer`), which writes it, together with
//! the appends that arrived meanwhile, in one `kernel_append_batch` transaction (stream lock,
//! idempotency, expected version, insert without position); then the appender waits for the
//! sequencing task (`crate::sequencer`) to hand back the positions a shared pass gave them.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures::FutureExt;
use kernel_core::event::{
    check_idempotent, check_same_content, validate_append, validate_snapshot_version,
};
use kernel_core::subscription::{SubscriptionConfig, paged};
use kernel_core::validate;
use kernel_core::{
    AppendResult, Error, EventFilter, EventStore, EventSubscription, ExpectedVersion, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Result, Snapshot, Uuid, Value,
};

use crate::PostgresDriver;
use crate::codes::ExpectedKind;
use crate::error::{self, pg};
use crate::generation::Generation;
use crate::jsonb::Jsonb;
use crate::rows::{self, EVENT_COLUMNS, limit_i64, to_i64};
use crate::statement::Statements;
use crate::writer::{AppendRequest, Staged};

// The log and the events meet one primary-key probe per row (LATERAL with LIMIT 1 keeps the
// planner from turning them into a hash join): a plan made while the tables were small, and
// cached by the session, must not become a full scan of either as they grow.
const LOG_TO_EVENT: &str =
    "CROSS JOIN LATERAL (SELECT * FROM kernel_events e WHERE e.seq = l.seq LIMIT 1) e";
const EVENT_TO_LOG: &str = "CROSS JOIN LATERAL \
     (SELECT l.position FROM kernel_event_log l WHERE l.seq = e.seq LIMIT 1) l";

/// Reads the global log: what `read_all` and subscriptions run.
#[derive(Clone)]
pub(crate) struct LogReader {
    pool: Pool,
    pool_size: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
    generation: Arc<Generation>,
    /// With row-level security: the tenant of the call that made this reader (a subscription
    /// reads long after the call returned).
    tenant: Option<Option<Arc<str>>>,
    /// Prepared and cached, or unnamed (transaction pooler).
    statements: Statements,
}

impl LogReader {
    /// Reads a page of the log; `guard` names the operation (a subscription) that must first
    /// pass the data-loss check.
    pub(crate) async fn read(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        guard: Option<&'static str>,
    ) -> Result<Vec<RecordedEvent>> {
        let due = match guard {
            Some(operation) => self.generation.due(operation, false)?,
            None => false,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| error::pool(e, self.pool_size))?;
        if let Some(tenant) = &self.tenant {
            crate::tenancy::enter(&client, tenant.as_deref()).await?;
        }
        if let (true, Some(operation)) = (due, guard) {
            self.generation.verify(&client, operation).await?;
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM kernel_event_log l {LOG_TO_EVENT} \
                 WHERE l.position > $1 \
                 AND ($2::text[] IS NULL OR e.category = ANY ($2)) \
                 AND ($3::text[] IS NULL OR e.event_type = ANY ($3)) \
                 AND ($4::text IS NULL OR e.correlation_id = $4) \
                 AND ($5::timestamptz IS NULL OR e.recorded_at >= $5) \
                 AND ($6::timestamptz IS NULL OR e.recorded_at < $6) \
                 ORDER BY l.position LIMIT $7"
        );
        let categories = (!filter.categories.is_empty()).then_some(&filter.categories);
        let types = (!filter.event_types.is_empty()).then_some(&filter.event_types);
        let rows = self
            .statements
            .query(
                &client,
                &sql,
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
            .map_err(|e| pg(e).with_operation("read_all"))?;
        let events = rows.iter().map(rows::event).collect::<Result<Vec<_>>>()?;
        if let Some(last) = events.last() {
            self.generation.saw(last.position);
        }
        Ok(events)
    }
}

impl PostgresDriver {
    /// Remembers the highest of `positions` for the data-loss check, and wakes this driver's
    /// subscriptions: they need not wait for the pass's `NOTIFY kernel_events` to come back
    /// through the listener's connection. A subscription woken before the pass's commit is
    /// visible reads nothing new and waits for the notification as before.
    fn note_positions(&self, positions: &[u64]) {
        if let Some(&max) = positions.iter().max() {
            self.inner.generation.saw(max);
            self.inner.head.send_if_modified(|h| {
                let newer = max > h.position;
                if newer {
                    h.position = max;
                }
                newer
            });
        }
    }

    fn log_reader(&self) -> LogReader {
        LogReader {
            pool: self.inner.pool.clone(),
            pool_size: self.inner.config.pool_size,
            shutdown: self.inner.shutdown.subscribe(),
            generation: self.inner.generation.clone(),
            statements: self.statements(),
            tenant: self.rls().then(kernel_core::tenancy::current),
        }
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
        self.guard(None, "append")
            .await
            .map_err(|e| e.with_context("stream", stream))?;
        let n = events.len();
        let (kind, version) = ExpectedKind::of(expected);
        let events = Arc::new(events);
        let staged = self
            .inner
            .writer
            .stage(AppendRequest {
                stream: stream.to_owned(),
                kind,
                expected: version,
                events: events.clone(),
                tenant: self.rls().then(kernel_core::tenancy::current).flatten(),
            })
            .await
            .map_err(|e| e.with_context("stream", stream))?;
        let (stream_version, seqs, written) = match staged {
            Staged::Written {
                stream_version,
                positions: Some(positions),
                ..
            } if positions.len() == n => {
                let positions: Vec<u64> = positions
                    .into_iter()
                    .map(rows::version)
                    .collect::<Result<_>>()?;
                self.note_positions(&positions);
                return Ok(AppendResult {
                    stream_version: rows::version(stream_version)?,
                    positions,
                    written: true,
                });
            }
            Staged::Written {
                stream_version,
                seqs,
                ..
            } => (rows::version(stream_version)?, seqs, true),
            Staged::Busy => {
                return Err(Error::internal("the append writer returned a busy append")
                    .with_context("stream", stream));
            }
            Staged::Mismatch { current } => {
                return Err(expected.conflict(stream, rows::version(current)?));
            }
            Staged::Stored { stored, seqs } => {
                let by_id: HashMap<Uuid, u64> = events
                    .iter()
                    .zip(&stored)
                    .filter_map(|(e, v)| v.and_then(|v| u64::try_from(v).ok()).map(|v| (e.id, v)))
                    .collect();
                match check_idempotent(stream, expected, &events, |id| by_id.get(id).copied())? {
                    Some(first) => (first + n as u64 - 1, seqs, false),
                    None => {
                        return Err(Error::internal(
                            "the append found stored ids but none matched",
                        )
                        .with_context("stream", stream));
                    }
                }
            }
        };
        // After a fresh append or an idempotent retry every event is stored: each has a seq.
        let seqs: Vec<i64> = seqs
            .into_iter()
            .collect::<Option<Vec<i64>>>()
            .filter(|seqs| seqs.len() == n)
            .ok_or_else(|| {
                Error::internal("the append did not get back a seq for every event")
                    .with_context("stream", stream)
            })?;
        let positions = self
            .inner
            .sequencer
            .positions(stream, seqs, self.inner.config.statement_timeout)
            .await?;
        if !written {
            // Only on a retry: read back what is stored under the ids and compare.
            let first = stream_version + 1 - n as u64;
            let stored = self
                .read_stream(stream, ReadStream::forward().from(first).limit(n))
                .await?;
            check_same_content(stream, &events, &stored)?;
        }
        self.note_positions(&positions);
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
                    "SELECT {EVENT_COLUMNS} FROM kernel_events e {EVENT_TO_LOG} \
                     WHERE e.stream = $1 AND e.version >= $2 ORDER BY e.version ASC LIMIT $3"
                ),
                options.from_version.map_or(1, to_i64),
            ),
            ReadDirection::Backward => (
                format!(
                    "SELECT {EVENT_COLUMNS} FROM kernel_events e {EVENT_TO_LOG} \
                     WHERE e.stream = $1 AND e.version <= $2 ORDER BY e.version DESC LIMIT $3"
                ),
                options.from_version.map_or(i64::MAX, to_i64),
            ),
        };
        let rows = self
            .statements()
            .query(&client, &sql, &[&stream, &from, &limit])
            .await
            .map_err(|e| pg(e).with_context("stream", stream))?;
        let events = rows.iter().map(rows::event).collect::<Result<Vec<_>>>()?;
        if let Some(max) = events.iter().map(|e| e.position).max() {
            self.inner.generation.saw(max);
        }
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        filter.validate()?;
        self.log_reader().read(after, filter, limit, None).await
    }

    async fn head_position(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = self.statements()
        .query_one(&client, "SELECT coalesce((SELECT position FROM kernel_event_log ORDER BY position DESC LIMIT 1), 0)", &[]).await.map_err(pg)?;
        let head = rows::version(row.try_get(0).map_err(pg)?)?;
        self.inner.generation.saw(head);
        Ok(head)
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
                    // After a data loss positions may start over: end the subscription saying
                    // so instead of waiting for positions that will never come.
                    reader.read(after, &filter, limit, Some("subscribe")).await
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
        let row = self.statements()
        .query_one(&client, "WITH cur AS (SELECT coalesce((SELECT e.version FROM kernel_events e WHERE e.stream = $1::text ORDER BY e.version DESC LIMIT 1), 0) AS v), \
                 ins AS (INSERT INTO kernel_snapshots AS k (stream, version, state, created_at) \
                   SELECT $1::text, $2::bigint, $3::jsonb, clock_timestamp() FROM cur WHERE $2::bigint BETWEEN 1 AND cur.v \
                   ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, \
                     created_at = EXCLUDED.created_at WHERE k.version <= EXCLUDED.version \
                   RETURNING 1) \
                 SELECT cur.v FROM cur", &[&stream, &to_i64(version), &Jsonb(&state)])
            .await
            .map_err(|e| error::pg_write(e).with_context("stream", stream))?;
        let current = rows::version(row.try_get(0).map_err(pg)?)?;
        validate_snapshot_version(stream, version, current)
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::stream(stream)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_opt(
                &client,
                "SELECT version, state, created_at FROM kernel_snapshots WHERE stream = $1",
                &[&stream],
            )
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
