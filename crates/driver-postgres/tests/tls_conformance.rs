//! The whole conformance suite (storage, events, locks, rate limits, through `Arc<dyn Trait>`)
//! over TLS with `verify-full`: a PostgreSQL private to this test (`ssl = on`, a certificate
//! from a throwaway CA made with openssl), every behaviour concurrently inside one test so the
//! server is started once and stopped at the end. Each behaviour gets a database of its own
//! from a small pool of clones of a migrated template, emptied between behaviours (creating
//! one per behaviour writes a whole database each time). The driver trusts only the test CA
//! (no system roots), so a pass means every connection — pool and LISTEN — verified the
//! server; each behaviour's pooled session is checked to be TLS (the server takes plain ones
//! too).

use std::time::Duration;

use driver_postgres::migrations::Migrator;
use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_testkit::postgres::{empty_tables, terminate_sessions};
use kernel_testkit::private::{PrivatePostgres, TestCa};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::NoTls;

/// Behaviours running at once, and so databases in the pool.
const CONCURRENCY: usize = 12;

/// A pooled database lent to one behaviour; back to the pool when dropped.
struct Lent {
    index: usize,
    back: mpsc::UnboundedSender<usize>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        // The pool outlives every behaviour; a send can only fail after the test ended.
        let _ = self.back.send(self.index);
    }
}

/// The server's URL with its database replaced by `db`.
fn url_for(server: &str, db: &str) -> String {
    match server.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("a private server URL ends with its database: {server}"),
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("plain admin connection to the private server: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("admin connection ended: {e}");
        }
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_suite_over_verify_full_tls() {
    let ca = TestCa::new();
    let pg = PrivatePostgres::start_tls(&ca).await;
    let server = pg.url().to_owned();
    // The template: the kernel's schema, migrated once (over a plain admin connection: the
    // private server accepts both; what is under test is the driver's TLS).
    let client = admin(&server).await;
    // A throwaway server: durability buys nothing here, and each behaviour's CREATE DATABASE
    // writes the whole template.
    // (ALTER SYSTEM may not share a statement batch: each on its own.)
    for setting in [
        "ALTER SYSTEM SET fsync = off",
        "ALTER SYSTEM SET synchronous_commit = off",
        "ALTER SYSTEM SET full_page_writes = off",
        "SELECT pg_reload_conf()",
    ] {
        client
            .batch_execute(setting)
            .await
            .unwrap_or_else(|e| panic!("{setting} on the private server: {e}"));
    }
    client
        .batch_execute("CREATE DATABASE tls_template")
        .await
        .unwrap_or_else(|e| panic!("create the template: {e}"));
    {
        let template = admin(&url_for(&server, "tls_template")).await;
        Migrator::new()
            .up(&template)
            .await
            .unwrap_or_else(|e| panic!("migrate the template: {e}"));
    }
    let mut databases = Vec::with_capacity(CONCURRENCY);
    let (back, free) = mpsc::unbounded_channel();
    for i in 0..CONCURRENCY {
        let name = format!("tls_{i}");
        client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE tls_template"))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        databases.push(name);
        back.send(i)
            .unwrap_or_else(|_| unreachable!("the receiver is here"));
    }
    let free = Mutex::new(free);
    let ca_file = ca.ca_cert();
    let (server, client, databases, free, back, ca_file) =
        (&server, &client, &databases, &free, &back, &ca_file);
    let factory = move || async move {
        let index = free
            .lock()
            .await
            .recv()
            .await
            .unwrap_or_else(|| unreachable!("the sender is here"));
        let name = &databases[index];
        // What the last behaviour on it left: its sessions (the emptying one too), its rows.
        terminate_sessions(client, name)
            .await
            .unwrap_or_else(|e| panic!("end the sessions on {name}: {e}"));
        empty_tables(&admin(&url_for(server, name)).await)
            .await
            .unwrap_or_else(|e| panic!("empty {name}: {e}"));
        // No sslmode in the URL and a CA file: verify-full.
        let mut config = PostgresConfig {
            tls_ca_file: Some(ca_file.clone()),
            tls_system_roots: false,
            pool_size: 3,
            migrate_on_boot: false,
            statement_timeout: Duration::from_secs(20),
            ..PostgresConfig::new(url_for(server, name))
        };
        config.subscription.poll_interval = Duration::from_millis(200);
        let driver = PostgresDriver::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect with verify-full to {name}: {e}"));
        // What the behaviour runs on is a TLS session (the server also takes plain ones).
        let tls: bool = driver
            .pool()
            .get()
            .await
            .unwrap_or_else(|e| panic!("a pooled connection to {name}: {e}"))
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("read pg_stat_ssl on {name}: {e}"))
            .get(0);
        assert!(tls, "the driver's pooled session on {name} is not TLS");
        (
            driver,
            Lent {
                index,
                back: back.clone(),
            },
        )
    };
    let mut runs = kernel_testkit::suite_runs!(storage, factory());
    runs.extend(kernel_testkit::suite_runs!(events, factory()));
    runs.extend(kernel_testkit::suite_runs!(lock, factory()));
    runs.extend(kernel_testkit::suite_runs!(rate_limit, factory()));
    let started = std::time::Instant::now();
    kernel_testkit::run_all(runs, CONCURRENCY).await;
    println!(
        "whole suite over TLS: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(pg);
}
