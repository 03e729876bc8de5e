//! Two `Kernel`s in two OS processes, sharing one PostgreSQL database and booted from
//! configuration (`KERNEL_STORAGE_MODE=postgres`, `DATABASE_URL`): an event appended through
//! `kernel.events()` in one process reaches a subscriber of the other process's kernel, in both
//! directions.
//!
//! The parent creates the database, boots kernel A and subscribes from position 0; it spawns the
//! child, which boots kernel B on the same database, subscribes from 0 and prints `READY`. Then
//! they take turns, so that each direction is observed by a process that is only listening: the
//! parent appends `EVENTS_PER_PROCESS` events to its stream; once the child has received them,
//! it appends as many to its own. Appends go one at a time with exact expected versions. Each side must receive
//! all the events of both processes through its subscription, each exactly once, in global
//! position order `1..=2 * EVENTS_PER_PROCESS`, with the right streams, versions, types and
//! payloads, waiting at most `EVENT_WAIT` for each. Both subscriptions were opened on an empty
//! database, so every event is delivered live, not read back at subscription time. The child
//! exits 0 only if it received everything; the parent checks its own events and that exit
//! status. The processes talk only through the database, the child's stdout and its exit
//! status.
//!
//! Both kernels set `KERNEL_POSTGRES_SUBSCRIPTION_POLL_INTERVAL_MS` to a minute, far beyond `EVENT_WAIT`: an
//! idle subscription then re-reads only when a notification wakes it, so every delivery here
//! went through LISTEN/NOTIFY across sessions. The test reports the largest append-to-receipt
//! delay it saw.
//!
//! The test binary is its own second process: run without `CHILD_VAR` it is the parent, with it
//! the child. Hence `harness = false`; it prints libtest-style lines (`test result: ...`) itself
//! and honours `--list` and name filters.

use std::io::{BufRead, BufReader, Write};
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{EventFilter, EventSubscription, ExpectedVersion, NewEvent, RecordedEvent, json};
use kernel_integration_tests::vars;
use kernel_testkit::postgres::fresh_database;
use tokio::sync::mpsc;

const TEST_NAME: &str = "an_event_appended_in_one_process_reaches_the_other_both_ways";
/// Marks the child process; its value is the database URL.
const CHILD_VAR: &str = "KERNEL_CROSS_PROCESS_KERNELS_CHILD";
/// Events each process appends.
const EVENTS_PER_PROCESS: u64 = 5;
/// Events each side must receive: its own and the other's.
const EXPECTED_EVENTS: u64 = 2 * EVENTS_PER_PROCESS;
/// The longest wait for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// How long the parent waits for the child to boot and subscribe, and later to exit.
const CHILD_WAIT: Duration = Duration::from_secs(60);
/// How long a side watches for an unexpected extra event after the last expected one (a
/// duplicate read after a late notification would show).
const QUIET_WAIT: Duration = Duration::from_millis(1500);
/// Lets the kernel's notification listener connect and LISTEN after boot.
const LISTEN_SETTLE: Duration = Duration::from_millis(300);
/// The line the child prints once subscribed.
const READY: &str = "READY";
/// Prefix of the child's summary line.
const RECEIVED: &str = "RECEIVED";

/// One process's role: the stream it appends to and the event type it writes.
#[derive(Clone, Copy)]
struct Side {
    name: &'static str,
    stream: &'static str,
    event_type: &'static str,
}

const PARENT: Side = Side {
    name: "parent",
    stream: "xproc-from-parent",
    event_type: "AppendedByParent",
};
const CHILD: Side = Side {
    name: "child",
    stream: "xproc-from-child",
    event_type: "AppendedByChild",
};

fn main() -> ExitCode {
    if let Ok(url) = std::env::var(CHILD_VAR) {
        return child_main(&url);
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

/// `None` when the command line filters the test out, else `Some(list_only)`. Understands the
/// libtest arguments `cargo test` may pass: name filters, `--exact`, `--skip`, `--ignored`,
/// `--list`; ignores the rest.
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

/// The configuration both processes boot from (never the real environment).
fn kernel_config(url: &str) -> Result<KernelConfig, String> {
    KernelConfig::from_vars(vars(&[
        ("KERNEL_STORAGE_MODE", "postgres"),
        ("DATABASE_URL", url),
        ("KERNEL_POSTGRES_POOL_SIZE", "4"),
        // Only a notification can wake a subscription within EVENT_WAIT.
        ("KERNEL_POSTGRES_SUBSCRIPTION_POLL_INTERVAL_MS", "60000"),
    ]))
    .map_err(|e| format!("configuration: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// The child

fn child_main(url: &str) -> ExitCode {
    let pid = std::process::id();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| runtime()?.block_on(child(url))))
        .unwrap_or_else(|_| Err("panicked (message above)".to_owned()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cross_process_kernels: child process {pid} FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn child(url: &str) -> Result<(), String> {
    let kernel = Kernel::boot(kernel_config(url)?)
        .await
        .map_err(|e| format!("boot kernel B: {e}"))?;
    let outcome = child_with_kernel(&kernel).await;
    let failures = kernel.shutdown().await;
    outcome?;
    if !failures.is_empty() {
        return Err(format!("kernel B shutdown reported {failures:?}"));
    }
    Ok(())
}

async fn child_with_kernel(kernel: &Kernel) -> Result<(), String> {
    let mut sub = kernel
        .events()
        .subscribe(0, EventFilter::all())
        .await
        .map_err(|e| format!("subscribe on kernel B: {e}"))?;
    tokio::time::sleep(LISTEN_SETTLE).await;
    tell_parent(READY)?;
    // The parent appends first, while this process does nothing but listen: only a
    // notification from the parent's session can wake this subscription.
    let mut received = Vec::new();
    receive(&mut sub, CHILD, &mut received, EVENTS_PER_PROCESS).await?;
    append_own(kernel, CHILD).await?;
    receive(&mut sub, CHILD, &mut received, EXPECTED_EVENTS).await?;
    expect_quiet(&mut sub, CHILD).await?;
    let summary = verify(&received, CHILD)?;
    tell_parent(&format!("{RECEIVED} {summary}"))
}

/// One line on stdout, which the parent reads.
fn tell_parent(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("write {line:?} to the parent: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The parent

/// Lines of details for the report.
async fn parent() -> Result<Vec<String>, String> {
    // Dropped (with the database) only after both kernels are shut down.
    let db = fresh_database().await;
    let kernel = Kernel::boot(kernel_config(db.url())?)
        .await
        .map_err(|e| format!("boot kernel A: {e}"))?;
    let outcome = parent_with_kernel(&kernel, db.url()).await;
    let failures = kernel.shutdown().await;
    let details = outcome?;
    if !failures.is_empty() {
        return Err(format!("kernel A shutdown reported {failures:?}"));
    }
    drop(db);
    Ok(details)
}

async fn parent_with_kernel(kernel: &Kernel, url: &str) -> Result<Vec<String>, String> {
    let mut sub = kernel
        .events()
        .subscribe(0, EventFilter::all())
        .await
        .map_err(|e| format!("subscribe on kernel A: {e}"))?;
    tokio::time::sleep(LISTEN_SETTLE).await;
    let mut child = ChildProcess::spawn(url)?;
    let pid = child.pid();

    // The child's subscription exists (on an empty database) before anyone appends.
    loop {
        match child.next_line(CHILD_WAIT).await? {
            Some(line) if line == READY => break,
            Some(line) => eprintln!("cross_process_kernels: child {pid} printed: {line}"),
            None => return Err(child.died("before it was ready").await),
        }
    }
    // The parent appends first; the child appends once it has received those, while this
    // process only listens.
    let mine = async {
        append_own(kernel, PARENT).await?;
        let mut received = Vec::new();
        receive(&mut sub, PARENT, &mut received, EXPECTED_EVENTS).await?;
        expect_quiet(&mut sub, PARENT).await?;
        verify(&received, PARENT)
    }
    .await;

    // Even when the parent's side failed, let the child finish (its own deadlines bound it), so
    // that its view of the other direction is reported too.
    let child_outcome = child_result(&mut child).await;
    match (mine, child_outcome) {
        (Ok(parent_summary), Ok(child_summary)) => Ok(vec![
            format!(
                "parent (pid {}, kernel A): {parent_summary}",
                std::process::id()
            ),
            format!("child (pid {pid}, kernel B): {child_summary}"),
        ]),
        (Err(e), Ok(_)) => Err(format!("{e}\n(the child received everything)")),
        (Ok(_), Err(e)) => Err(e),
        (Err(mine), Err(theirs)) => Err(format!("{mine}\n{theirs}")),
    }
}

/// Waits for the child to exit; its summary line if it succeeded.
async fn child_result(child: &mut ChildProcess) -> Result<String, String> {
    let pid = child.pid();
    let status = child.wait(CHILD_WAIT).await?;
    let mut summary = None;
    while let Some(line) = child.next_line(Duration::from_secs(5)).await? {
        match line.strip_prefix(RECEIVED) {
            Some(s) => summary = Some(s.trim().to_owned()),
            None => eprintln!("cross_process_kernels: child {pid} printed: {line}"),
        }
    }
    if !status.success() {
        return Err(format!(
            "child process {pid} failed ({status}); see its stderr above"
        ));
    }
    summary
        .ok_or_else(|| format!("child process {pid} exited 0 without reporting what it received"))
}

/// The child process, its stdout lines, and a kill on drop so that no failure leaves it behind.
struct ChildProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    reaped: bool,
}

impl ChildProcess {
    fn spawn(url: &str) -> Result<ChildProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .env(CHILD_VAR, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn the child process: {e}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the child process has no stdout pipe".to_owned());
        };
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(ChildProcess {
            child,
            lines,
            reaped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child printed; `None` once its stdout is closed.
    async fn next_line(&mut self, wait: Duration) -> Result<Option<String>, String> {
        tokio::time::timeout(wait, self.lines.recv())
            .await
            .map_err(|_| {
                format!(
                    "child process {} printed nothing for {wait:?}",
                    self.child.id()
                )
            })
    }

    async fn wait(&mut self, wait: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + wait;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = true;
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    return Err(format!(
                        "child process {} did not exit within {wait:?}",
                        self.child.id()
                    ));
                }
                Err(e) => return Err(format!("wait for child process {}: {e}", self.child.id())),
            }
        }
    }

    /// Describes the child's early end.
    async fn died(&mut self, when: &str) -> String {
        match self.wait(Duration::from_secs(5)).await {
            Ok(status) => format!(
                "child process {} exited {when} ({status}); see its stderr above",
                self.child.id()
            ),
            Err(e) => format!(
                "child process {} closed its stdout {when}: {e}",
                self.child.id()
            ),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Both sides

/// Appends `EVENTS_PER_PROCESS` events to the side's stream through the kernel, one at a time.
async fn append_own(kernel: &Kernel, side: Side) -> Result<(), String> {
    for i in 0..EVENTS_PER_PROCESS {
        let event = NewEvent::new(side.event_type, json!({"i": i, "sent_at_ms": now_ms()}));
        let result = kernel
            .events()
            .append(side.stream, ExpectedVersion::Exact(i), vec![event])
            .await
            .map_err(|e| format!("{}: append #{} to {}: {e}", side.name, i + 1, side.stream))?;
        if result.stream_version != i + 1 || result.positions.len() != 1 {
            return Err(format!(
                "{}: append #{} to {} returned {result:?}, expected stream version {} and one position",
                side.name,
                i + 1,
                side.stream,
                i + 1
            ));
        }
    }
    Ok(())
}

/// An event and when (ms since the epoch) the subscriber got it.
struct Received {
    event: RecordedEvent,
    at_ms: u64,
}

/// Reads from the subscription until `received` holds `upto` events.
async fn receive(
    sub: &mut EventSubscription,
    side: Side,
    received: &mut Vec<Received>,
    upto: u64,
) -> Result<(), String> {
    while (received.len() as u64) < upto {
        let next = tokio::time::timeout(EVENT_WAIT, sub.next()).await;
        let failure = match next {
            Ok(Some(Ok(event))) => {
                received.push(Received {
                    event,
                    at_ms: now_ms(),
                });
                continue;
            }
            Ok(Some(Err(e))) => format!("the subscription failed: {e}"),
            Ok(None) => "the subscription ended".to_owned(),
            Err(_) => format!("no event arrived within {EVENT_WAIT:?}"),
        };
        return Err(format!(
            "{}: {failure} after {} of {EXPECTED_EVENTS} events; {}",
            side.name,
            received.len(),
            missing(received)
        ));
    }
    Ok(())
}

/// Checks that nothing more arrives after the expected events.
async fn expect_quiet(sub: &mut EventSubscription, side: Side) -> Result<(), String> {
    match tokio::time::timeout(QUIET_WAIT, sub.next()).await {
        Err(_) => Ok(()),
        Ok(Some(Ok(extra))) => Err(format!(
            "{}: an event beyond the {EXPECTED_EVENTS} expected arrived: {extra:?}",
            side.name
        )),
        Ok(Some(Err(e))) => Err(format!(
            "{}: the subscription failed after all events arrived: {e}",
            side.name
        )),
        Ok(None) => Err(format!(
            "{}: the subscription ended while the kernel was running",
            side.name
        )),
    }
}

/// What has not arrived yet, per stream.
fn missing(received: &[Received]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for side in [PARENT, CHILD] {
        let absent: Vec<u64> = (1..=EVENTS_PER_PROCESS)
            .filter(|v| {
                !received
                    .iter()
                    .any(|r| r.event.stream == side.stream && r.event.version == *v)
            })
            .collect();
        if !absent.is_empty() {
            parts.push(format!(
                "missing versions {absent:?} of {} (appended by the {})",
                side.stream, side.name
            ));
        }
    }
    if parts.is_empty() {
        parts.push("every appended event arrived".to_owned());
    }
    let positions: Vec<u64> = received.iter().map(|r| r.event.position).collect();
    format!("{}; positions received: {positions:?}", parts.join("; "))
}

/// Checks the events a side received; returns a one-line summary.
fn verify(received: &[Received], side: Side) -> Result<String, String> {
    let positions: Vec<u64> = received.iter().map(|r| r.event.position).collect();
    let expected_positions: Vec<u64> = (1..=EXPECTED_EVENTS).collect();
    if positions != expected_positions {
        return Err(format!(
            "{}: received global positions {positions:?}, expected {expected_positions:?} in order",
            side.name
        ));
    }
    let foreign: Vec<&str> = received
        .iter()
        .map(|r| r.event.stream.as_str())
        .filter(|s| *s != PARENT.stream && *s != CHILD.stream)
        .collect();
    if !foreign.is_empty() {
        return Err(format!(
            "{}: events of unexpected streams arrived: {foreign:?}",
            side.name
        ));
    }
    let mut max_other_delay_ms = 0;
    for author in [PARENT, CHILD] {
        let of_stream: Vec<&Received> = received
            .iter()
            .filter(|r| r.event.stream == author.stream)
            .collect();
        let versions: Vec<u64> = of_stream.iter().map(|r| r.event.version).collect();
        let expected_versions: Vec<u64> = (1..=EVENTS_PER_PROCESS).collect();
        if versions != expected_versions {
            return Err(format!(
                "{}: events of {} (appended by the {}) arrived with versions {versions:?}, expected {expected_versions:?}",
                side.name, author.stream, author.name
            ));
        }
        for r in of_stream {
            let e = &r.event;
            if e.event_type != author.event_type || e.payload["i"] != json!(e.version - 1) {
                return Err(format!(
                    "{}: event {} of {} is not the one the {} appended: {e:?}",
                    side.name, e.version, author.stream, author.name
                ));
            }
            if author.name != side.name {
                let sent = e.payload["sent_at_ms"].as_u64().unwrap_or(r.at_ms);
                max_other_delay_ms = max_other_delay_ms.max(r.at_ms.saturating_sub(sent));
            }
        }
    }
    Ok(format!(
        "received all {EXPECTED_EVENTS} events ({EVENTS_PER_PROCESS} own, {EVENTS_PER_PROCESS} from the other process) at positions 1..={EXPECTED_EVENTS}, each once; slowest from the other process: {max_other_delay_ms} ms after its append"
    ))
}
