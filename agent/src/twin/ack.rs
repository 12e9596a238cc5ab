//! IoT Plug and Play acknowledgements of writable properties.
//!
//! After applying (or refusing) a desired value, the device reports under the same property
//! name `{"value": v, "ac": code, "av": desired_version, "ad": "description"}`: `ac` is an
//! HTTP-like status (200 applied, 400 refused as invalid, 500 failed on the device), `av` the
//! desired `$version` it answers, `ad` an optional human-readable reason.

use serde_json::{Map, Value};

use super::patch::JsonKind;

/// The status of an acknowledgement (`ac`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// 200: the value was written to the device and read back.
    Completed,
    /// 400: the value was refused (wrong type, out of range, not writable).
    Invalid,
    /// 500: writing to the device failed.
    Failed,
    /// Any other code found when parsing (e.g. 202 "in progress" from other software).
    Other(u16),
}

impl AckCode {
    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::Completed => 200,
            Self::Invalid => 400,
            Self::Failed => 500,
            Self::Other(code) => code,
        }
    }

    /// The variant for a numeric code.
    pub fn from_u16(code: u16) -> Self {
        match code {
            200 => Self::Completed,
            400 => Self::Invalid,
            500 => Self::Failed,
            other => Self::Other(other),
        }
    }
}

/// One writable-property acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The value acknowledged: the one read back after writing, or the one refused.
    pub value: Value,
    /// The status (`ac`).
    pub code: AckCode,
    /// The desired `$version` this answers (`av`).
    pub version: u64,
    /// Why (`ad`), if anything useful can be said.
    pub description: Option<String>,
}

/// Why a JSON value is not an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The value is not an object.
    #[error("acknowledgement is {0}, not an object")]
    NotAnObject(JsonKind),
    /// A required member is missing.
    #[error("acknowledgement lacks \"{0}\"")]
    Missing(&'static str),
    /// A member has the wrong type or range.
    #[error("acknowledgement member \"{member}\" must be {expected}")]
    Invalid {
        /// The member's name.
        member: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A member that acknowledgements do not have.
    #[error("acknowledgement has unexpected member \"{0}\"")]
    Unexpected(String),
}

impl Ack {
    /// An acknowledgement of `value` for desired version `version`.
    pub fn new(value: Value, code: AckCode, version: u64, description: Option<String>) -> Self {
        Self {
            value,
            code,
            version,
            description,
        }
    }

    /// The JSON form `{"value", "ac", "av", "ad"}` (`ad` only when there is a description).
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("value".into(), self.value.clone());
        map.insert("ac".into(), Value::from(self.code.as_u16()));
        map.insert("av".into(), Value::from(self.version));
        if let Some(description) = &self.description {
            map.insert("ad".into(), Value::from(description.as_str()));
        }
        Value::Object(map)
    }

    /// A reported-properties patch that sets `property` to this acknowledgement.
    pub fn to_patch(&self, property: &str) -> Value {
        let mut map = Map::new();
        map.insert(property.to_owned(), self.to_json());
        Value::Object(map)
    }

    /// The same patch for a property of a Plug and Play component: the component object is
    /// marked with `"__t": "c"` as the convention requires.
    pub fn to_component_patch(&self, component: &str, property: &str) -> Value {
        let mut inner = Map::new();
        inner.insert("__t".into(), Value::from("c"));
        inner.insert(property.to_owned(), self.to_json());
        let mut map = Map::new();
        map.insert(component.to_owned(), Value::Object(inner));
        Value::Object(map)
    }

    /// Reads an acknowledgement back from its JSON form.
    ///
    /// Strict: `value` must be present and not `null`, `ac` an integer in 0..=999, `av` a
    /// non-negative integer, `ad` (optional) a string, and nothing else, so that an ordinary
    /// object-valued property is not mistaken for an acknowledgement.
    pub fn parse(json: &Value) -> Result<Self, AckError> {
        let map = json
            .as_object()
            .ok_or_else(|| AckError::NotAnObject(JsonKind::of(json)))?;
        if let Some(unexpected) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "value" | "ac" | "av" | "ad"))
        {
            return Err(AckError::Unexpected(unexpected.clone()));
        }
        let value = map.get("value").ok_or(AckError::Missing("value"))?;
        if value.is_null() {
            return Err(AckError::Invalid {
                member: "value",
                expected: "not null",
            });
        }
        let code = map
            .get("ac")
            .ok_or(AckError::Missing("ac"))?
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c <= 999)
            .ok_or(AckError::Invalid {
                member: "ac",
                expected: "an integer status code 0..=999",
            })?;
        let version = map
            .get("av")
            .ok_or(AckError::Missing("av"))?
            .as_u64()
            .ok_or(AckError::Invalid {
                member: "av",
                expected: "a non-negative integer",
            })?;
        let description = match map.get("ad") {
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                return Err(AckError::Invalid {
                    member: "ad",
                    expected: "a string",
                });
            }
        };
        Ok(Self {
            value: value.clone(),
            code: AckCode::from_u16(code),
            version,
            description,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn builds_the_pnp_shape() {
        let ack = Ack::new(json!(21.5), AckCode::Completed, 7, Some("applied".into()));
        assert_eq!(
            ack.to_patch("setpoint"),
            json!({"setpoint": {"value": 21.5, "ac": 200, "av": 7, "ad": "applied"}})
        );
        assert_eq!(
            ack.to_component_patch("boiler", "setpoint"),
            json!({"boiler": {"__t": "c", "setpoint": {"value": 21.5, "ac": 200, "av": 7, "ad": "applied"}}})
        );
        let refused = Ack::new(json!("x"), AckCode::Invalid, 8, None);
        assert_eq!(refused.to_json(), json!({"value": "x", "ac": 400, "av": 8}));
        assert_eq!(Ack::parse(&refused.to_json()), Ok(refused));
    }

    #[test]
    fn parse_rejects_non_acks() {
        assert_eq!(
            Ack::parse(&json!({"value": 1, "ac": 200})),
            Err(AckError::Missing("av"))
        );
        assert_eq!(
            Ack::parse(&json!({"value": 1, "ac": 200, "av": 1, "unit": "C"})),
            Err(AckError::Unexpected("unit".into()))
        );
        assert!(Ack::parse(&json!({"value": 1, "ac": 1000, "av": 1})).is_err());
        assert!(Ack::parse(&json!({"value": 1, "ac": 200, "av": -1})).is_err());
        assert!(Ack::parse(&json!({"value": 1, "ac": 200, "av": 1, "ad": 5})).is_err());
        assert!(Ack::parse(&json!({"value": null, "ac": 200, "av": 1})).is_err());
        assert_eq!(
            Ack::parse(&json!({"value": 1, "ac": 202, "av": 3})).map(|a| a.code),
            Ok(AckCode::Other(202))
        );
    }
}
