//! Appends per second: the driver's gapless append (concurrent appenders, each on its own
//! stream) against single-row INSERTs through raw tokio-postgres on the same server, in the
//! same run. Two baselines: a plain table (a bigserial key, a stream, a payload), and a copy of
//! `kernel_events` with all its indexes (what any event table with those lookups pays). Run
//! with:
//!
//! ```text
//! cargo bench -p driver-postgres --bench append            # 4 s per row, 1/4/16/32/64
//! KERNEL_BENCH_SECONDS=10 KERNEL_BENCH_CONCURRENCY=16,64 cargo bench -p driver-postgres --bench append
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use driver_postgres::migrations::Migrator;
use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_core::{EventStore, ExpectedVersion, NewEvent};
use serde_json::json;
use tokio_postgres::NoTls;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds: u64 = std::env::var("KERNEL_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let duration = Duration::from_secs(seconds);
    let db = kernel_testkit::postgres::fresh_database().await;
    let admin = connect(db.url()).await;
    if let Err(e) = Migrator::new().up(&admin).await {
        panic!("migrate: {e}");
    }
    admin
        .batch_execute(
            "CREATE TABLE bench_plain (id bigserial PRIMARY KEY, stream text NOT NULL, \
             payload jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()); \
             CREATE TABLE bench_events (LIKE kernel_events INCLUDING ALL)",
        )
        .await
        .unwrap_or_else(|e| panic!("create bench table: {e}"));
    let mut config = PostgresConfig::new(db.url());
    config.pool_size = 32;
    config.migrate_on_boot = false;
    let driver = Arc::new(
        PostgresDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}")),
    );

    println!("\nappend throughput, {seconds} s per row, one event per INSERT\n");
    println!(
        "| concurrency | raw INSERT, plain table (events/s) | raw INSERT, events table (events/s) | driver append (events/s) | driver / plain | driver p50 latency | driver, 10 events per append (events/s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let levels: Vec<usize> = std::env::var("KERNEL_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 32, 64]);
    for concurrency in levels {
        let raw = raw_inserts(db.url(), PLAIN, concurrency, duration).await;
        let events = raw_inserts(db.url(), EVENTS, concurrency, duration).await;
        let (appended, p50) = driver_appends(&driver, concurrency, duration, 1).await;
        let (batched, _) = driver_appends(&driver, concurrency, duration, 10).await;
        println!(
            "| {concurrency} | {raw:.0} | {events:.0} | {appended:.0} | {:.2} | {:.2} ms | {batched:.0} |",
            appended / raw,
            p50.as_secs_f64() * 1000.0
        );
    }
    let head = driver
        .head_position()
        .await
        .unwrap_or_else(|e| panic!("head: {e}"));
    let pending: i64 = admin
        .query_one("SELECT kernel_events_unpositioned()", &[])
        .await
        .unwrap_or_else(|e| panic!("pending: {e}"))
        .get(0);
    println!("\n{head} events positioned, {pending} left pending");
    driver.shutdown().await;
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(connection);
    client
}

const PLAIN: &str = "INSERT INTO bench_plain (stream, payload) VALUES ($1, $2)";
const EVENTS: &str = "INSERT INTO bench_events (stream, version, id, event_type, payload) \
     VALUES ($1, $3, gen_random_uuid(), 'Bench', $2)";

async fn raw_inserts(url: &str, sql: &'static str, concurrency: usize, duration: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let count = count.clone();
        let client = connect(url).await;
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare(sql)
                .await
                .unwrap_or_else(|e| panic!("prepare: {e}"));
            // Each stream's versions 1, 2, 3, ... (the events table is unique on them).
            let stream = format!("raw_{}-{t}", uuid::Uuid::new_v4().simple());
            let mut i = 0u64;
            while Instant::now() < deadline {
                let payload = json!({"i": i});
                let version = i as i64 + 1;
                let result = if sql == EVENTS {
                    client.execute(&stmt, &[&stream, &payload, &version]).await
                } else {
                    client.execute(&stmt, &[&stream, &payload]).await
                };
                result.unwrap_or_else(|e| panic!("insert: {e}"));
                i += 1;
            }
            count.fetch_add(i, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("raw task: {e}"));
    }
    count.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
}

async fn driver_appends(
    driver: &Arc<PostgresDriver>,
    concurrency: usize,
    duration: Duration,
    per_append: usize,
) -> (f64, Duration) {
    let deadline = Instant::now() + duration;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let driver = driver.clone();
        let stream = format!("bench_{run}-{t}");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                driver
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Bench", json!({"i": i}))],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("append: {e}"));
                latencies.push(started.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("driver task: {e}")));
    }
    all.sort();
    let p50 = all.get(all.len() / 2).copied().unwrap_or_default();
    (
        (all.len() * per_append) as f64 / duration.as_secs_f64(),
        p50,
    )
}
