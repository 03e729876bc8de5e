//! The Redis test server: the server named by `KERNEL_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`), a unique key prefix per test, and deletion of that prefix's keys
//! when the guard drops, so tests run in parallel on one server without seeing each other.
//!
//! ```text
//! kernel_testkit::storage_suite!(async {
//!     let server = kernel_testkit::redis::RedisTestServer::start().await;
//!     let mut config = driver_redis::RedisConfig::new(server.url());
//!     config.key_prefix = server.prefix().to_owned();
//!     (driver_redis::RedisDriver::connect(config).await.unwrap(), server)
//! });
//! ```
//!
//! When no server answers, [`RedisTestServer::start`] panics with instructions: a test that
//! needs Redis fails, it is never skipped.

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Config;
use fred::types::{Builder, Key};
use futures::StreamExt;

/// The environment variable naming the test server.
pub const URL_VAR: &str = "KERNEL_TEST_REDIS_URL";
/// The server used when [`URL_VAR`] is unset.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How long connecting to the test server may take before the test fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One test's slice of the Redis test server: the URL and a key prefix no other test uses.
/// Dropping it deletes every key under the prefix.
#[derive(Debug)]
pub struct RedisTestServer {
    url: String,
    prefix: String,
}

/// The URL of the test server: [`URL_VAR`] or [`DEFAULT_URL`].
pub fn test_url() -> String {
    std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

impl RedisTestServer {
    /// Checks that the test server answers and hands out a fresh prefix.
    ///
    /// # Panics
    ///
    /// When no Redis server answers, with instructions to start one.
    pub async fn start() -> RedisTestServer {
        let url = test_url();
        match connect(&url).await {
            Ok(client) => {
                if let Err(e) = client.quit().await {
                    eprintln!("kernel-testkit: closing the Redis check connection failed: {e}");
                }
            }
            Err(e) => panic!("{}", unreachable_message(&url, &e)),
        }
        RedisTestServer {
            url,
            prefix: format!("kt-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The server's URL (may hold a password: never print it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key prefix reserved for this test (`kt-<32 hex digits>:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A raw fred client on the test server, for tests that look under the driver (key
    /// layout, expiry before clean-up, script cache). Quit it when done.
    ///
    /// # Panics
    ///
    /// When no Redis server answers.
    pub async fn raw_client(&self) -> Client {
        match connect(&self.url).await {
            Ok(client) => client,
            Err(e) => panic!("{}", unreachable_message(&self.url, &e)),
        }
    }

    /// Every key currently under this test's prefix, sorted.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the scan fails.
    pub async fn keys(&self) -> Vec<String> {
        let client = self.raw_client().await;
        let keys = match scan_prefix(&client, &self.prefix).await {
            Ok(keys) => keys
                .iter()
                .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
                .collect(),
            Err(e) => panic!("scanning the test keys under {} failed: {e}", self.prefix),
        };
        if let Err(e) = client.quit().await {
            eprintln!("kernel-testkit: closing a Redis connection failed: {e}");
        }
        keys
    }
}

impl Drop for RedisTestServer {
    fn drop(&mut self) {
        let url = self.url.clone();
        let prefix = self.prefix.clone();
        // The guard drops inside the test's runtime, where nothing may block on a future, so
        // the clean-up runs on a small runtime of its own in a helper thread.
        let outcome = std::thread::spawn(move || -> Result<usize, String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?;
            runtime.block_on(async {
                let client = connect(&url).await.map_err(|e| e.to_string())?;
                let deleted = delete_prefix(&client, &prefix).await;
                if let Err(e) = client.quit().await {
                    eprintln!("kernel-testkit: closing the clean-up connection failed: {e}");
                }
                deleted.map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!(
                "kernel-testkit: WARNING: the test keys under {} were not deleted: {e}",
                self.prefix
            ),
            Err(_) => eprintln!(
                "kernel-testkit: WARNING: the clean-up of the test keys under {} panicked",
                self.prefix
            ),
        }
    }
}

async fn connect(url: &str) -> Result<Client, fred::error::Error> {
    let config = Config::from_url(url)?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = CONNECT_TIMEOUT;
            c.internal_command_timeout = CONNECT_TIMEOUT;
        })
        .with_performance_config(|p| p.default_command_timeout = CONNECT_TIMEOUT)
        .build()?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.init()).await {
        Ok(Ok(_handle)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ));
        }
    }
    let pong: String = client.ping(None).await?;
    if pong != "PONG" {
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Protocol,
            format!("PING answered {pong:?}"),
        ));
    }
    Ok(client)
}

fn unreachable_message(url: &str, error: &fred::error::Error) -> String {
    format!(
        "no Redis server answers at {} ({URL_VAR}, default {DEFAULT_URL}): {error}\n\
         Start one with `redis-server --daemonize yes` (on Debian: `apt-get install -y \
         redis-server` first), or run `scripts/test`, which installs and starts it; or set \
         {URL_VAR} to a running server.",
        redact(url)
    )
}

/// The URL without its password.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

async fn scan_prefix(client: &Client, prefix: &str) -> Result<Vec<Key>, fred::error::Error> {
    // Prefixes are `kt-<hex>:`: nothing in them is special to MATCH.
    let pattern = format!("{prefix}*");
    let mut stream = if client.is_clustered() {
        client
            .scan_cluster_buffered(pattern, Some(1000), None)
            .boxed()
    } else {
        client.scan_buffered(pattern, Some(1000), None).boxed()
    };
    let mut keys = Vec::new();
    while let Some(key) = stream.next().await {
        keys.push(key?);
    }
    keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    keys.dedup();
    Ok(keys)
}

async fn delete_prefix(client: &Client, prefix: &str) -> Result<usize, fred::error::Error> {
    let keys = scan_prefix(client, prefix).await?;
    if client.is_clustered() {
        // The keys live in many slots; one command may only touch one.
        for key in &keys {
            let _: i64 = client.unlink(key.clone()).await?;
        }
    } else {
        for chunk in keys.chunks(500) {
            let _: i64 = client.unlink(chunk.to_vec()).await?;
        }
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_password() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
