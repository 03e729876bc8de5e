//! A PgBouncer private to one test, in front of the test PostgreSQL server
//! (`KERNEL_TEST_POSTGRES_URL`), in `session` or `transaction` pool mode.
//!
//! ```no_run
//! # async fn demo() {
//! use kernel_testkit::pgbouncer::{PoolMode, PrivatePgBouncer};
//!
//! let db = kernel_testkit::postgres::fresh_database().await;
//! let bouncer = PrivatePgBouncer::start(PoolMode::Transaction).await;
//! let url = bouncer.url_for(db.url()); // postgres://postgres@127.0.0.1:<port>/<db>
//! // ... connect a driver to `url` ...
//! # }
//! ```
//!
//! Every database of the upstream server is reachable through it (`* =` in `[databases]`), so
//! one bouncer serves any test database. Authentication is `trust` on the bouncer (the upstream
//! user, read from the server URL, is the only one in its `auth_file`), and the upstream
//! connections carry the server URL's user and password. `ignore_startup_parameters` is
//! `extra_float_digits` only: a client that sends `options` (session settings at startup) is
//! refused by the bouncer — "unsupported startup parameter: options" — which is exactly what a
//! production pooler does.
//!
//! The program is found on `PATH`, then in `/usr/sbin` and `/usr/bin` (Debian puts it in
//! `/usr/sbin`). When it is missing, `start` panics saying `apt-get install pgbouncer`: a test
//! that needs it fails, it is never skipped. PgBouncer refuses to run as root: under uid 0 it
//! runs as the `postgres` system user, which owns its temporary directory. The process is
//! killed and the directory removed when the guard drops; a test process that is itself killed
//! (or aborts) leaves its bouncers running, holding only a loopback port and a temporary
//! directory.

use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::private::postgres::{effective_uid, postgres_user};
use crate::private::{free_port, log_tail, loopback};

/// How long PgBouncer may take to accept connections after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// PgBouncer's `pool_mode`: when a server connection goes back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server session for its lifetime.
    Session,
    /// When a transaction ends: consecutive transactions of one client may run on different
    /// server sessions (no session state, named prepared statements or LISTEN).
    Transaction,
}

impl PoolMode {
    /// The name PgBouncer's configuration uses (`session`, `transaction`).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer on a free port of 127.0.0.1, in front of the test PostgreSQL server.
#[derive(Debug)]
pub struct PrivatePgBouncer {
    /// Configuration, auth file and log; removed on drop.
    dir: TempDir,
    log: PathBuf,
    port: u16,
    mode: PoolMode,
    /// The upstream user (from the server URL), which clients log in as.
    user: String,
    child: Option<Child>,
}

impl PrivatePgBouncer {
    /// Starts PgBouncer in `mode` with a server pool of 20 connections per database.
    ///
    /// # Panics
    ///
    /// When `pgbouncer` is not installed (the message says `apt-get install pgbouncer`), when
    /// the server URL cannot be parsed, or when PgBouncer does not accept connections within
    /// [`READY_TIMEOUT`] (the message holds the end of its log).
    pub async fn start(mode: PoolMode) -> PrivatePgBouncer {
        PrivatePgBouncer::start_with(mode, &[]).await
    }

    /// [`PrivatePgBouncer::start`] with more `[pgbouncer]` settings, one `key = value` a line,
    /// written after the defaults (a later line wins): e.g. `default_pool_size = 2` to make
    /// clients share few server connections, or `ignore_startup_parameters =
    /// extra_float_digits,options`.
    ///
    /// # Panics
    ///
    /// As [`PrivatePgBouncer::start`].
    pub async fn start_with(mode: PoolMode, extra: &[&str]) -> PrivatePgBouncer {
        let program = find_pgbouncer();
        let upstream: tokio_postgres::Config =
            crate::postgres::server_url().parse().unwrap_or_else(|e| {
                panic!("kernel-testkit: KERNEL_TEST_POSTGRES_URL is not a valid URL: {e}")
            });
        let (host, port) = upstream_address(&upstream);
        let user = upstream
            .get_user()
            .map(str::to_owned)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".to_owned());
        let run_as = (effective_uid() == Some(0)).then(|| postgres_user("PgBouncer"));
        let dir = tempfile::Builder::new()
            .prefix("kernel-pgbouncer-")
            .tempdir()
            .unwrap_or_else(|e| panic!("kernel-testkit: cannot create a temporary directory: {e}"));
        let log = dir.path().join("pgbouncer.log");
        let auth = dir.path().join("users.txt");
        let ini = dir.path().join("pgbouncer.ini");
        let listen = free_port();

        let mut database = format!("host={host} port={port} user={}", quote_value(&user));
        if let Some(password) = upstream.get_password() {
            let password = String::from_utf8_lossy(password);
            let _ = write!(database, " password={}", quote_value(&password));
        }
        let mut text = format!(
            "[databases]\n\
             * = {database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = {mode}\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             max_db_connections = 0\n\
             ignore_startup_parameters = extra_float_digits\n\
             query_wait_timeout = 60\n\
             server_login_retry = 1\n\
             logfile = {log}\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            auth = auth.display(),
            mode = mode.as_str(),
            log = log.display(),
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        let escaped = user.replace('"', "\"\"");
        write_file(&auth, &format!("\"{escaped}\" \"\"\n"));
        write_file(&ini, &text);
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &auth, &ini] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
                    panic!(
                        "kernel-testkit: cannot give {} to the postgres user: {e}",
                        path.display()
                    )
                });
            }
        }

        let stderr = File::options()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .unwrap_or_else(|e| panic!("kernel-testkit: cannot open PgBouncer's stderr log: {e}"));
        if let Some((uid, gid)) = run_as {
            let _ = std::os::unix::fs::chown(dir.path().join("stderr.log"), Some(uid), Some(gid));
        }
        let mut command = Command::new(&program);
        command
            .arg(&ini)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "kernel-testkit: cannot start {} ({e}); install it with `apt-get install -y \
                 pgbouncer`",
                program.display()
            )
        });
        let mut bouncer = PrivatePgBouncer {
            dir,
            log,
            port: listen,
            mode,
            user,
            child: Some(child),
        };
        bouncer.wait_ready().await;
        bouncer
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pool mode.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Its log file (PgBouncer's `logfile`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The end of its log and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "{}{}",
            log_tail(&self.log, 4000),
            log_tail(&self.dir.path().join("stderr.log"), 2000)
        )
    }

    /// `database_url` (any URL of the test server, e.g. a
    /// [`TestDatabase::url`](crate::postgres::TestDatabase::url)) rewritten to go through this
    /// bouncer: same user and database, the bouncer's address, no password (the bouncer trusts
    /// loopback clients and holds the upstream password itself). Other URL parameters are
    /// dropped.
    ///
    /// # Panics
    ///
    /// When `database_url` is not a valid PostgreSQL URL.
    pub fn url_for(&self, database_url: &str) -> String {
        let config: tokio_postgres::Config = database_url.parse().unwrap_or_else(|e| {
            panic!("kernel-testkit: not a valid PostgreSQL URL for the bouncer: {e}")
        });
        let user = config.get_user().unwrap_or(&self.user);
        let dbname = config.get_dbname().unwrap_or(user);
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            percent(user),
            self.port,
            percent(dbname)
        )
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "kernel-testkit: pgbouncer exited at start ({status}); its log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if TcpStream::connect_timeout(&loopback(self.port), Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "kernel-testkit: pgbouncer did not accept connections on 127.0.0.1:{} within \
                     {} s; its log:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        // Never panic in drop (it may run while a failed test unwinds).
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where `pgbouncer` is: `PATH`, then `/usr/sbin`, `/usr/bin`, `/usr/local/bin`.
fn find_pgbouncer() -> PathBuf {
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path.into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kernel-testkit: the PgBouncer tests need the `pgbouncer` program, found neither \
                 on PATH nor in /usr/sbin, /usr/bin or /usr/local/bin. Install it: `apt-get \
                 install -y pgbouncer` (Debian / Ubuntu; scripts/test does it), `dnf install \
                 pgbouncer` (Fedora), `brew install pgbouncer` (macOS)."
            )
        })
}

/// The upstream host and port of the server URL (TCP only: PgBouncer is told a host name).
fn upstream_address(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host, port)
}

/// A value for a `[databases]` connection string: quoted when it holds a space or a quote.
fn quote_value(value: &str) -> String {
    if value.is_empty() || value.contains([' ', '\'', '\\']) {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    } else {
        value.to_owned()
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_urls_are_quoted() {
        assert_eq!(quote_value("postgres"), "postgres");
        assert_eq!(quote_value("a b'c"), "'a b\\'c'");
        assert_eq!(percent("kernel_test-1"), "kernel_test-1");
        assert_eq!(percent("a@b/c"), "a%40b%2Fc");
    }
}
