//! JSON sent to PostgreSQL so that it comes back exactly as it went in.
//!
//! `jsonb` keeps numbers as `numeric`, which has no exponent and no float/integer distinction of
//! its own: `1e16` goes in as serde_json writes it (ryu's shortest form) and comes back as
//! `10000000000000000`, which reads back as an *integer* — a float stored through the other
//! drivers comes back a float. Writing integral floats positionally with a fraction
//! (`10000000000000000.0`) keeps the scale, so they read back as floats; with serde_json's
//! `float_roundtrip` feature (workspace) the long decimals `numeric` returns (f64::MAX has 309
//! digits) parse back to the exact same `f64`. `-0.0` has no `numeric` form: kernel-core refuses
//! it on every driver.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

/// A value bound as a `jsonb` (or `json`) parameter, with floats written so `numeric` keeps
/// them floats.
pub(crate) struct Jsonb<T>(pub(crate) T);

impl<T> fmt::Debug for Jsonb<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print user data in logs of parameters.
        f.write_str("Jsonb(..)")
    }
}

/// serde_json's compact output, except integral floats: positional with `.0`.
struct ExactFloats;

impl Formatter for ExactFloats {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        if value.is_finite() && value.fract() == 0.0 {
            // Rust prints the exact decimal expansion: every digit of an integral f64.
            write!(writer, "{value:.1}")
        } else {
            CompactFormatter.write_f64(writer, value)
        }
    }
}

/// The JSON text of `value` as [`Jsonb`] sends it.
#[cfg(test)]
fn to_text<T: Serialize>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        ExactFloats,
    ))?;
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl<T: Serialize> ToSql for Jsonb<T> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            // The jsonb binary format: a version byte, then the text.
            out.put_u8(1);
        }
        let mut writer = out.writer();
        self.0
            .serialize(&mut serde_json::Serializer::with_formatter(
                &mut writer,
                ExactFloats,
            ))?;
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_are_positional_the_rest_is_compact() {
        assert_eq!(to_text(&json!(1e16)).unwrap(), "10000000000000000.0");
        assert_eq!(to_text(&json!(3.0)).unwrap(), "3.0");
        assert_eq!(to_text(&json!(1.5)).unwrap(), "1.5");
        assert_eq!(to_text(&json!(5e-324)).unwrap(), "5e-324");
        assert_eq!(to_text(&json!(u64::MAX)).unwrap(), "18446744073709551615");
        let max = to_text(&json!(f64::MAX)).unwrap();
        assert_eq!(max.len(), 311, "309 digits, a point and a zero: {max}");
        let back: f64 = serde_json::from_str(&max).unwrap();
        assert_eq!(back, f64::MAX);
        assert_eq!(
            to_text(&json!({"a": [1e300, -2e20]})).unwrap().len(),
            "{\"a\":[,]}".len() + 303 + 24
        );
    }
}
