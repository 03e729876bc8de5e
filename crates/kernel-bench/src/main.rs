//! `kernel-bench`: fixed workloads through a booted [`Kernel`] (the standard layer stack over a
//! driver) against the raw client doing the same work, **in the same run**, rounds interleaved
//! (kernel, raw, kernel, raw, ...) so a noisy machine hits both alike. Prints one table per
//! backend — workload, concurrency, kernel ops/s, raw ops/s, ratio (kernel ÷ raw, the median of
//! the rounds' ratios), kernel p50 / p99 — and writes the rows as JSON with `--json FILE`.
//!
//! ```sh
//! cargo run --release -p kernel-bench -- --backend all --seconds 2 --rounds 3
//! cargo run --release -p kernel-bench -- --backend postgres --workloads get,put --concurrency 16
//! ```
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

use crate::run::{Row, Workload};

/// Kernel vs raw client, same workload, same run.
#[derive(Debug, Parser)]
#[command(name = "kernel-bench", version, about)]
struct Args {
    /// memory, postgres, redis or all.
    #[arg(long, default_value = "all")]
    backend: String,
    /// Comma-separated workloads (get, put, put_if_version, append, append10); all by default.
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
        args.seconds = 0.1;
        args.rounds = 1;
        args.concurrency = vec![1, 2];
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
        "memory" | "postgres" | "redis" => vec![args.backend.as_str()],
        other => {
            return Err(Error::invalid_input(format!(
                "--backend must be memory, postgres, redis or all, not {other:?}"
            )));
        }
    };
    let round = Duration::from_secs_f64(args.seconds.max(0.01));
    let mut rows: Vec<Row> = Vec::new();
    for backend in backends {
        let (kernel, raw, _guard) = raw::setup(backend).await?;
        println!("\n## {backend}\n");
        println!(
            "| workload | concurrency | kernel ops/s | raw ops/s | ratio | kernel p50 µs | kernel p99 µs |"
        );
        println!("|---|---|---|---|---|---|---|");
        for workload in &workloads {
            for &c in &args.concurrency {
                let row =
                    run::compare(&kernel, &raw, backend, *workload, c, round, args.rounds).await?;
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

/// A kernel on one backend with the standard layers.
pub(crate) async fn kernel(vars: Vec<(&str, String)>) -> Result<Kernel> {
    let vars = vars.into_iter().map(|(k, v)| (k.to_owned(), v));
    Kernel::boot(KernelConfig::from_vars(vars)?).await
}
