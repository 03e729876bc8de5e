//! The whole conformance suite against a private 6-node Redis Cluster (3 masters, 3 replicas)
//! started by this test binary on loopback ports ([`PrivateRedisCluster::shared`]), on the
//! concrete driver and through `Arc<dyn Trait>`, plus what differs in cluster mode: namespace
//! listing across every master, and cross-slot operations refused with `Unsupported`.
//! Each test gets its own key prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use kernel_core::{
    ErrorCode, Lock, OperationId, PutOptions, Quota, RateLimiter, StorageDriver, json,
};
use kernel_testkit::private::PrivateRedisCluster;

/// A key prefix no other test of this binary uses (the guard of the suites' factory).
#[allow(dead_code)]
struct Prefix(String);

fn config() -> RedisConfig {
    let cluster = PrivateRedisCluster::shared();
    let mut config = RedisConfig::new(cluster.url());
    config.key_prefix = format!("kt-{}:", uuid::Uuid::new_v4().simple());
    config.pool_size = 1;
    config.operation_timeout = Duration::from_secs(10);
    config
}

async fn driver() -> (RedisDriver, Prefix) {
    let config = config();
    let prefix = Prefix(config.key_prefix.clone());
    match RedisDriver::connect(config).await {
        Ok(driver) => (driver, prefix),
        Err(e) => panic!("connecting the Redis driver to the private cluster failed: {e}"),
    }
}

kernel_testkit::storage_suite!(driver());
kernel_testkit::event_suite!(driver());
kernel_testkit::lock_suite!(driver());
kernel_testkit::rate_limit_suite!(driver());

// ---------------------------------------------------------------------------------------------
// What differs in cluster mode.

/// The master (port) serving namespace `ns`'s keys for `prefix`.
fn master_of_namespace(prefix: &str, ns: &str) -> u16 {
    let cluster = PrivateRedisCluster::shared();
    cluster.master_of_slot(cluster.slot_of(&format!("{prefix}{{d:{ns}}}:meta")))
}

/// `count` namespaces per master (`prefix`-relative names `ns-N`), found by trying names.
fn namespaces_per_master(prefix: &str, count: usize) -> BTreeMap<u16, Vec<String>> {
    let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for n in 0..512 {
        let ns = format!("ns-{n}");
        let master = master_of_namespace(prefix, &ns);
        let list = by_master.entry(master).or_default();
        if list.len() < count {
            list.push(ns);
        }
        if by_master.len() == 3 && by_master.values().all(|l| l.len() >= count) {
            return by_master;
        }
    }
    panic!("512 namespace names did not cover the 3 masters {count} times: {by_master:?}");
}

async fn cluster_test(body: impl AsyncFnOnce(RedisDriver, String)) {
    let (driver, Prefix(prefix)) = driver().await;
    body(driver.clone(), prefix).await;
    if let Err(e) = driver.shutdown().await {
        panic!("shutdown failed: {e}");
    }
}

fn run(test: impl AsyncFnOnce() + Send) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime");
    runtime.block_on(test());
}

#[test]
fn the_driver_runs_in_cluster_mode_on_three_masters() {
    run(async || {
        cluster_test(async |driver, _| {
            let status = driver.status().await.expect("status");
            assert!(status.healthy, "{status:?}");
            assert_eq!(
                status.details.get("redis_mode").map(String::as_str),
                Some("cluster"),
                "{status:?}"
            );
            assert_eq!(PrivateRedisCluster::shared().masters().len(), 3);
        })
        .await;
    });
}

/// `list_namespaces` scans every master: namespaces spread over the 3 masters are all listed.
#[test]
fn namespaces_on_every_master_are_listed() {
    run(async || {
        cluster_test(async |driver, prefix| {
            let by_master = namespaces_per_master(&prefix, 2);
            let mut expected = BTreeSet::new();
            for names in by_master.values() {
                for ns in names {
                    driver
                        .put(ns, "k", json!(1), PutOptions::new())
                        .await
                        .unwrap_or_else(|e| panic!("put in {ns}: {e}"));
                    expected.insert(ns.clone());
                }
            }
            let listed: BTreeSet<String> = driver
                .list_namespaces()
                .await
                .expect("list_namespaces")
                .into_iter()
                .map(|info| info.name)
                .collect();
            assert_eq!(listed, expected, "namespaces by master: {by_master:?}");
        })
        .await;
    });
}

/// A transaction over two namespaces — on two masters, or on one master in two slots — is
/// `Unsupported` at commit and writes nothing; within one namespace it commits.
#[test]
fn a_transaction_across_namespaces_is_unsupported_and_writes_nothing() {
    run(async || {
        cluster_test(async |driver, prefix| {
            let by_master = namespaces_per_master(&prefix, 2);
            let masters: Vec<&Vec<String>> = by_master.values().collect();
            let other_master = (masters[0][0].clone(), masters[1][0].clone());
            let same_master = (masters[2][0].clone(), masters[2][1].clone());
            for (a, b) in [other_master, same_master] {
                let mut tx = driver.begin().await.expect("begin");
                tx.put(&a, "x", json!(1), PutOptions::new())
                    .await
                    .expect("staged put a");
                tx.put(&b, "y", json!(2), PutOptions::new())
                    .await
                    .expect("staged put b");
                let err = tx
                    .commit()
                    .await
                    .expect_err("a cross-slot commit must fail");
                assert_eq!(err.code(), ErrorCode::Unsupported, "{a} + {b}: {err}");
                assert!(!err.is_retryable(), "{err}");
                let named = err.context_value("namespaces").unwrap_or_default();
                assert!(named.contains(&a) && named.contains(&b), "{err}");
                assert!(driver.get(&a, "x").await.expect("get a").is_none());
                assert!(driver.get(&b, "y").await.expect("get b").is_none());

                let mut tx = driver.begin().await.expect("begin");
                tx.put(&a, "x", json!(1), PutOptions::new())
                    .await
                    .expect("staged put a");
                tx.put(&b, "y", json!(2), PutOptions::new())
                    .await
                    .expect("staged put b");
                let id = OperationId::new(format!("tx-{a}-{b}")).expect("id");
                let err = tx
                    .commit_once(&a, &id)
                    .await
                    .expect_err("a cross-slot commit_once must fail");
                assert_eq!(err.code(), ErrorCode::Unsupported, "{a} + {b}: {err}");
                assert!(driver.get(&a, "x").await.expect("get a").is_none());
                assert!(
                    driver
                        .operation(&a, &id)
                        .await
                        .expect("operation")
                        .is_none()
                );

                // One namespace: fine.
                let mut tx = driver.begin().await.expect("begin");
                tx.put(&a, "x", json!(1), PutOptions::new())
                    .await
                    .expect("staged put");
                tx.put(&a, "z", json!(3), PutOptions::new())
                    .await
                    .expect("staged put");
                tx.commit().await.expect("a one-namespace commit");
                assert_eq!(
                    driver.get(&a, "z").await.expect("get").map(|e| e.value),
                    Some(json!(3))
                );
            }
        })
        .await;
    });
}

/// Locks and rate limits on keys spread over every master.
#[test]
fn locks_and_rate_limits_work_on_every_master() {
    run(async || {
        cluster_test(async |driver, prefix| {
            let cluster = PrivateRedisCluster::shared();
            let mut masters = BTreeSet::new();
            for n in 0..64 {
                let key = format!("res-{n}");
                masters.insert(
                    cluster.master_of_slot(cluster.slot_of(&format!("{prefix}{{l:{key}}}:holder"))),
                );
                let lease = driver
                    .try_acquire(&key, Duration::from_secs(5))
                    .await
                    .expect("try_acquire")
                    .expect("a free lock");
                assert!(
                    driver
                        .try_acquire(&key, Duration::from_secs(5))
                        .await
                        .expect("second")
                        .is_none()
                );
                driver.release(&lease).await.expect("release");
                let quota = Quota::per_minute(1);
                assert!(driver.check(&key, &quota, 1).await.expect("check").allowed);
                assert!(!driver.check(&key, &quota, 1).await.expect("check").allowed);
            }
            assert_eq!(masters.len(), 3, "64 lock keys did not reach every master");
        })
        .await;
    });
}
