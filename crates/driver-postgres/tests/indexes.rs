//! Declared field indexes on PostgreSQL beyond the shared suite: the planner uses the index
//! for the statement as the driver sends it, other processes see a declaration, and the
//! records follow drops.

mod common;

use driver_postgres::PostgresDriver;
use kernel_core::{BatchPut, Filter, IndexSpec, Query, StorageDriver, json};
use kernel_testkit::{expect_ok, unique};

async fn seed(driver: &PostgresDriver, ns: &str, docs: usize) {
    let all: Vec<usize> = (0..docs).collect();
    for chunk in all.chunks(1000) {
        let items = chunk
            .iter()
            .map(|j| {
                BatchPut::new(
                    format!("q{j}"),
                    json!({"i": j, "group": j % 200, "o": {"p": j % 7}}),
                )
            })
            .collect();
        expect_ok(driver.put_many(ns, items).await, "seed");
    }
}

fn uses_index(plan: &str, name: &str) -> bool {
    plan.contains(&format!("Index Scan using {name}"))
        || plan.contains(&format!("Bitmap Index Scan on {name}"))
}

/// At 20,000 documents, `eq`, `in` and `eq` under `and` on a declared path are answered by
/// an index scan on the namespace's index; before the declaration, and under `not`, they are
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_index_is_used() {
    let (driver, _db) = common::driver().await;
    let ns = unique("plan");
    seed(&driver, &ns, 20_000).await;
    let eq = Query::new().filter(Filter::eq("group", 7));
    let before = expect_ok(driver.explain_query(&ns, &eq).await, "explain before");
    assert!(!before.contains("kernel_fidx_"), "{before}");
    let info = expect_ok(
        driver.create_index(&ns, &IndexSpec::new("group")).await,
        "create_index",
    );
    assert!(info.name.starts_with("kernel_fidx_"), "{info:?}");
    let nested = expect_ok(
        driver.create_index(&ns, &IndexSpec::new("o.p")).await,
        "create_index o.p",
    );
    for (q, index) in [
        (eq.clone(), &info.name),
        (
            Query::new().filter(Filter::is_in("group", [json!(1), json!(2)])),
            &info.name,
        ),
        (
            Query::new()
                .filter(Filter::eq("group", 3).and(Filter::gt("i", 10)))
                .sort_desc("i")
                .limit(5),
            &info.name,
        ),
        (Query::new().filter(Filter::eq("o.p", 3)), &nested.name),
    ] {
        let plan = expect_ok(driver.explain_query(&ns, &q).await, "explain");
        assert!(uses_index(&plan, index), "{q:?}\n{plan}");
    }
    let found = expect_ok(driver.query(&ns, &eq).await, "query");
    assert_eq!(found.len(), 100);
    let negated = Query::new().filter(Filter::not(Filter::eq("group", 7)));
    let plan = expect_ok(driver.explain_query(&ns, &negated).await, "explain not");
    assert!(!uses_index(&plan, &info.name), "{plan}");
    // Another namespace with the same path has no index: it is not used there.
    let other = unique("plan");
    seed(&driver, &other, 1000).await;
    let plan = expect_ok(driver.explain_query(&other, &eq).await, "explain beside");
    assert!(!plan.contains("kernel_fidx_"), "{plan}");
}

/// A second driver (another process, as far as the database knows) sees an index declared by
/// the first within the cache's refresh, and the records and index go with drop_index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_shared_and_dropped() {
    let (first, db) = common::driver().await;
    let second = expect_ok(
        PostgresDriver::connect(common::config(db.url())).await,
        "second driver",
    );
    let ns = unique("shared");
    seed(&first, &ns, 5000).await;
    let eq = Query::new().filter(Filter::eq("group", 7));
    // Warm the second driver's cache before the declaration.
    expect_ok(second.query(&ns, &eq).await, "query");
    let info = expect_ok(
        first.create_index(&ns, &IndexSpec::new("group")).await,
        "create_index",
    );
    let listed = expect_ok(second.list_indexes(&ns).await, "list_indexes");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, info.name);
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    let plan = expect_ok(second.explain_query(&ns, &eq).await, "explain");
    assert!(uses_index(&plan, &info.name), "{plan}");
    assert!(expect_ok(
        second.drop_index(&ns, "group").await,
        "drop_index"
    ));
    let client = common::raw_client(db.url()).await;
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'kernel_fidx_%'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("count indexes: {e}"))
        .get(0);
    assert_eq!(left, 0, "the index is gone");
    expect_ok(
        first.create_index(&ns, &IndexSpec::new("group")).await,
        "again",
    );
    expect_ok(first.drop_namespace(&ns, true).await, "drop_namespace");
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE 'kernel_fidx_%') \
             + (SELECT count(*) FROM kernel_field_indexes)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("count indexes: {e}"))
        .get(0);
    assert_eq!(left, 0, "drop_namespace dropped the index and its record");
    second.shutdown().await;
}

/// A value far larger than a B-tree entry may be (about 2.7 kB) at an indexed path is written,
/// found and counted like any other: the index is a hash of the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_at_an_indexed_path_are_written_and_found() {
    let (driver, _db) = common::driver().await;
    let ns = unique("big");
    expect_ok(
        driver.create_index(&ns, &IndexSpec::new("blob")).await,
        "create_index",
    );
    let big = "x".repeat(64 * 1024);
    let nested = json!({"text": big.clone(), "list": (0..2_000).collect::<Vec<u32>>()});
    expect_ok(
        driver
            .put(&ns, "s", json!({"blob": big.clone()}), Default::default())
            .await,
        "put a 64 kB string",
    );
    expect_ok(
        driver
            .put(
                &ns,
                "o",
                json!({"blob": nested.clone()}),
                Default::default(),
            )
            .await,
        "put a large object",
    );
    expect_ok(
        driver
            .put(&ns, "small", json!({"blob": "x"}), Default::default())
            .await,
        "put a small one",
    );
    for (value, key) in [(json!(big), "s"), (nested, "o")] {
        let q = Query::new().filter(Filter::eq("blob", value));
        let found = expect_ok(driver.query(&ns, &q).await, "query");
        let keys: Vec<&str> = found.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, [key]);
        let n = expect_ok(driver.count(&ns, q.filter.as_ref()).await, "count");
        assert_eq!(n, 1);
    }
}
