//! Booting the kernel from environment variables and TOML, and every configuration error.

use kernel_bootstrap::{BackendKind, Kernel, KernelConfig, Role};
use kernel_core::{ErrorCode, PutOptions, json};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn config_error(pairs: &[(&str, &str)]) -> kernel_core::Error {
    let result = KernelConfig::from_vars(vars(pairs)).and_then(|c| c.validate().map(|()| c));
    match result {
        Ok(config) => panic!("expected a Config error for {pairs:?}, got {config:?}"),
        Err(e) => e,
    }
}

/// The config after validation.
fn resolved(pairs: &[(&str, &str)]) -> KernelConfig {
    let config = KernelConfig::from_vars(vars(pairs)).unwrap();
    config.validate().unwrap();
    config
}

#[test]
fn empty_environment_means_memory_everywhere() {
    let resolved = resolved(&[]);
    for role in Role::ALL {
        assert_eq!(resolved.backend(role), BackendKind::Memory);
    }
    assert_eq!(resolved.limits, kernel_core::Limits::DEFAULT);
}

#[test]
fn storage_mode_aliases() {
    for (raw, kind) in [
        ("IN_MEMORY", BackendKind::Memory),
        ("memory", BackendKind::Memory),
        ("in-memory", BackendKind::Memory),
        ("SUPABASE", BackendKind::Postgres),
        ("postgresql", BackendKind::Postgres),
        ("Redis", BackendKind::Redis),
    ] {
        assert_eq!(raw.parse::<BackendKind>().unwrap(), kind, "{raw}");
    }
}

#[test]
fn per_role_overrides_from_env() {
    let resolved = resolved(&[
        ("KERNEL_STORAGE_MODE", "SUPABASE"),
        ("DATABASE_URL", "postgres://app:pw@db:5432/app"),
        ("REDIS_URL", "redis://cache:6379"),
        ("KERNEL_BACKENDS_LOCKS", "redis"),
        ("KERNEL_BACKENDS_RATE_LIMITS", "redis"),
        ("KERNEL_POSTGRES_POOL_SIZE", "4"),
        ("KERNEL_REDIS_KEY_PREFIX", "myapp"),
    ]);
    assert_eq!(resolved.backend(Role::Storage), BackendKind::Postgres);
    assert_eq!(resolved.backend(Role::Events), BackendKind::Postgres);
    assert_eq!(resolved.backend(Role::Locks), BackendKind::Redis);
    assert_eq!(resolved.backend(Role::RateLimits), BackendKind::Redis);
    assert_eq!(resolved.postgres.pool_size, 4);
    assert_eq!(resolved.redis.key_prefix, "myapp");
    assert_eq!(resolved.postgres.url, "postgres://app:pw@db:5432/app");
}

#[test]
fn toml_file_with_env_on_top() {
    let dir = std::env::temp_dir().join(format!("kernel-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kernel.toml");
    std::fs::write(
        &path,
        r#"
storage_mode = "memory"

[backends]
events = "postgres"

[postgres]
url = "postgres://postgres@127.0.0.1:5432/postgres"
pool_size = 8
migrate_on_boot = false

[limits]
max_value_bytes = 4096
"#,
    )
    .unwrap();
    let resolved = resolved(&[
        ("KERNEL_CONFIG_FILE", path.to_str().unwrap()),
        ("KERNEL_POSTGRES_POOL_SIZE", "2"),
    ]);
    assert_eq!(resolved.backend(Role::Storage), BackendKind::Memory);
    assert_eq!(resolved.backend(Role::Events), BackendKind::Postgres);
    let pg = resolved.postgres_config();
    assert_eq!(pg.pool_size, 2, "the environment overrides the file");
    assert!(!pg.migrate_on_boot);
    assert_eq!(resolved.limits.max_value_bytes, 4096);
    assert_eq!(
        pg.limits.max_value_bytes, 4096,
        "[limits] reaches the driver's settings"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unknown_backend_names_the_setting() {
    let e = config_error(&[("KERNEL_STORAGE_MODE", "mongo")]);
    assert_eq!(e.code(), ErrorCode::Config);
    assert_eq!(e.context_value("setting"), Some("storage_mode"));
    assert_eq!(e.context_value("env"), Some("KERNEL_STORAGE_MODE"));
    let e = config_error(&[("KERNEL_BACKENDS_EVENTS", "kafka")]);
    assert_eq!(e.context_value("setting"), Some("backends.events"));
    assert_eq!(e.context_value("env"), Some("KERNEL_BACKENDS_EVENTS"));
}

#[test]
fn missing_urls_are_named() {
    let e = config_error(&[("KERNEL_STORAGE_MODE", "postgres")]);
    assert_eq!(e.context_value("setting"), Some("postgres.url"));
    assert!(e.to_string().contains("DATABASE_URL"), "{e}");
    let e = config_error(&[("KERNEL_BACKENDS_LOCKS", "redis")]);
    assert_eq!(e.context_value("setting"), Some("redis.url"));
    assert!(e.to_string().contains("REDIS_URL"), "{e}");
}

#[test]
fn malformed_values_are_named() {
    for (name, value, key) in [
        ("KERNEL_POSTGRES_POOL_SIZE", "many", "postgres.pool_size"),
        ("KERNEL_POSTGRES_POOL_SIZE", "0", "postgres.pool_size"),
        (
            "KERNEL_LIMITS_MAX_VALUE_BYTES",
            "-1",
            "limits.max_value_bytes",
        ),
        (
            "KERNEL_POSTGRES_MIGRATE_ON_BOOT",
            "perhaps",
            "postgres.migrate_on_boot",
        ),
        (
            "KERNEL_REDIS_OPERATION_TIMEOUT_MS",
            "1s",
            "redis.operation_timeout_ms",
        ),
        (
            "KERNEL_REDIS_OPERATION_TIMEOUT_MS",
            "0",
            "redis.operation_timeout_ms",
        ),
    ] {
        let e = config_error(&[
            ("KERNEL_STORAGE_MODE", "postgres"),
            ("KERNEL_BACKENDS_LOCKS", "redis"),
            ("DATABASE_URL", "postgres://h/db"),
            ("REDIS_URL", "redis://h"),
            (name, value),
        ]);
        assert_eq!(e.code(), ErrorCode::Config, "{name}");
        assert_eq!(e.context_value("setting"), Some(key), "{e}");
        assert_eq!(e.context_value("env"), Some(name), "{e}");
    }
    let e = config_error(&[("KERNEL_LIMITS_MAX_DEPTH", "0")]);
    assert_eq!(e.context_value("setting"), Some("limits.max_depth"));
    let e = config_error(&[
        ("KERNEL_STORAGE_MODE", "postgres"),
        ("DATABASE_URL", "mysql://h/db"),
    ]);
    assert_eq!(e.context_value("setting"), Some("postgres.url"));
    let e = config_error(&[
        ("KERNEL_STORAGE_MODE", "redis"),
        ("REDIS_URL", "redis://h"),
        ("KERNEL_REDIS_KEY_PREFIX", "a{b}"),
    ]);
    assert_eq!(e.context_value("setting"), Some("redis.key_prefix"));
}

#[test]
fn bad_toml_is_a_config_error() {
    let e = KernelConfig::from_toml_str("storage_mode = 3").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
    let e = KernelConfig::from_toml_str("[postgres]\nnot_a_key = 1").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
    assert!(e.to_string().contains("not_a_key"), "{e}");
    let e = KernelConfig::from_vars(vars(&[("KERNEL_CONFIG_FILE", "/nonexistent/kernel.toml")]))
        .unwrap_err();
    assert_eq!(e.context_value("setting"), Some("KERNEL_CONFIG_FILE"));
    let e = config_error(&[("KERNEL_DOCUMENTS_BACKEND", "redis")]);
    assert!(
        e.to_string().contains("KERNEL_BACKENDS_STORAGE"),
        "renamed: {e}"
    );
}

#[test]
fn passwords_never_show() {
    let secret = "s3cr3t-pa55";
    let cfg = KernelConfig::from_vars(vars(&[
        ("KERNEL_STORAGE_MODE", "postgres"),
        ("KERNEL_BACKENDS_LOCKS", "redis"),
        (
            "DATABASE_URL",
            &format!("postgres://app:{secret}@db:5432/app"),
        ),
        ("REDIS_URL", &format!("redis://:{secret}@cache:6379")),
    ]))
    .unwrap();
    cfg.validate().unwrap();
    let serialized = serde_json::to_string(&cfg).unwrap();
    for shown in [format!("{cfg:?}"), serialized] {
        assert!(!shown.contains(secret), "password leaked: {shown}");
        assert!(shown.contains("***"), "{shown}");
    }
    let e = KernelConfig::from_vars(vars(&[
        ("KERNEL_STORAGE_MODE", "postgres"),
        ("DATABASE_URL", &format!("mysql://app:{secret}@db/app")),
    ]))
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(!format!("{e:?}").contains(secret), "{e:?}");

    // A URL given where a backend name or a TOML table belongs: the error quotes the value,
    // redacted.
    let url = format!("postgres://app:{secret}@db/app");
    let e = KernelConfig::from_vars(vars(&[("KERNEL_STORAGE_MODE", &url)]))
        .and_then(|c| c.validate())
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    assert!(e.to_string().contains("***"), "{e}");
    // ... or where a number belongs.
    let e = KernelConfig::from_vars(vars(&[("KERNEL_POSTGRES_POOL_SIZE", &url)])).unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    assert!(e.to_string().contains("***"), "{e}");
    let e = KernelConfig::from_toml_str(&format!("postgres = \"{url}\"\n")).unwrap_err();
    assert!(!format!("{e} {e:?}").contains(secret), "{e:?}");
    assert!(e.to_string().contains("***"), "{e}");
}

#[tokio::test]
async fn boots_memory_kernel_and_reports_health() {
    let kernel = Kernel::boot(
        KernelConfig::from_vars(vars(&[("KERNEL_STORAGE_MODE", "IN_MEMORY")])).unwrap(),
    )
    .await
    .unwrap();
    kernel
        .storage()
        .put("boot", "k", json!(1), PutOptions::new())
        .await
        .unwrap();
    let report = kernel.health().await;
    assert!(report.healthy);
    assert_eq!(report.components.len(), 4);
    assert!(
        report
            .components
            .iter()
            .all(|c| c.backend == "memory" && c.healthy)
    );
    kernel.shutdown().await;
    kernel.shutdown().await;
    assert!(
        !kernel.health().await.healthy,
        "a shut-down kernel is not healthy"
    );
}

#[tokio::test]
async fn configured_value_limit_reaches_the_driver() {
    let kernel = Kernel::boot(
        KernelConfig::from_vars(vars(&[("KERNEL_LIMITS_MAX_VALUE_BYTES", "100")])).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(kernel.config().unwrap().limits.max_value_bytes, 100);
    assert_eq!(kernel.storage().capabilities().max_value_bytes, 100);
    // A JSON string of n characters serialises to n + 2 bytes.
    kernel
        .storage()
        .put("boot", "fits", json!("x".repeat(98)), PutOptions::new())
        .await
        .unwrap();
    let e = kernel
        .storage()
        .put("boot", "big", json!("x".repeat(99)), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    assert!(kernel.storage().get("boot", "big").await.unwrap().is_none());
}

#[test]
fn layer_and_pipeline_defaults() {
    let resolved = resolved(&[]);
    assert_eq!(
        resolved.retry,
        kernel_bootstrap::layers::retry::RetryPolicy::default()
    );
    assert_eq!(resolved.retry.max_attempts, 3);
    assert_eq!(
        resolved.timeouts.operation,
        std::time::Duration::from_secs(30)
    );
    let breaker = resolved.circuit_breaker;
    assert!(breaker.enabled);
    assert_eq!(breaker.failure_threshold, 5);
    assert_eq!(breaker.cool_down, std::time::Duration::from_secs(10));
    assert_eq!(resolved.pipeline.capacity, 1024);
    assert_eq!(resolved.pipeline.workers, 4);
}

#[test]
fn layer_settings_from_toml_with_env_on_top() {
    let dir = std::env::temp_dir().join(format!("kernel-layers-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kernel.toml");
    std::fs::write(
        &path,
        r#"
[retry]
max_attempts = 5
initial_backoff_ms = 20
max_backoff_ms = 400
max_elapsed_ms = 3000

[timeouts]
operation_ms = 1500

[circuit_breaker]
enabled = true
failure_threshold = 7
cool_down_ms = 2500

[pipeline]
capacity = 64
workers = 2
"#,
    )
    .unwrap();
    let resolved = resolved(&[
        ("KERNEL_CONFIG_FILE", path.to_str().unwrap()),
        ("KERNEL_RETRY_MAX_ATTEMPTS", "2"),
        ("KERNEL_PIPELINE_WORKERS", "8"),
    ]);
    let ms = std::time::Duration::from_millis;
    assert_eq!(resolved.retry.max_attempts, 2, "the environment wins");
    assert_eq!(resolved.retry.initial_backoff, ms(20));
    assert_eq!(resolved.retry.max_backoff, ms(400));
    assert_eq!(resolved.retry.max_elapsed, ms(3000));
    assert_eq!(resolved.timeouts.operation, ms(1500));
    let breaker = resolved.circuit_breaker;
    assert_eq!(breaker.failure_threshold, 7);
    assert_eq!(breaker.cool_down, ms(2500));
    assert_eq!(resolved.pipeline.capacity, 64);
    assert_eq!(resolved.pipeline.workers, 8);
    std::fs::remove_dir_all(dir).ok();

    let off = crate::resolved(&[("KERNEL_CIRCUIT_BREAKER_ENABLED", "off")]);
    assert!(!off.circuit_breaker.enabled);
}

#[test]
fn malformed_layer_settings_are_named() {
    for (name, value) in [
        ("KERNEL_RETRY_MAX_ATTEMPTS", "0"),
        ("KERNEL_RETRY_MAX_ATTEMPTS", "101"),
        ("KERNEL_RETRY_MAX_ATTEMPTS", "three"),
        ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "0"),
        ("KERNEL_RETRY_MAX_BACKOFF_MS", "-5"),
        ("KERNEL_RETRY_MAX_ELAPSED_MS", "3600001"),
        ("KERNEL_TIMEOUTS_OPERATION_MS", "0"),
        ("KERNEL_TIMEOUTS_OPERATION_MS", "30s"),
        ("KERNEL_CIRCUIT_BREAKER_ENABLED", "sometimes"),
        ("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0"),
        ("KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS", "0"),
        ("KERNEL_PIPELINE_CAPACITY", "0"),
        ("KERNEL_PIPELINE_CAPACITY", "lots"),
        ("KERNEL_PIPELINE_WORKERS", "257"),
    ] {
        let e = config_error(&[(name, value)]);
        assert_eq!(e.code(), ErrorCode::Config, "{name}={value}");
        assert_eq!(e.context_value("env"), Some(name), "{name}={value}: {e}");
        let key = name
            .strip_prefix("KERNEL_")
            .unwrap()
            .to_ascii_lowercase()
            .replacen("retry_", "retry.", 1)
            .replacen("timeouts_", "timeouts.", 1)
            .replacen("circuit_breaker_", "circuit_breaker.", 1)
            .replacen("pipeline_", "pipeline.", 1);
        assert_eq!(e.context_value("setting"), Some(key.as_str()), "{e}");
        assert!(e.message().contains("expected"), "{e}");
    }
    // Backoff bounds that contradict each other name the initial backoff.
    let e = config_error(&[
        ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "500"),
        ("KERNEL_RETRY_MAX_BACKOFF_MS", "100"),
    ]);
    assert_eq!(e.context_value("setting"), Some("retry.initial_backoff_ms"));
    assert!(e.message().contains("retry.max_backoff_ms"), "{e}");
    // Unknown keys in the new TOML sections are errors too.
    let e = KernelConfig::from_toml_str("[retry]\nmax_tries = 3").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
    assert!(e.to_string().contains("max_tries"), "{e}");
    let e = KernelConfig::from_toml_str("[pipeline]\ncapacity = \"big\"").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
}

#[tokio::test]
async fn booted_kernel_stacks_the_configured_layers() {
    let kernel = Kernel::boot(
        KernelConfig::from_vars(vars(&[
            ("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
            ("KERNEL_PIPELINE_CAPACITY", "10"),
        ]))
        .unwrap(),
    )
    .await
    .unwrap();
    let breaker = kernel.circuit_breaker("memory").unwrap();
    assert_eq!(breaker.name(), "memory");
    assert_eq!(kernel.pipeline().config().capacity, 10);
    assert!(kernel.circuit_breaker("redis").is_none());
    let stored = kernel
        .stores()
        .storage
        .put("layers", "k", json!(1), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(stored.version, 1);
    kernel.shutdown().await;
}

/// After `shutdown()` every call says so, every time, permanently: no retry repeats it, the
/// circuit breaker never counts it, and it never turns into a retryable "circuit open".
#[tokio::test]
async fn a_shut_down_kernel_says_so_every_time() {
    let kernel = Kernel::boot(
        KernelConfig::from_vars(vars(&[("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2")]))
            .unwrap(),
    )
    .await
    .unwrap();
    kernel.shutdown().await;
    for _ in 0..10 {
        let e = kernel.storage().get("after", "k").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        assert_eq!(e.status(), kernel_core::ErrorStatus::Permanent, "{e}");
        assert!(e.to_string().contains("shut down"), "{e}");
        assert_eq!(e.operation(), Some("get"));
        let e = kernel
            .locks()
            .try_acquire("after", std::time::Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("shut down"), "{e}");
    }
    assert_eq!(
        kernel.circuit_breaker("memory").unwrap().state(),
        kernel_bootstrap::layers::circuit_breaker::CircuitState::Closed { failures: 0 }
    );
}
