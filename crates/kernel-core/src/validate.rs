//! Input rules, identical on every driver and checked here before any I/O.
//!
//! Every driver calls these functions at the top of each operation, so a rejected input is an
//! `InvalidInput` error naming the rule and nothing is written. The conformance suite checks
//! that every driver does.

use serde_json::Value;

use crate::Metadata;
use crate::error::{Error, Result};

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest key (document, lock or rate-limit key), in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest event type, correlation id or causation id, in bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// Namespaces starting with this are reserved for the kernel's own bookkeeping.
pub const RESERVED_PREFIX: &str = "_kernel";
/// Most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;
/// Most items one batch (`get_many`, `put_many`, `delete_many`) may carry.
pub const MAX_BATCH_SIZE: usize = 1000;
/// Longest document TTL: far enough for any use, and well inside every backend's time range.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(1000 * 365 * 86_400);

/// Size limits for values and metadata, configurable per driver (`[limits]` in the
/// bootstrap's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest serialized JSON value (and, separately, metadata object), in bytes.
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and objects in a value or metadata.
    pub max_depth: usize,
}

impl Limits {
    /// 1 MiB values, 64 levels of nesting.
    pub const DEFAULT: Limits = Limits {
        max_value_bytes: 1024 * 1024,
        max_depth: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

impl Limits {
    /// Largest `max_value_bytes` accepted (256 MiB).
    pub const MAX_VALUE_BYTES: usize = 256 * 1024 * 1024;
    /// Largest `max_depth` accepted.
    pub const MAX_DEPTH: usize = 1024;

    /// Checks both limits are in range; a `Config` error names `limits.<field>`.
    pub fn validate(&self) -> Result<()> {
        if !(1..=Limits::MAX_VALUE_BYTES).contains(&self.max_value_bytes) {
            return Err(Error::config(
                "limits.max_value_bytes",
                format!(
                    "expected 1..={} bytes, got {}",
                    Limits::MAX_VALUE_BYTES,
                    self.max_value_bytes
                ),
            ));
        }
        if !(1..=Limits::MAX_DEPTH).contains(&self.max_depth) {
            return Err(Error::config(
                "limits.max_depth",
                format!("expected 1..={}, got {}", Limits::MAX_DEPTH, self.max_depth),
            ));
        }
        Ok(())
    }
}

/// A namespace: 1..=128 bytes of `[A-Za-z0-9_.-]`, not starting with `_kernel`.
pub fn namespace(ns: &str) -> Result<()> {
    check_name(ns, "namespace").map_err(|e| e.with_context("namespace", escape(ns)))
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_input(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(Error::invalid_input(format!(
            "{what} is {} bytes; the limit is {MAX_NAMESPACE_LEN}",
            name.len()
        )));
    }
    // Byte-wise: every allowed character is ASCII, so the first byte outside the set starts the
    // offending character (decoded only for the message).
    if let Some(at) = name
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
    {
        let c = name[at..].chars().next().unwrap_or('\u{fffd}');
        return Err(Error::invalid_input(format!(
            "{what} may contain only A-Z, a-z, 0-9, '_', '.' and '-'; found {c:?}"
        )));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(Error::invalid_input(format!(
            "{what} must not start with the reserved prefix {RESERVED_PREFIX:?}"
        )));
    }
    Ok(())
}

/// The latest recording time an event may be given: the end of year 9999 (RFC 3339's range;
/// every backend stores it).
pub const MAX_RECORDED_AT_SECS: u64 = 253_402_300_799;

/// A given recording time ([`crate::NewEvent::recorded_at`]): from the Unix epoch to the end
/// of year 9999.
pub fn recorded_at(at: std::time::SystemTime) -> Result<()> {
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) if d.as_secs() <= MAX_RECORDED_AT_SECS => Ok(()),
        _ => Err(Error::invalid_input(
            "recorded_at must lie between the Unix epoch (1970) and the end of year 9999",
        )),
    }
}

/// A document key: 1..=1024 bytes of UTF-8 without NUL.
pub fn key(key: &str) -> Result<()> {
    check_key(key, "key")
}

/// A lock key: the same rule as a document key.
pub fn lock_key(key: &str) -> Result<()> {
    check_key(key, "lock key")
}

/// A rate-limit key: the same rule as a document key.
pub fn rate_limit_key(key: &str) -> Result<()> {
    check_key(key, "rate-limit key")
}

fn check_key(k: &str, what: &'static str) -> Result<()> {
    let err = |msg: String| Err(Error::invalid_input(msg).with_context("key", escape(k)));
    if k.is_empty() {
        return err(format!("{what} must not be empty"));
    }
    if k.len() > MAX_KEY_LEN {
        return err(format!(
            "{what} is {} bytes; the limit is {MAX_KEY_LEN}",
            k.len()
        ));
    }
    if k.contains('\0') {
        return err(format!("{what} must not contain NUL"));
    }
    Ok(())
}

/// A document address: the namespace rule and the key rule, errors naming both.
pub fn document(ns: &str, key: &str) -> Result<()> {
    namespace(ns)?;
    self::key(key).map_err(|e| e.with_context("namespace", ns))
}

/// Everything a put checks before I/O: address, value, metadata and TTL.
pub fn put(
    ns: &str,
    key: &str,
    value: &Value,
    options: &crate::PutOptions,
    limits: &Limits,
) -> Result<()> {
    document(ns, key)?;
    let ctx = |e: Error| {
        e.with_context("namespace", ns)
            .with_context("key", escape(key))
    };
    self::value(value, limits).map_err(ctx)?;
    if let Some(m) = &options.metadata {
        metadata(m, limits).map_err(ctx)?;
    }
    if let Some(ttl) = options.ttl {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(ctx(Error::invalid_input(
                "TTL must be greater than zero and at most 1000 years",
            )));
        }
    }
    Ok(())
}

/// A batch's shape: the namespace, at most [`MAX_BATCH_SIZE`] keys, each valid, and (for writes,
/// `unique`) no key twice.
pub fn batch<'a>(
    ns: &str,
    keys: impl ExactSizeIterator<Item = &'a str>,
    unique: bool,
) -> Result<()> {
    namespace(ns)?;
    if keys.len() > MAX_BATCH_SIZE {
        return Err(Error::invalid_input(format!(
            "batch has {} items; the limit is {MAX_BATCH_SIZE}",
            keys.len()
        ))
        .with_context("namespace", ns));
    }
    let mut seen = std::collections::HashSet::new();
    for k in keys {
        self::key(k).map_err(|e| e.with_context("namespace", ns))?;
        if unique && !seen.insert(k) {
            return Err(
                Error::invalid_input("the same key appears twice in one batch")
                    .with_context("namespace", ns)
                    .with_context("key", escape(k)),
            );
        }
    }
    Ok(())
}

/// A stream name: `category-id`, the namespace rule plus at least one `-` that is neither first
/// nor last. The category is what stands before the first `-`.
pub fn stream(stream: &str) -> Result<()> {
    let ctx = |e: Error| e.with_context("stream", escape(stream));
    check_name(stream, "stream name").map_err(ctx)?;
    match stream.find('-') {
        Some(i) if i > 0 && i + 1 < stream.len() => Ok(()),
        _ => Err(ctx(Error::invalid_input(
            "stream name must be `category-id`: a '-' with text on both sides",
        ))),
    }
}

/// A category (the part of a stream name before the first `-`).
pub fn category(category: &str) -> Result<()> {
    check_name(category, "category").map_err(|e| e.with_context("category", escape(category)))?;
    if category.contains('-') {
        return Err(Error::invalid_input("category must not contain '-'")
            .with_context("category", escape(category)));
    }
    Ok(())
}

/// The category of a stream name (which must already be valid).
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// An event type, correlation id or causation id: 1..=256 bytes without NUL.
pub fn label(value: &str, what: &'static str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_LABEL_LEN || value.contains('\0') {
        return Err(Error::invalid_input(format!(
            "{what} must be 1..={MAX_LABEL_LEN} bytes without NUL"
        ))
        .with_context(what, escape(value)));
    }
    Ok(())
}

/// A JSON value within the size and depth limits.
pub fn value(value: &Value, limits: &Limits) -> Result<()> {
    check_json(value, limits, "value")
}

/// A metadata object within the size and depth limits.
pub fn metadata(metadata: &Metadata, limits: &Limits) -> Result<()> {
    // Metadata is an object, so its own depth is one level more than its members'.
    let mut size = 2usize;
    for (i, (k, v)) in metadata.iter().enumerate() {
        if i > 0 {
            size += 1;
        }
        size += string_len(k) + 1;
        match Walk::run(v, limits.max_depth.saturating_sub(1)) {
            Some(walk) => {
                if walk.too_deep {
                    return Err(too_deep("metadata", limits));
                }
                if walk.negative_zero {
                    return Err(negative_zero_refused("metadata"));
                }
                size = size.saturating_add(walk.size);
            }
            None => {
                let (d, negative_zero) = shape(v);
                if d + 1 > limits.max_depth {
                    return Err(too_deep("metadata", limits));
                }
                if negative_zero {
                    return Err(negative_zero_refused("metadata"));
                }
                size = size.saturating_add(json_len(v)?);
            }
        }
    }
    if size > limits.max_value_bytes {
        return Err(too_big("metadata", size, limits));
    }
    Ok(())
}

fn check_json(v: &Value, limits: &Limits, what: &'static str) -> Result<()> {
    // One walk for depth, `-0.0` and size: every put checks its value, and two walks plus a
    // heap stack per call were a tenth of an in-process put.
    let Some(walk) = Walk::run(v, limits.max_depth) else {
        return check_json_deep(v, limits, what);
    };
    if walk.too_deep {
        return Err(too_deep(what, limits));
    }
    if walk.negative_zero {
        return Err(negative_zero_refused(what));
    }
    if walk.size > limits.max_value_bytes {
        return Err(too_big(what, walk.size, limits));
    }
    Ok(())
}

/// The two-pass check without recursion, for values nested deeper than [`Walk`] recurses.
fn check_json_deep(v: &Value, limits: &Limits, what: &'static str) -> Result<()> {
    // Depth first: it is cheap and guards the recursive size walk.
    let (d, negative_zero) = shape(v);
    if d > limits.max_depth {
        return Err(too_deep(what, limits));
    }
    if negative_zero {
        return Err(negative_zero_refused(what));
    }
    let size = json_len(v)?;
    if size > limits.max_value_bytes {
        return Err(too_big(what, size, limits));
    }
    Ok(())
}

/// Depth, `-0.0` and compact JSON length of a value in one recursive walk.
///
/// The recursion stops at [`Walk::MAX_RECURSION`] levels (or one level past the depth limit,
/// whichever comes first), so hostile nesting cannot overflow the stack.
#[derive(Default)]
struct Walk {
    size: usize,
    negative_zero: bool,
    too_deep: bool,
}

impl Walk {
    /// Deepest level walked recursively; deeper values (legal only under a raised
    /// `max_depth`) take [`check_json_deep`].
    const MAX_RECURSION: usize = 128;

    /// `None` when the value is nested past [`Walk::MAX_RECURSION`] and still within the
    /// depth limit.
    fn run(v: &Value, max_depth: usize) -> Option<Walk> {
        let mut walk = Walk::default();
        walk.visit(v, 0, max_depth)?;
        Some(walk)
    }

    /// Walks `v`, found at nesting level `level` (its container count above it). `None` when
    /// the recursion cap is reached before the depth limit.
    fn visit(&mut self, v: &Value, level: usize, max_depth: usize) -> Option<()> {
        match v {
            Value::Null => self.size += 4,
            Value::Bool(b) => self.size += if *b { 4 } else { 5 },
            Value::Number(n) => {
                self.size += number_len(n);
                self.negative_zero |= n
                    .as_f64()
                    .is_some_and(|f| f == 0.0 && f.is_sign_negative() && n.is_f64());
            }
            Value::String(s) => self.size += string_len(s),
            Value::Array(_) | Value::Object(_) => {
                if level + 1 > max_depth {
                    self.too_deep = true;
                    return Some(());
                }
                if level + 1 > Walk::MAX_RECURSION {
                    return None;
                }
                match v {
                    Value::Array(items) => {
                        self.size += 2 + items.len().saturating_sub(1);
                        for item in items {
                            self.visit(item, level + 1, max_depth)?;
                            if self.too_deep {
                                return Some(());
                            }
                        }
                    }
                    Value::Object(map) => {
                        self.size += 2 + map.len().saturating_sub(1);
                        for (k, item) in map {
                            self.size += string_len(k) + 1;
                            self.visit(item, level + 1, max_depth)?;
                            if self.too_deep {
                                return Some(());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(())
    }
}

/// Length of a number as serde_json writes it.
fn number_len(n: &serde_json::Number) -> usize {
    if let Some(u) = n.as_u64() {
        return u.checked_ilog10().map_or(1, |d| d as usize + 1);
    }
    if let Some(i) = n.as_i64() {
        return i
            .unsigned_abs()
            .checked_ilog10()
            .map_or(1, |d| d as usize + 1)
            + 1;
    }
    // Floats: as rare as they are varied; let serde_json count its own formatting.
    json_len(&Value::Number(n.clone())).unwrap_or(0)
}

/// Length of a string as serde_json writes it: quoted, with `"`, `\\` and control characters
/// escaped (`\n`-style where JSON has a short form, `\u00XX` otherwise).
fn string_len(s: &str) -> usize {
    let mut len = s.len() + 2;
    for &b in s.as_bytes() {
        if b < 0x20 {
            len += match b {
                b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 1,
                _ => 5,
            };
        } else if b == b'"' || b == b'\\' {
            len += 1;
        }
    }
    len
}

fn too_deep(what: &str, limits: &Limits) -> Error {
    Error::invalid_input(format!(
        "{what} nests deeper than the limit of {} levels",
        limits.max_depth
    ))
}

fn too_big(what: &str, size: usize, limits: &Limits) -> Error {
    Error::invalid_input(format!(
        "{what} is {size} bytes of JSON; the limit is {} bytes",
        limits.max_value_bytes
    ))
}

/// Refuses `-0.0`: PostgreSQL's `jsonb` stores numbers as `numeric`, which has no negative
/// zero, so it would come back as `0.0` there and as `-0.0` elsewhere. One rule on every driver
/// beats a value that changes with the backend.
fn negative_zero_refused(what: &str) -> Error {
    Error::invalid_input(format!(
        "{what} holds the number -0.0, which not every backend can store (PostgreSQL keeps it as          0): store 0.0 instead"
    ))
}

/// Nesting depth: a scalar is 0, `[]` and `{}` are 1. Iterative so hostile input cannot
/// overflow the stack.
pub fn depth(v: &Value) -> usize {
    shape(v).0
}

/// Depth, and whether a number is `-0.0`, in one walk.
fn shape(v: &Value) -> (usize, bool) {
    let mut max = 0;
    let mut negative_zero = false;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            Value::Number(n) => {
                max = max.max(d);
                negative_zero |= n
                    .as_f64()
                    .is_some_and(|f| f == 0.0 && f.is_sign_negative() && n.is_f64());
            }
            _ => max = max.max(d),
        }
    }
    (max, negative_zero)
}

/// Length of the compact JSON serialization, without allocating it.
pub fn json_len(v: &Value) -> Result<usize> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    serde_json::to_writer(&mut c, v)
        .map_err(|e| Error::invalid_input("value cannot be serialized as JSON").with_source(e))?;
    Ok(c.0)
}

/// Shortens and escapes user input for error messages so a hostile key cannot flood a log line.
pub fn escape(input: &str) -> String {
    const MAX: usize = 100;
    let mut out = String::new();
    for (i, c) in input.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    #[test]
    fn namespace_rules() {
        assert!(namespace("users").is_ok());
        assert!(namespace("a.b-c_D9").is_ok());
        for bad in ["", "has space", "slash/", "_kernel_x", "ünï"] {
            let e = namespace(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad}");
        }
        assert!(namespace(&"a".repeat(128)).is_ok());
        assert!(namespace(&"a".repeat(129)).is_err());
    }

    #[test]
    fn stream_rules() {
        assert!(stream("order-1").is_ok());
        assert!(stream("order-1-2").is_ok());
        for bad in ["order", "-1", "order-", "or der-1", ""] {
            assert!(stream(bad).is_err(), "{bad}");
        }
        assert_eq!(category_of("order-1-2"), "order");
    }

    #[test]
    fn key_rules() {
        assert!(key("a%_*?'\\ü").is_ok());
        assert!(key("").is_err());
        assert!(key("a\0b").is_err());
        assert!(key(&"k".repeat(1024)).is_ok());
        assert!(key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn one_pass_size_is_serde_json_length() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9),
            json!(10),
            json!(-10),
            json!(1.5),
            json!(1e300),
            json!(-2.5e-8),
            json!(0.1),
            json!(""),
            json!("plain"),
            json!(
                "quote \" backslash \\ nl \n tab \t cr \r bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f}"
            ),
            json!("ünïcødé ✓ 😀"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {}]], "x"]),
            json!({"a": {"b\n": [null, true, -0.5]}, "": 1, "k\"": "v"}),
        ];
        for v in values {
            let walk = Walk::run(&v, 64).expect("shallow");
            assert_eq!(walk.size, serde_json::to_vec(&v).unwrap().len(), "{v}");
            assert!(!walk.too_deep && !walk.negative_zero, "{v}");
        }
    }

    #[test]
    fn deep_values_take_the_iterative_path() {
        let mut deep = json!(1);
        for _ in 0..300 {
            deep = json!([deep]);
        }
        let limits = Limits {
            max_value_bytes: 1 << 20,
            max_depth: 1024,
        };
        assert!(Walk::run(&deep, limits.max_depth).is_none());
        assert!(value(&deep, &limits).is_ok());
        let tight = Limits {
            max_depth: 299,
            ..limits
        };
        assert_eq!(
            value(&deep, &tight).unwrap_err().code(),
            ErrorCode::InvalidInput
        );
        assert!(value(&json!([-0.0]), &limits).is_err());
        let mut meta = Metadata::new();
        meta.insert("z".into(), json!({"n": -0.0}));
        assert!(metadata(&meta, &limits).is_err());
    }

    #[test]
    fn names_report_the_offending_character() {
        let e = namespace("abü").unwrap_err();
        assert!(e.to_string().contains("'ü'"), "{e}");
    }

    #[test]
    fn value_limits() {
        let limits = Limits {
            max_value_bytes: 10,
            max_depth: 2,
        };
        assert!(value(&json!([[1]]), &limits).is_ok());
        assert!(value(&json!([[[1]]]), &limits).is_err());
        assert!(value(&json!("12345678"), &limits).is_ok());
        assert!(value(&json!("123456789"), &limits).is_err());
        let mut deep = json!(1);
        for _ in 0..1_000 {
            deep = json!([deep]);
        }
        assert!(value(&deep, &Limits::DEFAULT).is_err());
    }
}
