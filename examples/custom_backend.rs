//! A kernel assembled from stores the application chose, with `KernelBuilder`: documents,
//! events and locks in the in-process driver, rate limits in a limiter written here
//! (`custom/local_limiter.rs`). The same builder takes any `Arc<dyn StorageDriver>`,
//! `EventStore`, `Lock` or `RateLimiter`: a third-party driver, a wrapped store, a test double.
//!
//! ```text
//! cargo run --example custom_backend
//! ```

#[path = "custom/local_limiter.rs"]
mod local_limiter;

use std::sync::Arc;

use driver_memory::MemoryDriver;
use kernel_bootstrap::{Backend, KernelBuilder, Role};
use kernel_core::{PutOptions, Quota, json};
use local_limiter::LocalLimiter;

#[tokio::main]
async fn main() -> kernel_core::Result<()> {
    let memory = MemoryDriver::new();
    let closing = memory.clone();
    let kernel = KernelBuilder::new()
        .backend(Backend::all("memory", memory).on_shutdown(move || {
            closing.shutdown();
            Box::pin(async { Ok(()) })
        }))
        // Takes the rate-limits role from the memory backend added above.
        .backend(Backend::new("local-limiter").rate_limiter(Arc::new(LocalLimiter::new())))
        .build()
        .await?;

    for role in Role::ALL {
        println!("{role:<12} served by {}", kernel.backend_of(role));
    }

    kernel
        .storage()
        .put("users", "alice", json!({"plan": "free"}), PutOptions::new())
        .await?;
    let quota = Quota::per_minute(3);
    for attempt in 1..=4 {
        let decision = kernel.rate_limiter().check("alice", &quota, 1).await?;
        println!(
            "request {attempt}: allowed={} remaining={} retry_after={:?}",
            decision.allowed, decision.remaining, decision.retry_after
        );
    }

    let report = kernel.health().await;
    println!("healthy: {}", report.healthy);
    kernel.shutdown().await;
    Ok(())
}
