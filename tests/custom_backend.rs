//! A backend written outside the kernel, plugged in with `KernelBuilder`: the example's
//! `LocalLimiter` passes the whole rate-limit conformance suite on its own and behind the
//! kernel's layers, and the builder gives roles to backends as documented.

#[path = "../examples/custom/local_limiter.rs"]
mod local_limiter;

use std::sync::Arc;

use driver_memory::MemoryDriver;
use kernel_bootstrap::{Backend, KernelBuilder, Role};
use kernel_core::{ErrorCode, Quota, RateLimiter};
use local_limiter::LocalLimiter;

kernel_testkit::rate_limit_suite!(async { (LocalLimiter::new(), ()) });

/// The suite again, through the kernel's standard layers: the store a built kernel hands out.
mod through_the_kernel {
    use super::*;

    /// The kernel's layered limiter, with the kernel kept alive beside it.
    #[derive(Debug)]
    struct KernelLimiter {
        store: Arc<dyn RateLimiter>,
        _kernel: kernel_bootstrap::Kernel,
    }

    #[kernel_core::async_trait]
    impl RateLimiter for KernelLimiter {
        async fn check(
            &self,
            key: &str,
            quota: &Quota,
            cost: u32,
        ) -> kernel_core::Result<kernel_core::RateDecision> {
            self.store.check(key, quota, cost).await
        }

        async fn reset(&self, key: &str) -> kernel_core::Result<()> {
            self.store.reset(key).await
        }
    }

    async fn kernel_limiter() -> KernelLimiter {
        let kernel = KernelBuilder::new()
            .backend(Backend::all("memory", MemoryDriver::new()))
            .backend(Backend::new("local").rate_limiter(Arc::new(LocalLimiter::new())))
            .build()
            .await
            .unwrap();
        KernelLimiter {
            store: kernel.rate_limiter().clone(),
            _kernel: kernel,
        }
    }

    kernel_testkit::rate_limit_suite!(async { (kernel_limiter().await, ()) });
}

#[tokio::test]
async fn later_backends_take_the_roles_they_serve() {
    let kernel = KernelBuilder::new()
        .backend(Backend::all("memory", MemoryDriver::new()))
        .backend(Backend::new("local").rate_limiter(Arc::new(LocalLimiter::new())))
        .build()
        .await
        .unwrap();
    assert_eq!(kernel.backend_of(Role::RateLimits), "local");
    assert_eq!(kernel.backend_of(Role::Storage), "memory");
    let report = kernel.health().await;
    assert!(report.healthy);
    let backends: Vec<&str> = report
        .components
        .iter()
        .map(|c| c.backend.as_str())
        .collect();
    assert_eq!(backends, ["memory", "memory", "memory", "local"]);
    assert!(
        kernel.circuit_breaker("local").is_some(),
        "every backend gets its own breaker"
    );
    kernel.shutdown().await;
}

#[tokio::test]
async fn a_role_nobody_serves_is_a_config_error() {
    let e = KernelBuilder::new()
        .backend(Backend::new("local").rate_limiter(Arc::new(LocalLimiter::new())))
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
    assert_eq!(e.context_value("setting"), Some("backends.storage"), "{e}");
}

#[tokio::test]
async fn a_failing_probe_stops_the_build_naming_the_backend() {
    let e = KernelBuilder::new()
        .backend(
            Backend::all("memory", MemoryDriver::new())
                .probe(|| Box::pin(async { Err(kernel_core::Error::unavailable("no answer")) })),
        )
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(e.context_value("backend"), Some("memory"), "{e}");
}

#[tokio::test]
async fn shutdown_runs_every_hook_once() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let kernel = KernelBuilder::new()
        .backend(
            Backend::all("memory", MemoryDriver::new()).on_shutdown(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async { Ok(()) })
            }),
        )
        .build()
        .await
        .unwrap();
    kernel.shutdown().await;
    kernel.shutdown().await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn nothing_the_builder_was_given_is_left_open() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let closed = Arc::new(AtomicUsize::new(0));
    let hook = |closed: &Arc<AtomicUsize>| {
        let closed = closed.clone();
        move || -> futures::future::BoxFuture<'static, kernel_core::Result<()>> {
            closed.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    };
    // A backend whose every role a later one takes is closed by the build.
    let kernel = KernelBuilder::new()
        .backend(Backend::all("first", MemoryDriver::new()).on_shutdown(hook(&closed)))
        .backend(Backend::all("second", MemoryDriver::new()))
        .build()
        .await
        .unwrap();
    assert_eq!(closed.load(Ordering::SeqCst), 1);
    assert_eq!(kernel.backend_of(Role::Storage), "second");
    // A failed build closes the backends it had been given.
    let e = KernelBuilder::new()
        .backend(Backend::all("ok", MemoryDriver::new()).on_shutdown(hook(&closed)))
        .backend(
            Backend::new("broken")
                .locks(Arc::new(MemoryDriver::new()))
                .probe(|| Box::pin(async { Err(kernel_core::Error::unavailable("down")) }))
                .on_shutdown(hook(&closed)),
        )
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.context_value("backend"), Some("broken"), "{e}");
    assert_eq!(closed.load(Ordering::SeqCst), 3);
}
