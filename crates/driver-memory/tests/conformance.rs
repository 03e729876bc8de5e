//! The kernel-testkit conformance suites on the in-process driver: every behaviour of every
//! trait, on `Arc<MemoryDriver>` and on `Arc<dyn Trait>`. A fresh driver per test, no guard.

use driver_memory::MemoryDriver;

kernel_testkit::storage_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::event_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::lock_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::rate_limit_suite!(async { (MemoryDriver::new(), ()) });

/// A new in-process driver (a restarted process) never hands out a fencing token below one an
/// earlier driver gave for the same key: counters start from the clock.
#[tokio::test]
async fn a_new_driver_continues_fencing_tokens_upwards() {
    use kernel_core::Lock;
    let ttl = std::time::Duration::from_secs(30);
    let first = MemoryDriver::new();
    let mut last = 0;
    for _ in 0..3 {
        let lease = first.try_acquire("job", ttl).await.unwrap().unwrap();
        first.release(&lease).await.unwrap();
        last = lease.fencing_token;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let restarted = MemoryDriver::new();
    let lease = restarted.try_acquire("job", ttl).await.unwrap().unwrap();
    assert!(
        lease.fencing_token > last,
        "{} after {last}",
        lease.fencing_token
    );
}

/// `status()` (the health probe) does not walk the entries under the lock writers need: live
/// entries stay unknown, the stored count (a length per namespace) is in the details.
#[tokio::test]
async fn status_does_not_walk_the_entries() {
    use kernel_core::{PutOptions, StorageDriver, json};
    let d = MemoryDriver::new();
    d.put("a", "1", json!(1), PutOptions::new()).await.unwrap();
    d.put("b", "1", json!(1), PutOptions::new()).await.unwrap();
    let status = d.status().await.unwrap();
    assert!(status.healthy);
    assert_eq!(status.namespaces, Some(2));
    assert_eq!(status.entries, None);
    assert_eq!(
        status.details.get("entries_stored").map(String::as_str),
        Some("2")
    );
}
