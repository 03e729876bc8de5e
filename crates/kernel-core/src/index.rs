//! Declared field indexes: a namespace may ask its driver to index one dotted field path so
//! that equality filters on it (`eq`, `in`, also inside `and` / `or`) need not scan the
//! namespace.
//!
//! An index is an optimisation only: a query returns exactly the same entries, in the same
//! order, with or without it (the semantics of [`crate::query`] are unchanged). Drivers that
//! can index set [`crate::Capabilities::field_indexes`]; the others answer `Unsupported`.
//!
//! ```
//! use kernel_core::IndexSpec;
//!
//! let spec = IndexSpec::new("address.city");
//! assert!(spec.validate("people").is_ok());
//! assert!(IndexSpec::new("a..b").validate("people").is_err());
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::query::validate_path;
use crate::validate;

/// What to index: one field of a namespace's documents, by dotted path (the paths of
/// [`crate::Filter`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IndexSpec {
    /// Dotted path of the field, as in a filter (`address.city`, `tags.0`).
    pub field: String,
}

impl IndexSpec {
    /// An index on the field at `field`.
    pub fn new(field: impl Into<String>) -> IndexSpec {
        IndexSpec {
            field: field.into(),
        }
    }

    /// Checks the namespace and the path (as [`crate::Query::validate`] checks a filter's
    /// paths); drivers call this before any I/O.
    pub fn validate(&self, namespace: &str) -> Result<()> {
        validate::namespace(namespace)?;
        validate_path(&self.field).map_err(|e| e.with_context("namespace", namespace))
    }
}

/// A declared index, as [`crate::StorageDriver::list_indexes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IndexInfo {
    /// The namespace whose documents it indexes.
    pub namespace: String,
    /// The dotted field path.
    pub field: String,
    /// The backend's name for it (a PostgreSQL index name, for instance); for diagnostics.
    pub name: String,
}

impl IndexInfo {
    /// Describes the index `name` on `field` of `namespace`.
    pub fn new(
        namespace: impl Into<String>,
        field: impl Into<String>,
        name: impl Into<String>,
    ) -> IndexInfo {
        IndexInfo {
            namespace: namespace.into(),
            field: field.into(),
            name: name.into(),
        }
    }
}
