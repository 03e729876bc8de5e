//! Driver operations against plain rusqlite statements on the same kind of schema, in the same
//! run, on the same disk.
//!
//! `cargo bench -p driver-sqlite --bench ops` (release build). Two fresh files in a temporary
//! directory, both WAL with `synchronous = NORMAL`: one opened by the driver, one by the
//! baseline. The baseline is what an async application writes without the kernel: rusqlite
//! statements run on tokio's blocking pool, one writer connection behind a mutex with one
//! transaction per write (autocommit, or `BEGIN IMMEDIATE` where a read decides the write), and
//! four read connections. The same fixed workload runs in `ROUNDS` rounds, kernel and baseline
//! interleaved (which goes first alternates), so drift of the machine hits both alike; the
//! table reports the median round of each. Sequential latency: one call in flight; throughput:
//! `IN_FLIGHT` calls in flight.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use driver_sqlite::{SqliteConfig, SqliteDriver};
use kernel_core::rate_limit::gcra;
use kernel_core::{
    EventStore, ExpectedVersion, Lock, NewEvent, PutOptions, Quota, RateLimiter, StorageDriver,
    json,
};
use rusqlite::{Connection, OptionalExtension, params};

const ROUNDS: usize = 3;
const SEQUENTIAL: usize = 1_000;
const CONCURRENT: usize = 5_000;
const IN_FLIGHT: usize = 32;
const READERS: usize = 4;

const SCHEMA: &str = "
    CREATE TABLE docs (namespace TEXT NOT NULL, key BLOB NOT NULL, value TEXT NOT NULL,
        metadata TEXT NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL, expires_at INTEGER, PRIMARY KEY (namespace, key))
        WITHOUT ROWID;
    CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL,
        version INTEGER NOT NULL, id BLOB NOT NULL, event_type TEXT NOT NULL,
        payload TEXT NOT NULL, recorded_at INTEGER NOT NULL);
    CREATE UNIQUE INDEX events_stream_version ON events (stream, version);
    CREATE TABLE rate (key BLOB PRIMARY KEY, tat INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE locks (key BLOB PRIMARY KEY, fencing INTEGER NOT NULL, token TEXT,
        expires_at INTEGER) WITHOUT ROWID;
";

#[derive(Clone, Copy)]
struct Sample {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

async fn measure<F, Fut>(op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    for i in 0..100 {
        op(i).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for t in 0..IN_FLIGHT {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = SEQUENTIAL + t;
            while i < SEQUENTIAL + CONCURRENT {
                op(i).await;
                i += IN_FLIGHT;
            }
        }));
    }
    for t in tasks {
        t.await.expect("benchmark task panicked");
    }
    Sample {
        p50: samples[SEQUENTIAL / 2],
        p99: samples[SEQUENTIAL * 99 / 100],
        per_sec: CONCURRENT as f64 / started.elapsed().as_secs_f64(),
    }
}

/// The baseline: one writer connection, a few readers, statements on the blocking pool.
#[derive(Clone)]
struct Raw {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
}

impl Raw {
    fn open(path: &std::path::Path) -> Raw {
        let conn = Connection::open(path).expect("raw open");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy");
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .expect("wal");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("synchronous");
        conn.execute_batch(SCHEMA).expect("schema");
        let readers = (0..READERS)
            .map(|_| {
                let c = Connection::open(path).expect("raw reader");
                c.busy_timeout(Duration::from_secs(5)).expect("busy");
                Mutex::new(c)
            })
            .collect();
        Raw {
            writer: Arc::new(Mutex::new(conn)),
            readers: Arc::new(readers),
        }
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> T {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || f(&mut w.lock().expect("writer mutex")))
            .await
            .expect("blocking task")
    }

    async fn read<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> T {
        let r = self.readers.clone();
        tokio::task::spawn_blocking(move || f(&r[i % READERS].lock().expect("reader mutex")))
            .await
            .expect("blocking task")
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

type Pair = (Sample, Sample);

/// One op: its kernel and baseline variants, measured `ROUNDS` times, interleaved.
async fn compare<K, KF, B, BF>(kernel: K, baseline: B) -> Vec<Pair>
where
    K: Fn(usize) -> KF + Send + Sync + Clone + 'static,
    KF: Future<Output = ()> + Send,
    B: Fn(usize) -> BF + Send + Sync + Clone + 'static,
    BF: Future<Output = ()> + Send,
{
    let mut out = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (k, b) = if round % 2 == 0 {
            let b = measure(baseline.clone()).await;
            (measure(kernel.clone()).await, b)
        } else {
            let k = measure(kernel.clone()).await;
            (k, measure(baseline.clone()).await)
        };
        out.push((k, b));
    }
    out
}

fn median(mut v: Vec<Sample>, by: impl Fn(&Sample) -> f64) -> Sample {
    v.sort_by(|a, b| by(a).total_cmp(&by(b)));
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(
        SqliteDriver::open(SqliteConfig::new(
            dir.path().join("kernel.db").to_string_lossy(),
        ))
        .await
        .expect("driver opens"),
    );
    let raw = Raw::open(&dir.path().join("raw.db"));
    let value = json!({"name": "Alice", "age": 30, "tags": ["a", "b"], "active": true});
    let text = value.to_string();
    let mut rows: Vec<(&str, Vec<Pair>)> = Vec::new();

    // put: an unconditional write of one document.
    {
        let (d, v) = (driver.clone(), value.clone());
        let (r, t) = (raw.clone(), text.clone());
        rows.push((
            "put",
            compare(
                move |i| {
                    let (d, v) = (d.clone(), v.clone());
                    async move {
                        d.put("bench", &format!("k{}", i % 1000), v, PutOptions::new())
                            .await
                            .expect("put");
                    }
                },
                move |i| {
                    let (r, t) = (r.clone(), t.clone());
                    async move {
                        r.write(move |c| {
                            let now = now_us();
                            c.prepare_cached(
                                "INSERT INTO docs (namespace, key, value, metadata, version,
                                     created_at, updated_at, expires_at)
                                 VALUES ('bench', ?1, ?2, '{}', 1, ?3, ?3, NULL)
                                 ON CONFLICT (namespace, key) DO UPDATE SET
                                     value = excluded.value, version = version + 1,
                                     updated_at = excluded.updated_at, expires_at = NULL",
                            )
                            .expect("prepare")
                            .execute(params![format!("k{}", i % 1000).as_bytes(), t, now])
                            .expect("upsert");
                        })
                        .await;
                    }
                },
            )
            .await,
        ));
    }
    // get: one live document by key.
    {
        let d = driver.clone();
        let r = raw.clone();
        rows.push((
            "get",
            compare(
                move |i| {
                    let d = d.clone();
                    async move {
                        d.get("bench", &format!("k{}", i % 1000))
                            .await
                            .expect("get")
                            .expect("present");
                    }
                },
                move |i| {
                    let r = r.clone();
                    async move {
                        r.read(i, move |c| {
                            let row: Option<(String, String, i64)> = c
                                .prepare_cached(
                                    "SELECT value, metadata, version FROM docs
                                     WHERE namespace = 'bench' AND key = ?1
                                     AND (expires_at IS NULL OR expires_at > ?2)",
                                )
                                .expect("prepare")
                                .query_row(
                                    params![format!("k{}", i % 1000).as_bytes(), now_us()],
                                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                                )
                                .optional()
                                .expect("select");
                            let (v, _, _) = row.expect("present");
                            let _: serde_json::Value = serde_json::from_str(&v).expect("json");
                        })
                        .await;
                    }
                },
            )
            .await,
        ));
    }
    // append: one event to one of 100 streams, at the stream's next version.
    {
        let d = driver.clone();
        let r = raw.clone();
        rows.push((
            "append (1 event)",
            compare(
                move |i| {
                    let d = d.clone();
                    async move {
                        d.append(
                            &format!("k-{}", i % 100),
                            ExpectedVersion::Any,
                            vec![NewEvent::new("Bench", json!({"i": i}))],
                        )
                        .await
                        .expect("append");
                    }
                },
                move |i| {
                    let r = r.clone();
                    async move {
                        r.write(move |c| {
                            let tx = c
                                .transaction_with_behavior(
                                    rusqlite::TransactionBehavior::Immediate,
                                )
                                .expect("begin");
                            let stream = format!("r-{}", i % 100);
                            let version: i64 = tx
                                .prepare_cached(
                                    "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1",
                                )
                                .expect("prepare")
                                .query_row([&stream], |r| r.get(0))
                                .expect("version");
                            let head: i64 = tx
                                .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")
                                .expect("prepare")
                                .query_row([], |r| r.get(0))
                                .expect("head");
                            tx.prepare_cached(
                                "INSERT INTO events (position, stream, version, id, event_type,
                                     payload, recorded_at) VALUES (?1, ?2, ?3, ?4, 'Bench', ?5, ?6)",
                            )
                            .expect("prepare")
                            .execute(params![
                                head + 1,
                                stream,
                                version + 1,
                                uuid::Uuid::now_v7().as_bytes().as_slice(),
                                json!({"i": i}).to_string(),
                                now_us()
                            ])
                            .expect("insert");
                            tx.commit().expect("commit");
                        })
                        .await;
                    }
                },
            )
            .await,
        ));
    }
    // rate-limit check: GCRA on one of 100 keys.
    {
        let d = driver.clone();
        let r = raw.clone();
        let quota = Quota::per_second(1_000_000);
        rows.push((
            "rate-limit check",
            compare(
                move |i| {
                    let d = d.clone();
                    async move {
                        d.check(&format!("user{}", i % 100), &quota, 1)
                            .await
                            .expect("check");
                    }
                },
                move |i| {
                    let r = r.clone();
                    async move {
                        r.write(move |c| {
                            let tx = c
                                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                                .expect("begin");
                            let key = format!("user{}", i % 100);
                            let tat: Option<i64> = tx
                                .prepare_cached("SELECT tat FROM rate WHERE key = ?1")
                                .expect("prepare")
                                .query_row([key.as_bytes()], |r| r.get(0))
                                .optional()
                                .expect("tat");
                            let now = u64::try_from(now_us()).unwrap_or(0);
                            let step = gcra(tat.map(|t| t as u64), now, &quota, 1);
                            if step.decision.allowed {
                                tx.prepare_cached(
                                    "INSERT INTO rate (key, tat) VALUES (?1, ?2)
                                     ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                                )
                                .expect("prepare")
                                .execute(params![key.as_bytes(), step.new_tat as i64])
                                .expect("upsert");
                            }
                            tx.commit().expect("commit");
                        })
                        .await;
                    }
                },
            )
            .await,
        ));
    }
    // lock acquire + release: two writes.
    {
        let d = driver.clone();
        let r = raw.clone();
        rows.push((
            "lock acquire+release",
            compare(
                move |i| {
                    let d = d.clone();
                    async move {
                        let key = format!("lock{i}");
                        let lease = d
                            .try_acquire(&key, Duration::from_secs(5))
                            .await
                            .expect("acquire")
                            .expect("free");
                        d.release(&lease).await.expect("release");
                    }
                },
                move |i| {
                    let r = r.clone();
                    async move {
                        let key = format!("lock{i}");
                        let k2 = key.clone();
                        let token = uuid::Uuid::new_v4().to_string();
                        let t2 = token.clone();
                        r.write(move |c| {
                            let tx = c
                                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                                .expect("begin");
                            let row: Option<(i64, Option<i64>)> = tx
                                .prepare_cached(
                                    "SELECT fencing, expires_at FROM locks WHERE key = ?1",
                                )
                                .expect("prepare")
                                .query_row([key.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()
                                .expect("lock row");
                            let now = now_us();
                            assert!(row.is_none_or(|(_, e)| e.is_none_or(|e| e <= now)));
                            tx.prepare_cached(
                                "INSERT INTO locks (key, fencing, token, expires_at)
                                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET
                                 fencing = excluded.fencing, token = excluded.token,
                                 expires_at = excluded.expires_at",
                            )
                            .expect("prepare")
                            .execute(params![
                                key.as_bytes(),
                                row.map_or(0, |(f, _)| f) + 1,
                                t2,
                                now + 5_000_000
                            ])
                            .expect("acquire");
                            tx.commit().expect("commit");
                        })
                        .await;
                        r.write(move |c| {
                            let n = c
                                .prepare_cached(
                                    "UPDATE locks SET token = NULL, expires_at = NULL
                                     WHERE key = ?1 AND token = ?2",
                                )
                                .expect("prepare")
                                .execute(params![k2.as_bytes(), token])
                                .expect("release");
                            assert_eq!(n, 1);
                        })
                        .await;
                    }
                },
            )
            .await,
        ));
    }

    println!();
    println!(
        "SQLite driver vs plain rusqlite (same schema kind, WAL, synchronous=NORMAL, same disk); \
         median of {ROUNDS} interleaved rounds; latency over {SEQUENTIAL} sequential calls, \
         throughput over {CONCURRENT} calls with {IN_FLIGHT} in flight"
    );
    println!(
        "| {:<22} | {:>10} | {:>10} | {:>10} | {:>10} | {:>11} | {:>11} | {:>9} | {:>9} |",
        "operation",
        "kernel p50",
        "raw p50",
        "kernel p99",
        "raw p99",
        "kernel op/s",
        "raw op/s",
        "p50 ×",
        "op/s ×"
    );
    println!(
        "|{:-<24}|{:->12}|{:->12}|{:->12}|{:->12}|{:->13}|{:->13}|{:->11}|{:->11}|",
        "", "", "", "", "", "", "", "", ""
    );
    for (name, pairs) in rows {
        let lat = |s: &Sample| s.p50.as_secs_f64();
        let k = median(pairs.iter().map(|p| p.0).collect(), lat);
        let b = median(pairs.iter().map(|p| p.1).collect(), lat);
        let kt = median(pairs.iter().map(|p| p.0).collect(), |s| s.per_sec);
        let bt = median(pairs.iter().map(|p| p.1).collect(), |s| s.per_sec);
        let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
        println!(
            "| {:<22} | {:>10} | {:>10} | {:>10} | {:>10} | {:>11.0} | {:>11.0} | {:>9.2} | {:>9.2} |",
            name,
            us(k.p50),
            us(b.p50),
            us(k.p99),
            us(b.p99),
            kt.per_sec,
            bt.per_sec,
            k.p50.as_secs_f64() / b.p50.as_secs_f64(),
            kt.per_sec / bt.per_sec,
        );
    }
    println!(
        "(p50 ×: kernel latency / raw latency, lower is better; op/s ×: kernel throughput / raw \
         throughput, higher is better)"
    );
    driver.shutdown().await;
}
