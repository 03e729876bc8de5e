//! Every behaviour of the conformance suites inside **one** test, run concurrently: for a
//! backend that is expensive to start (a private TLS server, a cluster), which one `#[test]`
//! starts, uses and stops, instead of one `#[test]` per behaviour sharing a server that nothing
//! would stop at the end.
//!
//! ```no_run
//! use kernel_core::{EventStore, StorageDriver};
//!
//! async fn whole_suite<D: StorageDriver + EventStore + 'static>(make: fn() -> D) {
//!     let factory = move || async move { (make(), ()) };
//!     let mut runs = kernel_testkit::suite_runs!(storage, factory());
//!     runs.extend(kernel_testkit::suite_runs!(events, factory()));
//!     kernel_testkit::run_all(runs, 8).await; // panics naming every behaviour that failed
//! }
//! ```

use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::TEST_TIMEOUT;

/// One behaviour of a suite, ready to run: its name and its test.
pub type Run<'a> = (&'static str, BoxFuture<'a, ()>);

/// The runs of a whole suite — `storage`, `events`, `lock` or `rate_limit` — each calling
/// `$factory` (an expression giving a future of `(store, guard)`, evaluated once per
/// behaviour) and testing the store through `Arc<dyn Trait>`. See [`run_all`].
#[macro_export]
macro_rules! suite_runs {
    (storage, $factory:expr) => {
        $crate::__storage_behaviours!(__suite_runs!(storage, StorageDriver, $factory))
    };
    (events, $factory:expr) => {
        $crate::__event_behaviours!(__suite_runs!(events, EventStore, $factory))
    };
    (lock, $factory:expr) => {
        $crate::__lock_behaviours!(__suite_runs!(lock, Lock, $factory))
    };
    (rate_limit, $factory:expr) => {
        $crate::__rate_limit_behaviours!(__suite_runs!(rate_limit, RateLimiter, $factory))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __suite_runs {
    (($module:ident, $trait:ident, $factory:expr) $($name:ident)*) => {{
        let mut runs: ::std::vec::Vec<$crate::Run<'_>> = ::std::vec::Vec::new();
        $(
            runs.push((
                concat!(stringify!($module), "::", stringify!($name)),
                $crate::__boxed(move || async move {
                    // The guard (a database, a key prefix) must outlive the store.
                    let (store, _guard) = $factory.await;
                    let store: ::std::sync::Arc<dyn $crate::__private::kernel_core::$trait> =
                        ::std::sync::Arc::new(store);
                    $crate::$module::$name(store).await;
                }),
            ));
        )*
        runs
    }};
}

/// Boxes the future `make` builds, in a frame of its own: built in place, some 200 behaviour
/// futures of a debug build would each take a slot of one function's frame and overflow the
/// thread's stack.
#[doc(hidden)]
pub fn __boxed<'a, F, Fut>(make: F) -> BoxFuture<'a, ()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'a,
{
    Box::pin(make())
}

/// Runs `runs`, at most `concurrency` at a time, each bounded by [`TEST_TIMEOUT`], and panics
/// at the end naming every behaviour that failed or hung (with the first failures' messages
/// printed as they happen). Prints how many ran.
pub async fn run_all(runs: Vec<Run<'_>>, concurrency: usize) {
    let total = runs.len();
    let failed: Vec<String> = futures::stream::iter(runs)
        .map(|(name, test)| async move {
            let outcome = tokio::time::timeout(TEST_TIMEOUT, AssertUnwindSafe(test).catch_unwind());
            match outcome.await {
                Ok(Ok(())) => None,
                Ok(Err(panic)) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    eprintln!("FAILED {name}: {message}");
                    Some(name.to_owned())
                }
                Err(_) => {
                    eprintln!(
                        "FAILED {name}: did not finish within {} s",
                        TEST_TIMEOUT.as_secs()
                    );
                    Some(name.to_owned())
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    println!("{} of {total} behaviours passed", total - failed.len());
    assert!(
        failed.is_empty(),
        "{} of {total} behaviours failed: {}",
        failed.len(),
        failed.join(", ")
    );
}
