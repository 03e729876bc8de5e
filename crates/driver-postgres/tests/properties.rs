//! The kernel-testkit property tests against real PostgreSQL: generated names, keys, JSON
//! values, filters, TTLs and batch sizes (see `kernel_testkit::properties`). Each property gets
//! its own database (cloned from a migrated template, as in `tests/conformance.rs`) and a
//! driver built with the properties' small value limits. The properties check PostgreSQL's
//! documented divergences (`Divergences::POSTGRES`) where it serves the contract differently.

mod common;

use driver_postgres::PostgresDriver;
use kernel_testkit::postgres::TestDatabase;
use kernel_testkit::properties::{Divergences, LIMITS, Settings};

async fn driver() -> (PostgresDriver, TestDatabase) {
    let db = common::database().await;
    let mut config = common::config(db.url());
    config.limits = LIMITS;
    match PostgresDriver::connect(config).await {
        Ok(driver) => (driver, db),
        Err(e) => panic!("connect to the test database: {e}"),
    }
}

// PostgreSQL's documented divergences (docs/postgres.md): U+0000 in JSON strings is refused,
// and an integral float may come back as an integer of the same value.
kernel_testkit::property_suite!(
    Settings::new(48)
        .batch_cases(24)
        .divergences(Divergences::POSTGRES),
    driver()
);
