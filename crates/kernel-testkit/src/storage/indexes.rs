//! Declared field indexes: [`StorageDriver::create_index`], [`StorageDriver::drop_index`],
//! [`StorageDriver::list_indexes`]. An index changes how a query runs, never what it returns:
//! each behaviour compares the driver's answers with the shared evaluator's over the same
//! documents, with the index and without it. A driver without
//! [`kernel_core::Capabilities::field_indexes`] must answer `Unsupported` (after validation).

use kernel_core::{IndexInfo, IndexSpec};

use super::*;

/// The fields the mixed data set is indexed on: top level, nested, an array element, and a
/// segment Postgres would read as an index where the kernel reads a key.
const FIELDS: [&str; 4] = ["f", "o.p", "a.0", "x.01"];

/// Documents whose `f` (and the other indexed fields) cover every JSON type, numbers equal
/// across representations, look-alikes of other types, nulls and missing fields.
fn mixed_documents() -> Vec<(String, Value)> {
    let values = [
        json!(1),
        json!(1.0),
        json!(1.5),
        json!(2),
        json!(-1),
        json!(0),
        json!("1"),
        json!(""),
        json!("a"),
        json!(true),
        json!(false),
        json!(null),
        json!([1]),
        json!([1, 2]),
        json!([]),
        json!({"a": 1}),
        json!({}),
        json!(12345678901234567_u64),
    ];
    let mut docs = Vec::new();
    for (i, v) in values.iter().enumerate() {
        docs.push((
            format!("k{i:02}"),
            json!({
                "f": v,
                "n": i % 5,
                "o": {"p": v},
                "a": [v, i],
                "x": {"01": v},
            }),
        ));
    }
    // Missing fields, wrong shapes on the way down the path.
    docs.push(("m0".to_owned(), json!({"n": 1})));
    docs.push((
        "m1".to_owned(),
        json!({"o": 1, "a": {"0": 1}, "x": [1, 1], "n": 2}),
    ));
    docs.push((
        "m2".to_owned(),
        json!({"o": null, "a": "1", "x": {"1": 1}, "n": 3}),
    ));
    docs.push((
        "m3".to_owned(),
        json!({"f": {"a": 1.0}, "o": {"p": [1.0]}, "n": 4}),
    ));
    docs
}

/// The queries compared: `eq` of every type, `in`, `eq` inside `and` / `or` / `not`, with sort,
/// offset and limit.
fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    for field in FIELDS {
        for v in [
            json!(1),
            json!(1.5),
            json!("1"),
            json!(true),
            json!(null),
            json!([1]),
            json!({"a": 1}),
            json!([]),
            json!(12345678901234567_u64),
            json!("missing"),
        ] {
            out.push(Query::new().filter(Filter::eq(field, v)));
        }
        out.push(Query::new().filter(Filter::is_in(
            field,
            [
                json!(1),
                json!("1"),
                json!(null),
                json!(false),
                json!([1, 2]),
            ],
        )));
        out.push(Query::new().filter(Filter::eq(field, 1).and(Filter::gte("n", 1))));
        out.push(Query::new().filter(Filter::eq(field, 1).or(Filter::eq(field, "a"))));
        out.push(Query::new().filter(Filter::not(Filter::eq(field, 1))));
        out.push(Query::new().filter(Filter::not(Filter::is_in(field, [json!(1), json!("1")]))));
        out.push(
            Query::new()
                .filter(Filter::is_in(
                    field,
                    [json!(1), json!(0), json!(2), json!(-1)],
                ))
                .sort_desc("n")
                .sort_asc(field)
                .offset(1)
                .limit(3),
        );
    }
    out
}

/// What the shared evaluator answers over `docs`: the keys, in order.
fn expected(query: &Query, docs: &[(String, Value)]) -> Vec<String> {
    query
        .apply(docs.iter(), |d| d.0.as_str(), |d| &d.1)
        .into_iter()
        .map(|d| d.0.clone())
        .collect()
}

/// Runs every query and count against `ns`, checking each against the evaluator.
async fn check_queries<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    docs: &[(String, Value)],
    when: &str,
) {
    for q in queries() {
        let what = format!("query {ns} {q:?} {when}");
        let found = expect_ok(within(STEP_TIMEOUT, &what, s.query(ns, &q)).await, &what);
        let keys: Vec<String> = found.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys, expected(&q, docs), "{what}");
        for e in &found {
            let stored = docs.iter().find(|d| d.0 == e.key).map(|d| &d.1);
            assert_eq!(Some(&e.value), stored, "{what}: value of {}", e.key);
        }
        if q.sort.is_empty() && q.limit.is_none() {
            let filter = q.filter.clone();
            let what = format!("count {ns} {filter:?} {when}");
            let n = expect_ok(
                within(STEP_TIMEOUT, &what, s.count(ns, filter.as_ref())).await,
                &what,
            );
            assert_eq!(n, keys.len() as u64, "{what}");
        }
    }
}

async fn create<S: StorageDriver + ?Sized>(s: &S, ns: &str, field: &str) -> IndexInfo {
    let what = format!("create_index {ns} {field}");
    expect_ok(
        within(
            STEP_TIMEOUT * 4,
            &what,
            s.create_index(ns, &IndexSpec::new(field)),
        )
        .await,
        &what,
    )
}

async fn listed<S: StorageDriver + ?Sized>(s: &S, ns: &str) -> Vec<String> {
    let what = format!("list_indexes {ns}");
    expect_ok(within(STEP_TIMEOUT, &what, s.list_indexes(ns)).await, &what)
        .into_iter()
        .map(|i| {
            assert_eq!(i.namespace, ns, "{what}: namespace of {i:?}");
            i.field
        })
        .collect()
}

/// Without the capability every index method is `Unsupported` (and validates first); returns
/// whether the driver has it.
async fn supported<S: StorageDriver + ?Sized>(s: &S, ns: &str) -> bool {
    if s.capabilities().field_indexes {
        return true;
    }
    let spec = IndexSpec::new("f");
    expect_err(
        s.create_index(ns, &spec).await,
        ErrorCode::Unsupported,
        "create_index without the capability",
    );
    expect_err(
        s.drop_index(ns, "f").await,
        ErrorCode::Unsupported,
        "drop_index without the capability",
    );
    expect_err(
        s.list_indexes(ns).await,
        ErrorCode::Unsupported,
        "list_indexes without the capability",
    );
    false
}

/// The same answers with and without indexes, on a mixed data set: `eq` of every JSON type,
/// `in`, `eq` under `and` / `or` / `not`, sort, offset and limit, and counts.
pub async fn index_queries_match_unindexed<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("idx");
    if !supported(s, &ns).await {
        return;
    }
    let docs = mixed_documents();
    let items = docs
        .iter()
        .map(|(k, v)| BatchPut::new(k.clone(), v.clone()))
        .collect();
    expect_ok(s.put_many(&ns, items).await, "put_many the mixed set");
    check_queries(s, &ns, &docs, "before any index").await;
    for field in FIELDS {
        let info = create(s, &ns, field).await;
        assert_eq!(
            (info.namespace.as_str(), info.field.as_str()),
            (ns.as_str(), field)
        );
    }
    check_queries(s, &ns, &docs, "with indexes").await;
    // A namespace beside it with the same documents and no index is not affected.
    let other = unique("idx");
    let items = docs
        .iter()
        .map(|(k, v)| BatchPut::new(k.clone(), v.clone()))
        .collect();
    expect_ok(s.put_many(&other, items).await, "put_many beside");
    check_queries(s, &other, &docs, "beside an indexed namespace").await;
}

/// Declaring is idempotent, listing shows each field once, dropping reports whether there
/// was an index.
pub async fn index_create_is_idempotent_and_listed<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("idx");
    if !supported(s, &ns).await {
        return;
    }
    assert!(listed(s, &ns).await.is_empty(), "no index yet");
    // Declared before the namespace exists, then again.
    create(s, &ns, "b.c").await;
    create(s, &ns, "b.c").await;
    create(s, &ns, "a").await;
    assert_eq!(listed(s, &ns).await, strings(&["a", "b.c"]));
    assert!(
        listed(s, &unique("idx")).await.is_empty(),
        "indexes belong to their namespace"
    );
    put(s, &ns, "k", json!({"a": 1, "b": {"c": "x"}})).await;
    let what = "drop_index a";
    assert!(expect_ok(s.drop_index(&ns, "a").await, what), "{what}");
    assert!(
        !expect_ok(s.drop_index(&ns, "a").await, what),
        "{what} again"
    );
    assert_eq!(listed(s, &ns).await, strings(&["b.c"]));
    let found = expect_ok(
        s.query(&ns, &Query::new().filter(Filter::eq("b.c", "x")))
            .await,
        "query after drop",
    );
    assert_eq!(found.len(), 1, "query on the remaining index");
    let found = expect_ok(
        s.query(&ns, &Query::new().filter(Filter::eq("a", 1))).await,
        "query on the dropped index",
    );
    assert_eq!(found.len(), 1, "query on a dropped index still answers");
}

/// Every write keeps an index exact: put, overwrite, delete, batches, `set_metadata`, TTL
/// expiry, transactions and `clear`.
pub async fn index_follows_every_write<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("idx");
    if !supported(s, &ns).await {
        return;
    }
    create(s, &ns, "g").await;
    let q = |g: Value| keys_where_g(s, &ns, g);
    put(s, &ns, "a", json!({"g": 1})).await;
    put(s, &ns, "b", json!({"g": 1})).await;
    put(s, &ns, "c", json!({"g": 2})).await;
    assert_eq!(q(json!(1)).await, strings(&["a", "b"]), "after puts");
    put(s, &ns, "a", json!({"g": 2})).await;
    assert_eq!(q(json!(1)).await, strings(&["b"]), "after an overwrite");
    assert_eq!(
        q(json!(2)).await,
        strings(&["a", "c"]),
        "after an overwrite"
    );
    put(s, &ns, "c", json!({"h": 2})).await;
    assert_eq!(q(json!(2)).await, strings(&["a"]), "after the field went");
    expect_ok(
        s.delete(&ns, "a", DeleteCondition::Always).await,
        "delete a",
    );
    assert!(q(json!(2)).await.is_empty(), "after a delete");
    expect_ok(
        s.put_many(
            &ns,
            vec![
                BatchPut::new("d", json!({"g": "x"})),
                BatchPut::new("e", json!({"g": "x"})),
                BatchPut::new("b", json!({"g": "x"})),
            ],
        )
        .await,
        "put_many",
    );
    assert_eq!(
        q(json!("x")).await,
        strings(&["b", "d", "e"]),
        "after put_many"
    );
    assert!(q(json!(1)).await.is_empty(), "put_many moved b");
    expect_ok(
        s.delete_many(&ns, vec![BatchDelete::new("d")]).await,
        "delete_many",
    );
    assert_eq!(
        q(json!("x")).await,
        strings(&["b", "e"]),
        "after delete_many"
    );
    expect_ok(
        s.set_metadata(&ns, "e", meta(json!({"m": 1})), MetadataMode::Replace)
            .await,
        "set_metadata",
    );
    assert_eq!(
        q(json!("x")).await,
        strings(&["b", "e"]),
        "set_metadata keeps the value"
    );
    if s.capabilities().ttl {
        put_with(s, &ns, "t", json!({"g": "x"}), PutOptions::new().ttl(TTL)).await;
        assert_eq!(
            q(json!("x")).await,
            strings(&["b", "e", "t"]),
            "before expiry"
        );
        tokio::time::sleep(TTL_WAIT).await;
        assert_eq!(q(json!("x")).await, strings(&["b", "e"]), "after expiry");
        // Rewritten after it expired: indexed again.
        put(s, &ns, "t", json!({"g": 7})).await;
        assert_eq!(
            q(json!(7)).await,
            strings(&["t"]),
            "a key rewritten after expiry"
        );
    }
    if s.capabilities().transactions {
        let mut tx = expect_ok(s.begin().await, "begin");
        expect_ok(
            tx.put(&ns, "u", json!({"g": "x"}), PutOptions::new()).await,
            "tx put",
        );
        expect_ok(
            tx.delete(&ns, "b", DeleteCondition::Always).await,
            "tx delete",
        );
        assert_eq!(
            q(json!("x")).await,
            strings(&["b", "e"]),
            "before the commit"
        );
        expect_ok(tx.commit().await, "commit");
        assert_eq!(
            q(json!("x")).await,
            strings(&["e", "u"]),
            "after the commit"
        );
        let mut tx = expect_ok(s.begin().await, "begin");
        expect_ok(
            tx.put(&ns, "v", json!({"g": "x"}), PutOptions::new()).await,
            "tx put",
        );
        expect_ok(tx.rollback().await, "rollback");
        assert_eq!(
            q(json!("x")).await,
            strings(&["e", "u"]),
            "after a rollback"
        );
    }
    expect_ok(s.clear(&ns).await, "clear");
    assert!(q(json!("x")).await.is_empty(), "after clear");
    assert_eq!(
        listed(s, &ns).await,
        strings(&["g"]),
        "clear keeps the index"
    );
    put(s, &ns, "w", json!({"g": "x"})).await;
    assert_eq!(q(json!("x")).await, strings(&["w"]), "a write after clear");
}

/// The keys whose `g` equals `g`, checked against `count`.
async fn keys_where_g<S: StorageDriver + ?Sized>(s: &S, ns: &str, g: Value) -> Vec<String> {
    let filter = Filter::eq("g", g);
    let what = format!("query {ns} {filter:?}");
    let found = expect_ok(
        s.query(ns, &Query::new().filter(filter.clone())).await,
        &what,
    );
    let n = expect_ok(s.count(ns, Some(&filter)).await, &what);
    assert_eq!(n, found.len() as u64, "{what}: count");
    found.into_iter().map(|e| e.key).collect()
}

/// Dropping a namespace drops its indexes; writing into it again starts with none.
pub async fn index_dropped_with_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("idx");
    if !supported(s, &ns).await {
        return;
    }
    put(s, &ns, "k", json!({"g": 1})).await;
    create(s, &ns, "g").await;
    assert!(
        expect_ok(s.drop_namespace(&ns, true).await, "drop_namespace"),
        "the namespace existed"
    );
    assert!(
        listed(s, &ns).await.is_empty(),
        "indexes went with the namespace"
    );
    put(s, &ns, "k2", json!({"g": 1})).await;
    let found = expect_ok(
        s.query(&ns, &Query::new().filter(Filter::eq("g", 1))).await,
        "query after re-creation",
    );
    assert_eq!(found.len(), 1, "only the new document");
    // Declared on a namespace that never held anything, then dropped with it.
    let empty = unique("idx");
    create(s, &empty, "g").await;
    expect_ok(s.drop_namespace(&empty, false).await, "drop_namespace");
    assert!(
        listed(s, &empty).await.is_empty(),
        "indexes of a missing namespace"
    );
}

/// Bad namespaces and paths are `InvalidInput`, with or without the capability.
pub async fn index_rejects_invalid_input<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("idx");
    for path in ["", "a..b", ".a", "a.", "a\0b"] {
        expect_err(
            s.create_index(&ns, &IndexSpec::new(path)).await,
            ErrorCode::InvalidInput,
            &format!("create_index on {path:?}"),
        );
        expect_err(
            s.drop_index(&ns, path).await,
            ErrorCode::InvalidInput,
            &format!("drop_index on {path:?}"),
        );
    }
    let long = "a.".repeat(40) + "a";
    expect_err(
        s.create_index(&ns, &IndexSpec::new(long)).await,
        ErrorCode::InvalidInput,
        "create_index on a path of 41 segments",
    );
    for bad in ["", "bad ns", "_kernel.x"] {
        expect_err(
            s.create_index(bad, &IndexSpec::new("a")).await,
            ErrorCode::InvalidInput,
            &format!("create_index in {bad:?}"),
        );
        expect_err(
            s.list_indexes(bad).await,
            ErrorCode::InvalidInput,
            &format!("list_indexes in {bad:?}"),
        );
    }
}
