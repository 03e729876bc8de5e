//! `kernelctl`: the operator's command line of the kernel storage subsystem. It boots from the
//! library's own configuration (environment, TOML, `--set`) and runs one command: migrations,
//! health, documents, namespaces, and events read / tail / export / import / copy.
//!
//! `kernelctl --help` and `kernelctl <command> --help` list every flag with examples;
//! docs/operations.md walks through a session.

mod boot;
mod cli;
mod documents;
mod events;
mod migrate;
mod ndjson;
mod progress;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use kernel_core::{Error, Result};
use serde::Serialize;

use crate::cli::{Cli, Command, EventsCommand};
use crate::progress::Interrupt;

/// How a command ended, beyond success and error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Success: exit status 0.
    Done,
    /// Answered, but negatively (unhealthy, not found): exit status 1.
    Failed,
    /// Stopped by Ctrl-C at a safe point: exit status 130.
    Interrupted,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KERNELCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kernelctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("kernelctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<Outcome> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "kernelctl",
            &mut std::io::stdout(),
        );
        return Ok(Outcome::Done);
    }
    let config = boot::config(cli.config.as_deref(), &cli.set)?;
    match cli.command {
        Command::Config => {
            print_json(&config)?;
            return Ok(Outcome::Done);
        }
        // Migrations run before a kernel could boot on a schema that is not there yet.
        Command::Migrate(args) => return migrate::run(&config, args).await,
        _ => {}
    }
    let kernel = boot::kernel(config).await?;
    // Only the long copies stop at a safe point on Ctrl-C (and `tail` handles its own); for
    // every other command Ctrl-C keeps its default meaning: end the process now.
    let interrupt = match &cli.command {
        Command::Events(
            EventsCommand::Export { .. }
            | EventsCommand::Import { .. }
            | EventsCommand::Copy { .. },
        ) => Interrupt::listen(),
        _ => Interrupt::default(),
    };
    let outcome = match cli.command {
        Command::Health { json } => health(&kernel, json).await,
        Command::Kv(command) => documents::kv(&**kernel.storage(), command).await,
        Command::Ns(command) => documents::ns(&**kernel.storage(), command).await,
        Command::Events(command) => events::run(&**kernel.events(), command, &interrupt).await,
        Command::Config | Command::Migrate(_) | Command::Completions { .. } => Ok(Outcome::Done),
    };
    for failure in kernel.shutdown().await {
        eprintln!("kernelctl: {failure}");
    }
    outcome
}

async fn health(kernel: &kernel_bootstrap::Kernel, json: bool) -> Result<Outcome> {
    let report = kernel.health().await;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "{:<12} {:<10} {:<8} {:>10}  error",
            "component", "backend", "healthy", "ms"
        );
        for c in &report.components {
            println!(
                "{:<12} {:<10} {:<8} {:>10.2}  {}",
                c.component,
                c.backend,
                if c.healthy { "yes" } else { "NO" },
                c.latency_ms,
                c.error.as_deref().unwrap_or("")
            );
        }
        println!(
            "overall: {}",
            if report.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            }
        );
    }
    Ok(if report.healthy {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}

/// Prints one JSON document on its own line.
pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::internal("cannot encode the output as JSON").with_source(e))?;
    println!("{text}");
    Ok(())
}
