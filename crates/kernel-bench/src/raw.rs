//! The raw side of each backend: what a user would write without the kernel, on the same
//! server with a pool of the same size.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, ListInterface, LuaInterface};
use fred::types::{Expiration, SetOptions};
use kernel_bootstrap::Kernel;
use kernel_core::{Error, Result, Uuid, Value, json};
use tokio_postgres::NoTls;

use crate::run::{
    BATCH, KernelSide, LISTED, LOG_LEN, PAGE, STREAM_LEN, Side, TaskState, Workload, group_len,
    listed_key, log_after, page_after, query_doc, query_group,
};

/// Pool size of both sides.
const POOL: usize = 16;

/// What keeps a test database or key prefix alive for the run (dropping it cleans up).
pub(crate) enum Guard {
    None,
    Postgres {
        _db: Box<kernel_testkit::postgres::TestDatabase>,
    },
    Redis {
        _server: kernel_testkit::redis::RedisTestServer,
    },
}

/// A kernel and the raw side for `backend`.
pub(crate) async fn setup(backend: &str) -> Result<(Kernel, Arc<dyn Side>, Guard)> {
    match backend {
        "memory" => {
            let kernel = crate::kernel(vec![("KERNEL_STORAGE_MODE", "memory".into())]).await?;
            Ok((kernel, Arc::new(Memory::default()), Guard::None))
        }
        "memory-layers" => {
            // The same driver bare: the ratio is what the layer stack costs.
            let kernel = crate::kernel(vec![("KERNEL_STORAGE_MODE", "memory".into())]).await?;
            let bare = driver_memory::MemoryDriver::new();
            let stores = kernel_bootstrap::layers::Stores {
                storage: Arc::new(bare.clone()),
                events: Arc::new(bare.clone()),
                locks: Arc::new(bare.clone()),
                rate_limiter: Arc::new(bare),
            };
            Ok((kernel, Arc::new(KernelSide(stores)), Guard::None))
        }
        "postgres" => {
            let db = kernel_testkit::postgres::fresh_database().await;
            let kernel = crate::kernel(vec![
                ("KERNEL_STORAGE_MODE", "postgres".into()),
                ("DATABASE_URL", db.url().into()),
                ("KERNEL_POSTGRES_POOL_SIZE", POOL.to_string()),
            ])
            .await?;
            let raw = Postgres::connect(db.url()).await?;
            Ok((kernel, Arc::new(raw), Guard::Postgres { _db: Box::new(db) }))
        }
        "redis" => {
            let server = kernel_testkit::redis::RedisTestServer::start().await;
            let kernel = crate::kernel(vec![
                ("KERNEL_STORAGE_MODE", "redis".into()),
                ("REDIS_URL", server.url().into()),
                (
                    "KERNEL_REDIS_KEY_PREFIX",
                    server.prefix().trim_end_matches(':').into(),
                ),
                ("KERNEL_REDIS_POOL_SIZE", "4".into()),
            ])
            .await?;
            let raw = Redis::connect(server.url(), server.prefix()).await?;
            Ok((kernel, Arc::new(raw), Guard::Redis { _server: server }))
        }
        other => Err(Error::invalid_input(format!("no backend {other:?}"))),
    }
}

/// A `RwLock<HashMap>` of documents and a map of event lists; for listing, a `BTreeMap` (what
/// ordered pages need), and for reading the whole log, one list of every event.
#[derive(Default)]
struct Memory {
    docs: RwLock<HashMap<String, (Value, u64)>>,
    /// The query workload's index, as the kernel's memory driver has one: (run, group) → keys.
    groups: RwLock<HashMap<(String, u64), Vec<String>>>,
    sorted: RwLock<BTreeMap<String, (Value, u64)>>,
    streams: Mutex<HashMap<String, Vec<Value>>>,
    log: RwLock<Vec<Value>>,
    locks: Mutex<HashMap<String, u64>>,
    counters: Mutex<HashMap<String, u64>>,
}

fn poisoned() -> Error {
    Error::internal("a raw map's lock is poisoned")
}

#[async_trait]
impl Side for Memory {
    async fn prepare(&self, w: Workload, t: usize, run: &str, st: &mut TaskState) -> Result<()> {
        let mut docs = self.docs.write().map_err(|_| poisoned())?;
        match w {
            Workload::Get => {
                for k in 0..100 {
                    docs.insert(format!("{run}/k{t}-{k}"), (json!({"n": k}), 1));
                }
            }
            Workload::PutIfVersion => {
                docs.insert(format!("{run}/cas{t}"), (json!({"n": 0}), 1));
                st.cas_version = 1;
            }
            Workload::List => {
                let mut sorted = self.sorted.write().map_err(|_| poisoned())?;
                for j in 0..LISTED {
                    sorted.insert(format!("{run}/{}", listed_key(t, j)), (json!({"j": j}), 1));
                }
            }
            Workload::Query if t == 0 => {
                let mut groups = self.groups.write().map_err(|_| poisoned())?;
                for j in 0..st.docs {
                    let doc = query_doc(j, st.docs);
                    let key = format!("{run}/q{j}");
                    let group = doc["group"].as_u64().unwrap_or(u64::MAX);
                    groups
                        .entry((run.to_owned(), group))
                        .or_default()
                        .push(key.clone());
                    docs.insert(key, (doc, 1));
                }
            }
            Workload::ReadStream => {
                let mut streams = self.streams.lock().map_err(|_| poisoned())?;
                let list = streams.entry(format!("{run}-r{t}")).or_default();
                list.extend((0..STREAM_LEN).map(|j| json!({"j": j})));
            }
            Workload::ReadAll if t == 0 => {
                let mut log = self.log.write().map_err(|_| poisoned())?;
                log.extend((0..LOG_LEN).map(|j| json!({"j": j})));
            }
            _ => {}
        }
        Ok(())
    }

    async fn call(
        &self,
        w: Workload,
        t: usize,
        i: u64,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()> {
        match w {
            Workload::Get => {
                let docs = self.docs.read().map_err(|_| poisoned())?;
                let found = docs.get(&format!("{run}/k{t}-{}", i % 100)).cloned();
                if found.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            Workload::Put => {
                let mut docs = self.docs.write().map_err(|_| poisoned())?;
                let slot = docs
                    .entry(format!("{run}/k{t}-{}", i % 100))
                    .or_insert((Value::Null, 0));
                *slot = (json!({"n": i}), slot.1 + 1);
            }
            Workload::PutIfVersion => {
                let mut docs = self.docs.write().map_err(|_| poisoned())?;
                let slot = docs
                    .get_mut(&format!("{run}/cas{t}"))
                    .ok_or_else(|| Error::internal("the CAS document is missing"))?;
                if slot.1 != st.cas_version {
                    return Err(Error::conflict("raw CAS lost"));
                }
                *slot = (json!({"n": i}), slot.1 + 1);
                st.cas_version = slot.1;
            }
            Workload::Append | Workload::Append10 => {
                let n = if w == Workload::Append10 { 10 } else { 1 };
                let mut streams = self.streams.lock().map_err(|_| poisoned())?;
                let list = streams.entry(format!("{run}-{t}")).or_default();
                for j in 0..n {
                    list.push(json!({"i": i, "j": j}));
                }
            }
            Workload::Lock => {
                let key = format!("{run}-lock{t}");
                let mut locks = self.locks.lock().map_err(|_| poisoned())?;
                if locks.insert(key.clone(), i).is_some() {
                    return Err(Error::internal("the task's own lock is held"));
                }
                drop(locks);
                self.locks.lock().map_err(|_| poisoned())?.remove(&key);
            }
            Workload::RateLimit => {
                let mut counters = self.counters.lock().map_err(|_| poisoned())?;
                *counters.entry(format!("{run}-rl{t}")).or_default() += 1;
            }
            Workload::PutMany | Workload::PutManySingles => {
                let mut docs = self.docs.write().map_err(|_| poisoned())?;
                for j in 0..BATCH {
                    let slot = docs
                        .entry(format!("{run}/m{t}-{j}"))
                        .or_insert((Value::Null, 0));
                    *slot = (json!({"i": i, "j": j}), slot.1 + 1);
                }
            }
            Workload::List => {
                let sorted = self.sorted.read().map_err(|_| poisoned())?;
                let prefix = format!("{run}/l{t}-");
                let from = match page_after(t, i) {
                    Some(after) => Bound::Excluded(format!("{run}/{after}")),
                    None => Bound::Included(prefix.clone()),
                };
                let page: Vec<(String, Value)> = sorted
                    .range::<String, _>((from, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .take(PAGE)
                    .map(|(k, (v, _))| (k.clone(), v.clone()))
                    .collect();
                if page.len() != PAGE {
                    return Err(Error::internal("a list page came back short"));
                }
            }
            Workload::Query => {
                let docs = self.docs.read().map_err(|_| poisoned())?;
                let groups = self.groups.read().map_err(|_| poisoned())?;
                let g = query_group(st.docs, i);
                let group = json!(g);
                let found: Vec<Value> = groups
                    .get(&(run.to_owned(), g))
                    .into_iter()
                    .flatten()
                    .filter_map(|k| docs.get(k))
                    .filter(|(v, _)| v["group"] == group)
                    .map(|(v, _)| v.clone())
                    .collect();
                if found.len() != group_len(st.docs, g) {
                    return Err(Error::internal("the raw query found the wrong count"));
                }
            }
            Workload::ReadStream => {
                let streams = self.streams.lock().map_err(|_| poisoned())?;
                let events = streams.get(&format!("{run}-r{t}")).cloned();
                if events.is_none_or(|e| e.len() as u64 != STREAM_LEN) {
                    return Err(Error::internal("the seeded stream came back short"));
                }
            }
            Workload::ReadAll => {
                let log = self.log.read().map_err(|_| poisoned())?;
                let from = log_after(i) as usize;
                let page: Vec<Value> = log.iter().skip(from).take(PAGE).cloned().collect();
                if page.len() != PAGE {
                    return Err(Error::internal("a read_all page came back short"));
                }
            }
            Workload::Subscription => {
                return Err(Error::internal("no raw subscription workload"));
            }
        }
        Ok(())
    }
}

/// Hand-written statements on plain tables of the kernel's shape.
struct Postgres {
    pool: Pool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bench_docs (
    namespace text COLLATE \"C\" NOT NULL, key text COLLATE \"C\" NOT NULL,
    value jsonb NOT NULL, version bigint NOT NULL, updated_at timestamptz NOT NULL,
    PRIMARY KEY (namespace, key));
CREATE TABLE IF NOT EXISTS bench_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, stream text COLLATE \"C\" NOT NULL,
    version bigint NOT NULL, id uuid NOT NULL, payload jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(), UNIQUE (stream, version));
CREATE TABLE IF NOT EXISTS bench_locks (
    key text COLLATE \"C\" PRIMARY KEY, token text NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS bench_rates (
    key text COLLATE \"C\" PRIMARY KEY, n bigint NOT NULL);";
const ACQUIRE: &str = "INSERT INTO bench_locks VALUES ($1, $2, now() + interval '10 seconds') \
     ON CONFLICT (key) DO NOTHING";
const RELEASE: &str = "DELETE FROM bench_locks WHERE key = $1 AND token = $2";
const COUNT: &str = "INSERT INTO bench_rates VALUES ($1, 1) \
     ON CONFLICT (key) DO UPDATE SET n = bench_rates.n + 1 RETURNING n";
const GET: &str = "SELECT value, version FROM bench_docs WHERE namespace = $1 AND key = $2";
const PUT: &str = "INSERT INTO bench_docs VALUES ($1, $2, $3, 1, now()) \
     ON CONFLICT (namespace, key) DO UPDATE \
     SET value = EXCLUDED.value, version = bench_docs.version + 1, updated_at = now() \
     RETURNING version";
const CAS: &str = "UPDATE bench_docs SET value = $3, version = version + 1, updated_at = now() \
     WHERE namespace = $1 AND key = $2 AND version = $4 RETURNING version";
const APPEND: &str =
    "INSERT INTO bench_events (stream, version, id, payload) VALUES ($1, $2, $3, $4)";
const APPEND10: &str = "INSERT INTO bench_events (stream, version, id, payload) \
     SELECT $1, $2 + t.o, t.id, t.p FROM unnest($3::uuid[], $4::jsonb[]) WITH ORDINALITY \
     AS t(id, p, o)";
/// One set-based upsert of a whole batch.
const PUT_MANY: &str = "INSERT INTO bench_docs \
     SELECT $1, t.k, t.v, 1, now() FROM unnest($2::text[], $3::jsonb[]) AS t(k, v) \
     ON CONFLICT (namespace, key) DO UPDATE \
     SET value = EXCLUDED.value, version = bench_docs.version + 1, updated_at = now()";
/// A page by key order after a cursor, below an upper bound (the prefix's end).
const LIST: &str = "SELECT key, value, version FROM bench_docs \
     WHERE namespace = $1 AND key > $2 AND key < $3 ORDER BY key LIMIT 100";
/// Equality on the field, with the kernel's semantics (`jsonb` equality), in key order as the
/// kernel answers, served by [`QUERY_INDEX`].
const QUERY: &str = "SELECT key, value, version FROM bench_docs \
     WHERE namespace = $1 AND value -> 'group' = $2 ORDER BY key";
/// The raw side's index for [`QUERY`].
const QUERY_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS bench_docs_group ON bench_docs (namespace, (value -> 'group'))";
/// The query workload's documents, seeded by the server.
const SEED_QUERY: &str = "INSERT INTO bench_docs \
     SELECT $1, 'q' || j, jsonb_build_object('i', j, 'group', j % $3::bigint), 1, now() \
     FROM generate_series(0::bigint, $2::bigint - 1) AS j";
const READ_STREAM: &str =
    "SELECT seq, version, id, payload FROM bench_events WHERE stream = $1 ORDER BY version";
const READ_ALL: &str = "SELECT seq, stream, version, id, payload FROM bench_events \
     WHERE seq > $1 ORDER BY seq LIMIT 100";

impl Postgres {
    async fn connect(url: &str) -> Result<Postgres> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::config("postgres.url", "not a connection string").with_source(e))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL)
            .build()
            .map_err(|e| Error::internal("cannot build the raw pool").with_source(e))?;
        let client = pool.get().await.map_err(pool_error)?;
        client.batch_execute(SCHEMA).await.map_err(pg_error)?;
        Ok(Postgres { pool })
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::unavailable("raw pool").with_source(e)
}

fn pg_error(e: tokio_postgres::Error) -> Error {
    Error::unavailable("raw statement").with_source(e)
}

#[async_trait]
impl Side for Postgres {
    async fn prepare(&self, w: Workload, t: usize, run: &str, st: &mut TaskState) -> Result<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let put = client.prepare_cached(PUT).await.map_err(pg_error)?;
        match w {
            Workload::Get => {
                for k in 0..100 {
                    let key = format!("k{t}-{k}");
                    client
                        .query_one(&put, &[&run, &key, &json!({"n": k})])
                        .await
                        .map_err(pg_error)?;
                }
            }
            Workload::PutIfVersion => {
                let key = format!("cas{t}");
                let row = client
                    .query_one(&put, &[&run, &key, &json!({"n": 0})])
                    .await
                    .map_err(pg_error)?;
                st.cas_version = row.get::<_, i64>(0) as u64;
            }
            Workload::List => {
                let keys: Vec<String> = (0..LISTED).map(|j| listed_key(t, j)).collect();
                let values: Vec<Value> = (0..LISTED).map(|j| json!({"j": j})).collect();
                let stmt = client.prepare_cached(PUT_MANY).await.map_err(pg_error)?;
                client
                    .execute(&stmt, &[&run, &keys, &values])
                    .await
                    .map_err(pg_error)?;
            }
            Workload::Query if t == 0 => {
                // One set-based statement: 1 M documents in seconds (the documents of
                // `query_doc`, built by the server).
                let docs = i64::try_from(st.docs).unwrap_or(i64::MAX);
                let groups = i64::try_from(crate::run::groups(st.docs)).unwrap_or(i64::MAX);
                client
                    .execute(SEED_QUERY, &[&run, &docs, &groups])
                    .await
                    .map_err(pg_error)?;
                // The equivalent of the kernel's declared index, created as the kernel's is
                // (over the seeded rows) and written as one would by hand: on the namespace and
                // the field's value, so the prepared statement's parameters can use it.
                client.batch_execute(QUERY_INDEX).await.map_err(pg_error)?;
                client
                    .batch_execute("ANALYZE bench_docs")
                    .await
                    .map_err(pg_error)?;
            }
            Workload::ReadStream => {
                seed_events(&client, &format!("{run}-r{t}"), STREAM_LEN).await?;
            }
            Workload::ReadAll if t == 0 => {
                seed_events(&client, &format!("{run}-all"), LOG_LEN).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn call(
        &self,
        w: Workload,
        t: usize,
        i: u64,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        match w {
            Workload::Get => {
                let stmt = client.prepare_cached(GET).await.map_err(pg_error)?;
                let key = format!("k{t}-{}", i % 100);
                let row = client
                    .query_opt(&stmt, &[&run, &key])
                    .await
                    .map_err(pg_error)?;
                let value: Option<Value> = row.map(|r| r.get(0));
                if value.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            Workload::Put => {
                let stmt = client.prepare_cached(PUT).await.map_err(pg_error)?;
                let key = format!("k{t}-{}", i % 100);
                client
                    .query_one(&stmt, &[&run, &key, &json!({"n": i})])
                    .await
                    .map_err(pg_error)?;
            }
            Workload::PutIfVersion => {
                let stmt = client.prepare_cached(CAS).await.map_err(pg_error)?;
                let key = format!("cas{t}");
                let expected = st.cas_version as i64;
                let row = client
                    .query_opt(&stmt, &[&run, &key, &json!({"n": i}), &expected])
                    .await
                    .map_err(pg_error)?
                    .ok_or_else(|| Error::conflict("raw CAS lost"))?;
                st.cas_version = row.get::<_, i64>(0) as u64;
            }
            Workload::Append => {
                let stmt = client.prepare_cached(APPEND).await.map_err(pg_error)?;
                let stream = format!("{run}-{t}");
                let version = st.stream_version as i64 + 1;
                client
                    .execute(
                        &stmt,
                        &[&stream, &version, &Uuid::now_v7(), &json!({"i": i})],
                    )
                    .await
                    .map_err(pg_error)?;
                st.stream_version += 1;
            }
            Workload::Append10 => {
                let stmt = client.prepare_cached(APPEND10).await.map_err(pg_error)?;
                let stream = format!("{run}-{t}");
                let base = st.stream_version as i64;
                let ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
                let payloads: Vec<Value> = (0..10).map(|j| json!({"i": i, "j": j})).collect();
                client
                    .execute(&stmt, &[&stream, &base, &ids, &payloads])
                    .await
                    .map_err(pg_error)?;
                st.stream_version += 10;
            }
            Workload::Lock => {
                let acquire = client.prepare_cached(ACQUIRE).await.map_err(pg_error)?;
                let release = client.prepare_cached(RELEASE).await.map_err(pg_error)?;
                let key = format!("{run}-lock{t}");
                let token = i.to_string();
                let won = client
                    .execute(&acquire, &[&key, &token])
                    .await
                    .map_err(pg_error)?;
                if won != 1 {
                    return Err(Error::internal("the task's own lock is held"));
                }
                client
                    .execute(&release, &[&key, &token])
                    .await
                    .map_err(pg_error)?;
            }
            Workload::RateLimit => {
                let stmt = client.prepare_cached(COUNT).await.map_err(pg_error)?;
                let key = format!("{run}-rl{t}");
                client.query_one(&stmt, &[&key]).await.map_err(pg_error)?;
            }
            Workload::PutMany | Workload::PutManySingles => {
                let stmt = client.prepare_cached(PUT_MANY).await.map_err(pg_error)?;
                let keys: Vec<String> = (0..BATCH).map(|j| format!("m{t}-{j}")).collect();
                let values: Vec<Value> = (0..BATCH).map(|j| json!({"i": i, "j": j})).collect();
                client
                    .execute(&stmt, &[&run, &keys, &values])
                    .await
                    .map_err(pg_error)?;
            }
            Workload::List => {
                let stmt = client.prepare_cached(LIST).await.map_err(pg_error)?;
                let after = page_after(t, i).unwrap_or_else(|| format!("l{t}-"));
                let end = format!("l{t}.");
                let rows = client
                    .query(&stmt, &[&run, &after, &end])
                    .await
                    .map_err(pg_error)?;
                let page: Vec<(String, Value)> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                if page.len() != PAGE {
                    return Err(Error::internal("a list page came back short"));
                }
            }
            Workload::Query => {
                let stmt = client.prepare_cached(QUERY).await.map_err(pg_error)?;
                let g = query_group(st.docs, i);
                let probe = json!(g);
                let rows = client
                    .query(&stmt, &[&run, &probe])
                    .await
                    .map_err(pg_error)?;
                let found: Vec<Value> = rows.iter().map(|r| r.get(1)).collect();
                if found.len() != group_len(st.docs, g) {
                    return Err(Error::internal("the raw query found the wrong count"));
                }
            }
            Workload::ReadStream => {
                let stmt = client.prepare_cached(READ_STREAM).await.map_err(pg_error)?;
                let stream = format!("{run}-r{t}");
                let rows = client.query(&stmt, &[&stream]).await.map_err(pg_error)?;
                let events: Vec<Value> = rows.iter().map(|r| r.get(3)).collect();
                if events.len() as u64 != STREAM_LEN {
                    return Err(Error::internal("the seeded stream came back short"));
                }
            }
            Workload::ReadAll => {
                let stmt = client.prepare_cached(READ_ALL).await.map_err(pg_error)?;
                let after = log_after(i) as i64;
                let rows = client.query(&stmt, &[&after]).await.map_err(pg_error)?;
                let events: Vec<Value> = rows.iter().map(|r| r.get(4)).collect();
                if events.len() != PAGE {
                    return Err(Error::internal("a read_all page came back short"));
                }
            }
            Workload::Subscription => {
                return Err(Error::internal("no raw subscription workload"));
            }
        }
        Ok(())
    }
}

/// Appends `n` events to a new stream in one statement.
async fn seed_events(client: &deadpool_postgres::Client, stream: &str, n: u64) -> Result<()> {
    let stmt = client.prepare_cached(APPEND10).await.map_err(pg_error)?;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let payloads: Vec<Value> = (0..n).map(|j| json!({"j": j})).collect();
    client
        .execute(&stmt, &[&stream, &0i64, &ids, &payloads])
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// fred commands on a pool.
struct Redis {
    pool: fred::clients::Pool,
    prefix: String,
    /// SHA of the compare-and-delete script of a lock release.
    release: String,
    /// SHA of the INCR + PEXPIRE script of a rate-limit count.
    count: String,
}

/// Deletes the lock only if it still holds the caller's token.
const RELEASE_LUA: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Counts a request in a fixed window.
const COUNT_LUA: &str = "local n = redis.call('INCR', KEYS[1]) \
     if n == 1 then redis.call('PEXPIRE', KEYS[1], 1000) end return n";

impl Redis {
    async fn connect(url: &str, prefix: &str) -> Result<Redis> {
        let config = fred::types::config::Config::from_url(url)
            .map_err(|e| Error::config("redis.url", "not a Redis URL").with_source(e))?;
        let pool = fred::types::Builder::from_config(config)
            .build_pool(4)
            .map_err(|e| Error::internal("cannot build the raw pool").with_source(e))?;
        pool.init()
            .await
            .map_err(|e| Error::unavailable("raw Redis").with_source(e))?;
        let release: String = pool.script_load(RELEASE_LUA).await.map_err(redis_error)?;
        let count: String = pool.script_load(COUNT_LUA).await.map_err(redis_error)?;
        Ok(Redis {
            pool,
            prefix: format!("{prefix}raw:"),
            release,
            count,
        })
    }
}

fn redis_error(e: fred::error::Error) -> Error {
    Error::unavailable("raw Redis command").with_source(e)
}

#[async_trait]
impl Side for Redis {
    async fn prepare(&self, w: Workload, t: usize, run: &str, st: &mut TaskState) -> Result<()> {
        let p = &self.prefix;
        match w {
            Workload::Get => {
                for k in 0..100 {
                    let key = format!("{p}{run}:k{t}-{k}");
                    let _: () = self
                        .pool
                        .set(key, json!({"n": k}).to_string(), None, None, false)
                        .await
                        .map_err(redis_error)?;
                }
            }
            Workload::List => {
                let values: Vec<String> =
                    (0..LISTED).map(|j| json!({"j": j}).to_string()).collect();
                let _: u64 = self
                    .pool
                    .rpush(format!("{p}{run}:l{t}"), values)
                    .await
                    .map_err(redis_error)?;
            }
            Workload::Query if t == 0 => {
                for chunk in (0..st.docs).collect::<Vec<_>>().chunks(BATCH) {
                    let fields: Vec<(String, String)> = chunk
                        .iter()
                        .map(|j| (format!("q{j}"), query_doc(*j, st.docs).to_string()))
                        .collect();
                    let _: u64 = self
                        .pool
                        .hset(format!("{p}{run}:q"), fields)
                        .await
                        .map_err(redis_error)?;
                }
            }
            Workload::ReadStream => {
                let values: Vec<String> = (0..STREAM_LEN)
                    .map(|j| json!({"j": j}).to_string())
                    .collect();
                let _: u64 = self
                    .pool
                    .rpush(format!("{p}{run}:r{t}"), values)
                    .await
                    .map_err(redis_error)?;
            }
            Workload::ReadAll if t == 0 => {
                let values: Vec<String> =
                    (0..LOG_LEN).map(|j| json!({"j": j}).to_string()).collect();
                let _: u64 = self
                    .pool
                    .rpush(format!("{p}{run}:all"), values)
                    .await
                    .map_err(redis_error)?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn call(
        &self,
        w: Workload,
        t: usize,
        i: u64,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()> {
        let p = &self.prefix;
        match w {
            Workload::Get => {
                let key = format!("{}{run}:k{t}-{}", self.prefix, i % 100);
                let value: Option<String> = self.pool.get(key).await.map_err(redis_error)?;
                if value.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            // A raw compare-and-set without a script would need WATCH on a dedicated
            // connection; a plain SET is the baseline for both puts.
            Workload::Put | Workload::PutIfVersion => {
                let key = format!("{}{run}:k{t}-{}", self.prefix, i % 100);
                let _: () = self
                    .pool
                    .set(key, json!({"n": i}).to_string(), None, None, false)
                    .await
                    .map_err(redis_error)?;
            }
            Workload::Append | Workload::Append10 => {
                let n = if w == Workload::Append10 { 10 } else { 1 };
                let key = format!("{}{run}:s{t}", self.prefix);
                let values: Vec<String> = (0..n)
                    .map(|j| json!({"i": i, "j": j}).to_string())
                    .collect();
                let _: u64 = self.pool.rpush(key, values).await.map_err(redis_error)?;
            }
            Workload::Lock => {
                let key = format!("{}{run}:lock{t}", self.prefix);
                let token = i.to_string();
                let won: Option<String> = self
                    .pool
                    .set(
                        &key,
                        token.as_str(),
                        Some(Expiration::PX(10_000)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map_err(redis_error)?;
                if won.is_none() {
                    return Err(Error::internal("the task's own lock is held"));
                }
                let _: i64 = self
                    .pool
                    .evalsha(&self.release, vec![key], vec![token])
                    .await
                    .map_err(redis_error)?;
            }
            Workload::RateLimit => {
                let key = format!("{}{run}:rl{t}", self.prefix);
                let _: i64 = self
                    .pool
                    .evalsha(&self.count, vec![key], ())
                    .await
                    .map_err(redis_error)?;
            }
            Workload::PutMany | Workload::PutManySingles => {
                let pairs: Vec<(String, String)> = (0..BATCH)
                    .map(|j| {
                        let value = json!({"i": i, "j": j}).to_string();
                        (format!("{p}{run}:m{t}-{j}"), value)
                    })
                    .collect();
                self.pool.mset(pairs).await.map_err(redis_error)?;
            }
            // Pages of a list by index: Redis has no ordered map of documents; a list is what
            // a hand-written pager would keep.
            Workload::List => {
                let start = ((i as usize * PAGE) % LISTED) as i64;
                let page: Vec<String> = self
                    .pool
                    .lrange(format!("{p}{run}:l{t}"), start, start + PAGE as i64 - 1)
                    .await
                    .map_err(redis_error)?;
                if page.len() != PAGE {
                    return Err(Error::internal("a list page came back short"));
                }
            }
            // Every document of a hash, filtered here: Redis has no query of its own.
            Workload::Query => {
                let values: Vec<String> = self
                    .pool
                    .hvals(format!("{p}{run}:q"))
                    .await
                    .map_err(redis_error)?;
                let g = query_group(st.docs, i);
                let group = json!(g);
                let found = values
                    .iter()
                    .filter_map(|v| serde_json::from_str::<Value>(v).ok())
                    .filter(|v| v["group"] == group)
                    .count();
                if found != group_len(st.docs, g) {
                    return Err(Error::internal("the raw query found the wrong count"));
                }
            }
            Workload::ReadStream => {
                let events: Vec<String> = self
                    .pool
                    .lrange(format!("{p}{run}:r{t}"), 0, -1)
                    .await
                    .map_err(redis_error)?;
                if events.len() as u64 != STREAM_LEN {
                    return Err(Error::internal("the seeded stream came back short"));
                }
            }
            Workload::ReadAll => {
                let start = log_after(i) as i64;
                let events: Vec<String> = self
                    .pool
                    .lrange(format!("{p}{run}:all"), start, start + PAGE as i64 - 1)
                    .await
                    .map_err(redis_error)?;
                if events.len() != PAGE {
                    return Err(Error::internal("a read_all page came back short"));
                }
            }
            Workload::Subscription => {
                return Err(Error::internal("no raw subscription workload"));
            }
        }
        Ok(())
    }
}
