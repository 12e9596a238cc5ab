//! The service REST API over real sockets: an axum server on 127.0.0.1:0 and a minimal
//! HTTP/1.1 client written against raw TCP (so the test reads exactly what goes on the wire).
//! The desired-notification test runs a real MQTT device (rumqttc) against the emulator.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hub_emulator::state::{
    ConnEvent, DeviceIdentity, Hub, HubSettings, SharedState, now_epoch_secs,
};
use hub_emulator::{Config, Emulator, sas, service};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);
const HOST: &str = "testhub.azure-devices.net";
const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const SERVICE_KEY: &str = "c2VydmljZS1rZXktc2VydmljZS1rZXktc2VydmljZSE=";

// ----- a tiny HTTP/1.1 client -------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    tokio::time::timeout(DEADLINE, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to service API");
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        parse_response(&raw)
    })
    .await
    .expect("response before the deadline")
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON body")
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .expect("ASCII chunk size")
                .trim(),
            16,
        )
        .expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ----- a service API server -----------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    hub: SharedState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(hub: SharedState) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let router = service::router(hub.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Server { addr, hub, task }
}

fn settings(service_key: Option<&str>) -> HubSettings {
    HubSettings {
        hostname: HOST.into(),
        service_key: service_key.map(str::to_owned),
        sas_skew: Duration::ZERO,
        ..HubSettings::default()
    }
}

/// A server whose hub has devices `d1` and `d2`.
async fn server() -> Server {
    let hub = Hub::new(settings(None)).expect("hub");
    for id in ["d1", "d2"] {
        hub.register_device(DeviceIdentity::new(id, KEY_A, KEY_B), None)
            .expect("register");
    }
    serve(hub).await
}

impl Server {
    async fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[], None).await
    }

    async fn send(&self, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        http(self.addr, method, path, headers, Some(&body.to_string())).await
    }

    async fn query(&self, q: &str) -> Resp {
        self.send("POST", "/devices/query", &json!({ "query": q }), &[])
            .await
    }
}

// ----- devices ----------------------------------------------------------------------------------

#[tokio::test]
async fn register_get_and_list_devices() {
    let s = server().await;
    let r = s
        .send(
            "PUT",
            "/devices/meter-01?api-version=2021-04-12",
            &json!({
                "deviceId": "meter-01",
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": KEY_A, "secondaryKey": KEY_B}},
            }),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["deviceId"], "meter-01");
    assert_eq!(
        r.body["authentication"]["symmetricKey"]["primaryKey"],
        KEY_A
    );
    assert_eq!(r.body["status"], "enabled");

    let r = s.get("/devices/meter-01").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["authentication"]["symmetricKey"]["secondaryKey"],
        KEY_B
    );
    assert_eq!(r.body["connectionState"], "Disconnected");

    let r = s.get("/devices").await;
    assert_eq!(r.status, 200);
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d1", "d2", "meter-01"]);

    // The registered keys authenticate the device.
    let identity = s.hub.identity("meter-01").expect("registered");
    let token = sas::generate(
        HOST,
        "meter-01",
        &identity.secondary_key,
        now_epoch_secs() + 60,
    );
    assert!(
        sas::verify(
            &token,
            HOST,
            "meter-01",
            &[&identity.primary_key, &identity.secondary_key],
            now_epoch_secs()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn keys_are_generated_when_omitted_and_kept_on_update() {
    let s = server().await;
    let r = s.send("PUT", "/devices/new-1", &json!({}), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let primary = r.body["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let secondary = r.body["authentication"]["symmetricKey"]["secondaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(B64.decode(&primary).unwrap().len(), 32);
    assert_eq!(B64.decode(&secondary).unwrap().len(), 32);
    assert_ne!(primary, secondary);

    // Updating only the status keeps the keys.
    let r = s
        .send("PUT", "/devices/new-1", &json!({"status": "disabled"}), &[])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "disabled");
    assert_eq!(
        r.body["authentication"]["symmetricKey"]["primaryKey"],
        primary.as_str()
    );

    // The flat form works too.
    let r = s
        .send(
            "PUT",
            "/devices/new-1",
            &json!({"primaryKey": KEY_B, "status": "enabled"}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["authentication"]["symmetricKey"]["primaryKey"],
        KEY_B
    );
    assert_eq!(
        r.body["authentication"]["symmetricKey"]["secondaryKey"],
        secondary.as_str()
    );
}

#[tokio::test]
async fn bad_device_bodies_are_refused() {
    let s = server().await;
    for body in [
        json!({"deviceId": "other"}),
        json!({"authentication": {"symmetricKey": {"primaryKey": "not base64!"}}}),
        json!({"status": "sleepy"}),
        json!({"primaryKey": 12}),
        json!([1]),
    ] {
        let r = s.send("PUT", "/devices/x1", &body, &[]).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["errorCode"], "ArgumentInvalid");
    }
    let r = http(s.addr, "PUT", "/devices/x1", &[], Some("{not json")).await;
    assert_eq!(r.status, 400);
    assert_eq!(s.get("/devices/x1").await.status, 404);
}

#[tokio::test]
async fn device_etag_is_checked_with_if_match() {
    let s = server().await;
    let etag = s.get("/devices/d1").await.body["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .send(
            "PUT",
            "/devices/d1",
            &json!({"status": "disabled"}),
            &[("If-Match", "\"stale\"")],
        )
        .await;
    assert_eq!(r.status, 412);
    let quoted = format!("\"{etag}\"");
    let r = s
        .send(
            "PUT",
            "/devices/d1",
            &json!({"status": "disabled"}),
            &[("If-Match", &quoted)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "disabled");
}

// ----- twins ------------------------------------------------------------------------------------

#[tokio::test]
async fn get_twin_and_404s() {
    let s = server().await;
    let r = s.get("/twins/d1?api-version=2021-04-12").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["deviceId"], "d1");
    assert_eq!(r.body["properties"]["desired"]["$version"], 1);
    assert_eq!(r.body["properties"]["reported"]["$version"], 1);
    let etag = r.body["etag"].as_str().unwrap();
    assert_eq!(r.header("etag"), Some(format!("\"{etag}\"").as_str()));

    for (method, path) in [
        ("GET", "/twins/nobody"),
        ("PATCH", "/twins/nobody"),
        ("PUT", "/twins/nobody"),
        ("GET", "/devices/nobody"),
    ] {
        let r = http(s.addr, method, path, &[], Some("{}")).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.body["errorCode"], "DeviceNotFound");
        assert!(
            r.body["Message"]
                .as_str()
                .unwrap()
                .starts_with("ErrorCode:DeviceNotFound;")
        );
    }
    assert_eq!(s.get("/nothing/here").await.status, 404);
}

#[tokio::test]
async fn patch_merges_tags_and_desired() {
    let s = server().await;
    let before = s.get("/twins/d1").await.body;
    let r = s
        .send(
            "PATCH",
            "/twins/d1",
            &json!({"tags": {"site": {"plant": 7, "line": "A"}}, "properties": {"desired": {"setpoint": 21.5, "mode": "eco"}}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["tags"], json!({"site": {"plant": 7, "line": "A"}}));
    assert_eq!(r.body["properties"]["desired"]["setpoint"], 21.5);
    assert_eq!(r.body["properties"]["desired"]["$version"], 2);
    assert_ne!(r.body["etag"], before["etag"]);
    assert!(r.body["properties"]["desired"]["$metadata"]["setpoint"]["$lastUpdated"].is_string());

    // null deletes; objects merge.
    let r = s
        .send(
            "PATCH",
            "/twins/d1",
            &json!({"tags": {"site": {"line": null}}, "properties": {"desired": {"mode": null}}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["tags"], json!({"site": {"plant": 7}}));
    assert_eq!(r.body["properties"]["desired"]["setpoint"], 21.5);
    assert!(r.body["properties"]["desired"].get("mode").is_none());
    assert_eq!(r.body["properties"]["desired"]["$version"], 3);
    assert_eq!(s.get("/twins/d1").await.body, r.body);
}

#[tokio::test]
async fn if_match_etag_precondition() {
    let s = server().await;
    let etag = s.get("/twins/d1").await.body["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let patch = json!({"properties": {"desired": {"x": 1}}});

    let r = s
        .send(
            "PATCH",
            "/twins/d1",
            &patch,
            &[("If-Match", "\"AAAAAAAAAAA=\"")],
        )
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.body["errorCode"], "PreconditionFailed");
    assert_eq!(
        s.get("/twins/d1").await.body["etag"],
        etag.as_str(),
        "twin unchanged"
    );

    let quoted = format!("\"{etag}\"");
    let r = s
        .send("PATCH", "/twins/d1", &patch, &[("If-Match", &quoted)])
        .await;
    assert_eq!(r.status, 200);
    // The old etag is stale now.
    let r2 = s
        .send("PATCH", "/twins/d1", &patch, &[("If-Match", &quoted)])
        .await;
    assert_eq!(r2.status, 412);
    let r3 = s
        .send("PUT", "/twins/d1", &json!({}), &[("If-Match", &quoted)])
        .await;
    assert_eq!(r3.status, 412);
    // `*` matches any etag; so does an unquoted current etag.
    let r = s
        .send("PATCH", "/twins/d1", &patch, &[("If-Match", "*")])
        .await;
    assert_eq!(r.status, 200);
    let current = r.body["etag"].as_str().unwrap().to_owned();
    let r = s
        .send("PATCH", "/twins/d1", &patch, &[("If-Match", &current)])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn put_replaces_tags_and_desired() {
    let s = server().await;
    s.send(
        "PATCH",
        "/twins/d1",
        &json!({"tags": {"a": 1, "b": 2}, "properties": {"desired": {"x": 1, "y": 2}}}),
        &[],
    )
    .await;
    let r = s
        .send(
            "PUT",
            "/twins/d1",
            &json!({"deviceId": "d1", "tags": {"c": 3}, "properties": {"desired": {"z": {"n": 1}}, "reported": {"ignored": true}}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["tags"], json!({"c": 3}));
    let desired = &r.body["properties"]["desired"];
    assert_eq!(desired["z"], json!({"n": 1}));
    assert!(desired.get("x").is_none() && desired.get("y").is_none());
    assert_eq!(desired["$version"], 3);
    assert!(r.body["properties"]["reported"].get("ignored").is_none());

    let r = s
        .send("PUT", "/twins/d1", &json!({"deviceId": "d2"}), &[])
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn rule_violations_leave_the_twin_unchanged() {
    let s = server().await;
    s.send(
        "PATCH",
        "/twins/d1",
        &json!({"properties": {"desired": {"keep": 1}}}),
        &[],
    )
    .await;
    let before = s.get("/twins/d1").await.body;
    let big = "x".repeat(4000);
    let too_big: serde_json::Map<String, Value> = (0..9)
        .map(|i| (format!("k{i}"), Value::String(big.clone())))
        .collect();
    let cases = [
        (json!({"properties": {"desired": {"a.b": 1}}}), 400),
        (
            json!({"properties": {"desired": {"n": 4_503_599_627_370_496_i64}}}),
            400,
        ),
        (json!({"properties": {"desired": {"arr": [1, null]}}}), 400),
        (
            json!({"properties": {"desired": {"s": "y".repeat(4097)}}}),
            400,
        ),
        (
            json!({"properties": {"desired": Value::Object(too_big.clone())}}),
            413,
        ),
        (
            json!({"tags": {"t": big.clone(), "u": big.clone(), "v": big}}),
            413,
        ),
        (json!({"tags": {"$bad": 1}}), 400),
        (json!({"properties": {"reported": {"r": 1}}}), 400),
        (json!({"tags": "not an object"}), 400),
        (json!([1, 2]), 400),
    ];
    for (patch, status) in cases {
        let r = s.send("PATCH", "/twins/d1", &patch, &[]).await;
        assert_eq!(r.status, status, "{patch}: {:?}", r.body);
        assert_eq!(s.get("/twins/d1").await.body, before, "after {patch}");
    }
    let r = s
        .send(
            "PUT",
            "/twins/d1",
            &json!({"properties": {"desired": Value::Object(too_big)}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["errorCode"], "RequestEntityTooLarge");
    assert_eq!(s.get("/twins/d1").await.body, before);
}

// ----- query ------------------------------------------------------------------------------------

#[tokio::test]
async fn query_end_to_end() {
    let s = server().await;
    for (id, region, temp) in [("m1", "US", 20), ("m2", "US", 30), ("m3", "EU", 40)] {
        s.send("PUT", &format!("/devices/{id}"), &json!({}), &[])
            .await;
        let r = s
            .send(
                "PATCH",
                &format!("/twins/{id}"),
                &json!({"tags": {"location": {"region": region}}}),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        // Reported values arrive through the device path of the hub.
        s.hub
            .device_patch_reported(id, &json!({"temperature": temp}))
            .expect("reported patch");
    }
    let r = s
        .query("SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.temperature > 25")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-ms-item-type"), Some("twin"));
    let rows = r.body.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["deviceId"], "m2");
    assert_eq!(rows[0]["properties"]["reported"]["temperature"], 30);

    let r = s
        .query("SELECT COUNT() AS n FROM devices GROUP BY tags.location.region")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ms-item-type"), Some("raw"));
    let mut rows: Vec<String> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            json!({"n": 1, "region": "EU"}).to_string(),
            json!({"n": 2, "region": "US"}).to_string(),
            json!({"n": 2}).to_string(), // d1 and d2 have no region
        ]
    );

    let r = s
        .query("SELECT * FROM devices WHERE connectionState = 'Connected'")
        .await;
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn query_parse_error_is_400_with_position() {
    let s = server().await;
    let r = s.query("SELECT * FROM devices WHERE tags.x === 1").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["position"], 36);
    assert!(
        r.body["message"].as_str().unwrap().contains("position 36"),
        "{:?}",
        r.body
    );
    for body in [
        json!({}),
        json!({"query": 5}),
        json!({"sql": "SELECT * FROM devices"}),
    ] {
        let r = s.send("POST", "/devices/query", &body, &[]).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.body.get("position").is_none());
    }
}

#[tokio::test]
async fn query_pages_with_continuation() {
    let s = server().await;
    for i in 0..5 {
        s.send("PUT", &format!("/devices/p{i}"), &json!({}), &[])
            .await;
    }
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut headers = vec![("x-ms-max-item-count", "3")];
        if let Some(c) = &continuation {
            headers.push(("x-ms-continuation", c));
        }
        let r = s
            .send(
                "POST",
                "/devices/query",
                &json!({"query": "SELECT * FROM devices"}),
                &headers,
            )
            .await;
        assert_eq!(r.status, 200);
        pages += 1;
        let rows = r.body.as_array().unwrap();
        assert!(rows.len() <= 3);
        seen.extend(
            rows.iter()
                .map(|t| t["deviceId"].as_str().unwrap().to_owned()),
        );
        match r.header("x-ms-continuation") {
            Some(c) => continuation = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["d1", "d2", "p0", "p1", "p2", "p3", "p4"]);
    let r = s
        .send(
            "POST",
            "/devices/query",
            &json!({"query": "SELECT * FROM devices"}),
            &[("x-ms-continuation", "garbage")],
        )
        .await;
    assert_eq!(r.status, 400);
}

// ----- authorization ----------------------------------------------------------------------------

#[tokio::test]
async fn service_key_requires_a_valid_token() {
    let hub = Hub::new(settings(Some(SERVICE_KEY))).expect("hub");
    hub.register_device(DeviceIdentity::new("d1", KEY_A, KEY_B), None)
        .unwrap();
    let s = serve(hub).await;
    let now = now_epoch_secs();
    let valid = sas::generate_for_resource(HOST, SERVICE_KEY, Some("iothubowner"), now + 600);
    let upper_host = sas::generate_for_resource(&HOST.to_uppercase(), SERVICE_KEY, None, now + 600);
    let wrong_key = sas::generate_for_resource(HOST, KEY_A, Some("iothubowner"), now + 600);
    let expired = sas::generate_for_resource(HOST, SERVICE_KEY, None, now - 1);
    let device_scoped = sas::generate(HOST, "d1", SERVICE_KEY, now + 600);

    let r = s.get("/twins/d1").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["errorCode"], "IotHubUnauthorizedAccess");
    for bad in [
        wrong_key.as_str(),
        expired.as_str(),
        device_scoped.as_str(),
        "Bearer abc",
    ] {
        let r = http(s.addr, "GET", "/twins/d1", &[("Authorization", bad)], None).await;
        assert_eq!(r.status, 401, "{bad}");
    }
    for good in [&valid, &upper_host] {
        let r = http(s.addr, "GET", "/twins/d1", &[("Authorization", good)], None).await;
        assert_eq!(r.status, 200, "{good}");
        let r = http(
            s.addr,
            "POST",
            "/devices/query",
            &[("Authorization", good)],
            Some(r#"{"query": "SELECT COUNT() AS n FROM devices"}"#),
        )
        .await;
        assert_eq!(r.body, json!([{"n": 1}]));
    }
    // Unknown routes are still unauthorized first.
    assert_eq!(s.get("/nothing").await.status, 401);
}

// ----- desired notifications reach the device ---------------------------------------------------

async fn next(conn: &mut hub_emulator::state::Connection) -> Option<ConnEvent> {
    tokio::time::timeout(DEADLINE, conn.events.recv())
        .await
        .expect("event before the deadline")
}

#[tokio::test]
async fn desired_patch_notifies_the_connection_registered_in_the_hub() {
    let s = server().await;
    let mut conn = s.hub.connect("d1").expect("connect d1");
    // A tags-only patch produces no notification: the next event is the desired one.
    s.send("PATCH", "/twins/d1", &json!({"tags": {"t": 1}}), &[])
        .await;
    s.send(
        "PATCH",
        "/twins/d1",
        &json!({"properties": {"desired": {"sp": 20}}}),
        &[],
    )
    .await;
    assert_eq!(
        next(&mut conn).await,
        Some(ConnEvent::Desired {
            version: 2,
            payload: json!({"sp": 20, "$version": 2})
        })
    );
    // PUT sends the whole new desired document.
    s.send(
        "PUT",
        "/twins/d1",
        &json!({"properties": {"desired": {"mode": "eco"}}}),
        &[],
    )
    .await;
    assert_eq!(
        next(&mut conn).await,
        Some(ConnEvent::Desired {
            version: 3,
            payload: json!({"mode": "eco", "$version": 3})
        })
    );
    // A refused patch sends nothing: the next event is for version 4.
    let r = s
        .send(
            "PATCH",
            "/twins/d1",
            &json!({"properties": {"desired": {"a b": 1}}}),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    s.send(
        "PATCH",
        "/twins/d1",
        &json!({"properties": {"desired": {"mode": null}}}),
        &[],
    )
    .await;
    assert_eq!(
        next(&mut conn).await,
        Some(ConnEvent::Desired {
            version: 4,
            payload: json!({"mode": null, "$version": 4})
        })
    );
}

/// The full path: a back end patches desired over HTTP, a real MQTT device (rumqttc) subscribed
/// to desired notifications receives it with the new `$version`.
#[tokio::test]
async fn desired_patch_reaches_an_mqtt_device() {
    let mut config = Config::ephemeral();
    config.hostname = HOST.into();
    config.devices.push(DeviceIdentity::new("d1", KEY_A, KEY_B));
    let emu = Emulator::start(config).await.expect("emulator starts");
    // The emulator's own service listener (as the binary serves it).
    let service = emu.service_addr().expect("service API started");

    let mut options = MqttOptions::new(
        "d1",
        emu.mqtt_addr().ip().to_string(),
        emu.mqtt_addr().port(),
    );
    options.set_credentials(
        emu.username("d1"),
        emu.device_token("d1", 3600).expect("registered"),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut patched = false;
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("notification before the deadline")
            .expect("MQTT connection stays up");
        match event {
            Event::Incoming(Packet::SubAck(_)) if !patched => {
                patched = true;
                let body = json!({"properties": {"desired": {"setpoint": 42}}}).to_string();
                let r = http(service, "PATCH", "/twins/d1", &[], Some(&body)).await;
                assert_eq!(r.status, 200);
                assert_eq!(r.body["connectionState"], "Connected");
                let q = r#"{"query": "SELECT deviceId FROM devices WHERE connectionState = 'Connected'"}"#;
                let r = http(service, "POST", "/devices/query", &[], Some(q)).await;
                assert_eq!(r.body, json!([{"deviceId": "d1"}]));
            }
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
                let body: Value = serde_json::from_slice(&p.payload).expect("JSON payload");
                assert_eq!(body, json!({"setpoint": 42, "$version": 2}));
                break;
            }
            _ => {}
        }
    }
    emu.shutdown().await;
}
