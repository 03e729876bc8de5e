//! `kernel-migrate [--dir PATH --space NAME] up | status | rollback [N]`: runs schema migrations
//! against the database named by `DATABASE_URL`: the kernel's own, or with `--dir` and
//! `--space` an application's folder of `NNNN_name.up.sql` / `NNNN_name.down.sql` files in a
//! version space of its own.
//!
//! Exit status: 0 on success, 1 on a failure (printed), 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use driver_postgres::PostgresConfig;
use driver_postgres::migrations::{MigrationState, Migrator};
use tokio_postgres::NoTls;

const USAGE: &str = "usage: kernel-migrate [--dir PATH --space NAME] up | status | rollback [N]\n\
    Runs schema migrations against DATABASE_URL: the kernel storage schema, or an\n\
    application's migration folder with --dir and --space.\n\
      up                 apply every pending migration\n\
      status             list migrations and whether each is applied\n\
      rollback [N]       revert the last N applied migrations (default 1)\n\
      --dir PATH         a folder of NNNN_name.up.sql / NNNN_name.down.sql files\n\
      --space NAME       the version space of that folder (lowercase letters, digits, _ and -;\n\
                         not `kernel`), recorded next to the kernel's in kernel_schema_migrations";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Up,
    Status,
    Rollback(usize),
}

/// What to run: the command, and the application folder and its space (both or neither).
#[derive(Debug, PartialEq, Eq)]
struct Invocation {
    command: Command,
    app: Option<(PathBuf, String)>,
}

fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut dir = None;
    let mut space = None;
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let target = match flag {
            "--dir" => &mut dir,
            "--space" => &mut space,
            f if f.starts_with("--") => return Err(format!("unknown option {f}")),
            _ => {
                rest.push(arg.as_str());
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        if target.replace(value).is_some() {
            return Err(format!("{flag} is given twice"));
        }
    }
    let app = match (dir, space) {
        (Some(dir), Some(space)) => Some((PathBuf::from(dir), space)),
        (None, None) => None,
        (Some(_), None) => return Err("--dir needs --space NAME too".to_owned()),
        (None, Some(_)) => return Err("--space needs --dir PATH too".to_owned()),
    };
    let command = match rest.as_slice() {
        ["up"] => Command::Up,
        ["status"] => Command::Status,
        ["rollback"] => Command::Rollback(1),
        ["rollback", n] => n
            .parse::<usize>()
            .map(Command::Rollback)
            .map_err(|_| format!("rollback takes a count, got {n:?}"))?,
        [] => return Err("no command given".to_owned()),
        other => return Err(format!("unknown command {:?}", other.join(" "))),
    };
    Ok(Invocation { command, app })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-h" | "--help" | "help"))
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let invocation = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-migrate: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Read the folder before connecting: a bad file is reported without touching the database.
    let migrator = match &invocation.app {
        None => Migrator::new(),
        Some((dir, space)) => match Migrator::from_dir(space, dir) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("kernel-migrate: {e}");
                return ExitCode::FAILURE;
            }
        },
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
    match runtime.block_on(run(&url, &migrator, invocation.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, migrator: &Migrator, command: Command) -> Result<(), String> {
    let redacted = PostgresConfig::new(url).redacted_url();
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid connection string ({redacted}): {e}"))?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect to {redacted}: {e}"))?;
    let driver = tokio::spawn(connection);
    let space = migrator.space();
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
            if rows.is_empty() {
                println!("no migrations in space {space}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_commands_and_the_app_folder() {
        assert_eq!(
            parse(&args("up")),
            Ok(Invocation {
                command: Command::Up,
                app: None
            })
        );
        assert_eq!(
            parse(&args("--dir db/app --space app rollback 2")),
            Ok(Invocation {
                command: Command::Rollback(2),
                app: Some((PathBuf::from("db/app"), "app".to_owned()))
            })
        );
        assert_eq!(
            parse(&args("status --space=app --dir=db/app")),
            Ok(Invocation {
                command: Command::Status,
                app: Some((PathBuf::from("db/app"), "app".to_owned()))
            })
        );
        for bad in [
            "",
            "sideways",
            "--dir db up",
            "--space app up",
            "--dir up",
            "--dir a --dir b --space s up",
            "--frobnicate up",
            "rollback x",
            "up status",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
