//! Operation ids on the SQLite driver beyond the shared suite: the window (an id is forgotten
//! after it, and its record purged), records surviving a reopen, two drivers on one file
//! applying an id once, ids shared between `write_once` and `commit_once`, and a damaged record.

use std::sync::Arc;
use std::time::Duration;

use driver_sqlite::SqliteConfig;
use kernel_core::{
    Applied, ErrorCode, OperationId, Outcome, PutOptions, StorageDriver, Write, json,
};

mod common;

use common::{config, ok, open};

fn id(s: &str) -> OperationId {
    ok(OperationId::new(s), "operation id")
}

/// Rows of `kernel_operations`, counted through a connection of its own.
fn stored_records(config: &SqliteConfig) -> i64 {
    let conn = rusqlite::Connection::open(&config.path).unwrap();
    conn.query_row("SELECT COUNT(*) FROM kernel_operations", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_forgotten_after_the_window_and_its_record_purged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SqliteConfig {
        operation_window: Duration::from_secs(1),
        ..config(&dir)
    };
    let d = open(&cfg).await;
    let op = id("short-lived");
    let write = Write::put("k", json!(1), PutOptions::new().if_absent());
    let first = ok(d.write_once("ns", &op, write.clone()).await, "write_once");
    assert!(!first.replayed);
    let again = ok(d.write_once("ns", &op, write.clone()).await, "repeat");
    assert!(again.replayed, "inside the window the repeat is a replay");
    assert!(ok(d.operation("ns", &op).await, "operation").is_some());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        ok(d.operation("ns", &op).await, "operation after the window"),
        None,
        "an id past its window is forgotten"
    );
    // The same request is now a new write, judged on its own: the key is there, so the
    // create fails like a plain one would.
    let e = d.write_once("ns", &op, write).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists, "{e}");
    assert_eq!(e.context_value("operation_id"), Some("short-lived"), "{e}");
    // Another request under the same id is no longer a reuse either.
    let fresh = ok(
        d.write_once("ns", &op, Write::put("k", json!(2), PutOptions::new()))
            .await,
        "write_once after the window",
    );
    assert!(!fresh.replayed);
    assert_eq!(fresh.outcome.clone().into_entry().unwrap().version, 2);
    assert_eq!(stored_records(&cfg), 1, "the expired record was replaced");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(d.purge_expired().await, "purge_expired");
    assert_eq!(
        stored_records(&cfg),
        0,
        "purge_expired removes expired records"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_once_purges_a_bounded_batch_of_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    {
        // 10 records that expired long ago, as a long-running process would leave them.
        let conn = rusqlite::Connection::open(&cfg.path).unwrap();
        for i in 0..10 {
            conn.execute(
                "INSERT INTO kernel_operations VALUES ('ns', ?1, '', '{\"commit\":true}', 1)",
                [format!("old-{i}")],
            )
            .unwrap();
        }
    }
    assert_eq!(
        ok(d.operation("ns", &id("old-0")).await, "operation"),
        None,
        "expired records are invisible before they are purged"
    );
    ok(
        d.write_once(
            "ns",
            &id("new"),
            Write::put("k", json!(1), PutOptions::new()),
        )
        .await,
        "write_once",
    );
    let left = stored_records(&cfg);
    assert_eq!(
        left,
        10 + 1 - 4,
        "one write purges 4 expired records, not all"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    let op = id("durable");
    let write = Write::put("k", json!({"x": [1, 2.5]}), PutOptions::new().if_absent());
    let first = ok(d.write_once("ns", &op, write.clone()).await, "write_once");
    d.shutdown().await;
    drop(d);

    let d = open(&cfg).await;
    let again = ok(d.write_once("ns", &op, write).await, "repeat after reopen");
    assert!(again.replayed);
    assert_eq!(
        again.outcome, first.outcome,
        "the outcome, timestamps included"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_drivers_on_one_file_apply_an_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let (a, b) = (Arc::new(open(&cfg).await), Arc::new(open(&cfg).await));
    ok(
        a.put("ns", "k", json!(0), PutOptions::new()).await,
        "seed the key",
    );
    let op = id("shared");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let d = if i % 2 == 0 { a.clone() } else { b.clone() };
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let write = Write::put("k", json!(1), PutOptions::new().if_version(1));
            d.write_once("ns", &op, write).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(ok(t.await.unwrap(), "write_once"));
    }
    assert_eq!(
        outcomes.iter().filter(|o| !o.replayed).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.outcome == outcomes[0].outcome));
    let k = ok(b.get("ns", "k").await, "get").unwrap();
    assert_eq!(k.version, 2, "applied once");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_once_and_commit_once_do_not_share_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(&config(&dir)).await;

    let op = id("by-write");
    ok(
        d.write_once("ns", &op, Write::put("a", json!(1), PutOptions::new()))
            .await,
        "write_once",
    );
    let mut tx = ok(d.begin().await, "begin");
    ok(
        tx.put("ns", "b", json!(1), PutOptions::new()).await,
        "tx.put",
    );
    let e = tx.commit_once("ns", &op).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.context_value("operation_id"), Some("by-write"), "{e}");
    assert!(
        ok(d.get("ns", "b").await, "get").is_none(),
        "nothing written"
    );

    let op = id("by-tx");
    let tx = ok(d.begin().await, "begin");
    let applied = ok(tx.commit_once("ns", &op).await, "an empty commit_once");
    assert_eq!(applied, Applied::fresh(Outcome::Commit));
    let e = d
        .write_once("ns", &op, Write::put("c", json!(1), PutOptions::new()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert!(
        ok(d.get("ns", "c").await, "get").is_none(),
        "nothing written"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lost_a_race_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(&config(&dir)).await;
    ok(d.put("ns", "k", json!(0), PutOptions::new()).await, "put");
    let op = id("tx-race");
    let mut tx = ok(d.begin().await, "begin");
    ok(tx.get("ns", "k").await, "tx.get");
    ok(
        tx.put("ns", "k", json!(1), PutOptions::new()).await,
        "tx.put",
    );
    ok(
        d.put("ns", "k", json!(9), PutOptions::new()).await,
        "concurrent put",
    );
    let e = tx.commit_once("ns", &op).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert!(e.is_retryable(), "a lost race is retryable: {e}");
    assert_eq!(e.context_value("operation_id"), Some("tx-race"), "{e}");
    assert_eq!(ok(d.operation("ns", &op).await, "operation"), None);

    let mut tx = ok(d.begin().await, "begin again");
    ok(
        tx.put("ns", "k", json!(1), PutOptions::new()).await,
        "tx.put",
    );
    let applied = ok(tx.commit_once("ns", &op).await, "commit_once");
    assert!(!applied.replayed, "the id was free after the failed commit");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_is_corrupted_naming_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    let op = id("damaged");
    ok(
        d.write_once("ns", &op, Write::put("k", json!(1), PutOptions::new()))
            .await,
        "write_once",
    );
    {
        let conn = rusqlite::Connection::open(&cfg.path).unwrap();
        conn.execute("UPDATE kernel_operations SET outcome = '{\"put\": 1}'", [])
            .unwrap();
    }
    for e in [
        d.operation("ns", &op).await.unwrap_err(),
        d.write_once("ns", &op, Write::put("k", json!(1), PutOptions::new()))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
        assert_eq!(e.context_value("operation_id"), Some("damaged"), "{e}");
        assert_eq!(e.context_value("namespace"), Some("ns"), "{e}");
    }
    d.shutdown().await;
}
