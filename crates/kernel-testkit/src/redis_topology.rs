//! Redis topologies private to one test binary: a 6-node Redis Cluster
//! ([`PrivateRedisCluster`]: 3 masters, 3 replicas) and a Sentinel set-up
//! ([`PrivateRedisSentinel`]: one master, one replica, 1 to 3 sentinels), each on loopback ports
//! of its own with its data in a temporary directory.
//!
//! Starting one takes a few seconds, so a test binary normally shares one through
//! [`PrivateRedisCluster::shared`] / [`PrivateRedisSentinel::shared`] (started on first use) and
//! isolates its tests by key prefix, as the tests on the shared server do. A test that kills
//! nodes starts a topology of its own with [`PrivateRedisCluster::start`].
//!
//! ```no_run
//! use kernel_testkit::private::PrivateRedisCluster;
//!
//! # async fn demo() {
//! let cluster = PrivateRedisCluster::shared();
//! let url = cluster.url(); // redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&...
//! // ... connect a driver on `url` ...
//! let slot = cluster.slot_of("kernel:{ev}:head");
//! let old = cluster.kill_master_of_slot(slot); // SIGKILL
//! let new = cluster.wait_for_promotion(slot, old).await; // the replica took over
//! # }
//! ```
//!
//! Every process is killed when the guard drops. A shared topology lives in a `static`, which
//! never drops: for it (and for a test process that is itself killed) a small watchdog (`sh`)
//! started with the topology waits for the test process to end, then kills the servers and
//! removes the directory.
//!
//! Programs: `redis-server` (also run as a sentinel, `redis-server <conf> --sentinel`) and
//! `redis-cli` (for `--cluster create`), found on `PATH`, then in `/usr/bin` and
//! `/usr/local/bin`. When one is missing, starting panics naming it and how to install it: the
//! test fails, it is never skipped.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{dir_with, free_port, log_file, log_tail, loopback, path_dirs, wait_port_closed};

/// How long a topology may take to be ready (every node up, slots covered, replicas in sync).
pub const TOPOLOGY_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`PrivateRedisCluster::wait_for_promotion`] and
/// [`PrivateRedisSentinel::wait_for_failover`] wait for a replica to take over.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Cluster node timeout (`cluster-node-timeout`, ms): a master silent this long is failed over.
/// Long enough that a loaded machine does not fail over a live node, short enough for a test.
const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

/// The Sentinel service name of [`PrivateRedisSentinel`].
pub const SENTINEL_SERVICE: &str = "kernel-test";

/// Finds `program` on `PATH`, `/usr/bin` or `/usr/local/bin`.
fn find_program(program: &str) -> PathBuf {
    let candidates = path_dirs()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")]);
    match dir_with(candidates, &[program]) {
        Some(dir) => dir.join(program),
        None => panic!(
            "kernel-testkit: the private Redis topologies need the `{program}` program, found \
             neither on PATH nor in /usr/bin or /usr/local/bin. Install it: `apt-get install -y \
             redis-server redis-tools` (Debian / Ubuntu), `dnf install redis` (Fedora), `brew \
             install redis` (macOS)."
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny blocking RESP client: enough for PING, INFO, CLUSTER and SENTINEL commands.

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (simple string, bulk string or integer).
    fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed before a reply",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad RESP length {rest:?}")))
    };
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Ok(Resp::Error(rest.to_owned())),
        ":" => Ok(Resp::Int(number()?)),
        "$" => {
            let len = number()?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Resp::Bulk(None));
            };
            let mut buf = vec![0u8; len + 2];
            std::io::Read::read_exact(reader, &mut buf)?;
            buf.truncate(len);
            Ok(Resp::Bulk(Some(buf)))
        }
        "*" => {
            let len = number()?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Resp::Array(None));
            };
            let items = (0..len)
                .map(|_| read_reply(reader))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(bad(format!("unexpected RESP line {line:?}"))),
    }
}

/// Sends one command to `127.0.0.1:port` on a fresh connection and reads the reply (2 s
/// timeouts).
fn command(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let timeout = Duration::from_secs(2);
    let stream = TcpStream::connect_timeout(&loopback(port), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&request)?;
    read_reply(&mut BufReader::new(&stream))
}

/// [`command`] whose reply is text; an error reply or another shape is an `Err` with the reply.
fn command_text(port: u16, args: &[&str]) -> Result<String, String> {
    match command(port, args) {
        Ok(Resp::Error(e)) => Err(e),
        Ok(reply) => reply.text().ok_or_else(|| format!("{reply:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The `field:value` lines of an `INFO` or `CLUSTER INFO` reply, as a lookup.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim().split_once(':')?;
        (k == field).then(|| v.to_owned())
    })
}

// ---------------------------------------------------------------------------------------------
// Processes and the watchdog.

/// One server process of a topology.
#[derive(Debug)]
struct Node {
    port: u16,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(program: &Path, dir: PathBuf, port: u16, args: &[String]) -> Node {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("kernel-testkit: cannot create {}: {e}", dir.display());
        }
        let mut node = Node {
            port,
            program: program.to_owned(),
            args: args.to_vec(),
            log: dir.join("redis.log"),
            dir,
            child: None,
        };
        node.respawn();
        node
    }

    /// Starts the process (again) with the same arguments, directory and port.
    fn respawn(&mut self) {
        let (stdout, stderr) = log_file(&self.log);
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
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
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Panics with the log when the process has exited.
    fn check_alive(&mut self, what: &str) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "kernel-testkit: {what} on port {} exited ({status}); end of {}:\n{}",
                    self.port,
                    self.log.display(),
                    log_tail(&self.log, 4000)
                );
            }
        }
    }

    /// `SIGKILL`, then waits until the process is gone and its port closed.
    fn kill(&mut self, what: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if let Err(e) = child.kill() {
            eprintln!("kernel-testkit: killing {what} {pid}: {e}");
        }
        if let Err(e) = child.wait() {
            eprintln!("kernel-testkit: waiting for {what} {pid}: {e}");
        }
        wait_port_closed(self.port, what);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes the pids of `nodes` to `dir/pids`, which the watchdog reads when the process ends.
fn record_pids<'a>(dir: &Path, nodes: impl IntoIterator<Item = &'a Node>) {
    let pids: Vec<String> = nodes
        .into_iter()
        .filter_map(Node::pid)
        .map(|p| p.to_string())
        .collect();
    let path = dir.join("pids");
    if let Err(e) = std::fs::write(&path, pids.join(" ")) {
        eprintln!(
            "kernel-testkit: cannot write {} for the watchdog: {e}",
            path.display()
        );
    }
}

/// Starts `sh` watching this process: when it is gone, the watchdog kills the pids listed in
/// `dir/pids` ([`record_pids`]) and removes `dir`. Killed itself when the topology drops
/// normally.
fn watchdog(dir: &Path) -> Option<Child> {
    let script = "parent=$1; dir=$2; \
                  while kill -0 \"$parent\" 2>/dev/null; do sleep 0.5; done; \
                  kill -9 $(cat \"$dir/pids\") 2>/dev/null; rm -rf \"$dir\"";
    // A process group of its own: a signal to the test's group (Ctrl-C) must not stop it.
    let spawned = Command::new("sh")
        .process_group(0)
        .arg("-c")
        .arg(script)
        .arg("kernel-testkit-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(child),
        Err(e) => {
            // Only the clean-up after an abnormal exit is lost: say so, do not fail the test.
            eprintln!(
                "kernel-testkit: cannot start the watchdog shell (`sh`): {e}; servers of a shared \
                 topology will outlive this process"
            );
            None
        }
    }
}

fn stop_watchdog(watchdog: &mut Option<Child>) {
    if let Some(mut child) = watchdog.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("kernel-testkit: cannot create a temporary directory: {e}"))
}

/// Polls `check` every 50 ms until it returns `Ok`, panicking after `timeout` with the last
/// `Err` and `context()`.
fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "kernel-testkit: {what} within {} s (last: {last})\n{}",
                timeout.as_secs(),
                context()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lock<'a, T>(mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Cluster.

/// A 6-node Redis Cluster on loopback: 3 masters with one replica each, `--save ""`,
/// `--appendonly no`, `cluster-node-timeout` 2 s, every replica allowed to fail over whatever
/// its replication lag (`cluster-replica-validity-factor 0`). Made with `redis-cli --cluster
/// create ... --cluster-replicas 1 --cluster-yes`; [`PrivateRedisCluster::start`] returns once
/// every node reports `cluster_state:ok`, all 16384 slots are served, every node knows the 6
/// nodes and every replica's link to its master is up.
///
/// Killing a master ([`PrivateRedisCluster::kill_master_of_slot`]) leaves its replica to be
/// promoted by the cluster itself ([`PrivateRedisCluster::wait_for_promotion`]).
#[derive(Debug)]
pub struct PrivateRedisCluster {
    nodes: Mutex<Vec<Node>>,
    ports: Vec<u16>,
    url: String,
    watchdog: Mutex<Option<Child>>,
    /// Removed on drop, after the nodes are killed.
    dir: TempDir,
}

/// A master of the cluster and the slots it serves, as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMaster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its node id.
    pub id: String,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
}

impl PrivateRedisCluster {
    /// The cluster shared by every test of this test binary, started on first use.
    ///
    /// # Panics
    ///
    /// As [`PrivateRedisCluster::start`].
    pub fn shared() -> &'static PrivateRedisCluster {
        static SHARED: OnceLock<PrivateRedisCluster> = OnceLock::new();
        SHARED.get_or_init(PrivateRedisCluster::start)
    }

    /// Starts 6 `redis-server` processes in cluster mode, creates the cluster and waits until
    /// it is fully up (see the type's documentation). Blocking; takes a few seconds.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is missing (with how to install them), a node exits,
    /// `--cluster create` fails, or the cluster is not up within [`TOPOLOGY_READY_TIMEOUT`]
    /// (with the logs).
    pub fn start() -> PrivateRedisCluster {
        PrivateRedisCluster::start_inner(None)
    }

    /// [`PrivateRedisCluster::start`] with TLS: every node also listens with TLS on a port of
    /// its own (serving `ca`'s certificate for `127.0.0.1` and `localhost`, clients not asked
    /// for certificates), the cluster bus and replication use TLS (`tls-cluster yes`,
    /// `tls-replication yes`), and [`PrivateRedisCluster::url`] is
    /// `rediss-cluster://127.0.0.1:<tls port>?node=...` over the TLS ports. The clear-text ports
    /// stay open for the topology's own checks ([`PrivateRedisCluster::ports`]); `CLUSTER
    /// SLOTS` asked over TLS answers with the TLS ports.
    ///
    /// # Panics
    ///
    /// As [`PrivateRedisCluster::start`].
    pub fn start_tls(ca: &super::TestCa) -> PrivateRedisCluster {
        PrivateRedisCluster::start_inner(Some(ca))
    }

    fn start_inner(ca: Option<&super::TestCa>) -> PrivateRedisCluster {
        let server = find_program("redis-server");
        let cli = find_program("redis-cli");
        let dir = tempdir("kernel-redis-cluster-");
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        // The CA's server certificate serves client authentication too, which the cluster bus
        // and replication links (nodes connecting to nodes) require.
        let node_cert = ca.map(|ca| (ca.server_cert(), ca.server_key()));
        for i in 0..6 {
            let port = free_port();
            let bus = free_port();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                "--cluster-replica-validity-factor",
                "0",
                // A replica's first sync starts at once (the default waits 5 s for others).
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            if let (Some(ca), Some((cert, key))) = (ca, &node_cert) {
                let tls_port = free_port();
                tls_ports.push(tls_port);
                args.extend([
                    "--tls-port".to_owned(),
                    tls_port.to_string(),
                    "--tls-cluster".to_owned(),
                    "yes".to_owned(),
                    "--tls-replication".to_owned(),
                    "yes".to_owned(),
                    "--tls-cert-file".to_owned(),
                    cert.display().to_string(),
                    "--tls-key-file".to_owned(),
                    key.display().to_string(),
                    "--tls-ca-cert-file".to_owned(),
                    ca.ca_cert().display().to_string(),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]);
            }
            let node_dir = dir.path().join(format!("node-{i}"));
            nodes.push(Node::spawn(&server, node_dir, port, &args));
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        record_pids(dir.path(), &nodes);
        let (scheme, url_ports) = match ca {
            Some(_) => ("rediss-cluster", &tls_ports),
            None => ("redis-cluster", &ports),
        };
        let url = format!(
            "{scheme}://127.0.0.1:{}?{}",
            url_ports[0],
            url_ports[1..]
                .iter()
                .map(|p| format!("node=127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        let cluster = PrivateRedisCluster {
            watchdog: Mutex::new(watchdog(dir.path())),
            nodes: Mutex::new(nodes),
            ports,
            url,
            dir,
        };
        for port in cluster.ports.clone() {
            wait_until(
                &format!("the cluster node on port {port} did not answer PING"),
                TOPOLOGY_READY_TIMEOUT,
                || {
                    cluster.check_nodes_alive();
                    match command_text(port, &["PING"]) {
                        Ok(pong) if pong == "PONG" => Ok(()),
                        Ok(other) => Err(other),
                        Err(e) => Err(e),
                    }
                },
                || cluster.logs(),
            );
        }
        let mut create = Command::new(&cli);
        match ca {
            // With `tls-cluster yes` the nodes announce their TLS ports: create over TLS.
            Some(ca) => {
                create.arg("--tls").arg("--cacert").arg(ca.ca_cert());
                create.arg("--cluster").arg("create");
                create.args(tls_ports.iter().map(|p| format!("127.0.0.1:{p}")));
            }
            None => {
                create.arg("--cluster").arg("create");
                create.args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
            }
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = create
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kernel-testkit: cannot run {}: {e}", cli.display()));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !said.contains("[ERR]"),
            "kernel-testkit: `redis-cli --cluster create` failed ({}):\n{said}\n{}",
            output.status,
            cluster.logs()
        );
        cluster.wait_healthy(6);
        cluster
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&...&node=127.0.0.1:<p6>`: every
    /// node as a seed, the form fred's `Config::from_url` reads.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The ports of the 6 nodes on 127.0.0.1 (killed ones included).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The cluster's temporary directory (one `node-N/` per node, with `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a live node).
    ///
    /// # Panics
    ///
    /// When no node answers.
    pub fn slot_of(&self, key: &str) -> u16 {
        let mut last = String::new();
        for port in self.live_ports() {
            match command(port, &["CLUSTER", "KEYSLOT", key]) {
                Ok(Resp::Int(slot)) => {
                    if let Ok(slot) = u16::try_from(slot) {
                        return slot;
                    }
                    last = format!("slot {slot} out of range");
                }
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        panic!("kernel-testkit: no cluster node answered CLUSTER KEYSLOT {key:?} (last: {last})")
    }

    /// The masters serving slots, as the live node on `port` sees them (`CLUSTER NODES`,
    /// failed masters excluded).
    fn masters_seen_by(port: u16) -> Result<Vec<ClusterMaster>, String> {
        let text = command_text(port, &["CLUSTER", "NODES"])?;
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                continue;
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            if !flags.contains(&"master") || flags.contains(&"fail") {
                continue;
            }
            // `127.0.0.1:port@bus[,hostname]`
            let addr = fields[1].split(['@', ',']).next().unwrap_or("");
            let Some(node_port) = addr.rsplit(':').next().and_then(|p| p.parse().ok()) else {
                return Err(format!("cannot read the address of {line:?}"));
            };
            let mut slots = Vec::new();
            for range in &fields[8..] {
                if range.starts_with('[') {
                    continue; // a slot being migrated
                }
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) => slots.push((a, b)),
                    _ => return Err(format!("cannot read the slots of {line:?}")),
                }
            }
            if !slots.is_empty() {
                masters.push(ClusterMaster {
                    port: node_port,
                    id: fields[0].to_owned(),
                    slots,
                });
            }
        }
        masters.sort_by_key(|m| m.port);
        Ok(masters)
    }

    /// The masters serving slots, as the first live node sees them.
    ///
    /// # Panics
    ///
    /// When no node answers.
    pub fn masters(&self) -> Vec<ClusterMaster> {
        let mut last = String::new();
        for port in self.live_ports() {
            match Self::masters_seen_by(port) {
                Ok(masters) => return masters,
                Err(e) => last = e,
            }
        }
        panic!("kernel-testkit: no cluster node answered CLUSTER NODES (last: {last})")
    }

    /// The port of the master serving `slot`, as the live nodes agree on it.
    ///
    /// # Panics
    ///
    /// When the live nodes do not agree within [`TOPOLOGY_READY_TIMEOUT`].
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        wait_until(
            &format!("the live cluster nodes did not agree on the master of slot {slot}"),
            TOPOLOGY_READY_TIMEOUT,
            || self.agreed_master(slot),
            || self.logs(),
        )
    }

    fn agreed_master(&self, slot: u16) -> Result<u16, String> {
        let mut seen = None;
        for port in self.live_ports() {
            let masters = Self::masters_seen_by(port)?;
            let owner = masters
                .iter()
                .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
                .map(|m| m.port)
                .ok_or_else(|| format!("node {port} sees no master for slot {slot}"))?;
            match seen {
                None => seen = Some(owner),
                Some(p) if p == owner => {}
                Some(p) => return Err(format!("nodes disagree: {p} and {owner}")),
            }
        }
        seen.ok_or_else(|| "no live node".to_owned())
    }

    /// `SIGKILL`s the master serving `slot` and returns its port once it is gone.
    ///
    /// # Panics
    ///
    /// As [`PrivateRedisCluster::master_of_slot`].
    pub fn kill_master_of_slot(&self, slot: u16) -> u16 {
        let port = self.master_of_slot(slot);
        self.kill_node(port);
        port
    }

    /// `SIGKILL`s the node on `port` (a no-op for a node already killed) and waits until it is
    /// gone and its port closed.
    pub fn kill_node(&self, port: u16) {
        let mut nodes = lock(&self.nodes);
        if let Some(node) = nodes.iter_mut().find(|n| n.port == port) {
            node.kill("a private Redis cluster node");
        }
    }

    /// Starts the killed node on `port` again, on the same port and directory (its
    /// `nodes.conf` brings it back into the cluster; without persistence it comes back empty
    /// and, its slots having moved, as a replica that resynchronises from the new master).
    /// A no-op for a node that runs.
    pub fn restart_node(&self, port: u16) {
        let mut nodes = lock(&self.nodes);
        if let Some(node) = nodes
            .iter_mut()
            .find(|n| n.port == port && n.child.is_none())
        {
            node.respawn();
        }
        record_pids(self.dir.path(), nodes.iter());
    }

    /// Waits until the node on `port` is a replica whose link to its master is up, and every
    /// live node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// When that does not happen within [`FAILOVER_TIMEOUT`].
    pub async fn wait_for_replica(&self, port: u16) {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let check = || -> Result<(), String> {
                let repl = command_text(port, &["INFO", "replication"])?;
                let role = info_field(&repl, "role");
                let link = info_field(&repl, "master_link_status");
                if role.as_deref() != Some("slave") || link.as_deref() != Some("up") {
                    return Err(format!("node {port}: role {role:?}, link {link:?}"));
                }
                self.all_ok()
            };
            let last = match check() {
                Ok(()) => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "kernel-testkit: the node on port {port} did not come back as a linked replica \
                 within {} s (last: {last})\n{}",
                FAILOVER_TIMEOUT.as_secs(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a live node other than `old_master` serves `slot`, every live node agrees,
    /// and every live node reports `cluster_state:ok`; returns the new master's port.
    ///
    /// # Panics
    ///
    /// When that does not happen within [`FAILOVER_TIMEOUT`].
    pub async fn wait_for_promotion(&self, slot: u16, old_master: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let last = match self.agreed_master(slot) {
                Ok(port) if port != old_master => match self.all_ok() {
                    Ok(()) => return port,
                    Err(e) => e,
                },
                Ok(port) => format!("slot {slot} still served by {port}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "kernel-testkit: no replica took over slot {slot} from port {old_master} within \
                 {} s (last: {last})\n{}",
                FAILOVER_TIMEOUT.as_secs(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        lock(&self.nodes)
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    fn check_nodes_alive(&self) {
        for node in lock(&self.nodes).iter_mut() {
            node.check_alive("a private Redis cluster node");
        }
    }

    /// Every live node says `cluster_state:ok` with all slots served.
    fn all_ok(&self) -> Result<(), String> {
        for port in self.live_ports() {
            let info = command_text(port, &["CLUSTER", "INFO"])?;
            for (field, want) in [("cluster_state", "ok"), ("cluster_slots_ok", "16384")] {
                let got = info_field(&info, field);
                if got.as_deref() != Some(want) {
                    return Err(format!("node {port}: {field} is {got:?}"));
                }
            }
        }
        Ok(())
    }

    /// Waits until every node is ok, knows `known` nodes, and every replica is linked.
    fn wait_healthy(&self, known: usize) {
        wait_until(
            "the private Redis cluster did not come up",
            TOPOLOGY_READY_TIMEOUT,
            || {
                self.check_nodes_alive();
                self.all_ok()?;
                let mut masters = 0;
                for port in self.live_ports() {
                    let info = command_text(port, &["CLUSTER", "INFO"])?;
                    let nodes = info_field(&info, "cluster_known_nodes");
                    if nodes.as_deref() != Some(known.to_string().as_str()) {
                        return Err(format!("node {port}: cluster_known_nodes is {nodes:?}"));
                    }
                    let repl = command_text(port, &["INFO", "replication"])?;
                    match info_field(&repl, "role").as_deref() {
                        Some("master") => masters += 1,
                        Some("slave") => {
                            let link = info_field(&repl, "master_link_status");
                            if link.as_deref() != Some("up") {
                                return Err(format!("replica {port}: master link is {link:?}"));
                            }
                        }
                        other => return Err(format!("node {port}: role {other:?}")),
                    }
                }
                if masters != 3 {
                    return Err(format!("{masters} masters instead of 3"));
                }
                Ok(())
            },
            || self.logs(),
        );
    }

    /// The end of every node's log, for panic messages.
    pub fn logs(&self) -> String {
        node_logs(&lock(&self.nodes))
    }
}

fn node_logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "--- {} (port {}):\n{}",
                n.log.display(),
                n.port,
                log_tail(&n.log, 1500)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        lock(&self.nodes).clear();
        stop_watchdog(&mut lock(&self.watchdog));
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel.

/// A Sentinel set-up on loopback: one master, one replica of it, and 1 to 3 sentinels
/// (`redis-server <conf> --sentinel`) monitoring the master as [`SENTINEL_SERVICE`] with a
/// quorum of a majority of the sentinels, `down-after-milliseconds` 1000 and
/// `failover-timeout` 5000. No persistence (`--save ""`, `--appendonly no`).
/// [`PrivateRedisSentinel::start`] returns once the replica's link is up and every sentinel
/// names the master and knows the replica (and the other sentinels).
#[derive(Debug)]
pub struct PrivateRedisSentinel {
    /// Data servers: index 0 started as the master, 1 as its replica.
    servers: Mutex<Vec<Node>>,
    sentinels: Mutex<Vec<Node>>,
    sentinel_ports: Vec<u16>,
    url: String,
    watchdog: Mutex<Option<Child>>,
    dir: TempDir,
}

impl PrivateRedisSentinel {
    /// The set-up shared by every test of this test binary (one sentinel), started on first
    /// use.
    ///
    /// # Panics
    ///
    /// As [`PrivateRedisSentinel::start`].
    pub fn shared() -> &'static PrivateRedisSentinel {
        static SHARED: OnceLock<PrivateRedisSentinel> = OnceLock::new();
        SHARED.get_or_init(|| PrivateRedisSentinel::start(1))
    }

    /// Starts the master, the replica and `sentinels` sentinels (clamped to 1..=3) and waits
    /// until they are ready. Blocking; takes a second or two.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing (with how to install it), a process exits, or the set-up
    /// is not ready within [`TOPOLOGY_READY_TIMEOUT`] (with the logs).
    pub fn start(sentinels: usize) -> PrivateRedisSentinel {
        let sentinels = sentinels.clamp(1, 3);
        let program = find_program("redis-server");
        let dir = tempdir("kernel-redis-sentinel-");
        let master_port = free_port();
        let replica_port = free_port();
        let base = |port: u16| -> Vec<String> {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        let master = Node::spawn(
            &program,
            dir.path().join("master"),
            master_port,
            &base(master_port),
        );
        let mut replica_args = base(replica_port);
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_port.to_string(),
        ]);
        let replica = Node::spawn(
            &program,
            dir.path().join("replica"),
            replica_port,
            &replica_args,
        );
        let quorum = sentinels / 2 + 1;
        let mut sentinel_nodes = Vec::new();
        for i in 0..sentinels {
            let port = free_port();
            let sdir = dir.path().join(format!("sentinel-{i}"));
            if let Err(e) = std::fs::create_dir_all(&sdir) {
                panic!("kernel-testkit: cannot create {}: {e}", sdir.display());
            }
            let conf = sdir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel known-replica {SENTINEL_SERVICE} 127.0.0.1 {replica_port}\n\
                 sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                 sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
                 sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                dir = sdir.display()
            );
            if let Err(e) = std::fs::write(&conf, text) {
                panic!("kernel-testkit: cannot write {}: {e}", conf.display());
            }
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinel_nodes.push(Node::spawn(&program, sdir, port, &args));
        }
        let sentinel_ports: Vec<u16> = sentinel_nodes.iter().map(|n| n.port).collect();
        let url = format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}{}",
            sentinel_ports[0],
            sentinel_ports[1..]
                .iter()
                .map(|p| format!("&node=127.0.0.1:{p}"))
                .collect::<String>()
        );
        let servers = vec![master, replica];
        record_pids(dir.path(), servers.iter().chain(sentinel_nodes.iter()));
        let topology = PrivateRedisSentinel {
            watchdog: Mutex::new(watchdog(dir.path())),
            servers: Mutex::new(servers),
            sentinels: Mutex::new(sentinel_nodes),
            sentinel_ports,
            url,
            dir,
        };
        let others = sentinels - 1;
        let sentinel_ports = topology.sentinel_ports.clone();
        wait_until(
            "the private Redis Sentinel set-up did not come up",
            TOPOLOGY_READY_TIMEOUT,
            || {
                topology.check_alive();
                let repl = command_text(replica_port, &["INFO", "replication"])?;
                let link = info_field(&repl, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Err(format!("replica link is {link:?}"));
                }
                for port in &sentinel_ports {
                    let master = topology_master(*port)?;
                    if master != master_port {
                        return Err(format!("sentinel {port} names master {master}"));
                    }
                    let info = command_text(*port, &["INFO", "sentinel"])?;
                    let line = info_field(&info, "master0").unwrap_or_default();
                    if !line.contains("slaves=1")
                        || !line.contains(&format!("sentinels={sentinels}"))
                    {
                        return Err(format!(
                            "sentinel {port}: {line:?} (want 1 replica, {others} other sentinels)"
                        ));
                    }
                }
                Ok(())
            },
            || topology.logs(),
        );
        topology
    }

    /// `redis-sentinel://127.0.0.1:<s1>/0?sentinelServiceName=kernel-test[&node=127.0.0.1:<s2>...]`:
    /// the sentinels as seeds, the form fred's `Config::from_url` reads.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The sentinels' ports on 127.0.0.1.
    pub fn sentinel_ports(&self) -> &[u16] {
        &self.sentinel_ports
    }

    /// The port of the current master, as the first sentinel names it
    /// (`SENTINEL get-master-addr-by-name`).
    ///
    /// # Panics
    ///
    /// When the sentinel does not answer.
    pub fn master_port(&self) -> u16 {
        match topology_master(self.sentinel_ports[0]) {
            Ok(port) => port,
            Err(e) => panic!("kernel-testkit: the sentinel did not name the master: {e}"),
        }
    }

    /// `SIGKILL`s the current master and returns its port once it is gone.
    pub fn kill_master(&self) -> u16 {
        let port = self.master_port();
        let mut servers = lock(&self.servers);
        if let Some(node) = servers.iter_mut().find(|n| n.port == port) {
            node.kill("the private Redis master");
        }
        port
    }

    /// Waits until every sentinel names a master other than `old_master` and that server
    /// answers as a master; returns its port.
    ///
    /// # Panics
    ///
    /// When that does not happen within [`FAILOVER_TIMEOUT`].
    pub async fn wait_for_failover(&self, old_master: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let attempt = || -> Result<u16, String> {
                let mut named = None;
                for port in &self.sentinel_ports {
                    let master = topology_master(*port)?;
                    if master == old_master {
                        return Err(format!("sentinel {port} still names {old_master}"));
                    }
                    if named.is_some_and(|m| m != master) {
                        return Err("sentinels disagree".to_owned());
                    }
                    named = Some(master);
                }
                let master = named.ok_or("no sentinel")?;
                let repl = command_text(master, &["INFO", "replication"])?;
                match info_field(&repl, "role").as_deref() {
                    Some("master") => Ok(master),
                    other => Err(format!("{master} has role {other:?}")),
                }
            };
            let last = match attempt() {
                Ok(port) => return port,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "kernel-testkit: the sentinels did not fail over from port {old_master} within \
                 {} s (last: {last})\n{}",
                FAILOVER_TIMEOUT.as_secs(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The set-up's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn check_alive(&self) {
        for node in lock(&self.servers).iter_mut() {
            node.check_alive("a private Redis server");
        }
        for node in lock(&self.sentinels).iter_mut() {
            node.check_alive("a private Redis sentinel");
        }
    }

    /// The end of every process's log, for panic messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            node_logs(&lock(&self.servers)),
            node_logs(&lock(&self.sentinels))
        )
    }
}

/// The master port a sentinel names for [`SENTINEL_SERVICE`].
fn topology_master(sentinel: u16) -> Result<u16, String> {
    match command(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE],
    ) {
        Ok(Resp::Array(Some(items))) if items.len() == 2 => items[1]
            .text()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("bad reply {items:?}")),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

impl Drop for PrivateRedisSentinel {
    fn drop(&mut self) {
        lock(&self.sentinels).clear();
        lock(&self.servers).clear();
        stop_watchdog(&mut lock(&self.watchdog));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse() {
        let mut input: &[u8] = b"*3\r\n$3\r\nabc\r\n:42\r\n*-1\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"abc".to_vec())),
                Resp::Int(42),
                Resp::Array(None)
            ]))
        );
        let mut input: &[u8] = b"-ERR nope\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Resp::Error("ERR nope".into())
        );
        let mut input: &[u8] = b"$-1\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), Resp::Bulk(None));
        let mut input: &[u8] = b"?\r\n";
        assert!(read_reply(&mut input).is_err());
    }

    #[test]
    fn info_fields_are_found() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(info_field(info, "cluster_state").as_deref(), Some("ok"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
