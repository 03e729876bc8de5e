//! Failover with WAIT-based durability on a private 6-node Redis Cluster of this test's own
//! (it kills a master, so it does not share the cluster of `tests/cluster.rs`).
//!
//! With `wait_replicas = 1`, events are appended one by one to a stream; mid-way the master
//! serving the event slot (`{ev}`) is killed with `SIGKILL`, the cluster promotes its replica,
//! the killed node is started again and rejoins as the new master's replica (until then no
//! replica can confirm a write: WAIT 1 fails), and appending goes on all along, retrying each
//! append with the same event id until it succeeds.
//! Errors during the failover must be retryable ones (the transient statuses: not applied, or
//! applied but unconfirmed). Afterwards every acknowledged event must be readable, in order,
//! without gaps, and nothing else may be in the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driver_redis::{RedisConfig, RedisDriver};
use kernel_core::{
    ErrorCode, ErrorStatus, EventFilter, EventStore, ExpectedVersion, NewEvent, ReadStream, Uuid,
    json,
};
use kernel_testkit::private::PrivateRedisCluster;

/// Events appended in all; the master is killed after [`KILL_AFTER`] of them.
const TOTAL: usize = 60;
const KILL_AFTER: usize = 20;
/// How long one event may take to be appended, failover included.
const APPEND_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_master_failover() {
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::start)
        .await
        .expect("starting the private cluster panicked");
    let cluster = Arc::new(cluster);
    let prefix = "failover:";
    let mut config = RedisConfig::new(cluster.url());
    config.key_prefix = prefix.to_owned();
    config.pool_size = 2;
    config.operation_timeout = Duration::from_secs(3);
    config.wait_replicas = 1;
    config.wait_timeout = Duration::from_secs(2);
    let driver = RedisDriver::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connecting to the private cluster failed: {e}"));

    // Every event key shares the `{ev}` hash tag, so they all live in this slot.
    let slot = cluster.slot_of(&format!("{prefix}{{ev}}:head"));
    let stream = "orders-failover";
    let mut acknowledged: Vec<(Uuid, u64)> = Vec::new();
    let mut transient_errors = Vec::new();
    let mut old_master = None;
    let mut recovery = None;

    for i in 0..TOTAL {
        if i == KILL_AFTER {
            let c = Arc::clone(&cluster);
            let killed = tokio::task::spawn_blocking(move || c.kill_master_of_slot(slot))
                .await
                .expect("killing the master panicked");
            old_master = Some(killed);
            // The cluster promotes the replica by itself; then the killed node is started again
            // (as an orchestrator would) and rejoins as the new master's replica, so WAIT 1 can
            // be met again.
            let c = Arc::clone(&cluster);
            recovery = Some(tokio::spawn(async move {
                let promoted = c.wait_for_promotion(slot, killed).await;
                let r = Arc::clone(&c);
                tokio::task::spawn_blocking(move || r.restart_node(killed))
                    .await
                    .expect("restarting the killed node panicked");
                c.wait_for_replica(killed).await;
                promoted
            }));
        }
        let id = Uuid::new_v4();
        let started = Instant::now();
        loop {
            let event = NewEvent::new("Tick", json!({ "i": i })).with_id(id);
            match driver
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
            {
                Ok(result) => {
                    assert_eq!(result.positions.len(), 1, "{result:?}");
                    acknowledged.push((id, result.stream_version));
                    break;
                }
                Err(e) => {
                    // Only transient failures are acceptable, and the append is retried with
                    // the same id: an exact re-append is an idempotent success.
                    assert!(
                        matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Timeout)
                            && matches!(
                                e.status(),
                                ErrorStatus::Temporary | ErrorStatus::MaybeApplied
                            ),
                        "append {i} failed with a non-retryable error: {e} (status {:?})",
                        e.status()
                    );
                    assert!(
                        i >= KILL_AFTER,
                        "append {i} failed before any node was killed: {e}"
                    );
                    assert!(
                        started.elapsed() < APPEND_DEADLINE,
                        "append {i} still failing after {} s: {e}\n{}",
                        APPEND_DEADLINE.as_secs(),
                        cluster.logs()
                    );
                    transient_errors.push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    let old_master = old_master.expect("the master was killed");
    let new_master = recovery
        .expect("the recovery was started")
        .await
        .expect("the failover and restart of the killed node panicked");
    assert_ne!(new_master, old_master);
    assert_eq!(cluster.master_of_slot(slot), new_master);
    // The kill happened mid-way: the appends right after it could not reach the dead master.
    assert!(
        !transient_errors.is_empty(),
        "no append failed after the master of the event slot was killed"
    );

    let read = driver
        .read_stream(stream, ReadStream::forward())
        .await
        .unwrap_or_else(|e| panic!("reading the stream after the failover failed: {e}"));
    let read_ids: Vec<Uuid> = read.iter().map(|e| e.id).collect();
    let acked_ids: Vec<Uuid> = acknowledged.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        read_ids, acked_ids,
        "the stream after the failover is not exactly the acknowledged events in order"
    );
    for (n, event) in read.iter().enumerate() {
        assert_eq!(event.version, n as u64 + 1, "gap in stream versions");
        assert_eq!(event.payload, json!({ "i": n }));
        assert_eq!(
            event.version, acknowledged[n].1,
            "the version read differs from the one acknowledged"
        );
    }
    // The global log holds them too, at consecutive positions.
    let all = driver
        .read_all(0, &EventFilter::default(), 10_000)
        .await
        .unwrap_or_else(|e| panic!("reading the log after the failover failed: {e}"));
    let log_ids: Vec<Uuid> = all.iter().map(|e| e.id).collect();
    assert_eq!(log_ids, acked_ids);
    for pair in all.windows(2) {
        assert_eq!(pair[1].position, pair[0].position + 1, "gap in positions");
    }
    eprintln!(
        "failover: slot {slot} moved from port {old_master} to {new_master}; {} events \
         acknowledged, {} transient errors during the failover (first: {:?})",
        acknowledged.len(),
        transient_errors.len(),
        transient_errors.first()
    );
    if let Err(e) = driver.shutdown().await {
        eprintln!("shutdown after the failover test: {e}");
    }
}
