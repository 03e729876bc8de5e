//! `kernel-profile`: a fixed number of memory-driver calls, for instruction counts under
//! `valgrind --tool=callgrind` (wall-clock timings on a shared machine are noise; instruction
//! counts are not).
//!
//! ```sh
//! cargo build --release -p kernel-bench
//! valgrind --tool=callgrind --callgrind-out-file=cg.get.kernel \
//!     target/release/kernel-profile get kernel 100000
//! ```
//!
//! Arguments: the operation (`get`, `put`, `put_if_version`, `put_many`, `append`), the side
//! (`kernel`: through a booted kernel's standard layer stack; `bare`: the memory driver alone;
//! `map`: a `RwLock<HashMap>`, the raw baseline of kernel-bench) and the number of calls
//! (`put_many` calls write 1,000 entries each). One thread (a current-thread runtime), so the
//! counts are of the call path, not of a scheduler.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use driver_memory::MemoryDriver;
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{
    BatchPut, Error, EventStore, ExpectedVersion, NewEvent, PutOptions, Result, StorageDriver,
    Value, json,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match profile().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel-profile: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn profile() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [op, side, n] = args.as_slice() else {
        return Err(Error::invalid_input(
            "usage: kernel-profile <get|put|put_if_version|put_many|append> <kernel|bare|map> <calls>",
        ));
    };
    let n: u64 = n
        .parse()
        .map_err(|_| Error::invalid_input(format!("calls must be a number, not {n:?}")))?;
    let keys: Vec<String> = (0..100).map(|k| format!("k{k}")).collect();
    if side == "map" {
        return map(op, n, &keys);
    }
    let (storage, events, kernel): (Arc<dyn StorageDriver>, Arc<dyn EventStore>, _) =
        match side.as_str() {
            "kernel" => {
                let kernel = Kernel::boot(KernelConfig::from_vars(std::iter::empty())?).await?;
                (
                    kernel.storage().clone(),
                    kernel.events().clone(),
                    Some(kernel),
                )
            }
            "bare" => {
                let d = MemoryDriver::new();
                (Arc::new(d.clone()), Arc::new(d), None)
            }
            other => return Err(Error::invalid_input(format!("no side {other:?}"))),
        };
    for (k, key) in keys.iter().enumerate() {
        storage
            .put("bench", key, json!({"n": k}), PutOptions::new())
            .await?;
    }
    let mut version = storage.get("bench", "k0").await?.map_or(0, |e| e.version);
    let mut stream_version = 0;
    for i in 0..n {
        let key = &keys[(i % 100) as usize];
        match op.as_str() {
            "get" => {
                if storage.get("bench", key).await?.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            "put" => {
                storage
                    .put("bench", key, json!({"n": i}), PutOptions::new())
                    .await?;
            }
            "put_if_version" => {
                version = storage
                    .put(
                        "bench",
                        "k0",
                        json!({"n": i}),
                        PutOptions::new().if_version(version),
                    )
                    .await?
                    .version;
            }
            "put_many" => {
                let items = (0..1000)
                    .map(|j| BatchPut::new(format!("m{j}"), json!({"n": i, "j": j})))
                    .collect();
                storage.put_many("bench", items).await?;
            }
            "append" => {
                stream_version = events
                    .append(
                        "bench-1",
                        ExpectedVersion::Exact(stream_version),
                        vec![NewEvent::new("Benched", json!({"i": i}))],
                    )
                    .await?
                    .stream_version;
            }
            other => return Err(Error::invalid_input(format!("no operation {other:?}"))),
        }
    }
    if let Some(kernel) = kernel {
        kernel.shutdown().await;
    }
    Ok(())
}

/// The raw baseline of kernel-bench's memory side: a `RwLock<HashMap>`.
fn map(op: &str, n: u64, keys: &[String]) -> Result<()> {
    let docs: RwLock<HashMap<String, (Value, u64)>> = RwLock::new(HashMap::new());
    let poisoned = || Error::internal("poisoned");
    for (k, key) in keys.iter().enumerate() {
        docs.write()
            .map_err(|_| poisoned())?
            .insert(format!("bench/{key}"), (json!({"n": k}), 1));
    }
    for i in 0..n {
        let key = format!("bench/{}", keys[(i % 100) as usize]);
        match op {
            "get" => {
                let found = docs.read().map_err(|_| poisoned())?.get(&key).cloned();
                if found.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            "put" | "put_if_version" => {
                let mut d = docs.write().map_err(|_| poisoned())?;
                let slot = d.entry(key).or_insert((Value::Null, 0));
                *slot = (json!({"n": i}), slot.1 + 1);
            }
            other => return Err(Error::invalid_input(format!("no map operation {other:?}"))),
        }
    }
    Ok(())
}
