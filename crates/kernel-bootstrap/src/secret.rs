//! Connection strings that never show their password.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A connection URL (or Postgres `key=value` string) whose password is redacted in `Debug`,
/// `Display` and every error or log line; only [`SecretUrl::expose`] gives the real string.
///
/// ```
/// use kernel_bootstrap::SecretUrl;
///
/// let url = SecretUrl::new("postgres://app:hunter2@db:5432/app");
/// assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The real URL, for handing to a client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

/// Replaces the password of a connection string with `***`: kernel-core's
/// [`redact_url`](kernel_core::redact::redact_url), the one redaction every driver uses.
pub fn redact(url: &str) -> String {
    kernel_core::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_form() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret"),
            "postgres://h/db?user=u&password=***"
        );
    }
}
