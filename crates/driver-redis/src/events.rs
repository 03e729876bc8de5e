//! `EventStore` on Redis: a global log hash keyed by a gapless position counter, one list of
//! positions and one id index per stream, all written by one append script; subscriptions pull
//! pages from the log and wake on a pub/sub notification the script publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::Value as RedisValue;
use futures::FutureExt;
use kernel_core::event::{
    check_idempotent, check_same_content, validate_append, validate_snapshot_version,
};
use kernel_core::subscription::{self, PageReader};
use kernel_core::validate;
use kernel_core::{
    AppendResult, Error, EventFilter, EventStore, EventSubscription, ExpectedVersion, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Result, Snapshot, Uuid, Value,
};

use crate::RedisDriver;
use crate::codec::{EventBodyRef, Reply, decode_event, decode_snapshot, to_json};
use crate::error::map_err;

/// Positions read per `HMGET` when walking the global log.
const LOG_BATCH: u64 = 256;
/// Positions the first `HMGET` of a log walk asks for at least (see `read_log`).
const FIRST_BATCH: u64 = 16;

impl RedisDriver {
    /// Events after `after` matching `filter`, at most `limit`, and the last position examined
    /// (so a filtered subscription does not re-examine the same non-matching events).
    async fn read_log(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, u64)> {
        self.ensure_open("read_all")?;
        let mut out = Vec::new();
        let mut at = after;
        if limit == 0 {
            return Ok((out, at));
        }
        let log = self.inner.keys.log();
        let unfiltered = *filter == EventFilter::default();
        // The newest head a notification announced: when it is past `after`, the first HMGET
        // asks for the positions up to it (at least FIRST_BATCH, as more may have landed
        // since) instead of a whole batch of mostly missing ones, the usual case of a
        // subscription woken for one event. A full batch reads on, so an under-estimate costs
        // a round trip, never an event. Without such a hint (no subscription on this driver,
        // a poll) the first batch is what the caller wants, as before.
        let announced = self.inner.head.borrow().position;
        let mut first_batch = if announced > after {
            (announced - after).clamp(FIRST_BATCH, LOG_BATCH)
        } else {
            LOG_BATCH
        };
        loop {
            let want = if unfiltered {
                (limit - out.len()) as u64
            } else {
                LOG_BATCH
            };
            let count = want.clamp(1, LOG_BATCH).min(first_batch);
            first_batch = LOG_BATCH;
            let Some(first) = at.checked_add(1) else {
                return Ok((out, at));
            };
            let fields: Vec<String> = (first..first.saturating_add(count))
                .map(|p| p.to_string())
                .collect();
            let values: RedisValue = self
                .inner
                .pool
                .hmget(log.as_str(), fields)
                .await
                .map_err(|e| map_err(e, "read_all"))?;
            let mut reply = Reply::new(values, "read_all");
            while reply.remaining() > 0 {
                // Positions are gapless and written in one script with the head, so the first
                // missing position is the end of the log.
                let Some(raw) = reply.opt_bytes()? else {
                    return Ok((out, at));
                };
                let event = decode_event(&raw)?;
                if event.position != at + 1 {
                    return Err(Error::corrupted(format!(
                        "the log holds position {} where {} belongs",
                        event.position,
                        at + 1
                    ))
                    .with_context("backend", "redis"));
                }
                at = event.position;
                if filter.matches(&event) {
                    out.push(event);
                    if out.len() >= limit {
                        return Ok((out, at));
                    }
                }
            }
        }
    }

    async fn append_script(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult> {
        let keys = self.inner.keys.stream(stream);
        let (kind, version) = match expected {
            ExpectedVersion::Any => ("any", String::new()),
            ExpectedVersion::NoStream => ("none", String::new()),
            ExpectedVersion::StreamExists => ("exists", String::new()),
            ExpectedVersion::Exact(0) => ("none", String::new()),
            ExpectedVersion::Exact(v) => ("exact", v.to_string()),
        };
        let mut args: Vec<RedisValue> = Vec::with_capacity(5 + events.len() * 3);
        args.push(self.inner.keys.notify_channel().into());
        args.push(kind.into());
        args.push(version.into());
        args.push((events.len() as i64).into());
        for e in events {
            let body = EventBodyRef {
                id: &e.id,
                stream,
                event_type: &e.event_type,
                payload: &e.payload,
                metadata: &e.metadata,
                correlation_id: e.correlation_id.as_deref(),
                causation_id: e.causation_id.as_deref(),
            };
            args.push(e.id.to_string().into());
            args.push(to_json(&body)?.into());
            // An import's original time, at the stored precision (microseconds).
            let recorded = e
                .recorded_at
                .map(|t| crate::codec::micros(t.duration_since(UNIX_EPOCH).unwrap_or_default()));
            args.push(
                recorded
                    .map_or_else(String::new, |us| us.to_string())
                    .into(),
            );
        }
        args.push(self.expected_generation().into());
        let reply = self
            .run(
                &self.inner.scripts.append,
                "append",
                vec![
                    keys.head,
                    keys.log,
                    keys.positions,
                    keys.ids,
                    self.inner.keys.generation(),
                ],
                args,
            )
            .await
            .map_err(|e| self.note_loss(e, "append").with_context("stream", stream))?;
        let mut reply = Reply::new(reply, "append");
        match reply.string()?.as_str() {
            "ok" => {
                let _recorded = reply.u64()?;
                let before = reply.u64()?;
                let mut positions = Vec::with_capacity(events.len());
                for _ in events {
                    positions.push(reply.u64()?);
                }
                Ok(AppendResult {
                    stream_version: before + events.len() as u64,
                    positions,
                    written: true,
                })
            }
            "conflict" => {
                let current = reply.u64()?;
                Err(expected.conflict(stream, current))
            }
            "seen" => {
                let _current = reply.u64()?;
                let mut stored = std::collections::HashMap::with_capacity(events.len());
                for e in events {
                    let version = reply.opt_u64()?;
                    let position = reply.opt_u64()?;
                    if let (Some(v), Some(p)) = (version, position) {
                        stored.insert(e.id, (v, p));
                    }
                }
                let lookup = |id: &Uuid| stored.get(id).map(|(v, _)| *v);
                match check_idempotent(stream, expected, events, lookup)? {
                    Some(first) => {
                        let positions = events
                            .iter()
                            .map(|e| stored.get(&e.id).map(|(_, p)| *p))
                            .collect::<Option<Vec<u64>>>()
                            .ok_or_else(|| {
                                crate::error::bad_reply(
                                    "append",
                                    "an idempotent event has no position",
                                )
                            })?;
                        // Only on a retry: read back what is stored under the ids and compare.
                        let stored_events = self
                            .read_stream(
                                stream,
                                ReadStream::forward().from(first).limit(events.len()),
                            )
                            .await?;
                        check_same_content(stream, events, &stored_events)?;
                        Ok(AppendResult {
                            stream_version: first + events.len() as u64 - 1,
                            positions,
                            written: false,
                        })
                    }
                    None => Err(crate::error::bad_reply(
                        "append",
                        "the script reported stored ids the idempotency check did not find",
                    )),
                }
            }
            other => Err(crate::error::bad_reply(
                "append",
                format!("unknown status {other:?}"),
            )),
        }
    }
}

#[async_trait]
impl EventStore for RedisDriver {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, &self.inner.config.limits)?;
        self.append_script(stream, expected, &events).await
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        validate::stream(stream)?;
        let keys = self.inner.keys.stream(stream);
        let args = vec![
            RedisValue::from(match options.direction {
                ReadDirection::Forward => "f",
                ReadDirection::Backward => "b",
            }),
            options
                .from_version
                .map(|v| v.to_string())
                .unwrap_or_default()
                .into(),
            options
                .limit
                .map(|l| l.to_string())
                .unwrap_or_default()
                .into(),
        ];
        let reply = self
            .run(
                &self.inner.scripts.read_stream,
                "read_stream",
                vec![keys.positions, keys.log],
                args,
            )
            .await
            .map_err(|e| e.with_context("stream", stream))?;
        let mut reply = Reply::new(reply, "read_stream");
        let mut events = Vec::with_capacity(reply.remaining());
        while reply.remaining() > 0 {
            events
                .push(decode_event(&reply.bytes()?).map_err(|e| e.with_context("stream", stream))?);
        }
        if options.direction == ReadDirection::Backward {
            events.reverse();
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
        Ok(self.read_log(after, filter, limit).await?.0)
    }

    async fn head_position(&self) -> Result<u64> {
        self.ensure_open("head_position")?;
        let head: Option<u64> = self
            .inner
            .pool
            .get(self.inner.keys.head())
            .await
            .map_err(|e| map_err(e, "head_position"))?;
        Ok(head.unwrap_or(0))
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        filter.validate()?;
        self.ensure_open("subscribe")?;
        self.ensure_notifier().await?;
        let wake = self.inner.head.subscribe();
        let driver = Arc::downgrade(&self.inner);
        let filter = Arc::new(filter);
        // Highest position already examined: with a narrow filter the reader resumes past the
        // non-matching events it has seen instead of re-reading them on every wake-up.
        let examined = Arc::new(AtomicU64::new(after));
        let read: PageReader = Box::new(move |after, limit| {
            let driver = driver.clone();
            let filter = filter.clone();
            let examined = examined.clone();
            async move {
                // Once the driver is gone the stream ends after its buffer.
                let Some(inner) = driver.upgrade() else {
                    return Ok(Vec::new());
                };
                let driver = RedisDriver { inner };
                // After a data loss positions start over: end the subscription saying so
                // instead of waiting for positions that will never come.
                driver.verify_generation("subscribe", false).await?;
                let start = after.max(examined.load(Ordering::SeqCst));
                let (events, last) = driver.read_log(start, &filter, limit).await?;
                examined.store(last, Ordering::SeqCst);
                Ok(events)
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
        validate::value(&state, &self.inner.config.limits)
            .map_err(|e| e.with_context("stream", stream))?;
        if version == 0 {
            return validate_snapshot_version(stream, version, 0);
        }
        let keys = self.inner.keys.stream(stream);
        let reply = self
            .run(
                &self.inner.scripts.snapshot_save,
                "save_snapshot",
                vec![keys.positions, keys.snapshot],
                vec![version.to_string().into(), to_json(&state)?.into()],
            )
            .await
            .map_err(|e| e.with_context("stream", stream))?;
        let mut reply = Reply::new(reply, "save_snapshot");
        match reply.string()?.as_str() {
            "ok" => Ok(()),
            "range" => validate_snapshot_version(stream, version, reply.u64()?),
            other => Err(crate::error::bad_reply(
                "save_snapshot",
                format!("unknown status {other:?}"),
            )),
        }
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::stream(stream)?;
        self.ensure_open("load_snapshot")?;
        let keys = self.inner.keys.stream(stream);
        let raw: Option<Vec<u8>> = self
            .inner
            .pool
            .get(keys.snapshot)
            .await
            .map_err(|e| map_err(e, "load_snapshot").with_context("stream", stream))?;
        raw.map(|raw| decode_snapshot(stream, &raw)).transpose()
    }
}
