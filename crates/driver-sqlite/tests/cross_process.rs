//! Two OS processes on one SQLite file: the child appends while the parent appends too, and the
//! parent's subscription (opened on the empty file before the child starts) receives every event
//! of both, each once, in global position order `1..=2 * EVENTS`, the child's within a bounded
//! delay of their append. The parent's safety-net re-read is set to a minute, so every delivery
//! of a child event within the bound went through the `PRAGMA data_version` watcher.
//!
//! The child also checks that a lock the parent holds is not free for it, and takes it after the
//! parent released it with a greater fencing token.
//!
//! The test binary is its own second process: run without `CHILD_VAR` it is the parent, with it
//! the child (whose value is the database path). Hence `harness = false`; it prints
//! libtest-style lines itself and honours `--list` and name filters.

use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use driver_sqlite::{SqliteConfig, SqliteDriver};
use futures::StreamExt;
use kernel_core::{EventFilter, EventStore, ExpectedVersion, Lock, NewEvent, json};

const TEST_NAME: &str = "a_child_process_appends_reach_the_parents_subscription";
const CHILD_VAR: &str = "KERNEL_SQLITE_CROSS_PROCESS_CHILD";
/// Events each process appends.
const EVENTS: u64 = 20;
/// The longest accepted delay between a child's append and the parent receiving it: the watcher
/// polls every 100 ms; the rest is slack for a loaded machine.
const MAX_DELAY: Duration = Duration::from_millis(1500);
/// The longest wait for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    if let Ok(path) = std::env::var(CHILD_VAR) {
        return child_main(&path);
    }
    let Some(list) = selection() else {
        println!("\nrunning 0 tests\n");
        println!(
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.00s\n"
        );
        return ExitCode::SUCCESS;
    };
    if list {
        println!("{TEST_NAME}: test");
        return ExitCode::SUCCESS;
    }
    println!("\nrunning 1 test (two processes)");
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime()?.block_on(parent())))
        .unwrap_or_else(|_| Err("the parent panicked (message above)".to_owned()));
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Ok(details) => {
            println!("test {TEST_NAME} ... ok");
            for line in details {
                println!("    {line}");
            }
            println!(
                "\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test {TEST_NAME} ... FAILED");
            println!("\nfailures:\n\n---- {TEST_NAME} ----\n{e}\n");
            println!("failures:\n    {TEST_NAME}\n");
            println!(
                "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in {elapsed:.2}s\n"
            );
            ExitCode::FAILURE
        }
    }
}

/// `None` when the command line filters the test out, else `Some(list_only)`.
fn selection() -> Option<bool> {
    let mut args = std::env::args().skip(1);
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let (mut exact, mut list, mut only_ignored) = (false, false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--exact" => exact = true,
            "--ignored" => only_ignored = true,
            "--skip" => skips.extend(args.next()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                args.next();
            }
            a if a.starts_with("--skip=") => skips.push(a["--skip=".len()..].to_owned()),
            a if a.starts_with('-') => {}
            a => filters.push(a.to_owned()),
        }
    }
    let matches = |p: &String| {
        if exact {
            TEST_NAME == p
        } else {
            TEST_NAME.contains(p.as_str())
        }
    };
    let selected = !only_ignored
        && (filters.is_empty() || filters.iter().any(matches))
        && !skips.iter().any(matches);
    selected.then_some(list)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))
}

fn config(path: &str) -> SqliteConfig {
    let mut c = SqliteConfig::new(path);
    // Only a wake-up can deliver within MAX_DELAY.
    c.subscription.poll_interval = Duration::from_secs(60);
    c
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn parent() -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("shared.db").to_string_lossy().into_owned();
    let driver = SqliteDriver::open(config(&path))
        .await
        .map_err(|e| format!("open: {e}"))?;
    let mut sub = driver
        .subscribe(0, EventFilter::all())
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let lease = driver
        .try_acquire("shared", Duration::from_secs(30))
        .await
        .map_err(|e| format!("acquire: {e}"))?
        .ok_or("the lock is free on a fresh file")?;

    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_VAR, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn the child: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .map_err(|_| "the child did not get ready within 60 s")?;
    if ready.as_deref() != Some("READY") {
        let _ = child.kill();
        return Err(format!("the child said {ready:?} instead of READY"));
    }

    // Append concurrently with the child.
    let appender = {
        let driver = driver.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                driver
                    .append(
                        "parent-1",
                        ExpectedVersion::Exact(i),
                        vec![NewEvent::new("FromParent", json!({"i": i}))],
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            Ok::<(), kernel_core::Error>(())
        })
    };

    let mut positions = Vec::new();
    let mut child_events = 0u64;
    let mut max_delay = Duration::ZERO;
    while positions.len() < (2 * EVENTS) as usize {
        let next = tokio::time::timeout(EVENT_WAIT, sub.next())
            .await
            .map_err(|_| format!("no event within {EVENT_WAIT:?} after {positions:?}"))?
            .ok_or("the subscription ended")?
            .map_err(|e| format!("subscription error: {e}"))?;
        let received = now_us();
        positions.push(next.position);
        if next.stream == "child-1" {
            child_events += 1;
            let sent = next.payload["sent_us"].as_u64().unwrap_or(0);
            // The child stamps just before appending: the delay covers the commit too.
            let delay = Duration::from_micros(received.saturating_sub(sent));
            max_delay = max_delay.max(delay);
        }
    }
    appender
        .await
        .map_err(|e| format!("appender task: {e}"))?
        .map_err(|e| format!("parent append: {e}"))?;
    let expected: Vec<u64> = (1..=2 * EVENTS).collect();
    if positions != expected {
        return Err(format!(
            "positions {positions:?}, expected 1..={}",
            2 * EVENTS
        ));
    }
    if child_events != EVENTS {
        return Err(format!("{child_events} child events, expected {EVENTS}"));
    }
    if max_delay > MAX_DELAY {
        return Err(format!(
            "a child event took {max_delay:?} to reach the parent (bound {MAX_DELAY:?})"
        ));
    }
    // Let the child see the lock held, then release it for the child.
    let said = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .map_err(|_| "the child did not report on the lock")?;
    if said.as_deref() != Some("LOCK BUSY") {
        return Err(format!("the child said {said:?} instead of LOCK BUSY"));
    }
    driver
        .release(&lease)
        .await
        .map_err(|e| format!("release: {e}"))?;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| format!("wait task: {e}"))?
        .map_err(|e| format!("wait for the child: {e}"))?;
    if !status.success() {
        return Err(format!("the child failed: {status}"));
    }
    let after = driver
        .try_acquire("shared", Duration::from_secs(30))
        .await
        .map_err(|e| format!("acquire after the child: {e}"))?
        .ok_or("the child released the lock")?;
    if after.fencing_token <= lease.fencing_token + 1 {
        return Err(format!(
            "fencing token {} after the child's {} acquisition(s) must exceed {}",
            after.fencing_token,
            1,
            lease.fencing_token + 1
        ));
    }
    driver.shutdown().await;
    Ok(vec![
        format!(
            "{} events in global order 1..={}",
            positions.len(),
            2 * EVENTS
        ),
        format!("largest child append -> parent receipt delay: {max_delay:?}"),
    ])
}

fn child_main(path: &str) -> ExitCode {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime()?.block_on(child(path))))
        .unwrap_or_else(|_| Err("panicked (message above)".to_owned()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "cross_process: child process {} FAILED: {e}",
                std::process::id()
            );
            ExitCode::FAILURE
        }
    }
}

async fn child(path: &str) -> Result<(), String> {
    let driver = SqliteDriver::open(config(path))
        .await
        .map_err(|e| format!("open: {e}"))?;
    println!("READY");
    for i in 0..EVENTS {
        driver
            .append(
                "child-1",
                ExpectedVersion::Exact(i),
                vec![NewEvent::new(
                    "FromChild",
                    json!({"i": i, "sent_us": now_us()}),
                )],
            )
            .await
            .map_err(|e| format!("append: {e}"))?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if driver
        .try_acquire("shared", Duration::from_secs(5))
        .await
        .map_err(|e| format!("try_acquire: {e}"))?
        .is_some()
    {
        return Err("the parent's lock was free in the child".to_owned());
    }
    println!("LOCK BUSY");
    let lease = driver
        .acquire("shared", Duration::from_secs(5), Duration::from_secs(30))
        .await
        .map_err(|e| format!("acquire after the parent released: {e}"))?;
    driver
        .release(&lease)
        .await
        .map_err(|e| format!("release: {e}"))?;
    driver.shutdown().await;
    Ok(())
}
