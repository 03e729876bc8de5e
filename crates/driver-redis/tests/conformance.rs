//! The whole conformance suite against a real Redis server (`KERNEL_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), on the concrete driver and through `Arc<dyn Trait>`. Each test
//! gets its own key prefix, deleted when it ends.

use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use kernel_testkit::redis::RedisTestServer;

async fn driver() -> (RedisDriver, RedisTestServer) {
    let server = RedisTestServer::start().await;
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = server.prefix().to_owned();
    config.pool_size = 4;
    config.operation_timeout = Duration::from_secs(10);
    match RedisDriver::connect(config).await {
        Ok(driver) => (driver, server),
        Err(e) => panic!("connecting the Redis driver to the test server failed: {e}"),
    }
}

kernel_testkit::storage_suite!(driver());
kernel_testkit::event_suite!(driver());
kernel_testkit::lock_suite!(driver());
kernel_testkit::rate_limit_suite!(driver());
