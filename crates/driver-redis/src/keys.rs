//! The key layout: every Redis key the driver touches is built here.
//!
//! `P` is the configured prefix. Braces mark the hash tag, so every key of one namespace, of
//! one lock and of one rate-limit key hashes to one cluster slot, and all event keys share one
//! slot (the global order needs one serialization point). See `docs/redis.md`.
//!
//! | key                       | type   | holds                                              |
//! |---------------------------|--------|----------------------------------------------------|
//! | `P{d:NS}:meta`            | hash   | `created` (µs), `meta` (JSON): the namespace exists |
//! | `P{d:NS}:data`            | hash   | document key -> encoded entry                      |
//! | `P{d:NS}:idx`             | zset   | every stored key, score 0: ordered by ZRANGEBYLEX  |
//! | `P{d:NS}:ttl`             | zset   | keys with a TTL, scored by expiry (µs)             |
//! | `P{d:NS}:rev`             | string | write counter; survives drops (transaction stamps) |
//! | `P{d:NS}:op:ID`           | string | operation id record (`operation.rs`), with PX expiry |
//! | `P{ev}:generation`        | string | `<unix ms>-<random>`: data-loss marker (`generation.rs`) |
//! | `P{ev}:head`              | string | last global position                               |
//! | `P{ev}:log`               | hash   | position -> encoded event                          |
//! | `P{ev}:s:STREAM`          | list   | positions of the stream (version v at index v-1)   |
//! | `P{ev}:ids:STREAM`        | hash   | event id -> version                                |
//! | `P{ev}:snap:STREAM`       | string | latest snapshot                                    |
//! | `P{ev}:notify`            | channel| pub/sub wake-up carrying the new head              |
//! | `P{l:KEY}:holder`         | string | current lease `token:fence`, with PX expiry        |
//! | `P{l:KEY}:fence`          | string | fencing counter, never deleted, seeded from the clock |
//! | `P{r:KEY}`                | string | GCRA theoretical arrival time (µs), with PX expiry |

/// Key builders for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
}

/// The five keys of one namespace, in the order the document scripts take them.
#[derive(Debug, Clone)]
pub(crate) struct NsKeys {
    pub(crate) meta: String,
    pub(crate) data: String,
    pub(crate) idx: String,
    pub(crate) ttl: String,
    pub(crate) rev: String,
}

impl NsKeys {
    /// `[meta, data, idx, ttl, rev]`.
    pub(crate) fn all(&self) -> Vec<String> {
        vec![
            self.meta.clone(),
            self.data.clone(),
            self.idx.clone(),
            self.ttl.clone(),
            self.rev.clone(),
        ]
    }
}

/// The keys of one event stream plus the shared event keys.
#[derive(Debug, Clone)]
pub(crate) struct StreamKeys {
    pub(crate) head: String,
    pub(crate) log: String,
    pub(crate) positions: String,
    pub(crate) ids: String,
    pub(crate) snapshot: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: &str) -> KeySpace {
        KeySpace {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn namespace(&self, ns: &str) -> NsKeys {
        let base = format!("{}{{d:{ns}}}", self.prefix);
        NsKeys {
            meta: format!("{base}:meta"),
            data: format!("{base}:data"),
            idx: format!("{base}:idx"),
            ttl: format!("{base}:ttl"),
            rev: format!("{base}:rev"),
        }
    }

    /// The data hash of a namespace alone (`P{d:NS}:data`), for the plain-command reads.
    pub(crate) fn data(&self, ns: &str) -> String {
        format!("{}{{d:{ns}}}:data", self.prefix)
    }

    /// The record of operation `id` in namespace `ns`: in the namespace's slot, so the script
    /// that writes the namespace checks and writes the record too. An id may hold braces, but
    /// the tag is the first `{...}`, which is the namespace's.
    pub(crate) fn operation(&self, ns: &str, id: &str) -> String {
        format!("{}{{d:{ns}}}:op:{id}", self.prefix)
    }

    /// SCAN pattern matching every namespace's `meta` key.
    pub(crate) fn namespace_meta_pattern(&self) -> String {
        format!("{}{{d:*}}:meta", escape_pattern(&self.prefix))
    }

    /// The namespace name inside a `meta` key found by SCAN, if it is one of ours.
    pub(crate) fn namespace_of_meta_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("{d:")?
            .strip_suffix("}:meta")
    }

    fn events_base(&self) -> String {
        format!("{}{{ev}}", self.prefix)
    }

    /// The generation marker (see `generation.rs`), in the events' slot so the append script
    /// checks it atomically.
    pub(crate) fn generation(&self) -> String {
        format!("{}:generation", self.events_base())
    }

    pub(crate) fn head(&self) -> String {
        format!("{}:head", self.events_base())
    }

    pub(crate) fn log(&self) -> String {
        format!("{}:log", self.events_base())
    }

    pub(crate) fn notify_channel(&self) -> String {
        format!("{}:notify", self.events_base())
    }

    pub(crate) fn stream(&self, stream: &str) -> StreamKeys {
        let base = self.events_base();
        StreamKeys {
            head: format!("{base}:head"),
            log: format!("{base}:log"),
            positions: format!("{base}:s:{stream}"),
            ids: format!("{base}:ids:{stream}"),
            snapshot: format!("{base}:snap:{stream}"),
        }
    }

    /// `[holder, fence]`: both start with `P{l:KEY}`, so they share a slot whatever braces
    /// `KEY` itself holds (the tag ends at the first `}` after our `{`).
    pub(crate) fn lock(&self, key: &str) -> [String; 2] {
        let base = format!("{}{{l:{key}}}", self.prefix);
        [format!("{base}:holder"), format!("{base}:fence")]
    }

    pub(crate) fn rate(&self, key: &str) -> String {
        format!("{}{{r:{key}}}", self.prefix)
    }
}

/// Escapes the glob characters of Redis' MATCH patterns.
pub(crate) fn escape_pattern(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::util::redis_keyslot;

    #[test]
    fn a_namespace_lives_in_one_slot() {
        let ks = KeySpace::new("app:");
        let ns = ks.namespace("users");
        let slot = redis_keyslot(ns.meta.as_bytes());
        for k in ns.all() {
            assert_eq!(redis_keyslot(k.as_bytes()), slot, "{k}");
        }
        assert_eq!(ks.data("users"), ns.data);
        for id in ["op-1", "a}b", "{x}", "x}:meta"] {
            let record = ks.operation("users", id);
            assert_eq!(redis_keyslot(record.as_bytes()), slot, "{record}");
            // A record is never taken for a namespace by list_namespaces' scan.
            assert!(
                ks.namespace_of_meta_key(&record)
                    .is_none_or(|ns| kernel_core::validate::namespace(ns).is_err()),
                "{record}"
            );
        }
        assert_eq!(ks.namespace_of_meta_key(&ns.meta), Some("users"));
        assert_eq!(ks.namespace_of_meta_key("other:{d:users}:meta"), None);
    }

    #[test]
    fn event_keys_share_one_slot() {
        let ks = KeySpace::new("app:");
        let s = ks.stream("order-1");
        let slot = redis_keyslot(s.head.as_bytes());
        for k in [&s.log, &s.positions, &s.ids, &s.snapshot] {
            assert_eq!(redis_keyslot(k.as_bytes()), slot, "{k}");
        }
        assert_eq!(
            redis_keyslot(ks.stream("user-9").positions.as_bytes()),
            slot
        );
    }

    #[test]
    fn lock_keys_share_a_slot_even_with_braces_in_the_key() {
        let ks = KeySpace::new("app:");
        for key in ["plain", "a}b", "{x}", "}{", "a{b}c"] {
            let [holder, fence] = ks.lock(key);
            assert_eq!(
                redis_keyslot(holder.as_bytes()),
                redis_keyslot(fence.as_bytes()),
                "{key}"
            );
        }
    }

    #[test]
    fn patterns_escape_globs() {
        assert_eq!(escape_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(
            KeySpace::new("t*:").namespace_meta_pattern(),
            "t\\*:{d:*}:meta"
        );
    }
}
