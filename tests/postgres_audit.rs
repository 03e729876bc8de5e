//! The audit layer on PostgreSQL with `Audit::same_transaction`: the record of a successful
//! `put`, `delete`, `put_many` or `delete_many` is committed in the write's own transaction
//! (it is in `kernel_events` the moment the call returns, and it has no duration: it was written
//! before the call ended), a failed write leaves no `ok` record (rolled back with the write)
//! but a record of its failure, and other operations are recorded after the call as before.

use std::sync::Arc;
use std::time::Duration;

use driver_postgres::migrations::Migrator;
use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_bootstrap::layers::audit::{self, Audit, AuditQuery, AuditRecord};
use kernel_bootstrap::layers::{Intercept, Layer};
use kernel_core::{
    BatchDelete, BatchPut, DeleteCondition, ErrorCode, EventStore, PutOptions, json,
};
use kernel_testkit::postgres::{TestDatabase, database_from_template};
use tokio_postgres::NoTls;

async fn raw(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("raw connection ended: {e}");
        }
    });
    Ok(client)
}

async fn database() -> TestDatabase {
    let migrator = Migrator::new();
    database_from_template(&migrator.fingerprint(), |url| async move {
        let client = raw(&url).await?;
        migrator
            .up(&client)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

async fn driver(db: &TestDatabase) -> Arc<PostgresDriver> {
    let mut config = PostgresConfig::new(db.url());
    config.pool_size = 4;
    config.migrate_on_boot = false;
    config.subscription.poll_interval = Duration::from_millis(100);
    Arc::new(PostgresDriver::connect(config).await.unwrap())
}

/// The audit rows in `kernel_events` for `key`, numbered or not: `(outcome, duration_ms)`.
async fn rows_for(client: &tokio_postgres::Client, key: &str) -> Vec<(String, Option<f64>)> {
    client
        .query(
            "SELECT payload ->> 'outcome', (payload -> 'duration_ms')::text FROM kernel_events \
             WHERE category = 'kernel.audit' AND payload ->> 'key' = $1 ORDER BY seq",
            &[&key],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let ms: Option<String> = r.get(1);
            (r.get(0), ms.and_then(|m| m.parse().ok()))
        })
        .collect()
}

/// The records `audit::query` finds for an operation once they are numbered.
async fn records(events: &dyn EventStore, operation: &str, n: usize) -> Vec<AuditRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = audit::query(events, &AuditQuery::new().operation(operation))
            .await
            .unwrap();
        if found.len() >= n || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_audited_in_their_own_transaction() {
    let db = database().await;
    let driver = driver(&db).await;
    let client = raw(db.url()).await.unwrap();
    let audit = Intercept::new(
        Audit::new(driver.clone())
            .principal("billing")
            .same_transaction(true),
    );
    let store = audit.storage(driver.clone());

    // put: the record is in the table when the call returns, without a duration.
    audit::with_correlation("req-1", async {
        store
            .put("invoices", "7", json!({"total": 10}), PutOptions::new())
            .await
    })
    .await
    .unwrap();
    assert_eq!(rows_for(&client, "7").await, [("ok".to_owned(), None)]);

    // A write that fails inside the database (a version conflict raised by kernel_put, after
    // the record was appended in the same transaction): no `ok` record survives, a record of
    // the failure is written after the call, with its duration.
    let err = store
        .put(
            "invoices",
            "7",
            json!({"total": 11}),
            PutOptions::new().if_version(42),
        )
        .await
        .expect_err("a version conflict");
    assert_eq!(err.code(), ErrorCode::Conflict);
    let rows = rows_for(&client, "7").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].0, "conflict");
    assert!(rows[1].1.is_some(), "a failure record carries its duration");

    // delete, put_many, delete_many: in the transaction too.
    store
        .delete("invoices", "7", DeleteCondition::Always)
        .await
        .unwrap();
    store
        .put_many(
            "invoices",
            vec![BatchPut::new("8", json!(1)), BatchPut::new("9", json!(2))],
        )
        .await
        .unwrap();
    store
        .delete_many("invoices", vec![BatchDelete::new("8")])
        .await
        .unwrap();
    let in_tx: i64 = client
        .query_one(
            "SELECT count(*) FROM kernel_events WHERE category = 'kernel.audit' \
             AND payload -> 'duration_ms' = 'null'::jsonb",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_tx, 4, "put, delete, put_many, delete_many");

    // Readable through the query helper once numbered, with principal and correlation id.
    let puts = records(&*driver, "put", 2).await;
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert_eq!(puts[0].principal.as_deref(), Some("billing"));
    assert_eq!(puts[0].correlation_id.as_deref(), Some("req-1"));
    assert_eq!(puts[0].outcome, "ok");
    assert_eq!(puts[1].outcome, "conflict");
    assert_eq!(records(&*driver, "put_many", 1).await.len(), 1);

    // Other writes are recorded after the call, as without same_transaction.
    store
        .create_namespace("ledgers", Default::default())
        .await
        .unwrap();
    let created = records(&*driver, "create_namespace", 1).await;
    assert_eq!(created.len(), 1);
    assert!(created[0].duration_ms.is_some());
    driver.shutdown().await;
}
