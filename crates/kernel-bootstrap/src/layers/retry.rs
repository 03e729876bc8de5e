//! Retry: exponential backoff with jitter, for retryable errors of operations that are safe to
//! repeat.
//!
//! An attempt is repeated only when **both** hold:
//!
//! 1. its error's [`kernel_core::ErrorStatus`] is `Temporary` (`Unavailable`, `Timeout`, a
//!    serialization `Conflict` a driver marks so) or `MaybeApplied`, and
//! 2. the operation is safe to repeat, meaning a first attempt that was applied although its
//!    answer was lost (connection dropped after the write) cannot make the retry do harm or
//!    report a wrong outcome:
//!
//! | operation | repeated? | why |
//! |---|---|---|
//! | `get`, `exists`, `get_many`, `list`, `query`, `count`, `list_namespaces`, `get_metadata`, `status` | yes | reads |
//! | `read_stream`, `read_all`, `head_position`, `load_snapshot`, opening `subscribe` | yes | reads |
//! | `put` with `PutCondition::Always`, `put_many` of only such puts | yes | writing the same value again leaves the same value (the version goes up once more) |
//! | `put` with `IfAbsent` / `IfVersion(n)`, `put_many` with any condition | **no** | if the first attempt was applied, the retry fails with `AlreadyExists` / `Conflict` and would report a successful write as a failure; we cannot tell it from a real conflict (another writer may have written the same value) |
//! | `delete` with `DeleteCondition::Always`, `delete_many` of only such deletes | yes | the key ends absent either way; the returned `bool` / count may under-report what the lost attempt removed |
//! | `delete` / `delete_many` with `IfVersion` | **no** | as for conditional puts |
//! | `set_metadata` (replace or merge) | yes | applying the same object twice gives the same metadata |
//! | `clear`, `drop_namespace` | yes | the namespace ends empty / gone either way; the count / `bool` may under-report |
//! | `write_once` (any write, any condition) | **yes** | the operation id: a repeat of a write that was applied returns the first outcome (`replayed`) instead of applying it again |
//! | `operation` | yes | a read |
//! | `create_namespace` | **no** | an applied create makes the retry fail with `AlreadyExists` |
//! | `begin` | yes | nothing was staged yet |
//! | transaction steps and `commit` / `rollback` | **no** | a transaction is retried as a whole by its caller (a lost commit race is a retryable `Conflict` for that reason) |
//! | `append` (any expected version) | yes | event ids make a re-append of a batch already stored an idempotent success with the same positions |
//! | `save_snapshot` | yes | stores the same state at the same version |
//! | `try_acquire`, `acquire` | **no** | an applied acquisition holds the lock; the retry sees it held and the lease is lost until its TTL |
//! | `release` | **no** | an applied release makes the retry fail with `LockNotHeld` |
//! | `extend` | yes | the lease keeps its token, so extending again succeeds |
//! | rate-limit `check` with cost > 0 | **no** | it increments a counter: a retry would count the request twice |
//! | rate-limit `check` with cost 0, `reset` | yes | a peek changes nothing; resetting twice leaves the key reset |
//!
//! The table lives in code as [`super::Op::repeatable`], set by the one operation table,
//! [`super::ops`], that every wrapper uses.
//!
//! Backoff: attempt `n` (1-based) that failed waits a random time in `[d/2, d]` where
//! `d = min(max_backoff, initial_backoff * 2^(n-1))` ("equal jitter": a floor keeps clients
//! from hammering, the random half spreads them out). No retry starts once `max_elapsed` would
//! be exceeded by its wait; the last error is returned with an `attempts` context and the
//! status `RetriesExhausted`, so neither the caller nor a layer above multiplies the attempts.
//!
//! Settings (`[retry]`, defaults in [`RetryPolicy::default`]):
//!
//! ```toml
//! [retry]
//! max_attempts = 3          # KERNEL_RETRY_MAX_ATTEMPTS; 1 turns retries off
//! initial_backoff_ms = 50   # KERNEL_RETRY_INITIAL_BACKOFF_MS
//! max_backoff_ms = 2000     # KERNEL_RETRY_MAX_BACKOFF_MS
//! max_elapsed_ms = 10000    # KERNEL_RETRY_MAX_ELAPSED_MS
//! ```

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use kernel_core::settings::duration_ms;
use kernel_core::{Error, ErrorStatus, Result};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Attempt, Call, Interceptor, Op};

/// Retry settings. `max_attempts` counts the first attempt: 1 never retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most attempts, the first included.
    pub max_attempts: u32,
    /// Wait ceiling after the first failed attempt; doubles after each (`initial_backoff_ms`).
    #[serde(rename = "initial_backoff_ms", with = "duration_ms")]
    pub initial_backoff: Duration,
    /// Largest wait ceiling (`max_backoff_ms`).
    #[serde(rename = "max_backoff_ms", with = "duration_ms")]
    pub max_backoff: Duration,
    /// No retry starts when its wait would end after this much time since the first attempt
    /// (`max_elapsed_ms`).
    #[serde(rename = "max_elapsed_ms", with = "duration_ms")]
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 50 ms doubling up to 2 s, at most 10 s in all.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Checks the settings; a `Config` error names the `retry.*` key.
    pub fn validate(&self) -> Result<()> {
        crate::config::check_range("retry.max_attempts", self.max_attempts, 1..=100)?;
        crate::config::check_ms("retry.initial_backoff_ms", self.initial_backoff)?;
        crate::config::check_ms("retry.max_backoff_ms", self.max_backoff)?;
        crate::config::check_ms("retry.max_elapsed_ms", self.max_elapsed)?;
        if self.initial_backoff > self.max_backoff {
            return Err(Error::config(
                "retry.initial_backoff_ms",
                format!(
                    "the initial backoff ({} ms) must not exceed retry.max_backoff_ms ({} ms)",
                    self.initial_backoff.as_millis(),
                    self.max_backoff.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based), jittered.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        let ceiling = self
            .initial_backoff
            .checked_mul(doubling)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(fastrand::u64(0..=spread))
    }
}

impl RetryPolicy {
    /// Runs `op`: once when it is not repeatable (or retries are off), else attempt after
    /// attempt while the error is transient, waiting the backoff in between. `started` is when
    /// the call began (`max_elapsed` counts from it).
    pub(crate) async fn attempts<R, F>(
        &self,
        op: &Op<'_>,
        started: Instant,
        mut attempt: impl FnMut(Attempt) -> F,
    ) -> Result<R>
    where
        F: Future<Output = Result<R>>,
    {
        if !op.repeatable || self.max_attempts <= 1 {
            return attempt(Attempt::Final).await;
        }
        let mut n = 1u32;
        // Whether an earlier attempt may have been applied: then so may the call, whatever
        // the last attempt says (a later "cannot connect" does not undo a landed write).
        let mut maybe_applied = false;
        loop {
            let last = n >= self.max_attempts;
            let outcome = attempt(if last { Attempt::Final } else { Attempt::Again }).await;
            let error = match outcome {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let transient = matches!(
                error.status(),
                ErrorStatus::Temporary | ErrorStatus::MaybeApplied
            );
            if !transient {
                return Err(named_attempts(error, n));
            }
            if last {
                return Err(exhausted(named_attempts(error, n), maybe_applied));
            }
            maybe_applied |= error.status() == ErrorStatus::MaybeApplied;
            let wait = self.backoff(n);
            if started.elapsed() + wait > self.max_elapsed {
                return Err(exhausted(
                    error.with_context("attempts", n).with_context(
                        "retry",
                        format!(
                            "stopped: the next wait would pass max_elapsed {} ms",
                            self.max_elapsed.as_millis()
                        ),
                    ),
                    maybe_applied,
                ));
            }
            tracing::warn!(
                role = op.role.as_str(),
                operation = op.name,
                attempt = n,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "kernel operation failed with a retryable error; retrying"
            );
            metrics::counter!(
                "kernel_retries_total",
                "role" => op.role.as_str(),
                "operation" => op.name,
                "code" => error.code().as_str(),
            )
            .increment(1);
            // Boxed for the reason `TimeoutPolicy::bounded` boxes its timer: only a retry pays.
            Box::pin(tokio::time::sleep(wait)).await;
            n += 1;
        }
    }
}

impl Interceptor for RetryPolicy {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        if !op.repeatable || self.max_attempts <= 1 {
            return call(Attempt::Final);
        }
        Box::pin(async move { self.attempts(&op, Instant::now(), call).await })
    }
}

/// Marks a transient error the layer gave up on: `Temporary` becomes `RetriesExhausted`;
/// `MaybeApplied` stays, and so does an earlier attempt's (`earlier_maybe_applied`), because
/// "the write may have landed" matters more to the caller than "do not retry at once".
fn exhausted(error: Error, earlier_maybe_applied: bool) -> Error {
    match error.status() {
        ErrorStatus::MaybeApplied => error,
        _ if earlier_maybe_applied => error.with_status(ErrorStatus::MaybeApplied).with_context(
            "outcome",
            "unknown (an earlier attempt was sent and may have been applied)",
        ),
        ErrorStatus::Temporary => error.with_status(ErrorStatus::RetriesExhausted),
        _ => error,
    }
}

/// Names the attempts only when there was more than one.
fn named_attempts(error: Error, attempt: u32) -> Error {
    if attempt > 1 {
        error.with_context("attempts", attempt)
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use kernel_core::{
        Error, ErrorCode, ErrorStatus, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions,
        Quota, RateLimiter, StorageDriver, json,
    };

    use super::RetryPolicy;
    use crate::layers::Layered;
    use crate::layers::fault::flaky;
    use crate::layers::testing::{MetricsCapture, capture_logs_of};

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
        };
        for _ in 0..200 {
            let first = p.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let third = p.backoff(3);
            assert!((Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third));
            let capped = p.backoff(30);
            assert!((Duration::from_millis(500)..=Duration::from_millis(1000)).contains(&capped));
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(2)).collect();
        assert!(spread.len() > 1, "backoff is jittered");
    }

    #[tokio::test]
    async fn retries_reads_and_unconditional_puts_until_they_succeed() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(3));
        inner.faults().fail_next(2, ErrorCode::Unavailable);
        let e = store
            .put("r", "k", json!(1), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(e.version, 1);
        assert_eq!(inner.faults().calls(), 3, "two failures, then the write");
        inner.faults().fail_next(2, ErrorCode::Timeout);
        assert_eq!(store.get("r", "k").await.unwrap().unwrap().value, json!(1));
        assert_eq!(inner.faults().calls(), 6);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_naming_them() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(3));
        inner.faults().fail_next(5, ErrorCode::Unavailable);
        let e = store.get("r", "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.context_value("attempts"), Some("3"));
        assert_eq!(inner.faults().calls(), 3);
        assert_eq!(e.status(), ErrorStatus::RetriesExhausted);
        assert!(
            !e.is_retryable(),
            "the caller must not multiply the attempts"
        );
    }

    #[tokio::test]
    async fn an_unknown_outcome_stays_unknown_when_retries_run_out() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let layered = Layered::new(
            inner.clone(),
            crate::layers::timeout::TimeoutPolicy::new(Duration::from_millis(20)),
        );
        let store = Layered::new(Arc::new(layered), fast(2));
        inner.faults().set_delay(Duration::from_millis(200));
        // An unconditional put is safe to repeat: retried, and still unknown at the end.
        let e = store
            .put("r", "k", json!(1), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), ErrorStatus::MaybeApplied, "{e}");
        assert_eq!(e.context_value("attempts"), Some("2"));
        assert_eq!(inner.faults().calls(), 2);
    }

    /// Attempt 1 is applied and its answer lost (`MaybeApplied`); every later attempt cannot
    /// reach the backend (`Temporary`).
    #[derive(Debug, Default)]
    struct LandsThenUnreachable {
        calls: std::sync::atomic::AtomicU32,
    }

    impl super::Interceptor for LandsThenUnreachable {
        fn around<'a, R: Send + 'a>(
            &'a self,
            op: super::Op<'a>,
            mut call: super::Call<'a, R>,
        ) -> futures::future::BoxFuture<'a, kernel_core::Result<R>> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    let _applied = call(super::Attempt::Final).await;
                    Err(op.annotate(Error::unavailable("answer lost").after_sending_write()))
                } else {
                    Err(op.annotate(Error::unavailable("connection refused")))
                }
            })
        }
    }

    /// Attempt 1 is applied and its answer lost (`MaybeApplied`); later attempts get through.
    #[derive(Debug, Default)]
    struct LandsThenAnswers {
        calls: std::sync::atomic::AtomicU32,
    }

    impl super::Interceptor for LandsThenAnswers {
        fn around<'a, R: Send + 'a>(
            &'a self,
            op: super::Op<'a>,
            mut call: super::Call<'a, R>,
        ) -> futures::future::BoxFuture<'a, kernel_core::Result<R>> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let outcome = call(super::Attempt::Final).await;
                if n == 0 {
                    drop(outcome);
                    return Err(
                        op.annotate(Error::unavailable("answer lost").after_sending_write())
                    );
                }
                outcome
            })
        }
    }

    /// The reason operation ids exist: a compare-and-set whose answer was lost is not retried
    /// as a plain put (its repeat would report `Conflict`), but is retried with an id, and the
    /// retry reports the first success. The value is written once.
    #[tokio::test]
    async fn conditional_writes_with_an_operation_id_are_retried_safely() {
        let memory = Arc::new(MemoryDriver::new());
        memory
            .put("r", "k", json!(0), PutOptions::new())
            .await
            .unwrap();

        let plain = Layered::new(
            Arc::new(Layered::new(memory.clone(), LandsThenAnswers::default())),
            fast(3),
        );
        let e = plain
            .put("r", "k", json!(1), PutOptions::new().if_version(1))
            .await
            .unwrap_err();
        assert_eq!(e.status(), ErrorStatus::MaybeApplied, "not retried: {e}");
        assert_eq!(memory.get("r", "k").await.unwrap().unwrap().version, 2);

        let with_id = Layered::new(
            Arc::new(Layered::new(memory.clone(), LandsThenAnswers::default())),
            fast(3),
        );
        let id = kernel_core::OperationId::new("cas-2").unwrap();
        let write = kernel_core::Write::put("k", json!(2), PutOptions::new().if_version(2));
        let applied = with_id.write_once("r", &id, write).await.unwrap();
        assert!(
            applied.replayed,
            "the retry found the first attempt's record"
        );
        assert_eq!(applied.outcome.into_entry().unwrap().version, 3);
        let now = memory.get("r", "k").await.unwrap().unwrap();
        assert_eq!((now.version, now.value), (3, json!(2)), "applied once");
    }

    /// An attempt that may have landed keeps the call `MaybeApplied`, even when the attempts
    /// after it fail with "cannot connect" (`Temporary`): the fault suite found the caller
    /// told `RetriesExhausted` about an append that had landed.
    #[tokio::test]
    async fn an_earlier_unknown_outcome_survives_later_temporary_failures() {
        let memory = Arc::new(MemoryDriver::new());
        let faulty = Layered::new(memory.clone(), LandsThenUnreachable::default());
        let store = Layered::new(Arc::new(faulty), fast(3));
        let e = store
            .put("r", "k", json!(1), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.status(), ErrorStatus::MaybeApplied, "{e}");
        assert!(e.to_string().contains("outcome=unknown"), "{e}");
        assert_eq!(e.context_value("attempts"), Some("3"), "{e}");
        assert_eq!(
            memory.get("r", "k").await.unwrap().map(|e| e.value),
            Some(json!(1)),
            "the first attempt landed"
        );
    }

    #[tokio::test]
    async fn never_retries_permanent_errors() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(5));
        let e = store
            .put("bad namespace", "k", json!(1), PutOptions::new())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert_eq!(inner.faults().calls(), 1);
        store
            .put("r", "k", json!(1), PutOptions::new())
            .await
            .unwrap();
        let e = store
            .put("r", "k", json!(2), PutOptions::new().if_version(7))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict);
        assert_eq!(inner.faults().calls(), 3);
    }

    #[tokio::test]
    async fn never_retries_unsafe_operations() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(5));
        let mut calls = 0;
        let mut once = |code| {
            inner.faults().fail_next(1, code);
            calls += 1;
        };
        once(ErrorCode::Unavailable);
        let e = store
            .put("r", "k", json!(1), PutOptions::new().if_absent())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        once(ErrorCode::Unavailable);
        store
            .put("r", "k", json!(1), PutOptions::new().if_version(1))
            .await
            .unwrap_err();
        once(ErrorCode::Unavailable);
        store
            .delete("r", "k", kernel_core::DeleteCondition::IfVersion(1))
            .await
            .unwrap_err();
        once(ErrorCode::Unavailable);
        store
            .create_namespace("r2", Default::default())
            .await
            .unwrap_err();
        once(ErrorCode::Unavailable);
        store
            .try_acquire("lock", Duration::from_secs(1))
            .await
            .unwrap_err();
        once(ErrorCode::Unavailable);
        store
            .check("rl", &Quota::per_second(5), 1)
            .await
            .unwrap_err();
        assert_eq!(
            inner.faults().calls(),
            calls,
            "every unsafe operation ran exactly once"
        );
        // The same failures on their safe relatives are retried.
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        store.check("rl", &Quota::per_second(5), 0).await.unwrap();
        assert_eq!(inner.faults().calls(), calls + 2);
    }

    #[tokio::test]
    async fn retried_append_is_idempotent() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(3));
        // The first attempt is applied but its answer is lost: the retry must not duplicate.
        inner.faults().apply_then_fail_next(1);
        let r = store
            .append(
                "order-1",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Placed", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(r.stream_version, 1);
        assert!(!r.written, "the retry found the events already stored");
        let events = store
            .read_stream("order-1", Default::default())
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
    }

    #[tokio::test]
    async fn stops_when_max_elapsed_would_pass() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(50),
        };
        let store = Layered::new(inner.clone(), policy);
        inner.faults().fail_next(1000, ErrorCode::Unavailable);
        let started = std::time::Instant::now();
        let e = store.exists("r", "k").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(e.context_value("retry").is_some(), "{e}");
        assert!(
            inner.faults().calls() < 10,
            "{} attempts",
            inner.faults().calls()
        );
    }

    #[tokio::test]
    async fn one_attempt_means_no_retry() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let store = Layered::new(inner.clone(), fast(1));
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        let e: Error = store.get("r", "k").await.unwrap_err();
        assert_eq!(e.context_value("attempts"), None);
        assert_eq!(inner.faults().calls(), 1);
    }

    #[test]
    fn each_retry_is_logged_and_counted() {
        let metrics = MetricsCapture::default();
        let logs = capture_logs_of(|| {
            metrics.run(|| async {
                let inner = Arc::new(flaky(MemoryDriver::new()));
                let store = Layered::new(inner.clone(), fast(3));
                inner.faults().fail_next(2, ErrorCode::Unavailable);
                store.get("r", "k").await.unwrap();
            });
        });
        assert_eq!(
            metrics.counter(
                "kernel_retries_total",
                &[("operation", "get"), ("code", "unavailable")]
            ),
            2
        );
        let retries = logs.lines().filter(|l| l.contains("retrying")).count();
        assert_eq!(retries, 2, "{logs}");
        assert!(
            logs.contains("attempt=1") && logs.contains("attempt=2"),
            "{logs}"
        );
    }
}
