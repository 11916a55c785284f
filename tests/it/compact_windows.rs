//! Compact look-ahead windows (`enc=qdelta1`) against the real hub: negotiated on connect,
//! carrying the push-mode frames within the documented quantisation, on the same schedule as
//! msgpack windows (seek included), and far smaller; for a generated race and for a race
//! imported from an OpenF1 fixture server with real data's gaps and oddities.

use crate::common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{Received, TestHub, Viewer};
use openf1_fixture::{Fixture, FixtureServer, FixtureSpec, GAP_CAR, LIGHTS_OUT, PITTING_CAR};
use replay_hub::encode::{DecodedFrame, DecodedWindow};
use replay_hub::import::openf1::import;
use replay_hub::import::openf1::schema::parse_date;
use replay_hub::race::{DriverFrame, DriverStatus};
use replay_hub::window_codec::{first_mismatch, MARKER};
use serde_json::{json, Value};

const WINDOW_MS: u64 = 400;

/// How long a walk over the race's windows waits for the window of a seek.
const WAIT_FOR_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

fn url(hub: &TestHub, session: &str, token: Option<&str>, enc: &str) -> String {
    let url = hub.ws_url(session, token);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=lookahead&enc={enc}")
}

/// The push-mode frames `from..=to`, from the frames endpoint.
async fn push_frames(hub: &TestHub, from: u32, to: u32) -> Vec<DecodedFrame> {
    let body = hub
        .get(&format!(
            "/api/races/test-race/frames?from={from}&to={}",
            to + 1
        ))
        .await
        .bytes()
        .await
        .unwrap();
    rmp_serde::from_slice(&body).expect("a msgpack array of wire frames")
}

/// The next window of `epoch`, skipping everything else.
async fn window_of_epoch(viewer: &mut Viewer, epoch: u64) -> DecodedWindow {
    loop {
        match viewer.next().await {
            Received::Window(w) if w.epoch == epoch => return w,
            Received::Closed(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

async fn assert_carries_push_frames(hub: &TestHub, window: &DecodedWindow) {
    let (first, last) = (window.indices[0], *window.indices.last().unwrap());
    let push = push_frames(hub, first, last).await;
    for frame in &window.frames {
        let want = &push[(frame.i - first) as usize];
        if let Some(mismatch) = first_mismatch(frame, want) {
            panic!("{mismatch}");
        }
    }
}

/// The next binary message's raw bytes.
async fn next_binary(viewer: &mut Viewer) -> Vec<u8> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(common::PATIENCE, viewer.ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Message::Binary(bytes) = message {
            return bytes.to_vec();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_windows_carry_the_push_frames_within_their_quanta() {
    let hub = TestHub::start_with(|c| c.lookahead_window_ms = WINDOW_MS);
    hub.create_session("compact", true).await;
    let mut viewer = Viewer::connect(&url(&hub, "compact", None, "qdelta1,msgpack")).await;
    assert_eq!(viewer.hello["mode"], "lookahead");
    assert_eq!(viewer.hello["encoding"], "qdelta1");
    let mut previous: Option<DecodedWindow> = None;
    for _ in 0..4 {
        let window = viewer.next_window().await;
        assert_eq!(
            window.epoch,
            viewer.hello["state"]["epoch"].as_u64().unwrap()
        );
        let carried: Vec<u32> = window.frames.iter().map(|f| f.i).collect();
        assert_eq!(carried, window.indices);
        assert!(window.indices.windows(2).all(|p| p[1] == p[0] + 1), "1×");
        if let Some(p) = &previous {
            assert_eq!(
                window.indices[0],
                p.indices.last().unwrap() + 1,
                "windows follow each other"
            );
        }
        assert_carries_push_frames(&hub, &window).await;
        previous = Some(window);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_encodings_follow_one_schedule_through_a_seek_and_a_speed_change() {
    let hub = TestHub::start_with(|c| c.lookahead_window_ms = WINDOW_MS);
    let created = hub.create_session("both", true).await;
    let token = created["control_token"].as_str().unwrap().to_owned();
    let mut compact = Viewer::connect(&url(&hub, "both", Some(&token), "qdelta1")).await;
    let mut msgpack = Viewer::connect(&url(&hub, "both", None, "msgpack")).await;
    assert_eq!(msgpack.hello["encoding"], "msgpack");

    compact
        .send_json(json!({"cmd": "seek", "frame": 2000}))
        .await;
    compact.send_json(json!({"cmd": "speed", "value": 4})).await;
    // Both get the speed change's state, then a fresh window of its epoch from the same slots.
    let mut epoch = 0;
    for viewer in [&mut compact, &mut msgpack] {
        let state: Value = loop {
            let s = viewer.next_of_type("state").await;
            if s["speed"] == 4.0 {
                break s;
            }
        };
        epoch = state["epoch"].as_u64().unwrap();
    }
    let a = window_of_epoch(&mut compact, epoch).await;
    let b = window_of_epoch(&mut msgpack, epoch).await;
    assert!(
        a.indices[0] >= 2000 && b.indices[0] >= 2000,
        "{:?} {:?}",
        a.indices,
        b.indices
    );
    assert!(
        a.indices.windows(2).all(|p| p[1] == p[0] + 4),
        "4×: {:?}",
        a.indices
    );
    // Independent schedules on one grid: the windows cover the same slots' frames.
    let common_frames: Vec<&u32> = a.indices.iter().filter(|i| b.indices.contains(i)).collect();
    assert!(
        !common_frames.is_empty(),
        "{:?} vs {:?}",
        a.indices,
        b.indices
    );
    for frame in &a.frames {
        if let Some(same) = b.frames.iter().find(|f| f.i == frame.i) {
            if let Some(mismatch) = first_mismatch(frame, same) {
                panic!("{mismatch}");
            }
        }
    }
    assert_carries_push_frames(&hub, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_windows_are_a_small_fraction_of_msgpack_windows() {
    let hub = TestHub::start_with(|c| c.lookahead_window_ms = 1000);
    hub.create_session("size", true).await;
    let mut compact = Viewer::connect(&url(&hub, "size", None, "qdelta1")).await;
    let mut msgpack = Viewer::connect(&url(&hub, "size", None, "msgpack")).await;
    let (mut small, mut large) = (0usize, 0usize);
    for _ in 0..3 {
        let bytes = next_binary(&mut compact).await;
        assert_eq!(bytes[0], MARKER);
        small += bytes.len() / replay_hub::window_codec::peek(&bytes).unwrap().1.len();
        let bytes = next_binary(&mut msgpack).await;
        let (_, indices) = replay_hub::encode::window_indices(&bytes).unwrap();
        large += bytes.len() / indices.len();
    }
    assert!(
        small * 5 < large,
        "compact {small} vs msgpack {large} bytes per frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_the_hub_does_not_speak_is_refused_with_a_json_400() {
    let hub = TestHub::start();
    let http = hub.url("/ws/sessions/demo?mode=lookahead&enc=zstd-frames");
    let response = hub
        .http()
        .get(&http)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("qdelta1") && message.contains("msgpack"),
        "{message}"
    );
    // Old clients that name no encoding keep msgpack windows.
    let viewer = Viewer::connect(&format!("{}?mode=lookahead", hub.ws_url("demo", None))).await;
    assert_eq!(viewer.hello["encoding"], "msgpack");
}

/// An OpenF1 session with the mess real ones have, beyond what the generator puts in (a
/// retirement, a lapped car's `+1 LAP`, the leader's null gaps): null gaps during the first
/// minutes and scattered through the race, a car with no classification after the start and one
/// with none at all, and a car without stints (its tyre unknown, -1).
fn messy_openf1_session() -> Fixture {
    let mut fixture = Fixture::generate(&FixtureSpec::small());
    let mut k = 0u32;
    fixture.retain_mut("intervals", |r| {
        k += 1;
        // Like the live timing, no gaps at all during the first minute of racing.
        let early = r["date"]
            .as_str()
            .and_then(parse_date)
            .is_some_and(|t| t < LIGHTS_OUT + 60.0);
        if early || k.is_multiple_of(5) {
            r["gap_to_leader"] = Value::Null;
        }
        if early || k.is_multiple_of(3) {
            r["interval"] = Value::Null;
        }
        true
    });
    let mut seen_pitting_car = false;
    let pitting = NUMBERS[PITTING_CAR];
    fixture.retain_mut("position", |r| match r["driver_number"].as_u64() {
        Some(n) if n == u64::from(pitting) => !std::mem::replace(&mut seen_pitting_car, true),
        Some(n) => n != u64::from(NUMBERS[LAPPED_CAR]),
        None => true,
    });
    fixture.retain_mut("stints", |r| {
        r["driver_number"].as_u64() != Some(u64::from(NUMBERS[GAP_CAR]))
    });
    fixture
}

/// The car the small fixture's leader laps, by index in the grid.
const LAPPED_CAR: usize = 3;
/// Driver numbers in grid order, as the fixture lists them.
const NUMBERS: [u32; 4] = [1, 11, 44, 63];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_openf1_race_decodes_from_compact_windows_to_its_push_frames_throughout() {
    let fixture = messy_openf1_session();
    let intervals = fixture.records("intervals");
    assert!(intervals.iter().any(|r| r["gap_to_leader"]
        .as_str()
        .is_some_and(|g| g.contains("LAP"))));
    assert!(intervals.iter().any(|r| r["gap_to_leader"].is_null()));
    let server = FixtureServer::start(fixture, Vec::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let summary = import(
        &crate::import_openf1::args(&server.url, dir.path(), &[]),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .expect("import succeeds");
    server.stop();
    let (meta, race) = crate::import_openf1::read_race(&summary.out);
    let codes: Vec<&str> = meta.drivers.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["VER", "PER", "HAM", "RUS"], "in NUMBERS order");
    // What the race holds that a generated race does not.
    let cars = |pick: fn(&DriverFrame) -> bool| race.iter().flat_map(|f| &f.drivers).any(pick);
    assert!(cars(|d| d.status == DriverStatus::Retired));
    assert!(cars(
        |d| d.status == DriverStatus::Running && d.gap_to_leader > 30.0
    ));
    assert!(cars(|d| d.tyre == -1));
    assert!(cars(|d| d.dist < 0.0));
    assert!(race.iter().all(|f| f.drivers[GAP_CAR].tyre == -1));

    let hub = TestHub::start_with(|c| {
        c.demo_session = String::new();
        c.lookahead_window_ms = 5000;
        // The walk below seeks as fast as windows arrive: no command rate may refuse it.
        c.commands_per_second = 10_000;
        c.session_commands_per_second = 10_000;
    });
    let put = hub
        .http()
        .put(hub.url(&format!("/api/races/{}", meta.id)))
        .bearer_auth(&hub.admin_token)
        .body(std::fs::read(&summary.out).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let created: Value = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"race": meta.id, "id": "real", "autoplay": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["control_token"].as_str().unwrap().to_owned();

    // The push-mode frames, which are the race's own.
    let total = meta.total_frames;
    let mut push: Vec<DecodedFrame> = Vec::with_capacity(total as usize);
    while (push.len() as u32) < total {
        let from = push.len() as u32;
        let to = (from + 500).min(total);
        let body = hub
            .get(&format!(
                "/api/races/{}/frames?from={from}&to={to}",
                meta.id
            ))
            .await
            .bytes()
            .await
            .unwrap();
        let chunk: Vec<DecodedFrame> = rmp_serde::from_slice(&body).expect("wire frames");
        assert_eq!(chunk.len() as u32, to - from);
        push.extend(chunk);
    }
    for (k, (p, f)) in push.iter().zip(&race).enumerate() {
        assert_eq!((p.i, p.t, p.lap), (k as u32, f.t, f.lap));
        assert_eq!(p.drivers, f.drivers, "frame {k}");
    }

    // Every frame of the race from compact windows: play, and seek to the first frame no
    // window has carried yet until none is left.
    let mut viewer = Viewer::connect(&url(&hub, "real", Some(&token), "qdelta1")).await;
    assert_eq!(viewer.hello["encoding"], "qdelta1");
    let mut epoch = viewer.hello["state"]["epoch"].as_u64().unwrap();
    let mut carried = vec![false; total as usize];
    let mut seeks = 0;
    let mut sought = None;
    loop {
        let mut resent = 0;
        let window = loop {
            // A window can be superseded before this viewer's writer takes it (latest wins):
            // a seek whose window does not come is sent again, a few times at most.
            let Ok(received) = tokio::time::timeout(WAIT_FOR_WINDOW, viewer.next()).await else {
                let frame = sought.expect("the first window came in time");
                resent += 1;
                assert!(
                    resent <= 3,
                    "no window of epoch {epoch} after seeking to {frame}"
                );
                epoch += play_from(&mut viewer, frame).await;
                continue;
            };
            match received {
                Received::Window(w) if w.epoch >= epoch => break w,
                // A refused seek would otherwise be waited for until the timeout.
                Received::Json(reply) if reply["type"] == "error" => {
                    panic!("seek to {sought:?} refused: {reply}")
                }
                Received::Closed(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        };
        epoch = window.epoch;
        assert!(window.indices.windows(2).all(|p| p[1] == p[0] + 1), "1×");
        for frame in &window.frames {
            let want = &push[frame.i as usize];
            if let Some(mismatch) = first_mismatch(frame, want) {
                panic!("{mismatch}");
            }
            carried[frame.i as usize] = true;
        }
        let Some(next) = carried.iter().position(|c| !c) else {
            break;
        };
        let next = next as u32;
        seeks += 1;
        assert!(
            seeks <= 2 * total / 250 + 4,
            "{seeks} seeks for {total} frames"
        );
        epoch += play_from(&mut viewer, next).await;
        sought = Some(next);
    }
}

/// Plays from `frame`: `play` first (a session that reached the finish has paused itself, and
/// paused it would send one frame per seek), then the seek, which keeps it playing. Returns the
/// epochs the two commands start.
async fn play_from(viewer: &mut Viewer, frame: u32) -> u64 {
    viewer.send_json(json!({"cmd": "play"})).await;
    viewer
        .send_json(json!({"cmd": "seek", "frame": frame}))
        .await;
    2
}
