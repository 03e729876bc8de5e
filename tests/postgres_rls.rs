//! PostgreSQL row-level security per tenant (`postgres.tenancy = rls`, migration 0007), proven
//! with a role the policies apply to: a login role that is neither superuser nor owner of the
//! tables, member of `kernel_tenant_app`.
//!
//! * The whole conformance suite (storage, events, locks, rate limits) passes through a tenant
//!   scope over a driver connected as that role: the database lets a tenant's calls through.
//! * The database refuses the rest on its own: the same driver, asked for another tenant's
//!   names under a tenant (no Rust tenant layer in between), sees nothing and may write nothing;
//!   with no tenant it sees nothing at all; `psql` as that role sees its tenant only after
//!   `SET kernel.tenant`, and nothing before.
//! * Misconfigurations are `Config` errors at connect.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use driver_postgres::migrations::Migrator;
use driver_postgres::{PostgresConfig, PostgresDriver, Tenancy};
use kernel_bootstrap::layers::tenant::{Tenant, TenantScope};
use kernel_core::{
    ErrorCode, EventFilter, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions, Quota,
    RateLimiter, ReadStream, StorageDriver, json, tenancy,
};
use kernel_testkit::postgres::{TestDatabase, database_from_template};
use tokio_postgres::NoTls;

/// The login role the policies apply to (cluster-wide: one for every test, never dropped).
const ROLE: &str = "kernel_rls_test";

async fn raw(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("raw connection ended: {e}");
        }
    });
    Ok(client)
}

/// A database with the kernel's schema; with `rls`, row-level security on and [`ROLE`] able to
/// log in.
async fn database(rls: bool) -> TestDatabase {
    let migrator = Migrator::new();
    let fingerprint = format!("{}{}", migrator.fingerprint(), if rls { "rls" } else { "" });
    database_from_template(&fingerprint, |url| async move {
        let client = raw(&url).await?;
        migrator.up(&client).await.map_err(|e| e.to_string())?;
        if rls {
            client
                .batch_execute(&format!(
                    "SELECT kernel_enable_row_security();
                     DO $$ BEGIN
                         CREATE ROLE {ROLE} LOGIN;
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                     END $$;
                     GRANT kernel_tenant_app TO {ROLE};"
                ))
                .await
                .map_err(|e| format!("enable row-level security / create {ROLE}: {e}"))?;
        }
        Ok(())
    })
    .await
}

/// The URL of `db` for `user`.
fn url_as(db: &TestDatabase, user: &str) -> String {
    let config: tokio_postgres::Config = match db.url().parse() {
        Ok(c) => c,
        Err(e) => panic!("the test database URL parses: {e}"),
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("the test database is reached over TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{user}@{host}:{port}/{}", db.name())
}

fn config(url: String, tenancy: Tenancy) -> PostgresConfig {
    let mut c = PostgresConfig::new(url);
    c.pool_size = 4;
    c.migrate_on_boot = false;
    c.tenancy = tenancy;
    c.statement_timeout = Duration::from_secs(20);
    c.subscription.poll_interval = Duration::from_millis(200);
    c
}

/// The driver connected as [`ROLE`] with row-level security.
async fn tenant_role_driver(db: &TestDatabase) -> PostgresDriver {
    match PostgresDriver::connect(config(url_as(db, ROLE), Tenancy::Rls)).await {
        Ok(d) => d,
        Err(e) => panic!("connect as {ROLE} with tenancy = rls: {e}"),
    }
}

fn tenant(id: &str) -> Tenant {
    match Tenant::new(id) {
        Ok(t) => t,
        Err(e) => panic!("valid tenant id {id}: {e}"),
    }
}

/// A tenant scope over a driver the policies apply to, on a database of its own.
async fn scoped() -> (TenantScope<PostgresDriver>, TestDatabase) {
    let db = database(true).await;
    let driver = tenant_role_driver(&db).await;
    (TenantScope::new(Arc::new(driver), tenant("acme")), db)
}

mod conformance {
    use super::*;

    kernel_testkit::prefixed_storage_suite!(scoped());
    kernel_testkit::event_suite!(scoped());
    kernel_testkit::lock_suite!(scoped());
    kernel_testkit::rate_limit_suite!(scoped());
}

/// Writes one of everything as `tenant`: a document, an event, a snapshot, a lock, a rate-limit
/// key.
async fn write_everything(driver: &Arc<PostgresDriver>, id: &str) {
    let store = TenantScope::new(driver.clone(), tenant(id));
    store
        .put("users", "ada", json!({"tenant": id}), PutOptions::new())
        .await
        .unwrap_or_else(|e| panic!("{id}: put: {e}"));
    store
        .append(
            "order-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("created", json!({"tenant": id}))],
        )
        .await
        .unwrap_or_else(|e| panic!("{id}: append: {e}"));
    store
        .save_snapshot("order-1", 1, json!({"tenant": id}))
        .await
        .unwrap_or_else(|e| panic!("{id}: snapshot: {e}"));
    store
        .try_acquire("job", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{id}: lock: {e}"))
        .unwrap_or_else(|| panic!("{id}: the lock is free"));
    store
        .check("api", &Quota::per_minute(10), 1)
        .await
        .unwrap_or_else(|e| panic!("{id}: rate limit: {e}"));
}

#[tokio::test]
async fn the_database_refuses_other_tenants_rows_to_a_tenant_role() {
    let db = database(true).await;
    let driver = Arc::new(tenant_role_driver(&db).await);
    write_everything(&driver, "acme").await;
    write_everything(&driver, "globex").await;

    // Under acme, with no Rust layer renaming anything: globex's rows are not there for the
    // database, and writing under globex's names is refused.
    tenancy::scope(Arc::from("acme"), async {
        let own = driver.get("t_acme.users", "ada").await.unwrap();
        assert_eq!(own.map(|e| e.value), Some(json!({"tenant": "acme"})));
        assert_eq!(driver.get("t_globex.users", "ada").await.unwrap(), None);
        assert_eq!(driver.count("t_globex.users", None).await.unwrap(), 0);
        let names: Vec<String> = driver
            .list_namespaces()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["t_acme.users"]);
        let streams: Vec<String> = driver
            .read_all(0, &EventFilter::all(), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.stream)
            .collect();
        assert_eq!(streams, ["t_acme.order-1"]);
        let theirs = driver
            .read_stream("t_globex.order-1", ReadStream::forward())
            .await
            .unwrap();
        assert!(
            theirs.is_empty(),
            "globex's stream is invisible: {theirs:?}"
        );
        assert_eq!(
            driver.load_snapshot("t_globex.order-1").await.unwrap(),
            None
        );

        let refused = driver
            .put("t_globex.users", "eve", json!(1), PutOptions::new())
            .await
            .expect_err("a write under another tenant's name");
        assert_eq!(refused.code(), ErrorCode::PermissionDenied, "{refused}");
        assert!(
            refused.to_string().contains("row-level security"),
            "the error says why: {refused}"
        );
        let refused = driver
            .append(
                "t_globex.order-2",
                ExpectedVersion::Any,
                vec![NewEvent::new("forged", json!({}))],
            )
            .await
            .expect_err("an append to another tenant's stream");
        assert_eq!(refused.code(), ErrorCode::PermissionDenied, "{refused}");
        assert!(
            refused.to_string().contains("t_globex.order-2"),
            "{refused}"
        );
    })
    .await;

    // No tenant at all: nothing.
    assert_eq!(driver.get("t_acme.users", "ada").await.unwrap(), None);
    assert!(driver.list_namespaces().await.unwrap().is_empty());
    assert!(
        driver
            .read_all(0, &EventFilter::all(), 100)
            .await
            .unwrap()
            .is_empty()
    );

    // The owner (the test's superuser, tenancy off) still sees both tenants.
    let owner = PostgresDriver::connect(config(db.url().to_owned(), Tenancy::Off))
        .await
        .unwrap();
    let mut all: Vec<String> = owner
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    all.sort();
    assert_eq!(all, ["t_acme.users", "t_globex.users"]);
    owner.shutdown().await;
    driver.shutdown().await;
}

/// Runs `sql` with psql as [`ROLE`]; its output, or the error it printed.
fn psql(db: &TestDatabase, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url_as(db, ROLE))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run psql ({e}): install the PostgreSQL client (apt-get install postgresql-client)")
        });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[tokio::test]
async fn psql_as_a_tenant_role_sees_its_tenant_only_after_setting_it() {
    let db = database(true).await;
    let driver = Arc::new(tenant_role_driver(&db).await);
    write_everything(&driver, "acme").await;
    write_everything(&driver, "globex").await;
    let counts = "SELECT (SELECT count(*) FROM kernel_documents) || ',' || \
                  (SELECT count(*) FROM kernel_events) || ',' || \
                  (SELECT count(*) FROM kernel_snapshots) || ',' || \
                  (SELECT count(*) FROM kernel_locks) || ',' || \
                  (SELECT count(*) FROM kernel_rate_limits) || ',' || \
                  (SELECT count(*) FROM kernel_namespaces)";

    let without = psql(&db, counts).unwrap();
    assert_eq!(without, "0,0,0,0,0,0", "no kernel.tenant: nothing visible");
    let acme = psql(&db, &format!("SET kernel.tenant = 'acme'; {counts}")).unwrap();
    assert_eq!(acme, "1,1,1,1,1,1", "acme sees its own row of each table");
    let tenants = psql(
        &db,
        "SET kernel.tenant = 'globex'; \
         SELECT DISTINCT kernel_tenant_of(stream) FROM kernel_events_view",
    )
    .unwrap();
    assert_eq!(tenants, "globex");

    // A console INSERT into the tenant's own stream goes through the checked path and reaches
    // the tenant's store; one into another tenant's stream is refused by the policy.
    psql(
        &db,
        "SET kernel.tenant = 'acme'; INSERT INTO kernel_events (stream, event_type, payload) \
         VALUES ('t_acme.order-1', 'shipped', '{\"by\": \"psql\"}')",
    )
    .unwrap();
    let refused = psql(
        &db,
        "SET kernel.tenant = 'acme'; INSERT INTO kernel_events (stream, event_type, payload) \
         VALUES ('t_globex.order-1', 'forged', '{}')",
    )
    .expect_err("an INSERT into another tenant's stream");
    assert!(refused.contains("row-level security"), "{refused}");
    // The console's event is numbered by the driver's sequencer as soon as the trigger's
    // notification arrives; until then it is not in the log.
    let acme_store = TenantScope::new(driver.clone(), tenant("acme"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let types = loop {
        let types: Vec<String> = acme_store
            .read_stream("order-1", ReadStream::forward())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        if types.len() > 1 || tokio::time::Instant::now() > deadline {
            break types;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(types, ["created", "shipped"]);
    let globex_store = TenantScope::new(driver.clone(), tenant("globex"));
    let theirs = globex_store
        .read_stream("order-1", ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1, "globex's stream is untouched: {theirs:?}");
    driver.shutdown().await;
}

#[tokio::test]
async fn a_role_under_row_level_security_without_tenancy_is_a_config_error() {
    let db = database(true).await;
    let err = PostgresDriver::connect(config(url_as(&db, ROLE), Tenancy::Off))
        .await
        .expect_err("tenancy off for a role the policies apply to");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert_eq!(
        err.context_value("setting"),
        Some("postgres.tenancy"),
        "{err}"
    );
    assert!(
        err.to_string().contains("KERNEL_POSTGRES_TENANCY=rls"),
        "{err}"
    );
}

#[tokio::test]
async fn tenancy_rls_on_a_database_without_row_security_is_a_config_error() {
    let db = database(false).await;
    let err = PostgresDriver::connect(config(db.url().to_owned(), Tenancy::Rls))
        .await
        .expect_err("row-level security is off and the driver may not migrate");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert_eq!(
        err.context_value("setting"),
        Some("postgres.tenancy"),
        "{err}"
    );
    assert!(
        err.to_string().contains("kernel_enable_row_security()"),
        "the error says what to run: {err}"
    );
    // With migrate_on_boot, the owner turns it on itself.
    let mut cfg = config(db.url().to_owned(), Tenancy::Rls);
    cfg.migrate_on_boot = true;
    let driver = PostgresDriver::connect(cfg).await.unwrap();
    let client = raw(db.url()).await.unwrap();
    let off: i64 = client
        .query_one(
            "SELECT count(*) FROM kernel_row_security WHERE NOT enabled",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(off, 0);
    // Back off again: this database goes back to the pool of clones with the template's state.
    client
        .batch_execute("SELECT kernel_disable_row_security()")
        .await
        .unwrap();
    driver.shutdown().await;
}
