//! Read connections: a small fixed set, each used by one blocking task at a time, so reads run
//! in parallel with each other and with the writer (WAL readers never block the writer and are
//! never blocked by it). Every connection is `query_only`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kernel_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::config::SqliteConfig;
use crate::error::shut_down;

pub(crate) struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    permits: Semaphore,
    closed: Arc<AtomicBool>,
    path: String,
    config: SqliteConfig,
}

impl ReadPool {
    pub(crate) fn new(
        conns: Vec<Connection>,
        config: SqliteConfig,
        closed: Arc<AtomicBool>,
    ) -> ReadPool {
        let n = conns.len();
        ReadPool {
            conns: Mutex::new(conns),
            permits: Semaphore::new(n),
            closed,
            path: config.path.clone(),
            config,
        }
    }

    /// Runs `f` on a read connection in a blocking task.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(shut_down());
        }
        let _permit = self.permits.acquire().await.map_err(|_| shut_down())?;
        let conn = match self.take() {
            Some(c) => c,
            // A connection lost to a panicked task is replaced.
            None => {
                let config = self.config.clone();
                tokio::task::spawn_blocking(move || open_reader(Path::new(&config.path), &config))
                    .await
                    .map_err(|e| {
                        Error::internal("opening a read connection failed").with_source(e)
                    })??
            }
        };
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)));
            (conn, out)
        })
        .await
        .map_err(|e| {
            Error::internal("a read task of the SQLite driver failed")
                .with_source(e)
                .with_context("path", &self.path)
        })?;
        if !self.closed.load(Ordering::Acquire) {
            self.give_back(conn);
        }
        match out {
            Ok(r) => r,
            Err(_) => Err(Error::internal("a read of the SQLite driver panicked")
                .with_context("path", &self.path)),
        }
    }

    fn take(&self) -> Option<Connection> {
        match self.conns.lock() {
            Ok(mut g) => g.pop(),
            Err(p) => p.into_inner().pop(),
        }
    }

    fn give_back(&self, conn: Connection) {
        match self.conns.lock() {
            Ok(mut g) => g.push(conn),
            Err(p) => p.into_inner().push(conn),
        }
    }

    /// Closes every idle connection; reads fail with "driver shut down" from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        let conns = match self.conns.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        drop(conns);
    }
}

/// Opens one read connection (`query_only`, with the busy timeout).
pub(crate) fn open_reader(path: &Path, config: &SqliteConfig) -> Result<Connection> {
    let conn = crate::open_connection(path, config)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| crate::file_error(e, &config.path))?;
    Ok(conn)
}
