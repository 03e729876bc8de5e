//! The migration runner on real databases (fresh ones: these tests change the schema).

mod common;

use driver_postgres::migrations::{MigrationState, Migrator, MIGRATIONS};
use kernel_core::ErrorCode;
use kernel_testkit::postgres::fresh_database;
use kernel_testkit::{expect_err, expect_ok};

async fn tables(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'kernel%'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("count tables: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_status_rollback_round_trip() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    let m = Migrator::new();
    let status = expect_ok(m.status(&client).await, "status of an empty database");
    assert!(
        status.iter().all(|s| s.state == MigrationState::Pending),
        "{status:?}"
    );

    let applied = expect_ok(m.up(&client).await, "up");
    assert_eq!(
        applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert_eq!(tables(&client).await, 8, "every kernel table");
    assert!(
        expect_ok(m.up(&client).await, "second up").is_empty(),
        "up is idempotent"
    );
    assert!(expect_ok(m.is_current(&client).await, "is_current"));
    let row = client
        .query_one(
            "SELECT version, name, length(checksum), applied_at IS NOT NULL FROM schema_migrations",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("schema_migrations: {e}"));
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, String>(1), "init");
    assert_eq!(row.get::<_, i32>(2), 64, "sha-256 hex");
    assert!(row.get::<_, bool>(3));

    let reverted = expect_ok(m.rollback(&client, 1).await, "rollback");
    assert_eq!(reverted, vec![1]);
    assert_eq!(tables(&client).await, 0, "down removes every kernel table");
    assert!(expect_ok(m.rollback(&client, 1).await, "rollback of nothing").is_empty());
    assert_eq!(expect_ok(m.up(&client).await, "up again"), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_migration_is_refused() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    let m = Migrator::new();
    expect_ok(m.up(&client).await, "up");
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("tamper: {e}"));
    let err = expect_err(
        m.up(&client).await,
        ErrorCode::Config,
        "up after a file changed",
    );
    assert!(err.to_string().contains("0001_init"), "{err}");
    expect_err(
        m.rollback(&client, 1).await,
        ErrorCode::Config,
        "rollback after a file changed",
    );
    let status = expect_ok(m.status(&client).await, "status");
    assert!(
        matches!(status[0].state, MigrationState::Changed { .. }),
        "{status:?}"
    );
}

/// Two runners booting at once on one database: both succeed, each migration runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrators_are_serialised() {
    let db = fresh_database().await;
    let mut runners = Vec::new();
    for _ in 0..4 {
        let url = db.url().to_owned();
        runners.push(tokio::spawn(async move {
            let client = common::raw_client(&url).await;
            Migrator::new().up(&client).await
        }));
    }
    let mut applied = Vec::new();
    for r in runners {
        applied.extend(expect_ok(
            kernel_testkit::join(r, "migrator").await,
            "concurrent up",
        ));
    }
    assert_eq!(applied, vec![1], "exactly one runner applied the migration");
    let client = common::raw_client(db.url()).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
        .get(0);
    assert_eq!(n, 1);
}

/// `connect` migrates on boot by default; with it off, a missing schema shows up as a `Config`
/// error naming the fix on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_migrates_when_asked() {
    use kernel_core::StorageDriver;
    let db = fresh_database().await;
    let mut config = common::config(db.url());
    config.migrate_on_boot = false;
    let bare = expect_ok(
        driver_postgres::PostgresDriver::connect(config.clone()).await,
        "connect",
    );
    let err = expect_err(
        bare.get("ns", "k").await,
        ErrorCode::Config,
        "get without schema",
    );
    assert!(err.to_string().contains("kernel-migrate"), "{err}");
    bare.shutdown().await;
    config.migrate_on_boot = true;
    let driver = expect_ok(
        driver_postgres::PostgresDriver::connect(config).await,
        "connect and migrate",
    );
    assert!(expect_ok(driver.get("ns", "k").await, "get").is_none());
    driver.shutdown().await;
}

/// The command-line runner.
#[test]
fn kernel_migrate_cli() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    };
    let db = rt.block_on(fresh_database());
    let bin = env!("CARGO_BIN_EXE_kernel-migrate");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", db.url())
            .output()
            .unwrap_or_else(|e| panic!("run kernel-migrate: {e}"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("0001_init") && out.contains("pending"),
        "{out}"
    );
    let (code, out, _) = run(&["up"]);
    assert_eq!((code, out.trim()), (Some(0), "applied 0001"));
    let (_, out, _) = run(&["status"]);
    assert!(out.contains("applied"), "{out}");
    let (code, out, _) = run(&["rollback", "1"]);
    assert_eq!((code, out.trim()), (Some(0), "reverted 0001"));
    let (code, _, err) = run(&["sideways"]);
    assert_eq!(code, Some(2), "usage error: {err}");
    let out = std::process::Command::new(bin)
        .arg("up")
        .env("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/nope")
        .output()
        .unwrap_or_else(|e| panic!("run kernel-migrate: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot connect") && !err.contains("hunter2"),
        "{err}"
    );
    drop(db);
    drop(rt);
}
