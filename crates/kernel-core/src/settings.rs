//! Serde helpers shared by every configuration type of the kernel, so each driver's settings
//! derive `Deserialize` (and `Serialize`) with their defaults in one place, and the bootstrap
//! reads them from TOML and the environment with the same keys.
//!
//! Durations are whole milliseconds in configuration (`connect_timeout_ms = 5000`): plain
//! integers that the environment can carry too.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Settings {
//!     #[serde(rename = "timeout_ms", with = "kernel_core::settings::duration_ms")]
//!     timeout: Duration,
//! }
//!
//! let s: Settings = serde_json::from_str(r#"{"timeout_ms": 250}"#).unwrap();
//! assert_eq!(s.timeout, Duration::from_millis(250));
//! ```

use serde::Serializer;

/// `Duration` as whole milliseconds (`u64`).
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as milliseconds (saturating at `u64::MAX`).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Serializes a connection string with its password replaced by `***`
/// ([`crate::redact::redact_url`]): a serialized configuration (a dump, a diagnostics page)
/// never carries a secret. Deserialization reads the real string.
pub fn serialize_redacted<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::redact_url(url))
}
