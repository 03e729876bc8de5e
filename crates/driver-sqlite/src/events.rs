//! Events: `kernel_events` with the global position as its rowid. An append is one writer job:
//! it reads the stream's version and the stored ids, applies the shared idempotency rule, and
//! numbers the new events after the log's last position, all under SQLite's write lock, so
//! positions are gapless and become visible in order — in this process and in every other one
//! that writes the same file.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use kernel_core::event::{
    check_idempotent, check_same_content, validate_append, validate_snapshot_version,
};
use kernel_core::subscription::{self, PageReader};
use kernel_core::validate;
use kernel_core::{
    AppendResult, EventFilter, EventStore, EventSubscription, ExpectedVersion, Metadata, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Result, Snapshot, Uuid, Value,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::error::{Db, corrupted};
use crate::generation::Generation;
use crate::{
    Inner, SqliteDriver, from_micros, from_sql_int, sql_int, sql_limit, to_micros_ceil,
    unix_micros_now,
};

const COLS: &str = "position, stream, version, id, event_type, payload, metadata, \
                    correlation_id, causation_id, recorded_at";

fn decode(row: &Row<'_>) -> Result<RecordedEvent> {
    let position = from_sql_int(row.get(0).db()?, "event position")?;
    let stream: String = row.get(1).db()?;
    let ctx = |e: kernel_core::Error| {
        e.with_context("stream", &stream)
            .with_context("position", position)
    };
    let version = from_sql_int(row.get(2).db()?, "event version").map_err(ctx)?;
    let id = Uuid::from_slice(row.get_ref(3).db()?.as_blob().db()?)
        .map_err(|e| ctx(corrupted("event id", e)))?;
    let event_type: String = row.get(4).db()?;
    let payload: Value = serde_json::from_str(row.get_ref(5).db()?.as_str().db()?)
        .map_err(|e| ctx(corrupted("event payload", e)))?;
    let metadata: Metadata = serde_json::from_str(row.get_ref(6).db()?.as_str().db()?)
        .map_err(|e| ctx(corrupted("event metadata", e)))?;
    Ok(RecordedEvent {
        id,
        stream,
        version,
        position,
        event_type,
        payload,
        metadata,
        correlation_id: row.get(7).db()?,
        causation_id: row.get(8).db()?,
        recorded_at: from_micros(row.get(9).db()?),
    })
}

/// Remembers the highest position among `positions` as seen (see [`Generation`]).
fn note_positions(generation: &Generation, positions: impl Iterator<Item = u64>) {
    if let Some(p) = positions.max() {
        generation.note_seen(p);
    }
}

fn note_events(generation: &Generation, events: &[RecordedEvent]) {
    note_positions(generation, events.iter().map(|e| e.position));
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

fn stream_version(conn: &Connection, stream: &str) -> Result<u64> {
    let v: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM kernel_events WHERE stream = ?1")
        .db()?
        .query_row([stream], |r| r.get(0))
        .db()?;
    from_sql_int(v, "stream version")
}

/// Events with position `> after` matching `filter`, ascending, at most `limit`; the filter is
/// translated to SQL (categories and types as `IN` lists, the time range on microseconds).
fn read_after(
    conn: &Connection,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut sql = format!("SELECT {COLS} FROM kernel_events WHERE position > ?1");
    let mut args: Vec<SqlValue> = vec![SqlValue::Integer(sql_int(after))];
    let mut in_list = |sql: &mut String, column: &str, values: &[String]| {
        if values.is_empty() {
            return;
        }
        let mut marks = Vec::with_capacity(values.len());
        for v in values {
            args.push(SqlValue::Text(v.clone()));
            marks.push(format!("?{}", args.len()));
        }
        sql.push_str(&format!(" AND {column} IN ({})", marks.join(", ")));
    };
    in_list(&mut sql, "category", &filter.categories);
    in_list(&mut sql, "event_type", &filter.event_types);
    if let Some(c) = &filter.correlation_id {
        args.push(SqlValue::Text(c.clone()));
        sql.push_str(&format!(" AND correlation_id = ?{}", args.len()));
    }
    if let Some(since) = filter.since {
        args.push(SqlValue::Integer(to_micros_ceil(since)));
        sql.push_str(&format!(" AND recorded_at >= ?{}", args.len()));
    }
    if let Some(until) = filter.until {
        args.push(SqlValue::Integer(to_micros_ceil(until)));
        sql.push_str(&format!(" AND recorded_at < ?{}", args.len()));
    }
    args.push(SqlValue::Integer(sql_limit(Some(limit))));
    sql.push_str(&format!(" ORDER BY position LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql).db()?;
    let rows = stmt.query(params_from_iter(args)).db()?;
    collect(rows)
}

/// The stream's events at versions `first..first + n`, in order.
fn read_versions(
    conn: &Connection,
    stream: &str,
    first: u64,
    n: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM kernel_events WHERE stream = ?1 AND version >= ?2
             ORDER BY version LIMIT ?3"
        ))
        .db()?;
    let rows = stmt
        .query(params![stream, sql_int(first), sql_limit(Some(n))])
        .db()?;
    collect(rows)
}

fn append_job(
    ctx: &mut crate::writer::WriteCtx<'_>,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult> {
    let conn = ctx.conn;
    let current = stream_version(conn, stream)?;
    let mut stored: HashMap<Uuid, u64> = HashMap::new();
    if current > 0 {
        let mut stmt = conn
            .prepare_cached("SELECT version FROM kernel_events WHERE stream = ?1 AND id = ?2")
            .db()?;
        for e in &events {
            let v: Option<i64> = stmt
                .query_row(params![stream, e.id.as_bytes().as_slice()], |r| r.get(0))
                .optional()
                .db()?;
            if let Some(v) = v {
                stored.insert(e.id, from_sql_int(v, "event version")?);
            }
        }
    }
    if let Some(first) = check_idempotent(stream, expected, &events, |id| stored.get(id).copied())?
    {
        let records = read_versions(conn, stream, first, events.len())?;
        check_same_content(stream, &events, &records)?;
        return Ok(AppendResult {
            stream_version: first + events.len() as u64 - 1,
            positions: records.iter().map(|r| r.position).collect(),
            written: false,
        });
    }
    if !expected.admits(current) {
        return Err(expected.conflict(stream, current));
    }
    let head: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM kernel_events")
        .db()?
        .query_row([], |r| r.get(0))
        .db()?;
    let head = from_sql_int(head, "event position")?;
    let now = unix_micros_now();
    let category = validate::category_of(stream);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO kernel_events (position, stream, category, version, id, event_type,
                 payload, metadata, correlation_id, causation_id, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .db()?;
    let mut positions = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let position = head + 1 + i as u64;
        let payload = serde_json::to_string(&e.payload)
            .map_err(|err| kernel_core::Error::invalid_input(format!("payload: {err}")))?;
        let metadata = serde_json::to_string(&e.metadata)
            .map_err(|err| kernel_core::Error::invalid_input(format!("metadata: {err}")))?;
        insert
            .execute(params![
                sql_int(position),
                stream,
                category,
                sql_int(current + 1 + i as u64),
                e.id.as_bytes().as_slice(),
                e.event_type,
                payload,
                metadata,
                e.correlation_id,
                e.causation_id,
                // An import keeps the event's original time (validated, so in range).
                e.recorded_at.map_or(now, crate::to_micros),
            ])
            .db()?;
        positions.push(position);
    }
    ctx.head = Some(head + events.len() as u64);
    Ok(AppendResult {
        stream_version: current + events.len() as u64,
        positions,
        written: true,
    })
}

#[async_trait]
impl EventStore for SqliteDriver {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, self.inner().limits())?;
        let generation = self.inner().generation.clone();
        generation
            .refuse_if_lost("append")
            .map_err(|e| e.with_context("stream", stream))?;
        let s = stream.to_owned();
        let checked = generation.clone();
        let result = self
            .inner()
            .write("append", move |ctx| {
                // Every append, in its own transaction: positions are never numbered on top of
                // a log that lost its tail.
                checked.check(ctx.conn, "append", true)?;
                append_job(ctx, &s, expected, events)
            })
            .await
            .map_err(|e| e.with_context("stream", stream))?;
        note_positions(&generation, result.positions.iter().copied());
        Ok(result)
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        validate::stream(stream)?;
        let s = stream.to_owned();
        self.inner()
            .read("read_stream", move |conn| {
                let limit = sql_limit(options.limit);
                let (sql, from) = match options.direction {
                    ReadDirection::Forward => (
                        format!(
                            "SELECT {COLS} FROM kernel_events WHERE stream = ?1 AND version >= ?2
                             ORDER BY version ASC LIMIT ?3"
                        ),
                        options.from_version.unwrap_or(1),
                    ),
                    ReadDirection::Backward => (
                        format!(
                            "SELECT {COLS} FROM kernel_events WHERE stream = ?1 AND version <= ?2
                             ORDER BY version DESC LIMIT ?3"
                        ),
                        options.from_version.unwrap_or(u64::MAX),
                    ),
                };
                let mut stmt = conn.prepare_cached(&sql).db()?;
                let rows = stmt.query(params![s, sql_int(from), limit]).db()?;
                collect(rows)
            })
            .await
            .map_err(|e| e.with_context("stream", stream))
            .inspect(|events| note_events(&self.inner().generation, events))
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        filter.validate()?;
        let filter = filter.clone();
        self.inner()
            .read("read_all", move |conn| {
                read_after(conn, after, &filter, limit)
            })
            .await
            .inspect(|events| note_events(&self.inner().generation, events))
    }

    async fn head_position(&self) -> Result<u64> {
        self.inner()
            .read("head_position", |conn| {
                let p: i64 = conn
                    .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM kernel_events")
                    .db()?
                    .query_row([], |r| r.get(0))
                    .db()?;
                from_sql_int(p, "event position")
            })
            .await
            .inspect(|head| self.inner().generation.note_seen(*head))
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        filter.validate()?;
        self.inner().generation.refuse_if_lost("subscribe")?;
        let inner = Arc::downgrade(&self.inner);
        let filter = Arc::new(filter);
        let wake = self.inner.head.subscribe();
        // The reader holds the driver weakly: a subscription does not keep a dropped driver's
        // connections open; once the driver is gone the stream ends after its buffer.
        let read: PageReader = Box::new(move |after, limit| {
            let inner = inner.clone();
            let filter = filter.clone();
            async move {
                let Some(inner): Option<Arc<Inner>> = inner.upgrade() else {
                    return Ok(Vec::new());
                };
                if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return Ok(Vec::new());
                }
                let generation = inner.generation.clone();
                let checked = generation.clone();
                inner
                    .read("subscribe", move |conn| {
                        // After a loss positions start over: end the subscription saying so
                        // instead of letting it wait for positions that will never come.
                        checked.check(conn, "subscribe", false)?;
                        read_after(conn, after, &filter, limit)
                    })
                    .await
                    .inspect(|events| note_events(&generation, events))
            }
            .boxed()
        });
        Ok(subscription::paged(
            after,
            wake,
            self.inner.subscription,
            read,
        ))
    }

    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()> {
        validate::stream(stream)?;
        validate::value(&state, self.inner().limits())
            .map_err(|e| e.with_context("stream", stream))?;
        let s = stream.to_owned();
        let text = serde_json::to_string(&state)
            .map_err(|e| kernel_core::Error::invalid_input(format!("snapshot state: {e}")))?;
        self.inner()
            .write("save_snapshot", move |ctx| {
                let current = stream_version(ctx.conn, &s)?;
                validate_snapshot_version(&s, version, current)?;
                ctx.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO kernel_snapshots (stream, version, state, created_at)
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .db()?
                    .execute(params![s, sql_int(version), text, unix_micros_now()])
                    .db()?;
                Ok(())
            })
            .await
            .map_err(|e| e.with_context("stream", stream))
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::stream(stream)?;
        let s = stream.to_owned();
        self.inner()
            .read("load_snapshot", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT version, state, created_at FROM kernel_snapshots
                         WHERE stream = ?1 ORDER BY version DESC LIMIT 1",
                    )
                    .db()?;
                let mut rows = stmt.query([&s]).db()?;
                let Some(row) = rows.next().db()? else {
                    return Ok(None);
                };
                let version = from_sql_int(row.get(0).db()?, "snapshot version")?;
                let state: Value = serde_json::from_str(row.get_ref(1).db()?.as_str().db()?)
                    .map_err(|e| corrupted("snapshot state", e))?;
                Ok(Some(Snapshot {
                    stream: s.clone(),
                    version,
                    state,
                    created_at: from_micros(row.get(2).db()?),
                }))
            })
            .await
            .map_err(|e| e.with_context("stream", stream))
    }
}
