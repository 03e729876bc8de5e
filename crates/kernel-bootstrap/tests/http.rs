//! The `http` feature end to end: a real server on a loopback port, scraped over TCP.
//! One test per process owns the global metrics recorder, so this file holds one test.
#![cfg(feature = "http")]

use std::sync::Arc;

use kernel_bootstrap::http::{Metrics, router};
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{PutOptions, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `GET path` over a fresh connection: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the test server");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let metrics = Metrics::install().expect("install the recorder");
    assert!(
        Metrics::install().is_ok(),
        "a second install shares the recorder"
    );
    let config = KernelConfig::from_vars([("KERNEL_STORAGE_MODE".to_owned(), "memory".to_owned())])
        .expect("config");
    let kernel = Arc::new(Kernel::boot(config).await.expect("boot"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(kernel.clone(), Some(metrics));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
    assert_eq!(report["healthy"], json!(true));
    assert_eq!(report["components"].as_array().map(Vec::len), Some(4));

    let storage = kernel.storage();
    for i in 0..5 {
        storage
            .put("http", &format!("k{i}"), json!(i), PutOptions::new())
            .await
            .expect("put");
    }
    assert!(storage.get("http", "k1").await.expect("get").is_some());
    storage
        .put("", "k", json!(1), PutOptions::new())
        .await
        .expect_err("an empty namespace is refused");

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "# HELP kernel_operations_total",
        "# TYPE kernel_operations_total counter",
        "# TYPE kernel_operation_duration_seconds histogram",
        "kernel_operation_duration_seconds_bucket{",
        "le=\"0.001\"",
    ] {
        assert!(
            text.contains(expected),
            "/metrics lacks {expected:?}:\n{text}"
        );
    }
    let puts = text
        .lines()
        .find(|l| {
            l.starts_with("kernel_operations_total{")
                && l.contains("operation=\"put\"")
                && l.contains("outcome=\"ok\"")
                && l.contains("role=\"storage\"")
        })
        .unwrap_or_else(|| panic!("no counter of successful puts:\n{text}"));
    assert!(puts.ends_with(" 5"), "five puts counted: {puts}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kernel_operations_total{")
                && l.contains("outcome=\"invalid_input\"")),
        "the refused put is counted by its error code:\n{text}"
    );

    // A shut-down kernel is unhealthy: the route answers 503 with the report.
    kernel.shutdown().await;
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"healthy\":false"), "{body}");
    server.abort();
}
