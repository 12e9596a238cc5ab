//! Pure twin logic: merge patch algebra, hub document rules, `$version` ordering.
//!
//! No IO here: everything is a plain function over `serde_json::Value`, tested with proptest.

pub mod patch;

pub use patch::{applied, apply, diff, is_noop};
