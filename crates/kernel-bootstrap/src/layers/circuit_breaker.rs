//! Circuit breaker: after `failure_threshold` consecutive calls that failed with backend
//! trouble, stop calling the backend for `cool_down`, failing fast with `Unavailable`; then let
//! one probe call through (half-open): its success closes the circuit, its failure opens it for
//! another cool-down.
//!
//! Only `Unavailable` and `Timeout` count as failures: they say the backend is in trouble.
//! Every other answer (`InvalidInput`, `Conflict`, `NotFound`, ...) is the backend working as
//! it should, so it counts as a success and resets the count.
//!
//! One breaker is meant to be shared by every store on one backend (the kernel does this), so
//! when a backend goes away every role it serves fails fast together.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kernel_core::{Error, ErrorCode, ErrorStatus, Result};

use super::{Attempt, Call, Interceptor, Op};

/// Breaker settings (`[circuit_breaker]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Whether the kernel puts a breaker in front of each backend.
    pub enabled: bool,
    /// Consecutive backend failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe may go through (`cool_down_ms`).
    #[serde(rename = "cool_down_ms", with = "kernel_core::settings::duration_ms")]
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    /// Enabled; opens after 5 consecutive failures, probes after 10 s.
    fn default() -> Self {
        CircuitBreakerConfig {
            enabled: true,
            failure_threshold: 5,
            cool_down: Duration::from_secs(10),
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the settings; a `Config` error names the `circuit_breaker.*` key.
    pub fn validate(&self) -> kernel_core::Result<()> {
        crate::config::check_range(
            "circuit_breaker.failure_threshold",
            self.failure_threshold,
            1..=10_000,
        )?;
        crate::config::check_ms("circuit_breaker.cool_down_ms", self.cool_down)
    }
}

/// The breaker's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through; this many consecutive failures so far.
    Closed {
        /// Consecutive backend failures.
        failures: u32,
    },
    /// Calls fail fast until the cool-down ends.
    Open,
    /// The cool-down ended: one probe goes through (or is in flight).
    HalfOpen,
}

/// The state behind the mutex. A closed circuit's failure count lives in an atomic beside it.
#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker (an [`Interceptor`]). Share one through an `Arc` (see
/// [`super::Layered::shared`]) to cover several stores with one state.
///
/// A closed circuit that sees no trouble costs a call two atomic loads: every call of every
/// role on a backend passes through one breaker, so a mutex taken twice per call (admission,
/// then the outcome) would serialise them all. The mutex is taken only to change state: a
/// failure, a probe, a circuit that is not closed.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: CircuitBreakerConfig,
    /// Whether the state is `Open` or `HalfOpen`; written under the mutex only.
    tripped: AtomicBool,
    /// Consecutive backend failures while closed.
    failures: AtomicU32,
    state: Mutex<State>,
}

enum Admission {
    Normal,
    Probe,
    Reject(Duration),
}

/// Frees the half-open probe slot if the probe is dropped before it reports (cancelled by a
/// timeout above, or by its caller), so the breaker is never stuck waiting on a dead probe.
struct ProbeSlot<'a> {
    breaker: &'a CircuitBreaker,
    armed: bool,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.breaker.lock();
            if let State::HalfOpen { probing } = &mut *s {
                *probing = false;
            }
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (a backend, in errors, logs and metrics).
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            name: name.into(),
            config,
            tripped: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            state: Mutex::new(State::Closed),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its current state.
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            State::Closed => CircuitState::Closed {
                failures: self.failures.load(Ordering::Relaxed),
            },
            State::Open { until } if Instant::now() < *until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Tells the breaker that a health probe just reached the backend: an open or half-open
    /// circuit closes at once, so the kernel does not refuse calls that its own health report
    /// says would succeed. A closed circuit keeps its count.
    pub fn backend_answered_probe(&self) {
        let mut s = self.lock();
        if matches!(*s, State::Open { .. } | State::HalfOpen { .. }) {
            self.close(&mut s);
            tracing::info!(circuit = %self.name, "circuit breaker closed: a health probe reached the backend");
            metrics::gauge!("kernel_circuit_open", "circuit" => self.name.clone()).set(0.0);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a small enum that every writer leaves valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the circuit (the caller holds the lock): the count starts again from zero.
    fn close(&self, s: &mut State) {
        *s = State::Closed;
        self.failures.store(0, Ordering::Relaxed);
        self.tripped.store(false, Ordering::Release);
    }

    fn admit(&self) -> Admission {
        // A closed circuit admits without the lock.
        if !self.tripped.load(Ordering::Acquire) {
            return Admission::Normal;
        }
        let now = Instant::now();
        let mut s = self.lock();
        match &mut *s {
            State::Closed => Admission::Normal,
            State::Open { until } if now < *until => Admission::Reject(*until - now),
            State::Open { .. } => {
                *s = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Reject(Duration::ZERO),
            State::HalfOpen { probing } => {
                *probing = true;
                Admission::Probe
            }
        }
    }

    fn record(&self, probe: bool, trouble: bool) {
        if !probe && !trouble {
            // A success of an ordinary call resets the count of a closed circuit; a late answer
            // of a call admitted before the circuit opened says nothing new. Neither needs the
            // lock: a count reset while the circuit opens is reset again when it closes.
            if !self.tripped.load(Ordering::Acquire) && self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut s = self.lock();
        let opened = match (&mut *s, probe) {
            (State::HalfOpen { .. }, true) if trouble => true,
            (State::HalfOpen { .. }, true) => {
                self.close(&mut s);
                tracing::info!(circuit = %self.name, "circuit breaker closed: the probe succeeded");
                metrics::gauge!("kernel_circuit_open", "circuit" => self.name.clone()).set(0.0);
                false
            }
            (State::Closed, false) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                failures >= self.config.failure_threshold
            }
            // Late answers of calls admitted before the circuit opened say nothing new.
            _ => false,
        };
        if opened {
            *s = State::Open {
                until: Instant::now() + self.config.cool_down,
            };
            self.tripped.store(true, Ordering::Release);
            tracing::warn!(
                circuit = %self.name,
                cool_down_ms = u64::try_from(self.config.cool_down.as_millis()).unwrap_or(u64::MAX),
                "circuit breaker opened: the backend keeps failing; calls fail fast until a probe succeeds"
            );
            metrics::gauge!("kernel_circuit_open", "circuit" => self.name.clone()).set(1.0);
        }
    }

    /// The error of a call refused while the circuit is open.
    fn rejection(&self, op: &Op<'_>, left: Duration) -> Error {
        op.annotate(
            Error::unavailable(format!(
                "circuit breaker is open after {} consecutive backend failures; \
                 failing fast (next probe in {} ms)",
                self.config.failure_threshold,
                left.as_millis()
            ))
            .with_context("circuit", &self.name),
        )
    }

    /// Admits a call (or refuses it at once while the circuit is open); the ticket counts
    /// its outcome, and frees the half-open probe slot if the call is dropped unfinished.
    pub(crate) fn enter(&self, op: &Op<'_>) -> Result<Ticket<'_>> {
        let probe = match self.admit() {
            Admission::Normal => false,
            Admission::Probe => true,
            Admission::Reject(left) => return Err(self.rejection(op, left)),
        };
        Ok(Ticket {
            slot: ProbeSlot {
                breaker: self,
                armed: probe,
            },
            probe,
        })
    }
}

/// An admitted call: [`Ticket::done`] counts its outcome.
pub(crate) struct Ticket<'a> {
    slot: ProbeSlot<'a>,
    probe: bool,
}

impl Ticket<'_> {
    /// Counts the call's outcome.
    pub(crate) fn done<R>(mut self, outcome: &Result<R>) {
        self.slot.armed = false;
        self.slot
            .breaker
            .record(self.probe, outcome.as_ref().err().is_some_and(is_trouble));
    }
}

/// Backend trouble: an unreachable backend or a timeout, unless the error is permanent (a
/// driver that was shut down on purpose answers `Unavailable` too, and says it is final).
fn is_trouble(error: &Error) -> bool {
    matches!(error.code(), ErrorCode::Unavailable | ErrorCode::Timeout)
        && error.status() != ErrorStatus::Permanent
}

impl Interceptor for CircuitBreaker {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        let ticket = match self.enter(&op) {
            Ok(ticket) => ticket,
            Err(err) => return Box::pin(async move { Err(err) }),
        };
        Box::pin(async move {
            let outcome = call(Attempt::Final).await;
            ticket.done(&outcome);
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use kernel_core::{ErrorCode, Lock, PutOptions, RateLimiter, StorageDriver, json};

    use super::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
    use crate::layers::Layered;
    use crate::layers::fault::flaky;
    use crate::layers::testing::MetricsCapture;
    use crate::layers::timeout::TimeoutPolicy;

    fn breaker(threshold: u32, cool_down_ms: u64) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            "test",
            CircuitBreakerConfig {
                enabled: true,
                failure_threshold: threshold,
                cool_down: Duration::from_millis(cool_down_ms),
            },
        ))
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_fails_fast() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let b = breaker(3, 60_000);
        let store = Layered::shared(inner.clone(), b.clone());
        inner.faults().set_down(true);
        for _ in 0..3 {
            assert_eq!(
                store.get("c", "k").await.unwrap_err().code(),
                ErrorCode::Unavailable
            );
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(inner.faults().calls(), 3);
        inner.faults().set_down(false);
        let e = store.get("c", "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.context_value("circuit"), Some("test"));
        assert_eq!(e.operation(), Some("get"));
        assert_eq!(
            inner.faults().calls(),
            3,
            "an open circuit does not call the backend"
        );
    }

    #[tokio::test]
    async fn only_backend_trouble_counts() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let b = breaker(2, 60_000);
        let store = Layered::shared(inner.clone(), b.clone());
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        store.get("c", "k").await.unwrap_err();
        assert_eq!(b.state(), CircuitState::Closed { failures: 1 });
        // A rejected input and a failed condition are the backend doing its job.
        store.get("bad ns", "k").await.unwrap_err();
        assert_eq!(b.state(), CircuitState::Closed { failures: 0 });
        store
            .put("c", "k", json!(1), PutOptions::new())
            .await
            .unwrap();
        for _ in 0..5 {
            let e = store
                .put("c", "k", json!(1), PutOptions::new().if_version(9))
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::Conflict);
        }
        inner.faults().fail_next(1, ErrorCode::InvalidInput);
        store.get("c", "k").await.unwrap_err();
        assert_eq!(b.state(), CircuitState::Closed { failures: 0 });
    }

    #[tokio::test]
    async fn half_opens_after_the_cool_down_and_a_probe_closes_it() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let b = breaker(1, 50);
        let store = Layered::shared(inner.clone(), b.clone());
        inner.faults().fail_next(1, ErrorCode::Timeout);
        store.exists("c", "k").await.unwrap_err();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // A failed probe opens it again.
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        store.exists("c", "k").await.unwrap_err();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!store.exists("c", "k").await.unwrap());
        assert_eq!(b.state(), CircuitState::Closed { failures: 0 });
    }

    #[tokio::test]
    async fn lets_one_probe_through_at_a_time() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let b = breaker(1, 20);
        let store = Arc::new(Layered::shared(inner.clone(), b.clone()));
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        store.reset("k").await.unwrap_err();
        tokio::time::sleep(Duration::from_millis(40)).await;
        inner.faults().set_delay(Duration::from_millis(300));
        let probe = tokio::spawn({
            let store = store.clone();
            async move { store.reset("k").await }
        });
        // Wait until the probe is inside the store (the failed call was the first).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while inner.faults().calls() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let e = store.reset("k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        assert!(e.context_value("circuit").is_some());
        probe.await.unwrap().unwrap();
        assert_eq!(b.state(), CircuitState::Closed { failures: 0 });
    }

    #[test]
    fn the_open_gauge_follows_the_state() {
        let metrics = MetricsCapture::default();
        let b = breaker(1, 10);
        metrics.run(|| async {
            let inner = Arc::new(flaky(MemoryDriver::new()));
            let store = Layered::shared(inner.clone(), b.clone());
            inner.faults().fail_next(1, ErrorCode::Unavailable);
            store.get("c", "k").await.unwrap_err();
            assert_eq!(
                metrics.gauge("kernel_circuit_open", &[("circuit", "test")]),
                Some(1.0)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            store.get("c", "k").await.unwrap();
        });
        assert_eq!(
            metrics.gauge("kernel_circuit_open", &[("circuit", "test")]),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn a_cancelled_probe_frees_the_slot() {
        let inner = Arc::new(flaky(MemoryDriver::new()));
        let b = breaker(1, 10);
        // Timeout above the breaker cancels the probe mid-flight.
        let store = Layered::new(
            Arc::new(Layered::shared(inner.clone(), b.clone())),
            TimeoutPolicy::new(Duration::from_millis(20)),
        );
        inner.faults().fail_next(1, ErrorCode::Unavailable);
        store
            .try_acquire("l", Duration::from_secs(1))
            .await
            .unwrap_err();
        tokio::time::sleep(Duration::from_millis(30)).await;
        inner.faults().set_delay(Duration::from_millis(200));
        let e = store
            .try_acquire("l", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        inner.faults().set_delay(Duration::ZERO);
        assert!(
            store
                .try_acquire("l", Duration::from_secs(1))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(b.state(), CircuitState::Closed { failures: 0 });
    }
}
