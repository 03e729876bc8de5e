//! `kernel-bench`: fixed workloads through a booted [`Kernel`] (the standard layer stack over a
//! driver) against the raw client doing the same work, **in the same run**, rounds interleaved
//! (kernel, raw, kernel, raw, ...) so a noisy machine hits both alike. Prints one table per
//! backend — workload, concurrency, kernel ops/s, raw ops/s, ratio (kernel ÷ raw, the median of
//! the rounds' ratios), kernel p50 / p99 — and writes the rows as JSON with `--json FILE`.
//!
//! ```sh
//! cargo run --release -p kernel-bench -- --backend all --seconds 2 --rounds 3
//! cargo run --release -p kernel-bench -- --backend postgres --workloads get,put --concurrency 16
//! cargo run --release -p kernel-bench -- --backend memory-layers --concurrency 1,8
//! cargo run --release -p kernel-bench -- --backend postgres --workloads query --docs 1000000
//! ```
//!
//! `memory-layers` measures the standard layer stack alone: the kernel on the memory driver
//! against the same driver called bare (ratio = 1 - the stack's cost).
//!
//! The raw side of each backend: memory — a `RwLock<HashMap>`; PostgreSQL — hand-written
//! tokio-postgres statements on a deadpool pool of the kernel's size, against plain tables of
//! the same shape (`SELECT ... WHERE namespace = $1 AND key = $2`, `INSERT ... ON CONFLICT DO
//! UPDATE`, a single-row `INSERT` into an events table with a unique `(stream, version)`);
//! Redis — fred `GET` / `SET` / `RPUSH` on a pool of the kernel's size. PostgreSQL and Redis are
//! the test servers (`KERNEL_TEST_POSTGRES_URL`, `KERNEL_TEST_REDIS_URL`), in a fresh database /
//! under a fresh key prefix. `--smoke` runs every workload for a moment (the test command does,
//! to keep the harness working; no timing is asserted).

mod raw;
mod run;

use std::time::Duration;

use clap::Parser;
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{Error, Result};

use std::sync::Arc;

use crate::run::{KernelSide, Row, Side, SinglePuts, Workload};

/// Kernel vs raw client, same workload, same run.
#[derive(Debug, Parser)]
#[command(name = "kernel-bench", version, about)]
struct Args {
    /// memory, postgres, redis, all (the three), or memory-layers (the kernel on memory
    /// against the bare memory driver: what the layer stack costs).
    #[arg(long, default_value = "all")]
    backend: String,
    /// Comma-separated workloads (get, put, put_if_version, append, append10, lock,
    /// rate_limit, put_many, put_many_vs_single, list, query, read_stream, read_all,
    /// subscription); all by default.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Comma-separated concurrency levels (tasks issuing calls back to back).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Seconds per round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds per side (kernel and raw interleaved).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Documents in the namespace the query workload searches.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Appends per second of the subscription workload.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Writes the rows as JSON to this file too.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// A moment of every workload at concurrency 1 and 2 (checks the harness, not speed).
    #[arg(long)]
    smoke: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match bench(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bench(mut args: Args) -> Result<()> {
    if args.smoke {
        // Every workload runs, briefly: the smoke proves the code paths, not the speed.
        args.seconds = 0.03;
        args.rounds = 1;
        args.concurrency = vec![1, 2];
        args.docs = 200;
        args.rate = 200;
    }
    let workloads: Vec<Workload> = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads
            .iter()
            .map(|w| Workload::parse(w))
            .collect::<Result<_>>()?
    };
    let backends: Vec<&str> = match args.backend.as_str() {
        "all" => vec!["memory", "postgres", "redis"],
        "memory" | "postgres" | "redis" | "memory-layers" => vec![args.backend.as_str()],
        other => {
            return Err(Error::invalid_input(format!(
                "--backend must be memory, postgres, redis, all or memory-layers, not {other:?}"
            )));
        }
    };
    if args.docs < 100 {
        return Err(Error::invalid_input("--docs must be at least 100"));
    }
    let params = run::Params {
        round: Duration::from_secs_f64(args.seconds.max(0.01)),
        rounds: args.rounds,
        docs: args.docs,
        rate: args.rate.max(1),
    };
    let mut rows: Vec<Row> = Vec::new();
    for backend in backends {
        let (kernel, raw, _guard) = raw::setup(backend).await?;
        println!("\n## {backend}\n");
        println!(
            "| workload | concurrency | kernel ops/s | raw ops/s | ratio | kernel p50 µs | kernel p99 µs |"
        );
        println!("|---|---|---|---|---|---|---|");
        let kernel_side: Arc<dyn Side> = Arc::new(KernelSide(kernel.stores()));
        let singles: Arc<dyn Side> = Arc::new(SinglePuts(kernel.stores()));
        for workload in &workloads {
            if *workload == Workload::Subscription {
                let row = run::subscription(&kernel, backend, params).await?;
                print_row(&row);
                rows.push(row);
                continue;
            }
            let raw = if *workload == Workload::PutManySingles {
                &singles
            } else {
                &raw
            };
            for &c in &args.concurrency {
                let row = run::compare(&kernel_side, raw, backend, *workload, c, params).await?;
                print_row(&row);
                rows.push(row);
            }
        }
        kernel.shutdown().await;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::internal("cannot encode the rows").with_source(e))?;
        std::fs::write(path, text).map_err(|e| {
            Error::invalid_input(format!("cannot write {}", path.display())).with_source(e)
        })?;
    }
    Ok(())
}

fn print_row(row: &Row) {
    println!(
        "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
        row.workload,
        row.concurrency,
        row.kernel_ops,
        row.raw_ops,
        row.ratio,
        row.p50_us,
        row.p99_us
    );
}

/// A kernel on one backend with the standard layers.
pub(crate) async fn kernel(vars: Vec<(&str, String)>) -> Result<Kernel> {
    let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
    Kernel::boot(KernelConfig::from_vars(vars)?).await
}
