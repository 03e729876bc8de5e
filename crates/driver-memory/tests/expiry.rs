//! Expired documents leave memory without a walk over every entry: writes sweep what is due
//! (documents with a TTL only), and a rewritten document is not removed by its old expiry.

use std::time::Duration;

use driver_memory::MemoryDriver;
use kernel_core::{PutOptions, StorageDriver, json};

async fn stored(d: &MemoryDriver) -> String {
    d.status()
        .await
        .unwrap()
        .details
        .get("entries_stored")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn writes_sweep_expired_documents_and_keep_rewritten_ones() {
    let d = MemoryDriver::new();
    let short = PutOptions::new().ttl(Duration::from_millis(20));
    d.put("a", "gone", json!(1), short.clone()).await.unwrap();
    d.put("b", "gone", json!(1), short.clone()).await.unwrap();
    // Rewritten without a TTL before its first expiry comes due: it must stay.
    d.put("a", "kept", json!(1), short).await.unwrap();
    d.put("a", "kept", json!(2), PutOptions::new())
        .await
        .unwrap();
    d.put("a", "plain", json!(1), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(stored(&d).await, "4");
    tokio::time::sleep(Duration::from_millis(40)).await;
    // Any write sweeps what is due, in every namespace.
    d.put("c", "x", json!(1), PutOptions::new()).await.unwrap();
    assert_eq!(stored(&d).await, "3", "two expired documents removed");
    assert_eq!(d.get("a", "kept").await.unwrap().unwrap().value, json!(2));
    assert_eq!(d.purge_expired().unwrap(), 0, "nothing left to purge");
}

#[tokio::test]
async fn a_put_over_an_expired_entry_creates_the_key_anew() {
    let d = MemoryDriver::new();
    let short = PutOptions::new().ttl(Duration::from_millis(10));
    d.put("a", "k", json!(1), short.clone()).await.unwrap();
    d.put("a", "k", json!(2), short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // `get` sees nothing, and a put over the expired (not yet swept) entry starts at 1.
    assert!(d.get("a", "k").await.unwrap().is_none());
    let e = d
        .put("a", "k", json!(3), PutOptions::new().if_absent())
        .await
        .unwrap();
    assert_eq!((e.version, e.expires_at), (1, None));
}
