//! Two processes sharing one database: an append through the driver of one process reaches a
//! subscriber in the other (LISTEN/NOTIFY across sessions, not an in-process channel).
//!
//! The test binary is its own second process: run without `KERNEL_CROSS_PROCESS_CHILD` it is
//! the parent (creates the database, subscribes, spawns itself as the child, checks the
//! events); with it, it is the child (connects its own driver and appends). Hence
//! `harness = false`.

mod common;

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use driver_postgres::PostgresDriver;
use futures::StreamExt;
use kernel_core::{EventFilter, EventStore, ExpectedVersion, NewEvent};
use serde_json::json;

const CHILD_VAR: &str = "KERNEL_CROSS_PROCESS_CHILD";
const EVENTS: u64 = 5;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cross_process: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match std::env::var(CHILD_VAR) {
        Ok(spec) => runtime.block_on(child(spec)),
        Err(_) => runtime.block_on(parent()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cross_process: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The child: `url|stream` in the environment; appends EVENTS events one by one.
async fn child(spec: String) -> Result<(), String> {
    let (url, stream) = spec
        .split_once('|')
        .ok_or_else(|| format!("{CHILD_VAR} must be url|stream"))?;
    let driver = PostgresDriver::connect(common::config(url))
        .await
        .map_err(|e| format!("child connect: {e}"))?;
    for i in 0..EVENTS {
        driver
            .append(
                stream,
                ExpectedVersion::Exact(i),
                vec![NewEvent::new("FromChild", json!({"i": i}))],
            )
            .await
            .map_err(|e| format!("child append {i}: {e}"))?;
    }
    driver.shutdown().await;
    Ok(())
}

async fn parent() -> Result<(), String> {
    println!("\nrunning 1 test (two processes)");
    let db = common::database().await;
    let mut config = common::config(db.url());
    // Only a notification can deliver within the deadline below.
    config.subscription.poll_interval = Duration::from_secs(60);
    let driver = PostgresDriver::connect(config)
        .await
        .map_err(|e| format!("parent connect: {e}"))?;
    let mut sub = driver
        .subscribe(0, EventFilter::all())
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    // Let the listener's LISTEN land before the child appends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = format!("xproc_{}-1", uuid::Uuid::new_v4().simple());
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .env(CHILD_VAR, format!("{}|{stream}", db.url()))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn the child process: {e}"))?;
    let child_pid = child.id();
    let mut received = Vec::new();
    while received.len() < EVENTS as usize {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(Ok(e))) => received.push(e),
            Ok(Some(Err(e))) => return Err(format!("subscription failed: {e}")),
            Ok(None) => return Err("subscription ended".to_owned()),
            Err(_) => {
                let _ = child.kill();
                return Err(format!(
                    "only {} of {EVENTS} events from process {child_pid} arrived within 10 s",
                    received.len()
                ));
            }
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| format!("wait for the child: {e}"))?
        .map_err(|e| format!("wait for the child: {e}"))?;
    if !status.success() {
        return Err(format!("the child process failed: {status}"));
    }
    for (i, e) in received.iter().enumerate() {
        let i = i as u64;
        if e.stream != stream
            || e.version != i + 1
            || e.position != i + 1
            || e.payload != json!({"i": i})
        {
            return Err(format!("event {i} from the child is wrong: {e:?}"));
        }
    }
    driver.shutdown().await;
    println!(
        "test append_in_one_process_reaches_subscriber_in_another ... ok (child pid {child_pid})"
    );
    println!("\ntest result: ok. 1 passed; 0 failed\n");
    Ok(())
}
