//! The kernel-testkit conformance suites on the SQLite driver: every behaviour of every trait,
//! on `Arc<SqliteDriver>` and on `Arc<dyn Trait>`. A fresh database file per test; the guard is
//! its temporary directory, removed when the test ends (after the driver).

use driver_sqlite::{SqliteConfig, SqliteDriver};

async fn fresh() -> (SqliteDriver, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kernel.db");
    let driver = SqliteDriver::open(SqliteConfig::new(path.to_string_lossy()))
        .await
        .expect("open a fresh SQLite database");
    (driver, dir)
}

kernel_testkit::storage_suite!(fresh());
kernel_testkit::event_suite!(fresh());
kernel_testkit::lock_suite!(fresh());
kernel_testkit::rate_limit_suite!(fresh());
