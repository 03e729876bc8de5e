//! The PostgreSQL test server: a database of its own for every test.
//!
//! The server is the one named by `KERNEL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); that URL's database is only used to create
//! and drop others. A test that cannot reach it fails with instructions; it is never skipped.
//!
//! Two kinds of test database:
//!
//! * [`fresh_database`]: created empty from `template0` and dropped when the guard drops. For
//!   tests that change the schema (migrations).
//! * [`database_from_template`]: a clone of a template database that the caller's `init`
//!   prepares once (per schema fingerprint: concurrent test binaries serialise on an advisory
//!   lock and reuse a finished template). `CREATE DATABASE` and `DROP DATABASE` cost about a
//!   quarter of a second each (they copy and WAL-log the whole catalog), which would dominate a
//!   suite of hundreds of short tests; so when the guard drops, the clone goes back to this
//!   process's pool, and the next test that takes it gets it *reset*: every other session on it
//!   is terminated, every table (except `kernel_schema_migrations`) is emptied and every sequence
//!   restarted, and a clone whose schema changed is dropped instead of reused. A test
//!   therefore always starts on a database no other test is using, holding exactly the
//!   template's schema and no rows.
//!
//! Pooled clones outlive their tests but not their process: each process holds a session
//! advisory lock on its own token for its lifetime (on a connection of a background thread),
//! and the first pool use of every process drops the clones of processes whose lock is free,
//! that is, of processes that have ended.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

/// Environment variable naming the test server.
pub const URL_VAR: &str = "KERNEL_TEST_POSTGRES_URL";
/// Used when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The advisory lock (two-int form) that serialises building a template database. Reserved in
/// the kernel's lock class; `driver_postgres::advisory` lists it with every other kernel lock
/// and its tests check the two agree.
pub const TEMPLATE_LOCK: (i32, i32) = (1_263_685_452, 3);
/// The advisory lock class (two-int form) of the session locks that tell a test process is
/// alive: `(OWNER_CLASS, process token)`. Listed in `driver_postgres::advisory` too.
pub const OWNER_CLASS: i32 = 1_263_685_453;

/// The table that records applied migrations: kept when a pooled clone is reset, so the
/// clone's schema stays recorded as migrated.
const MIGRATIONS_TABLE: &str = "kernel_schema_migrations";

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Templates this process has made or found ready, by name.
static READY: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Idle pooled clones: (template, database, schema signature).
static IDLE: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
/// This process's owner token, once its liveness lock is held.
static OWNER: OnceLock<Result<i32, String>> = OnceLock::new();

/// The server URL the tests use.
pub fn server_url() -> String {
    std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// A database that belongs to one test until this guard drops.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin: Config,
    /// `Some((template, signature))` for a pooled clone.
    pooled: Option<(String, String)>,
}

impl TestDatabase {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for it (the server URL with the database replaced).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((template, signature)) = self.pooled.take() {
            // Reset happens when it is taken again, after the connections of this test (whose
            // runtime may still be shutting down) are gone.
            if let Ok(mut idle) = IDLE.lock() {
                idle.push((template, self.name.clone(), signature));
                return;
            }
        }
        drop_now(&self.admin, &self.name);
    }
}

/// Drops a database from inside a runtime (where blocking on a future is not allowed): a thread
/// with its own runtime does it, and we wait.
fn drop_now(admin: &Config, name: &str) {
    let admin = admin.clone();
    let db = name.to_owned();
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = connect(&admin).await?;
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&db)
                ))
                .await
                .map_err(|e| e.to_string())
        })
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("kernel-testkit: could not drop test database {name}: {e}"),
        Err(_) => eprintln!("kernel-testkit: the thread dropping test database {name} panicked"),
    }
}

/// A fresh, empty database (from `template0`), dropped when the guard drops.
pub async fn fresh_database() -> TestDatabase {
    let admin = admin_config();
    let client = connect_or_panic(&admin).await;
    let name = format!(
        "kernel_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    exec(
        &client,
        &format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
            ident(&name)
        ),
    )
    .await;
    TestDatabase {
        url: url_for(&name),
        name,
        admin,
        pooled: None,
    }
}

/// A database holding the template's schema and no rows, for this test only (see the module
/// docs: clones are pooled and reset between tests).
///
/// `init` gets the template's URL, prepares it (runs migrations) and must leave no connection
/// open to it. Pass a fingerprint (ASCII letters and digits) that changes whenever what `init`
/// does changes (a hash of the migrations), so an old template is never used for a new schema.
/// A test must not change the schema of this database; use [`fresh_database`] for that (a
/// changed schema is detected and the clone is dropped rather than reused).
pub async fn database_from_template<F, Fut>(fingerprint: &str, init: F) -> TestDatabase
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    assert!(
        !fingerprint.is_empty() && fingerprint.bytes().all(|b| b.is_ascii_alphanumeric()),
        "template fingerprint must be non-empty ASCII letters and digits, got {fingerprint:?}"
    );
    let admin = admin_config();
    let client = connect_or_panic(&admin).await;
    let owner = owner_token(&admin);
    let template = format!("kernel_tmpl_{}", fingerprint.to_ascii_lowercase());
    let known = READY.lock().map(|r| r.contains(&template)).unwrap_or(false);
    if !known {
        remove_dead_owners_clones(&client).await;
        ensure_template(&client, &template, init).await;
        if let Ok(mut r) = READY.lock() {
            r.push(template.clone());
        }
    }
    // Reuse an idle clone when one is there and still has the template's schema.
    loop {
        let taken = IDLE.lock().ok().and_then(|mut idle| {
            let i = idle.iter().position(|(t, _, _)| *t == template)?;
            Some(idle.swap_remove(i))
        });
        let Some((_, name, signature)) = taken else {
            break;
        };
        match reset(&client, &name, &signature).await {
            Ok(()) => {
                return TestDatabase {
                    url: url_for(&name),
                    name,
                    admin,
                    pooled: Some((template, signature)),
                };
            }
            Err(why) => {
                eprintln!("kernel-testkit: not reusing {name} ({why}); dropping it");
                exec(
                    &client,
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&name)),
                )
                .await;
            }
        }
    }
    let name = format!(
        "kernel_p_{:08x}_{}",
        owner as u32,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // Cloning needs the template to have no other session; a concurrent clone can briefly count
    // as one, so retry that case.
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {}",
        ident(&name),
        ident(&template)
    );
    let mut attempt = 0;
    loop {
        match client.batch_execute(&sql).await {
            Ok(()) => break,
            Err(e) if attempt < 50 && e.code().is_some_and(|c| c.code() == "55006") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 + 10 * attempt)).await;
            }
            Err(e) => panic!("kernel-testkit: cannot create test database {name}: {e}"),
        }
    }
    let url = url_for(&name);
    let db = connect_or_panic(&database_config(&url)).await;
    let signature = schema_signature(&db)
        .await
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot read the schema of {name}: {e}"));
    TestDatabase {
        url,
        name,
        admin,
        pooled: Some((template, signature)),
    }
}

/// Terminates every session on `name`, checks its schema is still the template's, and empties
/// every table.
async fn reset(admin: &Client, name: &str, signature: &str) -> Result<(), String> {
    terminate_sessions(admin, name).await?;
    let db = connect(&database_config(&url_for(name))).await?;
    if schema_signature(&db).await? != signature {
        return Err("its schema changed".to_owned());
    }
    empty_tables(&db).await
}

/// Ends every session on database `name` but the caller's (`admin` is a connection to any
/// database of the same server): what a test left behind must not hold locks on the next one.
pub async fn terminate_sessions(admin: &Client, name: &str) -> Result<(), String> {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Empties every table of the database `db` is connected to, except the record of applied
/// migrations, and restarts every sequence: a database as fresh as its template, without the
/// cost of creating one. The connected user must be a superuser (see below).
pub async fn empty_tables(db: &Client) -> Result<(), String> {
    // DELETE, not TRUNCATE: the tables of a short test hold few rows, and TRUNCATE's new
    // files and their fsync cost more than deleting them.
    let statements: Option<String> = db
        .query_one(
            "SELECT string_agg(s, '; ') FROM ( \
               SELECT format('DELETE FROM %I.%I', schemaname, tablename) AS s FROM pg_tables \
               WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
               AND tablename <> $1 \
               UNION ALL \
               SELECT format('SELECT setval(%L, %s, false)', format('%I.%I', schemaname, sequencename), start_value) \
               FROM pg_sequences WHERE schemaname NOT IN ('pg_catalog', 'information_schema')) AS q",
            &[&MIGRATIONS_TABLE],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if let Some(statements) = statements {
        // `replica` turns user triggers off for the transaction: the kernel's append-only guard
        // (migration 0006) refuses DELETE on the event tables, rightly, for everyone but this
        // reset. The test server's user is a superuser, which the setting needs.
        db.batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; {statements}; COMMIT"
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A digest of the user schema: tables, columns, indexes, functions and their bodies.
async fn schema_signature(db: &Client) -> Result<String, String> {
    db.query_one(
        "SELECT md5(coalesce((SELECT string_agg(c.relname::text || ':' || c.relkind::text || ':' || \
           coalesce((SELECT string_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum) \
                     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''), \
           ';' ORDER BY c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')), '') || '|' || \
         coalesce((SELECT string_agg(p.proname::text || md5(p.prosrc), ';' ORDER BY p.proname, p.prosrc) \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')), ''))",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| e.to_string())
}

/// This process's owner token: a random number whose session advisory lock a background thread
/// holds until the process ends.
fn owner_token(admin: &Config) -> i32 {
    let result = OWNER.get_or_init(|| {
        let token = (uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32;
        let admin = admin.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let spawned = std::thread::Builder::new()
            .name("kernel-testkit-pg-owner".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let (client, connection) = match admin.connect(NoTls).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let conn = tokio::spawn(connection);
                    let locked = client
                        .execute("SELECT pg_advisory_lock($1, $2)", &[&OWNER_CLASS, &token])
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    let failed = locked.is_err();
                    let _ = ready_tx.send(locked);
                    if failed {
                        return;
                    }
                    // Hold the session (and so the lock) until the process exits.
                    if let Ok(Err(e)) = conn.await {
                        eprintln!("kernel-testkit: the pool owner connection ended: {e}");
                    }
                    drop(client);
                });
            });
        if let Err(e) = spawned {
            return Err(e.to_string());
        }
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(token),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the owner thread ended early".to_owned()),
        }
    });
    match result {
        Ok(t) => *t,
        Err(e) => panic!(
            "kernel-testkit: cannot hold the test-database owner lock on the PostgreSQL test \
             server: {e}"
        ),
    }
}

/// Drops pooled clones (`kernel_p_<owner>_<n>`) whose owner process has ended (its liveness
/// lock is free).
async fn remove_dead_owners_clones(client: &Client) {
    let rows = match client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'kernel\\_p\\_%'",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("kernel-testkit: cannot list old test databases: {e}");
            return;
        }
    };
    for row in rows {
        let name: String = row.get(0);
        let Some(owner) = name
            .strip_prefix("kernel_p_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        let owner = owner as i32;
        let free = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&OWNER_CLASS, &owner],
            )
            .await
            .map(|r| r.get::<_, bool>(0));
        if let Ok(true) = free {
            if let Err(e) = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&name)
                ))
                .await
            {
                eprintln!("kernel-testkit: cannot drop old test database {name}: {e}");
            }
            if let Err(e) = client
                .execute("SELECT pg_advisory_unlock($1, $2)", &[&OWNER_CLASS, &owner])
                .await
            {
                eprintln!("kernel-testkit: cannot release an owner lock: {e}");
            }
        }
    }
}

async fn ensure_template<F, Fut>(client: &Client, template: &str, init: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    // Session-level lock: held across the CREATE DATABASE (which cannot run in a transaction).
    client
        .execute(
            "SELECT pg_advisory_lock($1, $2)",
            &[&TEMPLATE_LOCK.0, &TEMPLATE_LOCK.1],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot take the template lock: {e}"));
    // A finished template is marked IS_TEMPLATE; anything else of that name is a leftover of
    // an interrupted run.
    let ready: Option<bool> = client
        .query_opt(
            "SELECT datistemplate FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot look up {template}: {e}"))
        .map(|r| r.get(0));
    if ready != Some(true) {
        if ready == Some(false) {
            exec(
                client,
                &format!("DROP DATABASE {} WITH (FORCE)", ident(template)),
            )
            .await;
        }
        exec(
            client,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
                ident(template)
            ),
        )
        .await;
        if let Err(e) = init(url_for(template)).await {
            exec(
                client,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(template)),
            )
            .await;
            unlock(client).await;
            panic!("kernel-testkit: preparing the template database {template} failed: {e}");
        }
        exec(
            client,
            &format!("ALTER DATABASE {} WITH IS_TEMPLATE true", ident(template)),
        )
        .await;
        drop_other_templates(client, template).await;
    }
    unlock(client).await;
}

/// A new template means a new schema: templates of other schemas will not be cloned again
/// (test binaries of one build share one schema), so they go instead of piling up with every
/// migration change. A failure here only leaves a database behind: reported, not fatal.
async fn drop_other_templates(client: &Client, keep: &str) {
    let others = match client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'kernel\\_tmpl\\_%' AND datname <> $1",
            &[&keep],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("kernel-testkit: cannot list old template databases: {e}");
            return;
        }
    };
    for name in others {
        // Two statements: DROP DATABASE cannot run inside the implicit transaction of a
        // multi-statement string.
        let unmark = format!("ALTER DATABASE {} WITH IS_TEMPLATE false", ident(&name));
        let drop = format!("DROP DATABASE {} WITH (FORCE)", ident(&name));
        let result = match client.batch_execute(&unmark).await {
            Ok(()) => client.batch_execute(&drop).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            eprintln!("kernel-testkit: cannot drop the old template database {name}: {e}");
        }
    }
}

async fn unlock(client: &Client) {
    if let Err(e) = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&TEMPLATE_LOCK.0, &TEMPLATE_LOCK.1],
        )
        .await
    {
        eprintln!("kernel-testkit: cannot release the template lock: {e}");
    }
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("kernel-testkit: `{sql}` failed: {e}"));
}

fn admin_config() -> Config {
    database_config(&server_url())
}

fn database_config(url: &str) -> Config {
    url.parse().unwrap_or_else(|e| {
        panic!("kernel-testkit: {URL_VAR} is not a valid PostgreSQL connection string: {e}")
    })
}

/// The server URL with its database replaced by `db`, in URL or key=value form.
fn url_for(db: &str) -> String {
    let url = server_url();
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (authority, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let query = tail.find('?').map_or("", |i| &tail[i..]);
        format!("{scheme}{authority}/{db}{query}")
    } else {
        format!("{url} dbname={db}")
    }
}

async fn connect(config: &Config) -> Result<Client, String> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("kernel-testkit: test-server connection failed: {e}");
        }
    });
    Ok(client)
}

async fn connect_or_panic(config: &Config) -> Client {
    match connect(config).await {
        Ok(c) => c,
        // A server that answers but refuses the user (Debian's default scram auth on
        // 127.0.0.1) needs other advice than one that does not answer at all.
        Err(e) if e.contains("password") || e.contains("authentication") => panic!(
            "kernel-testkit: the PostgreSQL server at {URL_VAR} (default {DEFAULT_URL}) answers \
             but refuses the user: {e}\nPut the password in {URL_VAR}, or allow local trust \
             authentication (`host all all 127.0.0.1/32 trust` in pg_hba.conf, then reload; \
             scripts/test does this)."
        ),
        Err(e) => panic!(
            "kernel-testkit: no PostgreSQL server answers at {URL_VAR} (default {DEFAULT_URL}): \
             {e}\nStart it with: scripts/test (does it); or `pg_lsclusters` and \
             `pg_ctlcluster <version> main start` (Debian: `apt-get install -y postgresql` \
             first); or point {URL_VAR} at a server where the user may create databases."
        ),
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
