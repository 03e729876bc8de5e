//! A TCP proxy on loopback that injects network faults between a driver and its server: cut
//! every live connection, refuse new ones, swallow the server's replies, or delay traffic.
//!
//! Tests point a driver at [`FaultProxy::url_for`] instead of the server and flip faults while
//! calls are in flight, to check what the caller is told when the network fails under it (an
//! unanswered write is `MaybeApplied`, a refused connection `Temporary`...). The proxy relays
//! bytes as they come and knows nothing of the protocols.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kernel_testkit::proxy::FaultProxy;
//!
//! let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).await?;
//! let url = proxy.url_for("redis://127.0.0.1:6379"); // redis://127.0.0.1:<proxy port>
//! // ... connect a driver to `url`, start a call ...
//! proxy.cut(); // every live connection is closed at once, in both directions
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// Bumped by [`FaultProxy::cut`]; every connection task ends when it changes.
    cuts: watch::Sender<u64>,
    refuse: AtomicBool,
    drop_replies: AtomicBool,
    delay_us: AtomicU64,
    accepted: AtomicUsize,
    live: AtomicUsize,
}

/// A fault-injecting TCP proxy in front of one server; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream,
            cuts,
            refuse: AtomicBool::new(false),
            drop_replies: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            accepted: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// Starts a proxy in front of the server a `scheme://[user[:password]@]host:port/...` URL
    /// names (`default_port` when it names none), and returns it with the same URL pointing at
    /// the proxy.
    pub async fn in_front_of(
        url: &str,
        default_port: u16,
    ) -> std::io::Result<(FaultProxy, String)> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host_and_rest = rest.rsplit_once('@').map_or(rest, |(_, tail)| tail);
        let end = host_and_rest
            .find(['/', '?'])
            .unwrap_or(host_and_rest.len());
        let host_port = &host_and_rest[..end];
        let target = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host_port.to_owned()
        } else {
            format!("{host_port}:{default_port}")
        };
        let upstream = tokio::net::lookup_host(&target)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{target} resolves to no address"),
                )
            })?;
        let proxy = FaultProxy::start(upstream).await?;
        let proxied = proxy.url_for(url);
        Ok((proxy, proxied))
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` with its `host:port` (after any `user:password@`) replaced by the proxy's, e.g.
    /// `postgres://postgres@127.0.0.1:5432/db` to `postgres://postgres@127.0.0.1:<port>/db`.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (auth, host_and_rest) = match rest.rsplit_once('@') {
            Some((auth, tail)) => (format!("{auth}@"), tail),
            None => (String::new(), rest),
        };
        let tail = host_and_rest
            .find(['/', '?'])
            .map_or("", |i| &host_and_rest[i..]);
        format!("{scheme}://{auth}{}{tail}", self.addr)
    }

    /// Closes every live connection now, in both directions (a network cut or a crashed
    /// middlebox); new connections are still accepted unless [`FaultProxy::refuse`] is set.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// While set, new connections are closed as soon as they are accepted (a server that is
    /// down); live ones are left alone.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// While set, bytes from the server are read and thrown away: requests arrive and are
    /// executed, their answers never come back (a half-open connection).
    pub fn drop_replies(&self, on: bool) {
        self.shared.drop_replies.store(on, Ordering::SeqCst);
    }

    /// Delays every chunk relayed in either direction by `delay` (zero: none).
    pub fn delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::SeqCst);
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently relayed.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: keep serving the live connections.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, shared.clone()));
    }
}

async fn relay(client: TcpStream, shared: Arc<Shared>) {
    let mut cuts = shared.cuts.subscribe();
    cuts.mark_unchanged();
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return; // The client sees its connection closed, as with a server that is down.
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.live.fetch_add(1, Ordering::SeqCst);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pipe(&mut client_read, &mut server_write, &shared, false);
    let down = pipe(&mut server_read, &mut client_write, &shared, true);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cuts.changed() => {}
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
    // Dropping both halves closes both sockets.
}

async fn pipe<R, W>(from: &mut R, to: &mut W, shared: &Shared, replies: bool)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = shared.delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if replies && shared.drop_replies.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn relays_cuts_refuses_and_drops_replies() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let wait = Duration::from_secs(2);
        assert_eq!(
            round_trip(&mut s, wait).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.drop_replies(true);
        assert_eq!(round_trip(&mut s, Duration::from_millis(200)).await, None);
        proxy.drop_replies(false);

        proxy.cut();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(wait, s.read(&mut buf)).await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a cut connection ends: {read:?}"
        );

        proxy.refuse(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let read = tokio::time::timeout(wait, refused.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a refused connection ends: {read:?}"
        );
        proxy.refuse(false);

        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut again, wait).await.as_deref(),
            Some(&b"ping"[..])
        );
        assert_eq!(proxy.accepted(), 3);
    }

    #[test]
    fn url_for_replaces_the_host_and_port_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let proxy = FaultProxy::start("127.0.0.1:1".parse().unwrap())
                .await
                .unwrap();
            let p = proxy.addr();
            assert_eq!(
                proxy.url_for("postgres://postgres:pw@127.0.0.1:5432/db?sslmode=disable"),
                format!("postgres://postgres:pw@{p}/db?sslmode=disable")
            );
            assert_eq!(
                proxy.url_for("redis://127.0.0.1:6379"),
                format!("redis://{p}")
            );
            assert_eq!(
                proxy.url_for("redis://localhost/2"),
                format!("redis://{p}/2")
            );
        });
    }
}
