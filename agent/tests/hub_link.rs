//! The hub session against a real `hub-emulator` over real TLS sockets: connect, GET, PATCH,
//! desired notifications, backoff, token renewal, injected faults.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use device_protocols::backoff::BackoffConfig;
use serde_json::json;
use twinbridge::hub::{Credential, HubLink, RequestError, Secret, SessionEvent};

fn link(hub: &TestHub) -> HubLink {
    HubLink::new(hub.settings.clone(), unpaced()).expect("link builds")
}

#[tokio::test]
async fn get_and_patch_round_trip() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;

    let twin = s.handle.get_twin().await.expect("GET answered");
    assert_eq!(twin.desired, json!({}));
    assert_eq!(twin.reported, json!({}));

    let rid = s.handle.next_request_id();
    let patch = json!({"temperature": 21.5, "gateway": {"link": "up"}});
    let v = s
        .handle
        .patch_reported(&rid, &patch)
        .await
        .expect("PATCH answered");
    assert!(
        v > twin.reported_version,
        "{v} after {}",
        twin.reported_version
    );

    // The hub holds the patch, as the service side sees it and as a new GET returns it.
    let service = service_twin(&hub.emu, "d1").await;
    assert_eq!(
        service["properties"]["reported"]["temperature"],
        json!(21.5)
    );
    assert_eq!(service["properties"]["reported"]["$version"], json!(v));
    let again = s.handle.get_twin().await.expect("second GET");
    assert_eq!(again.reported, patch);
    assert_eq!(again.reported_version, v);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn desired_from_the_service_arrives_in_order() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;

    let t1 = set_desired(&hub.emu, "d1", &json!({"setpoint": 20})).await;
    let t2 = set_desired(&hub.emu, "d1", &json!({"mode": "eco", "setpoint": null})).await;
    let v1 = t1["properties"]["desired"]["$version"]
        .as_i64()
        .expect("version");
    let v2 = t2["properties"]["desired"]["$version"]
        .as_i64()
        .expect("version");
    assert_eq!(
        next_event(&mut s.events).await,
        SessionEvent::Desired {
            patch: json!({"setpoint": 20}),
            version: v1
        }
    );
    assert_eq!(
        next_event(&mut s.events).await,
        SessionEvent::Desired {
            patch: json!({"mode": "eco", "setpoint": null}),
            version: v2
        }
    );
    let twin = s.handle.get_twin().await.expect("GET");
    assert_eq!(twin.desired, json!({"mode": "eco"}));
    assert_eq!(twin.desired_version, v2);
}

#[tokio::test]
async fn wrong_key_never_connects_and_backs_off() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.backoff.initial = Duration::from_millis(100);
    hub.settings.backoff.max = Duration::from_secs(2);
    let mut s = link(&hub).spawn("d1", Credential::SymmetricKey(Secret::new(KEY_WRONG)));
    eventually("a second refused connect", || async {
        counter(&hub.emu, "connects_refused").await >= 2
    })
    .await;
    // Over the next 1.5 s the backoff (≥ 80 % of 200, 400, 800, 1600 ms) allows at most four
    // more attempts; a retry loop without backoff makes hundreds. Waiting for ten attempts
    // must therefore run into its deadline.
    let storm = tokio::time::timeout(Duration::from_millis(1500), async {
        while counter(&hub.emu, "connects_refused").await < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        storm.is_err(),
        "ten connect attempts within 1.5 s: no backoff"
    );
    let refused = counter(&hub.emu, "connects_refused").await;
    assert!((2..=6).contains(&refused), "{refused} attempts");
    assert_eq!(counter(&hub.emu, "connects").await, 0);
    assert!(s.events.try_recv().is_err(), "no event for failed connects");
    assert_eq!(s.handle.get_twin().await, Err(RequestError::NotConnected));
}

#[tokio::test]
async fn token_renewal_keeps_the_session_usable() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.token_lifetime = Duration::from_secs(6);
    hub.settings.request_timeout = Duration::from_secs(2);
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(14);
    let mut ok = 0;
    while tokio::time::Instant::now() < end {
        match s.handle.get_twin().await {
            Ok(_) => ok += 1,
            // Only in the short window of a renewal.
            Err(RequestError::NotConnected) => {}
            Err(e) => panic!("request failed across a renewal: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok >= 5, "only {ok} GETs answered");
    // Renewed at ~4 s, ~8 s and ~12 s, and never kicked for an expired token.
    assert!(counter(&hub.emu, "connects").await >= 3);
    assert_eq!(counter(&hub.emu, "disconnects_by_hub").await, 0);
    let mut renewals = 0;
    while let Ok(ev) = s.events.try_recv() {
        match ev {
            SessionEvent::Disconnected { reason } => {
                assert_eq!(reason, "renewing SAS token");
                renewals += 1;
            }
            SessionEvent::Connected => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(renewals >= 2, "{renewals} renewals");
    let h = s.handle.clone();
    eventually("a GET answered after the renewals", || {
        let h = h.clone();
        async move { h.get_twin().await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn dropped_connection_reconnects() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    control(&hub.emu, "/drop/d1").await;
    let (ev, _) = wait_event(&mut s.events, "Disconnected", |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
    let SessionEvent::Disconnected { reason } = ev else {
        unreachable!()
    };
    assert!(!reason.contains("SharedAccessSignature"), "{reason}");
    assert_eq!(next_event(&mut s.events).await, SessionEvent::Connected);
    assert!(s.handle.get_twin().await.is_ok());
    assert_eq!(counter(&hub.emu, "connects").await, 2);
}

#[tokio::test]
async fn refused_connects_then_recovery() {
    let hub = start_hub(&["d1"]).await;
    control(&hub.emu, "/refuse?for=1h").await;
    let mut s = link(&hub).spawn("d1", key_a());
    eventually("two refused connects", || async {
        counter(&hub.emu, "connects_refused").await >= 2
    })
    .await;
    // Not connected: requests fail at once, unsent.
    assert_eq!(s.handle.get_twin().await, Err(RequestError::NotConnected));
    assert_eq!(counter(&hub.emu, "twin_gets").await, 0);
    control(&hub.emu, "/refuse?for=0s").await;
    connected(&mut s.events).await;
    assert!(s.handle.get_twin().await.is_ok());
    assert_eq!(counter(&hub.emu, "connects").await, 1);
}

#[tokio::test]
async fn a_session_back_after_failures_wakes_the_others_from_their_backoff() {
    let mut hub = start_hub(&["d1", "d2", "d3"]).await;
    // The first retry comes after 2 s, every later one after an hour: a session refused twice
    // is back within the test's deadline only if something wakes it.
    hub.settings.backoff = BackoffConfig {
        initial: Duration::from_secs(2),
        max: Duration::from_hours(1),
        multiplier: 1800.0,
        jitter: 0.0,
    };
    control(&hub.emu, "/refuse?for=1h").await;
    let link = link(&hub);
    let mut d1 = link.spawn("d1", key_a());
    let mut d2 = link.spawn("d2", key_a());
    // Two attempts each, then both sleep for an hour.
    eventually("d1 and d2 refused twice each", || async {
        counter(&hub.emu, "connects_refused").await >= 4
    })
    .await;
    let mut d3 = link.spawn("d3", key_a());
    eventually("d3 refused once", || async {
        counter(&hub.emu, "connects_refused").await >= 5
    })
    .await;
    // The hub is back while d3 waits for its 2 s retry; d1 and d2 still have an hour to go.
    control(&hub.emu, "/refuse?for=0s").await;
    connected(&mut d3.events).await;
    connected(&mut d1.events).await;
    connected(&mut d2.events).await;
    assert_eq!(counter(&hub.emu, "connects").await, 3);
    assert_eq!(counter(&hub.emu, "connects_refused").await, 5);
    assert!(d1.handle.get_twin().await.is_ok());
}

/// A backoff no session sleeps out within a test: a retry before the deadline was woken.
fn an_hour_after_each_failure() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_hours(1),
        max: Duration::from_hours(1),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

#[tokio::test]
async fn while_no_session_is_connected_one_probes_the_hub_whatever_its_backoff() {
    let mut hub = start_hub(&["d1", "d2"]).await;
    // After their first refusal both sessions would sleep for an hour.
    hub.settings.backoff = an_hour_after_each_failure();
    control(&hub.emu, "/refuse?for=1h").await;
    let link = link(&hub);
    let mut d1 = link.spawn("d1", key_a());
    let mut d2 = link.spawn("d2", key_a());
    eventually("d1 and d2 refused once each", || async {
        counter(&hub.emu, "connects_refused").await >= 2
    })
    .await;
    control(&hub.emu, "/refuse?for=0s").await;
    // One of them probes (OUTAGE_PROBE after the gateway's last attempt), gets in and wakes
    // the other.
    connected(&mut d1.events).await;
    connected(&mut d2.events).await;
    assert_eq!(counter(&hub.emu, "connects").await, 2);
    assert_eq!(counter(&hub.emu, "connects_refused").await, 2);
}

/// The outage probe is for an uplink that is down, not for credentials the hub refused: a
/// gateway whose only identity has a wrong key keeps to that session's backoff.
#[tokio::test]
async fn a_session_refused_for_its_key_does_not_take_the_outage_probe() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.backoff = an_hour_after_each_failure();
    let _s = link(&hub).spawn("d1", Credential::SymmetricKey(Secret::new(KEY_WRONG)));
    eventually("d1 refused once", || async {
        counter(&hub.emu, "connects_refused").await >= 1
    })
    .await;
    // A probe would come OUTAGE_PROBE after that attempt; a network failure gets one (the
    // test above). Wait past it, with a margin for a loaded machine.
    let probe = twinbridge::hub::session::OUTAGE_PROBE;
    let storm = tokio::time::timeout(probe + Duration::from_secs(3), async {
        while counter(&hub.emu, "connects_refused").await < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(storm.is_err(), "a second attempt: the wrong key was probed");
    assert_eq!(counter(&hub.emu, "connects_refused").await, 1);
}

#[tokio::test]
async fn pending_request_when_the_link_drops_is_link_lost() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    control(&hub.emu, "/delay?twin_responses=4s").await;
    let handle = s.handle.clone();
    let get = tokio::spawn(async move { handle.get_twin().await });
    eventually("the GET reached the hub", || async {
        counter(&hub.emu, "twin_gets").await >= 1
    })
    .await;
    control(&hub.emu, "/drop/d1").await;
    let result = get.await.expect("GET task");
    assert_eq!(result, Err(RequestError::LinkLost));
    assert!(result.unwrap_err().outcome_unknown());
    wait_event(&mut s.events, "Disconnected", |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
}

#[tokio::test]
async fn late_answer_is_a_timeout() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.request_timeout = Duration::from_millis(500);
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    control(&hub.emu, "/delay?twin_responses=1500ms").await;
    let rid = s.handle.next_request_id();
    let r = s.handle.patch_reported(&rid, &json!({"a": 1})).await;
    assert_eq!(r, Err(RequestError::Timeout));
    control(&hub.emu, "/delay?twin_responses=0s").await;
    // The late answer (still arriving) confuses nothing: the next request gets its own.
    let twin = s.handle.get_twin().await.expect("GET after the delay");
    assert!(twin.reported == json!({}) || twin.reported == json!({"a": 1}));
    let rid = s.handle.next_request_id();
    assert!(
        s.handle
            .patch_reported(&rid, &json!({"b": 2}))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn throttled_is_status_429() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    // One token, refilling once in 1000 s: the second operation is throttled.
    control(&hub.emu, "/throttle?ops_per_sec=0.001").await;
    let first = s.handle.get_twin().await;
    let second = s.handle.get_twin().await;
    let throttled = [first, second]
        .into_iter()
        .find_map(Result::err)
        .expect("one GET throttled");
    assert!(
        matches!(&throttled, RequestError::Status { status: 429, message } if !message.is_empty() && !message.starts_with('{')),
        "the hub's message, not the raw body: {throttled:?}"
    );
    assert!(!throttled.outcome_unknown());
    // Still connected.
    control(&hub.emu, "/throttle?ops_per_sec=off").await;
    assert!(s.handle.get_twin().await.is_ok());
}

#[tokio::test]
async fn waits_for_a_plausible_clock() {
    let hub = start_hub(&["d1"]).await;
    let sane = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut settings = hub.settings.clone();
    let (s2, r2) = (sane.clone(), reads.clone());
    settings.wall_clock = Arc::new(move || {
        r2.fetch_add(1, Ordering::SeqCst);
        if s2.load(Ordering::SeqCst) {
            SystemTime::now()
        } else {
            SystemTime::UNIX_EPOCH + Duration::from_secs(42)
        }
    });
    let link = HubLink::new(settings, unpaced()).expect("link");
    let mut s = link.spawn("d1", key_a());
    assert_eq!(
        next_event(&mut s.events).await,
        SessionEvent::WaitingForClock
    );
    // Rechecked at least once more, and still no connect attempt.
    eventually("a recheck of the clock", || async {
        reads.load(Ordering::SeqCst) >= 2
    })
    .await;
    let c = counters(&hub.emu).await;
    assert_eq!(
        (c["connects"].as_u64(), c["connects_refused"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s.handle.get_twin().await, Err(RequestError::NotConnected));
    sane.store(true, Ordering::SeqCst);
    // Emitted once per wait, then connected.
    assert_eq!(next_event(&mut s.events).await, SessionEvent::Connected);
    assert!(s.handle.get_twin().await.is_ok());
}

#[tokio::test]
async fn shutdown_disconnects_cleanly() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    assert!(hub.emu.hub().is_connected("d1"));
    s.handle.shutdown().await;
    eventually("the hub saw the device go", || async {
        !hub.emu.hub().is_connected("d1")
    })
    .await;
    assert_eq!(counter(&hub.emu, "disconnects_by_hub").await, 0);
    assert_eq!(s.handle.get_twin().await, Err(RequestError::NotConnected));
    // A second shutdown returns at once; the event stream ends.
    s.handle.shutdown().await;
    assert!(
        tokio::time::timeout(DEADLINE, s.events.recv())
            .await
            .expect("stream ends")
            .is_none()
    );
}

#[tokio::test]
async fn dropping_handles_and_events_ends_the_session() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    let extra = s.handle.clone();
    drop(s);
    // A handle alone keeps it alive.
    assert!(extra.get_twin().await.is_ok());
    drop(extra);
    eventually("the connection closed", || async {
        !hub.emu.hub().is_connected("d1")
    })
    .await;
}

#[tokio::test]
async fn connects_are_paced() {
    let hub = start_hub(&["d1", "d2", "d3"]).await;
    let mut pacing = unpaced();
    // One connect now, then one per 400 ms.
    pacing.connects = twinbridge::hub::RateLimiter::new(2.5, 1);
    let link = HubLink::new(hub.settings.clone(), pacing).expect("link");
    let started = tokio::time::Instant::now();
    let mut sessions: Vec<_> = ["d1", "d2", "d3"]
        .into_iter()
        .map(|id| link.spawn(id, key_a()))
        .collect();
    for s in &mut sessions {
        connected(&mut s.events).await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(790), "{elapsed:?}");
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let h = s.handle.clone();
            tokio::spawn(async move {
                let rid = h.next_request_id();
                h.patch_reported(&rid, &json!({ format!("k{i}"): i })).await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.expect("task").expect("PATCH answered"));
    }
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 20, "every PATCH got its own version");
    let twin = s.handle.get_twin().await.expect("GET");
    assert_eq!(
        twin.reported.as_object().map(serde_json::Map::len),
        Some(20)
    );
    assert_eq!(
        twin.reported_version,
        *versions.last().expect("20 versions")
    );
}

#[tokio::test]
async fn unread_events_do_not_block_requests() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    // More notifications than the event channel holds, none read yet.
    let n = twinbridge::hub::session::EVENT_CHANNEL + 16;
    let mut last = 0;
    for i in 0..n {
        let t = set_desired(&hub.emu, "d1", &json!({ "sp": i })).await;
        last = t["properties"]["desired"]["$version"]
            .as_i64()
            .expect("version");
    }
    eventually("every notification sent", || async {
        counter(&hub.emu, "desired_notifications").await >= n as u64
    })
    .await;
    // The session still answers requests while its events wait.
    let twin = s
        .handle
        .get_twin()
        .await
        .expect("GET with a full event channel");
    assert_eq!(twin.desired_version, last);
    // And nothing was lost or reordered.
    let mut versions = Vec::new();
    for i in 0..n {
        match next_event(&mut s.events).await {
            SessionEvent::Desired { patch, version } => {
                assert_eq!(patch, json!({ "sp": i }));
                versions.push(version);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(versions.last(), Some(&last));
}

#[tokio::test]
async fn a_large_twin_fits_in_a_packet() {
    // rumqttc's default packet limit is 10 KiB; a full twin is far larger.
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    let big: serde_json::Map<String, serde_json::Value> = (0..7)
        .map(|i| (format!("k{i}"), json!("x".repeat(4000))))
        .collect();
    let big = serde_json::Value::Object(big);
    let rid = s.handle.next_request_id();
    s.handle
        .patch_reported(&rid, &big)
        .await
        .expect("28 KB PATCH");
    set_desired(&hub.emu, "d1", &big).await;
    let twin = s.handle.get_twin().await.expect("56 KB GET");
    assert_eq!(twin.reported, big);
    assert_eq!(twin.desired, big);
}

#[tokio::test]
async fn renewal_lets_pending_answers_arrive() {
    let mut hub = start_hub(&["d1"]).await;
    hub.settings.token_lifetime = Duration::from_secs(6);
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    // Every answer takes 300 ms, so a GET is almost always in flight when the renewal (at
    // ~4 s) starts: it must be answered, not cut off.
    control(&hub.emu, "/delay?twin_responses=300ms").await;
    let end = tokio::time::Instant::now() + Duration::from_millis(5500);
    let (mut ok, mut refused) = (0, 0);
    while tokio::time::Instant::now() < end {
        match s.handle.get_twin().await {
            Ok(_) => ok += 1,
            Err(RequestError::NotConnected) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("request cut off by the renewal: {e}"),
        }
    }
    let (ev, _) = wait_event(&mut s.events, "the renewal", |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ev,
        SessionEvent::Disconnected {
            reason: "renewing SAS token".into()
        }
    );
    assert!(ok >= 5, "{ok} answered, {refused} refused");
    assert_eq!(counter(&hub.emu, "disconnects_by_hub").await, 0);
}

#[tokio::test]
async fn unusable_desired_notifications_are_reported_not_fatal() {
    let hub = start_hub(&["d1"]).await;
    let mut s = link(&hub).spawn("d1", key_a());
    connected(&mut s.events).await;
    inject_desired(&hub.emu, "d1", 5, b"not json {").await;
    inject_desired(&hub.emu, "d1", 6, b"[1, 2]").await;
    inject_desired(&hub.emu, "d1", 7, br#"{"sp": 1, "$version": 7}"#).await;
    for _ in 0..2 {
        let ev = next_event(&mut s.events).await;
        assert!(matches!(ev, SessionEvent::BadDesired { .. }), "{ev:?}");
    }
    assert_eq!(
        next_event(&mut s.events).await,
        SessionEvent::Desired {
            patch: json!({"sp": 1}),
            version: 7
        }
    );
    // Same connection, still serving.
    assert!(s.handle.get_twin().await.is_ok());
    assert_eq!(counter(&hub.emu, "connects").await, 1);
    assert!(s.events.try_recv().is_err(), "no Disconnected");
}
