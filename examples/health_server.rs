//! Serves the kernel's health over HTTP: `GET /health` answers 200 with the JSON report when
//! every component is healthy, 503 with the same report otherwise (a backend unreachable, or
//! the kernel shut down).
//!
//! ```sh
//! KERNEL_STORAGE_MODE=memory KERNEL_HEALTH_ADDR=127.0.0.1:8080 cargo run --example health_server
//! curl -i http://127.0.0.1:8080/health
//! ```
//!
//! Ctrl-C stops the server and shuts the kernel down gracefully (the change pipeline drains
//! first).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kernel_bootstrap::{HealthReport, Kernel};
use tokio::net::TcpListener;

/// Where the server listens unless `KERNEL_HEALTH_ADDR` says otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// The routes: `GET /health`.
pub(crate) fn router(kernel: Arc<Kernel>) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(kernel)
}

async fn health(State(kernel): State<Arc<Kernel>>) -> (StatusCode, Json<HealthReport>) {
    let report = kernel.health().await;
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Serves [`router`] on `listener` until `stop` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    kernel: Arc<Kernel>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(kernel))
        .with_graceful_shutdown(stop)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr: SocketAddr = std::env::var("KERNEL_HEALTH_ADDR")
        .unwrap_or_else(|_| DEFAULT_ADDR.to_owned())
        .parse()
        .map_err(|e| format!("KERNEL_HEALTH_ADDR must be host:port: {e}"))?;
    let kernel = Arc::new(Kernel::from_env().await?);
    let listener = TcpListener::bind(addr).await?;
    println!("serving GET http://{}/health", listener.local_addr()?);
    let stop = async {
        // If the signal handler cannot be installed, stop at once rather than run unstoppable.
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C ({e}); stopping");
        }
    };
    serve(listener, kernel.clone(), stop).await?;
    let failures = kernel.shutdown().await;
    for failure in &failures {
        eprintln!("{failure}");
    }
    Ok(())
}
