//! Driver behaviour beyond the shared suite: boot failures, error mapping on a live server,
//! password redaction, pool exhaustion, and query results identical to the shared evaluator.

mod common;

use std::time::Duration;

use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_core::{ErrorCode, EventStore, Filter, PutOptions, Query, StorageDriver};
use kernel_testkit::{expect_err, expect_ok, unique};
use serde_json::{Value, json};

#[tokio::test]
async fn malformed_url_is_a_config_error() {
    let err = expect_err(
        PostgresDriver::connect(PostgresConfig::new("postgres://app:hunter2@host:port/db")).await,
        ErrorCode::Config,
        "connect with a malformed URL",
    );
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("postgres") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_names_the_backend() {
    let mut config = PostgresConfig::new("postgres://app:hunter2@127.0.0.1:1/db");
    config.connect_timeout = Duration::from_secs(2);
    let err = expect_err(
        PostgresDriver::connect(config).await,
        ErrorCode::Unavailable,
        "connect to a closed port",
    );
    assert!(err.is_retryable());
    assert_eq!(err.context_value("backend"), Some("postgres"));
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("127.0.0.1:1") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[tokio::test]
async fn missing_database_is_a_config_error() {
    let db = common::database().await;
    let url = db.url().replace(db.name(), "kernel_no_such_database");
    let err = expect_err(
        PostgresDriver::connect(common::config(&url)).await,
        ErrorCode::Config,
        "connect to a missing database",
    );
    assert_eq!(err.context_value("sqlstate"), Some("3D000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_and_errors_never_show_the_password() {
    let (driver, db) = common::driver().await;
    let with_password = db.url().replacen("postgres@", "postgres:sekret-pw@", 1);
    assert_ne!(
        with_password,
        db.url(),
        "the test URL must be postgres://postgres@host/... (no password) for this test"
    );
    let config = common::config(&with_password);
    // Trust authentication ignores the password, so this connects.
    let d = expect_ok(
        PostgresDriver::connect(config.clone()).await,
        "connect with a password",
    );
    let shown = format!("{d:?} {config:?} {}", config.redacted_url());
    assert!(
        !shown.contains("sekret-pw") && shown.contains("***"),
        "{shown}"
    );
    let status = expect_ok(d.status().await, "status");
    assert!(!format!("{status:?}").contains("sekret-pw"));
    d.shutdown().await;
    let err = expect_err(
        d.get("ns", "k").await,
        ErrorCode::Unavailable,
        "get after shutdown",
    );
    assert!(!format!("{err} {err:?}").contains("sekret-pw"));
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_map_to_kernel_codes() {
    let (driver, db) = common::driver().await;
    // \u0000 cannot be stored in JSONB: 22P05 -> invalid input, naming the key.
    let err = expect_err(
        driver
            .put("ns", "nul", json!("a\u{0000}b"), PutOptions::new())
            .await,
        ErrorCode::InvalidInput,
        "NUL inside a JSON string",
    );
    assert_eq!(err.context_value("key"), Some("nul"));
    // A statement cancelled by statement_timeout -> retryable timeout, through the driver: a
    // read that waits behind another session's table lock.
    let mut config = common::config(db.url());
    config.statement_timeout = Duration::from_millis(100);
    let short = expect_ok(PostgresDriver::connect(config).await, "connect");
    let mut locker = common::raw_client(db.url()).await;
    let lock = locker
        .transaction()
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    lock.batch_execute("LOCK TABLE kernel_documents IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let err = expect_err(
        short.get("ns", "k").await,
        ErrorCode::Timeout,
        "a read past statement_timeout",
    );
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.context_value("sqlstate"), Some("57014"), "{err}");
    lock.rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    short.shutdown().await;
    // A connection killed under the pool -> retryable unavailable, then the pool recovers.
    let admin = common::raw_client(db.url()).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND application_name = 'kernel') AS t",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("terminate: {e}"))
        .get(0);
    assert!(killed >= 1, "no pooled connection was there to kill");
    let mut recovered = false;
    for _ in 0..10 {
        match driver.get("ns", "k").await {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
                assert!(e.is_retryable(), "{e}");
            }
        }
    }
    assert!(recovered, "the pool replaces dead connections");
    driver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_is_a_timeout_naming_the_pool() {
    let db = common::database().await;
    let mut config = common::config(db.url());
    config.pool_size = 1;
    config.pool_wait_timeout = Duration::from_millis(200);
    let driver = expect_ok(PostgresDriver::connect(config).await, "connect");
    let held = expect_ok(
        driver
            .pool()
            .get()
            .await
            .map_err(|e| kernel_core::Error::internal(e.to_string())),
        "hold the only connection",
    );
    let err = expect_err(
        driver.head_position().await,
        ErrorCode::Timeout,
        "op on an exhausted pool",
    );
    assert_eq!(err.context_value("pool"), Some("postgres"));
    assert!(err.is_retryable());
    drop(held);
    expect_ok(
        driver.head_position().await,
        "op after the connection came back",
    );
    driver.shutdown().await;
}

/// Documents with every JSON type at the queried paths; each filter and sort must return what
/// the shared evaluator (`Query::apply`) returns over the same documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_queries_match_the_shared_evaluator() {
    let (driver, _db) = common::driver().await;
    let ns = unique("parity");
    let scalars = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(1.0),
        json!(-2.5),
        json!(10),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("a"),
        json!("B"),
        json!("ab"),
        json!("é"),
        json!("a%_"),
        json!([]),
        json!([1, "a"]),
        json!([[1]]),
        json!({}),
        json!({"x": 1}),
    ];
    let mut docs = Vec::new();
    for (i, v) in scalars.iter().enumerate() {
        let j = (i * 7 + 3) % scalars.len();
        let doc = json!({
            "v": v,
            "w": scalars[j],
            "arr": [v, scalars[j]],
            "nested": {"v": v, "01": "zero-one"},
        });
        docs.push((format!("k{i:02}"), doc));
    }
    docs.push(("m_missing".to_owned(), json!({"other": 1})));
    docs.push(("n_scalar".to_owned(), json!(5)));
    docs.push(("o_array".to_owned(), json!([{"v": 1}, 2])));
    for (k, d) in &docs {
        expect_ok(
            driver.put(&ns, k, d.clone(), PutOptions::new()).await,
            "put",
        );
    }
    let mut filters = Vec::new();
    for v in &scalars {
        for path in ["v", "w", "nested.v", "arr"] {
            filters.push(Filter::eq(path, v.clone()));
            filters.push(Filter::ne(path, v.clone()));
            filters.push(Filter::gt(path, v.clone()));
            filters.push(Filter::gte(path, v.clone()));
            filters.push(Filter::lt(path, v.clone()));
            filters.push(Filter::lte(path, v.clone()));
            filters.push(Filter::contains(path, v.clone()));
            filters.push(Filter::not(Filter::eq(path, v.clone())));
        }
    }
    for s in ["", "a", "b", "é", "%", "_"] {
        filters.push(Filter::starts_with("v", s));
        filters.push(Filter::ends_with("v", s));
        filters.push(Filter::contains("v", s));
    }
    filters.push(Filter::is_in("v", scalars.to_vec()));
    filters.push(Filter::is_in::<Value>("v", []));
    for path in [
        "v",
        "arr.0",
        "arr.1",
        "arr.01",
        "0.v",
        "1",
        "nested.01",
        "nested.1",
        "arr.-1",
    ] {
        filters.push(Filter::exists(path, true));
        filters.push(Filter::exists(path, false));
        filters.push(Filter::eq(path, 1));
    }
    filters.push(Filter::And(vec![]));
    filters.push(Filter::Or(vec![]));
    filters.push(Filter::not(Filter::gt("v", 0)).and(Filter::exists("w", true)));
    filters.push(Filter::eq("v", "a").or(Filter::lt("w", 1)));
    let mut queries: Vec<Query> = filters
        .into_iter()
        .map(|f| Query::new().filter(f))
        .collect();
    for path in ["v", "w", "arr.0", "nested.v", "missing"] {
        queries.push(Query::new().sort_asc(path));
        queries.push(Query::new().sort_desc(path).sort_asc("w"));
        queries.push(Query::new().sort_asc(path).offset(3).limit(5));
    }
    for q in &queries {
        let want: Vec<String> = q
            .apply(docs.iter(), |(k, _)| k.as_str(), |(_, d)| d)
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect();
        let got: Vec<String> = expect_ok(driver.query(&ns, q).await, "query")
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(got, want, "query {q:?}");
        if q.sort.is_empty() {
            let n = expect_ok(driver.count(&ns, q.filter.as_ref()).await, "count");
            assert_eq!(n, want.len() as u64, "count {q:?}");
        }
    }
    driver.shutdown().await;
}

/// A write whose connection breaks after the statement went out has an unknown outcome: the
/// driver says `MaybeApplied` (not "safe to retry"), and indeed the write lands. The put waits
/// on a row lock held by another session, the proxy cuts the connection, then the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_in_flight_may_have_been_applied() {
    use kernel_core::ErrorStatus;
    use kernel_testkit::proxy::FaultProxy;

    let db = common::database().await;
    let (proxy, url) = expect_ok(
        FaultProxy::in_front_of(db.url(), 5432)
            .await
            .map_err(|e| kernel_core::Error::unavailable(format!("start the proxy: {e}"))),
        "proxy",
    );
    let driver = expect_ok(
        PostgresDriver::connect(common::config(&url)).await,
        "connect",
    );
    let ns = unique("cut");
    expect_ok(
        driver.put(&ns, "k", json!(1), PutOptions::new()).await,
        "first put",
    );
    let blocker = common::raw_client(db.url()).await;
    blocker.batch_execute("BEGIN").await.expect("begin");
    blocker
        .query(
            "SELECT 1 FROM kernel_documents WHERE namespace = $1 AND key = 'k' FOR UPDATE",
            &[&ns],
        )
        .await
        .expect("lock the row");
    let put = {
        let driver = driver.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            driver
                .put(&ns, "k", json!(2), PutOptions::new().if_version(1))
                .await
        })
    };
    // Wait until the put is on the server, blocked on the row lock.
    let watcher = common::raw_client(db.url()).await;
    let mut waiting = false;
    for _ in 0..100 {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if row.get::<_, i64>(0) > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the put never reached the server's lock wait");
    proxy.cut();
    let err = expect_err(
        put.await.expect("the put task"),
        ErrorCode::Unavailable,
        "a put whose connection was cut",
    );
    assert_eq!(err.status(), ErrorStatus::MaybeApplied, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("outcome=unknown"), "{err}");
    blocker.batch_execute("COMMIT").await.expect("commit");
    // The server finishes the statement it received: the write the caller was told may have
    // been applied is applied.
    let mut value = json!(null);
    for _ in 0..100 {
        let row = watcher
            .query_one(
                "SELECT value FROM kernel_documents WHERE namespace = $1 AND key = 'k'",
                &[&ns],
            )
            .await
            .expect("read back");
        value = row.get(0);
        if value == json!(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value, json!(2), "the cut-off put landed after all");
}

/// `status()` (the health probe) does not count rows: its cost does not grow with the data.
/// Counts are the planner's estimates, in the details, once the tables were analysed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_estimates_not_counts() {
    let (driver, db) = common::driver().await;
    let ns = unique("status");
    for i in 0..5 {
        expect_ok(
            driver
                .put(&ns, &format!("k{i}"), json!(i), PutOptions::new())
                .await,
            "put",
        );
    }
    let raw = common::raw_client(db.url()).await;
    raw.batch_execute("ANALYZE kernel_documents; ANALYZE kernel_namespaces")
        .await
        .expect("analyze");
    let status = expect_ok(driver.status().await, "status");
    assert!(status.healthy);
    assert_eq!(status.entries, None, "no count(*) behind the health probe");
    assert_eq!(status.namespaces, None);
    assert_eq!(
        status.details.get("documents_estimate").map(String::as_str),
        Some("5"),
        "{status:?}"
    );
}

/// One batch mixing every per-row choice of migration 0008's `kernel_put`: the first row's
/// flags are the batch default, the other rows reach the upsert's conflict arm through the
/// key -> flags object. Metadata kept (none given) or replaced (even by `{}`), `IfAbsent` over
/// an expired row (version restarts, metadata starts afresh), `IfVersion` in the same call;
/// then a refused `IfAbsent` behind a writable row leaves everything as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_conditions_and_metadata_keeps_each_rows_semantics() {
    use kernel_core::BatchPut;
    let (driver, _db) = common::driver().await;
    let ns = unique("mixed");
    let meta = |k: &str| {
        let mut m = kernel_core::Metadata::new();
        m.insert(k.to_owned(), json!(1));
        m
    };
    for (key, ttl) in [
        ("keep", None),
        ("empty", None),
        ("cas", None),
        ("gone", Some(20)),
    ] {
        let mut options = PutOptions::new().metadata(meta(key));
        if let Some(ms) = ttl {
            options = options.ttl(Duration::from_millis(ms));
        }
        expect_ok(driver.put(&ns, key, json!(0), options).await, "seed");
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let written = expect_ok(
        driver
            .put_many(
                &ns,
                vec![
                    BatchPut::new("keep", json!(1)),
                    BatchPut::new("empty", json!(2))
                        .with_options(PutOptions::new().metadata(kernel_core::Metadata::new())),
                    BatchPut::new("gone", json!(3)).with_options(PutOptions::new().if_absent()),
                    BatchPut::new("cas", json!(4)).with_options(PutOptions::new().if_version(1)),
                    BatchPut::new("new", json!(5)).with_options(PutOptions::new().if_absent()),
                ],
            )
            .await,
        "mixed batch",
    );
    let seen: Vec<(&str, u64, Value)> = written
        .iter()
        .map(|e| (e.key.as_str(), e.version, Value::Object(e.metadata.clone())))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("keep", 2, json!({"keep": 1})),
            ("empty", 2, json!({})),
            ("gone", 1, json!({})),
            ("cas", 2, json!({"cas": 1})),
            ("new", 1, json!({})),
        ],
        "entries in input order, each with its own row's semantics"
    );
    assert!(written.iter().all(|e| e.expires_at.is_none()));
    assert_eq!(written[0].value, json!(1));

    let err = expect_err(
        driver
            .put_many(
                &ns,
                vec![
                    BatchPut::new("keep", json!(9)),
                    BatchPut::new("other", json!(9)),
                    BatchPut::new("new", json!(9)).with_options(PutOptions::new().if_absent()),
                    BatchPut::new("cas", json!(9)).with_options(PutOptions::new().if_version(1)),
                ],
            )
            .await,
        ErrorCode::AlreadyExists,
        "the first refused row decides",
    );
    assert!(err.to_string().contains("new"), "{err}");
    let keep = expect_ok(driver.get(&ns, "keep").await, "get").expect("keep is live");
    assert_eq!((keep.version, keep.value), (2, json!(1)), "nothing written");
    assert!(expect_ok(driver.get(&ns, "other").await, "get").is_none());

    let err = expect_err(
        driver
            .put(&ns, "cas", json!(9), PutOptions::new().if_version(1))
            .await,
        ErrorCode::Conflict,
        "a single refused compare-and-set",
    );
    assert_eq!(err.current_version(), Some(2), "{err}");
    let err = expect_err(
        driver
            .put(&ns, "absent", json!(9), PutOptions::new().if_version(1))
            .await,
        ErrorCode::Conflict,
        "a compare-and-set on an absent key",
    );
    assert_eq!(err.current_version(), None, "{err}");
}
