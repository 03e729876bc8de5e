//! The real `kernelctl` binary against real stores: PostgreSQL (a fresh database per test),
//! Redis (a unique key prefix per test), SQLite (a temporary file) and memory. Each test seeds
//! its source through the library, runs the binary with a clean environment, and checks what it
//! printed, its exit status and the stores.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{ExpectedVersion, NewEvent, json};
use kernel_testkit::postgres::{TestDatabase, fresh_database};
use kernel_testkit::redis::RedisTestServer;

const BIN: &str = env!("CARGO_BIN_EXE_kernelctl");

/// A store the tests point the binary (and the library) at.
enum Store {
    Postgres(Box<TestDatabase>),
    Redis(RedisTestServer),
    Sqlite(tempfile::TempDir),
}

impl Store {
    async fn postgres() -> Store {
        Store::Postgres(Box::new(fresh_database().await))
    }

    async fn redis() -> Store {
        Store::Redis(RedisTestServer::start().await)
    }

    fn sqlite() -> Store {
        Store::Sqlite(tempfile::tempdir().expect("a temporary directory"))
    }

    /// The environment that configures it.
    fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self {
            Store::Postgres(db) => vec![
                ("KERNEL_STORAGE_MODE", "postgres".into()),
                ("DATABASE_URL", db.url().into()),
                ("KERNEL_POSTGRES_POOL_SIZE", "4".into()),
            ],
            Store::Redis(r) => vec![
                ("KERNEL_STORAGE_MODE", "redis".into()),
                ("REDIS_URL", r.url().into()),
                (
                    "KERNEL_REDIS_KEY_PREFIX",
                    r.prefix().trim_end_matches(':').into(),
                ),
            ],
            Store::Sqlite(dir) => vec![
                ("KERNEL_STORAGE_MODE", "sqlite".into()),
                (
                    "KERNEL_SQLITE_PATH",
                    dir.path().join("kernel.db").display().to_string(),
                ),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The same configuration as a TOML file (for `events copy --to`).
    fn toml(&self, dir: &Path) -> std::path::PathBuf {
        let text = match self {
            Store::Postgres(db) => format!(
                "storage_mode = \"postgres\"\n[postgres]\nurl = \"{}\"\npool_size = 4\n",
                db.url()
            ),
            Store::Redis(r) => format!(
                "storage_mode = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n",
                r.url(),
                r.prefix().trim_end_matches(':')
            ),
            Store::Sqlite(d) => format!(
                "storage_mode = \"sqlite\"\n[sqlite]\npath = \"{}\"\n",
                d.path().join("kernel.db").display()
            ),
        };
        let path = dir.join(format!("target-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, text).expect("write the target's configuration");
        path
    }

    async fn kernel(&self) -> Kernel {
        let config = KernelConfig::from_vars(self.env()).expect("the test configuration");
        Kernel::boot(config)
            .await
            .expect("boot a kernel on the test store")
    }
}

/// Runs the binary with only `env` (no variable of the test process leaks in).
fn kernelctl(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kernelctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Seeds `streams` streams of `per_stream` events, appended round-robin so the global order
/// interleaves streams (an import must then write many short runs).
async fn seed(kernel: &Kernel, category: &str, streams: usize, per_stream: usize) {
    let events = kernel.events();
    for v in 0..per_stream {
        for s in 0..streams {
            let mut metadata = kernel_core::Metadata::new();
            metadata.insert("seq".into(), json!(v));
            let mut event = NewEvent::new(
                if v % 2 == 0 { "Placed" } else { "Paid" },
                json!({"stream": s, "n": v, "big": u64::MAX, "x": 1.5e300, "text": "é\u{1F600}"}),
            )
            .with_metadata(metadata)
            .with_correlation(format!("corr-{s}"));
            if v > 0 {
                event = event.with_causation(format!("cause-{v}"));
            }
            events
                .append(
                    &format!("{category}-{s}"),
                    ExpectedVersion::Exact(v as u64),
                    vec![event],
                )
                .await
                .expect("seed an event");
        }
    }
}

async fn export_import_round_trip(source: Store, target: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = source.kernel().await;
    seed(&kernel, "order", 7, 6).await;
    kernel.shutdown().await;
    let file = dir.path().join("events.ndjson");
    let file = file.to_str().expect("utf-8 path");
    let out = kernelctl(&source.env(), &["events", "export", "-o", file]);
    ok(&out, "export");
    let exported = std::fs::read_to_string(file).expect("read the export");
    assert_eq!(exported.lines().count(), 42, "every event exported");
    assert!(
        text(&out.stderr).contains("42 events"),
        "the summary names the count: {}",
        text(&out.stderr)
    );

    let out = kernelctl(
        &target.env(),
        &["events", "import", "--input", file, "--batch", "5"],
    );
    let summary = text(&out.stderr);
    ok(&out, "import");
    assert!(
        summary.contains("42 events written, 0 already there"),
        "{summary}"
    );
    let again = dir.path().join("again.ndjson");
    let again = again.to_str().expect("utf-8 path");
    ok(
        &kernelctl(&target.env(), &["events", "export", "-o", again]),
        "re-export",
    );
    assert_eq!(
        std::fs::read_to_string(again).expect("read"),
        exported,
        "a fresh target reproduces every event byte for byte: ids, versions, positions, times"
    );

    let out = kernelctl(&target.env(), &["events", "import", "--input", file]);
    let summary = text(&out.stderr);
    ok(&out, "second import");
    assert!(
        summary.contains("0 events written, 42 already there"),
        "{summary}"
    );
    ok(
        &kernelctl(&target.env(), &["events", "export", "-o", again]),
        "re-export",
    );
    assert_eq!(
        std::fs::read_to_string(again).expect("read"),
        exported,
        "nothing added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_postgres_events() {
    export_import_round_trip(Store::postgres().await, Store::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_redis_events() {
    export_import_round_trip(Store::redis().await, Store::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_sqlite_events() {
    export_import_round_trip(Store::sqlite(), Store::sqlite()).await;
}

/// Redis to PostgreSQL with `events copy`: the target's export equals the source's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_redis_to_postgres_reproduces_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, target) = (Store::redis().await, Store::postgres().await);
    let kernel = source.kernel().await;
    seed(&kernel, "cart", 5, 4).await;
    kernel.shutdown().await;
    let to = target.toml(dir.path());
    let out = kernelctl(
        &source.env(),
        &["events", "copy", "--to", to.to_str().expect("utf-8")],
    );
    let summary = text(&out.stderr);
    ok(&out, "copy");
    assert!(summary.contains("20 events written"), "{summary}");
    let a = ok(
        &kernelctl(&source.env(), &["events", "export"]),
        "source export",
    );
    let b = ok(
        &kernelctl(&target.env(), &["events", "export"]),
        "target export",
    );
    assert_eq!(a.lines().count(), 20);
    assert_eq!(a, b, "the copy is the same log");
}

/// A malformed line stops the import with its line number; the batches before it are in, the
/// batch holding it is not written at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, target) = (Store::sqlite(), Store::postgres().await);
    let kernel = source.kernel().await;
    seed(&kernel, "bad", 1, 8).await;
    kernel.shutdown().await;
    let exported = ok(&kernelctl(&source.env(), &["events", "export"]), "export");
    let mut lines: Vec<&str> = exported.lines().collect();
    lines[4] = "{\"position\": 5, \"stream\": oops}";
    let file = dir.path().join("broken.ndjson");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let file = file.to_str().expect("utf-8");
    let out = kernelctl(
        &target.env(),
        &["events", "import", "-i", file, "--batch", "2"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 5 is not an exported event"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--skip-lines 4"),
        "the resume command: {stderr}"
    );
    let stored = ok(
        &kernelctl(&target.env(), &["events", "read", "bad-0"]),
        "read",
    );
    assert_eq!(
        stored.lines().count(),
        4,
        "lines 1-4 (two whole batches) are in; line 6 of the failing batch is not: {stored}"
    );
}

/// Ctrl-C stops an import at a batch boundary and prints the command that resumes it; running
/// that command completes the log exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, target) = (Store::sqlite(), Store::postgres().await);
    let kernel = source.kernel().await;
    seed(&kernel, "big", 40, 50).await;
    kernel.shutdown().await;
    let file = dir.path().join("big.ndjson");
    let file = file.to_str().expect("utf-8");
    ok(
        &kernelctl(&source.env(), &["events", "export", "-o", file]),
        "export",
    );

    let child = Command::new(BIN)
        .env_clear()
        .envs(target.env())
        .args(["events", "import", "-i", file, "--batch", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the import");
    // Once its first batches are in (and long before the last), interrupt it as a terminal's
    // Ctrl-C would: waiting on the store, not on the clock, keeps a fast machine from finishing
    // the import before the signal.
    let watcher = target.kernel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while watcher.events().head_position().await.expect("head") < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import wrote nothing in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    watcher.shutdown().await;
    let signalled = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success(), "SIGINT delivered");
    let out = child.wait_with_output().expect("wait for the import");
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(130),
        "stopped by the interrupt: {stderr}"
    );
    let resume = stderr
        .lines()
        .find_map(|l| l.split_once("resume with: ").map(|(_, cmd)| cmd.to_owned()))
        .unwrap_or_else(|| panic!("no resume command printed: {stderr}"));
    let skip: u64 = resume
        .split_whitespace()
        .skip_while(|w| *w != "--skip-lines")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --skip-lines in {resume:?}"));
    assert!(skip > 0 && skip < 2000, "stopped part way: {skip}");
    assert_eq!(skip % 10, 0, "at a batch boundary: {skip}");
    let skip = skip.to_string();
    let out = kernelctl(
        &target.env(),
        &["events", "import", "-i", file, "--skip-lines", &skip],
    );
    ok(&out, "resumed import");
    let source_log = std::fs::read_to_string(file).expect("read");
    let target_log = ok(&kernelctl(&target.env(), &["events", "export"]), "export");
    assert_eq!(
        target_log, source_log,
        "the resumed import completes the log exactly"
    );
}

/// `migrate` round-trips on PostgreSQL: status (pending), up, status (applied), rollback of
/// everything, up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_round_trips_on_postgres() {
    let store = Store::postgres().await;
    let env = store.env();
    let status = ok(&kernelctl(&env, &["migrate", "status"]), "status");
    let pending = status.lines().filter(|l| l.contains("pending")).count();
    assert!(
        pending >= 3,
        "a fresh database has every migration pending:\n{status}"
    );
    let up = ok(&kernelctl(&env, &["migrate", "up"]), "up");
    assert_eq!(
        up.lines().filter(|l| l.contains("applied")).count(),
        pending,
        "{up}"
    );
    let status = ok(&kernelctl(&env, &["migrate", "status"]), "status");
    let applied = status
        .lines()
        .filter(|l| l.starts_with('0') && l.contains(" applied "))
        .count();
    assert_eq!(applied, pending, "{status}");
    let n = pending.to_string();
    let down = ok(&kernelctl(&env, &["migrate", "rollback", &n]), "rollback");
    assert_eq!(
        down.lines().filter(|l| l.contains("reverted")).count(),
        pending,
        "{down}"
    );
    let status = ok(&kernelctl(&env, &["migrate", "status"]), "status");
    assert_eq!(
        status.lines().filter(|l| l.contains("pending")).count(),
        pending,
        "{status}"
    );
    ok(&kernelctl(&env, &["migrate", "up"]), "up again");
    let status = ok(&kernelctl(&env, &["migrate", "status"]), "status");
    assert!(!status.contains("pending"), "{status}");
}

/// `health` exits 0 on a healthy backend (table and JSON) and non-zero when the backend is
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exit_status_follows_the_backend() {
    let store = Store::redis().await;
    let table = ok(&kernelctl(&store.env(), &["health"]), "health");
    assert!(table.contains("overall: healthy"), "{table}");
    let report: serde_json::Value = serde_json::from_str(&ok(
        &kernelctl(&store.env(), &["health", "--json"]),
        "health",
    ))
    .expect("JSON");
    assert_eq!(report["healthy"], json!(true));

    let memory = vec![("KERNEL_STORAGE_MODE".to_owned(), "memory".to_owned())];
    ok(&kernelctl(&memory, &["health"]), "memory health");

    let dead = vec![
        ("KERNEL_STORAGE_MODE".to_owned(), "postgres".to_owned()),
        (
            "DATABASE_URL".to_owned(),
            "postgres://postgres@127.0.0.1:1/none".to_owned(),
        ),
        (
            "KERNEL_POSTGRES_CONNECT_TIMEOUT_MS".to_owned(),
            "500".to_owned(),
        ),
    ];
    let out = kernelctl(&dead, &["health"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable backend: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
}

/// Documents and namespaces through the binary, on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_and_namespaces_round_trip() {
    let store = Store::redis().await;
    let env = store.env();
    let run = |args: &[&str]| kernelctl(&env, args);
    let created = ok(
        &run(&[
            "kv",
            "put",
            "users",
            "alice",
            "{\"age\": 30}",
            "--if-absent",
        ]),
        "put",
    );
    let entry: serde_json::Value = serde_json::from_str(&created).expect("JSON");
    assert_eq!(
        (entry["version"].clone(), entry["value"].clone()),
        (json!(1), json!({"age": 30}))
    );
    let out = run(&[
        "kv",
        "put",
        "users",
        "alice",
        "{\"age\": 31}",
        "--if-absent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already_exists"),
        "{}",
        text(&out.stderr)
    );

    // The same compare-and-set twice with an operation id: applied once, replayed once.
    let cas = [
        "kv",
        "put",
        "users",
        "alice",
        "{\"age\": 31}",
        "--if-version",
        "1",
        "--operation-id",
        "birthday-1",
    ];
    let first = ok(&run(&cas), "cas");
    let second = run(&cas);
    assert_eq!(
        ok(&second, "replayed cas"),
        first,
        "the replay prints the first outcome"
    );
    assert!(
        text(&second.stderr).contains("already applied"),
        "{}",
        text(&second.stderr)
    );

    for k in ["bob", "carol", "dave"] {
        ok(&run(&["kv", "put", "users", k, "{\"age\": 20}"]), "put");
    }
    let page = run(&["kv", "list", "users", "--limit", "2", "--keys-only"]);
    assert_eq!(ok(&page, "list"), "alice\nbob\n");
    assert!(
        text(&page.stderr).contains("--after bob"),
        "{}",
        text(&page.stderr)
    );
    let rest = ok(
        &run(&["kv", "list", "users", "--after", "bob", "--keys-only"]),
        "list",
    );
    assert_eq!(rest, "carol\ndave\n");
    let all = ok(
        &run(&[
            "kv",
            "list",
            "users",
            "--all",
            "--limit",
            "1",
            "--keys-only",
        ]),
        "list",
    );
    assert_eq!(all, "alice\nbob\ncarol\ndave\n");
    let filter = "{\"field\": {\"path\": \"age\", \"op\": \"gte\", \"value\": 30}}";
    assert_eq!(
        ok(&run(&["kv", "count", "users", "--filter", filter]), "count"),
        "{\"count\":1}\n"
    );
    let found = ok(&run(&["kv", "query", "users", "--filter", filter]), "query");
    assert!(found.contains("\"key\":\"alice\""), "{found}");
    assert_eq!(
        ok(&run(&["kv", "delete", "users", "bob"]), "delete"),
        "{\"deleted\":true}\n"
    );
    let missing = run(&["kv", "get", "users", "bob"]);
    assert_eq!(missing.status.code(), Some(1));

    ok(
        &run(&[
            "ns",
            "create",
            "audit",
            "--metadata",
            "{\"owner\": \"ops\"}",
        ]),
        "ns create",
    );
    let names = ok(&run(&["ns", "list"]), "ns list");
    assert!(
        names.contains("\"name\":\"audit\"") && names.contains("\"name\":\"users\""),
        "{names}"
    );
    let refused = run(&["ns", "drop", "users"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a non-empty namespace needs --recursive"
    );
    ok(&run(&["ns", "drop", "users", "--recursive"]), "ns drop");
    let bad = run(&["kv", "put", "users", "x", "{not json"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("not JSON"),
        "{}",
        text(&bad.stderr)
    );
}

/// `--help` shows examples, usage errors exit 2, completions print.
#[test]
fn help_usage_errors_and_completions() {
    let help = kernelctl(&[], &["events", "import", "--help"]);
    assert!(ok(&help, "help").contains("Examples:"));
    let usage = kernelctl(&[], &["kv", "put"]);
    assert_eq!(usage.status.code(), Some(2));
    let bash = ok(&kernelctl(&[], &["completions", "bash"]), "completions");
    assert!(bash.contains("kernelctl"), "{bash}");
    let unknown = kernelctl(&[], &["--set", "no.such=1", "health"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("no such configuration key"),
        "{}",
        text(&unknown.stderr)
    );
}

/// An application's folder of migrations in a space of its own, next to the kernel's; folder
/// problems are reported naming the file before anything runs; a password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_an_application_folder() {
    let store = Store::postgres().await;
    let env = store.env();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, sql: &str| std::fs::write(dir.path().join(name), sql).expect("write");
    write(
        "0001_accounts.up.sql",
        "CREATE TABLE app_accounts (id bigint);",
    );
    write("0001_accounts.down.sql", "DROP TABLE app_accounts;");
    write(
        "0002_balance.up.sql",
        "ALTER TABLE app_accounts ADD COLUMN balance bigint;",
    );
    write(
        "0002_balance.down.sql",
        "ALTER TABLE app_accounts DROP COLUMN balance;",
    );
    let folder = dir.path().display().to_string();
    let app = |action: &[&str]| {
        let mut args = vec!["migrate", "--dir", folder.as_str(), "--space", "billing"];
        args.extend_from_slice(action);
        kernelctl(&env, &args)
    };
    let status = ok(&app(&["status"]), "app status");
    assert!(
        status.contains("accounts") && status.contains("pending"),
        "{status}"
    );
    let up = ok(&app(&["up"]), "app up");
    assert_eq!(
        up,
        "postgres (billing): applied 0001\npostgres (billing): applied 0002\n"
    );
    ok(&kernelctl(&env, &["migrate", "up"]), "kernel up");
    let down = ok(&app(&["rollback"]), "app rollback");
    assert_eq!(down, "postgres (billing): reverted 0002\n");
    let kernel = ok(&kernelctl(&env, &["migrate", "status"]), "kernel status");
    assert!(
        !kernel.contains("pending"),
        "the kernel's space is untouched: {kernel}"
    );

    let usage = kernelctl(&env, &["migrate", "--dir", &folder, "up"]);
    assert_eq!(usage.status.code(), Some(2), "--dir without --space");
    write("0003_orphan.up.sql", "SELECT 1;");
    let out = app(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("0003_orphan.up.sql"),
        "{}",
        text(&out.stderr)
    );

    let secret = vec![
        ("KERNEL_STORAGE_MODE".to_owned(), "postgres".to_owned()),
        (
            "DATABASE_URL".to_owned(),
            "postgres://u:hunter2@127.0.0.1:1/nope".to_owned(),
        ),
    ];
    let out = kernelctl(&secret, &["migrate", "up"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot connect") && !err.contains("hunter2"),
        "{err}"
    );
}

/// `events tail` prints events as they are appended (from another process), filtered by
/// category, until Ctrl-C, which ends it with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_new_events_until_interrupted() {
    use tokio::io::AsyncBufReadExt;

    let store = Store::redis().await;
    let kernel = store.kernel().await;
    seed(&kernel, "old", 1, 2).await;
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .envs(store.env())
        .args(["events", "tail", "--category", "live"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tail");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    // Wait until it is subscribed (it says so) before appending.
    let ready = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
        .await
        .expect("tail starts")
        .expect("read stderr")
        .unwrap_or_default();
    assert!(ready.contains("tailing events after position 2"), "{ready}");
    let events = kernel.events();
    events
        .append(
            "other-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Skip", json!({}))],
        )
        .await
        .expect("append");
    for n in 0..3 {
        events
            .append(
                "live-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Seen", json!({"n": n}))],
            )
            .await
            .expect("append");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("an event within 20 s")
            .expect("read stdout")
            .expect("a line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(
            event["stream"],
            json!("live-1"),
            "only the category asked for: {line}"
        );
        seen.push(event["payload"]["n"].clone());
    }
    assert_eq!(seen, vec![json!(0), json!(1), json!(2)], "in order");
    let pid = child.id().expect("pid").to_string();
    let signalled = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("tail stops on Ctrl-C")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    kernel.shutdown().await;
}

/// `--parallel` appends runs of different streams at once: every event arrives with its id,
/// version, content and time; only positions may be ordered differently within a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_import_keeps_everything_but_the_order_of_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, target) = (Store::sqlite(), Store::postgres().await);
    let kernel = source.kernel().await;
    seed(&kernel, "par", 12, 5).await;
    kernel.shutdown().await;
    let file = dir.path().join("par.ndjson");
    let file = file.to_str().expect("utf-8");
    ok(
        &kernelctl(&source.env(), &["events", "export", "-o", file]),
        "export",
    );
    let args = ["events", "import", "-i", file, "--parallel", "8"];
    let summary = text(&kernelctl(&target.env(), &args).stderr);
    assert!(summary.contains("60 events written"), "{summary}");
    let strip = |text: &str| {
        let mut events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                v.as_object_mut().expect("object").remove("position");
                v
            })
            .collect();
        events.sort_by_key(|v| (v["stream"].to_string(), v["version"].as_u64()));
        events
    };
    let source_log = std::fs::read_to_string(file).expect("read");
    let target_log = ok(&kernelctl(&target.env(), &["events", "export"]), "export");
    assert_eq!(
        strip(&target_log),
        strip(&source_log),
        "all but positions identical"
    );
    let again = text(&kernelctl(&target.env(), &args).stderr);
    assert!(
        again.contains("0 events written, 60 already there"),
        "{again}"
    );
}
