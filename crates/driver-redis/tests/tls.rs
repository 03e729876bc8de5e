//! `rediss://` against a real TLS-only Redis private to the test (`--port 0 --tls-port`), with
//! a certificate from a throwaway CA made with openssl: verified connections work (documents,
//! events, a subscription), and an unknown CA, a host name mismatch and a clear-text server
//! fail with errors that say which. Missing `openssl` / `redis-server` fail the test with what
//! to install.

use std::time::Duration;

use driver_redis::{RedisConfig, RedisDriver};
use futures::StreamExt;
use kernel_core::{
    ErrorCode, EventFilter, EventStore, ExpectedVersion, NewEvent, PutOptions, ReadStream,
    StorageDriver,
};
use kernel_testkit::private::{PrivateRedis, TestCa};
use kernel_testkit::{STEP_TIMEOUT, unique, within};
use serde_json::json;

fn config(url: &str, ca: &std::path::Path) -> RedisConfig {
    RedisConfig {
        tls_ca_file: Some(ca.to_owned()),
        // Only the test CA: a system root must not make a test pass.
        tls_system_roots: false,
        connect_timeout: Duration::from_secs(3),
        key_prefix: format!("{}:", unique("tls")),
        ..RedisConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_ca_file_verifies_and_works() {
    let ca = TestCa::new();
    let redis = PrivateRedis::start_tls(&ca, &[]).await;
    assert!(redis.url().starts_with("rediss://"));
    let d = RedisDriver::connect(config(redis.url(), &ca.ca_cert()))
        .await
        .unwrap_or_else(|e| panic!("rediss with the test CA must connect: {e}"));
    d.put("ns", "k", json!({"over": "tls"}), PutOptions::new())
        .await
        .unwrap();
    let got = d.get("ns", "k").await.unwrap().expect("the document");
    assert_eq!(got.value, json!({"over": "tls"}));
    let mut sub = d.subscribe(0, EventFilter::all()).await.unwrap();
    d.append(
        "order-1",
        ExpectedVersion::Any,
        vec![NewEvent::new("Placed", json!({"n": 1}))],
    )
    .await
    .unwrap();
    let read = d
        .read_stream("order-1", ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let event = within(STEP_TIMEOUT, "the event over TLS", sub.next())
        .await
        .expect("a subscription item")
        .unwrap();
    assert_eq!(event.event_type, "Placed");
    drop(sub);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_say_which() {
    let ca = TestCa::new();
    // Also on 127.0.0.2, which the certificate does not list (loopback all the same).
    let redis = PrivateRedis::start_tls(&ca, &["--bind", "127.0.0.1", "127.0.0.2"]).await;

    let err = RedisDriver::connect(config(redis.url(), &ca.other_ca_cert()))
        .await
        .expect_err("an unknown CA must fail");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("not trusted"), "{err}");

    let other_name = format!("rediss://127.0.0.2:{}", redis.port());
    let err = RedisDriver::connect(config(&other_name, &ca.ca_cert()))
        .await
        .expect_err("a name the certificate does not list must fail");
    assert_eq!(err.code(), ErrorCode::Config, "{err}");
    assert!(err.to_string().contains("host name mismatch"), "{err}");
    assert!(err.to_string().contains("127.0.0.2"), "{err}");

    // A clear-text Redis on a TLS URL: no silent clear text.
    let plain = PrivateRedis::start_with(&["--appendonly", "no"]).await;
    let url = format!("rediss://:hunter2@127.0.0.1:{}", plain.port());
    let err = RedisDriver::connect(config(&url, &ca.ca_cert()))
        .await
        .expect_err("rediss to a clear-text server must fail");
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    // And a CA file with a clear-text URL cannot be honoured.
    let err = RedisDriver::connect(config(plain.url(), &ca.ca_cert()))
        .await
        .expect_err("a CA file with redis:// must be refused");
    assert_eq!(err.context_value("setting"), Some("redis.tls_ca_file"));

    // An unreadable CA file names the setting.
    let err = RedisDriver::connect(config(
        redis.url(),
        std::path::Path::new("/nonexistent.pem"),
    ))
    .await
    .expect_err("a missing CA file must fail");
    assert_eq!(err.context_value("setting"), Some("redis.tls_ca_file"));
}
