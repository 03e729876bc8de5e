//! # kernel-bootstrap
//!
//! Configuration (environment and / or TOML, same keys) -> drivers (chosen per role) -> a
//! [`Kernel`] exposing `Arc<dyn StorageDriver>`, `Arc<dyn EventStore>`, `Arc<dyn Lock>` and
//! `Arc<dyn RateLimiter>`, with [`Kernel::health`] and [`Kernel::shutdown`].
//!
//! Only this crate knows every driver; applications depend on it and on `kernel-core`.
//!
//! Every store the kernel hands out is wrapped in the standard [`layers`] (observability,
//! shutdown gate, circuit breaker, retry, timeout); [`Kernel::stores`] lets an application stack
//! more (a tenant scope, access control, its own). [`Kernel::pipeline`] is the asynchronous change
//! [`pipeline`].
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

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod drivers;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod kernel;
pub mod layers;
pub mod pipeline;

pub use config::{BackendKind, IndexDeclarations, KernelConfig, Role, Setting, StorageSettings};
pub use kernel::{
    BOOT_PROBE_TIMEOUT, Backend, ComponentHealth, HEALTH_PROBE_TIMEOUT, HealthReport, Kernel,
    KernelBuilder,
};
pub use layers::{Layer, Stores};
pub use pipeline::{Change, ChangeFailure, ChangePipeline, PipelineConfig, SubmitError};
