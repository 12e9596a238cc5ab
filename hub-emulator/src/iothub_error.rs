//! IoT Hub's error answers on the device side: the numeric error codes and the JSON body a twin
//! response with an error status carries,
//! `{"errorCode": 400004, "trackingId": "…", "message": "…", "timestampUtc": "…Z"}`.
//!
//! Device SDKs decide success from that body, not from the status in the topic: Microsoft's
//! Node SDK reports an error exactly when the body has a truthy `errorCode`, so an error answer
//! without one reads as a success to it.
//!
//! The codes are IoT Hub's documented ones ("IoT Hub API common error codes", "Understand and
//! resolve Azure IoT Hub errors"; the .NET SDKs' `ErrorCode` enum): the first three digits are
//! the HTTP status.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Value, json};

/// An IoT Hub error code the emulator answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400004: the request body is not valid (does not parse, or breaks a twin rule).
    ArgumentInvalid,
    /// 401002: the credentials are not valid for the request.
    IotHubUnauthorizedAccess,
    /// 404001: the device is not registered (or disabled).
    DeviceNotFound,
    /// 412001: `If-Match` names another etag than the resource's.
    PreconditionFailed,
    /// 413001: the request exceeds a size limit (message, or twin section).
    MessageTooLarge,
    /// 429001: throttled; back off and retry.
    ThrottlingException,
    /// 500001: the hub failed internally; retry.
    ServerError,
    /// 503001: the hub is temporarily unavailable; retry.
    ServiceUnavailable,
}

impl ErrorCode {
    /// The code for an error answered with HTTP/MQTT `status` (unknown 4xx as
    /// [`ErrorCode::ArgumentInvalid`], unknown 5xx as [`ErrorCode::ServerError`]).
    pub fn for_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::IotHubUnauthorizedAccess,
            404 => Self::DeviceNotFound,
            412 => Self::PreconditionFailed,
            413 => Self::MessageTooLarge,
            429 => Self::ThrottlingException,
            503 => Self::ServiceUnavailable,
            400..=499 => Self::ArgumentInvalid,
            _ => Self::ServerError,
        }
    }

    /// The six-digit numeric code, as the `errorCode` field carries it.
    pub fn code(self) -> u32 {
        match self {
            Self::ArgumentInvalid => 400_004,
            Self::IotHubUnauthorizedAccess => 401_002,
            Self::DeviceNotFound => 404_001,
            Self::PreconditionFailed => 412_001,
            Self::MessageTooLarge => 413_001,
            Self::ThrottlingException => 429_001,
            Self::ServerError => 500_001,
            Self::ServiceUnavailable => 503_001,
        }
    }

    /// The HTTP status the code belongs to (its first three digits).
    pub fn status(self) -> u16 {
        u16::try_from(self.code() / 1000).expect("six-digit codes start with a 3-digit status")
    }

    /// IoT Hub's name of the code.
    pub fn name(self) -> &'static str {
        match self {
            Self::ArgumentInvalid => "ArgumentInvalid",
            Self::IotHubUnauthorizedAccess => "IotHubUnauthorizedAccess",
            Self::DeviceNotFound => "DeviceNotFound",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::MessageTooLarge => "MessageTooLarge",
            Self::ThrottlingException => "ThrottlingException",
            Self::ServerError => "ServerError",
            Self::ServiceUnavailable => "ServiceUnavailable",
        }
    }
}

/// The body of an error answer to a device twin request:
/// `{"errorCode": n, "trackingId": "…", "message": "…", "timestampUtc": "…Z"}`.
pub fn twin_error_body(code: ErrorCode, message: &str) -> Value {
    let now = SystemTime::now();
    json!({
        "errorCode": code.code(),
        "trackingId": tracking_id(now),
        "message": message,
        "timestampUtc": humantime::format_rfc3339_micros(now).to_string(),
    })
}

/// A tracking id in IoT Hub's shape: 32 hex digits, the gateway, the time
/// (`…-G:0-TimeStamp:12/03/2026 13:40:12`).
fn tracking_id(now: SystemTime) -> String {
    let mut id = String::with_capacity(64);
    for byte in rand::random::<[u8; 16]>() {
        write!(id, "{byte:02x}").expect("writing to a String cannot fail");
    }
    // `2026-12-03T13:40:12Z` → `12/03/2026 13:40:12`.
    let t = humantime::format_rfc3339_seconds(now).to_string();
    let (date, time) = t.split_once('T').unwrap_or((&t, ""));
    let mut ymd = date.splitn(3, '-');
    let (y, m, d) = (
        ymd.next().unwrap_or(""),
        ymd.next().unwrap_or(""),
        ymd.next().unwrap_or(""),
    );
    let time = time.trim_end_matches('Z');
    write!(id, "-G:0-TimeStamp:{m}/{d}/{y} {time}").expect("writing to a String cannot fail");
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_belong_to_their_status() {
        for status in [400, 401, 404, 412, 413, 429, 500, 503] {
            let code = ErrorCode::for_status(status);
            assert_eq!(code.status(), status, "{code:?}");
        }
        assert_eq!(ErrorCode::for_status(400).code(), 400_004);
        assert_eq!(ErrorCode::for_status(413).code(), 413_001);
        assert_eq!(ErrorCode::for_status(429).code(), 429_001);
        assert_eq!(ErrorCode::for_status(500).code(), 500_001);
        // Statuses without a code of their own fall into their class.
        assert_eq!(ErrorCode::for_status(409), ErrorCode::ArgumentInvalid);
        assert_eq!(ErrorCode::for_status(502), ErrorCode::ServerError);
    }

    #[test]
    fn body_has_iot_hubs_fields() {
        let body = twin_error_body(ErrorCode::ArgumentInvalid, "depth 11 exceeds 10");
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["errorCode", "message", "timestampUtc", "trackingId"]
        );
        assert_eq!(body["errorCode"], 400_004);
        assert_eq!(body["message"], "depth 11 exceeds 10");
        let ts = body["timestampUtc"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        let tracking = body["trackingId"].as_str().unwrap();
        let (hex, rest) = tracking.split_once('-').unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{tracking}");
        assert!(rest.starts_with("G:0-TimeStamp:"), "{tracking}");
        // Two answers never share a tracking id.
        let other = twin_error_body(ErrorCode::ArgumentInvalid, "x");
        assert_ne!(other["trackingId"], body["trackingId"]);
    }
}
