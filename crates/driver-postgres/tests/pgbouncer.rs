//! The whole PostgreSQL conformance suite through PgBouncer (Debian's `pgbouncer`, a private one
//! per test from `kernel_testkit::pgbouncer`), in session mode and in transaction mode, and the
//! `Config` errors for what cannot work through a transaction pooler.
//!
//! * `session`: `pooler = "session"`; the pool and the LISTEN connection go through the bouncer.
//! * `transaction`: `pooler = "transaction"`, `listen_url` = the database directly; the bouncer
//!   has fewer server connections (3) than the driver's pool (6), so consecutive statements of
//!   one pooled client really run on different server sessions. The test database carries the
//!   `statement_timeout` the driver is configured with (`ALTER DATABASE .. SET`), as a
//!   transaction pooler requires.
//!
//! Each behaviour gets its own database (a clone of the migrated template) and its own bouncer;
//! the behaviours of a mode run concurrently inside one test (`suite_runs!` / `run_all`, as
//! `tls_conformance.rs` does). The tests fail, never skip, when `pgbouncer` is not installed.

mod common;

use std::time::Duration;

use driver_postgres::{Pooler, PostgresConfig, PostgresDriver, Tenancy};
use kernel_core::ErrorCode;
use kernel_testkit::pgbouncer::{PoolMode, PrivatePgBouncer};
use kernel_testkit::postgres::TestDatabase;

/// What a test holds until it ends: the bouncer (killed first), then the database.
pub struct Guard {
    _bouncer: PrivatePgBouncer,
    _db: TestDatabase,
}

/// The statement timeout of the test settings (`common::config`).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Gives the database the `statement_timeout` of the test settings, as a transaction pooler
/// needs (the driver cannot set it per session there).
async fn set_database_timeout(db: &TestDatabase, timeout: Duration) {
    let admin = common::raw_client(&kernel_testkit::postgres::server_url()).await;
    let sql = format!(
        "ALTER DATABASE \"{}\" SET statement_timeout = {}",
        db.name().replace('"', "\"\""),
        timeout.as_millis()
    );
    if let Err(e) = admin.batch_execute(&sql).await {
        panic!("{sql}: {e}");
    }
}

async fn connect(
    config: PostgresConfig,
    bouncer: PrivatePgBouncer,
    db: TestDatabase,
) -> (PostgresDriver, Guard) {
    match PostgresDriver::connect(config).await {
        Ok(driver) => (
            driver,
            Guard {
                _bouncer: bouncer,
                _db: db,
            },
        ),
        Err(e) => panic!(
            "connect through pgbouncer ({} mode): {e}\npgbouncer log:\n{}",
            bouncer.mode().as_str(),
            bouncer.log_tail()
        ),
    }
}

/// A driver through a session-mode PgBouncer.
pub async fn session() -> (PostgresDriver, Guard) {
    let db = common::database().await;
    let bouncer = PrivatePgBouncer::start(PoolMode::Session).await;
    let mut config = common::config(&bouncer.url_for(db.url()));
    config.pooler = Pooler::Session;
    connect(config, bouncer, db).await
}

/// Settings through a transaction-mode PgBouncer, LISTEN direct.
fn transaction_config(bouncer: &PrivatePgBouncer, db: &TestDatabase) -> PostgresConfig {
    let mut config = common::config(&bouncer.url_for(db.url()));
    config.statement_timeout = STATEMENT_TIMEOUT;
    config.pooler = Pooler::Transaction;
    config.listen_url = Some(db.url().to_owned());
    config
}

async fn transaction_bouncer() -> PrivatePgBouncer {
    PrivatePgBouncer::start_with(PoolMode::Transaction, &["default_pool_size = 3"]).await
}

/// A driver through a transaction-mode PgBouncer, LISTEN on a direct connection.
pub async fn transaction() -> (PostgresDriver, Guard) {
    let db = common::database().await;
    set_database_timeout(&db, STATEMENT_TIMEOUT).await;
    let bouncer = transaction_bouncer().await;
    let config = transaction_config(&bouncer, &db);
    connect(config, bouncer, db).await
}

/// Behaviours run at once per mode. Each holds up to 7 server sessions (session mode: the pool
/// and the listener; transaction mode: 3 through the bouncer and the direct listener), and the
/// shared test server has `max_connections = 100` for everyone.
const CONCURRENCY: usize = 4;

/// Every behaviour of the four suites through `Arc<dyn Trait>`, concurrently, each on its own
/// database and bouncer (the per-behaviour `#[test]`s of `conformance.rs` already cover the
/// concrete type; what differs here is the connection path).
fn whole_suite<F, Fut>(name: &'static str, factory: F)
where
    F: Fn() -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = (PostgresDriver, Guard)> + Send,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot build the tokio runtime: {e}"));
    runtime.block_on(async move {
        let mut runs = kernel_testkit::suite_runs!(storage, factory());
        runs.extend(kernel_testkit::suite_runs!(events, factory()));
        runs.extend(kernel_testkit::suite_runs!(lock, factory()));
        runs.extend(kernel_testkit::suite_runs!(rate_limit, factory()));
        kernel_testkit::run_all(runs, CONCURRENCY).await;
    });
}

#[test]
fn the_whole_suite_through_a_session_pooler() {
    whole_suite("the_whole_suite_through_a_session_pooler", session);
}

#[test]
fn the_whole_suite_through_a_transaction_pooler() {
    whole_suite("the_whole_suite_through_a_transaction_pooler", transaction);
}

/// Connects expecting a `Config` error naming `setting`; returns its text.
async fn refused(config: PostgresConfig, setting: &str) -> String {
    match PostgresDriver::connect(config).await {
        Ok(driver) => {
            driver.shutdown().await;
            panic!("connect should fail with a Config error naming {setting}");
        }
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::Config, "{e}");
            assert_eq!(e.context_value("setting"), Some(setting), "{e}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "a password leaked: {shown}");
            shown
        }
    }
}

#[test]
fn transaction_mode_without_listen_url_is_refused() {
    kernel_testkit::run_test("transaction_mode_without_listen_url_is_refused", async {
        let db = common::database().await;
        set_database_timeout(&db, STATEMENT_TIMEOUT).await;
        let bouncer = transaction_bouncer().await;
        let mut config = transaction_config(&bouncer, &db);
        config.listen_url = None;
        let shown = refused(config, "postgres.listen_url").await;
        assert!(shown.contains("LISTEN"), "{shown}");
    });
}

#[test]
fn transaction_mode_refuses_row_level_security() {
    kernel_testkit::run_test("transaction_mode_refuses_row_level_security", async {
        let db = common::database().await;
        set_database_timeout(&db, STATEMENT_TIMEOUT).await;
        let bouncer = transaction_bouncer().await;
        let mut config = transaction_config(&bouncer, &db);
        config.tenancy = Tenancy::Rls;
        let shown = refused(config, "postgres.tenancy").await;
        assert!(shown.contains("session"), "{shown}");
    });
}

#[test]
fn transaction_mode_refuses_a_statement_timeout_the_server_does_not_have() {
    kernel_testkit::run_test(
        "transaction_mode_refuses_a_statement_timeout_the_server_does_not_have",
        async {
            let db = common::database().await;
            set_database_timeout(&db, Duration::from_secs(7)).await;
            let bouncer = transaction_bouncer().await;
            let config = transaction_config(&bouncer, &db);
            let shown = refused(config, "postgres.statement_timeout_ms").await;
            assert!(shown.contains("ALTER ROLE"), "{shown}");
            assert!(shown.contains("7000"), "{shown}");
        },
    );
}

#[test]
fn poolers_refuse_startup_options_in_the_url() {
    kernel_testkit::run_test("poolers_refuse_startup_options_in_the_url", async {
        let db = common::database().await;
        let bouncer = PrivatePgBouncer::start(PoolMode::Session).await;
        let mut config = common::config(&format!(
            "{}?options=-c%20search_path%3Dpublic",
            bouncer.url_for(db.url())
        ));
        config.pooler = Pooler::Session;
        let shown = refused(config, "postgres.url").await;
        assert!(shown.contains("options"), "{shown}");
    });
}

#[test]
fn listen_url_is_redacted() {
    let config = PostgresConfig {
        listen_url: Some("postgres://app:hunter2@db:5432/app".to_owned()),
        pooler: Pooler::Transaction,
        ..PostgresConfig::new("postgres://app:hunter2@pooler:6543/app")
    };
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let json = match serde_json::to_string(&config) {
        Ok(j) => j,
        Err(e) => panic!("serialize: {e}"),
    };
    assert!(!json.contains("hunter2"), "{json}");
    assert!(json.contains("\"pooler\":\"transaction\""), "{json}");
}

/// Without `pooler`, a PgBouncer refuses the driver's startup `options` (statement_timeout):
/// a loud error at connect, not a driver without its timeout.
#[test]
fn a_pooler_not_declared_fails_loudly() {
    kernel_testkit::run_test("a_pooler_not_declared_fails_loudly", async {
        let db = common::database().await;
        let bouncer = PrivatePgBouncer::start(PoolMode::Session).await;
        let config = common::config(&bouncer.url_for(db.url()));
        match PostgresDriver::connect(config).await {
            Ok(driver) => {
                driver.shutdown().await;
                panic!("a pooler refuses startup options: connect should fail");
            }
            Err(e) => {
                let shown = format!("{e} {e:?}");
                assert!(shown.contains("options"), "{shown}");
            }
        }
    });
}
