//! Fault injection, for testing code built on the kernel (in the spirit of OpenDAL's
//! `ChaosLayer`): fail the next calls with a chosen error, apply a call but lose its answer (the
//! connection dropped after the write), slow every call down, or take the store "down".
//!
//! It wraps a real store; it never stands in for one. The layers' own tests use it over
//! `driver_memory::MemoryDriver`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use driver_memory::MemoryDriver;
//! use kernel_bootstrap::layers::fault::flaky;
//! use kernel_core::{ErrorCode, StorageDriver};
//!
//! let store = flaky(MemoryDriver::new());
//! store.faults().fail_next(1, ErrorCode::Unavailable);
//! assert_eq!(store.get("ns", "k").await.unwrap_err().code(), ErrorCode::Unavailable);
//! assert!(store.get("ns", "k").await.unwrap().is_none());
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use kernel_core::{Error, ErrorCode, Result};

use super::{Attempt, Call, Interceptor, Layered, Op};

/// A store with a [`FaultInjector`] around it.
pub type Flaky<T> = Layered<FaultInjector, T>;

/// Wraps `inner` in a fresh [`FaultInjector`].
pub fn flaky<T>(inner: T) -> Flaky<T> {
    Layered::new(Arc::new(inner), FaultInjector::default())
}

impl<T: ?Sized> Layered<FaultInjector, T> {
    /// The injector, to arm faults.
    pub fn faults(&self) -> &FaultInjector {
        self.interceptor()
    }
}

#[derive(Debug)]
struct Plan {
    fail_next: u32,
    code: ErrorCode,
    lose_answers: u32,
    delay: Duration,
    down: bool,
}

/// Injects faults into the calls that pass through it. Counts every call.
#[derive(Debug)]
pub struct FaultInjector {
    calls: AtomicU64,
    plan: Mutex<Plan>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        FaultInjector {
            calls: AtomicU64::new(0),
            plan: Mutex::new(Plan {
                fail_next: 0,
                code: ErrorCode::Unavailable,
                lose_answers: 0,
                delay: Duration::ZERO,
                down: false,
            }),
        }
    }
}

impl FaultInjector {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        // The plan holds plain numbers, valid whatever a panicking holder left behind.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` calls fail with `code` without reaching the inner store.
    pub fn fail_next(&self, n: u32, code: ErrorCode) {
        let mut p = self.plan();
        p.fail_next = n;
        p.code = code;
    }

    /// The next `n` calls reach the inner store (and take effect), then report `Unavailable`
    /// as if the connection dropped before the answer came back: `MaybeApplied` for a write
    /// (as the drivers report it), `Temporary` for a read.
    pub fn apply_then_fail_next(&self, n: u32) {
        self.plan().lose_answers = n;
    }

    /// Every call waits this long before reaching the inner store.
    pub fn set_delay(&self, delay: Duration) {
        self.plan().delay = delay;
    }

    /// While down, every call fails with a retryable `Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.plan().down = down;
    }

    /// How many calls passed through (attempts, not operations).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

enum Fate {
    Fail(ErrorCode),
    LoseAnswer(Duration),
    Run(Duration),
}

impl Interceptor for FaultInjector {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fate = {
            let mut p = self.plan();
            if p.down {
                Fate::Fail(ErrorCode::Unavailable)
            } else if p.fail_next > 0 {
                p.fail_next -= 1;
                Fate::Fail(p.code)
            } else if p.lose_answers > 0 {
                p.lose_answers -= 1;
                Fate::LoseAnswer(p.delay)
            } else {
                Fate::Run(p.delay)
            }
        };
        Box::pin(async move {
            match fate {
                Fate::Fail(code) => Err(op.annotate(Error::new(code, "injected fault"))),
                Fate::LoseAnswer(delay) => {
                    tokio::time::sleep(delay).await;
                    // The outcome is discarded on purpose: this fault is "applied, answer lost".
                    let _applied = call(Attempt::Final).await;
                    let lost = Error::unavailable(
                        "injected fault: the answer was lost after the call was applied",
                    );
                    Err(op.annotate(match op.access {
                        crate::layers::Access::Write => lost.after_sending_write(),
                        crate::layers::Access::Read => lost,
                    }))
                }
                Fate::Run(delay) => {
                    tokio::time::sleep(delay).await;
                    call(Attempt::Final).await
                }
            }
        })
    }
}
