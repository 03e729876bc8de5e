//! Glob patterns for `list`: `*` matches any run of characters (also none, also `/`), `?`
//! matches exactly one character, `\` makes the next character literal. Every other character,
//! `[`, `%`, `_` and `'` included, matches itself.
//!
//! Drivers share this one implementation so a pattern means the same everywhere; a driver that
//! pushes the pattern down (Postgres `LIKE`) uses [`Glob::to_sql_like`], and every driver can
//! narrow its scan with [`Glob::literal_prefix`].

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    Any,
    One,
}

/// A compiled glob pattern.
///
/// ```
/// use kernel_core::Glob;
///
/// let g = Glob::new(r"user:*:profile\*").unwrap();
/// assert!(g.matches("user:42:profile*"));
/// assert!(!g.matches("user:42:profileX"));
/// assert_eq!(g.literal_prefix(), "user:");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    source: String,
}

impl Glob {
    /// Compiles a pattern. A trailing lone `\` is an `InvalidInput` error.
    pub fn new(pattern: &str) -> Result<Glob> {
        if pattern.len() > crate::validate::MAX_KEY_LEN * 2 {
            return Err(
                Error::invalid_input("glob pattern is longer than 2048 bytes")
                    .with_context("pattern", crate::validate::escape(pattern)),
            );
        }
        if pattern.contains('\0') {
            return Err(Error::invalid_input("glob pattern must not contain NUL")
                .with_context("pattern", crate::validate::escape(pattern)));
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // Collapse runs of `*`: they mean the same and would slow matching.
                    if tokens.last() != Some(&Token::Any) {
                        tokens.push(Token::Any);
                    }
                }
                '?' => tokens.push(Token::One),
                '\\' => match chars.next() {
                    Some(esc) => tokens.push(Token::Literal(esc)),
                    None => {
                        return Err(Error::invalid_input(
                            "glob pattern ends with a lone '\\' (escape what?)",
                        )
                        .with_context("pattern", crate::validate::escape(pattern)));
                    }
                },
                other => tokens.push(Token::Literal(other)),
            }
        }
        Ok(Glob {
            tokens,
            source: pattern.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern. Linear-time backtracking on the last `*`, so
    /// no pattern can make it explode.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let p = &self.tokens;
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            match p.get(pi) {
                Some(Token::Any) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(Token::One) => {
                    ti += 1;
                    pi += 1;
                }
                Some(Token::Literal(c)) if *c == text[ti] => {
                    ti += 1;
                    pi += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|t| *t == Token::Any)
    }

    /// The literal text every match starts with (up to the first `*` or `?`).
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Literal(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// The pattern as a SQL `LIKE` pattern with `\` as the escape character: `%`, `_` and `\`
    /// in the pattern's literals are escaped, `*` becomes `%`, `?` becomes `_`.
    pub fn to_sql_like(&self) -> String {
        let mut out = String::with_capacity(self.source.len() + 4);
        for t in &self.tokens {
            match t {
                Token::Any => out.push('%'),
                Token::One => out.push('_'),
                Token::Literal(c) => {
                    if matches!(c, '%' | '_' | '\\') {
                        out.push('\\');
                    }
                    out.push(*c);
                }
            }
        }
        out
    }
}

/// Escapes a literal string so that [`Glob::new`] matches exactly it.
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 4);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The smallest string greater than every string that starts with `prefix`, if any, for
/// range scans (`prefix <= key < upper`).
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        // Skip the surrogate gap, which holds no `char`.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let g = Glob::new("a*c?").unwrap();
        assert!(g.matches("abcd"));
        assert!(g.matches("acd"));
        assert!(g.matches("ab/xcd"));
        assert!(!g.matches("ac"));
        assert!(Glob::new("*").unwrap().matches(""));
        assert!(Glob::new("ü?").unwrap().matches("üß"));
    }

    #[test]
    fn escapes_and_literals() {
        let g = Glob::new(r"100\%_\*\?\\[x]").unwrap();
        assert!(g.matches(r"100%_*?\[x]"));
        assert!(!g.matches(r"100%_a?\[x]"));
        assert_eq!(g.to_sql_like(), r"100\%\_*?\\[x]");
        assert!(Glob::new("abc\\").is_err());
        assert_eq!(
            Glob::new(&escape_glob("a*?\\b")).unwrap().literal_prefix(),
            "a*?\\b"
        );
    }

    #[test]
    fn no_catastrophic_backtracking() {
        let g = Glob::new(&"*a".repeat(50)).unwrap();
        let text = "a".repeat(49) + "b";
        assert!(!g.matches(&text));
    }

    #[test]
    fn upper_bound() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
    }
}
