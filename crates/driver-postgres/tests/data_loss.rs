//! Data-loss detection: a generation marker deleted or replaced, and an event log that went back
//! (a restore from an older backup), each done from a second connection behind the driver's
//! back, on a database of the test's own.

mod common;

use std::time::Duration;

use driver_postgres::PostgresDriver;
use futures::StreamExt;
use kernel_core::{
    ErrorCode, ErrorStatus, EventFilter, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions,
    StorageDriver,
};
use kernel_testkit::{expect_err, expect_ok, unique, within};
use serde_json::json;

async fn append(d: &PostgresDriver, stream: &str) -> kernel_core::Result<u64> {
    let r = d
        .append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Happened", json!({}))],
        )
        .await?;
    Ok(r.positions[0])
}

/// `status()` is unhealthy, naming the loss; the loss is what `data_loss()` reports.
async fn unhealthy(d: &PostgresDriver, needle: &str) {
    let status = expect_ok(d.status().await, "status");
    assert!(!status.healthy, "status must report the loss: {status:?}");
    let reason = status.details.get("error").cloned().unwrap_or_default();
    assert!(reason.contains(needle), "the reason names it: {reason}");
    let lost = d
        .data_loss()
        .unwrap_or_else(|| panic!("data_loss() must report it"));
    assert!(reason.contains(lost.message()), "{reason} / {lost}");
}

/// Appends and lock operations fail with the permanent `Corrupted`; documents go on.
async fn refused(d: &PostgresDriver, needle: &str) {
    let e = expect_err(
        append(d, &format!("order-{}", unique("s"))).await,
        ErrorCode::Corrupted,
        "append",
    );
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert!(e.to_string().contains(needle), "{e}");
    assert!(e.to_string().contains("acknowledge_data_loss"), "{e}");
    let e = expect_err(
        d.try_acquire(&unique("lock"), Duration::from_secs(5)).await,
        ErrorCode::Corrupted,
        "try_acquire",
    );
    assert!(e.to_string().contains(needle), "{e}");
    let mut sub = expect_ok(d.subscribe(0, EventFilter::all()).await, "subscribe");
    let first = within(Duration::from_secs(5), "subscription", sub.next()).await;
    match first {
        Some(Err(e)) => assert_eq!(e.code(), ErrorCode::Corrupted, "{e}"),
        other => panic!("a new subscription must end with the loss: {other:?}"),
    }
    expect_ok(
        d.put(&unique("ns"), "k", json!(1), PutOptions::new()).await,
        "documents go on",
    );
}

async fn healthy(d: &PostgresDriver) {
    let status = expect_ok(d.status().await, "status");
    assert!(status.healthy, "{status:?}");
    assert!(d.data_loss().is_none());
    expect_ok(append(d, &format!("order-{}", unique("s"))).await, "append");
    let lease = expect_ok(
        d.try_acquire(&unique("lock"), Duration::from_secs(5)).await,
        "try_acquire",
    );
    assert!(lease.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_replaced_marker_is_a_loss_until_acknowledged() {
    let (d, db) = common::driver().await;
    let raw = common::raw_client(db.url()).await;
    let status = expect_ok(d.status().await, "status");
    let marker = status
        .details
        .get("generation")
        .cloned()
        .unwrap_or_else(|| panic!("status names the marker: {status:?}"));
    healthy(&d).await;

    // Gone: status sees it at once.
    raw.batch_execute("DELETE FROM kernel_generation")
        .await
        .unwrap_or_else(|e| panic!("delete the marker: {e}"));
    unhealthy(&d, "is gone").await;
    refused(&d, "is gone").await;
    let e = expect_ok(
        d.data_loss()
            .ok_or_else(|| kernel_core::Error::internal("no loss")),
        "data_loss",
    );
    assert_eq!(
        e.context_value("generation_expected"),
        Some(marker.as_str())
    );
    assert_eq!(e.context_value("generation_found"), Some("none"));

    // Acknowledged: a new marker, everything goes again.
    let adopted = expect_ok(d.acknowledge_data_loss().await, "acknowledge");
    assert_ne!(adopted, marker);
    healthy(&d).await;

    // Replaced: a lock operation finds it on its own (at most a second after the last check).
    raw.batch_execute("UPDATE kernel_generation SET marker = 'restored-elsewhere'")
        .await
        .unwrap_or_else(|e| panic!("replace the marker: {e}"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = expect_err(
        d.try_acquire(&unique("lock"), Duration::from_secs(5)).await,
        ErrorCode::Corrupted,
        "try_acquire after the marker changed",
    );
    assert_eq!(
        e.context_value("generation_found"),
        Some("restored-elsewhere")
    );
    unhealthy(&d, "is now restored-elsewhere").await;
    refused(&d, "is now restored-elsewhere").await;

    // A driver that connects now adopts what it finds: it cannot know what was there before.
    let other = expect_ok(
        PostgresDriver::connect(common::config(db.url())).await,
        "connect",
    );
    healthy(&other).await;
    other.shutdown().await;

    assert_eq!(
        expect_ok(d.acknowledge_data_loss().await, "acknowledge"),
        "restored-elsewhere"
    );
    healthy(&d).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_log_that_went_back_is_a_loss() {
    let (d, db) = common::driver().await;
    let raw = common::raw_client(db.url()).await;
    let stream = format!("order-{}", unique("s"));
    for _ in 0..3 {
        expect_ok(append(&d, &stream).await, "append");
    }
    let mut sub = expect_ok(d.subscribe(0, EventFilter::all()).await, "subscribe");
    for _ in 0..3 {
        let next = within(Duration::from_secs(5), "subscription", sub.next()).await;
        assert!(matches!(next, Some(Ok(_))), "{next:?}");
    }

    // A restore from a backup taken before these events: the marker is the same.
    raw.batch_execute("TRUNCATE kernel_event_log, kernel_events")
        .await
        .unwrap_or_else(|e| panic!("truncate the events: {e}"));
    // The live subscription notices on its own and ends with the loss.
    let next = within(Duration::from_secs(5), "subscription", sub.next()).await;
    match next {
        Some(Err(e)) => {
            assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
            assert_eq!(e.context_value("head_position"), Some("0"), "{e}");
            assert_eq!(e.context_value("seen_position"), Some("3"), "{e}");
        }
        other => panic!("the subscription must end with the loss: {other:?}"),
    }
    unhealthy(&d, "below position 3").await;
    refused(&d, "below position 3").await;

    expect_ok(d.acknowledge_data_loss().await, "acknowledge");
    assert_eq!(
        expect_ok(append(&d, &stream).await, "append after acknowledging"),
        1,
        "positions continue from the database's head"
    );
    healthy(&d).await;
    d.shutdown().await;
}

/// Positions a server crash dropped (sequencer passes commit without waiting for the WAL) are
/// given again, identically, by the next pass: the check runs one before it compares, so this is
/// not a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_given_again_by_a_pass_are_not_a_loss() {
    let (d, db) = common::driver().await;
    let raw = common::raw_client(db.url()).await;
    let stream = format!("order-{}", unique("s"));
    for _ in 0..3 {
        expect_ok(append(&d, &stream).await, "append");
    }
    // The log is append-only (0006): only the maintenance role may delete from it.
    raw.batch_execute(
        "BEGIN; SET LOCAL ROLE kernel_maintenance; \
         DELETE FROM kernel_event_log WHERE position > 1; COMMIT",
    )
    .await
    .unwrap_or_else(|e| panic!("drop the newest positions: {e}"));
    let status = expect_ok(d.status().await, "status");
    assert!(status.healthy, "{status:?}");
    let events = expect_ok(d.read_all(0, &EventFilter::all(), 10).await, "read_all");
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3],
        "the same positions again"
    );
    d.shutdown().await;
}
