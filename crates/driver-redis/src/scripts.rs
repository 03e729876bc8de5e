//! The Lua scripts, compiled in from the `.lua` files beside this module and called by SHA.
//!
//! fred's [`Script`] keeps the source and its SHA-1; `evalsha_with_reload` sends `EVALSHA` and,
//! on `NOSCRIPT` (a restarted server, `SCRIPT FLUSH`, a failover to a replica that never saw the
//! script), loads the source and calls again. No script is sent in full on the hot path.

use fred::types::scripts::Script;

/// Prepends the shared helpers to a script file.
macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        )
    };
}

/// Every script the driver runs.
pub(crate) struct Scripts {
    pub(crate) put: Script,
    pub(crate) delete: Script,
    pub(crate) get: Script,
    pub(crate) scan: Script,
    pub(crate) count: Script,
    pub(crate) clear: Script,
    pub(crate) ns_create: Script,
    pub(crate) ns_drop: Script,
    pub(crate) set_meta: Script,
    pub(crate) commit: Script,
    pub(crate) append: Script,
    pub(crate) read_stream: Script,
    pub(crate) snapshot_save: Script,
    pub(crate) lock_acquire: Script,
    pub(crate) lock_release: Script,
    pub(crate) lock_extend: Script,
    pub(crate) gcra: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            put: Script::from_lua(lua!("put.lua")),
            delete: Script::from_lua(lua!("delete.lua")),
            get: Script::from_lua(lua!("get.lua")),
            scan: Script::from_lua(lua!("scan.lua")),
            count: Script::from_lua(lua!("count.lua")),
            clear: Script::from_lua(lua!("clear.lua")),
            ns_create: Script::from_lua(lua!("ns_create.lua")),
            ns_drop: Script::from_lua(lua!("ns_drop.lua")),
            set_meta: Script::from_lua(lua!("set_meta.lua")),
            commit: Script::from_lua(lua!("commit.lua")),
            append: Script::from_lua(lua!("append.lua")),
            read_stream: Script::from_lua(lua!("read_stream.lua")),
            snapshot_save: Script::from_lua(lua!("snapshot_save.lua")),
            lock_acquire: Script::from_lua(lua!("lock_acquire.lua")),
            lock_release: Script::from_lua(lua!("lock_release.lua")),
            lock_extend: Script::from_lua(lua!("lock_extend.lua")),
            gcra: Script::from_lua(lua!("gcra.lua")),
        }
    }

    /// Every script, for loading them all up front.
    pub(crate) fn all(&self) -> [&Script; 17] {
        [
            &self.put,
            &self.delete,
            &self.get,
            &self.scan,
            &self.count,
            &self.clear,
            &self.ns_create,
            &self.ns_drop,
            &self.set_meta,
            &self.commit,
            &self.append,
            &self.read_stream,
            &self.snapshot_save,
            &self.lock_acquire,
            &self.lock_release,
            &self.lock_extend,
            &self.gcra,
        ]
    }
}
