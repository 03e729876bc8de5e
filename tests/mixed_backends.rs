//! The usual production set-up, booted from configuration against real servers: documents and
//! events on PostgreSQL, locks and rate limits on Redis.

use std::time::Duration;

use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{
    EventFilter, EventStoreExt, ExpectedVersion, NewEvent, PutOptions, Quota, ReadStream, json,
};
use kernel_integration_tests::vars;
use kernel_testkit::postgres::fresh_database;
use kernel_testkit::redis::RedisTestServer;

#[tokio::test]
async fn documents_and_events_on_postgres_locks_and_limits_on_redis() {
    let db = fresh_database().await;
    let redis = RedisTestServer::start().await;
    let env = vars(&[
        ("KERNEL_STORAGE_MODE", "SUPABASE"),
        ("KERNEL_BACKENDS_LOCKS", "redis"),
        ("KERNEL_BACKENDS_RATE_LIMITS", "redis"),
        ("DATABASE_URL", db.url()),
        ("REDIS_URL", redis.url()),
        ("KERNEL_REDIS_KEY_PREFIX", redis.prefix()),
        ("KERNEL_POSTGRES_POOL_SIZE", "4"),
    ]);
    let kernel = Kernel::boot(KernelConfig::from_vars(env.clone()).unwrap())
        .await
        .expect("boot against the test servers");

    let report = kernel.health().await;
    assert!(report.healthy, "{report:?}");
    let backend_of = |component: &str| {
        report
            .components
            .iter()
            .find(|c| c.component == component)
            .map(|c| c.backend.clone())
    };
    assert_eq!(backend_of("storage").as_deref(), Some("postgres"));
    assert_eq!(backend_of("events").as_deref(), Some("postgres"));
    assert_eq!(backend_of("locks").as_deref(), Some("redis"));
    assert_eq!(backend_of("rate_limits").as_deref(), Some("redis"));

    kernel
        .storage()
        .put("orders", "o-1", json!({"total": 42}), PutOptions::new())
        .await
        .unwrap();
    kernel
        .events()
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Placed", json!({"total": 42}))],
        )
        .await
        .unwrap();
    let lease = kernel
        .locks()
        .try_acquire("order-1", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lock is free");
    let decision = kernel
        .rate_limiter()
        .check("api:order", &Quota::per_second(2), 1)
        .await
        .unwrap();
    assert!(decision.allowed);

    // The lock and the rate-limit state live in Redis under the configured prefix.
    let keys = redis.keys().await;
    assert!(keys.iter().any(|k| k.contains("l:order-1")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("r:api:order")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("orders")),
        "documents must not be in Redis: {keys:?}"
    );

    // A second kernel on the same servers sees the same data: it lives in the backends, not in
    // the process.
    let other = Kernel::boot(KernelConfig::from_vars(env).unwrap())
        .await
        .unwrap();
    let doc = other.storage().get("orders", "o-1").await.unwrap().unwrap();
    assert_eq!(doc.value, json!({"total": 42}));
    assert_eq!(other.events().stream_version("order-1").await.unwrap(), 1);
    let events = other
        .events()
        .read_stream("order-1", ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(events[0].event_type, "Placed");
    assert!(
        other
            .locks()
            .try_acquire("order-1", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    let all = other
        .events()
        .read_all(0, &EventFilter::all(), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);

    kernel.locks().release(&lease).await.unwrap();
    other.shutdown().await;
    kernel.shutdown().await;
}
