//! Data-loss detection: a second connection (standing in for an operator restoring an older copy
//! or replacing the file) changes or deletes the generation marker, or deletes the newest
//! events; the running driver refuses appends, lock operations and subscriptions with a
//! permanent `Corrupted` error, reports `status()` unhealthy, and goes on after
//! `acknowledge_data_loss()`.

use std::time::Duration;

use driver_sqlite::{SqliteConfig, SqliteDriver};
use futures::StreamExt;
use kernel_core::{
    ErrorCode, ErrorStatus, EventFilter, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions,
    StorageDriver, json,
};

mod common;

use common::{config, ok, open};

/// Runs `sql` on a connection of its own, as another process would.
fn tamper(config: &SqliteConfig, sql: &str) {
    let conn = rusqlite::Connection::open(&config.path).unwrap();
    conn.execute_batch(sql).unwrap();
}

async fn append_one(d: &SqliteDriver, stream: &str) -> kernel_core::Result<u64> {
    let r = d
        .append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Happened", json!({}))],
        )
        .await?;
    Ok(r.positions[0])
}

fn assert_loss(e: &kernel_core::Error, says: &str, what: &str) {
    assert_eq!(e.code(), ErrorCode::Corrupted, "{what}: {e}");
    assert_eq!(e.status(), ErrorStatus::Permanent, "{what}: {e}");
    let text = e.to_string();
    assert!(text.contains("lost the kernel's data"), "{what}: {e}");
    assert!(text.contains(says), "{what}: expected {says:?} in {e}");
    assert!(text.contains("acknowledge_data_loss"), "{what}: {e}");
}

async fn assert_unhealthy(d: &SqliteDriver, says: &str) {
    let status = ok(d.status().await, "status");
    assert!(!status.healthy, "status must be unhealthy: {status:?}");
    let error = status.details.get("error").cloned().unwrap_or_default();
    assert!(error.contains(says), "status names the loss: {error}");
}

async fn assert_healthy(d: &SqliteDriver) {
    let status = ok(d.status().await, "status");
    assert!(status.healthy, "{status:?}");
    assert!(!status.details.contains_key("error"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_marker_is_refused_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    ok(append_one(&d, "orders-1").await, "append");
    let lease = ok(d.try_acquire("job", Duration::from_secs(30)).await, "lock").unwrap();
    assert_healthy(&d).await;
    let before = ok(d.status().await, "status").details["generation"].clone();

    tamper(
        &cfg,
        "UPDATE kernel_generation SET marker = 'restored-elsewhere' WHERE id = 1",
    );
    let e = append_one(&d, "orders-1").await.unwrap_err();
    assert_loss(&e, "is now restored-elsewhere", "append");
    assert_eq!(
        e.context_value("generation_expected"),
        Some(before.as_str())
    );
    assert_eq!(
        e.context_value("generation_found"),
        Some("restored-elsewhere")
    );
    assert_eq!(e.context_value("stream"), Some("orders-1"), "{e}");
    assert!(d.data_loss().is_some());
    assert_unhealthy(&d, "restored-elsewhere").await;
    // Once found, every guarded operation is refused at once, before any I/O.
    let e = d
        .try_acquire("other", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_loss(&e, "restored-elsewhere", "try_acquire");
    assert_loss(&d.release(&lease).await.unwrap_err(), "restored", "release");
    assert_loss(
        &d.extend(&lease, Duration::from_secs(5)).await.unwrap_err(),
        "restored",
        "extend",
    );
    let e = d.subscribe(0, EventFilter::all()).await.err().unwrap();
    assert_loss(&e, "restored", "subscribe");
    // Documents and reads have no history to contradict: they go on.
    ok(d.put("ns", "k", json!(1), PutOptions::new()).await, "put");
    assert_eq!(
        ok(d.read_all(0, &EventFilter::all(), 10).await, "read_all").len(),
        1
    );

    let adopted = ok(d.acknowledge_data_loss().await, "acknowledge_data_loss");
    assert_eq!(
        adopted, "restored-elsewhere",
        "the file's marker is adopted"
    );
    assert!(d.data_loss().is_none());
    assert_healthy(&d).await;
    assert_eq!(ok(append_one(&d, "orders-1").await, "append after ack"), 2);
    ok(
        d.try_acquire("other", Duration::from_secs(30)).await,
        "lock after ack",
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_marker_is_a_loss_and_acknowledging_recreates_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    tamper(&cfg, "DELETE FROM kernel_generation");
    assert_unhealthy(&d, "is gone").await;
    assert_loss(
        &append_one(&d, "s-1").await.unwrap_err(),
        "is gone",
        "append",
    );
    let marker = ok(d.acknowledge_data_loss().await, "acknowledge_data_loss");
    assert!(!marker.is_empty());
    assert_healthy(&d).await;
    assert_eq!(ok(d.status().await, "status").details["generation"], marker);
    ok(append_one(&d, "s-1").await, "append after ack");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_newest_events_are_a_loss_and_positions_go_on_after_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    for _ in 0..5 {
        ok(append_one(&d, "s-1").await, "append");
    }
    // What a restore of a copy taken after the third event looks like to the driver.
    tamper(&cfg, "DELETE FROM kernel_events WHERE position > 3");
    let e = append_one(&d, "s-2").await.unwrap_err();
    assert_loss(&e, "ends at global position 3, below position 5", "append");
    assert_eq!(e.context_value("head"), Some("3"));
    assert_eq!(e.context_value("seen_position"), Some("5"));
    assert_unhealthy(&d, "below position 5").await;
    assert_eq!(ok(d.head_position().await, "head_position"), 3);

    ok(d.acknowledge_data_loss().await, "acknowledge_data_loss");
    assert_healthy(&d).await;
    assert_eq!(
        ok(append_one(&d, "s-2").await, "append after ack"),
        4,
        "positions go on from the file's head"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_operations_notice_a_loss_themselves_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    tamper(
        &cfg,
        "UPDATE kernel_generation SET marker = 'other' WHERE id = 1",
    );
    // The last check (at open) is trusted for a second; after it the lock operation reads the
    // marker inside its own transaction.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = d
        .try_acquire("job", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_loss(&e, "is now other", "try_acquire");
    assert_eq!(e.context_value("key"), Some("job"), "{e}");
    assert!(d.data_loss().is_some());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_ends_with_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let d = open(&cfg).await;
    ok(append_one(&d, "s-1").await, "append");
    let mut sub = ok(d.subscribe(0, EventFilter::all()).await, "subscribe");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the first event in time")
        .expect("an item");
    assert_eq!(ok(first, "first event").position, 1);

    tamper(
        &cfg,
        "UPDATE kernel_generation SET marker = 'other' WHERE id = 1",
    );
    // Nothing is appended: the subscription's safety-net re-read (1 s) checks the marker once
    // its last check is a second old.
    let item = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the subscription ends in time")
        .expect("an error item before the end");
    assert_loss(&item.unwrap_err(), "is now other", "subscription");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_driver_adopts_what_it_finds_and_sharing_drivers_see_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    let a = open(&cfg).await;
    tamper(
        &cfg,
        "UPDATE kernel_generation SET marker = 'other' WHERE id = 1",
    );
    // A new process cannot know what was there before: it adopts the file as it is.
    let b = open(&cfg).await;
    assert_healthy(&b).await;
    assert_unhealthy(&a, "is now other").await;
    ok(a.acknowledge_data_loss().await, "acknowledge_data_loss");

    // Two drivers appending to one file raise each other's heads, never lower them.
    for i in 0..20 {
        let d = if i % 2 == 0 { &a } else { &b };
        ok(append_one(d, "shared-1").await, "append");
    }
    ok(a.read_all(0, &EventFilter::all(), 100).await, "read_all");
    assert_healthy(&a).await;
    assert_healthy(&b).await;
    a.shutdown().await;
    b.shutdown().await;
}
