//! The whole conformance suite (storage, events, locks, rate limits, through `Arc<dyn Trait>`)
//! over `rediss://`: a TLS-only Redis private to this test (`--port 0 --tls-port`, a
//! certificate from a throwaway CA made with openssl), every behaviour concurrently inside one
//! test so the server is started once and stopped at the end, each with a key prefix of its
//! own. The driver trusts only the test CA (no system roots).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use kernel_testkit::private::{PrivateRedis, TestCa};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_suite_over_rediss() {
    let ca = TestCa::new();
    let redis = PrivateRedis::start_tls(&ca, &[]).await;
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let url = redis.url().to_owned();
    let ca_file = ca.ca_cert();
    let counter = AtomicUsize::new(0);
    let (url, ca_file, counter) = (&url, &ca_file, &counter);
    let factory = move || async move {
        let config = RedisConfig {
            tls_ca_file: Some(ca_file.clone()),
            tls_system_roots: false,
            key_prefix: format!("tls{}:", counter.fetch_add(1, Ordering::Relaxed)),
            pool_size: 4,
            operation_timeout: Duration::from_secs(10),
            ..RedisConfig::new(url.as_str())
        };
        let driver = RedisDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect over rediss with the test CA: {e}"));
        (driver, ())
    };
    let mut runs = kernel_testkit::suite_runs!(storage, factory());
    runs.extend(kernel_testkit::suite_runs!(events, factory()));
    runs.extend(kernel_testkit::suite_runs!(lock, factory()));
    runs.extend(kernel_testkit::suite_runs!(rate_limit, factory()));
    let started = std::time::Instant::now();
    kernel_testkit::run_all(runs, 12).await;
    println!(
        "whole suite over rediss: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(redis);
}
