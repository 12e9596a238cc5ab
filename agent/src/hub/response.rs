//! Pure interpretation of twin responses and desired notifications.

use serde_json::{Map, Value};

use super::{RequestError, SessionEvent, TwinDocument};

/// A twin response as it arrived: status, `$version` topic parameter, body.
#[derive(Debug, Clone, PartialEq)]
pub struct RawResponse {
    /// Status from the topic.
    pub status: u16,
    /// `$version` from the topic, if any.
    pub version: Option<i64>,
    /// The payload.
    pub body: Vec<u8>,
}

/// The error for a non-2xx status: `message` is the body's `message` field (or `Message`)
/// when the body is a JSON object with one, else the raw body text.
pub fn status_error(status: u16, body: &[u8]) -> RequestError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "Message"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    RequestError::Status { status, message }
}

/// The outcome of a GET from its response.
pub fn get_result(r: &RawResponse) -> Result<TwinDocument, RequestError> {
    if !(200..300).contains(&r.status) {
        return Err(status_error(r.status, &r.body));
    }
    parse_twin(&r.body).map_err(|why| RequestError::Status {
        status: r.status,
        message: format!("malformed twin document: {why}"),
    })
}

/// The outcome of a reported PATCH from its response: the new reported `$version`.
pub fn patch_result(r: &RawResponse) -> Result<i64, RequestError> {
    if !(200..300).contains(&r.status) {
        return Err(status_error(r.status, &r.body));
    }
    r.version.ok_or_else(|| RequestError::Status {
        status: r.status,
        message: "the PATCH answer has no $version".into(),
    })
}

/// Parses `{"desired":{…,"$version":n},"reported":{…,"$version":m}}`, splitting out the
/// versions and dropping `$metadata`.
pub fn parse_twin(body: &[u8]) -> Result<TwinDocument, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let mut obj = match v {
        Value::Object(o) => o,
        other => return Err(format!("not a JSON object: {}", kind(&other))),
    };
    let mut part = |name: &str| -> Result<(Value, i64), String> {
        let doc = match obj.remove(name) {
            Some(Value::Object(o)) => o,
            Some(other) => return Err(format!("{name} is {}, not an object", kind(&other))),
            None => return Err(format!("{name} is missing")),
        };
        split_version(doc).ok_or_else(|| format!("{name} has no integer $version"))
    };
    let (desired, desired_version) = part("desired")?;
    let (reported, reported_version) = part("reported")?;
    Ok(TwinDocument {
        desired,
        desired_version,
        reported,
        reported_version,
    })
}

/// Removes `$version` (returned) and `$metadata` from a document.
fn split_version(mut doc: Map<String, Value>) -> Option<(Value, i64)> {
    let version = doc.remove("$version")?.as_i64()?;
    doc.remove("$metadata");
    Some((Value::Object(doc), version))
}

/// The event for a desired notification: the version comes from the topic, or failing that
/// from the payload's `$version`.
pub fn desired_event(topic_version: Option<i64>, payload: &[u8]) -> SessionEvent {
    let mut obj = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            return SessionEvent::BadDesired {
                reason: format!("payload is {}, not a JSON object", kind(&other)),
            };
        }
        Err(e) => {
            return SessionEvent::BadDesired {
                reason: format!("payload is not JSON: {e}"),
            };
        }
    };
    let body_version = obj.remove("$version").and_then(|v| v.as_i64());
    obj.remove("$metadata");
    match topic_version.or(body_version) {
        Some(version) => SessionEvent::Desired {
            patch: Value::Object(obj),
            version,
        },
        None => SessionEvent::BadDesired {
            reason: "no $version in the topic or the payload".into(),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(status: u16, version: Option<i64>, body: &Value) -> RawResponse {
        RawResponse {
            status,
            version,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn get_splits_versions_and_metadata() {
        let body = json!({
            "desired": {"sp": 21, "$version": 4, "$metadata": {"x": 1}},
            "reported": {"t": {"v": 1}, "$version": 9}
        });
        assert_eq!(
            get_result(&raw(200, None, &body)),
            Ok(TwinDocument {
                desired: json!({"sp": 21}),
                desired_version: 4,
                reported: json!({"t": {"v": 1}}),
                reported_version: 9,
            })
        );
    }

    #[test]
    fn malformed_get_bodies() {
        for body in [
            json!([]),
            json!({"desired": {"$version": 1}}),
            json!({"desired": {}, "reported": {"$version": 1}}),
            json!({"desired": {"$version": "1"}, "reported": {"$version": 1}}),
            json!({"desired": 3, "reported": {"$version": 1}}),
        ] {
            let r = get_result(&raw(200, None, &body));
            assert!(
                matches!(&r, Err(RequestError::Status { status: 200, message }) if message.contains("malformed")),
                "{body}: {r:?}"
            );
        }
    }

    #[test]
    fn patch_takes_the_topic_version() {
        assert_eq!(patch_result(&raw(204, Some(7), &Value::Null)), Ok(7));
        assert!(patch_result(&raw(204, None, &Value::Null)).is_err());
    }

    #[test]
    fn error_statuses_carry_the_message() {
        assert_eq!(
            patch_result(&raw(
                429,
                None,
                &json!({"errorCode": 429_001, "message": "throttled"})
            )),
            Err(RequestError::Status {
                status: 429,
                message: "throttled".into()
            })
        );
        assert_eq!(
            status_error(400, b"plain text"),
            RequestError::Status {
                status: 400,
                message: "plain text".into()
            }
        );
        assert_eq!(
            status_error(500, br#"{"Message":"boom"}"#),
            RequestError::Status {
                status: 500,
                message: "boom".into()
            }
        );
        assert!(matches!(
            get_result(&raw(413, None, &json!({"message": "too big"}))),
            Err(RequestError::Status { status: 413, .. })
        ));
    }

    #[test]
    fn desired_events() {
        assert_eq!(
            desired_event(Some(5), br#"{"sp": 1, "$version": 5}"#),
            SessionEvent::Desired {
                patch: json!({"sp": 1}),
                version: 5
            }
        );
        assert_eq!(
            desired_event(None, br#"{"sp": null, "$version": 6}"#),
            SessionEvent::Desired {
                patch: json!({"sp": null}),
                version: 6
            }
        );
        for (v, body) in [
            (Some(1), &b"[1]"[..]),
            (Some(1), b"not json"),
            (None, br#"{"sp": 1}"#),
            (Some(1), b""),
        ] {
            assert!(
                matches!(desired_event(v, body), SessionEvent::BadDesired { .. }),
                "{body:?}"
            );
        }
    }
}
