//! Observability: a tracing span per operation and metrics through the `metrics` facade.
//!
//! Span `kernel_op` with fields `backend`, `role`, `operation`, `namespace` / `stream` (when
//! the operation has one), and, when the call ends, `outcome` (`ok` or the error code) and
//! `duration_ms`. Each call ends with one event inside its span: `debug` for successes and for
//! answers that are the backend working as it should (`not_found`, `conflict`,
//! `invalid_input`...), `warn` with the error for backend trouble (`unavailable`, `timeout`,
//! `internal`, `corrupted`). Keys and values are never recorded (they may be personal data);
//! errors are, and by the kernel's rules they never carry a password.
//!
//! Metrics (names are stable):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `kernel_operations_total` | counter | `backend`, `role`, `operation`, `outcome` |
//! | `kernel_operation_duration_seconds` | histogram | `backend`, `role`, `operation` |
//! | `kernel_retries_total` (retry layer) | counter | `role`, `operation`, `code` |
//! | `kernel_circuit_open` (circuit breaker) | gauge, 1 while open | `circuit` |
//!
//! Without an installed recorder the `metrics` macros do nothing, so the layer costs little.

use std::time::Instant;

use futures::future::BoxFuture;
use kernel_core::{ErrorCode, Result, validate};
use tracing::Instrument;
use tracing::field::Empty;

use super::{Attempt, Call, Interceptor, Op};

/// Records a span and metrics for every call.
#[derive(Debug, Clone)]
pub struct Observer {
    backend: String,
}

impl Observer {
    /// An observer labelling everything with `backend`.
    pub fn new(backend: impl Into<String>) -> Observer {
        Observer {
            backend: backend.into(),
        }
    }

    /// The backend label.
    pub fn backend(&self) -> &str {
        &self.backend
    }
}

fn is_trouble(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal | ErrorCode::Corrupted
    )
}

impl Interceptor for Observer {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        let span = tracing::info_span!(
            "kernel_op",
            backend = %self.backend,
            role = op.role.as_str(),
            operation = op.name,
            namespace = Empty,
            stream = Empty,
            outcome = Empty,
            duration_ms = Empty,
        );
        if let Some(ns) = op.namespace {
            span.record("namespace", tracing::field::display(validate::escape(ns)));
        }
        if let Some(stream) = op.stream {
            span.record("stream", tracing::field::display(validate::escape(stream)));
        }
        Box::pin(async move {
            let started = Instant::now();
            let outcome = call(Attempt::Final).instrument(span.clone()).await;
            let elapsed = started.elapsed();
            let code = outcome.as_ref().err().map(|e| e.code());
            let label = code.map_or("ok", ErrorCode::as_str);
            span.record("outcome", label);
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
            match &outcome {
                Err(e) if is_trouble(e.code()) => {
                    tracing::warn!(parent: &span, error = %e, "kernel operation failed");
                }
                Err(e) => tracing::debug!(parent: &span, error = %e, "kernel operation finished"),
                Ok(_) => tracing::debug!(parent: &span, "kernel operation finished"),
            }
            metrics::counter!(
                "kernel_operations_total",
                "backend" => self.backend.clone(),
                "role" => op.role.as_str(),
                "operation" => op.name,
                "outcome" => label,
            )
            .increment(1);
            metrics::histogram!(
                "kernel_operation_duration_seconds",
                "backend" => self.backend.clone(),
                "role" => op.role.as_str(),
                "operation" => op.name,
            )
            .record(elapsed.as_secs_f64());
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use driver_memory::MemoryDriver;
    use kernel_core::{
        ErrorCode, EventStore, ExpectedVersion, NewEvent, PutOptions, StorageDriver, json,
    };

    use super::Observer;
    use crate::layers::Layered;
    use crate::layers::fault::flaky;
    use crate::layers::testing::{MetricsCapture, capture_logs};

    #[test]
    fn spans_and_events_name_backend_operation_namespace_and_outcome() {
        let logs = capture_logs(|| async {
            let inner = Arc::new(flaky(MemoryDriver::new()));
            let store = Layered::new(inner.clone(), Observer::new("memory"));
            store
                .put(
                    "orders",
                    "k1",
                    json!({"secret": "do-not-log"}),
                    PutOptions::new(),
                )
                .await
                .unwrap();
            inner.faults().fail_next(1, ErrorCode::Unavailable);
            store.get("orders", "k1").await.unwrap_err();
            store
                .append(
                    "order-7",
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("Placed", json!({}))],
                )
                .await
                .unwrap();
        });
        let put = logs
            .lines()
            .find(|l| l.contains("operation=\"put\""))
            .unwrap_or_else(|| panic!("no put line in {logs}"));
        for field in [
            "backend=memory",
            "role=\"storage\"",
            "namespace=orders",
            "outcome=\"ok\"",
        ] {
            assert!(put.contains(field), "{field} missing from {put}");
        }
        assert!(put.contains("duration_ms="), "{put}");
        let failed = logs
            .lines()
            .find(|l| l.contains("WARN"))
            .unwrap_or_else(|| panic!("no warning in {logs}"));
        assert!(failed.contains("unavailable"), "{failed}");
        assert!(failed.contains("get"), "{failed}");
        assert!(logs.contains("stream=order-7"), "{logs}");
        assert!(
            !logs.contains("do-not-log"),
            "values are never logged: {logs}"
        );
    }

    #[test]
    fn metrics_count_operations_by_outcome_and_record_latency() {
        let metrics = MetricsCapture::default();
        metrics.run(|| async {
            let inner = Arc::new(flaky(MemoryDriver::new()));
            let store = Layered::new(inner.clone(), Observer::new("memory"));
            store.exists("m", "k").await.unwrap();
            store.exists("m", "k").await.unwrap();
            inner.faults().fail_next(1, ErrorCode::Timeout);
            store.exists("m", "k").await.unwrap_err();
            store.exists("bad ns", "k").await.unwrap_err();
        });
        let ok = metrics.counter(
            "kernel_operations_total",
            &[("operation", "exists"), ("outcome", "ok")],
        );
        assert_eq!(ok, 2);
        let timeouts = metrics.counter(
            "kernel_operations_total",
            &[
                ("operation", "exists"),
                ("outcome", "timeout"),
                ("backend", "memory"),
            ],
        );
        assert_eq!(timeouts, 1);
        let invalid = metrics.counter(
            "kernel_operations_total",
            &[("outcome", "invalid_input"), ("role", "storage")],
        );
        assert_eq!(invalid, 1);
        let samples = metrics.histogram(
            "kernel_operation_duration_seconds",
            &[("operation", "exists")],
        );
        assert_eq!(samples.len(), 4);
        assert!(samples.iter().all(|s| *s >= 0.0 && *s < 5.0));
    }
}
