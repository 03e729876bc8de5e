//! Event types and the `EventStore` trait: append-only streams with a total global order.

use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Metadata;
use crate::error::{Error, Result};
use crate::validate::{self, Limits};

/// An event to append.
///
/// [`NewEvent::new`] gives it a fresh UUID v7 id at construction, so retrying the same value
/// after a failure re-appends the same id and is idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique within its stream; re-appending the same id at the same place is a no-op.
    pub id: Uuid,
    /// Event type, e.g. `OrderPlaced` (1..=256 bytes).
    pub event_type: String,
    /// JSON payload.
    pub payload: Value,
    /// JSON-object metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Correlation id (1..=256 bytes).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Causation id (1..=256 bytes).
    #[serde(default)]
    pub causation_id: Option<String>,
    /// When the event was recorded, for imports that keep an event's original time; `None`
    /// (the default) records the time of the append. Stored at the backend's precision
    /// (microseconds on PostgreSQL, milliseconds on Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<SystemTime>,
}

impl NewEvent {
    /// An event with a fresh id, empty metadata and no correlation.
    pub fn new(event_type: impl Into<String>, payload: Value) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            payload,
            metadata: Metadata::new(),
            correlation_id: None,
            causation_id: None,
            recorded_at: None,
        }
    }

    /// Keeps an original recording time (an import): see [`NewEvent::recorded_at`].
    #[must_use]
    pub fn with_recorded_at(mut self, at: SystemTime) -> NewEvent {
        self.recorded_at = Some(at);
        self
    }

    /// Sets the id.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> NewEvent {
        self.id = id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> NewEvent {
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation(mut self, id: impl Into<String>) -> NewEvent {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation(mut self, id: impl Into<String>) -> NewEvent {
        self.causation_id = Some(id.into());
        self
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The id.
    pub id: Uuid,
    /// The stream.
    pub stream: String,
    /// 1-based place in the stream: the first event is version 1.
    pub version: u64,
    /// 1-based place in the global order, total across streams.
    pub position: u64,
    /// Event type.
    pub event_type: String,
    /// Payload.
    pub payload: Value,
    /// Metadata.
    pub metadata: Metadata,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Causation id.
    pub causation_id: Option<String>,
    /// When it was recorded.
    pub recorded_at: SystemTime,
}

impl RecordedEvent {
    /// The category: the stream name before the first `-`.
    pub fn category(&self) -> &str {
        validate::category_of(&self.stream)
    }
}

/// What the stream's version must be for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream has no events.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last version is exactly this (0 means no events, like `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0 = no events) satisfies this expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }

    /// The `Conflict` error for a stream at `current`.
    pub fn conflict(self, stream: &str, current: u64) -> Error {
        Error::conflict(format!(
            "expected version {self:?} but the stream is at version {current}"
        ))
        .with_context("stream", stream)
        .with_current_version(Some(current))
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The version of this batch's last event. After a fresh append that is the stream's
    /// version; after an idempotent re-append of an older batch, later events may follow it.
    pub stream_version: u64,
    /// The global positions of the appended events, in order.
    pub positions: Vec<u64>,
    /// `false` when every event was already there (an idempotent re-append wrote nothing).
    pub written: bool,
}

impl AppendResult {
    /// The versions of the appended events, in order.
    pub fn versions(&self) -> std::ops::RangeInclusive<u64> {
        (self.stream_version + 1 - self.positions.len() as u64)..=self.stream_version
    }
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadDirection {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// Options of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStream {
    /// Direction.
    pub direction: ReadDirection,
    /// First version to return (inclusive). Forward: from this version up (`None` = 1);
    /// backward: from this version down (`None` = the last).
    pub from_version: Option<u64>,
    /// At most this many events.
    pub limit: Option<usize>,
}

impl ReadStream {
    /// The whole stream, oldest first.
    pub fn forward() -> ReadStream {
        ReadStream::default()
    }

    /// The whole stream, newest first.
    pub fn backward() -> ReadStream {
        ReadStream {
            direction: ReadDirection::Backward,
            ..ReadStream::default()
        }
    }

    /// Starts at this version (inclusive).
    #[must_use]
    pub fn from(mut self, version: u64) -> ReadStream {
        self.from_version = Some(version);
        self
    }

    /// Caps the count.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> ReadStream {
        self.limit = Some(limit);
        self
    }

    /// Whether a version is within the range (before the limit).
    pub fn admits(&self, version: u64) -> bool {
        match (self.direction, self.from_version) {
            (_, None) => true,
            (ReadDirection::Forward, Some(from)) => version >= from,
            (ReadDirection::Backward, Some(from)) => version <= from,
        }
    }
}

/// Which events a global read or subscription returns. Empty lists mean "any"; every set field
/// must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only these categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Only these event types.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only this correlation id.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Only events recorded at or after this time.
    #[serde(default)]
    pub since: Option<SystemTime>,
    /// Only events recorded before this time.
    #[serde(default)]
    pub until: Option<SystemTime>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> EventFilter {
        EventFilter::default()
    }

    /// Adds a category.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>) -> EventFilter {
        self.categories.push(category.into());
        self
    }

    /// Adds an event type.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> EventFilter {
        self.event_types.push(event_type.into());
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlation(mut self, id: impl Into<String>) -> EventFilter {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the time range `[since, until)`.
    #[must_use]
    pub fn between(mut self, since: Option<SystemTime>, until: Option<SystemTime>) -> EventFilter {
        self.since = since;
        self.until = until;
        self
    }

    /// Checks the filter's fields.
    pub fn validate(&self) -> Result<()> {
        if self.categories.len() > 100 || self.event_types.len() > 100 {
            return Err(Error::invalid_input(
                "event filter lists more than 100 categories or types",
            ));
        }
        for c in &self.categories {
            validate::category(c)?;
        }
        for t in &self.event_types {
            validate::label(t, "event_type")?;
        }
        if let Some(c) = &self.correlation_id {
            validate::label(c, "correlation_id")?;
        }
        Ok(())
    }

    /// Whether an event passes.
    pub fn matches(&self, e: &RecordedEvent) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == e.category()))
            && (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
            && self
                .correlation_id
                .as_ref()
                .is_none_or(|c| e.correlation_id.as_ref() == Some(c))
            && self.since.is_none_or(|s| e.recorded_at >= s)
            && self.until.is_none_or(|u| e.recorded_at < u)
    }
}

/// A stored snapshot of an aggregate's state at a stream version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The stream version the state includes.
    pub version: u64,
    /// The state.
    pub state: Value,
    /// When it was saved.
    pub created_at: SystemTime,
}

/// A live feed of events: catch-up, then live; ends only on error or when the store shuts down.
pub type EventSubscription = BoxStream<'static, Result<RecordedEvent>>;

/// Append-only event streams with a total, gapless global order and subscriptions.
///
/// Object-safe: use it as `Arc<dyn EventStore>`. Conveniences (`stream_version`,
/// `load_aggregate`) live in [`crate::EventStoreExt`].
///
/// # Contract
///
/// * Stream names are `category-id` ([`validate::stream`]); versions are 1-based, positions are
///   1-based and strictly increase in commit-visible order.
/// * `append` writes all events or none. The expected version is checked atomically with the
///   write; a mismatch is `Conflict` carrying the stream's version.
/// * Idempotency: if the first event's id is already in the stream and the whole batch matches
///   the stored events at consecutive versions (and, for `Exact(n)` / `NoStream`, starts right
///   after that version), the append succeeds with the stored positions and writes nothing. An
///   id reused in another place is a `Conflict`. Ids are unique per stream.
/// * Gapless reads: a reader that has seen position `p` never later finds an event with a
///   position `<= p` that it did not see.
/// * `subscribe(after, filter)` yields every matching event with position `> after`, in order,
///   first those already stored, then new ones as they commit; it reads in bounded pages, so a
///   slow consumer does not grow memory.
/// * Snapshots: `save_snapshot` stores state at a version `1..=current` (otherwise
///   `InvalidInput` naming the stream); `load_snapshot` returns the highest version saved.
#[async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug {
    /// Appends events atomically under an expected version.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult>;

    /// Events of one stream.
    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>>;

    /// Events with position `> after`, matching `filter`, oldest first, at most `limit`.
    async fn read_all(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The position of the last event readers can see (0 when the log is empty).
    async fn head_position(&self) -> Result<u64>;

    /// Catch-up then live feed of events with position `> after` matching `filter`.
    async fn subscribe(&self, after: u64, filter: EventFilter) -> Result<EventSubscription>;

    /// Saves a snapshot of `stream` at `version`.
    async fn save_snapshot(&self, stream: &str, version: u64, state: Value) -> Result<()>;

    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>>;
}

/// Checks an append's input: stream name, batch size, duplicate ids, labels, payload sizes.
pub fn validate_append(stream: &str, events: &[NewEvent], limits: &Limits) -> Result<()> {
    validate::stream(stream)?;
    if events.is_empty() {
        return Err(
            Error::invalid_input("append needs at least one event").with_context("stream", stream)
        );
    }
    if events.len() > validate::MAX_EVENTS_PER_APPEND {
        return Err(Error::invalid_input(format!(
            "append carries {} events; the limit is {}",
            events.len(),
            validate::MAX_EVENTS_PER_APPEND
        ))
        .with_context("stream", stream));
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        let ctx = |err: Error| {
            err.with_context("stream", stream)
                .with_context("event_id", e.id)
        };
        if !seen.insert(e.id) {
            return Err(ctx(Error::invalid_input(
                "the same event id appears twice in one append",
            )));
        }
        validate::label(&e.event_type, "event_type").map_err(ctx)?;
        if let Some(c) = &e.correlation_id {
            validate::label(c, "correlation_id").map_err(ctx)?;
        }
        if let Some(c) = &e.causation_id {
            validate::label(c, "causation_id").map_err(ctx)?;
        }
        validate::value(&e.payload, limits).map_err(ctx)?;
        validate::metadata(&e.metadata, limits).map_err(ctx)?;
        if let Some(at) = e.recorded_at {
            validate::recorded_at(at).map_err(ctx)?;
        }
    }
    Ok(())
}

/// Decides an append against the stream's stored ids: `Ok(Some(versions))` when the batch is an
/// idempotent re-append of events stored at those versions, `Ok(None)` when it is new, or a
/// `Conflict`. `stored_version_of` looks an id up in the stream.
///
/// Drivers that can fetch the ids cheaply call this so the rule is the same everywhere.
pub fn check_idempotent(
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    mut stored_version_of: impl FnMut(&Uuid) -> Option<u64>,
) -> Result<Option<u64>> {
    let first = match stored_version_of(&events[0].id) {
        Some(v) => v,
        None => {
            if let Some(e) = events.iter().find(|e| stored_version_of(&e.id).is_some()) {
                return Err(Error::conflict(
                    "event id is already in the stream, but the append does not repeat the \
                     events stored there",
                )
                .with_context("stream", stream)
                .with_context("event_id", e.id));
            }
            return Ok(None);
        }
    };
    let place_ok = match expected {
        ExpectedVersion::Exact(v) => first == v + 1,
        ExpectedVersion::NoStream => first == 1,
        ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
    };
    let consecutive = events
        .iter()
        .enumerate()
        .all(|(i, e)| stored_version_of(&e.id) == Some(first + i as u64));
    if place_ok && consecutive {
        Ok(Some(first))
    } else {
        Err(Error::conflict(
            "event ids are already in the stream at other places: not a retry of an earlier append",
        )
        .with_context("stream", stream)
        .with_context("event_id", events[0].id))
    }
}

/// Completes [`check_idempotent`]: a batch whose ids are stored at the right places is a retry
/// only if every event also carries what is stored under its id (type, payload, metadata,
/// correlation and causation ids). The same id with other content is a `Conflict` that names the
/// event and the first field that differs: an id is an idempotency key, and answering such an
/// append with success would tell the caller that data was stored which never was.
///
/// `stored` holds the stream's events at the batch's versions, in order.
pub fn check_same_content(
    stream: &str,
    events: &[NewEvent],
    stored: &[RecordedEvent],
) -> Result<()> {
    if stored.len() != events.len() {
        return Err(Error::internal(format!(
            "the idempotency check read {} stored events for an append of {}",
            stored.len(),
            events.len()
        ))
        .with_context("stream", stream));
    }
    for (new, old) in events.iter().zip(stored) {
        if new.id != old.id {
            return Err(Error::internal(
                "the idempotency check read another event than the one stored under the id",
            )
            .with_context("stream", stream)
            .with_context("event_id", new.id)
            .with_context("version", old.version));
        }
        let differs = if new.event_type != old.event_type {
            Some("event_type")
        } else if new.payload != old.payload {
            Some("payload")
        } else if new.metadata != old.metadata {
            Some("metadata")
        } else if new.correlation_id != old.correlation_id {
            Some("correlation_id")
        } else if new.causation_id != old.causation_id {
            Some("causation_id")
        } else {
            None
        };
        if let Some(field) = differs {
            return Err(Error::conflict(format!(
                "event id is already stored in the stream with a different {field}: a retry \
                 must repeat the stored event, a new event needs a new id"
            ))
            .with_context("stream", stream)
            .with_context("event_id", new.id)
            .with_context("version", old.version));
        }
    }
    Ok(())
}

/// Checks a snapshot's version against the stream's current version: it must be `1..=current`.
pub fn validate_snapshot_version(stream: &str, version: u64, current: u64) -> Result<()> {
    if version == 0 || version > current {
        return Err(Error::invalid_input(format!(
            "snapshot version {version} is outside the stream's versions 1..={current}"
        ))
        .with_context("stream", stream));
    }
    Ok(())
}
