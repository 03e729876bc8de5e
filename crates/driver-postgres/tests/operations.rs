//! Operation ids on PostgreSQL beyond the shared suite: the window (ids forgotten after it),
//! the purge of expired records, what is stored, and how transactions and writes share ids.

mod common;

use std::time::Duration;

use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_core::{
    DeleteCondition, ErrorCode, ErrorStatus, OperationId, Outcome, PutOptions, StorageDriver, Write,
};
use kernel_testkit::postgres::TestDatabase;
use kernel_testkit::{expect_err, expect_ok, unique};
use serde_json::json;

fn id(name: &str) -> OperationId {
    expect_ok(OperationId::new(unique(name)), "operation id")
}

/// A driver on a fresh database whose operation window is `window`.
async fn driver_with_window(window: Duration) -> (PostgresDriver, TestDatabase) {
    let db = common::database().await;
    let config = PostgresConfig {
        operation_window: window,
        ..common::config(db.url())
    };
    let driver = expect_ok(PostgresDriver::connect(config).await, "connect");
    (driver, db)
}

/// Rows of `kernel_operations` in `namespace`, read behind the driver's back.
async fn stored(db: &TestDatabase, namespace: &str) -> i64 {
    common::raw_client(db.url())
        .await
        .query_one(
            "SELECT count(*) FROM kernel_operations WHERE namespace = $1",
            &[&namespace],
        )
        .await
        .unwrap_or_else(|e| panic!("count kernel_operations: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_forgotten_after_the_window() {
    let (d, db) = driver_with_window(Duration::from_secs(1)).await;
    let ns = unique("ns");
    let op = id("short");
    let write = Write::put("k", json!(1), PutOptions::new());
    let first = expect_ok(d.write_once(&ns, &op, write.clone()).await, "first");
    assert!(!first.replayed);
    let again = expect_ok(d.write_once(&ns, &op, write.clone()).await, "repeat");
    assert!(again.replayed, "within the window the repeat replays");
    assert_eq!(
        expect_ok(d.operation(&ns, &op).await, "operation"),
        Some(first.outcome.clone())
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        expect_ok(d.operation(&ns, &op).await, "operation after the window"),
        None,
        "the id is forgotten after the window"
    );
    let late = expect_ok(d.write_once(&ns, &op, write).await, "after the window");
    assert!(
        !late.replayed,
        "after the window the same id is a new write"
    );
    let Outcome::Put(entry) = late.outcome else {
        panic!("put outcome: {:?}", late.outcome)
    };
    assert_eq!(entry.version, 2, "applied a second time");
    // The expired record was taken over: the id now names the new write, for another window.
    let other = Write::put("k", json!(2), PutOptions::new());
    let e = expect_err(
        d.write_once(&ns, &op, other).await,
        ErrorCode::Conflict,
        "another request under the renewed id",
    );
    assert_eq!(e.context_value("operation_id"), Some(op.as_str()));
    assert_eq!(stored(&db, &ns).await, 1, "one row per id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_are_purged_as_operations_are_recorded() {
    let (d, db) = driver_with_window(Duration::from_millis(300)).await;
    let ns = unique("ns");
    for i in 0..5 {
        let write = Write::put(format!("k{i}"), json!(i), PutOptions::new());
        expect_ok(d.write_once(&ns, &id("old"), write).await, "write_once");
    }
    assert_eq!(stored(&db, &ns).await, 5);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A new driver purges after its first recorded operation (and every 64th after it).
    let config = PostgresConfig {
        operation_window: Duration::from_secs(60),
        ..common::config(db.url())
    };
    let fresh = expect_ok(PostgresDriver::connect(config).await, "connect");
    let write = Write::put("new", json!(1), PutOptions::new());
    expect_ok(fresh.write_once(&ns, &id("new"), write).await, "write_once");
    assert_eq!(
        stored(&db, &ns).await,
        1,
        "the expired records went, the live one stays"
    );
    assert_eq!(
        expect_ok(fresh.purge_operations().await, "purge"),
        0,
        "nothing left to purge"
    );
    fresh.shutdown().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_no_record() {
    let (d, db) = common::driver().await;
    let ns = unique("ns");
    expect_ok(d.put(&ns, "k", json!(1), PutOptions::new()).await, "put");
    let cases = [
        (
            Write::put("k", json!(2), PutOptions::new().if_absent()),
            ErrorCode::AlreadyExists,
        ),
        (
            Write::put("k", json!(2), PutOptions::new().if_version(7)),
            ErrorCode::Conflict,
        ),
        (
            Write::delete("k", DeleteCondition::IfVersion(7)),
            ErrorCode::Conflict,
        ),
        (
            Write::put("k", json!("nul \u{0}"), PutOptions::new()),
            ErrorCode::InvalidInput,
        ),
    ];
    for (write, code) in cases {
        let what = format!("{write:?}");
        let e = expect_err(d.write_once(&ns, &id("fail"), write).await, code, &what);
        assert!(e.context_value("operation_id").is_some(), "{what}: {e}");
        assert_eq!(
            e.context_value("namespace"),
            Some(ns.as_str()),
            "{what}: {e}"
        );
    }
    // A transaction that loses its race at commit records nothing either.
    let mut tx = expect_ok(d.begin().await, "begin");
    expect_ok(tx.get(&ns, "k").await, "tx get");
    expect_ok(
        tx.put(&ns, "t", json!(1), PutOptions::new()).await,
        "tx put",
    );
    expect_ok(
        d.put(&ns, "k", json!(3), PutOptions::new()).await,
        "concurrent put",
    );
    let op = id("tx");
    let e = expect_err(
        tx.commit_once(&ns, &op).await,
        ErrorCode::Conflict,
        "commit_once",
    );
    assert_eq!(e.status(), ErrorStatus::Temporary, "{e}");
    assert_eq!(e.context_value("operation_id"), Some(op.as_str()), "{e}");
    assert_eq!(stored(&db, &ns).await, 0, "no record of any failure");
    assert!(expect_ok(d.get(&ns, "t").await, "get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_outcomes_replay_exactly() {
    let (d, db) = common::driver().await;
    let ns = unique("ns");
    let value = json!({
        "floats": [1e16, 3.0, 0.1, 5e-324, f64::MAX, -2.5e-300],
        "ints": [u64::MAX, i64::MIN, 0],
        "text": "ünïcödé ✓",
        "nested": {"b": [true, null], "a": {}}
    });
    let mut metadata = kernel_core::Metadata::new();
    metadata.insert("m".to_owned(), json!(1.5));
    let options = PutOptions::new()
        .ttl(Duration::from_secs(3600))
        .metadata(metadata);
    let op = id("exact");
    let write = Write::put("k", value.clone(), options);
    let first = expect_ok(d.write_once(&ns, &op, write.clone()).await, "first");
    let again = expect_ok(d.write_once(&ns, &op, write).await, "repeat");
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome, "bit for bit, times included");
    let Outcome::Put(entry) = &again.outcome else {
        panic!("{:?}", again.outcome)
    };
    assert_eq!(entry.value, value);
    assert!(entry.expires_at.is_some());
    // What is stored: the outcome as JSON, and an expiry one window from the write.
    let row = common::raw_client(db.url())
        .await
        .query_one(
            "SELECT outcome ? 'put', length(fingerprint), \
             extract(epoch FROM expires_at - now())::float8 FROM kernel_operations \
             WHERE namespace = $1 AND operation_id = $2",
            &[&ns, &op.as_str()],
        )
        .await
        .unwrap_or_else(|e| panic!("read the record: {e}"));
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), 64, "a SHA-256 fingerprint");
    let left: f64 = row.get(2);
    assert!(
        left > 23.0 * 3600.0 && left <= 24.0 * 3600.0,
        "expires one window (24 h) after the write: {left} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_writes_do_not_share_an_id() {
    let (d, _db) = common::driver().await;
    let ns = unique("ns");
    let op = id("shared");
    let mut tx = expect_ok(d.begin().await, "begin");
    expect_ok(
        tx.put(&ns, "a", json!(1), PutOptions::new()).await,
        "tx put",
    );
    let committed = expect_ok(tx.commit_once(&ns, &op).await, "commit_once");
    assert!(!committed.replayed);
    let e = expect_err(
        d.write_once(&ns, &op, Write::put("b", json!(1), PutOptions::new()))
            .await,
        ErrorCode::Conflict,
        "a write under a transaction's id",
    );
    assert!(
        e.message().contains("commit"),
        "names what the id was used for: {e}"
    );

    let op = id("write");
    expect_ok(
        d.write_once(&ns, &op, Write::put("c", json!(1), PutOptions::new()))
            .await,
        "write_once",
    );
    let tx = expect_ok(d.begin().await, "begin");
    expect_err(
        tx.commit_once(&ns, &op).await,
        ErrorCode::Conflict,
        "a transaction under a write's id",
    );

    // An empty transaction commits once too: the id is recorded.
    let op = id("empty");
    let tx = expect_ok(d.begin().await, "begin");
    assert!(!expect_ok(tx.commit_once(&ns, &op).await, "empty commit_once").replayed);
    let tx = expect_ok(d.begin().await, "begin");
    assert!(expect_ok(tx.commit_once(&ns, &op).await, "again").replayed);
    let tx = expect_ok(d.begin().await, "begin");
    expect_err(
        tx.commit_once("", &op).await,
        ErrorCode::InvalidInput,
        "commit_once in no namespace",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_window_is_refused_at_connect() {
    let db = common::database().await;
    for window in [Duration::ZERO, Duration::from_secs(400 * 24 * 3600)] {
        let config = PostgresConfig {
            operation_window: window,
            ..common::config(db.url())
        };
        let e = expect_err(
            PostgresDriver::connect(config).await,
            ErrorCode::Config,
            "connect",
        );
        assert_eq!(
            e.context_value("setting"),
            Some("postgres.operation_window_ms"),
            "{e}"
        );
    }
}
