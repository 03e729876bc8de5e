//! Timeout: every call gets a deadline; a call that misses it is abandoned and fails with a
//! retryable [`ErrorCode::Timeout`](kernel_core::ErrorCode::Timeout) naming the operation.
//!
//! A lock `acquire` gets its `wait` on top of the deadline (waiting is its job). Opening a
//! subscription is bounded; the feed it returns is not (it lives as long as the caller wants).
//!
//! Abandoning a write does not undo it: a timed-out write may or may not have been applied,
//! which is exactly the case the retry layer's safety table is about.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use kernel_core::{Error, ErrorStatus, Result};
use tokio::time::Instant;

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

impl TimeoutPolicy {
    /// Runs one attempt of `op` within the deadline counted from `started` (when the attempt
    /// began).
    ///
    /// The attempt is polled once before any timer exists: a call that finishes at once (an
    /// in-process store) never registers one. Only an attempt still pending after its first
    /// poll arms the deadline, which still counts from `started`.
    pub(crate) async fn bounded<R>(
        &self,
        op: &Op<'_>,
        started: Instant,
        attempt: impl Future<Output = Result<R>>,
    ) -> Result<R> {
        let limit = self.operation.saturating_add(op.allowance);
        let mut attempt = std::pin::pin!(attempt);
        // `Ready(Pending)` when the first poll did not finish it: its waker is registered, and
        // the timeout below polls it again.
        if let Poll::Ready(outcome) =
            std::future::poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await
        {
            return outcome;
        }
        // Boxed: the timer is large, and held inline it would make every call's future (and
        // each move of it) larger, also for the calls that never get here.
        match Box::pin(tokio::time::timeout_at(started + limit, attempt)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(timed_out(op, limit)),
        }
    }
}

/// The error of an attempt that missed its deadline.
fn timed_out(op: &Op<'_>, limit: Duration) -> Error {
    // An abandoned write may still be applied by the backend: its outcome is unknown, so it
    // must not read as "safe to retry".
    op.annotate(
        Error::timeout(format!(
            "{} did not finish within {} ms",
            op.name,
            limit.as_millis()
        ))
        .with_status(match op.access {
            Access::Write => ErrorStatus::MaybeApplied,
            _ => ErrorStatus::Temporary,
        }),
    )
}

impl Interceptor for TimeoutPolicy {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        Box::pin(async move {
            self.bounded(&op, Instant::now(), call(Attempt::Final))
                .await
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
