//! The layers through the public API: stacked in any order, the kernel's standard stack, tenant
//! scoping and access control on a kernel, and logs that never show a password.

use std::sync::Arc;
use std::time::Duration;

use driver_memory::MemoryDriver;
use kernel_bootstrap::layers::access::{Permission, Principal, Resource};
use kernel_bootstrap::layers::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitState,
};
use kernel_bootstrap::layers::fault::{FaultInjector, Flaky, flaky};
use kernel_bootstrap::layers::observe::Observer;
use kernel_bootstrap::layers::retry::RetryPolicy;
use kernel_bootstrap::layers::scope::ScopePolicy;
use kernel_bootstrap::layers::tenant::Tenant;
use kernel_bootstrap::layers::timeout::TimeoutPolicy;
use kernel_bootstrap::layers::{
    Access, Intercept, Layer, LayerSettings, Op, StandardLayers, Stores,
};
use kernel_bootstrap::{Backend, Kernel, KernelConfig};
use kernel_core::{
    Error, ErrorCode, ErrorStatus, EventFilter, ExpectedVersion, NamespaceInfo, NewEvent,
    PutOptions, Quota, StorageDriver, json,
};
use kernel_integration_tests::{LogCapture, vars};

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_elapsed: Duration::from_secs(5),
    }
}

/// One flaky memory driver behind all four roles.
fn flaky_stores() -> (Arc<Flaky<MemoryDriver>>, Stores) {
    let store = Arc::new(flaky(MemoryDriver::new()));
    let stores = Stores {
        storage: store.clone(),
        events: store.clone(),
        locks: store.clone(),
        rate_limiter: store.clone(),
    };
    (store, stores)
}

fn faults(store: &Flaky<MemoryDriver>) -> &FaultInjector {
    store.faults()
}

#[tokio::test]
async fn interceptors_stack_in_any_order() {
    let layers: Vec<(&str, Box<dyn Layer>)> = vec![
        ("retry", Box::new(Intercept::new(fast_retry()))),
        (
            "timeout",
            Box::new(Intercept::new(TimeoutPolicy::new(Duration::from_secs(5)))),
        ),
        (
            "breaker",
            Box::new(Intercept::new(CircuitBreaker::new(
                "any-order",
                CircuitBreakerConfig {
                    enabled: true,
                    failure_threshold: 100,
                    cool_down: Duration::from_secs(1),
                },
            ))),
        ),
        ("observe", Box::new(Intercept::new(Observer::new("memory")))),
    ];
    // Every permutation of the four interceptors.
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..layers.len() {
        orders = orders
            .into_iter()
            .flat_map(|o| {
                (0..layers.len())
                    .filter(|i| !o.contains(i))
                    .map(|i| {
                        let mut next = o.clone();
                        next.push(i);
                        next
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    assert_eq!(orders.len(), 24);
    for order in orders {
        let names: Vec<_> = order.iter().map(|i| layers[*i].0).collect();
        let (raw, mut stores) = flaky_stores();
        for i in &order {
            stores = stores.layer(layers[*i].1.as_ref());
        }
        // A transient fault is retried away wherever the retry layer sits.
        faults(&raw).fail_next(1, ErrorCode::Unavailable);
        stores
            .storage
            .put("o", "k", json!(1), PutOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{names:?}: {e}"));
        assert_eq!(
            stores.storage.get("o", "k").await.unwrap().unwrap().value,
            json!(1),
            "{names:?}"
        );
        let r = stores
            .events
            .append(
                "o-1",
                ExpectedVersion::NoStream,
                vec![NewEvent::new("E", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(r.stream_version, 1, "{names:?}");
        let lease = stores
            .locks
            .try_acquire("l", Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        stores.locks.release(&lease).await.unwrap();
        assert!(
            stores
                .rate_limiter
                .check("r", &Quota::per_second(1), 1)
                .await
                .unwrap()
                .allowed
        );
        let mut tx = stores.storage.begin().await.unwrap();
        tx.put("o", "t", json!(2), PutOptions::new()).await.unwrap();
        tx.commit().await.unwrap();
        assert!(stores.storage.exists("o", "t").await.unwrap(), "{names:?}");
    }
}

fn standard(vars_: &[(&str, &str)]) -> StandardLayers {
    let config = KernelConfig::from_vars(vars(vars_)).unwrap();
    config.validate().unwrap();
    StandardLayers::new("memory", &LayerSettings::from_config(&config))
}

#[tokio::test]
async fn the_standard_stack_retries_then_fails_fast_while_the_circuit_is_open() {
    let layers = standard(&[
        ("KERNEL_RETRY_MAX_ATTEMPTS", "3"),
        ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "1"),
        ("KERNEL_RETRY_MAX_BACKOFF_MS", "5"),
        ("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2"),
        ("KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS", "100"),
        ("KERNEL_TIMEOUTS_OPERATION_MS", "200"),
    ]);
    let (raw, stores) = flaky_stores();
    let stores = stores.layer(&layers);
    let breaker = layers.circuit_breaker().unwrap();

    // Two transient failures: retried, and the call's success is what the breaker counts.
    faults(&raw).fail_next(2, ErrorCode::Unavailable);
    assert!(stores.storage.get("s", "k").await.unwrap().is_none());
    assert_eq!(faults(&raw).calls(), 3);
    assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });

    // The backend goes down: a call that fails after its three attempts is one failure, not
    // three; the second such call opens the circuit.
    faults(&raw).set_down(true);
    let e = stores.storage.get("s", "k").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(e.context_value("attempts"), Some("3"), "{e}");
    assert_eq!(e.status(), ErrorStatus::RetriesExhausted, "{e}");
    assert_eq!(faults(&raw).calls(), 6);
    assert_eq!(breaker.state(), CircuitState::Closed { failures: 1 });
    stores.storage.get("s", "k").await.unwrap_err();
    assert_eq!(faults(&raw).calls(), 9);
    assert_eq!(breaker.state(), CircuitState::Open);
    // Open: every role fails fast, once, without a retry and without touching the backend.
    let e = stores
        .events
        .append(
            "s-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", json!({}))],
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::Unavailable,
        "one breaker covers every role"
    );
    assert_eq!(e.context_value("circuit"), Some("memory"), "{e}");
    assert_eq!(
        e.context_value("attempts"),
        None,
        "no retry behind an open circuit: {e}"
    );
    assert_eq!(faults(&raw).calls(), 9);

    // It comes back: after the cool-down a probe closes the circuit.
    faults(&raw).set_down(false);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(stores.storage.get("s", "k").await.unwrap().is_none());
    assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });

    // Hung calls time out, and timeouts count as backend trouble: two calls that time out on
    // every attempt open the circuit again.
    faults(&raw).set_delay(Duration::from_secs(2));
    for _ in 0..2 {
        let e = stores.storage.exists("s", "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

/// Health and the breaker agree: once the backend's health probe succeeds, calls go through at
/// once instead of failing fast for the rest of the cool-down.
#[tokio::test]
async fn a_healthy_probe_closes_the_circuit() {
    let (raw, _) = flaky_stores();
    let probed = raw.clone();
    let backend = Backend::new("flaky")
        .storage(raw.clone())
        .events(raw.clone())
        .locks(raw.clone())
        .rate_limiter(raw.clone())
        .probe(move || {
            let probed = probed.clone();
            Box::pin(async move { probed.status().await.map(|_| ()) })
        });
    let config = KernelConfig::from_vars(vars(&[
        ("KERNEL_RETRY_MAX_ATTEMPTS", "1"),
        ("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2"),
        ("KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS", "600000"),
    ]))
    .unwrap();
    let kernel = Kernel::builder()
        .backend(backend)
        .layers(LayerSettings::from_config(&config))
        .build()
        .await
        .unwrap();
    let breaker = kernel.circuit_breaker("flaky").unwrap();
    faults(&raw).set_down(true);
    for _ in 0..2 {
        kernel.storage().get("s", "k").await.unwrap_err();
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert!(!kernel.health().await.healthy, "the backend is down");
    assert_eq!(
        breaker.state(),
        CircuitState::Open,
        "a failed probe changes nothing"
    );

    faults(&raw).set_down(false);
    let report = kernel.health().await;
    assert!(report.healthy, "{report:?}");
    assert_eq!(breaker.state(), CircuitState::Closed { failures: 0 });
    assert!(
        kernel.storage().get("s", "k").await.unwrap().is_none(),
        "a kernel that reports healthy serves calls (the cool-down had 10 minutes left)"
    );
    kernel.shutdown().await;
}

#[tokio::test]
async fn the_standard_stack_times_out_naming_the_operation() {
    let layers = standard(&[
        ("KERNEL_TIMEOUTS_OPERATION_MS", "50"),
        ("KERNEL_RETRY_MAX_ATTEMPTS", "1"),
        ("KERNEL_CIRCUIT_BREAKER_ENABLED", "false"),
    ]);
    let (raw, stores) = flaky_stores();
    let stores = stores.layer(&layers);
    faults(&raw).set_delay(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let e = stores.storage.exists("s", "k").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(e.code(), ErrorCode::Timeout);
    assert_eq!(e.operation(), Some("exists"));
    assert_eq!(e.context_value("namespace"), Some("s"));
}

#[tokio::test]
async fn unsafe_operations_are_not_retried_by_the_standard_stack() {
    let layers = standard(&[
        ("KERNEL_RETRY_MAX_ATTEMPTS", "5"),
        ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "1"),
        ("KERNEL_CIRCUIT_BREAKER_ENABLED", "false"),
    ]);
    assert!(layers.circuit_breaker().is_none());
    let (raw, stores) = flaky_stores();
    let stores = stores.layer(&layers);
    // Applied, but the answer was lost: a CAS retry would report Conflict for a write that
    // succeeded, so the caller gets the `MaybeApplied` error and reads before retrying.
    stores
        .storage
        .put("u", "k", json!(1), PutOptions::new())
        .await
        .unwrap();
    faults(&raw).apply_then_fail_next(1);
    let e = stores
        .storage
        .put("u", "k", json!(2), PutOptions::new().if_version(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(e.status(), ErrorStatus::MaybeApplied, "{e}");
    assert_eq!(
        stores.storage.get("u", "k").await.unwrap().unwrap().version,
        2
    );
    // Rate-limit checks count: never repeated.
    let before = faults(&raw).calls();
    faults(&raw).apply_then_fail_next(1);
    let q = Quota::new(2, Duration::from_secs(60));
    stores.rate_limiter.check("r", &q, 1).await.unwrap_err();
    assert_eq!(faults(&raw).calls(), before + 1);
    assert_eq!(
        stores
            .rate_limiter
            .check("r", &q, 0)
            .await
            .unwrap()
            .remaining,
        1
    );
    // Appends are repeated, and idempotent.
    faults(&raw).apply_then_fail_next(1);
    let r = stores
        .events
        .append(
            "u-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("E", json!({}))],
        )
        .await
        .unwrap();
    assert_eq!(r.stream_version, 1);
    assert_eq!(
        stores
            .events
            .read_all(0, &EventFilter::all(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn tenants_and_principals_on_a_kernel() {
    let kernel = Kernel::boot(KernelConfig::default()).await.unwrap();
    let writer = Principal::new("orders-service")
        .allow(Resource::Namespace, "orders*", Permission::ReadWrite)
        .unwrap()
        .allow(Resource::Stream, "order-*", Permission::ReadWrite)
        .unwrap();
    let acme = kernel
        .stores()
        .layer(&Tenant::new("acme").unwrap())
        .layer(&writer);
    let globex = kernel
        .stores()
        .layer(&Tenant::new("globex").unwrap())
        .layer(&writer);
    acme.storage
        .put("orders", "1", json!({"total": 5}), PutOptions::new())
        .await
        .unwrap();
    acme.events
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Placed", json!({}))],
        )
        .await
        .unwrap();
    assert!(globex.storage.get("orders", "1").await.unwrap().is_none());
    assert!(
        globex
            .events
            .read_all(0, &EventFilter::all(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let e = acme.storage.get("users", "1").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    // The kernel's own (unscoped) stores see the tenant's data under its prefix.
    assert!(
        kernel
            .storage()
            .get("t_acme.orders", "1")
            .await
            .unwrap()
            .is_some()
    );
    kernel.shutdown().await;
}

/// A policy of the application's own: no writes, and namespaces starting with `secret` hidden.
#[derive(Debug, Clone)]
struct ReadOnly;

impl ScopePolicy for ReadOnly {
    fn check(&self, op: &Op<'_>) -> kernel_core::Result<()> {
        match op.access {
            Access::Read => Ok(()),
            Access::Write => Err(Error::new(ErrorCode::PermissionDenied, "read-only")),
        }
    }

    fn keep_namespace(&self, info: &mut NamespaceInfo) -> bool {
        !info.name.starts_with("secret")
    }
}

#[tokio::test]
async fn a_scope_policy_of_your_own_is_a_layer() {
    let (raw, stores) = flaky_stores();
    for ns in ["public", "secret"] {
        let put = stores.storage.put(ns, "k", json!(1), PutOptions::new());
        put.await.unwrap();
    }
    let before = faults(&raw).calls();
    let ro = stores.layer(&ReadOnly);
    let e = ro
        .storage
        .put("public", "k", json!(2), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    assert_eq!(e.operation(), Some("put"));
    assert_eq!(e.context_value("namespace"), Some("public"));
    let q = Quota::per_second(5);
    let e = ro.rate_limiter.check("r", &q, 1).await.unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::PermissionDenied,
        "a check with a cost writes"
    );
    assert_eq!(faults(&raw).calls(), before, "refused before any I/O");
    let peek = ro.rate_limiter.check("r", &q, 0).await.unwrap();
    assert_eq!(peek.remaining, 5, "a cost-0 check only reads");
    let names: Vec<_> = ro
        .storage
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["public"]);
}

#[tokio::test]
async fn access_is_denied_before_any_io() {
    let (raw, stores) = flaky_stores();
    let reader = Principal::new("reader")
        .allow(Resource::Namespace, "*", Permission::Read)
        .unwrap();
    let stores = stores.layer(&reader);
    let e = stores
        .storage
        .put("any", "k", json!(1), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    let e = stores
        .locks
        .try_acquire("k", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::PermissionDenied);
    assert_eq!(faults(&raw).calls(), 0);
    assert!(stores.storage.get("any", "k").await.unwrap().is_none());
    assert_eq!(faults(&raw).calls(), 1);
}

#[tokio::test]
async fn kernel_operations_are_traced_with_backend_and_outcome() {
    let logs = LogCapture::start();
    let kernel = Kernel::boot(KernelConfig::default()).await.unwrap();
    kernel
        .storage()
        .put("traced", "k", json!(1), PutOptions::new())
        .await
        .unwrap();
    kernel.storage().get("bad ns", "k").await.unwrap_err();
    kernel.shutdown().await;
    let text = logs.text();
    let put = text
        .lines()
        .find(|l| l.contains("operation=\"put\""))
        .unwrap_or_else(|| panic!("no span for the put in:\n{text}"));
    assert!(put.contains("backend=memory"), "{put}");
    assert!(put.contains("namespace=traced"), "{put}");
    assert!(put.contains("outcome=\"ok\""), "{put}");
    assert!(
        text.lines()
            .any(|l| l.contains("operation=\"get\"") && l.contains("invalid_input")),
        "{text}"
    );
}

#[tokio::test]
async fn passwords_never_appear_in_logs() {
    let secret = "pa55-w0rd-in-logs";
    let logs = LogCapture::start();
    let config = KernelConfig::from_vars(vars(&[
        ("KERNEL_STORAGE_MODE", "memory"),
        ("KERNEL_BACKENDS_EVENTS", "postgres"),
        ("KERNEL_BACKENDS_LOCKS", "redis"),
        (
            "DATABASE_URL",
            &format!("postgres://app:{secret}@127.0.0.1:1/app"),
        ),
        ("REDIS_URL", &format!("redis://:{secret}@127.0.0.1:1")),
        ("KERNEL_POSTGRES_CONNECT_TIMEOUT_MS", "500"),
        ("KERNEL_REDIS_CONNECT_TIMEOUT_MS", "500"),
        ("KERNEL_POSTGRES_MIGRATE_ON_BOOT", "false"),
    ]))
    .unwrap();
    // Nothing listens on port 1: boot fails, loudly, naming the backend.
    let e = Kernel::boot(config).await.unwrap_err();
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(!format!("{e:?}").contains(secret), "{e:?}");
    tracing::error!(error = %e, "boot failed");
    let text = logs.text();
    assert!(
        text.contains("booting the kernel"),
        "the boot logs its (redacted) configuration:\n{text}"
    );
    assert!(text.contains("***"), "{text}");
    assert!(!text.contains(secret), "password leaked into logs:\n{text}");
}
