//! The kernel-testkit property tests on the SQLite driver: generated names, keys, JSON values,
//! filters, TTLs and batch sizes (see `kernel_testkit::properties`). A fresh database file per
//! property, built with the properties' small value limits; the guard is its temporary
//! directory, removed when the test ends (after the driver).

use driver_sqlite::{SqliteConfig, SqliteDriver};
use kernel_testkit::properties::{LIMITS, Settings};

async fn fresh() -> (SqliteDriver, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kernel.db");
    let mut config = SqliteConfig::new(path.to_string_lossy());
    config.limits = LIMITS;
    let driver = SqliteDriver::open(config)
        .await
        .expect("open a fresh SQLite database");
    (driver, dir)
}

kernel_testkit::property_suite!(Settings::new(96).batch_cases(48), fresh());
