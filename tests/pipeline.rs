//! The asynchronous change pipeline through the kernel and the public API: order per key,
//! backpressure, failure reporting, and draining at shutdown.

use std::sync::Arc;
use std::time::Duration;

use driver_memory::MemoryDriver;
use futures::StreamExt;
use kernel_bootstrap::layers::fault::flaky;
use kernel_bootstrap::{Change, ChangePipeline, Kernel, KernelConfig, PipelineConfig, SubmitError};
use kernel_core::{
    ErrorCode, EventFilter, ExpectedVersion, NewEvent, PutOptions, ReadStream, StorageDriver, json,
};
use kernel_integration_tests::{LogCapture, vars};

async fn kernel(pairs: &[(&str, &str)]) -> Kernel {
    Kernel::boot(KernelConfig::from_vars(vars(pairs)).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn applies_in_order_per_key_and_stream() {
    let kernel = kernel(&[
        ("KERNEL_PIPELINE_CAPACITY", "16"),
        ("KERNEL_PIPELINE_WORKERS", "3"),
    ])
    .await;
    let p = kernel.pipeline();
    assert_eq!(
        p.config(),
        PipelineConfig {
            capacity: 16,
            workers: 3
        }
    );
    for i in 0..200u64 {
        p.submit(Change::put("cart", format!("c{}", i % 4), json!(i)))
            .await
            .unwrap();
        p.submit(Change::append(
            format!("cart-{}", i % 4),
            ExpectedVersion::Exact(i / 4),
            vec![NewEvent::new("Added", json!(i))],
        ))
        .await
        .unwrap();
    }
    let failures = p.flush().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(p.pending(), 0);
    for c in 0..4u64 {
        let entry = kernel
            .storage()
            .get("cart", &format!("c{c}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.value, json!(196 + c), "the last put wins");
        assert_eq!(entry.version, 50);
        let events = kernel
            .events()
            .read_stream(&format!("cart-{c}"), ReadStream::forward())
            .await
            .unwrap();
        let payloads: Vec<u64> = events.iter().map(|e| e.payload.as_u64().unwrap()).collect();
        let expected: Vec<u64> = (0..200).filter(|i| i % 4 == c).collect();
        assert_eq!(payloads, expected);
    }
    kernel.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_pushes_back() {
    let store = Arc::new(flaky(MemoryDriver::new()));
    store.faults().set_delay(Duration::from_millis(100));
    let p = Arc::new(ChangePipeline::new(
        store.clone(),
        store.clone(),
        PipelineConfig {
            capacity: 3,
            workers: 2,
        },
    ));
    for i in 0..3 {
        p.try_submit(Change::put("bp", format!("k{i}"), json!(i)))
            .unwrap();
    }
    assert_eq!(p.pending(), 3);
    let refused = p.try_submit(Change::put("bp", "k3", json!(3))).unwrap_err();
    assert!(matches!(refused, SubmitError::Full(_)), "{refused}");
    assert_eq!(refused.into_change(), Change::put("bp", "k3", json!(3)));
    let e: kernel_core::Error = p
        .try_submit(Change::put("bp", "k3", json!(3)))
        .unwrap_err()
        .into();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(e.is_retryable());

    let waiting = tokio::spawn({
        let p = p.clone();
        async move { p.submit(Change::put("bp", "k3", json!(3))).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!waiting.is_finished(), "submit waits for room");
    waiting.await.unwrap().unwrap();
    assert!(p.flush().await.is_empty());
    assert_eq!(store.count("bp", None).await.unwrap(), 4);
}

#[tokio::test]
async fn every_failure_is_returned_by_flush_and_logged() {
    let logs = LogCapture::start();
    let kernel = kernel(&[("KERNEL_LIMITS_MAX_VALUE_BYTES", "64")]).await;
    let p = kernel.pipeline();
    let good = p
        .submit(Change::put("f", "good", json!("small")))
        .await
        .unwrap();
    let too_big = p
        .submit(Change::put("f", "big", json!("x".repeat(500))))
        .await
        .unwrap();
    let cas = p
        .submit(Change::put_with(
            "f",
            "good",
            json!("cas"),
            PutOptions::new().if_version(9),
        ))
        .await
        .unwrap();
    let conflict = p
        .submit(Change::append(
            "ledger-1",
            ExpectedVersion::StreamExists,
            vec![NewEvent::new("Posted", json!({}))],
        ))
        .await
        .unwrap();
    let mut failures = p.flush().await;
    failures.sort_by_key(|f| f.id);
    let seen: Vec<(u64, ErrorCode)> = failures.iter().map(|f| (f.id, f.error.code())).collect();
    assert_eq!(
        seen,
        vec![
            (too_big, ErrorCode::InvalidInput),
            (cas, ErrorCode::Conflict),
            (conflict, ErrorCode::Conflict),
        ]
    );
    assert!(good < too_big);
    assert!(p.flush().await.is_empty(), "each failure is returned once");
    assert_eq!(
        kernel
            .storage()
            .get("f", "good")
            .await
            .unwrap()
            .unwrap()
            .value,
        json!("small")
    );
    let text = logs.text();
    for f in &failures {
        assert!(
            text.contains(&format!("change_id={}", f.id)),
            "failure {} not logged:\n{text}",
            f.id
        );
    }
    // Refused at submit, not silently queued.
    let refused = p
        .submit(Change::put("bad namespace", "k", json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(refused, SubmitError::Invalid(..)));
    kernel.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_the_pipeline_and_ends_subscriptions() {
    // Built over a memory driver the test keeps, to read what was stored once the kernel
    // itself refuses every call.
    let memory = MemoryDriver::new();
    let kernel = kernel_bootstrap::KernelBuilder::new()
        .backend(
            kernel_bootstrap::Backend::all("memory", memory.clone()).on_shutdown({
                let memory = memory.clone();
                move || {
                    memory.shutdown();
                    Box::pin(async { Ok(()) })
                }
            }),
        )
        .pipeline(PipelineConfig {
            capacity: 1000,
            ..PipelineConfig::default()
        })
        .build()
        .await
        .unwrap();
    let mut feed = kernel
        .events()
        .subscribe(0, EventFilter::all())
        .await
        .unwrap();
    let p = kernel.pipeline();
    // On this current-thread runtime the lanes cannot run until we yield: everything submitted
    // is still queued when shutdown starts.
    for i in 0..300u64 {
        p.try_submit(Change::put("drain", format!("k{i}"), json!(i)))
            .unwrap();
    }
    p.try_submit(Change::append(
        "drain-1",
        ExpectedVersion::NoStream,
        vec![NewEvent::new("Drained", json!({}))],
    ))
    .unwrap();
    let failing = p
        .try_submit(Change::append(
            "drain-2",
            ExpectedVersion::Exact(7),
            vec![NewEvent::new("Never", json!({}))],
        ))
        .unwrap();
    assert_eq!(p.pending(), 302);

    let failures = kernel.shutdown().await;
    assert_eq!(p.pending(), 0);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].id, failing);
    assert_eq!(failures[0].error.code(), ErrorCode::Conflict);
    // Every change was applied before the backend closed (memory data stays readable).
    assert_eq!(memory.count("drain", None).await.unwrap(), 300);
    assert_eq!(
        kernel_core::EventStore::head_position(&memory)
            .await
            .unwrap(),
        1
    );
    // The kernel itself now refuses every call, saying why.
    let e = kernel.storage().count("drain", None).await.unwrap_err();
    assert!(e.to_string().contains("shut down"), "{e}");
    // The subscription yields what is stored, then ends.
    let first = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.stream, "drain-1");
    let end = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap();
    assert!(end.is_none(), "the subscription ends at shutdown");
    // Intake is closed; a second shutdown is harmless.
    assert!(matches!(
        p.submit(Change::delete("drain", "k1")).await,
        Err(SubmitError::Closed(_))
    ));
    assert!(kernel.shutdown().await.is_empty());
    assert!(!kernel.health().await.healthy);
}
