//! How the driver sends its statements.
//!
//! * [`Statements::Cached`] (a direct connection or a session pooler, the default): each
//!   statement is prepared once per connection (deadpool's statement cache), then only bound
//!   and executed — the fastest path for the driver's small set of statements.
//! * [`Statements::Unnamed`] (a transaction pooler, `pooler = "transaction"`): a named prepared
//!   statement lives in one server session, and a transaction pooler hands consecutive
//!   statements of one client to different sessions (`prepared statement "s3" does not
//!   exist`, or another client's `s3` taken for ours). Every statement then goes out as the
//!   unnamed statement: parse, bind and execute in one message, one round trip
//!   ([`tokio_postgres::Client::query_typed`]). The parameter types that `query_typed` needs
//!   are the natural PostgreSQL type of each Rust value ([`natural_type`]).
//!
//! One-off statements on a plain [`tokio_postgres::Client`] (the migration runner) always go
//! unnamed: they have no cache to use, and one round trip beats prepare + execute.

use bytes::BytesMut;
use deadpool_postgres::{ClientWrapper, Object, Transaction};
use tokio_postgres::types::{ToSql, Type, WrongType};
use tokio_postgres::{Error, Row};

/// How statements are sent (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Statements {
    /// Prepared once per connection and cached.
    Cached,
    /// Unnamed, parsed with every execution: works through a transaction pooler.
    Unnamed,
}

/// A connection to run a statement on: a pooled client, a transaction on one, or a plain
/// client.
#[derive(Clone, Copy)]
pub(crate) enum On<'a> {
    Pooled(&'a ClientWrapper),
    Tx(&'a Transaction<'a>),
    Plain(&'a tokio_postgres::Client),
}

impl<'a> From<&'a Object> for On<'a> {
    fn from(o: &'a Object) -> On<'a> {
        On::Pooled(o)
    }
}

impl<'a> From<&'a ClientWrapper> for On<'a> {
    fn from(c: &'a ClientWrapper) -> On<'a> {
        On::Pooled(c)
    }
}

impl<'a> From<&'a Transaction<'a>> for On<'a> {
    fn from(t: &'a Transaction<'a>) -> On<'a> {
        On::Tx(t)
    }
}

impl<'a> From<&'a tokio_postgres::Client> for On<'a> {
    fn from(c: &'a tokio_postgres::Client) -> On<'a> {
        On::Plain(c)
    }
}

/// Runs `$cached` with `$c` bound to a connection that has a statement cache, or `$unnamed`
/// with `$c` bound to any connection (`typed` parameters in scope).
macro_rules! run {
    ($mode:expr, $on:expr, $c:ident => cached: $cached:expr, unnamed: $unnamed:expr) => {
        match ($mode, $on) {
            (Statements::Cached, On::Pooled($c)) => $cached,
            (Statements::Cached, On::Tx($c)) => $cached,
            (_, On::Pooled($c)) => $unnamed,
            (_, On::Tx($c)) => $unnamed,
            (_, On::Plain($c)) => $unnamed,
        }
    };
}

impl Statements {
    /// The rows of `sql`.
    pub(crate) async fn query<'a>(
        self,
        on: impl Into<On<'a>>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let typed = self.typed(params);
        run!(self, on.into(), c =>
            cached: {
                let stmt = c.prepare_cached(sql).await?;
                c.query(&stmt, params).await
            },
            unnamed: c.query_typed(sql, &typed).await)
    }

    /// The one row of `sql` (an error when it returns none or more).
    pub(crate) async fn query_one<'a>(
        self,
        on: impl Into<On<'a>>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let typed = self.typed(params);
        run!(self, on.into(), c =>
            cached: {
                let stmt = c.prepare_cached(sql).await?;
                c.query_one(&stmt, params).await
            },
            unnamed: c.query_typed_one(sql, &typed).await)
    }

    /// The row of `sql`, if any (an error when it returns more than one).
    pub(crate) async fn query_opt<'a>(
        self,
        on: impl Into<On<'a>>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let typed = self.typed(params);
        run!(self, on.into(), c =>
            cached: {
                let stmt = c.prepare_cached(sql).await?;
                c.query_opt(&stmt, params).await
            },
            unnamed: c.query_typed_opt(sql, &typed).await)
    }

    /// Runs `sql`; the number of rows it touched.
    pub(crate) async fn execute<'a>(
        self,
        on: impl Into<On<'a>>,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let typed = self.typed(params);
        run!(self, on.into(), c =>
            cached: {
                let stmt = c.prepare_cached(sql).await?;
                c.execute(&stmt, params).await
            },
            unnamed: c.execute_typed(sql, &typed).await)
    }

    /// `params` with their natural types, for the unnamed path (empty for the cached one,
    /// which takes the types the server infers).
    fn typed<'p>(self, params: &[&'p (dyn ToSql + Sync)]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
        match self {
            Statements::Cached => Vec::new(),
            Statements::Unnamed => {
                let mut scratch = BytesMut::new();
                params
                    .iter()
                    .map(|p| (*p, natural_type(*p, &mut scratch)))
                    .collect()
            }
        }
    }
}

/// The PostgreSQL types the driver binds, in order of preference: a Rust value's natural type
/// is the first it accepts (`String` → `text`, `i64` → `int8`, `Jsonb` → `jsonb`,
/// `Vec<Option<&str>>` → `text[]`...).
const CANDIDATES: [Type; 22] = [
    Type::TEXT,
    Type::INT8,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::JSONB,
    Type::FLOAT8,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::BYTEA,
    Type::XID8,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::INT4_ARRAY,
    Type::INT2_ARRAY,
    Type::BOOL_ARRAY,
    Type::JSONB_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::UUID_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::BYTEA_ARRAY,
    Type::XID8_ARRAY,
];

/// The first of [`CANDIDATES`] that `value` accepts. `ToSql::accepts` is not object-safe, but
/// `to_sql_checked` checks it first and fails with [`WrongType`] before encoding anything; a
/// type it accepts is encoded once into `scratch` (and again by the bind). A value no
/// candidate takes gets `unknown`, which the bind then refuses with tokio-postgres' own
/// "cannot convert" error naming the Rust type.
pub(crate) fn natural_type(value: &(dyn ToSql + Sync), scratch: &mut BytesMut) -> Type {
    for ty in CANDIDATES {
        scratch.clear();
        match value.to_sql_checked(&ty, scratch) {
            Err(e) if e.is::<WrongType>() => continue,
            // Accepted (an encoding failure is the bind's to report).
            _ => return ty,
        }
    }
    Type::UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonb::Jsonb;

    fn ty(value: &(dyn ToSql + Sync)) -> Type {
        natural_type(value, &mut BytesMut::new())
    }

    #[test]
    fn every_bound_rust_type_has_its_natural_type() {
        let none_str: Option<&str> = None;
        let none_i64: Option<i64> = None;
        let json = serde_json::json!({"a": 1});
        assert_eq!(ty(&"x"), Type::TEXT);
        assert_eq!(ty(&String::from("x")), Type::TEXT);
        assert_eq!(ty(&none_str), Type::TEXT);
        assert_eq!(ty(&1i64), Type::INT8);
        assert_eq!(ty(&none_i64), Type::INT8);
        assert_eq!(ty(&1i32), Type::INT4);
        assert_eq!(ty(&1i16), Type::INT2);
        assert_eq!(ty(&true), Type::BOOL);
        assert_eq!(ty(&1.5f64), Type::FLOAT8);
        assert_eq!(ty(&Jsonb(&json)), Type::JSONB);
        assert_eq!(ty(&Some(Jsonb(json.clone()))), Type::JSONB);
        assert_eq!(ty(&kernel_core::Uuid::nil()), Type::UUID);
        assert_eq!(ty(&vec!["a".to_owned()]), Type::TEXT_ARRAY);
        assert_eq!(ty(&vec![Some("a"), None]), Type::TEXT_ARRAY);
        assert_eq!(ty(&vec![1i64]), Type::INT8_ARRAY);
        assert_eq!(ty(&vec![Some(1i64), None]), Type::INT8_ARRAY);
        assert_eq!(ty(&vec![1i32]), Type::INT4_ARRAY);
        assert_eq!(ty(&vec![1i16]), Type::INT2_ARRAY);
        assert_eq!(ty(&vec![kernel_core::Uuid::nil()]), Type::UUID_ARRAY);
        assert_eq!(ty(&vec![Jsonb(&json)]), Type::JSONB_ARRAY);
        assert_eq!(ty(&vec![Some(Jsonb(&json)), None]), Type::JSONB_ARRAY);
        assert_eq!(ty(&Vec::<String>::new()), Type::TEXT_ARRAY);
    }
}
