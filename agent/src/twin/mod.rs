//! Pure twin logic: merge patch algebra, hub document rules, `$version` ordering, Plug and
//! Play acknowledgements.
//!
//! No IO here: everything is a plain function over `serde_json::Value`, tested with proptest
//! (`agent/tests/twin_*.rs`).
//!
//! - [`patch`]: RFC 7396 [`apply`] / [`applied`], [`diff`] (smallest patch from one document to
//!   another), [`compose`] (one patch with the effect of two, or a [`ComposeError`] exactly
//!   where no such patch exists).
//! - [`rules`]: the hub's limits (keys, depth 10, 32 KB, integer range, strings, no `null` in
//!   arrays) as [`validate_section`] / [`validate_patch`] / [`validate_patched`], with errors
//!   like `reported.config.a: depth 11 > 10` that know whether the hub would answer 400 or 413.
//! - [`version`]: [`VersionOrder`] of an incoming desired `$version` against the held one, and
//!   [`split_version`] to take `$version` / `$metadata` off a section.
//! - [`ack`]: the Plug and Play writable-property acknowledgement [`Ack`].

pub mod ack;
pub mod patch;
pub mod path;
pub mod rules;
pub mod version;

pub use ack::{Ack, AckCode, AckError};
pub use patch::{ComposeError, JsonKind, applied, apply, compose, diff, is_noop};
pub use path::{Path, Segment};
pub use rules::{
    MAX_DEPTH, MAX_INTEGER, MAX_KEY_BYTES, MAX_SECTION_SIZE, MAX_STRING_BYTES, Rejection,
    RuleError, Section, Violation, section_size, validate_patch, validate_patched,
    validate_section,
};
pub use version::{
    VersionError, VersionOrder, full_is_newer, set_version, split_version, strip_reserved,
    version_of,
};
