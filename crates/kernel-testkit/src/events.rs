//! The event suite: every point of [`EventStore`]'s contract as one public async function,
//! generic over the store, and [`event_suite!`](crate::event_suite) to run them all.
//!
//! Global reads start from `head_position()` taken at the start of a test and filter on the
//! test's own category, so the suite holds when stores share a backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kernel_core::{
    AppendResult, ErrorCode, EventFilter, EventStore, EventStoreExt, EventSubscription,
    ExpectedVersion, Metadata, NewEvent, ReadStream, RecordedEvent, Uuid,
};
use serde_json::json;

use crate::support::{
    STEP_TIMEOUT, assert_time_between, expect_err, expect_ok, join, unique, unique_stream,
};

/// Every event-store behaviour, in suite order (the one list; see the storage suite).
#[doc(hidden)]
#[macro_export]
macro_rules! __event_behaviours {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            append_to_new_stream
            append_keeps_a_given_recorded_at
            recorded_at_out_of_range_is_invalid
            edge_numbers_in_events_round_trip
            versions_are_one_based_and_consecutive
            expected_no_stream
            expected_stream_exists
            expected_exact
            expected_exact_zero_on_new_stream
            expected_any_always_appends
            append_is_atomic_on_conflict
            append_is_atomic_on_invalid_event
            reappend_is_idempotent
            reappend_with_exact_expectation_is_idempotent
            reappend_after_later_appends_is_idempotent
            reused_id_elsewhere_conflicts
            reused_id_with_other_content_conflicts
            duplicate_id_in_one_append_is_invalid
            invalid_stream_names_are_rejected
            empty_append_is_invalid
            invalid_event_labels_are_rejected
            read_stream_forward
            read_stream_backward
            read_stream_from_version
            read_stream_limit
            read_missing_stream_is_empty
            read_all_from_position_in_order
            read_all_pages_without_gaps
            read_all_filter_by_category
            read_all_filter_by_event_type
            read_all_filter_by_correlation
            read_all_filter_by_time_range
            read_all_rejects_invalid_filter
            category_is_text_before_first_dash
            head_position_increases
            event_fields_round_trip
            positions_are_global_across_streams
            subscribe_catch_up_then_live
            subscribe_with_filter
            subscribe_resumes_from_position
            subscribe_slow_consumer_gets_everything
            subscribe_misses_nothing_under_concurrent_appends
            read_all_misses_nothing_under_concurrent_appends
            snapshot_save_and_load_latest
            snapshot_load_missing_is_none
            snapshot_version_out_of_range_is_invalid
            load_aggregate_is_snapshot_plus_tail
            stream_version_helper
            race_exact_appends_to_one_stream
            race_appends_to_many_streams
        }
    };
}

/// The names of every event-store behaviour, in suite order.
pub const BEHAVIOURS: &[&str] = crate::__event_behaviours!(__behaviour_names!());

/// Runs the whole event-store suite against a driver, as `#[test]`s.
///
/// The argument is an async expression, evaluated afresh for every test, that yields
/// `(driver, guard)`; the guard lives until the test ends. Each behaviour runs on
/// `Arc<Driver>` (module `event_conformance::concrete`) and on `Arc<dyn EventStore>`
/// (`event_conformance::dyn_arc`).
///
/// ```text
/// kernel_testkit::event_suite!(async { (driver_memory::MemoryDriver::new(), ()) });
/// ```
#[macro_export]
macro_rules! event_suite {
    ($factory:expr $(,)?) => {
        $crate::__suite!(
            event_conformance,
            __event_behaviours,
            events,
            EventStore,
            $factory
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn ev(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(event_type, json!({ "n": n }))
}

/// The numbers of [`crate::storage::edge_numbers`] come back exactly in event payloads,
/// metadata and snapshots; `-0.0` is refused before any I/O.
pub async fn edge_numbers_in_events_round_trip<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let numbers = crate::storage::edge_numbers();
    let events: Vec<NewEvent> = numbers
        .iter()
        .map(|n| {
            let mut ev = NewEvent::new("Measured", json!({"n": n, "list": [n]}));
            ev.metadata.insert("n".into(), n.clone());
            ev
        })
        .collect();
    append(e, &stream, ExpectedVersion::NoStream, events).await;
    let read = expect_ok(e.read_stream(&stream, ReadStream::forward()).await, "read");
    assert_eq!(read.len(), numbers.len());
    for (got, n) in read.iter().zip(&numbers) {
        assert_eq!(
            got.payload,
            json!({"n": n, "list": [n]}),
            "payload keeps {n}"
        );
        assert_eq!(got.metadata.get("n"), Some(n), "metadata keeps {n}");
    }
    let state = json!({"numbers": numbers});
    expect_ok(
        e.save_snapshot(&stream, read.len() as u64, state.clone())
            .await,
        "save_snapshot",
    );
    let snapshot = expect_ok(e.load_snapshot(&stream).await, "load_snapshot").expect("saved");
    assert_eq!(
        snapshot.state, state,
        "the snapshot keeps every number exactly"
    );
    expect_err(
        e.append(
            &stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Measured", json!({"n": -0.0}))],
        )
        .await,
        ErrorCode::InvalidInput,
        "a payload holding -0.0",
    );
}

fn evs(event_type: &str, ns: std::ops::RangeInclusive<u64>) -> Vec<NewEvent> {
    ns.map(|n| ev(event_type, n)).collect()
}

async fn append<E: EventStore + ?Sized>(
    e: &E,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendResult {
    let what = format!(
        "append {} event(s) to {stream} expecting {expected:?}",
        events.len()
    );
    expect_ok(e.append(stream, expected, events).await, &what)
}

async fn read<E: EventStore + ?Sized>(e: &E, stream: &str, opts: ReadStream) -> Vec<RecordedEvent> {
    expect_ok(
        e.read_stream(stream, opts).await,
        &format!("read_stream {stream} {opts:?}"),
    )
}

async fn head<E: EventStore + ?Sized>(e: &E) -> u64 {
    expect_ok(e.head_position().await, "head_position")
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn ns(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e.payload
                .get("n")
                .and_then(|n| n.as_u64())
                .unwrap_or(u64::MAX)
        })
        .collect()
}

#[track_caller]
fn assert_increasing(pos: &[u64], what: &str) {
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "{what}: positions must strictly increase: {pos:?}"
    );
}

async fn read_all<E: EventStore + ?Sized>(
    e: &E,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Vec<RecordedEvent> {
    let what = format!("read_all after {after} {filter:?} limit {limit}");
    let page = expect_ok(e.read_all(after, filter, limit).await, &what);
    assert!(
        page.len() <= limit,
        "{what}: returned {} events",
        page.len()
    );
    assert!(
        page.iter().all(|e| e.position > after),
        "{what}: returned a position <= {after}"
    );
    assert_increasing(&positions(&page), &what);
    page
}

/// Every event after `after` matching `filter`, page by page.
async fn read_all_pages<E: EventStore + ?Sized>(
    e: &E,
    after: u64,
    filter: &EventFilter,
    page: usize,
) -> Vec<RecordedEvent> {
    let mut out: Vec<RecordedEvent> = Vec::new();
    let mut after = after;
    loop {
        let batch = read_all(e, after, filter, page).await;
        let Some(last) = batch.last() else { return out };
        after = last.position;
        out.extend(batch);
    }
}

async fn next_event(sub: &mut EventSubscription, what: &str) -> RecordedEvent {
    match tokio::time::timeout(STEP_TIMEOUT, sub.next()).await {
        Err(_) => panic!("{what}: no event within {} s", STEP_TIMEOUT.as_secs()),
        Ok(None) => panic!("{what}: the subscription ended"),
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
        Ok(Some(Ok(event))) => event,
    }
}

async fn take_events(sub: &mut EventSubscription, n: usize, what: &str) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(next_event(sub, &format!("{what} (event {} of {n})", i + 1)).await);
    }
    out
}

/// Fails if the subscription yields anything within a short while (a duplicate or a stray).
async fn assert_quiet(sub: &mut EventSubscription, what: &str) {
    match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        Err(_) => {}
        Ok(None) => panic!("{what}: the subscription ended; it must stay live"),
        Ok(Some(Ok(e))) => panic!(
            "{what}: unexpected extra event (a duplicate?): {} v{} at position {}",
            e.stream, e.version, e.position
        ),
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
    }
}

async fn subscribe<E: EventStore + ?Sized>(
    e: &E,
    after: u64,
    filter: EventFilter,
) -> EventSubscription {
    let what = format!("subscribe after {after} {filter:?}");
    expect_ok(e.subscribe(after, filter).await, &what)
}

// ---------------------------------------------------------------------------------------------
// Appends and expected versions

/// An append to a new stream returns the stream version, one position per event, and
/// `written = true`; a read returns the same events.
pub async fn append_to_new_stream<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let r = append(
        e,
        &stream,
        ExpectedVersion::NoStream,
        vec![ev("Placed", 1), ev("Paid", 2)],
    )
    .await;
    assert_eq!(r.stream_version, 2, "stream_version after 2 events");
    assert_eq!(r.positions.len(), 2, "one position per event");
    assert!(r.written, "a new append writes");
    assert_increasing(&r.positions, "append positions");
    assert!(
        r.positions[0] > h0,
        "positions are after the head before the append"
    );
    assert_eq!(r.versions(), 1..=2);
    let events = read(e, &stream, ReadStream::forward()).await;
    assert_eq!(versions(&events), vec![1, 2]);
    assert_eq!(positions(&events), r.positions);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["Placed", "Paid"]);
    assert!(
        head(e).await >= r.positions[1],
        "head_position covers the append"
    );
}

/// An event given a recording time (an import) is stored with that time, exactly when it is
/// whole milliseconds (every backend's precision), in the past or in the future; an event
/// without one gets the time of the append. The global order is still the order of appends.
pub async fn append_keeps_a_given_recorded_at<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("import", "1");
    let past = SystemTime::UNIX_EPOCH + Duration::from_millis(978_307_200_123);
    let future = SystemTime::UNIX_EPOCH + Duration::from_millis(4_102_444_800_456);
    let before = SystemTime::now();
    let r = append(
        e,
        &stream,
        ExpectedVersion::NoStream,
        vec![
            ev("Old", 1).with_recorded_at(future),
            ev("Older", 2).with_recorded_at(past),
            ev("Now", 3),
        ],
    )
    .await;
    let after = SystemTime::now();
    assert_increasing(
        &r.positions,
        "positions follow the append, not the given times",
    );
    let events = read(e, &stream, ReadStream::forward()).await;
    assert_eq!(
        events[0].recorded_at, future,
        "a future recording time is kept"
    );
    assert_eq!(events[1].recorded_at, past, "a past recording time is kept");
    assert_time_between(
        events[2].recorded_at,
        before,
        after,
        "no given time: the append's",
    );
}

/// A recording time before 1970 or after year 9999 is `InvalidInput`, and nothing is written.
pub async fn recorded_at_out_of_range_is_invalid<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("import", "2");
    for (at, what) in [
        (
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            "before 1970",
        ),
        (
            SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800),
            "after year 9999",
        ),
    ] {
        let r = e
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![ev("Ok", 1), ev("Bad", 2).with_recorded_at(at)],
            )
            .await;
        expect_err(r, ErrorCode::InvalidInput, what);
    }
    assert!(
        read(e, &stream, ReadStream::forward()).await.is_empty(),
        "nothing written"
    );
}

/// Versions are 1-based and consecutive across appends.
pub async fn versions_are_one_based_and_consecutive<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let r1 = append(e, &stream, ExpectedVersion::Any, evs("E", 1..=1)).await;
    let r2 = append(e, &stream, ExpectedVersion::Any, evs("E", 2..=3)).await;
    let r3 = append(e, &stream, ExpectedVersion::Any, evs("E", 4..=6)).await;
    assert_eq!(
        (r1.stream_version, r2.stream_version, r3.stream_version),
        (1, 3, 6)
    );
    assert_eq!(
        (r1.versions(), r2.versions(), r3.versions()),
        (1..=1, 2..=3, 4..=6)
    );
    let events = read(e, &stream, ReadStream::forward()).await;
    assert_eq!(versions(&events), (1..=6).collect::<Vec<_>>());
    assert_eq!(ns(&events), (1..=6).collect::<Vec<_>>());
    assert_increasing(&positions(&events), "stream positions");
    let all: Vec<u64> = [r1.positions, r2.positions, r3.positions].concat();
    assert_eq!(positions(&events), all);
}

/// `NoStream` succeeds on a new stream and conflicts (with the version) on an existing one.
pub async fn expected_no_stream<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    append(e, &stream, ExpectedVersion::NoStream, evs("E", 1..=1)).await;
    let err = expect_err(
        e.append(&stream, ExpectedVersion::NoStream, evs("E", 2..=2))
            .await,
        ErrorCode::Conflict,
        "NoStream on a stream with one event",
    );
    assert_eq!(
        err.current_version(),
        Some(1),
        "Conflict carries the stream version"
    );
    assert!(
        err.context_value("stream").is_some(),
        "the error names the stream: {err}"
    );
    assert_eq!(
        read(e, &stream, ReadStream::forward()).await.len(),
        1,
        "nothing written"
    );
}

/// `StreamExists` conflicts (version 0) on a new stream and succeeds on an existing one.
pub async fn expected_stream_exists<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let err = expect_err(
        e.append(&stream, ExpectedVersion::StreamExists, evs("E", 1..=1))
            .await,
        ErrorCode::Conflict,
        "StreamExists on a new stream",
    );
    assert_eq!(
        err.current_version(),
        Some(0),
        "a new stream is at version 0"
    );
    assert!(
        read(e, &stream, ReadStream::forward()).await.is_empty(),
        "nothing written"
    );
    append(e, &stream, ExpectedVersion::Any, evs("E", 1..=1)).await;
    let r = append(e, &stream, ExpectedVersion::StreamExists, evs("E", 2..=2)).await;
    assert_eq!(r.stream_version, 2);
}

/// `Exact(n)` succeeds at version `n` and otherwise conflicts carrying the actual version.
pub async fn expected_exact<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    append(e, &stream, ExpectedVersion::Exact(0), evs("E", 1..=2)).await;
    let r = append(e, &stream, ExpectedVersion::Exact(2), evs("E", 3..=3)).await;
    assert_eq!(r.stream_version, 3);
    for stale in [2, 5, 0] {
        let err = expect_err(
            e.append(&stream, ExpectedVersion::Exact(stale), evs("E", 9..=9))
                .await,
            ErrorCode::Conflict,
            &format!("Exact({stale}) on version 3"),
        );
        assert_eq!(
            err.current_version(),
            Some(3),
            "Conflict carries the actual version"
        );
    }
    assert_eq!(
        read(e, &stream, ReadStream::forward()).await.len(),
        3,
        "nothing written"
    );
}

/// `Exact(0)` means "no events yet".
pub async fn expected_exact_zero_on_new_stream<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let r = append(e, &stream, ExpectedVersion::Exact(0), evs("E", 1..=1)).await;
    assert_eq!(r.stream_version, 1);
    let err = expect_err(
        e.append(&stream, ExpectedVersion::Exact(0), evs("E", 2..=2))
            .await,
        ErrorCode::Conflict,
        "Exact(0) on a stream with one event",
    );
    assert_eq!(err.current_version(), Some(1));
}

/// `Any` appends whatever the version.
pub async fn expected_any_always_appends<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    for n in 1..=3u64 {
        let r = append(e, &stream, ExpectedVersion::Any, evs("E", n..=n)).await;
        assert_eq!(r.stream_version, n);
    }
}

/// A multi-event append that conflicts writes none of its events.
pub async fn append_is_atomic_on_conflict<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    append(e, &stream, ExpectedVersion::Any, evs("E", 1..=2)).await;
    let err = expect_err(
        e.append(&stream, ExpectedVersion::Exact(1), evs("E", 3..=5))
            .await,
        ErrorCode::Conflict,
        "a 3-event append with a stale expectation",
    );
    assert_eq!(err.current_version(), Some(2));
    assert_eq!(
        versions(&read(e, &stream, ReadStream::forward()).await),
        vec![1, 2]
    );
    let all = read_all_pages(e, h0, &EventFilter::all().category(&cat), 100).await;
    assert_eq!(
        all.len(),
        2,
        "no event of the failed append reached the log"
    );
}

/// A multi-event append with one invalid event is `InvalidInput` and writes none.
pub async fn append_is_atomic_on_invalid_event<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let batch = vec![ev("Good", 1), NewEvent::new("", json!({})), ev("Good", 3)];
    expect_err(
        e.append(&stream, ExpectedVersion::Any, batch).await,
        ErrorCode::InvalidInput,
        "append with an empty event type in the middle",
    );
    assert!(
        read(e, &stream, ReadStream::forward()).await.is_empty(),
        "nothing written"
    );
}

/// Re-appending the same events (same ids) returns the same positions, `written = false`, and
/// does not grow the stream.
pub async fn reappend_is_idempotent<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let batch = evs("E", 1..=3);
    let r1 = append(e, &stream, ExpectedVersion::Any, batch.clone()).await;
    let r2 = append(e, &stream, ExpectedVersion::Any, batch.clone()).await;
    assert_eq!(
        r2.positions, r1.positions,
        "a retried append returns the stored positions"
    );
    assert!(!r2.written, "a retried append writes nothing");
    assert_eq!(r2.stream_version, 3);
    assert_eq!(
        read(e, &stream, ReadStream::forward()).await.len(),
        3,
        "stream not grown"
    );
    let all = read_all_pages(e, h0, &EventFilter::all().category(&cat), 100).await;
    assert_eq!(all.len(), 3, "the log did not grow");
}

/// A retry with the same `Exact` / `NoStream` expectation after success is still idempotent.
pub async fn reappend_with_exact_expectation_is_idempotent<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let batch = evs("E", 1..=2);
    let r1 = append(e, &stream, ExpectedVersion::Exact(0), batch.clone()).await;
    let r2 = append(e, &stream, ExpectedVersion::Exact(0), batch).await;
    assert_eq!((r2.positions.clone(), r2.written), (r1.positions, false));
    let (_, other) = unique_stream("order", "2");
    let one = evs("E", 1..=1);
    let r1 = append(e, &other, ExpectedVersion::NoStream, one.clone()).await;
    let r2 = append(e, &other, ExpectedVersion::NoStream, one).await;
    assert_eq!((r2.positions.clone(), r2.written), (r1.positions, false));
    assert_eq!(read(e, &stream, ReadStream::forward()).await.len(), 2);
    assert_eq!(read(e, &other, ReadStream::forward()).await.len(), 1);
}

/// A retry of an earlier append after later appends is idempotent (same positions).
pub async fn reappend_after_later_appends_is_idempotent<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let batch = evs("E", 1..=2);
    let r1 = append(e, &stream, ExpectedVersion::Exact(0), batch.clone()).await;
    append(e, &stream, ExpectedVersion::Exact(2), evs("E", 3..=3)).await;
    let r2 = append(e, &stream, ExpectedVersion::Exact(0), batch.clone()).await;
    assert_eq!(
        (r2.positions.clone(), r2.written),
        (r1.positions.clone(), false)
    );
    let r3 = append(e, &stream, ExpectedVersion::Any, batch).await;
    assert_eq!((r3.positions, r3.written), (r1.positions, false));
    assert_eq!(
        versions(&read(e, &stream, ReadStream::forward()).await),
        vec![1, 2, 3]
    );
}

/// Re-appending a stored id at its place with other content (type, payload, metadata,
/// correlation or causation id, in any event of the batch) is a `Conflict` that names the id, not
/// an idempotent success: the caller would believe data was stored that never was. Nothing is
/// written, and the exact retry still succeeds.
pub async fn reused_id_with_other_content_conflicts<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let mut original = evs("E", 1..=2);
    original[1].metadata.insert("source".into(), json!("test"));
    original[1].correlation_id = Some("corr-1".into());
    original[1].causation_id = Some("cause-1".into());
    let r1 = append(e, &stream, ExpectedVersion::NoStream, original.clone()).await;
    // One named edit of an event's content, applied to a copy of the original batch.
    type Change = (&'static str, fn(&mut NewEvent));
    let changes: [Change; 6] = [
        ("event_type", |ev| ev.event_type = "Other".into()),
        ("payload", |ev| ev.payload = json!({"n": -1})),
        ("metadata", |ev| {
            ev.metadata.insert("source".into(), json!("elsewhere"));
        }),
        ("metadata", |ev| {
            ev.metadata.clear();
        }),
        ("correlation_id", |ev| ev.correlation_id = None),
        ("causation_id", |ev| {
            ev.causation_id = Some("cause-2".into())
        }),
    ];
    for (field, change) in changes {
        for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
            let mut batch = original.clone();
            change(&mut batch[1]);
            let err = expect_err(
                e.append(&stream, expected, batch).await,
                ErrorCode::Conflict,
                &format!("a retry whose second event has another {field}"),
            );
            let text = err.to_string();
            assert!(
                text.contains(&original[1].id.to_string()) && text.contains(field),
                "the conflict names the event id and the field ({field}): {text}"
            );
        }
    }
    let again = append(e, &stream, ExpectedVersion::NoStream, original.clone()).await;
    assert_eq!((again.positions, again.written), (r1.positions, false));
    let stored = read(e, &stream, ReadStream::forward()).await;
    assert_eq!(
        stored.len(),
        2,
        "nothing was written by the refused retries"
    );
    assert_eq!(stored[1].event_type, original[1].event_type);
    assert_eq!(stored[1].metadata, original[1].metadata);
}

/// An id already in the stream, used at another place, is a `Conflict`.
pub async fn reused_id_elsewhere_conflicts<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let a = ev("E", 1);
    let b = ev("E", 2);
    append(e, &stream, ExpectedVersion::Any, vec![a.clone()]).await;
    append(e, &stream, ExpectedVersion::Any, vec![b.clone()]).await;
    expect_err(
        e.append(&stream, ExpectedVersion::Exact(2), vec![a.clone()])
            .await,
        ErrorCode::Conflict,
        "re-append of the event at version 1 as if it were version 3",
    );
    expect_err(
        e.append(&stream, ExpectedVersion::Any, vec![ev("E", 3), a.clone()])
            .await,
        ErrorCode::Conflict,
        "a new event followed by an existing id",
    );
    expect_err(
        e.append(&stream, ExpectedVersion::Any, vec![b, a]).await,
        ErrorCode::Conflict,
        "existing ids in the wrong order",
    );
    assert_eq!(
        read(e, &stream, ReadStream::forward()).await.len(),
        2,
        "nothing written"
    );
}

/// The same id twice in one append is `InvalidInput`.
pub async fn duplicate_id_in_one_append_is_invalid<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let a = ev("E", 1);
    let twin = ev("F", 2).with_id(a.id);
    expect_err(
        e.append(&stream, ExpectedVersion::Any, vec![a, twin]).await,
        ErrorCode::InvalidInput,
        "one append with the same id twice",
    );
    assert!(
        read(e, &stream, ReadStream::forward()).await.is_empty(),
        "nothing written"
    );
}

/// Bad stream names are `InvalidInput` in append, read and snapshots, and nothing is written.
pub async fn invalid_stream_names_are_rejected<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let h0 = head(e).await;
    let marker = unique("Marker");
    let long = format!("c-{}", "x".repeat(127));
    for name in [
        "order",
        "",
        "-1",
        "order-",
        "or der-1",
        "order/x-1",
        "é-1",
        "_kernel-1",
        "a\0-1",
        long.as_str(),
    ] {
        let err = expect_err(
            e.append(name, ExpectedVersion::Any, vec![ev(&marker, 1)])
                .await,
            ErrorCode::InvalidInput,
            &format!("append to stream {name:?}"),
        );
        assert!(
            err.context_value("stream").is_some(),
            "the error names the stream: {err}"
        );
        expect_err(
            e.read_stream(name, ReadStream::forward()).await,
            ErrorCode::InvalidInput,
            &format!("read_stream {name:?}"),
        );
        expect_err(
            e.save_snapshot(name, 1, json!({})).await,
            ErrorCode::InvalidInput,
            &format!("save_snapshot {name:?}"),
        );
        expect_err(
            e.load_snapshot(name).await,
            ErrorCode::InvalidInput,
            &format!("load_snapshot {name:?}"),
        );
    }
    let written = read_all_pages(e, h0, &EventFilter::all().event_type(&marker), 100).await;
    assert!(
        written.is_empty(),
        "rejected appends wrote {} events",
        written.len()
    );
}

/// An append with no events is `InvalidInput`.
pub async fn empty_append_is_invalid<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
    ] {
        expect_err(
            e.append(&stream, expected, vec![]).await,
            ErrorCode::InvalidInput,
            &format!("empty append expecting {expected:?}"),
        );
    }
    assert!(read(e, &stream, ReadStream::forward()).await.is_empty());
}

/// Event types, correlation and causation ids must be 1..=256 bytes without NUL.
pub async fn invalid_event_labels_are_rejected<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let bad = [
        ("empty event type", NewEvent::new("", json!(1))),
        (
            "257-byte event type",
            NewEvent::new("t".repeat(257), json!(1)),
        ),
        ("NUL in event type", NewEvent::new("a\0b", json!(1))),
        ("empty correlation id", ev("E", 1).with_correlation("")),
        (
            "257-byte correlation id",
            ev("E", 1).with_correlation("c".repeat(257)),
        ),
        ("NUL in causation id", ev("E", 1).with_causation("x\0")),
    ];
    for (what, event) in bad {
        expect_err(
            e.append(&stream, ExpectedVersion::Any, vec![event]).await,
            ErrorCode::InvalidInput,
            &format!("append with {what}"),
        );
    }
    assert!(
        read(e, &stream, ReadStream::forward()).await.is_empty(),
        "nothing written"
    );
    let ok = ev(&"t".repeat(256), 1).with_correlation("c".repeat(256));
    append(e, &stream, ExpectedVersion::Any, vec![ok]).await;
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn five<E: EventStore + ?Sized>(e: &E) -> String {
    let (_, stream) = unique_stream("order", "1");
    append(e, &stream, ExpectedVersion::NoStream, evs("E", 1..=2)).await;
    append(e, &stream, ExpectedVersion::Exact(2), evs("E", 3..=5)).await;
    stream
}

/// `read_stream` forward: oldest first.
pub async fn read_stream_forward<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let events = read(e, &stream, ReadStream::forward()).await;
    assert_eq!(versions(&events), vec![1, 2, 3, 4, 5]);
    assert_eq!(ns(&events), vec![1, 2, 3, 4, 5]);
    assert!(events.iter().all(|ev| ev.stream == stream));
}

/// `read_stream` backward: newest first.
pub async fn read_stream_backward<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let events = read(e, &stream, ReadStream::backward()).await;
    assert_eq!(versions(&events), vec![5, 4, 3, 2, 1]);
    assert_eq!(ns(&events), vec![5, 4, 3, 2, 1]);
}

/// `from_version` is inclusive, in both directions.
pub async fn read_stream_from_version<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let v = |opts: ReadStream| {
        let stream = stream.clone();
        async move { versions(&read(e, &stream, opts).await) }
    };
    assert_eq!(v(ReadStream::forward().from(3)).await, vec![3, 4, 5]);
    assert_eq!(v(ReadStream::backward().from(3)).await, vec![3, 2, 1]);
    assert_eq!(v(ReadStream::forward().from(5)).await, vec![5]);
    assert!(v(ReadStream::forward().from(6)).await.is_empty());
    assert_eq!(
        v(ReadStream::backward().from(10)).await,
        vec![5, 4, 3, 2, 1]
    );
}

/// `limit` caps a stream read, with and without `from_version`.
pub async fn read_stream_limit<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let v = |opts: ReadStream| {
        let stream = stream.clone();
        async move { versions(&read(e, &stream, opts).await) }
    };
    assert_eq!(v(ReadStream::forward().limit(2)).await, vec![1, 2]);
    assert_eq!(v(ReadStream::backward().limit(2)).await, vec![5, 4]);
    assert_eq!(v(ReadStream::forward().from(2).limit(2)).await, vec![2, 3]);
    assert_eq!(v(ReadStream::backward().from(4).limit(2)).await, vec![4, 3]);
    assert_eq!(
        v(ReadStream::forward().limit(10)).await,
        vec![1, 2, 3, 4, 5]
    );
    assert!(v(ReadStream::forward().limit(0)).await.is_empty());
}

/// Reading a stream that has no events is empty, not an error.
pub async fn read_missing_stream_is_empty<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "missing");
    assert!(read(e, &stream, ReadStream::forward()).await.is_empty());
    assert!(read(e, &stream, ReadStream::backward()).await.is_empty());
    assert!(
        read(e, &stream, ReadStream::forward().from(3))
            .await
            .is_empty()
    );
}

/// `read_all` from a position returns the later events of every stream in global order.
pub async fn read_all_from_position_in_order<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let cat = unique("order");
    let (a, b) = (format!("{cat}-a"), format!("{cat}-b"));
    let h0 = head(e).await;
    append(e, &a, ExpectedVersion::Any, evs("E", 1..=3)).await;
    append(e, &b, ExpectedVersion::Any, evs("E", 4..=5)).await;
    append(e, &a, ExpectedVersion::Any, evs("E", 6..=6)).await;
    let filter = EventFilter::all().category(&cat);
    let all = read_all(e, h0, &filter, 100).await;
    assert_eq!(
        ns(&all),
        vec![1, 2, 3, 4, 5, 6],
        "global order is append order"
    );
    let streams: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(streams, vec![a.as_str(), &a, &a, &b, &b, &a]);
    assert_eq!(versions(&all), vec![1, 2, 3, 1, 2, 4]);
    let rest = read_all(e, all[2].position, &filter, 100).await;
    assert_eq!(
        ns(&rest),
        vec![4, 5, 6],
        "read_all after a position is exclusive"
    );
    assert!(read_all(e, all[5].position, &filter, 100).await.is_empty());
    let unfiltered = read_all(e, h0, &EventFilter::all(), 1000).await;
    let mine: Vec<u64> = unfiltered
        .iter()
        .filter(|ev| ev.category() == cat)
        .map(|ev| ev.position)
        .collect();
    assert_eq!(
        mine,
        positions(&all),
        "an unfiltered read_all holds the same events"
    );
}

/// Paging `read_all` with a small limit visits every event once, in order.
pub async fn read_all_pages_without_gaps<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let cat = unique("order");
    let h0 = head(e).await;
    for i in 0..5u64 {
        append(
            e,
            &format!("{cat}-a"),
            ExpectedVersion::Any,
            evs("E", 2 * i + 1..=2 * i + 1),
        )
        .await;
        append(
            e,
            &format!("{cat}-b"),
            ExpectedVersion::Any,
            evs("E", 2 * i + 2..=2 * i + 2),
        )
        .await;
    }
    let filter = EventFilter::all().category(&cat);
    let mut pages = Vec::new();
    let mut after = h0;
    loop {
        let page = read_all(e, after, &filter, 3).await;
        let Some(last) = page.last() else { break };
        after = last.position;
        pages.push(page);
        assert!(pages.len() <= 4, "paging did not end");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    let all: Vec<RecordedEvent> = pages.concat();
    assert_eq!(
        ns(&all),
        (1..=10).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(read_all(e, h0, &filter, 0).await.is_empty(), "limit 0");
}

/// A category filter keeps only streams of that category (not one it is a prefix of).
pub async fn read_all_filter_by_category<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let cat = unique("order");
    let longer = format!("{cat}x");
    let h0 = head(e).await;
    append(
        e,
        &format!("{cat}-1"),
        ExpectedVersion::Any,
        evs("E", 1..=1),
    )
    .await;
    append(
        e,
        &format!("{longer}-1"),
        ExpectedVersion::Any,
        evs("E", 2..=2),
    )
    .await;
    append(
        e,
        &format!("{cat}-2"),
        ExpectedVersion::Any,
        evs("E", 3..=3),
    )
    .await;
    let only = read_all_pages(e, h0, &EventFilter::all().category(&cat), 100).await;
    assert_eq!(ns(&only), vec![1, 3]);
    assert!(only.iter().all(|ev| ev.category() == cat));
    let both = read_all_pages(
        e,
        h0,
        &EventFilter::all().category(&cat).category(&longer),
        100,
    )
    .await;
    assert_eq!(ns(&both), vec![1, 2, 3], "several categories: any of them");
}

/// An event-type filter keeps only those types.
pub async fn read_all_filter_by_event_type<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let batch = vec![
        ev("Placed", 1),
        ev("Paid", 2),
        ev("Shipped", 3),
        ev("Paid", 4),
    ];
    append(e, &stream, ExpectedVersion::Any, batch).await;
    let base = EventFilter::all().category(&cat);
    let paid = read_all_pages(e, h0, &base.clone().event_type("Paid"), 100).await;
    assert_eq!(ns(&paid), vec![2, 4]);
    let two = read_all_pages(
        e,
        h0,
        &base.clone().event_type("Paid").event_type("Shipped"),
        100,
    )
    .await;
    assert_eq!(ns(&two), vec![2, 3, 4]);
    assert!(
        read_all_pages(e, h0, &base.event_type("paid"), 100)
            .await
            .is_empty(),
        "case-sensitive"
    );
}

/// A correlation filter keeps only events with that correlation id.
pub async fn read_all_filter_by_correlation<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    let c1 = unique("corr");
    let c2 = unique("corr");
    let h0 = head(e).await;
    let batch = vec![
        ev("E", 1).with_correlation(&c1),
        ev("E", 2).with_correlation(&c2),
        ev("E", 3),
        ev("E", 4).with_correlation(&c1).with_causation("cause"),
    ];
    append(e, &stream, ExpectedVersion::Any, batch).await;
    let got = read_all_pages(e, h0, &EventFilter::all().correlation(&c1), 100).await;
    assert_eq!(ns(&got), vec![1, 4]);
    assert!(
        got.iter()
            .all(|ev| ev.correlation_id.as_deref() == Some(c1.as_str()))
    );
}

/// A time filter keeps events recorded in `[since, until)`.
pub async fn read_all_filter_by_time_range<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let gap = Duration::from_millis(40);
    append(e, &stream, ExpectedVersion::Any, evs("A", 1..=2)).await;
    tokio::time::sleep(gap).await;
    append(e, &stream, ExpectedVersion::Any, evs("B", 3..=4)).await;
    tokio::time::sleep(gap).await;
    append(e, &stream, ExpectedVersion::Any, evs("C", 5..=5)).await;
    let events = read(e, &stream, ReadStream::forward()).await;
    let times: Vec<SystemTime> = events.iter().map(|e| e.recorded_at).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "recorded_at follows the order: {times:?}"
    );
    assert!(
        times[1] < times[2] && times[3] < times[4],
        "appends {gap:?} apart: {times:?}"
    );
    let (since, until) = (events[2].recorded_at, events[4].recorded_at);
    let base = EventFilter::all().category(&cat);
    let between = read_all_pages(e, h0, &base.clone().between(Some(since), Some(until)), 100).await;
    assert_eq!(ns(&between), vec![3, 4], "[since, until)");
    let from = read_all_pages(e, h0, &base.clone().between(Some(since), None), 100).await;
    assert_eq!(ns(&from), vec![3, 4, 5], "since only (inclusive)");
    let before = read_all_pages(e, h0, &base.between(None, Some(since)), 100).await;
    assert_eq!(ns(&before), vec![1, 2], "until only (exclusive)");
}

/// Invalid filters are `InvalidInput` in `read_all` and `subscribe`.
pub async fn read_all_rejects_invalid_filter<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let bad = [
        (
            "a category with '-'",
            EventFilter::all().category("order-1"),
        ),
        ("an empty category", EventFilter::all().category("")),
        ("an empty event type", EventFilter::all().event_type("")),
        (
            "an empty correlation id",
            EventFilter::all().correlation(""),
        ),
    ];
    for (what, filter) in bad {
        expect_err(
            e.read_all(0, &filter, 10).await,
            ErrorCode::InvalidInput,
            &format!("read_all with {what}"),
        );
        expect_err(
            e.subscribe(0, filter).await.map(|_| ()),
            ErrorCode::InvalidInput,
            &format!("subscribe with {what}"),
        );
    }
}

/// The category is the text before the first `-`.
pub async fn category_is_text_before_first_dash<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let cat = unique("order");
    let h0 = head(e).await;
    append(
        e,
        &format!("{cat}-a-b"),
        ExpectedVersion::Any,
        evs("E", 1..=1),
    )
    .await;
    append(
        e,
        &format!("{cat}-c"),
        ExpectedVersion::Any,
        evs("E", 2..=2),
    )
    .await;
    let got = read_all_pages(e, h0, &EventFilter::all().category(&cat), 100).await;
    assert_eq!(ns(&got), vec![1, 2], "both streams belong to {cat}");
    assert_eq!(got[0].category(), cat);
    assert_eq!(got[0].stream, format!("{cat}-a-b"));
    expect_err(
        e.read_all(h0, &EventFilter::all().category(format!("{cat}-a")), 10)
            .await,
        ErrorCode::InvalidInput,
        "a category cannot contain '-'",
    );
}

/// `head_position` is the last visible position: it covers every append and nothing is past it.
pub async fn head_position_increases<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let r1 = append(e, &stream, ExpectedVersion::Any, evs("E", 1..=1)).await;
    let h1 = head(e).await;
    assert!(
        h1 > h0 && h1 >= r1.positions[0],
        "head {h1} after an append at {:?}",
        r1.positions
    );
    let r2 = append(e, &stream, ExpectedVersion::Any, evs("E", 2..=4)).await;
    let h2 = head(e).await;
    assert!(
        h2 > h1 && h2 >= r2.positions[2],
        "head {h2} after an append at {:?}",
        r2.positions
    );
    let filter = EventFilter::all().category(&cat);
    assert!(
        read_all(e, h2, &filter, 10).await.is_empty(),
        "no event of ours after the head"
    );
}

/// Every field of an event round-trips: id, type, payload, metadata, correlation, causation.
pub async fn event_fields_round_trip<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let id = Uuid::new_v4();
    let mut metadata = Metadata::new();
    metadata.insert("user".into(), json!("alice"));
    metadata.insert("trace".into(), json!({"span": 7, "tags": ["a", null]}));
    let payload =
        json!({"amount": 12.5, "items": [{"sku": "x", "qty": 2}], "note": "日本 😀", "none": null});
    let event = NewEvent::new("OrderPlaced", payload.clone())
        .with_id(id)
        .with_metadata(metadata.clone())
        .with_correlation("corr-1")
        .with_causation("cause-1");
    let before = SystemTime::now();
    append(
        e,
        &stream,
        ExpectedVersion::NoStream,
        vec![event, NewEvent::new("Bare", json!(null))],
    )
    .await;
    let after = SystemTime::now();
    let events = read(e, &stream, ReadStream::forward()).await;
    let got = &events[0];
    assert_eq!(got.id, id);
    assert_eq!(got.stream, stream);
    assert_eq!(got.version, 1);
    assert_eq!(got.event_type, "OrderPlaced");
    assert_eq!(got.payload, payload);
    assert_eq!(got.metadata, metadata);
    assert_eq!(got.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(got.causation_id.as_deref(), Some("cause-1"));
    assert_time_between(got.recorded_at, before, after, "recorded_at");
    let bare = &events[1];
    assert_eq!(
        (bare.payload.clone(), bare.metadata.is_empty()),
        (json!(null), true)
    );
    assert_eq!(
        (bare.correlation_id.clone(), bare.causation_id.clone()),
        (None, None)
    );
    let global = read_all(e, h0, &EventFilter::all().category(&cat), 10).await;
    assert_eq!(
        &global, &events,
        "read_all returns the same records as read_stream"
    );
}

/// Positions are global: they increase across streams in append order.
pub async fn positions_are_global_across_streams<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let cat = unique("order");
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let stream = format!("{cat}-{}", i % 2);
        let r = append(e, &stream, ExpectedVersion::Any, evs("E", i..=i)).await;
        expected.extend(r.positions);
    }
    assert_increasing(
        &expected,
        "positions across interleaved appends to two streams",
    );
    let all = read_all_pages(e, expected[0] - 1, &EventFilter::all().category(&cat), 100).await;
    assert_eq!(positions(&all), expected);
    assert_eq!(ns(&all), (0..6).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// A subscription yields the stored events, then new ones as they are appended: exactly those,
/// in order, without duplicates.
pub async fn subscribe_catch_up_then_live<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(&*store).await;
    for n in 1..=5u64 {
        append(&*store, &stream, ExpectedVersion::Any, evs("E", n..=n)).await;
    }
    let mut sub = subscribe(&*store, h0, EventFilter::all().category(&cat)).await;
    let first = take_events(&mut sub, 5, "catch-up").await;
    assert_eq!(ns(&first), vec![1, 2, 3, 4, 5], "catch-up in order");
    let writer = {
        let store = store.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            for n in 6..=10u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                append(
                    &*store,
                    &stream,
                    ExpectedVersion::Exact(n - 1),
                    evs("E", n..=n),
                )
                .await;
            }
        })
    };
    let live = take_events(&mut sub, 5, "live").await;
    join(writer, "live appender").await;
    assert_eq!(ns(&live), vec![6, 7, 8, 9, 10], "live events in order");
    let all: Vec<RecordedEvent> = [first, live].concat();
    assert_increasing(&positions(&all), "subscription positions");
    assert_eq!(versions(&all), (1..=10).collect::<Vec<_>>());
    assert_quiet(&mut sub, "after the 10 events").await;
}

/// A subscription with a filter yields only matching events.
pub async fn subscribe_with_filter<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let (_, other) = unique_stream("other", "1");
    let h0 = head(e).await;
    let filter = EventFilter::all().category(&cat).event_type("Wanted");
    append(
        e,
        &stream,
        ExpectedVersion::Any,
        vec![ev("Wanted", 1), ev("Other", 2)],
    )
    .await;
    append(e, &other, ExpectedVersion::Any, vec![ev("Wanted", 3)]).await;
    let mut sub = subscribe(e, h0, filter).await;
    append(
        e,
        &stream,
        ExpectedVersion::Any,
        vec![ev("Other", 4), ev("Wanted", 5)],
    )
    .await;
    append(e, &other, ExpectedVersion::Any, vec![ev("Wanted", 6)]).await;
    append(e, &stream, ExpectedVersion::Any, vec![ev("Wanted", 7)]).await;
    let got = take_events(&mut sub, 3, "filtered subscription").await;
    assert_eq!(ns(&got), vec![1, 5, 7]);
    assert_quiet(&mut sub, "filtered subscription").await;
}

/// A subscription from a position starts right after it (resuming).
pub async fn subscribe_resumes_from_position<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let r = append(e, &stream, ExpectedVersion::Any, evs("E", 1..=6)).await;
    let mut sub = subscribe(e, r.positions[2], EventFilter::all().category(&cat)).await;
    let got = take_events(&mut sub, 3, "resumed subscription").await;
    assert_eq!(
        ns(&got),
        vec![4, 5, 6],
        "after = position of the 3rd yields the 4th onward"
    );
    assert_quiet(&mut sub, "resumed subscription").await;
    append(e, &stream, ExpectedVersion::Any, evs("E", 7..=7)).await;
    assert_eq!(
        ns(&[next_event(&mut sub, "live after resume").await]),
        vec![7]
    );
}

/// A consumer that does not poll while 500 events are appended still gets them all, in order.
pub async fn subscribe_slow_consumer_gets_everything<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (cat, stream) = unique_stream("order", "1");
    let h0 = head(e).await;
    let mut sub = subscribe(e, h0, EventFilter::all().category(&cat)).await;
    append(e, &stream, ExpectedVersion::Any, evs("E", 1..=1)).await;
    assert_eq!(next_event(&mut sub, "first event").await.version, 1);
    for batch in 0..50u64 {
        let from = 2 + batch * 10;
        append(e, &stream, ExpectedVersion::Any, evs("E", from..=from + 9)).await;
    }
    let got = take_events(&mut sub, 500, "slow consumer").await;
    assert_eq!(
        versions(&got),
        (2..=501).collect::<Vec<_>>(),
        "every event, in order"
    );
    assert_quiet(&mut sub, "slow consumer").await;
}

async fn concurrent_writers<E: EventStore + ?Sized + 'static>(
    store: &Arc<E>,
    cat: &str,
) -> Vec<tokio::task::JoinHandle<Vec<Uuid>>> {
    (0..4)
        .map(|w| {
            let store = store.clone();
            let stream = format!("{cat}-w{w}");
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..30u64 {
                    let event = ev("E", n);
                    ids.push(event.id);
                    append(&*store, &stream, ExpectedVersion::Any, vec![event]).await;
                    if n % 5 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ids
            })
        })
        .collect()
}

/// A subscriber never misses or repeats an event while writers append concurrently.
pub async fn subscribe_misses_nothing_under_concurrent_appends<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let cat = unique("order");
    let h0 = head(&*store).await;
    let mut sub = subscribe(&*store, h0, EventFilter::all().category(&cat)).await;
    let writers = concurrent_writers(&store, &cat).await;
    let got = take_events(&mut sub, 120, "subscriber during concurrent appends").await;
    let mut written = HashSet::new();
    for w in writers {
        written.extend(join(w, "writer").await);
    }
    assert_increasing(&positions(&got), "subscription under concurrency");
    let seen: HashSet<Uuid> = ids(&got).into_iter().collect();
    assert_eq!(seen.len(), 120, "no duplicates");
    assert_eq!(seen, written, "every appended event was delivered");
    let stored = read_all_pages(&*store, h0, &EventFilter::all().category(&cat), 50).await;
    assert_eq!(
        positions(&stored),
        positions(&got),
        "the subscriber saw the log as stored"
    );
    assert_quiet(&mut sub, "after concurrent appends").await;
}

/// A reader walking `read_all` page by page during concurrent appends never misses an event
/// that commits later with a lower position (the gap problem).
pub async fn read_all_misses_nothing_under_concurrent_appends<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let cat = unique("order");
    let h0 = head(&*store).await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        let filter = EventFilter::all().category(&cat);
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut after = h0;
            loop {
                // Read the flag before the page: an empty page after the writers finished
                // means everything was read.
                let finished = done.load(Ordering::SeqCst);
                let page = read_all(&*store, after, &filter, 7).await;
                match page.last() {
                    Some(last) => {
                        after = last.position;
                        seen.extend(page);
                    }
                    None if finished => return seen,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
    };
    let writers = concurrent_writers(&store, &cat).await;
    for w in writers {
        join(w, "writer").await;
    }
    done.store(true, Ordering::SeqCst);
    let seen = join(reader, "walking reader").await;
    let stored = read_all_pages(&*store, h0, &EventFilter::all().category(&cat), 50).await;
    assert_eq!(stored.len(), 120);
    assert_eq!(
        positions(&seen),
        positions(&stored),
        "the walking reader must see exactly the stored log: an event it missed committed \
         later with a lower position than one it had already read"
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshots and helpers

/// `load_snapshot` returns the highest version saved, whatever the order of saves.
pub async fn snapshot_save_and_load_latest<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let before = SystemTime::now();
    for v in [3u64, 5, 2, 4] {
        let what = format!("save_snapshot at {v}");
        expect_ok(e.save_snapshot(&stream, v, json!({ "v": v })).await, &what);
    }
    let after = SystemTime::now();
    let snap = expect_ok(e.load_snapshot(&stream).await, "load_snapshot");
    let Some(snap) = snap else {
        panic!("load_snapshot after saves returned None")
    };
    assert_eq!(snap.stream, stream);
    assert_eq!(
        snap.version, 5,
        "the highest version wins, not the last saved"
    );
    assert_eq!(snap.state, json!({ "v": 5 }));
    assert_time_between(snap.created_at, before, after, "snapshot created_at");
}

/// A stream without snapshots loads `None`.
pub async fn snapshot_load_missing_is_none<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    assert_eq!(
        expect_ok(e.load_snapshot(&stream).await, "load_snapshot"),
        None
    );
    let (_, missing) = unique_stream("order", "none");
    assert_eq!(
        expect_ok(e.load_snapshot(&missing).await, "load_snapshot"),
        None
    );
}

/// A snapshot version outside `1..=current` is `InvalidInput` and is not stored.
pub async fn snapshot_version_out_of_range_is_invalid<E: EventStore + ?Sized + 'static>(
    store: Arc<E>,
) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    append(e, &stream, ExpectedVersion::Any, evs("E", 1..=3)).await;
    for v in [0u64, 4, 100] {
        expect_err(
            e.save_snapshot(&stream, v, json!({})).await,
            ErrorCode::InvalidInput,
            &format!("save_snapshot at version {v} of a stream at version 3"),
        );
    }
    assert_eq!(
        expect_ok(e.load_snapshot(&stream).await, "load_snapshot"),
        None,
        "none stored"
    );
    let (_, missing) = unique_stream("order", "none");
    expect_err(
        e.save_snapshot(&missing, 1, json!({})).await,
        ErrorCode::InvalidInput,
        "save_snapshot of a stream with no events",
    );
    expect_ok(
        e.save_snapshot(&stream, 3, json!({"ok": true})).await,
        "save at the current version",
    );
}

/// `EventStoreExt::load_aggregate` is the latest snapshot plus the events after it.
pub async fn load_aggregate_is_snapshot_plus_tail<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let stream = five(e).await;
    let h = expect_ok(e.load_aggregate(&stream).await, "load_aggregate");
    assert!(h.snapshot.is_none());
    assert_eq!((versions(&h.events), h.version()), (vec![1, 2, 3, 4, 5], 5));
    expect_ok(
        e.save_snapshot(&stream, 3, json!({"sum": 6})).await,
        "save_snapshot",
    );
    let h = expect_ok(e.load_aggregate(&stream).await, "load_aggregate");
    assert_eq!(
        h.snapshot.as_ref().map(|s| (s.version, s.state.clone())),
        Some((3, json!({"sum": 6})))
    );
    assert_eq!((versions(&h.events), h.version()), (vec![4, 5], 5));
    expect_ok(
        e.save_snapshot(&stream, 5, json!({"sum": 15})).await,
        "save_snapshot",
    );
    let h = expect_ok(e.load_aggregate(&stream).await, "load_aggregate");
    assert_eq!((h.events.len(), h.version()), (0, 5));
    let (_, missing) = unique_stream("order", "none");
    let h = expect_ok(
        e.load_aggregate(&missing).await,
        "load_aggregate of a new stream",
    );
    assert_eq!(
        (h.snapshot.is_none(), h.events.len(), h.version()),
        (true, 0, 0)
    );
}

/// `EventStoreExt::stream_version` is 0 for a new stream and the last version otherwise.
pub async fn stream_version_helper<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let e = &*store;
    let (_, stream) = unique_stream("order", "1");
    assert_eq!(
        expect_ok(e.stream_version(&stream).await, "stream_version"),
        0
    );
    append(e, &stream, ExpectedVersion::Any, evs("E", 1..=3)).await;
    assert_eq!(
        expect_ok(e.stream_version(&stream).await, "stream_version"),
        3
    );
    append(e, &stream, ExpectedVersion::Any, evs("E", 4..=5)).await;
    assert_eq!(
        expect_ok(e.stream_version(&stream).await, "stream_version"),
        5
    );
}

// ---------------------------------------------------------------------------------------------
// Races

/// 8 tasks append 25 events each to one stream with `Exact` and retry on `Conflict`: the
/// stream ends with exactly 200 events, versions 1..=200, each event once.
pub async fn race_exact_appends_to_one_stream<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let (_, stream) = unique_stream("order", "1");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let e = &*store;
            let mut ids = Vec::new();
            let mut expected = expect_ok(e.stream_version(&stream).await, "stream_version");
            for n in 0..25u64 {
                // One event value per logical append: a retry reuses its id.
                let event = ev("E", t * 100 + n);
                ids.push(event.id);
                loop {
                    match e
                        .append(
                            &stream,
                            ExpectedVersion::Exact(expected),
                            vec![event.clone()],
                        )
                        .await
                    {
                        Ok(r) => {
                            assert!(r.written, "task {t}: a fresh event must be written");
                            expected = r.stream_version;
                            break;
                        }
                        Err(err) if err.code() == ErrorCode::Conflict => {
                            let Some(current) = err.current_version() else {
                                panic!("task {t}: a version Conflict must carry the version: {err}")
                            };
                            assert_ne!(
                                current, expected,
                                "task {t}: Conflict at the expected version"
                            );
                            expected = current;
                        }
                        Err(err) => panic!("task {t}: append failed: {err}"),
                    }
                }
            }
            ids
        }));
    }
    let mut written = HashSet::new();
    for task in tasks {
        written.extend(join(task, "Exact appender").await);
    }
    let events = read(&*store, &stream, ReadStream::forward()).await;
    assert_eq!(
        versions(&events),
        (1..=200).collect::<Vec<_>>(),
        "200 events, no gaps"
    );
    let got: HashSet<Uuid> = ids(&events).into_iter().collect();
    assert_eq!(got.len(), 200, "no event twice");
    assert_eq!(got, written, "every event once");
    assert_increasing(&positions(&events), "stream positions");
}

/// Concurrent appends to different streams get distinct positions, and `read_all` yields each
/// event exactly once, in position order.
pub async fn race_appends_to_many_streams<E: EventStore + ?Sized + 'static>(store: Arc<E>) {
    let cat = unique("order");
    let h0 = head(&*store).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let stream = format!("{cat}-{t}");
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for n in 0..25u64 {
                let r = append(&*store, &stream, ExpectedVersion::Exact(n), evs("E", n..=n)).await;
                positions.extend(r.positions);
            }
            positions
        }));
    }
    let mut all_positions = Vec::new();
    for task in tasks {
        let p = join(task, "stream appender").await;
        assert_increasing(&p, "one stream's positions");
        all_positions.extend(p);
    }
    let distinct: HashSet<u64> = all_positions.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "200 distinct global positions");
    let stored = read_all_pages(&*store, h0, &EventFilter::all().category(&cat), 64).await;
    all_positions.sort_unstable();
    assert_eq!(
        positions(&stored),
        all_positions,
        "read_all yields each event exactly once"
    );
    for t in 0..8u64 {
        let stream = format!("{cat}-{t}");
        let v: Vec<u64> = stored
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.version)
            .collect();
        assert_eq!(v, (1..=25).collect::<Vec<_>>(), "{stream} in version order");
    }
}
