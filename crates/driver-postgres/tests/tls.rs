//! TLS against a real PostgreSQL private to the test (`ssl = on`, certificate from a throwaway
//! CA made with openssl, for 127.0.0.1 and localhost): `verify-full` with the CA file works
//! (documents, events, a subscription over the TLS LISTEN connection, migrations through
//! `connect_single`), and an unknown CA, a host name mismatch and `require` against a server
//! without TLS fail with errors that say which; `prefer` falls back to plain. Missing
//! `openssl` / `initdb` fail the test with what to install.

use std::time::Duration;

use driver_postgres::tls::{SslMode, connect_single};
use driver_postgres::{PostgresConfig, PostgresDriver};
use futures::StreamExt;
use kernel_core::{
    ErrorCode, EventFilter, EventStore, ExpectedVersion, NewEvent, PutOptions, ReadStream,
    StorageDriver,
};
use kernel_testkit::private::{PrivatePostgres, TestCa};
use kernel_testkit::{STEP_TIMEOUT, within};
use serde_json::json;

fn config(url: String, ca: Option<&std::path::Path>) -> PostgresConfig {
    PostgresConfig {
        tls_ca_file: ca.map(|p| p.to_owned()),
        // Only the test CA: a system root must not make a test pass.
        tls_system_roots: false,
        pool_size: 4,
        connect_timeout: Duration::from_secs(3),
        ..PostgresConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_private_server() {
    let ca = TestCa::new();
    let pg = PrivatePostgres::start_tls(&ca).await;
    let base = pg.url().to_owned();

    // verify-full with the CA file: the pool, migrations on boot and the LISTEN connection.
    let d = PostgresDriver::connect(config(
        format!("{base}?sslmode=verify-full"),
        Some(&ca.ca_cert()),
    ))
    .await
    .unwrap_or_else(|e| panic!("verify-full with the test CA must connect: {e}"));
    let client = d.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the pooled connection must use TLS");
    drop(client);
    d.put("ns", "k", json!({"over": "tls"}), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(
        d.get("ns", "k").await.unwrap().expect("the document").value,
        json!({"over": "tls"})
    );
    let mut sub = d.subscribe(0, EventFilter::all()).await.unwrap();
    d.append(
        "order-1",
        ExpectedVersion::Any,
        vec![NewEvent::new("Placed", json!({"n": 1}))],
    )
    .await
    .unwrap();
    assert_eq!(
        d.read_stream("order-1", ReadStream::forward())
            .await
            .unwrap()
            .len(),
        1
    );
    // Every session of the driver, the LISTEN one included once it is up, is TLS.
    let client = d.pool().get().await.unwrap();
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name LIKE 'kernel%' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "a driver session without TLS");
    drop(client);
    let event = within(STEP_TIMEOUT, "the event over TLS", sub.next())
        .await
        .expect("a subscription item")
        .unwrap();
    assert_eq!(event.event_type, "Placed");
    drop(sub);
    d.shutdown().await;

    // sslrootcert in the URL, verify-ca with a name the certificate does not list, and the
    // single connection of migrations / kernelctl.
    let url = format!(
        "postgres://postgres@wrong.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
        pg.port(),
        ca.ca_cert().display()
    );
    let single = config(url, None);
    assert_eq!(single.tls().unwrap().mode(), SslMode::VerifyCa);
    let (client, task) = connect_single(&single)
        .await
        .unwrap_or_else(|e| panic!("verify-ca checks the chain only: {e}"));
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    task.await.unwrap();

    // Unknown CA.
    let err = PostgresDriver::connect(config(
        format!("{base}?sslmode=verify-full"),
        Some(&ca.other_ca_cert()),
    ))
    .await
    .expect_err("an unknown CA must fail");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("not trusted"), "{err}");

    // Name mismatch: the TLS name is the host, the address another.
    let url = format!(
        "postgres://postgres:hunter2@wrong.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full",
        pg.port()
    );
    let err = PostgresDriver::connect(config(url, Some(&ca.ca_cert())))
        .await
        .expect_err("a name the certificate does not list must fail");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("host name mismatch"), "{err}");
    assert!(err.to_string().contains("wrong.invalid"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls() {
    let ca = TestCa::new();
    // Private: the shared server may well have ssl = on (Debian turns it on by default).
    let plain = PrivatePostgres::start().await;
    let shared = plain.url().to_owned();
    let sep = '?';
    // require: no silent clear text.
    let err = connect_single(&config(
        format!("{shared}{sep}sslmode=require"),
        Some(&ca.ca_cert()),
    ))
    .await
    .expect_err("require against a server without TLS must fail");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    // prefer: falls back to plain text.
    let (client, task) = connect_single(&config(
        format!("{shared}{sep}sslmode=prefer"),
        Some(&ca.ca_cert()),
    ))
    .await
    .unwrap_or_else(|e| panic!("prefer must fall back to plain text: {e}"));
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    task.await.unwrap();
    // An unreadable CA file names the setting.
    let err = connect_single(&config(
        format!("{shared}{sep}sslmode=verify-full"),
        Some(std::path::Path::new("/nonexistent/ca.pem")),
    ))
    .await
    .expect_err("a missing CA file must fail");
    assert_eq!(err.context_value("setting"), Some("postgres.tls_ca_file"));
}
