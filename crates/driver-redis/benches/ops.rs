//! Driver operations against raw fred commands on the same server, in the same run.
//!
//! `cargo bench -p driver-redis --bench ops` (release build). Uses the test server
//! (`KERNEL_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a fresh key prefix that is
//! deleted at the end. Prints one table: sequential latency (one request in flight) and
//! throughput with 32 requests in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driver_redis::{RedisConfig, RedisDriver};
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::{Builder, Value as RedisValue};
use kernel_core::{Lock, PutOptions, Quota, RateLimiter, StorageDriver, json};
use kernel_testkit::redis::RedisTestServer;

const SEQUENTIAL: usize = 2_000;
const CONCURRENT: usize = 10_000;
const IN_FLIGHT: usize = 32;
const POOL: usize = 4;

struct Row {
    name: &'static str,
    mean: Duration,
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

async fn measure<F, Fut>(name: &'static str, op: F) -> Row
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    for i in 0..200 {
        op(i).await;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / SEQUENTIAL as u32;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for t in 0..IN_FLIGHT {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < CONCURRENT {
                op(i).await;
                i += IN_FLIGHT;
            }
        }));
    }
    for t in tasks {
        t.await.expect("benchmark task panicked");
    }
    let per_sec = CONCURRENT as f64 / started.elapsed().as_secs_f64();
    Row {
        name,
        mean,
        p50: samples[SEQUENTIAL / 2],
        p99: samples[SEQUENTIAL * 99 / 100],
        per_sec,
    }
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
    let server = RedisTestServer::start().await;
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = server.prefix().to_owned();
    config.pool_size = POOL;
    let driver = Arc::new(RedisDriver::connect(config).await.expect("driver connects"));
    let raw_config = fred::types::config::Config::from_url(server.url()).expect("url");
    let raw: Arc<Pool> = Arc::new(
        Builder::from_config(raw_config)
            .build_pool(POOL)
            .expect("pool"),
    );
    raw.init().await.expect("raw pool connects");
    let prefix = server.prefix().to_owned();
    let value = json!({"name": "Alice", "age": 30, "tags": ["a", "b"], "active": true});
    let text = value.to_string();
    let noop: String = raw.script_load("return 1").await.expect("script load");

    let mut rows = Vec::new();
    {
        let (raw, prefix, text) = (raw.clone(), prefix.clone(), text.clone());
        rows.push(
            measure("raw fred SET", move |i| {
                let (raw, key, text) = (
                    raw.clone(),
                    format!("{prefix}raw:{}", i % 1000),
                    text.clone(),
                );
                async move {
                    let _: () = raw.set(key, text, None, None, false).await.expect("SET");
                }
            })
            .await,
        );
    }
    {
        let (raw, prefix) = (raw.clone(), prefix.clone());
        rows.push(
            measure("raw fred GET", move |i| {
                let (raw, key) = (raw.clone(), format!("{prefix}raw:{}", i % 1000));
                async move {
                    let _: Option<String> = raw.get(key).await.expect("GET");
                }
            })
            .await,
        );
    }
    {
        let (raw, noop) = (raw.clone(), noop.clone());
        rows.push(
            measure("raw fred EVALSHA (return 1)", move |_| {
                let (raw, noop) = (raw.clone(), noop.clone());
                async move {
                    let _: RedisValue = raw.evalsha(noop, (), ()).await.expect("EVALSHA");
                }
            })
            .await,
        );
    }
    {
        let (d, value) = (driver.clone(), value.clone());
        rows.push(
            measure("driver put", move |i| {
                let (d, value) = (d.clone(), value.clone());
                async move {
                    d.put("bench", &format!("k{}", i % 1000), value, PutOptions::new())
                        .await
                        .expect("put");
                }
            })
            .await,
        );
    }
    {
        let d = driver.clone();
        rows.push(
            measure("driver get", move |i| {
                let d = d.clone();
                async move {
                    d.get("bench", &format!("k{}", i % 1000))
                        .await
                        .expect("get");
                }
            })
            .await,
        );
    }
    {
        let d = driver.clone();
        let quota = Quota::per_second(1_000_000);
        rows.push(
            measure("driver rate-limit check", move |i| {
                let d = d.clone();
                async move {
                    d.check(&format!("user{}", i % 100), &quota, 1)
                        .await
                        .expect("check");
                }
            })
            .await,
        );
    }
    {
        let d = driver.clone();
        rows.push(
            measure("driver lock acquire+release", move |i| {
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
            })
            .await,
        );
    }

    println!();
    println!(
        "Redis driver vs raw fred, same server, pool of {POOL}; latency over {SEQUENTIAL} sequential \
         calls, throughput over {CONCURRENT} calls with {IN_FLIGHT} in flight"
    );
    println!(
        "| {:<30} | {:>9} | {:>9} | {:>9} | {:>10} |",
        "operation", "mean µs", "p50 µs", "p99 µs", "ops/s"
    );
    println!(
        "|{:-<32}|{:->11}|{:->11}|{:->11}|{:->12}|",
        "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<30} | {:>9.1} | {:>9.1} | {:>9.1} | {:>10.0} |",
            r.name,
            r.mean.as_secs_f64() * 1e6,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.per_sec
        );
    }
    driver.shutdown().await.expect("shutdown");
    raw.quit().await.expect("quit");
}
