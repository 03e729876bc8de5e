//! Servers private to one test, which the test may kill with `SIGKILL` and start again: a
//! PostgreSQL server of its own ([`PrivatePostgres`], feature `postgres`) and a Redis server of
//! its own ([`PrivateRedis`]), and Redis topologies: a 6-node Redis Cluster
//! ([`PrivateRedisCluster`]) and a Sentinel set-up ([`PrivateRedisSentinel`]).
//!
//! The shared test servers (`KERNEL_TEST_POSTGRES_URL`, `KERNEL_TEST_REDIS_URL`) must never be
//! stopped by a test: other tests use them at the same time. A fault test that needs a server to
//! crash starts one here instead, on a free loopback port, with its data in a temporary
//! directory:
//!
//! ```no_run
//! # async fn demo() {
//! use kernel_testkit::private::PrivateRedis;
//!
//! let mut redis = PrivateRedis::start().await; // appendonly yes, appendfsync always
//! let url = redis.url().to_owned(); // redis://127.0.0.1:<port>
//! // ... boot a kernel on `url`, write ...
//! redis.kill(); // SIGKILL: no shutdown, no final save
//! redis.restart().await; // same port, same directory: the AOF replays
//! // ... check that every acknowledged write is there ...
//! # }
//! ```
//!
//! Each server is killed and its directory removed when its guard drops. A test process that is
//! itself killed leaves its servers running (nothing can clean up after `SIGKILL`); they hold
//! only a temporary directory and a loopback port.
//!
//! Finding the programs: `initdb` and `postgres` in `pg_config --bindir`, then the highest
//! `/usr/lib/postgresql/<version>/bin`, then `PATH`; `redis-server` in `PATH`, then
//! `/usr/bin` and `/usr/local/bin`. When a program is missing, `start` panics naming it and the
//! package to install (a fault test fails; it is never skipped). PostgreSQL refuses to run as
//! root: under uid 0 the data directory is given to the `postgres` system user and `initdb` and
//! `postgres` run as that user (through the standard library's `Command::uid` / `gid`, so the
//! child is the postmaster itself, not a wrapper such as `runuser`).

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

#[path = "redis_topology.rs"]
mod redis_topology;
pub use redis_topology::{
    ClusterMaster, FAILOVER_TIMEOUT, PrivateRedisCluster, PrivateRedisSentinel, SENTINEL_SERVICE,
    TOPOLOGY_READY_TIMEOUT,
};

/// How long a (re)started server may take to accept connections, crash recovery or AOF replay
/// included.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the `kill` of either server waits for every process to be gone and the port to be
/// closed.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (bound once, then released for the server to take).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| {
        panic!("kernel-testkit: cannot bind a loopback port to find a free one: {e}")
    });
    match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => panic!("kernel-testkit: cannot read the address of a loopback listener: {e}"),
    }
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(200)).is_ok()
}

/// Waits (blocking, bounded by [`GONE_TIMEOUT`]) until nothing listens on `port`.
fn wait_port_closed(port: u16, what: &str) {
    let deadline = Instant::now() + GONE_TIMEOUT;
    while port_open(port) {
        assert!(
            Instant::now() < deadline,
            "kernel-testkit: {what} was killed but 127.0.0.1:{port} still accepts connections \
             after {} s",
            GONE_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `max` bytes of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(max);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// Opens `path` for appending, as the stdout / stderr of a server.
fn log_file(path: &Path) -> (Stdio, Stdio) {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| {
                panic!(
                    "kernel-testkit: cannot open the server log {}: {e}",
                    path.display()
                )
            })
    };
    (Stdio::from(open()), Stdio::from(open()))
}

/// The first of `dirs` that holds every program in `programs`.
fn dir_with(dirs: impl IntoIterator<Item = PathBuf>, programs: &[&str]) -> Option<PathBuf> {
    dirs.into_iter()
        .find(|d| programs.iter().all(|p| d.join(p).is_file()))
}

/// The directories of `PATH`.
fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Sends `signal` (`KILL`, `STOP`...) to `pids` with the `kill` program; the standard library
/// only sends `SIGKILL`, and only to its own children, and this crate has no unsafe code.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut command = Command::new("kill");
    command.arg("-s").arg(signal);
    command.args(pids.iter().map(u32::to_string));
    // A process that is already gone makes `kill` fail for that pid: not a problem here.
    match command.stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => {}
        Err(e) => panic!(
            "kernel-testkit: cannot run `kill -s {signal}` ({e}): install procps \
             (`apt-get install -y procps`)"
        ),
    }
}

/// Processes that are alive (not gone, not zombies) among `pids`.
fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(
            |pid| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // The state follows the command name in parentheses, which may hold spaces.
                Ok(stat) => stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state != "Z" && state != "X"),
                Err(_) => false,
            },
        )
        .collect()
}

/// Every live process whose parent is `parent` or whose working directory is `cwd` (every
/// PostgreSQL process works in its data directory), read from `/proc`.
fn processes_of(parent: u32, cwd: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let by_parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent);
            by_parent || std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|dir| dir == cwd)
        })
        .collect();
    pids.retain(|pid| *pid != std::process::id());
    alive(&pids)
}

#[cfg(feature = "postgres")]
pub use self::postgres::PrivatePostgres;

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// The effective uid of this process (Linux: `/proc/self/status`; elsewhere `id -u`).
    pub(crate) fn effective_uid() -> Option<u32> {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|euid| euid.parse().ok());
            if uid.is_some() {
                return uid;
            }
        }
        command_number("id", &["-u"])
    }

    /// Runs a command and parses its output as a number.
    fn command_number(program: &str, args: &[&str]) -> Option<u32> {
        let out = Command::new(program).args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// [`super::signal`] for drop paths: never panics.
    fn signal_quietly(signal: &str, pid: u32) {
        let _ = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The `postgres` system user's uid and gid, to run `server` (PostgreSQL, PgBouncer: both
    /// refuse to run as root) as when this process is root.
    pub(crate) fn postgres_user(server: &str) -> (u32, u32) {
        match (
            command_number("id", &["-u", "postgres"]),
            command_number("id", &["-g", "postgres"]),
        ) {
            (Some(uid), Some(gid)) => (uid, gid),
            _ => panic!(
                "kernel-testkit: the tests run as root, and {server} refuses to run as root, but \
                 there is no `postgres` system user to run it as. Create one (`useradd --system \
                 --user-group --home-dir /var/lib/postgresql postgres`; `apt-get install -y \
                 postgresql` does it) or run the tests as another user."
            ),
        }
    }

    /// The directory holding `initdb` and `postgres`.
    fn find_bindir() -> PathBuf {
        const PROGRAMS: [&str; 2] = ["initdb", "postgres"];
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let e = e.ok()?;
                        let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                        Some((version, e.path().join("bin")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        let candidates = from_pg_config
            .into_iter()
            .chain(versioned.into_iter().map(|(_, dir)| dir))
            .chain(path_dirs());
        dir_with(candidates, &PROGRAMS).unwrap_or_else(|| {
            panic!(
                "kernel-testkit: PrivatePostgres needs the PostgreSQL server programs `initdb` \
                 and `postgres`, found neither in `pg_config --bindir`, in \
                 /usr/lib/postgresql/<version>/bin nor on PATH. Install them: \
                 `apt-get install -y postgresql` (Debian / Ubuntu), `dnf install \
                 postgresql-server` (Fedora), `brew install postgresql` (macOS)."
            )
        })
    }

    /// A PostgreSQL server private to one test: its own data directory in a temporary
    /// directory, its own loopback port, trust authentication for the `postgres` user.
    ///
    /// [`PrivatePostgres::kill`] kills the postmaster and every process of the server with
    /// `SIGKILL` (a crash: no checkpoint, no shutdown); [`PrivatePostgres::restart`] starts it
    /// again on the same directory and port, which runs crash recovery. Dropping the guard kills
    /// the server and removes its directory.
    #[derive(Debug)]
    pub struct PrivatePostgres {
        /// Holds `data/` (the cluster), the socket and `postgres.log`; removed on drop.
        root: TempDir,
        data: PathBuf,
        log: PathBuf,
        bindir: PathBuf,
        port: u16,
        url: String,
        /// The uid and gid to run as (the `postgres` user) when this process is root.
        run_as: Option<(u32, u32)>,
        /// The postmaster, while it runs.
        postmaster: Option<Child>,
        /// `ssl = on` with this certificate and key (copies inside `root`), for TLS tests.
        ssl: Option<(PathBuf, PathBuf)>,
    }

    impl PrivatePostgres {
        /// Creates a cluster with `initdb --auth=trust -U postgres`, starts `postgres` on a free
        /// port of 127.0.0.1 and waits until it accepts connections.
        ///
        /// # Panics
        ///
        /// When the server programs are missing, when running as root without a `postgres`
        /// user, or when the server does not start within [`READY_TIMEOUT`]; the message says
        /// what is missing and how to fix it, with the end of the server's log.
        pub async fn start() -> PrivatePostgres {
            PrivatePostgres::start_inner(None).await
        }

        /// [`PrivatePostgres::start`] with `ssl = on`, serving `ca`'s server certificate (made
        /// for `127.0.0.1` and `localhost`). Plain connections are still accepted, so the
        /// readiness check and `sslmode=prefer` work; [`PrivatePostgres::url`] names no
        /// `sslmode`.
        ///
        /// # Panics
        ///
        /// As [`PrivatePostgres::start`], and when the certificate cannot be copied.
        pub async fn start_tls(ca: &super::TestCa) -> PrivatePostgres {
            PrivatePostgres::start_inner(Some(ca)).await
        }

        async fn start_inner(ca: Option<&super::TestCa>) -> PrivatePostgres {
            let bindir = find_bindir();
            let run_as = (effective_uid() == Some(0)).then(|| postgres_user("PostgreSQL"));
            let root = tempfile::Builder::new()
                .prefix("kernel-pg-")
                .tempdir()
                .unwrap_or_else(|e| {
                    panic!("kernel-testkit: cannot create a temporary directory: {e}")
                });
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).unwrap_or_else(|e| {
                    panic!(
                        "kernel-testkit: cannot give {} to the postgres user: {e}",
                        root.path().display()
                    )
                });
            }
            let data = root.path().join("data");
            let log = root.path().join("postgres.log");
            let port = free_port();
            // PostgreSQL wants the key readable by its user only: copies it owns, mode 0600.
            let ssl = ca.map(|ca| {
                let cert = root.path().join("server.crt");
                let key = root.path().join("server.key");
                for (from, to) in [(ca.server_cert(), &cert), (ca.server_key(), &key)] {
                    std::fs::copy(&from, to).unwrap_or_else(|e| {
                        panic!("kernel-testkit: cannot copy {}: {e}", from.display())
                    });
                    if let Some((uid, gid)) = run_as {
                        std::os::unix::fs::chown(to, Some(uid), Some(gid)).unwrap_or_else(|e| {
                            panic!("kernel-testkit: cannot chown {}: {e}", to.display())
                        });
                    }
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("kernel-testkit: cannot chmod the key: {e}"));
                (cert, key)
            });
            let mut server = PrivatePostgres {
                ssl,
                data,
                log,
                bindir,
                port,
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                run_as,
                postmaster: None,
                root,
            };
            server.initdb().await;
            server.spawn();
            server.wait_ready().await;
            server
        }

        /// `postgres://postgres@127.0.0.1:<port>/postgres`.
        pub fn url(&self) -> &str {
            &self.url
        }

        /// The server's port on 127.0.0.1.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// The cluster's data directory.
        pub fn data_dir(&self) -> &Path {
            &self.data
        }

        /// The server's log (its stdout and stderr, across restarts).
        pub fn log_path(&self) -> &Path {
            &self.log
        }

        /// Whether the postmaster is running (started and not killed).
        pub fn is_running(&self) -> bool {
            self.postmaster.is_some()
        }

        fn command(&self, program: &str) -> Command {
            let mut command = Command::new(self.bindir.join(program));
            // initdb and postgres look at their working directory; the postgres user may not
            // be allowed into ours.
            command.current_dir(self.root.path());
            if let Some((uid, gid)) = self.run_as {
                // The standard library also drops root's supplementary groups here.
                command.uid(uid).gid(gid);
            }
            command
        }

        async fn initdb(&self) {
            let mut command = self.command("initdb");
            command
                .arg("-D")
                .arg(&self.data)
                .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                // Only processes are killed in these tests, never the machine: the page cache
                // survives, so the initial files need no fsync.
                .arg("--no-sync");
            let bindir = self.bindir.clone();
            let output = tokio::task::spawn_blocking(move || command.output())
                .await
                .unwrap_or_else(|e| panic!("kernel-testkit: the initdb thread failed: {e}"))
                .unwrap_or_else(|e| {
                    panic!(
                        "kernel-testkit: cannot run {}/initdb: {e}",
                        bindir.display()
                    )
                });
            assert!(
                output.status.success(),
                "kernel-testkit: initdb failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        fn spawn(&mut self) {
            let (stdout, stderr) = log_file(&self.log);
            let mut command = self.command("postgres");
            command
                .arg("-D")
                .arg(&self.data)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(self.root.path())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "max_connections=100"]);
            if let Some((cert, key)) = &self.ssl {
                command
                    .args(["-c", "ssl=on"])
                    .arg("-c")
                    .arg(format!("ssl_cert_file={}", cert.display()))
                    .arg("-c")
                    .arg(format!("ssl_key_file={}", key.display()));
            }
            command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
            let child = command.spawn().unwrap_or_else(|e| {
                panic!(
                    "kernel-testkit: cannot start {}/postgres: {e}",
                    self.bindir.display()
                )
            });
            self.postmaster = Some(child);
        }

        /// Connects with tokio-postgres until it works, the postmaster exits, or
        /// [`READY_TIMEOUT`] passes.
        async fn wait_ready(&mut self) {
            let mut config: tokio_postgres::Config = self.url.parse().unwrap_or_else(|e| {
                panic!("kernel-testkit: the private server's URL does not parse: {e}")
            });
            config.connect_timeout(Duration::from_secs(1));
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(child) = self.postmaster.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.postmaster = None;
                        panic!(
                            "kernel-testkit: the private PostgreSQL server exited ({status}) \
                             before accepting connections; end of {}:\n{}",
                            self.log.display(),
                            log_tail(&self.log, 4000)
                        );
                    }
                }
                let last_error = match config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let conn = tokio::spawn(connection);
                        let answered = client.simple_query("SELECT 1").await;
                        drop(client);
                        let _ = conn.await;
                        match answered {
                            Ok(_) => return,
                            Err(e) => e.to_string(),
                        }
                    }
                    Err(e) => e.to_string(),
                };
                assert!(
                    Instant::now() < deadline,
                    "kernel-testkit: the private PostgreSQL server on port {} did not accept \
                     connections within {} s (last error: {last_error}); end of {}:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log.display(),
                    log_tail(&self.log, 4000)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Kills the server with `SIGKILL`: the postmaster is stopped first (so it forks no
        /// more), then every process of the server (children of the postmaster, and anything
        /// working in the data directory) and the postmaster itself are killed. Returns once
        /// no process of the server is left and nothing listens on the port. Does nothing when
        /// the server is not running.
        ///
        /// # Panics
        ///
        /// When the `kill` program is missing, or a process survives [`GONE_TIMEOUT`].
        pub fn kill(&mut self) {
            let Some(mut postmaster) = self.postmaster.take() else {
                return;
            };
            let pid = postmaster.id();
            signal("STOP", &[pid]);
            let data = std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
            let mut targets = processes_of(pid, &data);
            targets.retain(|p| *p != pid);
            signal("KILL", &targets);
            // SIGKILL ends a stopped process too.
            if let Err(e) = postmaster.kill() {
                eprintln!("kernel-testkit: killing the postmaster {pid}: {e}");
            }
            if let Err(e) = postmaster.wait() {
                eprintln!("kernel-testkit: waiting for the postmaster {pid}: {e}");
            }
            let deadline = Instant::now() + GONE_TIMEOUT;
            loop {
                // Children are reparented once the postmaster is gone: look them up by their
                // working directory too.
                let mut left = alive(&targets);
                for p in processes_of(pid, &data) {
                    if !left.contains(&p) {
                        left.push(p);
                    }
                }
                if left.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "kernel-testkit: processes {left:?} of the private PostgreSQL server \
                     survived SIGKILL for {} s",
                    GONE_TIMEOUT.as_secs()
                );
                signal("KILL", &left);
                targets.extend(left);
                std::thread::sleep(Duration::from_millis(20));
            }
            wait_port_closed(self.port, "the private PostgreSQL server");
        }

        /// Starts the server again on the same data directory and port (killing it first if it
        /// runs), and waits until it accepts connections: crash recovery happens here.
        ///
        /// # Panics
        ///
        /// When it does not accept connections within [`READY_TIMEOUT`].
        pub async fn restart(&mut self) {
            self.kill();
            self.spawn();
            self.wait_ready().await;
        }
    }

    impl Drop for PrivatePostgres {
        fn drop(&mut self) {
            // Never panic in drop (it may run while a failed test unwinds).
            if let Some(mut postmaster) = self.postmaster.take() {
                let pid = postmaster.id();
                signal_quietly("STOP", pid);
                let data = std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
                for p in processes_of(pid, &data) {
                    signal_quietly("KILL", p);
                }
                let _ = postmaster.kill();
                let _ = postmaster.wait();
                for p in processes_of(pid, &data) {
                    signal_quietly("KILL", p);
                }
            }
            // The TempDir removes the directory after this.
        }
    }
}

/// The directory holding `redis-server`.
fn find_redis() -> PathBuf {
    let candidates = path_dirs()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")]);
    match dir_with(candidates, &["redis-server"]) {
        Some(dir) => dir.join("redis-server"),
        None => panic!(
            "kernel-testkit: PrivateRedis needs the `redis-server` program, found neither on \
             PATH nor in /usr/bin or /usr/local/bin. Install it: `apt-get install -y \
             redis-server` (Debian / Ubuntu), `dnf install redis` (Fedora), `brew install redis` \
             (macOS)."
        ),
    }
}

/// A Redis server private to one test: its own loopback port and directory, `appendonly yes`
/// with `appendfsync always` (every acknowledged write is in the AOF before the reply, so it
/// survives `SIGKILL`), no RDB snapshots (`save ""`).
///
/// [`PrivateRedis::kill`] kills it with `SIGKILL`; [`PrivateRedis::restart`] starts it again on
/// the same port and directory, where it replays the AOF. Dropping the guard kills the server
/// and removes its directory.
#[derive(Debug)]
pub struct PrivateRedis {
    /// The server's `--dir` (AOF, log); removed on drop.
    dir: TempDir,
    log: PathBuf,
    program: PathBuf,
    port: u16,
    url: String,
    /// Configuration arguments after the defaults.
    extra: Vec<String>,
    server: Option<Child>,
    /// TLS only (`--port 0 --tls-port`): readiness is an open port, not a clear-text PING.
    tls: bool,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port of 127.0.0.1 and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or does not answer within [`READY_TIMEOUT`], with the
    /// end of its log.
    pub async fn start() -> PrivateRedis {
        PrivateRedis::start_with(&[]).await
    }

    /// [`PrivateRedis::start`] with more configuration arguments after the defaults, which
    /// they override (Redis keeps the last value of a directive), for every start of this
    /// server: `&["--appendonly", "no"]` runs it without persistence, to show what a crash
    /// then loses.
    ///
    /// # Panics
    ///
    /// As [`PrivateRedis::start`].
    pub async fn start_with(extra: &[&str]) -> PrivateRedis {
        PrivateRedis::start_inner(extra, None).await
    }

    /// A TLS-only Redis (`--port 0 --tls-port <port>`) serving `ca`'s server certificate
    /// (made for `127.0.0.1` and `localhost`), clients not asked for certificates;
    /// [`PrivateRedis::url`] is `rediss://127.0.0.1:<port>`. `extra` as in
    /// [`PrivateRedis::start_with`].
    ///
    /// # Panics
    ///
    /// As [`PrivateRedis::start`]; a `redis-server` built without TLS exits at once, and the
    /// panic shows its log.
    pub async fn start_tls(ca: &TestCa, extra: &[&str]) -> PrivateRedis {
        PrivateRedis::start_inner(extra, Some(ca)).await
    }

    async fn start_inner(extra: &[&str], ca: Option<&TestCa>) -> PrivateRedis {
        let program = find_redis();
        let dir = tempfile::Builder::new()
            .prefix("kernel-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("kernel-testkit: cannot create a temporary directory: {e}"));
        let port = free_port();
        let mut server = PrivateRedis {
            log: dir.path().join("redis.log"),
            dir,
            program,
            port,
            url: match ca {
                Some(_) => format!("rediss://127.0.0.1:{port}"),
                None => format!("redis://127.0.0.1:{port}"),
            },
            extra: match ca {
                // After the defaults: `--port 0` turns the clear-text listener off.
                Some(ca) => vec![
                    "--port".to_owned(),
                    "0".to_owned(),
                    "--tls-port".to_owned(),
                    port.to_string(),
                    "--tls-cert-file".to_owned(),
                    ca.server_cert().display().to_string(),
                    "--tls-key-file".to_owned(),
                    ca.server_key().display().to_string(),
                    "--tls-ca-cert-file".to_owned(),
                    ca.ca_cert().display().to_string(),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ],
                None => Vec::new(),
            }
            .into_iter()
            .chain(extra.iter().map(|a| (*a).to_owned()))
            .collect(),
            server: None,
            tls: ca.is_some(),
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (`appendonlydir/` lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (its stdout and stderr, across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the server is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    fn spawn(&mut self) {
        let (stdout, stderr) = log_file(&self.log);
        let child = Command::new(&self.program)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "kernel-testkit: cannot start {}: {e}",
                    self.program.display()
                )
            });
        self.server = Some(child);
    }

    /// Sends `PING` until the answer is `+PONG` (not `-LOADING` while the AOF replays), the
    /// server exits, or [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.server.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.server = None;
                    panic!(
                        "kernel-testkit: the private Redis server exited ({status}) before \
                         answering; end of {}:\n{}",
                        self.log.display(),
                        log_tail(&self.log, 4000)
                    );
                }
            }
            if self.tls {
                // No TLS client here: a listening port is ready enough (no AOF to replay).
                if port_open(self.port) {
                    return;
                }
            }
            let last = match ping(self.port).await {
                Ok(reply) if reply.starts_with("+PONG") => return,
                Ok(reply) => reply,
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "kernel-testkit: the private Redis server on port {} did not answer PING within \
                 {} s (last: {last}); end of {}:\n{}",
                self.port,
                READY_TIMEOUT.as_secs(),
                self.log.display(),
                log_tail(&self.log, 4000)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server with `SIGKILL` (no shutdown, no final AOF rewrite) and returns once it
    /// is gone and nothing listens on its port. Does nothing when it is not running.
    ///
    /// # Panics
    ///
    /// When something still listens on the port after [`GONE_TIMEOUT`].
    pub fn kill(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let pid = server.id();
        if let Err(e) = server.kill() {
            eprintln!("kernel-testkit: killing redis-server {pid}: {e}");
        }
        if let Err(e) = server.wait() {
            eprintln!("kernel-testkit: waiting for redis-server {pid}: {e}");
        }
        // Background children (an AOF rewrite) die with it or are killed here.
        let dir = std::fs::canonicalize(self.dir.path()).unwrap_or_else(|_| self.dir.path().into());
        signal("KILL", &processes_of(pid, &dir));
        wait_port_closed(self.port, "the private Redis server");
    }

    /// Starts the server again on the same port and directory (killing it first if it runs)
    /// and waits until it answers `PING`: the AOF replays here.
    ///
    /// # Panics
    ///
    /// When it does not answer within [`READY_TIMEOUT`].
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        // The TempDir removes the directory after this.
    }
}

/// A throwaway certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost` (subject alternative names; for server and client authentication, as a Redis
/// Cluster node needs), made with the `openssl` program in a temporary
/// directory removed on drop; plus a second, unrelated CA ([`TestCa::other_ca_cert`]) that
/// signed nothing the servers use, for "unknown CA" tests. EC P-256 keys: fast to make.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Makes the CAs and the server certificate (valid for two days).
    ///
    /// # Panics
    ///
    /// When `openssl` is missing (the message says what to install) or fails.
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("kernel-tls-")
            .tempdir()
            .unwrap_or_else(|e| panic!("kernel-testkit: cannot create a temporary directory: {e}"));
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot write server.ext: {e}"));
        for (name, cn) in [("ca", "kernel test CA"), ("other-ca", "kernel unknown CA")] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        // The servers may run as another user (PostgreSQL under root): let them read.
        use std::os::unix::fs::PermissionsExt;
        for entry in [
            d.to_path_buf(),
            d.join("server.key"),
            d.join("server.crt"),
            d.join("ca.crt"),
        ] {
            let mode = if entry.is_dir() { 0o755 } else { 0o644 };
            let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode));
        }
        TestCa { dir }
    }

    /// The CA certificate (PEM) that signed the server certificate: the one to trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA certificate (PEM) that signed nothing the servers use.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    /// The server certificate (PEM), for `127.0.0.1` and `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM, unencrypted).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kernel-testkit: TLS tests need the `openssl` program to make their certificates \
                 ({e}). Install it: `apt-get install -y openssl` (Debian / Ubuntu), `dnf install \
                 openssl` (Fedora), `brew install openssl` (macOS)."
            )
        });
    assert!(
        output.status.success(),
        "kernel-testkit: `openssl {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One `PING` over a fresh connection: the first line of the reply.
async fn ping(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(loopback(port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        while !reply.ends_with(b"\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed before a reply",
                ));
            }
            reply.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(1), attempt).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no reply within 1 s",
        )),
    }
}

/// Writes `line` to a blocking socket and reads one reply line (a tiny RESP client for the unit
/// tests).
#[cfg(test)]
fn redis_command(port: u16, command: &str) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(loopback(port)).expect("connect to the private Redis");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("send a command");
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).expect("read a reply");
        assert!(n > 0, "the private Redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    // A bulk string: `$<len>\r\n<data>\r\n`; read the data line too.
    if reply.starts_with(b"$") && !reply.starts_with(b"$-1") {
        while reply.iter().filter(|b| **b == b'\n').count() < 2 {
            let n = stream.read(&mut buf).expect("read a bulk reply");
            assert!(n > 0, "the private Redis closed the connection");
            reply.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_redis_keeps_acknowledged_writes_across_sigkill() {
        let mut redis = PrivateRedis::start().await;
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        assert_ne!(redis.port(), 6379, "never the shared server's port");
        assert_eq!(redis_command(redis.port(), "SET k v1"), "+OK\r\n");

        redis.kill();
        assert!(!redis.is_running());
        assert!(
            TcpStream::connect_timeout(&loopback(redis.port()), Duration::from_millis(200))
                .is_err(),
            "nothing listens after kill"
        );

        redis.restart().await;
        assert!(redis.is_running());
        assert_eq!(
            redis_command(redis.port(), "GET k"),
            "$2\r\nv1\r\n",
            "the AOF (appendfsync always) kept the write through SIGKILL"
        );
        let dir = redis.dir().to_path_buf();
        drop(redis);
        assert!(!dir.exists(), "the directory is removed on drop");
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_postgres_survives_sigkill_and_restarts() {
        use tokio_postgres::NoTls;

        async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }

        let mut pg = PrivatePostgres::start().await;
        assert_eq!(
            pg.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
        );
        assert_ne!(pg.port(), 5432, "never the shared server's port");
        let client = connect(pg.url())
            .await
            .expect("connect to the private server");
        client
            .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
            .await
            .expect("write");

        pg.kill();
        assert!(!pg.is_running());
        let err = client
            .simple_query("SELECT 1")
            .await
            .expect_err("the connection died with the server");
        assert!(err.is_closed() || err.as_db_error().is_none(), "{err}");
        assert!(
            connect(pg.url()).await.is_err(),
            "nothing accepts connections after kill"
        );
        assert!(
            TcpStream::connect_timeout(&loopback(pg.port()), Duration::from_millis(200)).is_err(),
            "nothing listens after kill"
        );

        pg.restart().await;
        let client = connect(pg.url()).await.expect("reconnect after restart");
        let n: i32 = client
            .query_one("SELECT n FROM t", &[])
            .await
            .expect("the committed row survived the crash")
            .get(0);
        assert_eq!(n, 1);
        drop(client);

        let root = pg.data_dir().parent().map(Path::to_path_buf);
        drop(pg);
        if let Some(root) = root {
            assert!(!root.exists(), "the directory is removed on drop");
        }
    }
}
