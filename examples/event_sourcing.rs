//! Event sourcing on PostgreSQL: a bank account whose state is rebuilt from its events, with a
//! snapshot every few events so rebuilding never replays the whole history.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p kernel-examples --example event_sourcing
//! ```
//!
//! Every command loads the aggregate (latest snapshot + the events after it), decides, and
//! appends with the version it loaded as the expected version: a concurrent writer makes the
//! append fail with `Conflict` instead of silently interleaving, and the command is retried on
//! fresh state.

use std::time::Duration;

use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_core::{
    AggregateHistory, ErrorCode, EventFilter, EventStore, EventStoreExt, ExpectedVersion, NewEvent,
    RecordedEvent, Result,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Take a snapshot whenever this many events were appended since the last one.
const SNAPSHOT_EVERY: u64 = 5;

/// The aggregate's state: what snapshots store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Account {
    balance: i64,
    transactions: u64,
}

impl Account {
    fn apply(&mut self, event: &RecordedEvent) {
        let amount = event.payload["amount"].as_i64().unwrap_or(0);
        match event.event_type.as_str() {
            "Deposited" => self.balance += amount,
            "Withdrawn" => self.balance -= amount,
            other => eprintln!("ignoring unknown event type {other}"),
        }
        self.transactions += 1;
    }

    /// Snapshot state plus the events after it.
    fn rebuild(history: &AggregateHistory) -> Account {
        let mut account: Account = history
            .snapshot
            .as_ref()
            .and_then(|s| serde_json::from_value(s.state.clone()).ok())
            .unwrap_or_default();
        for e in &history.events {
            account.apply(e);
        }
        account
    }
}

enum Command {
    Deposit(i64),
    Withdraw(i64),
}

/// Load, decide, append under the loaded version; retry on a concurrent write.
async fn handle(store: &PostgresDriver, stream: &str, command: &Command) -> Result<Account> {
    loop {
        let history = store.load_aggregate(stream).await?;
        let version = history.version();
        let mut account = Account::rebuild(&history);
        let event = match *command {
            Command::Deposit(amount) => NewEvent::new("Deposited", json!({ "amount": amount })),
            Command::Withdraw(amount) if amount > account.balance => {
                println!(
                    "  refused: withdrawing {amount} from a balance of {}",
                    account.balance
                );
                return Ok(account);
            }
            Command::Withdraw(amount) => NewEvent::new("Withdrawn", json!({ "amount": amount })),
        };
        match store
            .append(stream, ExpectedVersion::Exact(version), vec![event])
            .await
        {
            Ok(result) => {
                let appended = store
                    .read_stream(stream, kernel_core::ReadStream::forward().from(version + 1))
                    .await?;
                for e in &appended {
                    account.apply(e);
                }
                let since_snapshot =
                    result.stream_version - history.snapshot.as_ref().map_or(0, |s| s.version);
                if since_snapshot >= SNAPSHOT_EVERY {
                    let state = serde_json::to_value(&account).map_err(|e| {
                        kernel_core::Error::internal("account state does not serialize")
                            .with_source(e)
                    })?;
                    store
                        .save_snapshot(stream, result.stream_version, state)
                        .await?;
                    println!("  snapshot at version {}", result.stream_version);
                }
                return Ok(account);
            }
            Err(e) if e.code() == ErrorCode::Conflict => {
                println!("  concurrent write ({e}); retrying on fresh state");
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| {
        kernel_core::Error::config(
            "DATABASE_URL",
            "set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres",
        )
    })?;
    let config = PostgresConfig {
        pool_size: 4,
        statement_timeout: Duration::from_secs(10),
        ..PostgresConfig::new(url)
    };
    println!("connecting to {}", config.redacted_url());
    let store = PostgresDriver::connect(config).await?;

    let stream = format!("account-{}", kernel_core::Uuid::new_v4().simple());
    let mut live = store
        .subscribe(
            store.head_position().await?,
            EventFilter::all().category("account"),
        )
        .await?;

    let commands = [
        Command::Deposit(100),
        Command::Withdraw(30),
        Command::Deposit(50),
        Command::Withdraw(500),
        Command::Deposit(20),
        Command::Withdraw(40),
        Command::Deposit(10),
        Command::Deposit(5),
    ];
    for command in &commands {
        let account = handle(&store, &stream, command).await?;
        println!(
            "{stream}: balance {} after {} transactions",
            account.balance, account.transactions
        );
    }

    let history = store.load_aggregate(&stream).await?;
    println!(
        "rebuilt from snapshot at version {:?} plus {} events: {:?}",
        history.snapshot.as_ref().map(|s| s.version),
        history.events.len(),
        Account::rebuild(&history)
    );

    // The subscription saw every event, in order, with its global position.
    use futures::StreamExt;
    for _ in 0..history.version() {
        match tokio::time::timeout(Duration::from_secs(5), live.next()).await {
            Ok(Some(Ok(e))) => println!(
                "  live: #{} {} v{} {}",
                e.position, e.event_type, e.version, e.payload
            ),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => break,
        }
    }
    store.shutdown().await;
    Ok(())
}
