//! Shared set-up of the driver's file-based integration tests: a database file in a test's
//! temporary folder and a driver on it.

#![allow(dead_code, unreachable_pub)]

use driver_sqlite::{SqliteConfig, SqliteDriver};

/// The configuration of `kernel.db` in `dir`.
pub fn config(dir: &tempfile::TempDir) -> SqliteConfig {
    SqliteConfig::new(dir.path().join("kernel.db").to_string_lossy())
}

/// Opens a driver, failing the test with the path on an error.
pub async fn open(config: &SqliteConfig) -> SqliteDriver {
    match SqliteDriver::open(config.clone()).await {
        Ok(d) => d,
        Err(e) => panic!("open {}: {e}", config.path),
    }
}

/// The value of `r`, failing the test with `what` on an error.
pub fn ok<T>(r: kernel_core::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}
