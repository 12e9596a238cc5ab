//! IoT Hub's device MQTT topics and username, as pure functions.

/// What a device PUBLISH asks for, by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest {
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet {
        /// The request id to echo in the response.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    ReportedPatch {
        /// The request id to echo in the response.
        rid: String,
    },
    /// `devices/{deviceId}/messages/events/…`: device-to-cloud telemetry.
    Telemetry,
}

/// Why a PUBLISH topic is not one the hub accepts (IoT Hub closes the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A twin request without `$rid`.
    #[error("twin request topic {0:?} has no $rid")]
    MissingRid(String),
    /// A topic the hub does not serve (or another device's topic).
    #[error("unsupported publish topic {0:?}")]
    Unsupported(String),
}

const TWIN_GET: &str = "$iothub/twin/GET/";
const REPORTED_PATCH: &str = "$iothub/twin/PATCH/properties/reported/";

/// Classifies a device PUBLISH topic for `device_id`.
pub fn parse_publish_topic(topic: &str, device_id: &str) -> Result<DeviceRequest, TopicError> {
    let twin = |prefix: &str| -> Option<Result<String, TopicError>> {
        let rest = topic.strip_prefix(prefix)?;
        let query = rest.strip_prefix('?')?;
        Some(
            query_param(query, "$rid")
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| TopicError::MissingRid(topic.to_owned())),
        )
    };
    if let Some(rid) = twin(TWIN_GET) {
        return rid.map(|rid| DeviceRequest::TwinGet { rid });
    }
    if let Some(rid) = twin(REPORTED_PATCH) {
        return rid.map(|rid| DeviceRequest::ReportedPatch { rid });
    }
    let events = format!("devices/{device_id}/messages/events/");
    if topic.starts_with(&events) {
        return Ok(DeviceRequest::Telemetry);
    }
    Err(TopicError::Unsupported(topic.to_owned()))
}

/// The value of `name` in a `a=1&b=2` query string (no percent-decoding: `$rid` values are
/// opaque tokens echoed back verbatim).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `$iothub/twin/res/{status}/?$rid={rid}` plus `&$version={v}` for a reported PATCH.
pub fn twin_response_topic(status: u16, rid: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
pub fn desired_patch_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// Whether the hub grants a SUBSCRIBE to `filter` for `device_id`: valid filters below the
/// twin response, desired notification and direct method topics, and below the device's own
/// cloud-to-device message topic.
pub fn is_supported_filter(filter: &str, device_id: &str) -> bool {
    if !rumqttc::mqttbytes::valid_filter(filter) {
        return false;
    }
    let own = format!("devices/{device_id}/messages/devicebound/");
    [
        "$iothub/twin/res/",
        "$iothub/twin/PATCH/properties/desired/",
        "$iothub/methods/POST/",
        own.as_str(),
    ]
    .iter()
    .any(|prefix| {
        filter
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty())
    })
}

/// MQTT 3.1.1 topic matching (section 4.7): `+` matches one level, a trailing `#` the rest
/// (including the parent level); a topic starting with `$` does not match a filter whose first
/// level is a wildcard. (rumqttc's `matches` refuses every `$` topic, which would hide all of
/// IoT Hub's `$iothub/…` topics.)
pub fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(_) if f == "+" => {}
            Some(t) if t == f => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// The parts of an IoT Hub MQTT username `{host}/{deviceId}/?api-version=…[&…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username<'a> {
    /// The hub host name.
    pub host: &'a str,
    /// The device id.
    pub device_id: &'a str,
    /// The `api-version` value.
    pub api_version: &'a str,
}

/// Parses a username; `None` when it is not of the form `{host}/{deviceId}/?api-version=…`.
pub fn parse_username(username: &str) -> Option<Username<'_>> {
    let (path, query) = username.split_once("/?")?;
    let (host, device_id) = path.split_once('/')?;
    if host.is_empty() || device_id.is_empty() || device_id.contains('/') {
        return None;
    }
    let api_version = query_param(query, "api-version").filter(|v| !v.is_empty())?;
    Some(Username {
        host,
        device_id,
        api_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_requests() {
        assert_eq!(
            parse_publish_topic("$iothub/twin/GET/?$rid=42", "d"),
            Ok(DeviceRequest::TwinGet { rid: "42".into() })
        );
        assert_eq!(
            parse_publish_topic(
                "$iothub/twin/PATCH/properties/reported/?$rid=a-b&$version=3",
                "d"
            ),
            Ok(DeviceRequest::ReportedPatch { rid: "a-b".into() })
        );
        assert_eq!(
            parse_publish_topic("$iothub/twin/GET/?$rid=", "d"),
            Err(TopicError::MissingRid("$iothub/twin/GET/?$rid=".into()))
        );
        assert!(matches!(
            parse_publish_topic("$iothub/twin/GET/?foo=1", "d"),
            Err(TopicError::MissingRid(_))
        ));
        assert!(matches!(
            parse_publish_topic("$iothub/twin/GET/", "d"),
            Err(TopicError::Unsupported(_))
        ));
        assert!(matches!(
            parse_publish_topic("$iothub/twin/PATCH/properties/desired/?$rid=1", "d"),
            Err(TopicError::Unsupported(_))
        ));
    }

    #[test]
    fn telemetry_only_for_own_device() {
        assert_eq!(
            parse_publish_topic("devices/d/messages/events/a=1", "d"),
            Ok(DeviceRequest::Telemetry)
        );
        assert!(parse_publish_topic("devices/other/messages/events/", "d").is_err());
    }

    #[test]
    fn response_topics() {
        assert_eq!(
            twin_response_topic(200, "7", None),
            "$iothub/twin/res/200/?$rid=7"
        );
        assert_eq!(
            twin_response_topic(204, "7", Some(12)),
            "$iothub/twin/res/204/?$rid=7&$version=12"
        );
        assert_eq!(
            desired_patch_topic(5),
            "$iothub/twin/PATCH/properties/desired/?$version=5"
        );
    }

    #[test]
    fn filters() {
        assert!(is_supported_filter("$iothub/twin/res/#", "d"));
        assert!(is_supported_filter(
            "$iothub/twin/PATCH/properties/desired/#",
            "d"
        ));
        assert!(is_supported_filter("devices/d/messages/devicebound/#", "d"));
        assert!(!is_supported_filter(
            "devices/e/messages/devicebound/#",
            "d"
        ));
        assert!(is_supported_filter("$iothub/twin/res/+/#", "d"));
        assert!(!is_supported_filter("$iothub/twin/res/", "d"));
        assert!(!is_supported_filter("$iothub/twin/res/a#", "d"));
        assert!(!is_supported_filter("#", "d"));
        assert!(!is_supported_filter("$iothub/#", "d"));
    }

    #[test]
    fn matching() {
        assert!(topic_matches(
            "$iothub/twin/res/200/?$rid=1",
            "$iothub/twin/res/#"
        ));
        assert!(topic_matches(
            "$iothub/twin/PATCH/properties/desired/?$version=3",
            "$iothub/twin/PATCH/properties/desired/#"
        ));
        assert!(topic_matches(
            "$iothub/twin/res/200/?$rid=1",
            "$iothub/twin/res/+/#"
        ));
        assert!(topic_matches("a/b", "a/b/#"));
        assert!(topic_matches("a/b/c", "a/+/c"));
        assert!(!topic_matches("a/b/c", "a/+"));
        assert!(!topic_matches("a", "a/b"));
        assert!(!topic_matches("$iothub/twin/res/200/?$rid=1", "#"));
        assert!(!topic_matches(
            "$iothub/twin/res/200/?$rid=1",
            "+/twin/res/#"
        ));
        assert!(!topic_matches(
            "$iothub/twin/PATCH/properties/desired/?$version=3",
            "$iothub/twin/res/#"
        ));
    }

    #[test]
    fn usernames() {
        assert_eq!(
            parse_username("hub.example/dev-1/?api-version=2021-04-12&DeviceClientType=x"),
            Some(Username {
                host: "hub.example",
                device_id: "dev-1",
                api_version: "2021-04-12"
            })
        );
        for bad in [
            "hub.example/dev-1",
            "hub.example/dev-1/?",
            "hub.example//?api-version=1",
            "/dev-1/?api-version=1",
            "hub.example/a/b/?api-version=1",
            "hub.example/dev-1/?api-version=",
        ] {
            assert_eq!(parse_username(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Any rid without `&` survives a round trip through request and response topics.
        #[test]
        fn rid_round_trip(rid in "[A-Za-z0-9_.~-]{1,40}", status in 100u16..600) {
            let req = format!("$iothub/twin/GET/?$rid={rid}");
            proptest::prop_assert_eq!(
                parse_publish_topic(&req, "d"),
                Ok(DeviceRequest::TwinGet { rid: rid.clone() })
            );
            let res = twin_response_topic(status, &rid, None);
            let query = res.split_once('?').unwrap().1;
            proptest::prop_assert_eq!(query_param(query, "$rid"), Some(rid.as_str()));
        }
    }
}
