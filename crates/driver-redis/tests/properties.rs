//! The kernel-testkit property tests against a real Redis server (`KERNEL_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`): generated names, keys, JSON values, filters, TTLs and
//! batch sizes (see `kernel_testkit::properties`). Each property gets its own key prefix
//! (deleted when it ends, as in `tests/conformance.rs`) and a driver built with the
//! properties' small value limits.

use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use kernel_testkit::properties::{LIMITS, Settings};
use kernel_testkit::redis::RedisTestServer;

async fn driver() -> (RedisDriver, RedisTestServer) {
    let server = RedisTestServer::start().await;
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = server.prefix().to_owned();
    config.pool_size = 4;
    config.operation_timeout = Duration::from_secs(10);
    config.limits = LIMITS;
    match RedisDriver::connect(config).await {
        Ok(driver) => (driver, server),
        Err(e) => panic!("connecting the Redis driver to the test server failed: {e}"),
    }
}

kernel_testkit::property_suite!(Settings::new(48).batch_cases(24), driver());
