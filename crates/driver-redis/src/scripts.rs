//! The Lua scripts, compiled in from the `.lua` files beside this module and called by SHA.
//!
//! fred's [`Script`] keeps the source and its SHA-1; `evalsha_with_reload` sends `EVALSHA` and,
//! on `NOSCRIPT` (a restarted server, `SCRIPT FLUSH`, a failover to a replica that never saw the
//! script), loads the source and calls again. No script is sent in full on the hot path.

use fred::types::scripts::Script;

/// Prepends the clock and the document helpers to a document script file.
macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/clock.lua"),
            "\n",
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        )
    };
}

/// Prepends only the clock helpers: event, lock and rate-limit scripts use no document helper,
/// and Redis runs a script's whole text (defining every helper) on each call.
macro_rules! lua_clock {
    ($file:literal) => {
        concat!(
            include_str!("lua/clock.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        )
    };
}

/// A script file alone, for scripts that need no helper.
macro_rules! lua_bare {
    ($file:literal) => {
        include_str!(concat!("lua/", $file))
    };
}

/// A document script wrapped by `once.lua`: the same write, applied at most once per operation
/// id. The plain script becomes a function, so its early returns (a failed condition) reach the
/// wrapper, which records only an `ok`.
macro_rules! lua_once {
    ($file:literal) => {
        concat!(
            include_str!("lua/clock.lua"),
            "\n",
            include_str!("lua/common.lua"),
            "\nlocal function apply()\n",
            include_str!(concat!("lua/", $file)),
            "\nend\n",
            include_str!("lua/once.lua")
        )
    };
}

/// One of the driver's scripts and whether it changes data, which decides what a lost answer
/// means: a read can be repeated, a write may have been applied.
pub(crate) struct Lua {
    pub(crate) script: Script,
    pub(crate) writes: bool,
}

impl Lua {
    fn reads(source: &str) -> Lua {
        Lua {
            script: Script::from_lua(source),
            writes: false,
        }
    }

    fn writes(source: &str) -> Lua {
        Lua {
            script: Script::from_lua(source),
            writes: true,
        }
    }
}

/// Every script the driver runs.
pub(crate) struct Scripts {
    pub(crate) put: Lua,
    pub(crate) delete: Lua,
    pub(crate) get: Lua,
    pub(crate) scan: Lua,
    pub(crate) count: Lua,
    pub(crate) clear: Lua,
    pub(crate) ns_create: Lua,
    pub(crate) ns_drop: Lua,
    pub(crate) set_meta: Lua,
    pub(crate) commit: Lua,
    pub(crate) put_once: Lua,
    pub(crate) delete_once: Lua,
    pub(crate) commit_once: Lua,
    pub(crate) append: Lua,
    pub(crate) read_stream: Lua,
    pub(crate) snapshot_save: Lua,
    pub(crate) lock_acquire: Lua,
    pub(crate) lock_release: Lua,
    pub(crate) lock_extend: Lua,
    pub(crate) gcra: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            put: Lua::writes(lua!("put.lua")),
            delete: Lua::writes(lua!("delete.lua")),
            get: Lua::reads(lua!("get.lua")),
            scan: Lua::reads(lua!("scan.lua")),
            count: Lua::reads(lua!("count.lua")),
            clear: Lua::writes(lua!("clear.lua")),
            ns_create: Lua::writes(lua!("ns_create.lua")),
            ns_drop: Lua::writes(lua!("ns_drop.lua")),
            set_meta: Lua::writes(lua!("set_meta.lua")),
            commit: Lua::writes(lua!("commit.lua")),
            put_once: Lua::writes(lua_once!("put.lua")),
            delete_once: Lua::writes(lua_once!("delete.lua")),
            commit_once: Lua::writes(lua_once!("commit.lua")),
            append: Lua::writes(lua_clock!("append.lua")),
            read_stream: Lua::reads(lua_bare!("read_stream.lua")),
            snapshot_save: Lua::writes(lua_clock!("snapshot_save.lua")),
            lock_acquire: Lua::writes(lua_clock!("lock_acquire.lua")),
            lock_release: Lua::writes(lua_bare!("lock_release.lua")),
            lock_extend: Lua::writes(lua_clock!("lock_extend.lua")),
            // A check spends the quota: repeating it after a lost answer could spend it twice.
            gcra: Lua::writes(lua_clock!("gcra.lua")),
        }
    }

    /// Every script, for loading them all up front.
    pub(crate) fn all(&self) -> [&Script; 20] {
        [
            &self.put.script,
            &self.delete.script,
            &self.get.script,
            &self.scan.script,
            &self.count.script,
            &self.clear.script,
            &self.ns_create.script,
            &self.ns_drop.script,
            &self.set_meta.script,
            &self.commit.script,
            &self.put_once.script,
            &self.delete_once.script,
            &self.commit_once.script,
            &self.append.script,
            &self.read_stream.script,
            &self.snapshot_save.script,
            &self.lock_acquire.script,
            &self.lock_release.script,
            &self.lock_extend.script,
            &self.gcra.script,
        ]
    }
}
