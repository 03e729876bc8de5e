//! The named codes (`driver_postgres::codes`) and advisory-lock ids
//! (`driver_postgres::advisory`) mean to the SQL functions what the Rust side says: each value
//! is sent to the real functions and what they do is checked.

mod common;

use std::time::{Duration, Instant};

use driver_postgres::advisory;
use driver_postgres::codes::{AppendStatus, ExpectedKind, KernelSqlState, PutCode, TxOp};
use kernel_core::Uuid;
use serde_json::json;
use tokio_postgres::Client;

/// The kernel state an error carries (`None` for anything else).
fn state(err: &tokio_postgres::Error) -> Option<KernelSqlState> {
    err.code().and_then(|c| KernelSqlState::from_code(c.code()))
}

async fn put(
    c: &Client,
    key: &str,
    code: PutCode,
    version: Option<i64>,
) -> Result<i64, tokio_postgres::Error> {
    c.query_one(
        "SELECT o_version FROM kernel_put('ns', $1, $2, $3, $4, $5, $6)",
        &[
            &vec![key],
            &vec![json!(1)],
            &vec![None::<serde_json::Value>],
            &vec![None::<i64>],
            &vec![code.code()],
            &vec![version],
        ],
    )
    .await
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_codes() {
    let db = common::database().await;
    let c = common::raw_client(db.url()).await;
    let ok = |r: Result<i64, tokio_postgres::Error>, what: &str| {
        r.unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    assert_eq!(ok(put(&c, "k", PutCode::Always, None).await, "always"), 1);
    assert_eq!(ok(put(&c, "k", PutCode::Always, None).await, "always"), 2);
    let err = put(&c, "k", PutCode::IfAbsent, None).await.err();
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(
        ok(put(&c, "new", PutCode::IfAbsent, None).await, "absent"),
        1
    );
    assert_eq!(
        ok(put(&c, "k", PutCode::IfVersion, Some(2)).await, "cas"),
        3
    );
    let err = put(&c, "k", PutCode::IfVersion, Some(2)).await.err();
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::VersionConflict),
        "{err:?}"
    );
    assert_eq!(
        err.as_ref()
            .and_then(|e| e.as_db_error())
            .and_then(|d| d.hint()),
        Some("3"),
        "the current version travels in the hint"
    );
    let err = c
        .query_one("SELECT kernel_drop_namespace('ns', false)", &[])
        .await
        .err();
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::NamespaceNotEmpty),
        "{err:?}"
    );
}

/// One append of one event through `kernel_append_batch`: its status and stream version.
async fn append(
    c: &Client,
    stream: &str,
    kind: ExpectedKind,
    expected: Option<i64>,
    id: Uuid,
    wait: bool,
) -> (Option<AppendStatus>, Option<i64>) {
    let row = c
        .query_one(
            "SELECT o_status, o_stream_version FROM kernel_append_batch( \
             $1, $2, $3, ARRAY[1], $4, ARRAY['T'], ARRAY['{}'::jsonb], ARRAY[NULL::jsonb], \
             ARRAY[NULL::text], ARRAY[NULL::text], $5)",
            &[
                &vec![stream],
                &vec![kind.code()],
                &vec![expected],
                &vec![id],
                &wait,
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("append to {stream} ({kind:?}): {e}"));
    (AppendStatus::from_code(row.get(0)), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_kinds_and_append_statuses() {
    use AppendStatus::{Busy, Mismatch, Stored, Written};
    use ExpectedKind::{Any, Exact, NoStream, StreamExists};
    let db = common::database().await;
    let c = common::raw_client(db.url()).await;
    let id = Uuid::new_v4;
    let first = id();
    assert_eq!(
        append(&c, "s-1", Any, None, first, true).await,
        (Some(Written), Some(1))
    );
    assert_eq!(
        append(&c, "s-1", NoStream, None, id(), true).await,
        (Some(Mismatch), Some(1))
    );
    assert_eq!(
        append(&c, "s-2", NoStream, None, id(), true).await,
        (Some(Written), Some(1))
    );
    assert_eq!(
        append(&c, "s-3", StreamExists, None, id(), true).await,
        (Some(Mismatch), Some(0))
    );
    assert_eq!(
        append(&c, "s-1", StreamExists, None, id(), true).await,
        (Some(Written), Some(2))
    );
    assert_eq!(
        append(&c, "s-1", Exact, Some(2), id(), true).await,
        (Some(Written), Some(3))
    );
    assert_eq!(
        append(&c, "s-1", Exact, Some(2), id(), true).await,
        (Some(Mismatch), Some(3))
    );
    assert_eq!(
        append(&c, "s-1", Any, None, first, true).await,
        (Some(Stored), Some(3))
    );

    // The stream lock is `hashtextextended(stream, STREAM_SEED)`: held elsewhere, an append
    // that may not wait comes back busy.
    let holder = common::raw_client(db.url()).await;
    holder
        .batch_execute("BEGIN")
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    holder
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            &[&"s-9", &advisory::STREAM_SEED],
        )
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    assert_eq!(
        append(&c, "s-9", Any, None, id(), false).await,
        (Some(Busy), None)
    );
    holder
        .batch_execute("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    assert_eq!(
        append(&c, "s-9", Any, None, id(), false).await,
        (Some(Written), Some(1))
    );

    // The SQL clients' entry point raises the remaining kernel states.
    let sql_append = |stream: &'static str, expected: i64, events: serde_json::Value| {
        let c = &c;
        async move {
            c.query(
                "SELECT * FROM kernel_append($1, $2, $3)",
                &[&stream, &expected, &events],
            )
            .await
            .err()
        }
    };
    let err = sql_append("s-1", 99, json!([{"type": "T"}])).await;
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::StreamVersionConflict),
        "{err:?}"
    );
    let err = sql_append("no stream name", 0, json!([{"type": "T"}])).await;
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::InvalidInput),
        "{err:?}"
    );
    // `first` is stored at version 1, not after version 2.
    let err = sql_append("s-1", 2, json!([{"type": "T", "id": first}])).await;
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::EventIdReused),
        "{err:?}"
    );
}

/// Runs `sql` with a short `lock_timeout` until it fails for a lock (`true`) or succeeds
/// without waiting for one (`false`, only for the sequencer: it takes its lock only when
/// events are ready, which a transaction of a parallel test can delay).
async fn blocked(c: &Client, sql: &str) -> bool {
    c.batch_execute("SET lock_timeout = '200ms'")
        .await
        .unwrap_or_else(|e| panic!("lock_timeout: {e}"));
    let outcome = c.batch_execute(sql).await;
    c.batch_execute("RESET lock_timeout")
        .await
        .unwrap_or_else(|e| panic!("reset: {e}"));
    match outcome {
        Ok(()) => false,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => true,
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ops_and_lock_ids() {
    let db = common::database().await;
    let c = common::raw_client(db.url()).await;
    let commit = |key: &'static str, seen: Option<i64>, op: TxOp| {
        let c = &c;
        async move {
            let put = op == TxOp::Put;
            c.execute(
                "SELECT kernel_tx_commit($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &vec!["ns"],
                    &vec![key],
                    &vec![seen],
                    &vec![op.code()],
                    &vec![put.then(|| json!("v"))],
                    &vec![put.then(|| json!({}))],
                    &vec![put.then_some(seen.unwrap_or(0) + 1)],
                    &vec![None::<i64>],
                ],
            )
            .await
        }
    };
    let version = |key: &'static str| {
        let c = &c;
        async move {
            c.query_opt(
                "SELECT version FROM kernel_documents WHERE namespace = 'ns' AND key = $1",
                &[&key],
            )
            .await
            .unwrap_or_else(|e| panic!("read {key}: {e}"))
            .map(|r| r.get::<_, i64>(0))
        }
    };
    let ok = |r: Result<u64, tokio_postgres::Error>, what: &str| {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    ok(commit("a", None, TxOp::Put).await, "put");
    assert_eq!(version("a").await, Some(1));
    ok(commit("a", Some(1), TxOp::Read).await, "read");
    assert_eq!(version("a").await, Some(1), "a read writes nothing");
    let err = commit("a", None, TxOp::Read).await.err();
    assert_eq!(
        err.as_ref().and_then(state),
        Some(KernelSqlState::TransactionConflict),
        "{err:?}"
    );
    ok(commit("a", Some(1), TxOp::Delete).await, "delete");
    assert_eq!(version("a").await, None);

    // Commit key locks are `hashtextextended(namespace || '/' || key, TX_KEY_SEED)`.
    let holder = common::raw_client(db.url()).await;
    holder
        .batch_execute("BEGIN")
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    holder
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
            &[&"ns/b", &advisory::TX_KEY_SEED],
        )
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    assert!(
        blocked(
            &c,
            "SELECT kernel_tx_commit(ARRAY['ns'], ARRAY['b'], ARRAY[NULL::bigint], \
             ARRAY[0::smallint], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], ARRAY[NULL::bigint], \
             ARRAY[NULL::bigint])"
        )
        .await,
        "a commit touching ns/b waits for its key lock"
    );
    holder
        .batch_execute("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));

    // The sequencer lock is `SEQUENCER`: a pass with events to number waits for it.
    for i in 0..3 {
        append(
            &c,
            &format!("q-{i}"),
            ExpectedKind::Any,
            None,
            Uuid::new_v4(),
            true,
        )
        .await;
    }
    holder
        .batch_execute("BEGIN")
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    holder
        .execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&advisory::SEQUENCER.0, &advisory::SEQUENCER.1],
        )
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blocked(&c, "SELECT kernel_sequence()").await {
        assert!(
            Instant::now() < deadline,
            "kernel_sequence never waited for the sequencer lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    holder
        .batch_execute("COMMIT")
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
}
