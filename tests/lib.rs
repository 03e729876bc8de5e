//! Shared helpers for the cross-crate integration tests.

// The README's Rust example, compiled and run as a doc test so the README cannot drift from
// the API.
#[doc = include_str!("../README.md")]
mod readme {}

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Captures everything `tracing` emits on the current thread (DEBUG and up) while it lives.
///
/// Use it from a current-thread runtime (`#[tokio::test]`'s default), so that tasks the code
/// under test spawns run on the capturing thread too.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes to the buffer of the capture running on this thread, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buffer) = c.borrow().as_ref() {
                buffer
                    .lock()
                    .map_err(|_| std::io::Error::other("log buffer poisoned"))?
                    .extend_from_slice(buf);
            }
            Ok(buf.len())
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing what this thread logs (tests run on a current-thread runtime).
    ///
    /// One global subscriber routes each thread's output to its own capture. A subscriber set
    /// per thread with `set_default` is not enough: tracing caches a callsite's interest
    /// globally, so a callsite first hit on a thread without a subscriber could stay silent for
    /// every other test in the binary.
    pub fn start() -> LogCapture {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            // Another global subscriber would only come from this same helper.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        LogCapture { buffer }
    }

    /// What was captured so far.
    pub fn text(&self) -> String {
        let bytes = match self.buffer.lock() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Environment-style variables from pairs.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A TCP proxy on 127.0.0.1 in front of a real server, that a test can cut: after
/// [`TcpProxy::close`] every proxied connection is dropped and new ones are refused, as when a
/// backend becomes unreachable.
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    closed: tokio::sync::watch::Sender<bool>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards every connection to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: String) -> std::io::Result<TcpProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (closed, mut watch) = tokio::sync::watch::channel(false);
        let conn_watch = closed.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = watch.wait_for(|c| *c) => break,
                    accepted = listener.accept() => accepted,
                };
                let mut inbound = match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        eprintln!("proxy accept failed: {e}");
                        continue;
                    }
                };
                let upstream = upstream.clone();
                let mut stop = conn_watch.clone();
                tokio::spawn(async move {
                    let mut outbound = match tokio::net::TcpStream::connect(&upstream).await {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("proxy cannot reach {upstream}: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stop.wait_for(|c| *c) => {}
                        copied = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                            if let Err(e) = copied {
                                eprintln!("proxied connection ended: {e}");
                            }
                        }
                    }
                    // Both sockets drop here: the client sees its connection die.
                });
            }
            // The listener drops here: new connections are refused.
        });
        Ok(TcpProxy { addr, closed })
    }

    /// The proxy's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Cuts every connection and stops listening.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.close();
    }
}

/// Splits a `scheme://[userinfo@]host:port[/rest]` URL into the `host:port` and a function
/// that rebuilds the URL with another `host:port` (credentials and path kept).
pub fn split_authority(url: &str) -> Option<(String, impl Fn(&str) -> String + '_)> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    let host = rest[host_start..authority_end].to_owned();
    let rebuild = move |new_host: &str| {
        format!(
            "{}{}{}{}",
            &url[..scheme_end],
            &rest[..host_start],
            new_host,
            &rest[authority_end..]
        )
    };
    Some((host, rebuild))
}
