//! `kernel_bootstrap::http::router` (what `examples/health_server.rs` serves) over real HTTP: 200
//! with the JSON report when healthy, 503 when not.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kernel_bootstrap::{Kernel, KernelConfig};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Serves the example on an ephemeral port; the server stops when the sender drops.
async fn start(kernel: Arc<Kernel>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async move {
            // Either a send or the sender dropping means stop.
            let _ = stopped.await;
        };
        let app = kernel_bootstrap::http::router(kernel, None);
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            panic!("health server failed: {e}");
        }
    });
    (addr, stop)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("client connection ended: {e}");
        }
    });
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"));
    (status, json)
}

#[tokio::test]
async fn healthy_kernel_answers_200_with_the_report() {
    let kernel = Arc::new(Kernel::boot(KernelConfig::default()).await.unwrap());
    let (addr, _stop) = start(kernel.clone()).await;
    let (status, report) = get(addr, "/health").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["healthy"], Value::Bool(true));
    let components = report["components"].as_array().unwrap();
    let names: Vec<_> = components
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["storage", "events", "locks", "rate_limits"]);
    assert!(
        components
            .iter()
            .all(|c| c["healthy"] == Value::Bool(true) && c["backend"] == "memory")
    );
    assert!(components[0]["latency_ms"].as_f64().is_some());
    kernel.shutdown().await;
}

#[tokio::test]
async fn shut_down_kernel_answers_503() {
    let kernel = Arc::new(Kernel::boot(KernelConfig::default()).await.unwrap());
    let (addr, _stop) = start(kernel.clone()).await;
    assert_eq!(get(addr, "/health").await.0, 200);
    kernel.shutdown().await;
    let (status, report) = get(addr, "/health").await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["healthy"], Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_answers_503() {
    // Locks and rate limits on the Redis test server, reached through a proxy the test cuts.
    let server = kernel_testkit::redis::RedisTestServer::start().await;
    let (proxy, proxied) = kernel_testkit::proxy::FaultProxy::in_front_of(server.url(), 6379)
        .await
        .unwrap();
    let config = KernelConfig::from_vars(kernel_integration_tests::vars(&[
        ("KERNEL_STORAGE_MODE", "memory"),
        ("KERNEL_BACKENDS_LOCKS", "redis"),
        ("KERNEL_BACKENDS_RATE_LIMITS", "redis"),
        ("REDIS_URL", &proxied),
        (
            "KERNEL_REDIS_KEY_PREFIX",
            server.prefix().trim_end_matches(':'),
        ),
        ("KERNEL_REDIS_CONNECT_TIMEOUT_MS", "1000"),
        ("KERNEL_REDIS_OPERATION_TIMEOUT_MS", "500"),
    ]))
    .unwrap();
    let kernel = Arc::new(Kernel::boot(config).await.unwrap());
    let (addr, _stop) = start(kernel.clone()).await;
    let (status, report) = get(addr, "/health").await;
    assert_eq!(status, 200, "{report}");

    proxy.refuse(true);
    proxy.cut();
    // The next probes fail (connection gone, reconnects refused) within the probe timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (status, report) = loop {
        let (status, report) = get(addr, "/health").await;
        if status != 200 || std::time::Instant::now() > deadline {
            break (status, report);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["healthy"], Value::Bool(false));
    for c in report["components"].as_array().unwrap() {
        let on_redis = c["backend"] == "redis";
        assert_eq!(c["healthy"], Value::Bool(!on_redis), "{c}");
        if on_redis {
            assert!(c["error"].as_str().is_some_and(|e| !e.is_empty()), "{c}");
        }
    }
    kernel.shutdown().await;
}
