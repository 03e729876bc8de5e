//! Declared field indexes ([`StorageDriver::create_index`](kernel_core::StorageDriver)): one
//! partial expression index on `kernel_documents` per declared (namespace, field),
//!
//! ```sql
//! CREATE INDEX CONCURRENTLY kernel_fidx_<hash> ON kernel_documents USING hash
//!     ((value #> ARRAY[E'group']::text[])) WHERE namespace = E'orders'
//! ```
//!
//! recorded in `kernel_field_indexes` (migration 0010) so that every process on the database
//! knows it. A hash index on the field's `jsonb` value: `jsonb` equality is the kernel's
//! (numbers numerically, containers member by member), so `eq` and `in` keep their exact
//! semantics and only the plan changes. Hash, not B-tree: the index serves equality only, and a
//! B-tree entry must fit a third of a page (~2.7 kB), so a document with a larger value at the
//! indexed path could not be written; a hash index stores 4 bytes per row, whatever the value. The query builder writes the literal path and namespace for a
//! namespace with indexes ([`crate::sql::SqlBuilder::namespace`]); the planner matches neither
//! an expression nor a partial-index predicate through a bound parameter.
//!
//! Each driver caches the declared paths per namespace and reloads them all at most every
//! [`REFRESH`] (one statement, on the connection of the query that finds the cache stale). A
//! stale cache only costs speed — the query is the same with or without the index — so an
//! index declared by another process is used within [`REFRESH`], and one this driver declares
//! or drops at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use kernel_core::{Error, IndexInfo, IndexSpec, Query, Result, validate};
use tokio_postgres::types::Type;

use crate::PostgresDriver;
use crate::config::Pooler;
use crate::error::{pg, pg_write};
use crate::sql::{field_expr, quote_literal};

/// How old the cache of declared indexes may get before a query reloads it.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// The declared index paths of every namespace this driver's role can see.
#[derive(Debug, Default)]
pub(crate) struct IndexCache {
    state: RwLock<CacheState>,
    /// A reload is under way: other queries use what is cached meanwhile.
    reloading: AtomicBool,
}

#[derive(Debug, Default)]
struct CacheState {
    /// When it was last loaded; `None`: never, or invalidated.
    loaded: Option<Instant>,
    by_namespace: HashMap<String, Arc<[String]>>,
}

impl IndexCache {
    /// The cached paths of `namespace`, and whether the cache wants a reload.
    fn lookup(&self, namespace: &str) -> (Option<Arc<[String]>>, bool) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let stale = state.loaded.is_none_or(|at| at.elapsed() >= REFRESH);
        (state.by_namespace.get(namespace).cloned(), stale)
    }

    /// Forgets what is cached: the next query reloads (after this driver declared or dropped).
    pub(crate) fn invalidate(&self) {
        self.state.write().unwrap_or_else(|e| e.into_inner()).loaded = None;
    }

    fn store(&self, by_namespace: Option<HashMap<String, Arc<[String]>>>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = by_namespace {
            state.by_namespace = map;
        }
        // Also after a failed reload: try again after REFRESH, not on every query.
        state.loaded = Some(Instant::now());
    }
}

/// Whether the connected role may declare indexes: only the owner of `kernel_documents` (or a
/// superuser) may create an index on it. A tenant role under row-level security may not: its
/// driver reports `field_indexes: false` and answers `Unsupported`, while its queries still
/// use the indexes the owner declared for its namespaces. Without the table yet (the schema is
/// not migrated), `true`: whoever migrates it will own it.
pub(crate) async fn may_create(client: &tokio_postgres::Client) -> Result<bool> {
    let row = client
        .query_typed_one(
            "SELECT coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE')                  OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)                FROM pg_class c WHERE c.oid = to_regclass('kernel_documents')), true)",
            &[],
        )
        .await
        .map_err(pg)?;
    row.try_get(0).map_err(pg)
}

/// The backend name of the index on (`namespace`, `field`): a hash, since both may be longer
/// than an identifier (63 bytes) and hold any character. FNV-1a, fixed here so every process
/// and version names an index alike.
pub(crate) fn index_name(namespace: &str, field: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([0]).chain(field.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("kernel_fidx_{hash:016x}")
}

/// The `CREATE INDEX` statement of a declared index: the expression exactly as
/// [`crate::sql::SqlBuilder`] writes the field for an indexed path (the planner matches them
/// textually after constant folding), limited to the namespace's rows.
fn create_statement(namespace: &str, field: &str, name: &str) -> String {
    let expr = field_expr("value", field, |segments| {
        let items: Vec<String> = segments.iter().map(|s| quote_literal(s)).collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    });
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{name}\" ON kernel_documents USING hash ({expr}) \
         WHERE namespace = {}",
        quote_literal(namespace)
    )
}

impl PostgresDriver {
    /// The plan PostgreSQL chooses for `query` on `namespace`, as `EXPLAIN` prints it (one line
    /// per row), for the statement exactly as [`kernel_core::StorageDriver::query`] sends it,
    /// with its parameters: to check that a declared index is used.
    pub async fn explain_query(&self, namespace: &str, query: &Query) -> Result<String> {
        validate::namespace(namespace)?;
        query
            .validate()
            .map_err(|e| e.with_context("namespace", namespace))?;
        let client = self.client().await?;
        let b = self.query_sql(&client, namespace, query).await?;
        let rows = client
            .query_typed(&format!("EXPLAIN {}", b.sql), &b.params())
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        let lines = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0).map_err(pg))
            .collect::<Result<Vec<_>>>()?;
        Ok(lines.join("\n"))
    }

    /// The declared index paths of `namespace` (`None`: none), reloading the cache on
    /// `client` when it is stale. A failed reload is logged and the query goes on without
    /// indexes: its result is the same.
    pub(crate) async fn indexed_fields(
        &self,
        client: &Object,
        namespace: &str,
    ) -> Option<Arc<[String]>> {
        let cache = &self.inner.indexes;
        let (paths, stale) = cache.lookup(namespace);
        if !stale || cache.reloading.swap(true, Ordering::AcqRel) {
            return paths;
        }
        let loaded = self.load_indexes(client).await;
        let map = match loaded {
            Ok(map) => Some(map),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read kernel_field_indexes: queries run without declared indexes");
                None
            }
        };
        cache.store(map);
        cache.reloading.store(false, Ordering::Release);
        cache.lookup(namespace).0
    }

    async fn load_indexes(&self, client: &Object) -> Result<HashMap<String, Arc<[String]>>> {
        let rows = self
            .statements()
            .query(
                client,
                "SELECT namespace, field FROM kernel_field_indexes ORDER BY namespace, field",
                &[],
            )
            .await
            .map_err(pg)?;
        let mut grouped: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let namespace: String = row.try_get(0).map_err(pg)?;
            let field: String = row.try_get(1).map_err(pg)?;
            grouped.entry(namespace).or_default().push(field);
        }
        Ok(grouped
            .into_iter()
            .map(|(ns, fields)| (ns, Arc::from(fields)))
            .collect())
    }

    /// `Unsupported` when the connected role may not declare indexes ([`may_create`]).
    fn check_may_index(&self, operation: &str, namespace: &str) -> Result<()> {
        if self.inner.can_index {
            return Ok(());
        }
        Err(Error::unsupported(format!(
            "{operation}: the connected role does not own kernel_documents; declare field \
             indexes as the owner (queries of this driver use them)"
        ))
        .with_context("namespace", namespace)
        .with_context("backend", crate::error::BACKEND))
    }

    /// Whether [`kernel_core::Capabilities::field_indexes`] holds.
    pub(crate) fn may_index(&self) -> bool {
        self.inner.can_index
    }

    /// [`kernel_core::StorageDriver::create_index`].
    pub(crate) async fn create_field_index(
        &self,
        namespace: &str,
        spec: &IndexSpec,
    ) -> Result<IndexInfo> {
        spec.validate(namespace)?;
        self.check_may_index("create_index", namespace)?;
        let field = spec.field.as_str();
        let name = index_name(namespace, field);
        let ctx = |e: Error| {
            e.with_context("namespace", namespace)
                .with_context("field", validate::escape(field))
        };
        let mut client = self.client().await?;
        // A build that failed or was interrupted leaves an invalid index of the name behind,
        // which `IF NOT EXISTS` would keep: drop it and build again.
        let valid: Option<bool> = self
            .statements()
            .query_opt(
                &client,
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
                &[&name],
            )
            .await
            .map_err(|e| ctx(pg(e)))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| ctx(pg(e)))?;
        if valid != Some(true) {
            if valid == Some(false) {
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""))
                    .await
                    .map_err(|e| ctx(pg_write(e)))?;
            }
            client = self
                .build(client, &create_statement(namespace, field, &name))
                .await
                .map_err(ctx)?;
            // Statistics of the new expression (ANALYZE reads a bounded sample), so the planner
            // estimates an equality on it from the data rather than a default.
            client
                .batch_execute("ANALYZE kernel_documents")
                .await
                .map_err(|e| ctx(pg(e)))?;
        }
        self.statements()
            .execute(
                &client,
                "INSERT INTO kernel_field_indexes (namespace, field, index_name) \
                 VALUES ($1, $2, $3) ON CONFLICT (namespace, field) DO NOTHING",
                &[&namespace, &field, &name],
            )
            .await
            .map_err(|e| ctx(pg_write(e)))?;
        self.inner.indexes.invalidate();
        Ok(IndexInfo::new(namespace, field, name))
    }

    /// Runs a `CREATE INDEX CONCURRENTLY` (a simple-protocol statement of its own: it cannot
    /// run in a transaction) without the driver's `statement_timeout`, which is meant for
    /// single reads and writes, not for reading a whole namespace. Through a transaction pooler
    /// no session setting may be made: the server's own timeout applies there.
    /// Gives back the connection to go on with.
    async fn build(&self, client: Object, ddl: &str) -> Result<Object> {
        if self.inner.config.pooler == Pooler::Transaction {
            client.batch_execute(ddl).await.map_err(pg_write)?;
            return Ok(client);
        }
        let before: String = client
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg)?;
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(pg)?;
        let built = client.batch_execute(ddl).await.map_err(pg_write);
        let restored = client
            .query_typed(
                "SELECT set_config('statement_timeout', $1, false)",
                &[(&before, Type::TEXT)],
            )
            .await;
        built?;
        match restored {
            Ok(_) => Ok(client),
            Err(e) => {
                // It would go back to the pool without a timeout: end it, take another.
                tracing::warn!(error = %e, "cannot restore statement_timeout: closing the connection");
                drop(Object::take(client));
                self.client().await
            }
        }
    }

    /// [`kernel_core::StorageDriver::drop_index`].
    pub(crate) async fn drop_field_index(&self, namespace: &str, field: &str) -> Result<bool> {
        IndexSpec::new(field).validate(namespace)?;
        self.check_may_index("drop_index", namespace)?;
        let ctx = |e: Error| {
            e.with_context("namespace", namespace)
                .with_context("field", validate::escape(field))
        };
        let client = self.client().await?;
        let name = index_name(namespace, field);
        let recorded = self
            .statements()
            .execute(
                &client,
                "DELETE FROM kernel_field_indexes WHERE namespace = $1 AND field = $2",
                &[&namespace, &field],
            )
            .await
            .map_err(|e| ctx(pg_write(e)))?;
        self.inner.indexes.invalidate();
        let built = self.drop_backend_index(&client, &name).await.map_err(ctx)?;
        Ok(recorded > 0 || built)
    }

    /// Drops the index `name` if it exists; whether it did.
    async fn drop_backend_index(&self, client: &Object, name: &str) -> Result<bool> {
        let exists: bool = self
            .statements()
            .query_one(client, "SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg)?;
        if exists {
            client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""))
                .await
                .map_err(pg_write)?;
        }
        Ok(exists)
    }

    /// [`kernel_core::StorageDriver::list_indexes`].
    pub(crate) async fn list_field_indexes(&self, namespace: &str) -> Result<Vec<IndexInfo>> {
        validate::namespace(namespace)?;
        self.check_may_index("list_indexes", namespace)?;
        let client = self.client().await?;
        let rows = self
            .statements()
            .query(
                &client,
                "SELECT field, index_name FROM kernel_field_indexes WHERE namespace = $1 \
                 ORDER BY field",
                &[&namespace],
            )
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        rows.iter()
            .map(|r| {
                let field: String = r.try_get(0).map_err(pg)?;
                let name: String = r.try_get(1).map_err(pg)?;
                Ok(IndexInfo::new(namespace, field, name))
            })
            .collect()
    }

    /// Drops the indexes of a namespace that was just dropped. Looked up first: most
    /// namespaces have none, and a tenant role (which may read but not write the records, nor
    /// drop an index) then has nothing to fail on.
    pub(crate) async fn drop_namespace_indexes(
        &self,
        client: &Object,
        namespace: &str,
    ) -> Result<()> {
        let rows = self
            .statements()
            .query(
                client,
                "SELECT field, index_name FROM kernel_field_indexes WHERE namespace = $1",
                &[&namespace],
            )
            .await
            .map_err(pg)?;
        if rows.is_empty() {
            return Ok(());
        }
        self.statements()
            .execute(
                client,
                "DELETE FROM kernel_field_indexes WHERE namespace = $1",
                &[&namespace],
            )
            .await
            .map_err(pg_write)?;
        self.inner.indexes.invalidate();
        for row in &rows {
            let name: String = row.try_get(1).map_err(pg)?;
            self.drop_backend_index(client, &name).await?;
        }
        Ok(())
    }
}
