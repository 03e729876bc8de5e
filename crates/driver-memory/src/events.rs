//! Events: one global log (position = index + 1) and a per-stream index, behind one mutex, so
//! appends are atomic and positions are gapless by construction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::FutureExt;
use kernel_core::event::{
    check_idempotent, check_same_content, validate_append, validate_snapshot_version,
};
use kernel_core::subscription::{self, HeadSignal};
use kernel_core::validate;
use kernel_core::{
    AppendResult, EventFilter, EventStore, EventSubscription, ExpectedVersion, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Result, Snapshot, Uuid, Value,
};

use crate::{Inner, MemoryDriver};

#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// Every event; the event at index `i` has position `i + 1`.
    log: Vec<RecordedEvent>,
    streams: HashMap<String, StreamIndex>,
    snapshots: HashMap<String, BTreeMap<u64, Snapshot>>,
}

#[derive(Debug, Default)]
struct StreamIndex {
    /// Positions of the stream's events; version `v` is at index `v - 1`.
    positions: Vec<u64>,
    ids: HashMap<Uuid, u64>,
}

impl EventLog {
    fn stream_version(&self, stream: &str) -> u64 {
        self.streams
            .get(stream)
            .map_or(0, |s| s.positions.len() as u64)
    }

    fn read_after(&self, after: u64, filter: &EventFilter, limit: usize) -> Vec<RecordedEvent> {
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        self.log[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }
}

impl Inner {
    fn read_after(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self.events()?.read_after(after, filter, limit))
    }
}

#[async_trait]
impl EventStore for MemoryDriver {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        validate_append(stream, &events, &self.inner.limits)?;
        let mut log = self.inner.events()?;
        let index = log.streams.get(stream);
        let current = index.map_or(0, |s| s.positions.len() as u64);
        let stored = |id: &Uuid| index.and_then(|s| s.ids.get(id).copied());
        if let Some(first) = check_idempotent(stream, expected, &events, stored)? {
            let positions: Vec<u64> = index
                .map(|s| {
                    (first..first + events.len() as u64)
                        .filter_map(|v| s.positions.get((v - 1) as usize).copied())
                        .collect()
                })
                .unwrap_or_default();
            let records: Vec<RecordedEvent> = positions
                .iter()
                .filter_map(|p| log.log.get((p - 1) as usize).cloned())
                .collect();
            check_same_content(stream, &events, &records)?;
            return Ok(AppendResult {
                stream_version: first + events.len() as u64 - 1,
                positions,
                written: false,
            });
        }
        if !expected.admits(current) {
            return Err(expected.conflict(stream, current));
        }
        let now = SystemTime::now();
        let mut positions = Vec::with_capacity(events.len());
        let mut recorded = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let position = log.log.len() as u64 + 1 + i as u64;
            positions.push(position);
            recorded.push(RecordedEvent {
                id: e.id,
                stream: stream.to_owned(),
                version: current + 1 + i as u64,
                position,
                event_type: e.event_type,
                payload: e.payload,
                metadata: e.metadata,
                correlation_id: e.correlation_id,
                causation_id: e.causation_id,
                recorded_at: e.recorded_at.unwrap_or(now),
            });
        }
        let index = log.streams.entry(stream.to_owned()).or_default();
        for r in &recorded {
            index.positions.push(r.position);
            index.ids.insert(r.id, r.version);
        }
        let stream_version = index.positions.len() as u64;
        log.log.extend(recorded);
        let head = log.log.len() as u64;
        drop(log);
        self.inner.head.send_modify(|s| s.position = head);
        Ok(AppendResult {
            stream_version,
            positions,
            written: true,
        })
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        validate::stream(stream)?;
        let log = self.inner.events()?;
        let Some(index) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let limit = options.limit.unwrap_or(usize::MAX);
        let pick = |pos: &u64| log.log[(*pos - 1) as usize].clone();
        let n = index.positions.len() as u64;
        Ok(match options.direction {
            ReadDirection::Forward => {
                let from = options.from_version.unwrap_or(1).max(1);
                index
                    .positions
                    .iter()
                    .skip(usize::try_from(from - 1).unwrap_or(usize::MAX))
                    .take(limit)
                    .map(pick)
                    .collect()
            }
            ReadDirection::Backward => {
                let from = options.from_version.unwrap_or(n).min(n);
                index.positions[..from as usize]
                    .iter()
                    .rev()
                    .take(limit)
                    .map(pick)
                    .collect()
            }
        })
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        filter.validate()?;
        self.inner.read_after(after, filter, limit)
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(self.inner.events()?.log.len() as u64)
    }

    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription> {
        filter.validate()?;
        let inner = Arc::downgrade(&self.inner);
        let filter = Arc::new(filter);
        let wake = self.inner.head.subscribe();
        // The reader holds the driver weakly: a subscription must not keep a dropped driver's
        // data alive, and once the driver is gone the stream ends after its buffer.
        let read: subscription::PageReader = Box::new(move |after, limit| {
            let inner = inner.clone();
            let filter = filter.clone();
            async move {
                match inner.upgrade() {
                    Some(inner) => inner.read_after(after, &filter, limit),
                    None => Ok(Vec::new()),
                }
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
        validate::value(&state, &self.inner.limits)
            .map_err(|e| e.with_context("stream", stream))?;
        let mut log = self.inner.events()?;
        let current = log.stream_version(stream);
        validate_snapshot_version(stream, version, current)?;
        log.snapshots.entry(stream.to_owned()).or_default().insert(
            version,
            Snapshot {
                stream: stream.to_owned(),
                version,
                state,
                created_at: SystemTime::now(),
            },
        );
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        validate::stream(stream)?;
        let log = self.inner.events()?;
        Ok(log
            .snapshots
            .get(stream)
            .and_then(|s| s.values().next_back().cloned()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.head.send_modify(|s: &mut HeadSignal| s.closed = true);
    }
}
