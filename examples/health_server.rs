//! Serves the kernel's health and metrics over HTTP with `kernel_bootstrap::http` (feature
//! `http`): `GET /health` answers 200 with the JSON report when every component is healthy, 503
//! with the same report otherwise; `GET /metrics` is the Prometheus text format.
//!
//! ```sh
//! KERNEL_STORAGE_MODE=memory KERNEL_HEALTH_ADDR=127.0.0.1:8080 cargo run --example health_server
//! curl -i http://127.0.0.1:8080/health
//! curl http://127.0.0.1:8080/metrics
//! ```
//!
//! Ctrl-C stops the server and shuts the kernel down gracefully (the change pipeline drains
//! first).

use std::net::SocketAddr;
use std::sync::Arc;

use kernel_bootstrap::Kernel;
use kernel_bootstrap::http::{Metrics, router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr: SocketAddr = std::env::var("KERNEL_HEALTH_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".to_owned())
        .parse()
        .map_err(|e| format!("KERNEL_HEALTH_ADDR must be host:port: {e}"))?;
    let metrics = Metrics::install()?;
    let kernel = Arc::new(Kernel::from_env().await?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "serving http://{0}/health and http://{0}/metrics",
        listener.local_addr()?
    );
    let stop = async {
        // If the signal handler cannot be installed, stop at once rather than run unstoppable.
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C ({e}); stopping");
        }
    };
    axum::serve(listener, router(kernel.clone(), Some(metrics)))
        .with_graceful_shutdown(stop)
        .await?;
    for failure in kernel.shutdown().await {
        eprintln!("{failure}");
    }
    Ok(())
}
