//! The migration runner on real databases (fresh ones: these tests change the schema).

mod common;

use driver_postgres::migrations::{MIGRATIONS, MigrationState, Migrator};
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
    assert_eq!(tables(&client).await, 7, "every kernel table");
    assert!(
        expect_ok(m.up(&client).await, "second up").is_empty(),
        "up is idempotent"
    );
    assert!(expect_ok(m.is_current(&client).await, "is_current"));
    let rows = client
        .query(
            "SELECT version, name, length(checksum), applied_at IS NOT NULL FROM schema_migrations \
             ORDER BY version",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("schema_migrations: {e}"));
    let recorded: Vec<(i64, String, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        recorded,
        vec![
            (1, "init".to_owned(), 64, true),
            (2, "event_txid".to_owned(), 64, true)
        ],
        "version, name, sha-256 hex, time"
    );

    let reverted = expect_ok(m.rollback(&client, 1).await, "rollback 1");
    assert_eq!(reverted, vec![2]);
    assert_eq!(
        tables(&client).await,
        8,
        "0001's tables, the pending table back"
    );
    let reverted = expect_ok(m.rollback(&client, 5).await, "rollback the rest");
    assert_eq!(reverted, vec![1]);
    assert_eq!(tables(&client).await, 0, "down removes every kernel table");
    assert!(expect_ok(m.rollback(&client, 1).await, "rollback of nothing").is_empty());
    assert_eq!(expect_ok(m.up(&client).await, "up again"), vec![1, 2]);
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
    applied.sort_unstable();
    assert_eq!(
        applied,
        vec![1, 2],
        "exactly one runner applied each migration"
    );
    let client = common::raw_client(db.url()).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
        .get(0);
    assert_eq!(n, 2);
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
    assert_eq!((code, out.trim()), (Some(0), "applied 0001\napplied 0002"));
    let (_, out, _) = run(&["status"]);
    assert!(
        out.contains("applied") && out.contains("0002_event_txid"),
        "{out}"
    );
    let (code, out, _) = run(&["rollback", "2"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "reverted 0002\nreverted 0001")
    );
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

/// Events carried across 0002 both ways: numbered ones keep their positions, and ones still
/// waiting for a position when the schema changes are numbered next, in the order the old
/// sequencer would have given them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_txid_migration_carries_waiting_events_both_ways() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    let m = Migrator::new();
    expect_ok(m.up(&client).await, "up");
    assert_eq!(
        expect_ok(m.rollback(&client, 1).await, "down to 0001"),
        vec![2]
    );

    let append = |stream: &'static str, ty: &'static str| {
        let client = &client;
        async move {
            client
                .batch_execute(&format!(
                    "SELECT * FROM kernel_append('{stream}', NULL, '[{{\"type\": \"{ty}\"}}]')"
                ))
                .await
                .unwrap_or_else(|e| panic!("append {ty}: {e}"));
        }
    };
    // Passes until every event has a position: a transaction of a test running in parallel
    // (transaction ids are cluster-wide) may hold the horizon back for a moment.
    let sequence = || async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            client
                .batch_execute("SELECT kernel_sequence()")
                .await
                .unwrap_or_else(|e| panic!("kernel_sequence: {e}"));
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM kernel_events e \
                     WHERE NOT EXISTS (SELECT 1 FROM kernel_event_log l WHERE l.seq = e.seq)",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("count waiting: {e}"))
                .get(0);
            if waiting == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{waiting} events still without a position after 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let log = || async {
        client
            .query(
                "SELECT l.position, e.event_type FROM kernel_event_log l \
                 JOIN kernel_events e ON e.seq = l.seq ORDER BY l.position",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("read log: {e}"))
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let numbered = |types: &[&str]| {
        types
            .iter()
            .enumerate()
            .map(|(i, t)| (i as i64 + 1, (*t).to_owned()))
            .collect::<Vec<_>>()
    };

    // Under 0001: two numbered, two waiting in kernel_event_pending.
    append("order-1", "A").await;
    append("order-2", "B").await;
    sequence().await;
    append("order-1", "C").await;
    append("order-3", "D").await;
    assert_eq!(log().await, numbered(&["A", "B"]));

    // Up to 0002: the waiting two are numbered next, then new appends after them.
    assert_eq!(expect_ok(m.up(&client).await, "up to 0002"), vec![2]);
    let waiting: i64 = client
        .query_one("SELECT kernel_events_unpositioned()", &[])
        .await
        .unwrap_or_else(|e| panic!("unpositioned: {e}"))
        .get(0);
    assert_eq!(waiting, 2, "the events 0001 had not numbered");
    sequence().await;
    append("order-2", "E").await;
    sequence().await;
    assert_eq!(log().await, numbered(&["A", "B", "C", "D", "E"]));

    // Down again with one waiting: 0001's sequencer numbers it next.
    append("order-4", "F").await;
    assert_eq!(
        expect_ok(m.rollback(&client, 1).await, "down again"),
        vec![2]
    );
    sequence().await;
    append("order-4", "G").await;
    sequence().await;
    assert_eq!(log().await, numbered(&["A", "B", "C", "D", "E", "F", "G"]));
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM kernel_events WHERE stream = 'order-4' ORDER BY version",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("versions: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
}
