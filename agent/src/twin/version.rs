//! Ordering of desired `$version`s, and taking `$version` out of a section.
//!
//! The hub increments a section's `$version` by one per update and does not keep
//! notifications for disconnected devices. So a notification carrying the version right after
//! the held one can be applied as a patch; one at or below it is stale (already contained in
//! what is held); one further ahead means updates were missed, and only a full GET can recover.

use serde_json::Value;

use super::patch::JsonKind;
use super::rules::{METADATA_KEY, VERSION_KEY};

/// Where an incoming `$version` stands relative to the held one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionOrder {
    /// Exactly the next version: apply the notification's patch.
    Newer,
    /// The version already held: ignore.
    Same,
    /// Older than the held version: ignore.
    Older,
    /// Ahead by more than one (or nothing held yet): updates were missed; GET the full twin.
    Gap,
}

impl VersionOrder {
    /// Where `incoming` stands relative to `held` (`None`: no version held yet).
    pub fn classify(held: Option<u64>, incoming: u64) -> Self {
        let Some(held) = held else {
            return Self::Gap;
        };
        match incoming.cmp(&held) {
            std::cmp::Ordering::Less => Self::Older,
            std::cmp::Ordering::Equal => Self::Same,
            // `incoming > held` here, so `held + 1` cannot overflow.
            std::cmp::Ordering::Greater if incoming == held + 1 => Self::Newer,
            std::cmp::Ordering::Greater => Self::Gap,
        }
    }

    /// True for [`VersionOrder::Newer`]: apply the notification.
    pub fn should_apply(self) -> bool {
        self == Self::Newer
    }

    /// True for [`VersionOrder::Same`] and [`VersionOrder::Older`]: drop the notification.
    pub fn is_stale(self) -> bool {
        matches!(self, Self::Same | Self::Older)
    }

    /// True for [`VersionOrder::Gap`]: fetch the full twin.
    pub fn needs_full_get(self) -> bool {
        self == Self::Gap
    }
}

/// True when a full section fetched with version `fetched` is newer than what is held.
///
/// A full document needs no continuity: anything newer than the held version may replace it.
/// `false` does not mean "stale" for a GET result: a twin recreated in the hub restarts its
/// versions at 1, so the store adopts every full GET result whatever this says (see
/// `Store::desired_received`).
pub fn full_is_newer(held: Option<u64>, fetched: u64) -> bool {
    held.is_none_or(|held| fetched > held)
}

/// Why a section's `$version` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The section is not a JSON object.
    #[error("section is {0}, not an object")]
    NotAnObject(JsonKind),
    /// The section has no `$version`.
    #[error("section has no $version")]
    Missing,
    /// `$version` is not a non-negative integer.
    #[error("$version is {found}, not a non-negative integer")]
    Invalid {
        /// The value found.
        found: Value,
    },
}

/// Reads `$version` from the root of a section.
pub fn version_of(section: &Value) -> Result<u64, VersionError> {
    let map = section
        .as_object()
        .ok_or_else(|| VersionError::NotAnObject(JsonKind::of(section)))?;
    let found = map.get(VERSION_KEY).ok_or(VersionError::Missing)?;
    found.as_u64().ok_or_else(|| VersionError::Invalid {
        found: found.clone(),
    })
}

/// Reads `$version` and removes it and `$metadata` from the section root, leaving a plain
/// document for `apply` / `diff`. On error the section is left unchanged.
pub fn split_version(section: &mut Value) -> Result<u64, VersionError> {
    let version = version_of(section)?;
    strip_reserved(section);
    Ok(version)
}

/// Removes `$version` and `$metadata` from the section root, if present.
pub fn strip_reserved(section: &mut Value) {
    if let Value::Object(map) = section {
        map.remove(VERSION_KEY);
        map.remove(METADATA_KEY);
    }
}

/// Sets `$version` at the section root (a non-object section becomes an object first).
pub fn set_version(section: &mut Value, version: u64) {
    if !section.is_object() {
        *section = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = section {
        map.insert(VERSION_KEY.to_owned(), Value::from(version));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn classify_edges() {
        assert_eq!(VersionOrder::classify(None, 0), VersionOrder::Gap);
        assert_eq!(VersionOrder::classify(Some(4), 5), VersionOrder::Newer);
        assert_eq!(VersionOrder::classify(Some(4), 4), VersionOrder::Same);
        assert_eq!(VersionOrder::classify(Some(4), 3), VersionOrder::Older);
        assert_eq!(VersionOrder::classify(Some(4), 6), VersionOrder::Gap);
        assert_eq!(
            VersionOrder::classify(Some(u64::MAX), u64::MAX),
            VersionOrder::Same
        );
        assert_eq!(
            VersionOrder::classify(Some(u64::MAX - 1), u64::MAX),
            VersionOrder::Newer
        );
        assert_eq!(VersionOrder::classify(Some(0), u64::MAX), VersionOrder::Gap);
    }

    #[test]
    fn split_and_errors() {
        let mut doc = json!({"a": 1, "$version": 9, "$metadata": {}});
        assert_eq!(split_version(&mut doc), Ok(9));
        assert_eq!(doc, json!({"a": 1}));
        let mut bad = json!({"a": 1, "$version": -1});
        assert_eq!(
            split_version(&mut bad),
            Err(VersionError::Invalid { found: json!(-1) })
        );
        assert_eq!(bad, json!({"a": 1, "$version": -1}));
        assert_eq!(version_of(&json!({})), Err(VersionError::Missing));
        assert_eq!(
            version_of(&json!([])).map_err(|e| e.to_string()),
            Err("section is an array, not an object".to_owned())
        );
    }
}
