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
