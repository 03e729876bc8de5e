//! The operator's HTTP surface (feature `http`): a health route for load balancers and a
//! Prometheus `/metrics` route, as an [`axum::Router`] to serve alone or merge into your own.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `200` with the [`HealthReport`] as JSON when every component is healthy, `503` with the same report otherwise (a backend unreachable, data loss detected, or the kernel shut down) |
//! | `GET /metrics` | the process's metrics in the Prometheus text format (`text/plain; version=0.0.4`), when a [`Metrics`] recorder is given |
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use kernel_bootstrap::Kernel;
//! use kernel_bootstrap::http::{Metrics, router};
//!
//! let metrics = Metrics::install()?; // before the kernel runs, so every call is counted
//! let kernel = Arc::new(Kernel::from_env().await?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router(kernel, Some(metrics))).await?;
//! # Ok(()) }
//! ```
//!
//! The metrics the kernel records (described in the output with `# HELP` and their unit):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `kernel_operations_total` | counter | `backend`, `role`, `operation`, `outcome` (`ok` or the error code) |
//! | `kernel_operation_duration_seconds` | histogram (buckets from 0.25 ms to 10 s) | `backend`, `role`, `operation` |
//! | `kernel_retries_total` | counter | `role`, `operation`, `code` |
//! | `kernel_circuit_open` | gauge (1 open, 0 closed) | `circuit` |

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kernel_core::{Error, Result};
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::kernel::{HealthReport, Kernel};

/// Upper bounds of the operation-latency histogram's buckets, in seconds: from a memory call
/// to a request that times out.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// The process's Prometheus recorder: what `/metrics` renders. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The recorder installed by this process, so a second [`Metrics::install`] shares it.
static INSTALLED: OnceLock<Metrics> = OnceLock::new();

impl Metrics {
    /// Installs a Prometheus recorder as the process's global `metrics` recorder and
    /// describes the kernel's metrics. Calling it again returns the same recorder. A `Config`
    /// error if another recorder was installed first (by the application): render that one
    /// instead of this.
    pub fn install() -> Result<Metrics> {
        if let Some(m) = INSTALLED.get() {
            return Ok(m.clone());
        }
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("kernel_operation_duration_seconds".to_owned()),
                DURATION_BUCKETS,
            )
            .map_err(|e| Error::internal("the metric buckets are invalid").with_source(e))?;
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|e| {
            Error::config(
                "metrics",
                "another global metrics recorder is installed already; render it instead",
            )
            .with_source(e)
        })?;
        describe();
        // A racing second install failed above (one global recorder), so this one is the set.
        Ok(INSTALLED.get_or_init(|| Metrics { handle }).clone())
    }

    /// The current metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Help texts and units of every metric the kernel records.
fn describe() {
    metrics::describe_counter!(
        "kernel_operations_total",
        Unit::Count,
        "Kernel operations finished, by backend, role, operation and outcome (ok or error code)."
    );
    metrics::describe_histogram!(
        "kernel_operation_duration_seconds",
        Unit::Seconds,
        "Time a kernel operation took, retries included, by backend, role and operation."
    );
    metrics::describe_counter!(
        "kernel_retries_total",
        Unit::Count,
        "Attempts the retry layer repeated after a retryable error, by role, operation and code."
    );
    metrics::describe_gauge!(
        "kernel_circuit_open",
        Unit::Count,
        "1 while a backend's circuit breaker is open (calls fail fast), 0 when closed."
    );
}

/// The routes: `GET /health`, and `GET /metrics` when `metrics` is given.
pub fn router(kernel: Arc<Kernel>, metrics: Option<Metrics>) -> Router {
    let health = Router::new()
        .route("/health", get(health))
        .with_state(kernel);
    match metrics {
        Some(m) => health.merge(
            Router::new()
                .route("/metrics", get(render_metrics))
                .with_state(m),
        ),
        None => health,
    }
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

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
