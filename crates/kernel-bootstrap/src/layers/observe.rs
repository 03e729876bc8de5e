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
//! The layer allocates nothing per call for its metrics: each observer builds the metric keys
//! of every operation of [`super::ops`] once, and a call hands the recorder a reference to its
//! key. Without an installed recorder the recorder is a no-op, so the layer costs little; a
//! span's fields are formatted only when a subscriber wants the span.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use futures::future::BoxFuture;
use kernel_core::{ErrorCode, Result, validate};
use metrics::{Key, Label};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{Attempt, Call, Interceptor, Op};
use crate::config::Role;

/// The `metrics` metadata of every sample the layer records (what the `counter!` macro of this
/// module would give).
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

const OPERATIONS_TOTAL: &str = "kernel_operations_total";
const DURATION_SECONDS: &str = "kernel_operation_duration_seconds";

/// Every outcome label: `ok` and each error code.
const OUTCOMES: [&str; 14] = [
    "ok",
    "invalid_input",
    "not_found",
    "already_exists",
    "conflict",
    "unsupported",
    "permission_denied",
    "unavailable",
    "timeout",
    "rate_limited",
    "lock_not_held",
    "corrupted",
    "config",
    "internal",
];

/// Records a span and metrics for every call.
#[derive(Debug, Clone)]
pub struct Observer {
    backend: String,
    keys: Arc<KeyTable>,
}

/// The metric keys of every operation of the table, built once per observer.
struct KeyTable {
    ops: HashMap<(Role, &'static str), OpKeys, BuildHasherDefault<Fnv>>,
}

struct OpKeys {
    duration: Key,
    /// One counter key per entry of [`OUTCOMES`], in that order.
    outcomes: Vec<Key>,
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTable")
            .field("operations", &self.ops.len())
            .finish()
    }
}

/// FNV-1a: the table's keys are a role and a short operation name; SipHash's resistance to
/// chosen keys buys nothing there and costs more than the rest of the lookup.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn labels(backend: &str, role: Role, name: &'static str) -> Vec<Label> {
    vec![
        Label::new("backend", backend.to_owned()),
        Label::new("role", role.as_str()),
        Label::new("operation", name),
    ]
}

impl KeyTable {
    fn new(backend: &str) -> KeyTable {
        let ops = super::ops::NAMES
            .iter()
            .map(|&(role, name)| {
                let duration = Key::from_parts(DURATION_SECONDS, labels(backend, role, name));
                let outcomes = OUTCOMES
                    .iter()
                    .map(|outcome| {
                        let mut l = labels(backend, role, name);
                        l.push(Label::new("outcome", *outcome));
                        Key::from_parts(OPERATIONS_TOTAL, l)
                    })
                    .collect();
                ((role, name), OpKeys { duration, outcomes })
            })
            .collect();
        KeyTable { ops }
    }
}

impl Observer {
    /// An observer labelling everything with `backend`.
    pub fn new(backend: impl Into<String>) -> Observer {
        let backend = backend.into();
        Observer {
            keys: Arc::new(KeyTable::new(&backend)),
            backend,
        }
    }

    /// The backend label.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The call's span. Its namespace and stream are escaped (an allocation) only when a
    /// subscriber records the span.
    pub(crate) fn span(&self, op: &Op<'_>) -> Span {
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
        if !span.is_disabled() {
            if let Some(ns) = op.namespace {
                span.record("namespace", tracing::field::display(validate::escape(ns)));
            }
            if let Some(stream) = op.stream {
                span.record("stream", tracing::field::display(validate::escape(stream)));
            }
        }
        span
    }

    /// Records the end of a call: the span's outcome and duration, its closing event, and the
    /// two metrics.
    pub(crate) fn finish<R>(
        &self,
        span: &Span,
        op: &Op<'_>,
        elapsed: std::time::Duration,
        outcome: &Result<R>,
    ) {
        let code = outcome.as_ref().err().map(|e| e.code());
        let label = code.map_or("ok", ErrorCode::as_str);
        if !span.is_disabled() {
            span.record("outcome", label);
            span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
        }
        match outcome {
            Err(e) if is_trouble(e.code()) => {
                tracing::warn!(parent: span, error = %e, "kernel operation failed");
            }
            Err(e) => tracing::debug!(parent: span, error = %e, "kernel operation finished"),
            Ok(_) => tracing::debug!(parent: span, "kernel operation finished"),
        }
        let seconds = elapsed.as_secs_f64();
        let keys = self.keys.ops.get(&(op.role, op.name));
        let counter = keys.and_then(|k| {
            let i = OUTCOMES.iter().position(|o| *o == label)?;
            k.outcomes.get(i)
        });
        match (keys, counter) {
            (Some(keys), Some(counter)) => metrics::with_recorder(|r| {
                r.register_counter(counter, &METADATA).increment(1);
                r.register_histogram(&keys.duration, &METADATA)
                    .record(seconds);
            }),
            // An operation outside the table (an `Op` of a wrapper of your own): built now.
            _ => {
                metrics::counter!(
                    OPERATIONS_TOTAL,
                    "backend" => self.backend.clone(),
                    "role" => op.role.as_str(),
                    "operation" => op.name,
                    "outcome" => label,
                )
                .increment(1);
                metrics::histogram!(
                    DURATION_SECONDS,
                    "backend" => self.backend.clone(),
                    "role" => op.role.as_str(),
                    "operation" => op.name,
                )
                .record(seconds);
            }
        }
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
        let span = self.span(&op);
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let outcome = call(Attempt::Final).instrument(span.clone()).await;
            self.finish(&span, &op, started.elapsed(), &outcome);
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
