//! Helpers the suites share, public so driver crates can use them in their own tests: unique
//! names, the test runner behind the suite macros, and assertions that fail with a message
//! naming the operation and the error.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, SystemTime};

use kernel_core::{Error, ErrorCode, Result};

/// How long one conformance test may run before it fails as hung. Every test is meant to take
/// well under two seconds; the margin is for a per-test database and a loaded machine.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How far a backend's clock may be from the test's when timestamps are compared (the backend
/// may stamp with its own clock, and store fewer digits).
pub const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// How long a single awaited step (a subscription event, a lock wait...) may take before the
/// test fails instead of hanging.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A name no other test uses: `prefix`, `_`, then 32 hex digits of a random UUID.
///
/// Valid as a namespace, key, lock key, rate-limit key and event category (no `-`), so a test
/// stays isolated even when drivers share a backend.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A stream name in a fresh category: `unique(category)-id`. Returns `(category, stream)`.
pub fn unique_stream(category: &str, id: &str) -> (String, String) {
    let category = unique(category);
    let stream = format!("{category}-{id}");
    (category, stream)
}

/// Runs one conformance test on its own multi-thread runtime (4 workers, like
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`), failing it if it runs longer
/// than [`TEST_TIMEOUT`]. The suite macros call this so the driver crate needs no tokio macros.
pub fn run_test<F: Future<Output = ()>>(name: &str, test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot build the tokio runtime: {e}"));
    runtime.block_on(async {
        if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
            panic!(
                "{name}: did not finish within {} s (a hang: a lost wake-up, a lock never \
                 released, a transaction blocking another?)",
                TEST_TIMEOUT.as_secs()
            );
        }
    });
}

/// Unwraps a successful result, or fails naming the operation and the error.
#[track_caller]
pub fn expect_ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got error `{e}` ({e:?})"),
    }
}

/// Unwraps an error of the given code, or fails naming the operation and what came instead.
#[track_caller]
pub fn expect_err<T: Debug>(result: Result<T>, code: ErrorCode, what: &str) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected a `{code}` error, got success: {v:?}"),
        Err(e) if e.code() == code => e,
        Err(e) => panic!(
            "{what}: expected a `{code}` error, got `{}` error `{e}`",
            e.code()
        ),
    }
}

/// Awaits `future`, failing the test (rather than hanging it) after `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not complete within {} ms", limit.as_millis()),
    }
}

/// Awaits a spawned task, failing the test with the task's panic message if it panicked.
pub async fn join<T>(handle: tokio::task::JoinHandle<T>, what: &str) -> T {
    match handle.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            panic!("{what}: a spawned task panicked: {msg}")
        }
        Err(e) => panic!("{what}: a spawned task failed: {e}"),
    }
}

/// Checks that `t` lies in `[before - CLOCK_SLACK, after + CLOCK_SLACK]`.
#[track_caller]
pub fn assert_time_between(t: SystemTime, before: SystemTime, after: SystemTime, what: &str) {
    let low = before
        .checked_sub(CLOCK_SLACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let high = after + CLOCK_SLACK;
    assert!(
        t >= low && t <= high,
        "{what}: {t:?} is not between {before:?} and {after:?} (slack {CLOCK_SLACK:?})"
    );
}

/// Checks that two timestamps are within `tolerance` of each other (stores may keep
/// microseconds or milliseconds only).
#[track_caller]
pub fn assert_time_close(a: SystemTime, b: SystemTime, tolerance: Duration, what: &str) {
    let gap = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or(Duration::MAX);
    assert!(
        gap <= tolerance,
        "{what}: {a:?} and {b:?} differ by {gap:?} (more than {tolerance:?})"
    );
}

/// Emits one `#[test]` per behaviour name, running `$crate::$module::$name` on a fresh driver
/// from the factory, either as the concrete type or as `Arc<dyn $trait>`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (($module:ident, $trait:ident, concrete, { $factory:expr }) $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                $crate::run_test(
                    concat!(stringify!($module), "::concrete::", stringify!($name)),
                    async {
                        // The guard (a per-test database...) must outlive the driver.
                        let (driver, _guard) = $factory.await;
                        let driver = ::std::sync::Arc::new(driver);
                        $crate::$module::$name(driver).await;
                    },
                );
            }
        )*
    };
    (($module:ident, $trait:ident, dyn_arc, { $factory:expr }) $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                $crate::run_test(
                    concat!(stringify!($module), "::dyn_arc::", stringify!($name)),
                    async {
                        let (driver, _guard) = $factory.await;
                        let driver: ::std::sync::Arc<dyn $crate::__private::kernel_core::$trait> =
                            ::std::sync::Arc::new(driver);
                        $crate::$module::$name(driver).await;
                    },
                );
            }
        )*
    };
}

/// Turns a behaviour list into a `&[&str]` of the names.
#[doc(hidden)]
#[macro_export]
macro_rules! __behaviour_names {
    (($($args:tt)*) $($name:ident)*) => {
        &[$(stringify!($name)),*]
    };
}

/// The module a suite macro expands to: `concrete` and `dyn_arc` test modules over the same
/// behaviour list.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite {
    ($suite:ident, $list:ident, $module:ident, $trait:ident, $factory:expr) => {
        mod $suite {
            #[allow(unused_imports)]
            use super::*;

            mod concrete {
                #[allow(unused_imports)]
                use super::*;
                $crate::$list!(__conformance_tests!($module, $trait, concrete, {
                    $factory
                }));
            }

            mod dyn_arc {
                #[allow(unused_imports)]
                use super::*;
                $crate::$list!(__conformance_tests!($module, $trait, dyn_arc, { $factory }));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_everywhere_and_distinct() {
        let a = unique("ns");
        let b = unique("ns");
        assert_ne!(a, b);
        assert!(kernel_core::validate::namespace(&a).is_ok(), "{a}");
        assert!(kernel_core::validate::category(&a).is_ok(), "{a}");
        assert!(kernel_core::validate::key(&a).is_ok(), "{a}");
        let (cat, stream) = unique_stream("order", "1");
        assert!(kernel_core::validate::stream(&stream).is_ok(), "{stream}");
        assert_eq!(kernel_core::validate::category_of(&stream), cat);
    }

    #[test]
    fn expect_err_checks_the_code() {
        let r: Result<()> = Err(Error::conflict("x"));
        assert_eq!(
            expect_err(r, ErrorCode::Conflict, "op").code(),
            ErrorCode::Conflict
        );
        let wrong = std::panic::catch_unwind(|| {
            expect_err::<()>(Err(Error::conflict("x")), ErrorCode::NotFound, "op")
        });
        assert!(wrong.is_err());
    }
}
