//! SQL from a console (migration 0006): a plain `INSERT INTO kernel_events` is numbered,
//! version-checked, idempotent on its id and reaches running subscribers at once; UPDATE and
//! DELETE of the events and the log are refused except for `kernel_maintenance`; the read
//! functions and the view. Each test has a database of its own.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use driver_postgres::PostgresDriver;
use futures::StreamExt;
use kernel_core::{EventFilter, EventStore, ExpectedVersion, NewEvent, ReadStream, RecordedEvent};
use kernel_testkit::{expect_ok, join, unique, within};
use serde_json::json;
use tokio_postgres::Client;

/// Runs `sql` in a separate `psql` process (no psqlrc, stop at the first error); its output, or
/// its error text.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("cannot run psql (is the PostgreSQL client installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn next_event(sub: &mut kernel_core::EventSubscription, what: &str) -> RecordedEvent {
    match within(Duration::from_secs(15), what, sub.next()).await {
        Some(Ok(e)) => e,
        Some(Err(e)) => panic!("{what}: subscription failed: {e}"),
        None => panic!("{what}: subscription ended"),
    }
}

/// Sequencer passes until every committed event has a position (a transaction of a test running
/// in parallel may hold the horizon back for a moment).
async fn number_all(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT kernel_sequence(), kernel_events_unpositioned()",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("kernel_sequence: {e}"))
            .get(1);
        if waiting == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} events without a position after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The SQLSTATE and message of a statement that must fail.
async fn refused(client: &Client, sql: &str) -> (String, String, Option<String>) {
    let err = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("must be refused: {sql}"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.hint().map(str::to_owned),
    )
}

/// `(version, position)` of a stream's events, from `kernel_read_stream`.
async fn versions(client: &Client, stream: &str) -> Vec<(i64, i64)> {
    client
        .query(
            "SELECT version, position FROM kernel_read_stream($1)",
            &[&stream],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_read_stream: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The case: an INSERT typed into psql reaches a running subscriber in milliseconds,
/// through the notification the trigger sends, not the poll (set to a minute here). Prints the
/// delay from just before psql starts to the subscriber holding the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_insert_from_psql_reaches_a_subscriber_at_once() {
    const INSERTS: usize = 20;
    let db = common::database().await;
    let mut config = common::config(db.url());
    config.subscription.poll_interval = Duration::from_secs(60);
    let driver = expect_ok(PostgresDriver::connect(config).await, "connect");
    let mut sub = expect_ok(driver.subscribe(0, EventFilter::all()).await, "subscribe");
    let stream = format!("{}-1", unique("console"));
    let mut delays = Vec::with_capacity(INSERTS);
    for i in 0..INSERTS {
        let sql = format!(
            "INSERT INTO kernel_events (stream, event_type, payload) \
             VALUES ('{stream}', 'ConsolePing', '{{\"i\": {i}}}')"
        );
        let url = db.url().to_owned();
        let start = Instant::now();
        let child = tokio::task::spawn_blocking(move || psql(&url, &sql));
        let e = next_event(&mut sub, "console insert").await;
        let delay = start.elapsed();
        if let Err(e) = join(child, "psql").await {
            panic!("psql INSERT failed: {e}");
        }
        assert_eq!(
            (e.stream.as_str(), e.version, e.position, &e.payload),
            (
                stream.as_str(),
                i as u64 + 1,
                i as u64 + 1,
                &json!({"i": i})
            ),
            "numbered like an append"
        );
        delays.push(delay);
    }
    delays.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "console INSERT (psql process) -> subscriber, {INSERTS} inserts: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(delays[0]),
        ms(delays[INSERTS / 2]),
        ms(delays[INSERTS - 1])
    );
    assert!(
        delays[INSERTS - 1] < Duration::from_secs(2),
        "a console insert took {:?} to arrive (the poll is a minute: the notification was lost)",
        delays[INSERTS - 1]
    );
    driver.shutdown().await;
}

/// Versions are assigned (head + 1, also row by row within one INSERT, and after driver
/// appends); an explicit version must be the next one, else KR004 names the stream and head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_assigned_and_checked() {
    let (driver, db) = common::driver().await;
    let sql = common::raw_client(db.url()).await;
    let stream = format!("{}-1", unique("order"));
    expect_ok(
        driver
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Placed", json!({"n": 1}))],
            )
            .await,
        "driver append",
    );
    let insert = |extra: &str, values: &str| {
        format!("INSERT INTO kernel_events (stream, event_type, payload{extra}) VALUES {values}")
    };
    sql.batch_execute(&insert("", &format!("('{stream}', 'Paid', '{{}}')")))
        .await
        .unwrap_or_else(|e| panic!("insert without version: {e}"));
    sql.batch_execute(&insert(
        "",
        &format!("('{stream}', 'A', '1'), ('{stream}', 'B', '2'), ('{stream}', 'C', '3')"),
    ))
    .await
    .unwrap_or_else(|e| panic!("multi-row insert: {e}"));
    sql.batch_execute(&insert(", version", &format!("('{stream}', 'D', '4', 6)")))
        .await
        .unwrap_or_else(|e| panic!("insert with the next version: {e}"));

    let (code, message, hint) = refused(
        &sql,
        &insert(", version", &format!("('{stream}', 'E', '5', 9)")),
    )
    .await;
    assert_eq!(code, "KR004");
    assert!(
        message.contains(&stream) && message.contains("at version 6"),
        "names the stream and its head: {message}"
    );
    assert_eq!(hint.as_deref(), Some("6"));
    let (code, message, _) = refused(
        &sql,
        &insert(", version", &format!("('{stream}', 'E', '5', 6)")),
    )
    .await;
    assert_eq!(code, "KR004", "a version already taken: {message}");
    let fresh = format!("{}-1", unique("order"));
    let (code, message, hint) = refused(
        &sql,
        &insert(", version", &format!("('{fresh}', 'X', '0', 7)")),
    )
    .await;
    assert_eq!(code, "KR004");
    assert!(message.contains("at version 0"), "{message}");
    assert_eq!(hint.as_deref(), Some("0"));
    let (code, _, _) = refused(&sql, &insert("", "('no_dash', 'X', '0')")).await;
    assert_eq!(code, "KR006", "stream names are checked like appends");
    let (code, _, _) = refused(
        &sql,
        &insert(", metadata", &format!("('{stream}', 'X', '0', '[1]')")),
    )
    .await;
    assert_eq!(code, "KR006", "metadata must be an object");

    number_all(&sql).await;
    let read = expect_ok(
        driver.read_stream(&stream, ReadStream::forward()).await,
        "read_stream",
    );
    assert_eq!(
        read.iter()
            .map(|e| (e.version, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "Placed"),
            (2, "Paid"),
            (3, "A"),
            (4, "B"),
            (5, "C"),
            (6, "D")
        ]
    );
    assert!(
        read.windows(2).all(|w| w[1].position > w[0].position),
        "positions follow versions: {read:?}"
    );
    // And the driver carries on from the console's version.
    let r = expect_ok(
        driver
            .append(
                &stream,
                ExpectedVersion::Exact(6),
                vec![NewEvent::new("Shipped", json!({}))],
            )
            .await,
        "driver append after console inserts",
    );
    assert_eq!(r.stream_version, 7);
    driver.shutdown().await;
}

/// Re-running a console INSERT with the same id is a no-op (INSERT 0 0); the same id with other
/// content is KR007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinserting_the_same_id_is_idempotent() {
    let db = common::database().await;
    let sql = common::raw_client(db.url()).await;
    let stream = format!("{}-1", unique("order"));
    let id = "0b6f3c2e-5d0a-4b8e-9a35-8f3b2a1c0d11";
    let insert = |payload: &str, version: &str| {
        format!(
            "INSERT INTO kernel_events (id, stream, event_type, payload, metadata, correlation_id{}) \
             VALUES ('{id}', '{stream}', 'Placed', '{payload}', '{{\"by\": \"psql\"}}', 'c-1'{})",
            if version.is_empty() { "" } else { ", version" },
            if version.is_empty() {
                String::new()
            } else {
                format!(", {version}")
            }
        )
    };
    let rows = |sql_text: String| {
        let sql = &sql;
        async move {
            sql.execute(&sql_text, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql_text}: {e}"))
        }
    };
    assert_eq!(rows(insert("{\"n\": 1}", "")).await, 1, "first insert");
    assert_eq!(rows(insert("{\"n\": 1}", "")).await, 0, "same again: no-op");
    assert_eq!(
        rows(insert("{\"n\": 1}", "1")).await,
        0,
        "same with its version"
    );
    let (code, message, hint) = refused(&sql, &insert("{\"n\": 2}", "")).await;
    assert_eq!(code, "KR007", "{message}");
    assert!(
        message.contains(id) && message.contains(&stream),
        "{message}"
    );
    assert_eq!(hint.as_deref(), Some(id));
    let (code, _, _) = refused(&sql, &insert("{\"n\": 1}", "2")).await;
    assert_eq!(code, "KR007", "same content at another version");
    number_all(&sql).await;
    assert_eq!(versions(&sql, &stream).await.len(), 1, "one event stored");
}

/// UPDATE and DELETE of the events and the log are refused (42501, naming the fix), also for a
/// superuser; the maintenance role may do both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_are_refused_except_for_maintenance() {
    let db = common::database().await;
    let sql = common::raw_client(db.url()).await;
    let stream = format!("{}-1", unique("order"));
    sql.batch_execute(&format!(
        "INSERT INTO kernel_events (stream, event_type, payload) \
         VALUES ('{stream}', 'A', '1'), ('{stream}', 'B', '2')"
    ))
    .await
    .unwrap_or_else(|e| panic!("insert: {e}"));
    number_all(&sql).await;
    for statement in [
        "UPDATE kernel_events SET payload = '0'",
        "DELETE FROM kernel_events",
        "DELETE FROM kernel_events WHERE false",
        "UPDATE kernel_event_log SET position = position + 100",
        "DELETE FROM kernel_event_log",
    ] {
        let (code, message, hint) = refused(&sql, statement).await;
        assert_eq!(code, "42501", "{statement}: {message}");
        assert!(message.contains("append-only"), "{statement}: {message}");
        assert!(
            hint.is_some_and(|h| h.contains("SET ROLE kernel_maintenance")),
            "{statement}"
        );
    }
    assert_eq!(versions(&sql, &stream).await, [(1, 1), (2, 2)], "untouched");

    let changed = sql
        .simple_query(&format!(
            "BEGIN; SET LOCAL ROLE kernel_maintenance; \
             UPDATE kernel_events SET metadata = '{{\"erased\": true}}' WHERE stream = '{stream}'; \
             DELETE FROM kernel_event_log WHERE position = 2; COMMIT"
        ))
        .await
        .unwrap_or_else(|e| panic!("maintenance: {e}"));
    let counts: Vec<u64> = changed
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(
        counts,
        [0, 0, 2, 1, 0],
        "BEGIN, SET, UPDATE 2, DELETE 1, COMMIT"
    );
    let erased: i64 = sql
        .query_one(
            "SELECT count(*) FROM kernel_events WHERE metadata = '{\"erased\": true}'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
        .get(0);
    assert_eq!(erased, 2);
    // Back to the login role: refused again.
    let (code, _, _) = refused(&sql, "DELETE FROM kernel_events").await;
    assert_eq!(code, "42501");
}

/// `kernel_read_stream`, `kernel_read_all` and `kernel_events_view` over driver appends and
/// console inserts alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_functions_and_the_view() {
    let (driver, db) = common::driver().await;
    let sql = common::raw_client(db.url()).await;
    let category = unique("order");
    let order = format!("{category}-1");
    let other = format!("{}-1", unique("invoice"));
    expect_ok(
        driver
            .append(
                &order,
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::new("Placed", json!({"sku": "A", "qty": 1})).with_correlation("c-9"),
                    NewEvent::new("Paid", json!({"sku": "A"})),
                ],
            )
            .await,
        "append order",
    );
    expect_ok(
        driver
            .append(
                &other,
                ExpectedVersion::Any,
                vec![NewEvent::new("Issued", json!({"total": 5}))],
            )
            .await,
        "append invoice",
    );
    sql.batch_execute(&format!(
        "INSERT INTO kernel_events (stream, event_type, payload, correlation_id) \
         VALUES ('{order}', 'Shipped', '{{\"sku\": \"A\", \"carrier\": \"post\"}}', 'c-9')"
    ))
    .await
    .unwrap_or_else(|e| panic!("console insert: {e}"));
    number_all(&sql).await;

    assert_eq!(versions(&sql, &order).await, [(1, 1), (2, 2), (3, 4)]);
    let page: Vec<(i64, String)> = sql
        .query(
            "SELECT version, event_type FROM kernel_read_stream($1, from_version => 2, max_count => 1)",
            &[&order],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_read_stream page: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(page, [(2, "Paid".to_owned())]);
    let all = |q: &'static str| {
        let sql = &sql;
        async move {
            sql.query(q, &[])
                .await
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        all("SELECT position, event_type FROM kernel_read_all()").await,
        [
            (1, "Placed".to_owned()),
            (2, "Paid".to_owned()),
            (3, "Issued".to_owned()),
            (4, "Shipped".to_owned())
        ]
    );
    assert_eq!(
        all("SELECT position, event_type FROM kernel_read_all(2, 1)").await,
        [(3, "Issued".to_owned())]
    );
    let by_category: Vec<i64> = sql
        .query(
            "SELECT position FROM kernel_read_all(category => $1)",
            &[&category],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_read_all by category: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(by_category, [1, 2, 4]);

    // The view: by correlation, by type, by payload containment, by time; every column.
    let view = |filter: &str| {
        let sql = &sql;
        let q = format!(
            "SELECT position, event_type FROM kernel_events_view WHERE {filter} ORDER BY position"
        );
        async move {
            sql.query(&q, &[])
                .await
                .unwrap_or_else(|e| panic!("{q}: {e}"))
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        view("correlation_id = 'c-9'").await,
        [(1, "Placed".to_owned()), (4, "Shipped".to_owned())]
    );
    assert_eq!(
        view("event_type = 'Issued'").await,
        [(3, "Issued".to_owned())]
    );
    assert_eq!(
        view("payload @> '{\"carrier\": \"post\"}'").await,
        [(4, "Shipped".to_owned())]
    );
    assert_eq!(
        view("recorded_at > now() - interval '1 hour'").await.len(),
        4
    );
    let row = sql
        .query_one(
            "SELECT position, stream, category, version, id, event_type, payload, metadata, \
             correlation_id, causation_id, recorded_at FROM kernel_events_view WHERE position = 3",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("view columns: {e}"));
    assert_eq!(row.get::<_, String>(1), other);
    assert_eq!(Some(row.get::<_, &str>(2)), other.split('-').next());
    assert_eq!(row.get::<_, i64>(3), 1);
    driver.shutdown().await;
}

/// `payload @> '{...}'` on the view is answered from the GIN index on the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_containment_uses_the_gin_index() {
    let db = common::database().await;
    let sql = common::raw_client(db.url()).await;
    // Enough rows, analyzed, that a scan would cost more than the index.
    sql.batch_execute(
        "INSERT INTO kernel_events (stream, event_type, payload) \
         SELECT 'bulk-' || (g % 50), 'Bulk', jsonb_build_object('n', g, 'pad', repeat('x', 50)) \
         FROM generate_series(1, 5000) AS g",
    )
    .await
    .unwrap_or_else(|e| panic!("bulk insert: {e}"));
    number_all(&sql).await;
    sql.batch_execute("ANALYZE kernel_events; ANALYZE kernel_event_log")
        .await
        .unwrap_or_else(|e| panic!("analyze: {e}"));
    let query =
        "SELECT position, stream, version FROM kernel_events_view WHERE payload @> '{\"n\": 4242}'";
    let plan: Vec<String> = sql
        .query(&format!("EXPLAIN {query}"), &[])
        .await
        .unwrap_or_else(|e| panic!("explain: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("kernel_events_payload_idx"),
        "the GIN index answers @>:\n{plan}"
    );
    let rows = sql
        .query(query, &[])
        .await
        .unwrap_or_else(|e| panic!("query: {e}"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(1), "bulk-42");
    // 4242 = 50 * 84 + 42: the 85th event of bulk-42.
    assert_eq!(rows[0].get::<_, i64>(2), 85);
}

/// A console INSERT in a transaction that began (and got its id) before a driver append to the
/// same stream still lands after that append, in versions and in positions: the sequencer orders
/// by transaction id, so the trigger labels the row after the stream's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_insert_in_an_older_transaction_lands_after_a_newer_append() {
    let (driver, db) = common::driver().await;
    let driver = std::sync::Arc::new(driver);
    let console = common::raw_client(db.url()).await;
    let probe = common::raw_client(db.url()).await;
    let stream = format!("{}-1", unique("order"));
    console
        .batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    // The append commits now but cannot be numbered while the console transaction (older) runs.
    let appender = {
        let driver = driver.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            driver
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new("FromDriver", json!({}))],
                )
                .await
        })
    };
    within(Duration::from_secs(10), "driver append committed", async {
        loop {
            let n: i64 = probe
                .query_one(
                    "SELECT count(*) FROM kernel_events WHERE stream = $1",
                    &[&stream],
                )
                .await
                .unwrap_or_else(|e| panic!("probe: {e}"))
                .get(0);
            if n == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    console
        .batch_execute(&format!(
            "INSERT INTO kernel_events (stream, event_type, payload) \
             VALUES ('{stream}', 'FromConsole', '{{}}'); COMMIT"
        ))
        .await
        .unwrap_or_else(|e| panic!("console insert: {e}"));
    let appended = expect_ok(join(appender, "appender").await, "driver append");
    number_all(&probe).await;
    let read = expect_ok(
        driver.read_stream(&stream, ReadStream::forward()).await,
        "read_stream",
    );
    assert_eq!(
        read.iter()
            .map(|e| (e.version, e.event_type.as_str(), e.position))
            .collect::<Vec<_>>(),
        [
            (1, "FromDriver", appended.positions[0]),
            (2, "FromConsole", appended.positions[0] + 1)
        ]
    );
}

/// The driver's own appends skip the console trigger (kernel_append_batch runs with
/// kernel.appending on), and only while the batch function runs: a console INSERT right after
/// it in the same session is checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_appends_skip_the_trigger_only_while_the_batch_runs() {
    let db = common::database().await;
    let sql = common::raw_client(db.url()).await;
    // A stream name the console check refuses, which kernel_append_batch (trusting the driver's
    // validation) writes: proof that the trigger did not run.
    let row = sql
        .query_one(
            "SELECT o_status FROM kernel_append_batch(ARRAY['_kernel-probe'], ARRAY[0::smallint], \
             ARRAY[NULL::bigint], ARRAY[1], ARRAY[gen_random_uuid()], ARRAY['T'], \
             ARRAY['{}'::jsonb], ARRAY['{}'::jsonb], ARRAY[NULL::text], ARRAY[NULL::text], \
             ARRAY[NULL::timestamptz], true)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel_append_batch: {e}"));
    assert_eq!(row.get::<_, i16>(0), 0, "written");
    let (code, _, _) = refused(
        &sql,
        "INSERT INTO kernel_events (stream, event_type, payload) VALUES ('_kernel-probe', 'T', '{}')",
    )
    .await;
    assert_eq!(code, "KR006", "the setting ended with the batch function");
}
