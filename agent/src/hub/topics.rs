//! IoT Hub twin topics: building request topics and routing incoming ones.
//!
//! rumqttc's own topic matcher never matches `$`-topics against wildcard filters, so every
//! incoming publish is routed by [`route`] instead.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Topic filter of twin responses.
pub const RESPONSE_FILTER: &str = "$iothub/twin/res/#";
/// Topic filter of desired-property notifications.
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

const RESPONSE_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";

/// The topic of a twin GET with request id `rid`.
pub fn get_twin(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// The topic of a reported-properties PATCH with request id `rid`.
pub fn patch_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// What an incoming topic is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `$iothub/twin/res/{status}/?$rid=…[&$version=…]`: the answer to a request.
    Response {
        /// The status code.
        status: u16,
        /// The request id it answers.
        rid: String,
        /// `$version` (a PATCH's new reported version), when present and numeric.
        version: Option<i64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`: a desired notification.
    Desired {
        /// `$version`, when present and numeric.
        version: Option<i64>,
    },
    /// Anything else (including responses without a `$rid` or with a non-numeric status).
    Other,
}

/// Routes an incoming topic. Query parameters may come in any order; unknown ones are
/// ignored; names and values are URL-decoded.
pub fn route(topic: &str) -> Incoming {
    if let Some(rest) = topic.strip_prefix(RESPONSE_PREFIX) {
        let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(status) = status.parse::<u16>() else {
            return Incoming::Other;
        };
        let Some(rid) = param(query, "$rid") else {
            return Incoming::Other;
        };
        let version = param(query, "$version").and_then(|v| v.parse().ok());
        return Incoming::Response {
            status,
            rid,
            version,
        };
    }
    if let Some(rest) = topic.strip_prefix(DESIRED_PREFIX) {
        let version = param(rest, "$version").and_then(|v| v.parse().ok());
        return Incoming::Desired { version };
    }
    Incoming::Other
}

/// The URL-decoded value of parameter `name` in `?a=b&c=d` (the leading `?` optional).
fn param(query: &str, name: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v).into_owned())
}

fn decode(s: &str) -> Cow<'_, str> {
    percent_decode_str(s).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_request_topics() {
        assert_eq!(get_twin("7"), "$iothub/twin/GET/?$rid=7");
        assert_eq!(
            patch_reported("42"),
            "$iothub/twin/PATCH/properties/reported/?$rid=42"
        );
    }

    #[test]
    fn routes_responses() {
        assert_eq!(
            route("$iothub/twin/res/200/?$rid=7"),
            Incoming::Response {
                status: 200,
                rid: "7".into(),
                version: None
            }
        );
        assert_eq!(
            route("$iothub/twin/res/204/?$rid=8&$version=12"),
            Incoming::Response {
                status: 204,
                rid: "8".into(),
                version: Some(12)
            }
        );
        // Any order, extra parameters, URL-encoding.
        assert_eq!(
            route("$iothub/twin/res/204/?x=1&%24version=3&$rid=a%2Fb"),
            Incoming::Response {
                status: 204,
                rid: "a/b".into(),
                version: Some(3)
            }
        );
        assert_eq!(
            route("$iothub/twin/res/429/?$rid=9"),
            Incoming::Response {
                status: 429,
                rid: "9".into(),
                version: None
            }
        );
    }

    #[test]
    fn odd_responses_are_other() {
        for t in [
            "$iothub/twin/res/200/",
            "$iothub/twin/res/abc/?$rid=1",
            "$iothub/twin/res/",
            "$iothub/twin/res/200/?rid=1",
        ] {
            assert_eq!(route(t), Incoming::Other, "{t}");
        }
        assert_eq!(
            route("$iothub/twin/res/200/?$rid=1&$version=x"),
            Incoming::Response {
                status: 200,
                rid: "1".into(),
                version: None
            }
        );
    }

    #[test]
    fn routes_desired() {
        assert_eq!(
            route("$iothub/twin/PATCH/properties/desired/?$version=5"),
            Incoming::Desired { version: Some(5) }
        );
        assert_eq!(
            route("$iothub/twin/PATCH/properties/desired/?foo=bar&$version=6"),
            Incoming::Desired { version: Some(6) }
        );
        assert_eq!(
            route("$iothub/twin/PATCH/properties/desired/"),
            Incoming::Desired { version: None }
        );
    }

    #[test]
    fn other_topics() {
        for t in [
            "",
            "devices/d1/messages/devicebound/x",
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            "$iothub/methods/POST/x/?$rid=1",
        ] {
            assert_eq!(route(t), Incoming::Other, "{t}");
        }
    }

    proptest! {
        #[test]
        fn response_round_trip(
            status in 100u16..600,
            rid in "[A-Za-z0-9-]{1,20}",
            version in proptest::option::of(0i64..i64::MAX),
            swap in any::<bool>(),
        ) {
            let mut params = vec![format!("$rid={rid}")];
            if let Some(v) = version {
                params.push(format!("$version={v}"));
            }
            if swap {
                params.reverse();
            }
            let topic = format!("$iothub/twin/res/{status}/?{}", params.join("&"));
            prop_assert_eq!(route(&topic), Incoming::Response { status, rid, version });
        }

        #[test]
        fn request_rid_reads_back(rid in "[A-Za-z0-9-]{1,20}") {
            // A response topic echoes the query of its request.
            let get = get_twin(&rid);
            let query = get.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let topic = format!("$iothub/twin/res/200/?{query}");
            prop_assert_eq!(route(&topic), Incoming::Response { status: 200, rid, version: None });
        }

        #[test]
        fn never_panics(topic in ".*") {
            let _ = route(&topic);
        }
    }
}
