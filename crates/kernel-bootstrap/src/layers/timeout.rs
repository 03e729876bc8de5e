//! Timeout: every call gets a deadline; a call that misses it is abandoned and fails with a
//! retryable [`ErrorCode::Timeout`](kernel_core::ErrorCode::Timeout) naming the operation.
//!
//! A lock `acquire` gets its `wait` on top of the deadline (waiting is its job). Opening a
//! subscription is bounded; the feed it returns is not (it lives as long as the caller wants).
//!
//! Abandoning a write does not undo it: a timed-out write may or may not have been applied,
//! which is exactly the case the retry layer's safety table is about.

use std::time::Duration;

use futures::future::BoxFuture;
use kernel_core::{Error, ErrorStatus, Result};

use super::{Access, Attempt, Call, Interceptor, Op};

/// The per-call deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutPolicy {
    /// How long one call may take.
    pub operation: Duration,
}

impl TimeoutPolicy {
    /// Calls may take `operation`.
    pub fn new(operation: Duration) -> TimeoutPolicy {
        TimeoutPolicy { operation }
    }
}

impl Interceptor for TimeoutPolicy {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        let limit = self.operation.saturating_add(op.allowance);
        Box::pin(async move {
            match tokio::time::timeout(limit, call(Attempt::Final)).await {
                Ok(outcome) => outcome,
                // An abandoned write may still be applied by the backend: its outcome is
                // unknown, so it must not read as "safe to retry".
                Err(_) => Err(op.annotate(
                    Error::timeout(format!(
                        "{} did not finish within {} ms",
                        op.name,
                        limit.as_millis()
                    ))
                    .with_status(match op.access {
                        Access::Write => ErrorStatus::MaybeApplied,
                        _ => ErrorStatus::Temporary,
                    }),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use driver_memory::MemoryDriver;
    use kernel_core::{ErrorCode, ErrorStatus, EventStore, Lock, PutOptions, StorageDriver, json};

    use super::TimeoutPolicy;
    use crate::layers::Layered;
    use crate::layers::fault::flaky;

    #[tokio::test]
    async fn slow_calls_time_out_naming_the_operation() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), TimeoutPolicy::new(Duration::from_millis(30)));
        store
            .put("t", "k", json!(1), PutOptions::new())
            .await
            .unwrap();
        inner.faults().set_delay(Duration::from_millis(500));
        let started = Instant::now();
        let e = store.get("t", "k").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert!(e.is_retryable());
        assert_eq!(e.operation(), Some("get"));
        assert_eq!(e.context_value("namespace"), Some("t"));
        assert!(
            e.to_string().contains("get did not finish within 30 ms"),
            "{e}"
        );
        assert_eq!(e.status(), ErrorStatus::Temporary, "a read changed nothing");
        let e = store.head_position().await.unwrap_err();
        assert_eq!(e.operation(), Some("head_position"));
        // An abandoned write may still land: not "safe to retry".
        let e = store
            .put("t", "k", json!(2), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(e.status(), ErrorStatus::MaybeApplied);
        assert!(!e.is_retryable());
        inner.faults().set_delay(Duration::ZERO);
        assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, json!(1));
    }

    #[tokio::test]
    async fn lock_acquire_gets_its_wait_on_top() {
        let inner = Arc::new(MemoryDriver::new());
        let store = Layered::new(inner.clone(), TimeoutPolicy::new(Duration::from_millis(20)));
        let held = inner
            .try_acquire("job", Duration::from_millis(150))
            .await
            .unwrap()
            .unwrap();
        // The lease lapses after 150 ms, far past the 20 ms deadline: only the wait allowance
        // lets the acquisition finish.
        let lease = store
            .acquire("job", Duration::from_secs(1), Duration::from_secs(2))
            .await
            .unwrap();
        assert!(lease.fencing_token > held.fencing_token);
    }

    #[tokio::test]
    async fn transaction_steps_are_bounded_too() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), TimeoutPolicy::new(Duration::from_millis(30)));
        let mut tx = store.begin().await.unwrap();
        tx.put("t", "k", json!(1), PutOptions::new()).await.unwrap();
        // The wrapped handle is the inner's, itself wrapped: slow the inner store's steps.
        inner.faults().set_delay(Duration::from_millis(300));
        let e = tx.get("t", "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(e.operation(), Some("tx.get"));
        inner.faults().set_delay(Duration::ZERO);
        tx.commit().await.unwrap();
        assert!(store.exists("t", "k").await.unwrap());
    }
}
