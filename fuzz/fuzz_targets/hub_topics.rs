//! MQTT topic routing, `$rid` / `$version` parameters and the hub's response bodies.
//!
//! Input: a topic and a payload separated by the first NUL byte.
//! Invariants: nothing panics; a request id sent in a GET or PATCH topic comes back
//! unchanged from the response topic that echoes its query (for ids without `&` or `%`,
//! which the agent never generates); `$version` parses only to what the text says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinbridge::hub::response::{self, RawResponse};
use twinbridge::hub::topics::{self, Incoming};

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let topic = String::from_utf8_lossy(topic);

    let incoming = topics::route(&topic);
    match &incoming {
        Incoming::Response {
            status,
            rid,
            version,
        } => {
            let r = RawResponse {
                status: *status,
                version: *version,
                body: payload.to_vec(),
            };
            let _ = response::get_result(&r);
            let _ = response::patch_result(&r);
            let _ = (status, rid);
        }
        Incoming::Desired { version } => {
            let _ = response::desired_event(*version, payload);
        }
        Incoming::Other => {}
    }
    let _ = response::parse_twin(payload);
    let _ = response::status_error(500, payload);
    let _ = response::desired_event(None, payload);

    // The topic's text as a request id: what the hub echoes must read back.
    let rid: &str = &topic;
    if !rid.is_empty() && !rid.contains(['&', '%']) {
        for request in [topics::get_twin(rid), topics::patch_reported(rid)] {
            let (_, query) = request
                .split_once('?')
                .expect("request topics have a query");
            for status in [200_u16, 204, 429] {
                let echoed = format!("$iothub/twin/res/{status}/?{query}");
                assert_eq!(
                    topics::route(&echoed),
                    Incoming::Response {
                        status,
                        rid: rid.to_owned(),
                        version: None
                    },
                    "{echoed}"
                );
                let with_version = format!("$iothub/twin/res/{status}/?{query}&$version=7");
                assert_eq!(
                    topics::route(&with_version),
                    Incoming::Response {
                        status,
                        rid: rid.to_owned(),
                        version: Some(7)
                    },
                    "{with_version}"
                );
            }
        }
    }
});
