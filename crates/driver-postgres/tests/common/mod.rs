//! Shared set-up of the driver's integration tests: a per-test database cloned from a migrated
//! template, and a driver on it.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use driver_postgres::migrations::Migrator;
use driver_postgres::{PostgresConfig, PostgresDriver};
use kernel_testkit::postgres::{TestDatabase, database_from_template};
use tokio_postgres::NoTls;

/// A fresh database holding the migrated kernel schema; dropped with the guard.
pub async fn database() -> TestDatabase {
    let migrator = Migrator::new();
    database_from_template(&migrator.fingerprint(), |url| async move {
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(connection);
        let applied = migrator.up(&client).await.map_err(|e| e.to_string());
        drop(client);
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        applied.map(|_| ())
    })
    .await
}

/// Test settings: a small pool, short timeouts, a fast poll.
pub fn config(url: &str) -> PostgresConfig {
    let mut c = PostgresConfig::new(url);
    c.pool_size = 6;
    c.migrate_on_boot = false;
    c.statement_timeout = Duration::from_secs(20);
    c.subscription.poll_interval = Duration::from_millis(200);
    c
}

/// A driver on a fresh database, and the database's guard.
pub async fn driver() -> (PostgresDriver, TestDatabase) {
    let db = database().await;
    let driver = match PostgresDriver::connect(config(db.url())).await {
        Ok(d) => d,
        Err(e) => panic!("connect to the test database: {e}"),
    };
    (driver, db)
}

/// A raw client on a database, for checks behind the driver's back.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(c) => c,
        Err(e) => panic!("raw connect: {e}"),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("raw connection ended: {e}");
        }
    });
    client
}
