//! Bad files and SQLite failures give clear kernel errors naming the path (and the namespace /
//! key / stream involved), with the status the contract asks for; the writer survives them.

use std::time::Duration;

use driver_sqlite::{SqliteConfig, SqliteDriver};
use kernel_core::{
    Error, ErrorCode, ErrorStatus, EventStore, ExpectedVersion, Lock, NewEvent, PutOptions,
    StorageDriver, json,
};

fn path_of(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

async fn open_err(path: &str) -> Error {
    match SqliteDriver::open(SqliteConfig::new(path)).await {
        Ok(_) => panic!("opening {path} should fail"),
        Err(e) => e,
    }
}

fn assert_names_path(e: &Error, path: &str) {
    assert_eq!(
        e.context_value("path"),
        Some(path),
        "error names the path: {e}"
    );
    assert!(
        e.to_string().contains(path),
        "the message shows the path: {e}"
    );
}

#[tokio::test]
async fn a_missing_directory_is_a_config_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "no/such/dir/kernel.db");
    let e = open_err(&path).await;
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    assert_eq!(e.context_value("setting"), Some("sqlite.path"));
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test]
async fn a_directory_is_not_a_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    let e = open_err(&path).await;
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    assert_names_path(&e, &path);
}

#[tokio::test]
async fn a_read_only_file_is_permission_denied_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "ro.db");
    // A real kernel database first, then made read-only.
    let d = SqliteDriver::open(SqliteConfig::new(&path)).await.unwrap();
    d.put("ns", "k", json!(1), PutOptions::new()).await.unwrap();
    d.shutdown().await;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&path, perms).unwrap();
    let e = open_err(&path).await;
    assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_corrupted_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "garbage.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&path, garbage).unwrap();
    let e = open_err(&path).await;
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    assert_eq!(e.status(), ErrorStatus::Permanent);
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("not a SQLite database"), "{e}");
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "newer.db");
    let d = SqliteDriver::open(SqliteConfig::new(&path)).await.unwrap();
    d.shutdown().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO kernel_schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let e = open_err(&path).await;
    assert_eq!(e.code(), ErrorCode::Config, "{e}");
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("version 999"), "{e}");
}

#[tokio::test]
async fn bad_settings_are_config_errors_before_any_file_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "never.db");
    let e = SqliteDriver::open(SqliteConfig {
        read_connections: 0,
        ..SqliteConfig::new(&path)
    })
    .await
    .unwrap_err();
    assert_eq!(e.context_value("setting"), Some("sqlite.read_connections"));
    assert!(!std::path::Path::new(&path).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_another_process_is_unavailable_and_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "busy.db");
    let d = SqliteDriver::open(SqliteConfig {
        busy_timeout: Duration::from_millis(100),
        ..SqliteConfig::new(&path)
    })
    .await
    .unwrap();
    d.put("ns", "k", json!(1), PutOptions::new()).await.unwrap();
    // Another "process" takes the write lock and keeps it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = d
        .put("ns", "k", json!(2), PutOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.is_retryable(), "{e}");
    assert_names_path(&e, &path);
    assert_eq!(e.context_value("namespace"), Some("ns"));
    assert_eq!(e.context_value("key"), Some("k"));
    assert_eq!(e.operation(), Some("put"));
    // Readers are not blocked by a writer (WAL).
    assert_eq!(d.get("ns", "k").await.unwrap().unwrap().version, 1);
    other.execute_batch("ROLLBACK").unwrap();
    // The writer survived the failure.
    assert_eq!(
        d.put("ns", "k", json!(3), PutOptions::new())
            .await
            .unwrap()
            .version,
        2
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_stored_data_is_corrupted_naming_what() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "bad-row.db");
    let d = SqliteDriver::open(SqliteConfig::new(&path)).await.unwrap();
    d.put("ns", "k", json!(1), PutOptions::new()).await.unwrap();
    d.append(
        "s-1",
        ExpectedVersion::Any,
        vec![NewEvent::new("E", json!(1))],
    )
    .await
    .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute("UPDATE kernel_documents SET value = 'not json {'", [])
        .unwrap();
    other
        .execute("UPDATE kernel_events SET id = x'0102'", [])
        .unwrap();
    let e = d.get("ns", "k").await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    assert_eq!(e.context_value("namespace"), Some("ns"));
    assert_eq!(e.context_value("key"), Some("k"));
    assert_names_path(&e, &path);
    let e = d
        .read_stream("s-1", kernel_core::ReadStream::forward())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
    assert_eq!(e.context_value("stream"), Some("s-1"));
    // The driver goes on.
    d.put("ns", "k2", json!(2), PutOptions::new())
        .await
        .unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_every_call_is_unavailable_driver_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_of(&dir, "closed.db");
    let d = SqliteDriver::open(SqliteConfig::new(&path)).await.unwrap();
    d.shutdown().await;
    d.shutdown().await;
    let errors = [
        d.put("ns", "k", json!(1), PutOptions::new())
            .await
            .map(drop)
            .unwrap_err(),
        d.get("ns", "k").await.map(drop).unwrap_err(),
        d.append(
            "s-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", json!(1))],
        )
        .await
        .map(drop)
        .unwrap_err(),
        d.try_acquire("l", Duration::from_secs(1))
            .await
            .map(drop)
            .unwrap_err(),
        d.begin().await.map(drop).unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        assert_eq!(e.status(), ErrorStatus::Permanent, "{e}");
        assert!(e.to_string().contains("driver shut down"), "{e}");
    }
}
