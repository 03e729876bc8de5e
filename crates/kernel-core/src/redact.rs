//! Connection strings without their passwords: the one redaction every driver and the bootstrap
//! use for `Debug`, `Display`, errors and logs.

/// Hides the secrets of a connection string:
///
/// * `scheme://user:password@host/...` shows `user:***`;
/// * a bare userinfo (`scheme://secret@host`) is kept for `postgres` / `postgresql` (a user name)
///   and replaced by `***` for every other scheme (Redis clients read it as a password);
/// * `password=` values in a query string or a Postgres `key=value` string become `***`
///   (quoted values included);
/// * anything else holding an `@` but no `://` is replaced whole by `***`.
///
/// ```
/// use kernel_core::redact::redact_url;
///
/// assert_eq!(redact_url("postgres://app:hunter2@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redact_url("redis://:hunter2@cache:6379"), "redis://:***@cache:6379");
/// assert_eq!(redact_url("host=db password=hunter2"), "host=db password=***");
/// ```
pub fn redact_url(url: &str) -> String {
    let trimmed = url.trim();
    let Some(scheme_end) = trimmed.find("://") else {
        if trimmed.contains('=') {
            return redact_params(trimmed, ' ');
        }
        return if trimmed.contains('@') {
            "***".to_owned()
        } else {
            trimmed.to_owned()
        };
    };
    let scheme = &trimmed[..scheme_end];
    let rest = &trimmed[scheme_end + 3..];
    // The authority ends at the first '/', '?' or '#'; userinfo is before its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                None if matches!(scheme, "postgres" | "postgresql") => format!("{userinfo}{host}"),
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_params(tail, '&'))
}

/// Redacts `password=...` pairs separated by `sep` (query string or key=value form).
fn redact_params(text: &str, sep: char) -> String {
    let lower = text.to_ascii_lowercase();
    let Some(start) = lower.find("password") else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    let mut rest_start = 0;
    let mut search_from = start;
    while let Some(rel) = lower[search_from..].find("password") {
        let idx = search_from + rel;
        let after_name = idx + "password".len();
        let tail = &text[after_name..];
        let eq = tail.len() - tail.trim_start().len();
        if !tail.trim_start().starts_with('=') {
            search_from = after_name;
            continue;
        }
        let value_start = after_name + eq + 1;
        let value_tail = &text[value_start..];
        let spaces = value_tail.len() - value_tail.trim_start().len();
        let value_start = value_start + spaces;
        let value_tail = &text[value_start..];
        let value_len = if let Some(quoted) = value_tail.strip_prefix('\'') {
            // key=value form allows quoted values with \' escapes.
            let mut len = 1;
            let mut escaped = false;
            for c in quoted.chars() {
                len += c.len_utf8();
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '\'' {
                    break;
                }
            }
            len
        } else {
            value_tail
                .find(|c: char| c == sep || (sep == '&' && c == '#') || c.is_whitespace())
                .unwrap_or(value_tail.len())
        };
        out.push_str(&text[rest_start..value_start]);
        out.push_str("***");
        rest_start = value_start + value_len;
        search_from = rest_start;
    }
    out.push_str(&text[rest_start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_form_is_hidden() {
        let cases = [
            (
                "postgres://app:s3cr%40t@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "postgresql://app:pw@db/app?sslmode=disable",
                "postgresql://app:***@db/app?sslmode=disable",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
            (
                "postgres://db/app?user=a&password=pw&x=1",
                "postgres://db/app?user=a&password=***&x=1",
            ),
            (
                "host=db user=app password=pw dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            (
                "host=db password = 'p w\\'x' dbname=app",
                "host=db password = *** dbname=app",
            ),
            ("mysql://u:pw@h/db", "mysql://u:***@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("redis://u:pw@h:1/2", "redis://u:***@h:1/2"),
            ("redis://:pw@h", "redis://:***@h"),
            ("rediss://pw@h?x=1", "rediss://***@h?x=1"),
            ("redis://h:6379", "redis://h:6379"),
            ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
            ("garbage@thing", "***"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
