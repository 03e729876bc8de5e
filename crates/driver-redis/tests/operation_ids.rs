//! Operation ids on Redis beyond the shared suite: the record's key and expiry, the window
//! setting, exact replays of numbers Lua could not hold, and damaged records.

use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use fred::interfaces::{ClientLike, KeysInterface};
use kernel_core::{
    Applied, BatchPut, ErrorCode, OperationId, Outcome, PutOptions, StorageDriver, Write, json,
};
use kernel_testkit::redis::RedisTestServer;
use kernel_testkit::{STEP_TIMEOUT, expect_err, expect_ok, unique, within};

async fn driver(server: &RedisTestServer, window: Duration) -> RedisDriver {
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = server.prefix().to_owned();
    config.pool_size = 2;
    config.operation_window = window;
    expect_ok(RedisDriver::connect(config).await, "connect")
}

fn op(name: &str) -> OperationId {
    expect_ok(OperationId::new(unique(name)), "operation id")
}

async fn once(d: &RedisDriver, ns: &str, id: &OperationId, write: Write) -> Applied {
    expect_ok(
        within(STEP_TIMEOUT, "write_once", d.write_once(ns, id, write)).await,
        "write_once",
    )
}

#[tokio::test]
async fn an_operation_id_is_forgotten_after_the_window() {
    let server = RedisTestServer::start().await;
    let window = Duration::from_secs(1);
    let d = driver(&server, window).await;
    let ns = unique("ns");
    let id = op("short");
    let write = Write::put("k", json!("v"), PutOptions::new());
    let first = once(&d, &ns, &id, write.clone()).await;
    assert!(!first.replayed);

    // The record is one key in the namespace's hash tag, expiring with the window.
    let record = format!("{}{{d:{ns}}}:op:{id}", server.prefix());
    let raw = server.raw_client().await;
    let ttl: i64 = raw.pttl(&record).await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "PTTL of {record}: {ttl}");

    assert!(once(&d, &ns, &id, write.clone()).await.replayed);
    assert_eq!(
        expect_ok(d.operation(&ns, &id).await, "operation"),
        Some(first.outcome.clone())
    );

    tokio::time::sleep(window + Duration::from_millis(300)).await;
    let exists: i64 = raw.exists(&record).await.unwrap();
    assert_eq!(exists, 0, "Redis expired the record");
    assert_eq!(
        expect_ok(d.operation(&ns, &id).await, "operation after the window"),
        None,
        "the id is forgotten"
    );
    let again = once(&d, &ns, &id, write).await;
    assert!(!again.replayed, "after the window the id names a new write");
    let Outcome::Put(entry) = again.outcome else {
        panic!("{:?}", again.outcome)
    };
    assert_eq!(entry.version, 2, "applied a second time");
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn replays_return_numbers_and_times_exactly() {
    let server = RedisTestServer::start().await;
    let d = driver(&server, Duration::from_secs(60)).await;
    let ns = unique("ns");
    // Beyond what a Lua number (a double) or cjson's 14 digits hold.
    let value = json!({
        "max": u64::MAX,
        "min": i64::MIN,
        "digits": 12_345_678_901_234_567u64,
        "tiny": 5e-324,
        "third": 1.0 / 3.0,
        "text": "é\u{0}\"",
    });
    let mut metadata = kernel_core::Metadata::new();
    metadata.insert("n".into(), json!(9_007_199_254_740_993u64));
    let write = Write::PutMany(vec![
        BatchPut::new("a", value.clone()).with_options(
            PutOptions::new()
                .ttl(Duration::from_secs(3600))
                .metadata(metadata),
        ),
        BatchPut::new("b", json!(1)),
    ]);
    let id = op("exact");
    let first = once(&d, &ns, &id, write.clone()).await;
    let Outcome::PutMany(entries) = &first.outcome else {
        panic!("{:?}", first.outcome)
    };
    assert_eq!(entries[0].value, value);
    assert_eq!(entries[0], expect_ok(d.get(&ns, "a").await, "get").unwrap());
    let again = once(&d, &ns, &id, write).await;
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome, "bit-for-bit");
    assert_eq!(
        expect_ok(d.operation(&ns, &id).await, "operation"),
        Some(first.outcome)
    );
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn commit_once_records_empty_transactions_and_refuses_a_write_id() {
    let server = RedisTestServer::start().await;
    let d = driver(&server, Duration::from_secs(60)).await;
    let ns = unique("ns");

    let id = op("empty-tx");
    let tx = expect_ok(d.begin().await, "begin");
    let first = expect_ok(tx.commit_once(&ns, &id).await, "commit_once");
    assert_eq!(first, Applied::fresh(Outcome::Commit));
    let tx = expect_ok(d.begin().await, "begin");
    assert!(expect_ok(tx.commit_once(&ns, &id).await, "commit_once").replayed);

    // An id used by a write names that write: a transaction may not reuse it.
    let id = op("write");
    once(&d, &ns, &id, Write::put("k", json!(1), PutOptions::new())).await;
    let mut tx = expect_ok(d.begin().await, "begin");
    expect_ok(
        tx.put(&ns, "other", json!(2), PutOptions::new()).await,
        "stage",
    );
    let e = expect_err(
        tx.commit_once(&ns, &id).await,
        ErrorCode::Conflict,
        "commit_once",
    );
    assert_eq!(e.context_value("operation_id"), Some(id.as_str()), "{e}");
    assert!(expect_ok(d.get(&ns, "other").await, "get").is_none());

    // And a write may not reuse a transaction's id.
    let id = op("tx");
    let mut tx = expect_ok(d.begin().await, "begin");
    expect_ok(tx.put(&ns, "t", json!(1), PutOptions::new()).await, "stage");
    expect_ok(tx.commit_once(&ns, &id).await, "commit_once");
    let e = expect_err(
        d.write_once(&ns, &id, Write::put("t", json!(1), PutOptions::new()))
            .await,
        ErrorCode::Conflict,
        "write_once",
    );
    assert_eq!(e.context_value("namespace"), Some(ns.as_str()), "{e}");
    assert_eq!(expect_ok(d.get(&ns, "t").await, "get").unwrap().version, 1);

    // A commit that loses its race records nothing.
    let id = op("lost");
    let mut tx = expect_ok(d.begin().await, "begin");
    expect_ok(tx.get(&ns, "t").await, "read");
    expect_ok(
        d.put(&ns, "t", json!(2), PutOptions::new()).await,
        "concurrent put",
    );
    expect_ok(tx.put(&ns, "t", json!(3), PutOptions::new()).await, "stage");
    let e = expect_err(
        tx.commit_once(&ns, &id).await,
        ErrorCode::Conflict,
        "commit",
    );
    assert!(e.is_retryable(), "{e}");
    assert_eq!(expect_ok(d.operation(&ns, &id).await, "operation"), None);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_damaged_record_is_corrupted_and_blocks_the_write() {
    let server = RedisTestServer::start().await;
    let d = driver(&server, Duration::from_secs(60)).await;
    let ns = unique("ns");
    let id = op("damaged");
    let record = format!("{}{{d:{ns}}}:op:{id}", server.prefix());
    let raw = server.raw_client().await;
    let _: () = raw
        .set(&record, "not a record", None, None, false)
        .await
        .unwrap();
    let e = expect_err(
        d.operation(&ns, &id).await,
        ErrorCode::Corrupted,
        "operation",
    );
    assert_eq!(e.context_value("operation_id"), Some(id.as_str()), "{e}");
    expect_err(
        d.write_once(&ns, &id, Write::put("k", json!(1), PutOptions::new()))
            .await,
        ErrorCode::Corrupted,
        "write_once",
    );
    assert!(
        expect_ok(d.get(&ns, "k").await, "get").is_none(),
        "nothing written"
    );
    raw.quit().await.unwrap();
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_window_setting_is_checked_on_connect() {
    let mut c = RedisConfig::new("redis://127.0.0.1:6379");
    c.operation_window = Duration::ZERO;
    let e = expect_err(RedisDriver::connect(c).await, ErrorCode::Config, "connect");
    assert_eq!(
        e.context_value("setting"),
        Some("redis.operation_window_ms"),
        "{e}"
    );
}
