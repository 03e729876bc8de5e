//! [`Standard`]: the kernel's five standard layers as one wrapper.
//!
//! Stacked as five [`super::Layered`] wrappers, each layer costs every call a boxed future of
//! its wrapper (the trait's), a boxed closure and a boxed future of its interceptor, and moves
//! the ones below into them: about fifteen allocations and a few hundred bytes copied per call
//! before the driver is reached. Here the five run inline in one wrapper's future, with the
//! same behaviour as that stack (`Observer` -> `ShutdownGate` -> `CircuitBreaker` ->
//! `RetryPolicy` -> `TimeoutPolicy`): each step below is the one its interceptor takes.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use kernel_core::Result;
use tracing::Instrument;

use super::circuit_breaker::CircuitBreaker;
use super::observe::Observer;
use super::retry::RetryPolicy;
use super::shutdown::ShutdownGate;
use super::timeout::TimeoutPolicy;
use super::{Around, Attempt, Op};

/// Observability, shutdown gate, circuit breaker (optional), retry (optional) and timeout, run
/// as one [`Around`]. Built by [`super::StandardLayers`].
pub struct Standard {
    observer: Observer,
    gate: ShutdownGate,
    breaker: Option<Arc<CircuitBreaker>>,
    retry: Option<RetryPolicy>,
    timeout: TimeoutPolicy,
}

impl fmt::Debug for Standard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standard")
            .field("backend", &self.observer.backend())
            .field("closed", &self.gate.is_closed())
            .field("breaker", &self.breaker)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Standard {
    pub(crate) fn new(
        observer: Observer,
        timeout: TimeoutPolicy,
        retry: Option<RetryPolicy>,
        breaker: Option<Arc<CircuitBreaker>>,
    ) -> Standard {
        Standard {
            observer,
            gate: ShutdownGate::new(),
            breaker,
            retry,
            timeout,
        }
    }

    /// The same layers with no retry (see [`super::StandardLayers::without_retry`]); the
    /// breaker stays shared, the gate starts open.
    pub(crate) fn without_retry(&self) -> Standard {
        Standard {
            observer: self.observer.clone(),
            gate: ShutdownGate::new(),
            breaker: self.breaker.clone(),
            retry: None,
            timeout: self.timeout,
        }
    }

    pub(crate) fn gate(&self) -> &ShutdownGate {
        &self.gate
    }

    pub(crate) fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_deref()
    }

    /// Below the observer: the gate, the breaker, the retry and the timeout, in one future.
    /// (Nested futures, one per layer, would each be moved into the next on every call.)
    async fn guarded<'a, R, C>(
        &'a self,
        op: &Op<'a>,
        started: tokio::time::Instant,
        mut call: C,
    ) -> Result<R>
    where
        C: FnMut(Attempt) -> BoxFuture<'a, Result<R>>,
    {
        if self.gate.is_closed() {
            return Err(ShutdownGate::error(op));
        }
        let ticket = match &self.breaker {
            Some(breaker) => Some(breaker.enter(op)?),
            None => None,
        };
        let outcome = match &self.retry {
            None => {
                self.timeout
                    .bounded(op, started, call(Attempt::Final))
                    .await
            }
            Some(retry) => {
                // The first attempt's deadline counts from the call's start (no second clock
                // read); each later one from its own start. Boxed: the retry loop's state
                // (its backoff timer, the last error) would otherwise sit in every call's
                // future; a backend that may need it pays one allocation beside its I/O.
                let mut first = Some(started);
                let attempts = retry.attempts(op, started, |attempt| {
                    let at = first.take().unwrap_or_else(tokio::time::Instant::now);
                    self.timeout.bounded(op, at, call(attempt))
                });
                Box::pin(attempts).await
            }
        };
        if let Some(ticket) = ticket {
            ticket.done(&outcome);
        }
        outcome
    }
}

impl Around for Standard {
    async fn run<'a, R, C>(&'a self, op: Op<'a>, call: C) -> Result<R>
    where
        R: Send + 'a,
        C: FnMut(Attempt) -> BoxFuture<'a, Result<R>> + Send + 'a,
    {
        let span = self.observer.span(&op);
        let started = tokio::time::Instant::now();
        let guarded = self.guarded(&op, started, call);
        // A span no subscriber wants is not entered at every poll.
        let outcome = if span.is_disabled() {
            guarded.await
        } else {
            guarded.instrument(span.clone()).await
        };
        self.observer
            .finish(&span, &op, started.elapsed(), &outcome);
        outcome
    }
}
