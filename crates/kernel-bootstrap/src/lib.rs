//! # kernel-bootstrap
//!
//! Configuration (environment and / or TOML, same keys) -> drivers (chosen per role) -> a
//! [`Kernel`] exposing `Arc<dyn StorageDriver>`, `Arc<dyn EventStore>`, `Arc<dyn Lock>` and
//! `Arc<dyn RateLimiter>`, with [`Kernel::health`] and [`Kernel::shutdown`].
//!
//! Only this crate knows every driver; applications depend on it and on `kernel-core`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use kernel_bootstrap::{Kernel, KernelConfig};
//!
//! let config = KernelConfig::from_vars([("KERNEL_STORAGE_MODE".to_string(), "IN_MEMORY".to_string())])?;
//! let kernel = Kernel::boot(config).await?;
//! assert!(kernel.health().await.healthy);
//! # Ok(()) }
//! ```

pub mod config;
mod kernel;
mod secret;

pub use config::{BackendKind, KernelConfig, ResolvedConfig, Role};
pub use kernel::{ComponentHealth, HealthReport, Kernel, HEALTH_PROBE_TIMEOUT};
pub use secret::{redact, SecretUrl};
