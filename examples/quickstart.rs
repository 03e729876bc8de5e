//! The quick start: boots a kernel from the environment (in-process driver when nothing is set)
//! and walks through documents, events, a lock and a rate limit.
//!
//! ```text
//! cargo run --example quickstart
//! # the same on an embedded, persistent SQLite file (run it twice: the data stays)
//! KERNEL_STORAGE_MODE=sqlite KERNEL_SQLITE_PATH=/tmp/kernel.db cargo run --example quickstart
//! ```

use std::time::Duration;

use futures::StreamExt;
use kernel_bootstrap::Kernel;
use kernel_core::{
    EventFilter, EventStoreExt, ExpectedVersion, Filter, ListOptions, LockExt, NewEvent,
    PutOptions, Query, Quota, StorageExt, json,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Book {
    title: String,
    author: String,
    year: u32,
    tags: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kernel = Kernel::from_env().await?;
    let backends: Vec<String> = kernel
        .health()
        .await
        .components
        .iter()
        .map(|c| format!("{}={}", c.component, c.backend))
        .collect();
    println!("kernel booted: {}", backends.join(", "));

    documents(&kernel).await?;
    events(&kernel).await?;
    lock(&kernel).await?;
    rate_limit(&kernel).await?;

    let health = kernel.health().await;
    println!("\nhealth: {}", serde_json::to_string(&health)?);
    kernel.shutdown().await;
    println!("shut down cleanly");
    Ok(())
}

async fn documents(kernel: &Kernel) -> kernel_core::Result<()> {
    println!("\n== documents ==");
    let store = kernel.storage();
    let books = [
        ("dune", "Dune", "Frank Herbert", 1965, vec!["sf", "classic"]),
        (
            "neuromancer",
            "Neuromancer",
            "William Gibson",
            1984,
            vec!["sf", "cyberpunk"],
        ),
        ("emma", "Emma", "Jane Austen", 1815, vec!["classic"]),
    ];
    for (key, title, author, year, tags) in books {
        let book = Book {
            title: title.into(),
            author: author.into(),
            year,
            tags: tags.into_iter().map(String::from).collect(),
        };
        let entry = store.put_as("books", key, &book, PutOptions::new()).await?;
        println!("put books/{key} -> version {}", entry.version);
    }

    // Compare-and-set: only the writer that saw version 1 wins.
    let current = store.get("books", "dune").await?.expect("just written");
    let updated = store
        .put(
            "books",
            "dune",
            json!({"title": "Dune", "author": "Frank Herbert", "year": 1965, "tags": ["sf", "classic", "desert"]}),
            PutOptions::new().if_version(current.version),
        )
        .await?;
    println!(
        "compare-and-set books/dune: version {} -> {}",
        current.version, updated.version
    );
    let stale = store
        .put(
            "books",
            "dune",
            json!({}),
            PutOptions::new().if_version(current.version),
        )
        .await
        .expect_err("a stale version must be refused");
    println!("stale compare-and-set refused: {stale}");

    let keys = store
        .list_keys("books", &ListOptions::new().limit(10))
        .await?;
    println!("list books: {keys:?}");

    let classics = store
        .query(
            "books",
            &Query::new()
                .filter(Filter::contains("tags", "classic"))
                .sort_asc("year"),
        )
        .await?;
    let titles: Vec<&str> = classics
        .iter()
        .filter_map(|e| e.value["title"].as_str())
        .collect();
    println!("query tags contains \"classic\", by year: {titles:?}");
    let book: Option<Book> = store.get_as("books", "neuromancer").await?;
    println!("typed get: {book:?}");
    Ok(())
}

async fn events(kernel: &Kernel) -> kernel_core::Result<()> {
    println!("\n== events ==");
    let events = kernel.events();
    // A persistent backend (SQLite, PostgreSQL) keeps the accounts of earlier runs: open the
    // first account number still free, so the walk-through runs again on the same store.
    let mut number = 42;
    while events.stream_version(&format!("account-{number}")).await? > 0 {
        number += 1;
    }
    let stream = format!("account-{number}");
    let start = events.head_position().await?;
    let mut feed = events
        .subscribe(start, EventFilter::all().category("account"))
        .await?;

    let opened = events
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Opened", json!({"owner": "Ada"}))],
        )
        .await?;
    println!(
        "append {stream} Opened -> stream version {}",
        opened.stream_version
    );
    let deposits: Vec<NewEvent> = [100, 250]
        .into_iter()
        .map(|amount| NewEvent::new("Deposited", json!({"amount": amount})))
        .collect();
    let result = events
        .append(&stream, ExpectedVersion::Exact(1), deposits.clone())
        .await?;
    println!(
        "append 2 deposits -> versions {:?}, positions {:?}",
        result.versions(),
        result.positions
    );
    let again = events
        .append(&stream, ExpectedVersion::Exact(1), deposits)
        .await?;
    println!(
        "retried append is idempotent: written={}, positions {:?}",
        again.written, again.positions
    );

    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(2), feed.next()).await {
            Ok(Some(Ok(e))) => println!(
                "subscriber got #{} {} v{} {}",
                e.position, e.stream, e.version, e.event_type
            ),
            other => println!("subscriber stopped early: {other:?}"),
        }
    }

    let balance: i64 = events
        .read_stream(&stream, Default::default())
        .await?
        .iter()
        .filter_map(|e| e.payload["amount"].as_i64())
        .sum();
    events
        .save_snapshot(&stream, 3, json!({"balance": balance}))
        .await?;
    events
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            vec![NewEvent::new("Deposited", json!({"amount": 5}))],
        )
        .await?;
    let history = events.load_aggregate(&stream).await?;
    println!(
        "aggregate: snapshot {:?} + {} event(s) after it, now at version {}",
        history.snapshot.as_ref().map(|s| (&s.state, s.version)),
        history.events.len(),
        history.version()
    );
    Ok(())
}

async fn lock(kernel: &Kernel) -> kernel_core::Result<()> {
    println!("\n== lock ==");
    let locks = kernel.locks();
    let first = locks
        .try_acquire("report-job", Duration::from_secs(10))
        .await?
        .expect("the lock is free");
    println!(
        "acquired report-job with fencing token {}",
        first.fencing_token
    );
    let second = locks
        .try_acquire("report-job", Duration::from_secs(10))
        .await?;
    println!(
        "second try while held: {}",
        if second.is_some() {
            "acquired?!"
        } else {
            "busy"
        }
    );
    locks.release(&first).await?;
    let token = locks
        .with_lock(
            "report-job",
            Duration::from_secs(10),
            Duration::from_secs(1),
            |lease| async move { Ok(lease.fencing_token) },
        )
        .await?;
    println!("with_lock ran under fencing token {token} (strictly greater) and released");
    Ok(())
}

async fn rate_limit(kernel: &Kernel) -> kernel_core::Result<()> {
    println!("\n== rate limit ==");
    let limiter = kernel.rate_limiter();
    let quota = Quota::per_second(3);
    for i in 1..=4 {
        let d = limiter.check("api:ada", &quota, 1).await?;
        println!(
            "request {i}: allowed={} remaining={} retry_after={:?}",
            d.allowed, d.remaining, d.retry_after
        );
    }
    Ok(())
}
