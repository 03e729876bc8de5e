//! The whole conformance suite (storage, events, locks, rate limits) through Redis Sentinel: a
//! private master, its replica and one sentinel started by this test binary
//! ([`PrivateRedisSentinel::shared`]); the driver connects with a `redis-sentinel://` URL
//! naming the sentinel, which tells it where the master is. Plus WAIT-based durability on that
//! replica, and a Sentinel failover on a set-up of its own.

use std::time::{Duration, Instant};

use driver_redis::{RedisConfig, RedisDriver};
use kernel_core::{ErrorCode, ErrorStatus, PutOptions, StorageDriver, json};
use kernel_testkit::private::PrivateRedisSentinel;

/// The guard of the suites' factory: the test's key prefix.
#[allow(dead_code)]
struct Prefix(String);

fn test_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.key_prefix = format!("kt-{}:", uuid::Uuid::new_v4().simple());
    config.pool_size = 1;
    config.operation_timeout = Duration::from_secs(10);
    config
}

async fn driver() -> (RedisDriver, Prefix) {
    let config = test_config(PrivateRedisSentinel::shared().url());
    let prefix = Prefix(config.key_prefix.clone());
    match RedisDriver::connect(config).await {
        Ok(driver) => (driver, prefix),
        Err(e) => panic!("connecting the Redis driver through Sentinel failed: {e}"),
    }
}

kernel_testkit::storage_suite!(driver());
kernel_testkit::event_suite!(driver());
kernel_testkit::lock_suite!(driver());
kernel_testkit::rate_limit_suite!(driver());

fn run(test: impl AsyncFnOnce() + Send) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime");
    runtime.block_on(test());
}

/// The driver reached the master the sentinel names, and a write there is confirmed by the
/// replica with WAIT (`wait_replicas = 1`).
#[test]
fn through_sentinel_the_driver_writes_to_the_master_and_wait_confirms_the_replica() {
    run(async || {
        let sentinel = PrivateRedisSentinel::shared();
        let mut config = test_config(sentinel.url());
        config.wait_replicas = 1;
        config.wait_timeout = Duration::from_secs(5);
        let driver = RedisDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let status = driver.status().await.expect("status");
        assert_eq!(
            status.details.get("role").map(String::as_str),
            Some("master"),
            "{status:?}"
        );
        let entry = driver
            .put("docs", "k", json!({"n": 1}), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("a put confirmed by the replica: {e}"));
        assert_eq!(entry.version, 1);
        driver.shutdown().await.expect("shutdown");

        // Asking for more replicas than exist: the write is applied on the master but the
        // call fails, saying so, with the "maybe applied" status.
        let mut config = test_config(sentinel.url());
        config.wait_replicas = 2;
        config.wait_timeout = Duration::from_millis(100);
        let prefix = config.key_prefix.clone();
        let driver = RedisDriver::connect(config).await;
        let err = driver.expect_err("the generation marker's WAIT 2 cannot be met at connect");
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert_eq!(err.status(), ErrorStatus::MaybeApplied, "{err}");
        assert_eq!(err.context_value("replicas_confirmed"), Some("1"), "{err}");
        assert_eq!(err.context_value("replicas_required"), Some("2"), "{err}");
        assert!(
            err.to_string().contains("applied on the Redis primary"),
            "{err}"
        );
        assert!(!prefix.is_empty());
    });
}

/// Sentinel fails the master over to the replica; the driver follows it (after transient,
/// retryable errors) and the document written and confirmed by WAIT before the kill is there.
#[test]
fn the_driver_follows_a_sentinel_failover() {
    run(async || {
        let sentinel = tokio::task::spawn_blocking(|| PrivateRedisSentinel::start(1))
            .await
            .expect("starting the Sentinel set-up panicked");
        let mut config = test_config(sentinel.url());
        config.wait_replicas = 1;
        config.wait_timeout = Duration::from_secs(5);
        config.operation_timeout = Duration::from_secs(2);
        let driver = RedisDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        driver
            .put("docs", "before", json!(1), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("put before the failover: {e}"));
        let old = sentinel.kill_master();
        let new = sentinel.wait_for_failover(old).await;
        assert_ne!(old, new);
        // WAIT 1 cannot be met any more (the old master is gone), so the writes after the
        // failover run without it: a second driver, on the same set-up.
        let mut config = test_config(sentinel.url());
        config.operation_timeout = Duration::from_secs(2);
        let after = RedisDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect after the failover: {e}"));
        after
            .put("docs", "after", json!(2), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("put after the failover: {e}"));
        drop(after);
        // The first driver reconnects through the sentinel to the new master.
        let deadline = Instant::now() + Duration::from_secs(60);
        let found = loop {
            match driver.get("docs", "before").await {
                Ok(found) => break found,
                Err(e) => {
                    assert!(
                        e.is_retryable() || e.status() == ErrorStatus::MaybeApplied,
                        "a non-retryable error during the failover: {e}"
                    );
                    assert!(Instant::now() < deadline, "still failing after 60 s: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(found.map(|e| e.value), Some(json!(1)));
        let status = driver.status().await.expect("status");
        assert_eq!(
            status.details.get("role").map(String::as_str),
            Some("master")
        );

        // The new master has no replica now: a write is applied there, but WAIT 1 cannot be
        // met, and the call says so.
        let err = driver
            .put("docs", "unconfirmed", json!(3), PutOptions::new())
            .await
            .expect_err("WAIT 1 without a replica");
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert_eq!(err.status(), ErrorStatus::MaybeApplied, "{err}");
        assert_eq!(
            err.context_value("outcome"),
            Some("applied_unconfirmed"),
            "{err}"
        );
        assert_eq!(err.context_value("replicas_confirmed"), Some("0"), "{err}");
        assert_eq!(err.context_value("namespace"), Some("docs"), "{err}");
        let applied = driver.get("docs", "unconfirmed").await.expect("get");
        assert_eq!(
            applied.map(|e| e.value),
            Some(json!(3)),
            "applied on the master"
        );
    });
}
