//! `kernel-migrate up | status | rollback [N]`: runs the kernel's schema migrations against the
//! database named by `DATABASE_URL`.
//!
//! Exit status: 0 on success, 1 on a failure (printed), 2 on a usage error.

use std::process::ExitCode;

use driver_postgres::PostgresConfig;
use driver_postgres::migrations::{MigrationState, Migrator};
use tokio_postgres::NoTls;

const USAGE: &str = "usage: kernel-migrate up | status | rollback [N]\n\
    Runs the kernel storage schema migrations against DATABASE_URL.\n\
      up            apply every pending migration\n\
      status        list migrations and whether each is applied\n\
      rollback [N]  revert the last N applied migrations (default 1)";

enum Command {
    Up,
    Status,
    Rollback(usize),
}

fn parse(args: &[String]) -> Result<Command, String> {
    match args {
        [cmd] if cmd == "up" => Ok(Command::Up),
        [cmd] if cmd == "status" => Ok(Command::Status),
        [cmd] if cmd == "rollback" => Ok(Command::Rollback(1)),
        [cmd, n] if cmd == "rollback" => n
            .parse::<usize>()
            .map(Command::Rollback)
            .map_err(|_| format!("rollback takes a count, got {n:?}")),
        [] => Err("no command given".to_owned()),
        other => Err(format!("unknown command {:?}", other.join(" "))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("-h" | "--help" | "help")
    ) {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-migrate: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let url = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => {
            eprintln!(
                "kernel-migrate: DATABASE_URL is not set (e.g. postgres://user@host:5432/db)"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kernel-migrate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&url, command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, command: Command) -> Result<(), String> {
    let config = PostgresConfig::new(url);
    let redacted = config.redacted_url();
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid connection string ({redacted}): {e}"))?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect to {redacted}: {e}"))?;
    let driver = tokio::spawn(connection);
    let migrator = Migrator::new();
    let outcome = match command {
        Command::Up => migrator.up(&client).await.map(|applied| {
            if applied.is_empty() {
                println!("schema is up to date");
            }
            for v in applied {
                println!("applied {v:04}");
            }
        }),
        Command::Rollback(n) => migrator.rollback(&client, n).await.map(|reverted| {
            if reverted.is_empty() {
                println!("nothing to roll back");
            }
            for v in reverted {
                println!("reverted {v:04}");
            }
        }),
        Command::Status => migrator.status(&client).await.map(|rows| {
            for s in rows {
                let state = match s.state {
                    MigrationState::Applied { .. } => "applied",
                    MigrationState::Changed { .. } => "CHANGED since applied",
                    MigrationState::Pending => "pending",
                    MigrationState::Unknown { .. } => "applied (unknown to this build)",
                };
                println!("{:04}_{:<24} {state}", s.version, s.name);
            }
        }),
    };
    drop(client);
    if let Err(e) = driver.await {
        eprintln!("kernel-migrate: connection task failed: {e}");
    }
    outcome.map_err(|e| e.to_string())
}
