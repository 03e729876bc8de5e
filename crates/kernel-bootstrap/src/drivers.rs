//! The built-in drivers as [`Backend`]s: the only place that names them, each behind its Cargo
//! feature (memory is always built in).

use driver_memory::MemoryDriver;
use kernel_core::{Error, Result};

use crate::config::{BackendKind, KernelConfig};
use crate::kernel::Backend;

/// Connects the built-in driver `kind` with the configuration's settings, serving every role;
/// [`crate::Kernel::boot`] keeps the roles the configuration gives it.
pub(crate) async fn connect(kind: BackendKind, config: &KernelConfig) -> Result<Backend> {
    match kind {
        BackendKind::Memory => {
            let driver = MemoryDriver::with_limits(config.limits);
            let closing = driver.clone();
            Ok(Backend::all(kind.as_str(), driver).on_shutdown(move || {
                closing.shutdown();
                Box::pin(async { Ok(()) })
            }))
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let driver = driver_postgres::PostgresDriver::connect(config.postgres_config()).await?;
            let closing = driver.clone();
            Ok(Backend::all(kind.as_str(), driver).on_shutdown(move || {
                Box::pin(async move {
                    closing.shutdown().await;
                    Ok(())
                })
            }))
        }
        #[cfg(feature = "redis")]
        BackendKind::Redis => {
            let driver = driver_redis::RedisDriver::connect(config.redis_config()).await?;
            let closing = driver.clone();
            Ok(Backend::all(kind.as_str(), driver)
                .on_shutdown(move || Box::pin(async move { closing.shutdown().await })))
        }
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => {
            let driver = driver_sqlite::SqliteDriver::open(config.sqlite_config()).await?;
            let closing = driver.clone();
            Ok(Backend::all(kind.as_str(), driver).on_shutdown(move || {
                Box::pin(async move {
                    closing.shutdown().await;
                    Ok(())
                })
            }))
        }
        // Reached only for a backend whose feature is off (validate() refuses it first).
        #[allow(unreachable_patterns)]
        other => Err(Error::config(
            "storage_mode",
            format!("this build of kernel-bootstrap has no `{other}` feature"),
        )),
    }
}
