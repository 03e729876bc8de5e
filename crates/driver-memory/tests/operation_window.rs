//! The operation window: an id is remembered for the configured time, then forgotten.

use std::time::Duration;

use driver_memory::MemoryDriver;
use kernel_core::{ErrorCode, OperationId, PutOptions, StorageDriver, Write, json};

#[tokio::test]
async fn an_id_is_forgotten_after_the_window() {
    let driver = MemoryDriver::new()
        .with_operation_window(Duration::from_millis(200))
        .unwrap();
    let id = OperationId::new("op").unwrap();
    let write = Write::put("k", json!(1), PutOptions::new());
    assert!(
        !driver
            .write_once("ns", &id, write.clone())
            .await
            .unwrap()
            .replayed
    );
    assert!(
        driver
            .write_once("ns", &id, write.clone())
            .await
            .unwrap()
            .replayed
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(driver.operation("ns", &id).await.unwrap(), None);
    let again = driver.write_once("ns", &id, write).await.unwrap();
    assert!(!again.replayed, "past the window the id names a new write");
    assert_eq!(driver.get("ns", "k").await.unwrap().unwrap().version, 2);
}

#[test]
fn a_zero_window_is_refused() {
    let e = MemoryDriver::new()
        .with_operation_window(Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Config);
    assert_eq!(e.context_value("setting"), Some("operation_window_ms"));
}
