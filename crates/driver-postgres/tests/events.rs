//! PostgreSQL-specific event guarantees: gapless global order under concurrent appenders, the
//! SQL entry point, and subscriptions surviving a dropped listener connection.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use driver_postgres::PostgresDriver;
use futures::StreamExt;
use kernel_core::{EventFilter, EventStore, ExpectedVersion, NewEvent, RecordedEvent};
use kernel_testkit::{expect_ok, join, unique, within};
use serde_json::json;

const APPENDERS: usize = 16;
const PER_APPENDER: usize = 25;

async fn next_event(sub: &mut kernel_core::EventSubscription, what: &str) -> RecordedEvent {
    match within(Duration::from_secs(15), what, sub.next()).await {
        Some(Ok(e)) => e,
        Some(Err(e)) => panic!("{what}: subscription failed: {e}"),
        None => panic!("{what}: subscription ended"),
    }
}

/// 16 appenders commit in parallel (each append holds only its stream's lock); a subscriber
/// from position 0 sees every event exactly once, in position order 1, 2, 3, ... with no gap,
/// and each stream's events in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_are_seen_once_in_order_without_gaps() {
    let db = common::database().await;
    let mut config = common::config(db.url());
    config.pool_size = APPENDERS + 2;
    let driver = Arc::new(expect_ok(PostgresDriver::connect(config).await, "connect"));
    let mut sub = expect_ok(driver.subscribe(0, EventFilter::all()).await, "subscribe");
    let category = unique("gapless");
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let driver = driver.clone();
        let stream = format!("{category}-{a}");
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_APPENDER {
                // Some appends carry two events, so multi-event batches interleave too.
                let mut events = vec![NewEvent::new("Tick", json!({"a": a, "i": i}))];
                if i % 5 == 0 {
                    events.push(NewEvent::new("Tock", json!({"a": a, "i": i})));
                }
                let r = expect_ok(
                    driver.append(&stream, ExpectedVersion::Any, events).await,
                    "append",
                );
                assert!(
                    r.positions.windows(2).all(|w| w[1] == w[0] + 1),
                    "one append's positions are consecutive: {r:?}"
                );
            }
        }));
    }
    let total = APPENDERS * (PER_APPENDER + PER_APPENDER / 5);
    let mut seen = HashSet::new();
    let mut last_version = [0u64; APPENDERS];
    for expected_position in 1..=total as u64 {
        let e = next_event(&mut sub, "gapless subscriber").await;
        assert_eq!(
            e.position, expected_position,
            "positions arrive in order without gaps"
        );
        assert!(seen.insert(e.id), "event {} delivered twice", e.id);
        let a: usize = e
            .stream
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        assert_eq!(
            e.version,
            last_version[a] + 1,
            "stream {} in version order",
            e.stream
        );
        last_version[a] = e.version;
    }
    for t in tasks {
        join(t, "appender").await;
    }
    assert_eq!(
        expect_ok(driver.head_position().await, "head"),
        total as u64
    );
    // A reader from 0 sees exactly the same sequence.
    let all = expect_ok(
        driver.read_all(0, &EventFilter::all(), total + 10).await,
        "read_all",
    );
    assert_eq!(all.len(), total);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    driver.shutdown().await;
}

/// An event appended by a plain SQL client with `kernel_append` gets a position and reaches a
/// subscriber; re-running the same call is idempotent; a version conflict is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_function_append_reaches_subscribers() {
    let (driver, db) = common::driver().await;
    let stream = format!("{}-1", unique("psql"));
    expect_ok(
        driver
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("First", json!(1))],
            )
            .await,
        "driver append",
    );
    let mut sub = expect_ok(driver.subscribe(0, EventFilter::all()).await, "subscribe");
    assert_eq!(
        next_event(&mut sub, "driver event").await.event_type,
        "First"
    );

    let sql = common::raw_client(db.url()).await;
    let events = json!([
        {"id": "6f1c1c52-7f1f-4a59-9c6f-3a0f8f0b2d11", "type": "FromSql", "payload": {"n": 2},
         "metadata": {"via": "psql"}, "correlation_id": "corr-1"}
    ]);
    let rows = sql
        .query(
            "SELECT version, id FROM kernel_append($1, $2, $3)",
            &[&stream, &1i64, &events],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_append: {e}"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    let e = next_event(&mut sub, "event appended through SQL").await;
    assert_eq!(
        (e.event_type.as_str(), e.version, e.position),
        ("FromSql", 2, 2)
    );
    assert_eq!(e.payload, json!({"n": 2}));
    assert_eq!(e.correlation_id.as_deref(), Some("corr-1"));

    // The same call again: idempotent, same version, nothing new.
    let again = sql
        .query(
            "SELECT version FROM kernel_append($1, $2, $3)",
            &[&stream, &1i64, &events],
        )
        .await
        .unwrap_or_else(|e| panic!("idempotent kernel_append: {e}"));
    assert_eq!(again[0].get::<_, i64>(0), 2);
    assert_eq!(expect_ok(driver.head_position().await, "head"), 2);

    // A wrong expected version is refused with the kernel's SQLSTATE and the current version.
    let err = sql
        .query(
            "SELECT * FROM kernel_append($1, $2, $3)",
            &[&stream, &7i64, &json!([{"type": "X"}])],
        )
        .await
        .expect_err("stale expected version must fail");
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db_err.code().code(), "KR004");
    assert_eq!(db_err.hint(), Some("2"));
    driver.shutdown().await;
}

/// Killing the listener's backend loses no event: the driver reconnects, wakes subscriptions,
/// and they catch up from their last position, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_listener_termination() {
    let db = common::database().await;
    let mut config = common::config(db.url());
    // Long poll: only notifications (and the reconnect wake-up) can deliver in time.
    config.subscription.poll_interval = Duration::from_secs(60);
    config.application_name = "kernel-reconnect-test".to_owned();
    let driver = expect_ok(PostgresDriver::connect(config).await, "connect");
    let admin = common::raw_client(db.url()).await;
    let listener_pid = || async {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'kernel-reconnect-test-listener'",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"))
            .first()
            .map(|r| r.get::<_, i32>(0))
    };
    let first_pid = within(Duration::from_secs(10), "listener up", async {
        loop {
            if let Some(pid) = listener_pid().await {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stream = format!("{}-1", unique("reconnect"));
    let mut sub = expect_ok(driver.subscribe(0, EventFilter::all()).await, "subscribe");
    expect_ok(
        driver
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("Before", json!(1))],
            )
            .await,
        "append",
    );
    assert_eq!(
        next_event(&mut sub, "live before the drop").await.position,
        1
    );

    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&first_pid])
        .await
        .unwrap_or_else(|e| panic!("terminate: {e}"))
        .get(0);
    assert!(killed, "listener backend terminated");
    // Appends while the listener is down or reconnecting.
    for i in 0..3 {
        expect_ok(
            driver
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("During", json!(i))],
                )
                .await,
            "append",
        );
    }
    for p in 2..=4 {
        assert_eq!(
            next_event(&mut sub, "catch-up after reconnect")
                .await
                .position,
            p
        );
    }
    let second_pid = within(Duration::from_secs(10), "listener back", async {
        loop {
            if let Some(pid) = listener_pid().await.filter(|p| *p != first_pid) {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_ne!(second_pid, first_pid);
    expect_ok(
        driver
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("After", json!(9))],
            )
            .await,
        "append",
    );
    let e = next_event(&mut sub, "live after the reconnect").await;
    assert_eq!((e.position, e.event_type.as_str()), (5, "After"));
    driver.shutdown().await;
    // Shutdown ends the subscription.
    assert!(
        within(Duration::from_secs(5), "end after shutdown", sub.next())
            .await
            .is_none()
    );
}

/// Two drivers (two pools, two listeners) on one database: an append through one reaches the
/// other's subscriber. The two-process version is tests/cross_process.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_through_one_driver_reaches_another() {
    let db = common::database().await;
    let mut slow = common::config(db.url());
    slow.subscription.poll_interval = Duration::from_secs(60);
    let reader = expect_ok(
        PostgresDriver::connect(slow.clone()).await,
        "connect reader",
    );
    let writer = expect_ok(PostgresDriver::connect(slow).await, "connect writer");
    let mut sub = expect_ok(reader.subscribe(0, EventFilter::all()).await, "subscribe");
    // Let the reader's listener LISTEN before the append (a notification sent earlier would be
    // caught only by the 60 s poll).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = format!("{}-1", unique("twodrivers"));
    expect_ok(
        writer
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Hello", json!({}))],
            )
            .await,
        "append",
    );
    let e = next_event(&mut sub, "event from the other driver").await;
    assert_eq!(e.stream, stream);
    writer.shutdown().await;
    reader.shutdown().await;
}

/// The classic gap: a transaction that appended first but commits last. Its event must get the
/// lower position, and no reader may see the later event's position before it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_never_skipped() {
    let (driver, db) = common::driver().await;
    let driver = Arc::new(driver);
    let category = unique("late");
    let slow_stream = format!("{category}-slow");
    let fast_stream = format!("{category}-fast");
    let mut sql = common::raw_client(db.url()).await;
    let tx = sql
        .transaction()
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    tx.query(
        "SELECT * FROM kernel_append($1, NULL, $2)",
        &[&slow_stream, &json!([{"type": "Slow"}])],
    )
    .await
    .unwrap_or_else(|e| panic!("kernel_append in an open transaction: {e}"));

    let fast = {
        let driver = driver.clone();
        let stream = fast_stream.clone();
        tokio::spawn(async move {
            expect_ok(
                driver
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Fast", json!({}))],
                    )
                    .await,
                "fast append",
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !fast.is_finished(),
        "the later append must wait for the older transaction"
    );
    assert_eq!(
        expect_ok(driver.head_position().await, "head"),
        0,
        "nothing is readable yet"
    );
    assert!(
        expect_ok(
            driver.read_all(0, &EventFilter::all(), 10).await,
            "read_all"
        )
        .is_empty()
    );

    tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    let fast = join(fast, "fast append").await;
    assert_eq!(
        fast.positions,
        vec![2],
        "the later append comes after the late commit"
    );
    let all = expect_ok(
        driver.read_all(0, &EventFilter::all(), 10).await,
        "read_all",
    );
    let order: Vec<(&str, u64)> = all
        .iter()
        .map(|e| (e.event_type.as_str(), e.position))
        .collect();
    assert_eq!(order, vec![("Slow", 1), ("Fast", 2)]);
    driver.shutdown().await;
}

/// Appends are written in batches, but a stream whose lock another transaction holds must not
/// stall the batch: the append to the free stream is written while the busy one waits, and both
/// keep per-stream and global order once the other transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_stream_does_not_stall_other_streams() {
    let (driver, db) = common::driver().await;
    let driver = Arc::new(driver);
    let category = unique("busy");
    let busy = format!("{category}-busy");
    let free = format!("{category}-free");
    let mut sql = common::raw_client(db.url()).await;
    let tx = sql
        .transaction()
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    tx.query(
        "SELECT * FROM kernel_append($1, NULL, $2)",
        &[&busy, &json!([{"type": "Sql"}])],
    )
    .await
    .unwrap_or_else(|e| panic!("kernel_append in an open transaction: {e}"));

    let append = |stream: String, ty: &'static str| {
        let driver = driver.clone();
        tokio::spawn(async move {
            expect_ok(
                driver
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new(ty, json!({}))],
                    )
                    .await,
                ty,
            )
        })
    };
    let blocked = append(busy.clone(), "Blocked");
    let written = append(free.clone(), "Free");

    // The free stream's event is committed while the busy stream's append still waits (it has
    // no position yet: the open transaction also holds the horizon).
    let checker = common::raw_client(db.url()).await;
    let stored = |stream: String| {
        let checker = &checker;
        async move {
            checker
                .query_one(
                    "SELECT count(*) FROM kernel_events WHERE stream = $1",
                    &[&stream],
                )
                .await
                .unwrap_or_else(|e| panic!("count {stream}: {e}"))
                .get::<_, i64>(0)
        }
    };
    within(
        Duration::from_secs(10),
        "the free stream's append commits",
        async {
            while stored(free.clone()).await == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(
        stored(busy.clone()).await,
        0,
        "nothing of the busy stream is committed yet"
    );
    assert!(!blocked.is_finished() && !written.is_finished());

    tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
    let blocked = join(blocked, "busy append").await;
    let written = join(written, "free append").await;
    assert_eq!(blocked.stream_version, 2, "after the SQL client's event");
    assert_eq!(written.stream_version, 1);
    let all = expect_ok(
        driver.read_all(0, &EventFilter::all(), 10).await,
        "read_all",
    );
    let order: Vec<(&str, u64)> = all
        .iter()
        .map(|e| (e.event_type.as_str(), e.position))
        .collect();
    assert_eq!(order, vec![("Sql", 1), ("Free", 2), ("Blocked", 3)]);
    driver.shutdown().await;
}

/// `kernel_append_batch` checks and writes every append of a batch on its own: a failed
/// expected version or a repeated id writes nothing of that append and nothing else changes;
/// two appends to one stream in a batch run in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_appends_are_independent() {
    let (driver, db) = common::driver().await;
    let sql = common::raw_client(db.url()).await;
    let first = expect_ok(
        driver
            .append(
                "order-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Seed", json!({}))],
            )
            .await,
        "seed",
    );
    let seed_id: uuid::Uuid = sql
        .query_one("SELECT id FROM kernel_events WHERE stream = 'order-1'", &[])
        .await
        .unwrap_or_else(|e| panic!("seed id: {e}"))
        .get(0);
    let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
    // 1: order-2 fresh; 2: order-1 expecting version 5 (it is at 1); 3: order-1 repeating the
    // seed's id; 4: order-2 again, expecting the version append 1 leaves.
    let rows = sql
        .query(
            "SELECT o_status, o_stream_version FROM kernel_append_batch( \
               ARRAY['order-2', 'order-1', 'order-1', 'order-2'], ARRAY[1, 3, 0, 3]::smallint[], \
               ARRAY[NULL, 5, NULL, 1]::bigint[], ARRAY[1, 1, 1, 1], $1, \
               ARRAY['A', 'B', 'C', 'D'], ARRAY['{}', '{}', '{}', '{}']::jsonb[], \
               ARRAY['{}', '{}', '{}', '{}']::jsonb[], ARRAY[NULL, NULL, NULL, NULL]::text[], \
               ARRAY[NULL, NULL, NULL, NULL]::text[], false)",
            &[&vec![ids[0], ids[1], seed_id, ids[3]]],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_append_batch: {e}"));
    let statuses: Vec<(i16, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        statuses,
        vec![(0, Some(1)), (2, Some(1)), (1, Some(1)), (0, Some(2))],
        "written, version mismatch, stored id, written after the first"
    );
    let types: Vec<(String, String, i64)> = sql
        .query(
            "SELECT stream, event_type, version FROM kernel_events ORDER BY stream, version",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("events: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = |s: &str, t: &str, v: i64| (s.to_owned(), t.to_owned(), v);
    assert_eq!(
        types,
        vec![
            expect("order-1", "Seed", 1),
            expect("order-2", "A", 1),
            expect("order-2", "D", 2)
        ]
    );
    // The SQL client's batch gets positions from the next pass, after the seed.
    expect_ok(
        driver
            .append(
                "order-3",
                ExpectedVersion::Any,
                vec![NewEvent::new("After", json!({}))],
            )
            .await,
        "append after the batch",
    );
    let all = expect_ok(
        driver.read_all(0, &EventFilter::all(), 10).await,
        "read_all",
    );
    let order: Vec<(&str, u64)> = all
        .iter()
        .map(|e| (e.event_type.as_str(), e.position))
        .collect();
    assert_eq!(first.positions, vec![1]);
    assert_eq!(order, vec![("Seed", 1), ("A", 2), ("D", 3), ("After", 4)]);
    driver.shutdown().await;
}
