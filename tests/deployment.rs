//! Whole kernels booted from configuration the way production connects (docs/deployment.md):
//! PostgreSQL with `sslmode=verify-full` and `rediss://` in one kernel (documents and locks on
//! PostgreSQL, events and rate limits on Redis), a kernel on a 3-master Redis Cluster with
//! `wait_replicas = 1`, and one through Sentinel. Every server is private to this test binary,
//! on loopback, started and stopped by it.

use std::time::Duration;

use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{ExpectedVersion, NewEvent, PutOptions, Quota, ReadStream, json};
use kernel_testkit::private::{
    PrivatePostgres, PrivateRedis, PrivateRedisCluster, PrivateRedisSentinel, TestCa,
};

fn config(vars: &[(&str, String)]) -> KernelConfig {
    KernelConfig::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())))
        .unwrap_or_else(|e| panic!("the configuration is valid: {e}"))
}

/// Writes and reads through every role the kernel has, and checks its health.
async fn exercise(kernel: &Kernel, what: &str) {
    let health = kernel.health().await;
    assert!(health.healthy, "{what}: healthy at boot: {health:?}");
    let stores = kernel.stores();
    stores
        .storage
        .put("deploy", "k", json!({"via": what}), PutOptions::new())
        .await
        .unwrap_or_else(|e| panic!("{what}: put: {e}"));
    let got = stores.storage.get("deploy", "k").await.unwrap();
    assert_eq!(got.map(|e| e.value), Some(json!({"via": what})));
    stores
        .events
        .append(
            "deploy-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Booted", json!({"via": what}))],
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: append: {e}"));
    let events = stores
        .events
        .read_stream("deploy-1", ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{what}");
    let lease = stores
        .locks
        .try_acquire("deploy", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{what}: lock: {e}"))
        .unwrap_or_else(|| panic!("{what}: the lock is free"));
    stores.locks.release(&lease).await.unwrap();
    let decision = stores
        .rate_limiter
        .check("deploy", &Quota::per_second(5), 1)
        .await
        .unwrap_or_else(|e| panic!("{what}: rate limit: {e}"));
    assert!(decision.allowed, "{what}");
    kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_boots_over_verify_full_and_rediss() {
    let ca = TestCa::new();
    let pg = PrivatePostgres::start_tls(&ca).await;
    let redis = PrivateRedis::start_tls(&ca, &[]).await;
    let ca_file = ca.ca_cert().display().to_string();
    let kernel = Kernel::boot(config(&[
        ("KERNEL_BACKENDS_STORAGE", "postgres".into()),
        ("KERNEL_BACKENDS_LOCKS", "postgres".into()),
        ("KERNEL_BACKENDS_EVENTS", "redis".into()),
        ("KERNEL_BACKENDS_RATE_LIMITS", "redis".into()),
        (
            "DATABASE_URL",
            format!("{}?sslmode=verify-full&sslrootcert={ca_file}", pg.url()),
        ),
        // Only the test CA: a system root must not make this pass.
        ("KERNEL_POSTGRES_TLS_SYSTEM_ROOTS", "false".into()),
        ("REDIS_URL", redis.url().to_owned()),
        ("KERNEL_REDIS_TLS_CA_FILE", ca_file.clone()),
        ("KERNEL_REDIS_TLS_SYSTEM_ROOTS", "false".into()),
    ]))
    .await
    .unwrap_or_else(|e| panic!("boot over verify-full and rediss: {e}"));
    assert!(redis.url().starts_with("rediss://"));
    exercise(&kernel, "tls").await;

    // The same settings with the other CA: boot fails, saying it is the certificate.
    let err = Kernel::boot(config(&[
        ("KERNEL_STORAGE_MODE", "postgres".into()),
        (
            "DATABASE_URL",
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                pg.url(),
                ca.other_ca_cert().display()
            ),
        ),
        ("KERNEL_POSTGRES_TLS_SYSTEM_ROOTS", "false".into()),
    ]))
    .await
    .expect_err("an unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_boots_on_a_redis_cluster_with_wait() {
    let cluster = tokio::task::spawn_blocking(PrivateRedisCluster::shared)
        .await
        .unwrap_or_else(|e| panic!("start the cluster: {e}"));
    assert!(
        cluster.url().starts_with("redis-cluster://"),
        "{}",
        cluster.url()
    );
    let kernel = Kernel::boot(config(&[
        ("KERNEL_STORAGE_MODE", "redis".into()),
        ("REDIS_URL", cluster.url().to_owned()),
        ("KERNEL_REDIS_KEY_PREFIX", "deploy-cluster:".into()),
        ("KERNEL_REDIS_WAIT_REPLICAS", "1".into()),
    ]))
    .await
    .unwrap_or_else(|e| panic!("boot on the cluster: {e}"));
    exercise(&kernel, "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_boots_through_sentinel() {
    let sentinel = tokio::task::spawn_blocking(PrivateRedisSentinel::shared)
        .await
        .unwrap_or_else(|e| panic!("start sentinel: {e}"));
    assert!(
        sentinel.url().starts_with("redis-sentinel://"),
        "{}",
        sentinel.url()
    );
    let kernel = Kernel::boot(config(&[
        ("KERNEL_STORAGE_MODE", "redis".into()),
        ("REDIS_URL", sentinel.url().to_owned()),
        ("KERNEL_REDIS_KEY_PREFIX", "deploy-sentinel:".into()),
    ]))
    .await
    .unwrap_or_else(|e| panic!("boot through sentinel: {e}"));
    exercise(&kernel, "sentinel").await;
}
