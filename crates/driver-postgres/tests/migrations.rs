//! The migration runner on real databases (fresh ones: these tests change the schema).

mod common;

use std::path::{Path, PathBuf};

use driver_postgres::migrations::{MIGRATIONS, Migration, MigrationState, Migrator};
use kernel_core::ErrorCode;
use kernel_testkit::postgres::fresh_database;
use kernel_testkit::{expect_err, expect_ok};

/// The kernel's data tables (not the migration record).
async fn tables(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'kernel%' \
             AND tablename <> 'kernel_schema_migrations'",
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
    assert_eq!(tables(&client).await, 10, "every kernel table");
    assert!(
        expect_ok(m.up(&client).await, "second up").is_empty(),
        "up is idempotent"
    );
    assert!(expect_ok(m.is_current(&client).await, "is_current"));
    let rows = client
        .query(
            "SELECT version, name, length(checksum), applied_at IS NOT NULL \
             FROM kernel_schema_migrations WHERE space = 'kernel' ORDER BY version",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_schema_migrations: {e}"));
    let recorded: Vec<(i64, String, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected: Vec<(i64, String, i32, bool)> = MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_string(), 64, true))
        .collect();
    assert_eq!(recorded, expected, "version, name, sha-256 hex, time");
    assert_eq!(
        recorded
            .iter()
            .take(7)
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>(),
        [
            "init",
            "event_txid",
            "operations",
            "generation",
            "event_recorded_at",
            "console_sql",
            "tenancy"
        ]
    );

    // Everything after 0002, newest first.
    let after_0002: Vec<i64> = MIGRATIONS
        .iter()
        .rev()
        .map(|m| m.version)
        .filter(|v| *v > 2)
        .collect();
    let reverted = expect_ok(
        m.rollback(&client, after_0002.len()).await,
        "rollback to 0002",
    );
    assert_eq!(reverted, after_0002);
    assert_eq!(tables(&client).await, 7, "0002's tables");
    let reverted = expect_ok(m.rollback(&client, 1).await, "rollback 1 more");
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
    assert_eq!(
        expect_ok(m.up(&client).await, "up again"),
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_migration_is_refused() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    let m = Migrator::new();
    expect_ok(m.up(&client).await, "up");
    client
        .execute(
            "UPDATE kernel_schema_migrations SET checksum = 'edited' \
             WHERE space = 'kernel' AND version = 1",
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
    let kernel: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, kernel, "exactly one runner applied each migration");
    let client = common::raw_client(db.url()).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM kernel_schema_migrations", &[])
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
        .get(0);
    assert_eq!(n, MIGRATIONS.len() as i64);
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
    assert!(err.to_string().contains("kernelctl migrate"), "{err}");
    bare.shutdown().await;
    config.migrate_on_boot = true;
    let driver = expect_ok(
        driver_postgres::PostgresDriver::connect(config).await,
        "connect and migrate",
    );
    assert!(expect_ok(driver.get("ns", "k").await, "get").is_none());
    driver.shutdown().await;
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
        expect_ok(
            m.rollback(&client, MIGRATIONS.len() - 1).await,
            "down to 0001"
        ),
        vec![10, 9, 8, 7, 6, 5, 4, 3, 2]
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
    assert_eq!(
        expect_ok(m.up(&client).await, "up to 0002"),
        vec![2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
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
        expect_ok(
            m.rollback(&client, MIGRATIONS.len() - 1).await,
            "down again"
        ),
        vec![10, 9, 8, 7, 6, 5, 4, 3, 2]
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

// Adoption of the record of earlier builds ----------------------------------------------------

/// What earlier builds did: their record table, with the first `n` kernel migrations applied
/// and recorded at a known time.
async fn legacy_install(client: &tokio_postgres::Client, n: usize) {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version     bigint PRIMARY KEY,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await
        .unwrap_or_else(|e| panic!("legacy table: {e}"));
    for m in &MIGRATIONS[..n] {
        client
            .batch_execute(&m.up)
            .await
            .unwrap_or_else(|e| panic!("legacy {}: {e}", m.label()));
        client
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) \
                 VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'), \
                         '2024-01-02 03:04:05+00')",
                &[&m.version, &m.name.as_ref(), &m.up.as_ref()],
            )
            .await
            .unwrap_or_else(|e| panic!("legacy row {}: {e}", m.label()));
    }
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap_or_else(|e| panic!("to_regclass: {e}"))
        .get(0)
}

/// `(space, version, name, applied before 2025)` of every record.
async fn records(client: &tokio_postgres::Client) -> Vec<(String, i64, String, bool)> {
    client
        .query(
            "SELECT space, version, name, applied_at < '2025-01-01' \
             FROM kernel_schema_migrations ORDER BY space, version",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("records: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn record(space: &str, version: i64, name: &str, old: bool) -> (String, i64, String, bool) {
    (space.to_owned(), version, name.to_owned(), old)
}

static APP: &[Migration] = &[Migration::new(
    1,
    "accounts",
    "CREATE TABLE app_accounts (id bigint PRIMARY KEY)",
    "DROP TABLE app_accounts",
)];

/// A database migrated by an earlier build: the first runner takes its record over (rows moved
/// to space `kernel` with their times, old table dropped) and applies nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernels_old_record_table_is_adopted() {
    // Fully migrated: `up` adopts and has nothing to apply (0001 again would fail).
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    legacy_install(&client, MIGRATIONS.len()).await;
    let m = Migrator::new();
    assert!(
        expect_ok(m.is_current(&client).await, "status reads the old table"),
        "before adoption the old record counts"
    );
    assert!(
        table_exists(&client, "schema_migrations").await,
        "status only reads"
    );
    assert!(expect_ok(m.up(&client).await, "up adopts").is_empty());
    assert!(!table_exists(&client, "schema_migrations").await);
    assert_eq!(
        records(&client).await,
        vec![
            record("kernel", 1, "init", true),
            record("kernel", 2, "event_txid", true),
            record("kernel", 3, "operations", true),
            record("kernel", 4, "generation", true),
            record("kernel", 5, "event_recorded_at", true),
            record("kernel", 6, "console_sql", true),
            record("kernel", 7, "tenancy", true),
            record("kernel", 8, "set_based_put", true),
            record("kernel", 9, "event_appends", true),
            record("kernel", 10, "field_indexes", true)
        ],
        "rows moved with their original times"
    );
    assert!(expect_ok(m.is_current(&client).await, "is_current"));
    drop(client);
    drop(db);

    // Migrated up to 0001 only, and an application's runner comes first: it adopts, and the
    // kernel's runner then applies just 0002 and later.
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    legacy_install(&client, 1).await;
    let status = expect_ok(m.status(&client).await, "status");
    assert!(
        status.len() == MIGRATIONS.len()
            && matches!(status[0].state, MigrationState::Applied { .. })
            && status[1..]
                .iter()
                .all(|s| s.state == MigrationState::Pending),
        "{status:?}"
    );
    let app = expect_ok(Migrator::embedded("app", APP), "embedded");
    assert_eq!(expect_ok(app.up(&client).await, "app up"), vec![1]);
    assert!(!table_exists(&client, "schema_migrations").await);
    assert_eq!(
        expect_ok(m.up(&client).await, "kernel up"),
        vec![2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    assert_eq!(
        records(&client).await,
        vec![
            record("app", 1, "accounts", false),
            record("kernel", 1, "init", true),
            record("kernel", 2, "event_txid", false),
            record("kernel", 3, "operations", false),
            record("kernel", 4, "generation", false),
            record("kernel", 5, "event_recorded_at", false),
            record("kernel", 6, "console_sql", false),
            record("kernel", 7, "tenancy", false),
            record("kernel", 8, "set_based_put", false),
            record("kernel", 9, "event_appends", false),
            record("kernel", 10, "field_indexes", false)
        ]
    );
}

/// A `schema_migrations` that may belong to another tool is never adopted or touched: other
/// columns (Rails, golang-migrate), the kernel's columns with a row that is not one of the
/// kernel's migrations (another name, or a checksum this build does not have), or no rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_schema_migrations_is_left_alone() {
    let kernel_shaped = "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, \
         name text NOT NULL, checksum text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT clock_timestamp())";
    let cases = [
        (
            "rails",
            "CREATE TABLE schema_migrations (version character varying PRIMARY KEY); \
             INSERT INTO schema_migrations VALUES ('20240101000000'), ('20240102000000')"
                .to_owned(),
        ),
        (
            "golang-migrate",
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL); \
             INSERT INTO schema_migrations VALUES (3, false)"
                .to_owned(),
        ),
        (
            "kernel columns, another tool's row",
            format!(
                "{kernel_shaped}; INSERT INTO schema_migrations (version, name, checksum) \
                 VALUES (1, 'create_users', 'c0ffee')"
            ),
        ),
        (
            "kernel columns, a checksum this build does not have",
            format!(
                "{kernel_shaped}; INSERT INTO schema_migrations (version, name, checksum) \
                 VALUES (1, 'init', 'c0ffee')"
            ),
        ),
        ("kernel columns, no rows", kernel_shaped.to_owned()),
        (
            "kernel columns and one more",
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text, \
             checksum text, applied_at timestamptz, dirty boolean)"
                .to_owned(),
        ),
    ];
    for (case, setup) in cases {
        let db = fresh_database().await;
        let client = common::raw_client(db.url()).await;
        client
            .batch_execute(&setup)
            .await
            .unwrap_or_else(|e| panic!("{case}: set-up: {e}"));
        let snapshot = || async {
            client
                .query_one(
                    "SELECT (SELECT string_agg(t::text, ';' ORDER BY t::text) FROM schema_migrations t), \
                     (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ',' ORDER BY attnum) \
                      FROM pg_attribute WHERE attrelid = 'schema_migrations'::regclass AND attnum > 0)",
                    &[],
                )
                .await
                .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)))
                .unwrap_or_else(|e| panic!("{case}: snapshot: {e}"))
        };
        let before = snapshot().await;
        let m = Migrator::new();
        let status = expect_ok(m.status(&client).await, case);
        assert!(
            status.iter().all(|s| s.state == MigrationState::Pending),
            "{case}: {status:?}"
        );
        assert_eq!(
            expect_ok(m.up(&client).await, case),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "{case}"
        );
        assert_eq!(snapshot().await, before, "{case}: untouched");
        assert_eq!(
            records(&client).await,
            vec![
                record("kernel", 1, "init", false),
                record("kernel", 2, "event_txid", false),
                record("kernel", 3, "operations", false),
                record("kernel", 4, "generation", false),
                record("kernel", 5, "event_recorded_at", false),
                record("kernel", 6, "console_sql", false),
                record("kernel", 7, "tenancy", false),
                record("kernel", 8, "set_based_put", false),
                record("kernel", 9, "event_appends", false),
                record("kernel", 10, "field_indexes", false)
            ],
            "{case}"
        );
        let app = expect_ok(Migrator::embedded("app", APP), "embedded");
        assert_eq!(expect_ok(app.up(&client).await, case), vec![1], "{case}");
        assert_eq!(
            snapshot().await,
            before,
            "{case}: untouched by an app runner"
        );
    }
}

/// The kernel's own legacy record of a migration whose file changed since (the kernel's tables
/// exist, the checksum differs) is refused with `Config`, not left alone to re-apply 0001 over
/// the existing schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_kernel_record_in_schema_migrations_is_refused() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    expect_ok(Migrator::new().up(&client).await, "up");
    client
        .batch_execute(
            "ALTER TABLE kernel_schema_migrations RENAME TO schema_migrations; \
             ALTER TABLE schema_migrations DROP COLUMN space; \
             UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
        )
        .await
        .unwrap_or_else(|e| panic!("set-up: {e}"));
    let e = Migrator::new().up(&client).await.unwrap_err();
    assert_eq!(e.code(), kernel_core::ErrorCode::Config, "{e}");
    assert!(e.to_string().contains("0001_init"), "{e}");
}

// Application migrations in their own version space ------------------------------------------

/// A folder under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kernel-migrations-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: impl AsRef<[u8]>) {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn remove(&self, name: &str) {
        let path = self.0.join(name);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("rm {}: {e}", path.display()));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

fn billing_folder() -> TempDir {
    let dir = TempDir::new("billing");
    dir.write(
        "0001_accounts.up.sql",
        "CREATE TABLE app_accounts (id bigint PRIMARY KEY);",
    );
    dir.write("0001_accounts.down.sql", "DROP TABLE app_accounts;");
    dir.write(
        "0002_balance.up.sql",
        "ALTER TABLE app_accounts ADD COLUMN balance bigint NOT NULL DEFAULT 0;",
    );
    dir.write(
        "0002_balance.down.sql",
        "ALTER TABLE app_accounts DROP COLUMN balance;",
    );
    dir.write("README.md", "not a migration: ignored");
    dir
}

async fn column_exists(client: &tokio_postgres::Client, table: &str, column: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_name = $1 AND column_name = $2)",
            &[&table, &column],
        )
        .await
        .unwrap_or_else(|e| panic!("columns: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_migrations_run_in_their_own_space() {
    let db = fresh_database().await;
    let client = common::raw_client(db.url()).await;
    let dir = billing_folder();
    let billing = expect_ok(Migrator::from_dir("billing", dir.path()), "from_dir");
    assert_eq!(billing.space(), "billing");
    assert_eq!(billing.migrations().len(), 2);

    // The application first, on an empty database; then the kernel, with the same numbers.
    assert_eq!(
        expect_ok(billing.up(&client).await, "billing up"),
        vec![1, 2]
    );
    assert_eq!(
        expect_ok(Migrator::new().up(&client).await, "kernel up"),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    );
    static REPORTS: &[Migration] = &[Migration::new(
        1,
        "reports",
        "CREATE TABLE app_reports (id bigint)",
        "DROP TABLE app_reports",
    )];
    let reports = expect_ok(Migrator::embedded("reports", REPORTS), "embedded");
    assert_eq!(expect_ok(reports.up(&client).await, "reports up"), vec![1]);
    assert_eq!(
        records(&client).await,
        vec![
            record("billing", 1, "accounts", false),
            record("billing", 2, "balance", false),
            record("kernel", 1, "init", false),
            record("kernel", 2, "event_txid", false),
            record("kernel", 3, "operations", false),
            record("kernel", 4, "generation", false),
            record("kernel", 5, "event_recorded_at", false),
            record("kernel", 6, "console_sql", false),
            record("kernel", 7, "tenancy", false),
            record("kernel", 8, "set_based_put", false),
            record("kernel", 9, "event_appends", false),
            record("kernel", 10, "field_indexes", false),
            record("reports", 1, "reports", false),
        ]
    );
    assert!(expect_ok(billing.is_current(&client).await, "is_current"));
    assert!(expect_ok(billing.up(&client).await, "again").is_empty());

    // Checksums are per space: a changed billing file stops billing only.
    client
        .execute(
            "UPDATE kernel_schema_migrations SET checksum = 'edited' \
             WHERE space = 'billing' AND version = 1",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("tamper: {e}"));
    let err = expect_err(billing.up(&client).await, ErrorCode::Config, "changed file");
    assert!(
        err.to_string().contains("0001_accounts") && err.to_string().contains("billing"),
        "{err}"
    );
    let status = expect_ok(billing.status(&client).await, "status");
    assert!(
        matches!(status[0].state, MigrationState::Changed { .. }),
        "{status:?}"
    );
    assert!(expect_ok(
        Migrator::new().is_current(&client).await,
        "kernel"
    ));
    assert!(expect_ok(reports.up(&client).await, "reports").is_empty());
    client
        .execute(
            "UPDATE kernel_schema_migrations \
             SET checksum = encode(sha256(convert_to($1, 'UTF8')), 'hex') \
             WHERE space = 'billing' AND version = 1",
            &[&billing.migrations()[0].up.as_ref()],
        )
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));

    // Rollback stays in its space.
    assert_eq!(
        expect_ok(billing.rollback(&client, 1).await, "rollback 1"),
        vec![2]
    );
    assert!(!column_exists(&client, "app_accounts", "balance").await);
    assert_eq!(
        expect_ok(billing.rollback(&client, 5).await, "rollback all"),
        vec![1]
    );
    assert!(!table_exists(&client, "app_accounts").await);
    assert!(expect_ok(billing.rollback(&client, 1).await, "nothing").is_empty());
    assert!(expect_ok(
        Migrator::new().is_current(&client).await,
        "kernel"
    ));
    assert!(table_exists(&client, "app_reports").await);

    // A migration that fails leaves nothing behind: its transaction rolls back, no record.
    dir.write(
        "0003_broken.up.sql",
        "CREATE TABLE app_half (id bigint); SELEC 1;",
    );
    dir.write("0003_broken.down.sql", "DROP TABLE app_half;");
    let billing = expect_ok(Migrator::from_dir("billing", dir.path()), "from_dir");
    let err = billing
        .up(&client)
        .await
        .err()
        .unwrap_or_else(|| panic!("a broken migration must fail"));
    assert_eq!(err.context_value("migration"), Some("0003_broken"), "{err}");
    assert_eq!(err.context_value("space"), Some("billing"), "{err}");
    assert_eq!(err.operation(), Some("migrate"), "{err}");
    assert!(!table_exists(&client, "app_half").await);
    let applied: Vec<i64> = records(&client)
        .await
        .into_iter()
        .filter(|r| r.0 == "billing")
        .map(|r| r.1)
        .collect();
    assert_eq!(applied, vec![1, 2], "the steps before the broken one stay");

    // A record this build does not know: shown, and not rolled back from here.
    client
        .execute(
            "INSERT INTO kernel_schema_migrations (space, version, name, checksum) \
             VALUES ('reports', 2, 'future', 'x')",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("insert: {e}"));
    let status = expect_ok(reports.status(&client).await, "status");
    assert!(
        matches!(status[1].state, MigrationState::Unknown { .. }) && status[1].name == "future",
        "{status:?}"
    );
    assert!(expect_ok(
        reports.is_current(&client).await,
        "unknown counts as applied"
    ));
    expect_err(
        reports.rollback(&client, 1).await,
        ErrorCode::Config,
        "rollback of an unknown migration",
    );
}

/// Runners of different spaces share the lock: started together on an empty database, every
/// one succeeds and each migration of each space runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runners_of_several_spaces_are_serialised() {
    let db = fresh_database().await;
    let mut runners = Vec::new();
    for i in 0..6 {
        let url = db.url().to_owned();
        runners.push(tokio::spawn(async move {
            let client = common::raw_client(&url).await;
            let m = if i % 2 == 0 {
                Migrator::new()
            } else {
                expect_ok(Migrator::embedded("app", APP), "embedded")
            };
            let applied = m.up(&client).await;
            (m.space().to_owned(), applied)
        }));
    }
    let mut applied = Vec::new();
    for r in runners {
        let (space, result) = kernel_testkit::join(r, "runner").await;
        for v in expect_ok(result, "concurrent up") {
            applied.push((space.clone(), v));
        }
    }
    applied.sort();
    let mut expected = vec![("app".to_owned(), 1)];
    expected.extend(MIGRATIONS.iter().map(|m| ("kernel".to_owned(), m.version)));
    assert_eq!(applied, expected);
}

/// Every problem with a folder is a `Config` error naming the file (or the folder).
#[test]
fn bad_folders_are_refused_naming_the_file() {
    let check = |dir: &TempDir, space: &str, needle: &str| {
        let err = expect_err(
            Migrator::from_dir(space, dir.path()),
            ErrorCode::Config,
            needle,
        );
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(err.context_value("setting"), Some("migrations"));
    };
    let pair = |dir: &TempDir, stem: &str| {
        dir.write(&format!("{stem}.up.sql"), "SELECT 1;");
        dir.write(&format!("{stem}.down.sql"), "SELECT 1;");
    };

    let missing = TempDir::new("missing");
    let gone = missing.path().join("nope");
    let err = expect_err(
        Migrator::from_dir("app", &gone),
        ErrorCode::Config,
        "missing folder",
    );
    assert!(
        err.to_string().contains("does not exist") && err.to_string().contains("nope"),
        "{err}"
    );
    missing.write("file.sql", "SELECT 1;");
    let err = expect_err(
        Migrator::from_dir("app", missing.path().join("file.sql")),
        ErrorCode::Config,
        "a file for a folder",
    );
    assert!(err.to_string().contains("not a migration folder"), "{err}");

    // Ignored: other extensions, hidden files, subfolders. An empty folder is no migrations.
    let ignored = TempDir::new("ignored");
    ignored.write("README.md", "x");
    ignored.write(".0001_hidden.up.sql", "x");
    std::fs::create_dir(ignored.path().join("0002_folder.up.sql"))
        .unwrap_or_else(|e| panic!("mkdir: {e}"));
    let m = expect_ok(Migrator::from_dir("app", ignored.path()), "ignored files");
    assert!(m.migrations().is_empty());

    let dir = TempDir::new("names");
    pair(&dir, "0001_ok");
    for bad in [
        "0002_init.sql",
        "init.up.sql",
        "0000_zero.up.sql",
        "0002_with space.up.sql",
        "0002_x.UP.sql",
    ] {
        dir.write(bad, "SELECT 1;");
        check(&dir, "app", bad);
        dir.remove(bad);
    }

    let dir = TempDir::new("unpaired");
    pair(&dir, "0001_ok");
    dir.write("0002_lonely.up.sql", "SELECT 1;");
    check(&dir, "app", "0002_lonely.up.sql");
    dir.remove("0002_lonely.up.sql");
    dir.write("0002_lonely.down.sql", "SELECT 1;");
    check(&dir, "app", "0002_lonely.down.sql");
    dir.remove("0002_lonely.down.sql");

    let dir = TempDir::new("duplicate");
    pair(&dir, "0003_a");
    pair(&dir, "0003_b");
    check(&dir, "app", "0003_a.down.sql");
    check(&dir, "app", "0003_b.down.sql");
    check(&dir, "app", "same number 3");
    let dir = TempDir::new("duplicate-number");
    pair(&dir, "3_a");
    pair(&dir, "0003_a");
    check(&dir, "app", "3_a.down.sql");
    let dir = TempDir::new("mismatched");
    dir.write("0004_a.up.sql", "SELECT 1;");
    dir.write("0004_b.down.sql", "SELECT 1;");
    check(&dir, "app", "0004_b.down.sql");

    let dir = TempDir::new("empty");
    dir.write("0001_empty.up.sql", " \n-- nothing\n");
    dir.write("0001_empty.down.sql", "");
    let err = Migrator::from_dir("app", dir.path()).err();
    // A comment-only file is not empty text: only whitespace is refused.
    assert!(err.is_none(), "{err:?}");
    dir.write("0001_empty.up.sql", " \n\t");
    check(&dir, "app", "0001_empty.up.sql");

    let dir = TempDir::new("utf8");
    dir.write("0001_bytes.up.sql", [0xff_u8, 0xfe, 0x00]);
    dir.write("0001_bytes.down.sql", "SELECT 1;");
    check(&dir, "app", "0001_bytes.up.sql");

    let dir = TempDir::new("space");
    pair(&dir, "0001_ok");
    check(&dir, "kernel", "kernel");
    check(&dir, "Bad Space", "Bad Space");
    check(&dir, "", "space");
}
