//! [`ShutdownGate`]: once the kernel is shut down, every call fails at once with a permanent
//! `Unavailable` that says so, instead of reaching a closed driver whose answer (a closed pool,
//! a dropped connection) would read as backend trouble: retried, counted by the circuit
//! breaker, and finally reported as a retryable "circuit open".

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use kernel_core::{Error, ErrorStatus, Result};

use super::{Attempt, Call, Interceptor, Op};

/// Refuses every call once closed. The kernel puts one above the retry layer of each backend
/// and closes it first in [`crate::Kernel::shutdown`].
#[derive(Debug, Default)]
pub struct ShutdownGate {
    closed: AtomicBool,
}

impl ShutdownGate {
    /// An open gate.
    pub fn new() -> ShutdownGate {
        ShutdownGate::default()
    }

    /// Closes the gate: every later call fails with [`ShutdownGate::error`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The error of a call after shutdown: `Unavailable`, permanent (repeating it fails the
    /// same way), naming the operation.
    pub fn error(op: &Op<'_>) -> Error {
        op.annotate(
            Error::unavailable("the kernel has been shut down").with_status(ErrorStatus::Permanent),
        )
    }
}

impl Interceptor for ShutdownGate {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        if self.is_closed() {
            let err = ShutdownGate::error(&op);
            return Box::pin(async move { Err(err) });
        }
        call(Attempt::Final)
    }
}
