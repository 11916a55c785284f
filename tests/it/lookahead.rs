//! Look-ahead delivery against the real hub: windows of upcoming frames, seeks inside a window,
//! pause and speed changes, latest-wins for a slow viewer, and the time-sync exchange.

use crate::common;

use std::time::Duration;

use common::{connect_non_reader, eventually, Received, TestHub, Viewer};
use futures_util::StreamExt;
use replay_hub::encode::window_indices;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// 10 display slots of 40 ms per window.
const WINDOW_MS: u64 = 400;
const SLOTS: usize = (WINDOW_MS / 40) as usize;

fn hub_with_window(window_ms: u64) -> TestHub {
    TestHub::start_with(|c| c.lookahead_window_ms = window_ms)
}

fn lookahead_url(hub: &TestHub, session: &str, token: Option<&str>) -> String {
    let url = hub.ws_url(session, token);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=lookahead")
}

fn consecutive(indices: &[u32], step: u32) -> bool {
    indices.windows(2).all(|p| p[1] == p[0] + step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookahead_viewers_get_consecutive_windows_of_upcoming_frames() {
    let hub = hub_with_window(WINDOW_MS);
    hub.create_session("ahead", true).await;
    let mut first = Viewer::connect(&lookahead_url(&hub, "ahead", None)).await;
    assert_eq!(first.hello["mode"], "lookahead");
    assert_eq!(first.hello["window_ms"], WINDOW_MS);
    let state = first.hello["state"].clone();
    let epoch = state["epoch"].as_u64().unwrap();
    assert!(
        state["anchor_ms"].as_i64().unwrap() > 1_600_000_000_000,
        "the anchor is server wall-clock time in ms: {state}"
    );
    let present = state["frame"].as_u64().unwrap() as u32;

    let mut windows = Vec::new();
    for _ in 0..4 {
        windows.push(first.next_window().await);
    }
    for w in &windows {
        assert_eq!(w.kind, "window");
        assert_eq!(w.epoch, epoch);
        let carried: Vec<u32> = w.frames.iter().map(|f| f.i).collect();
        assert_eq!(carried, w.indices, "every frame carries its index");
        assert!(consecutive(&w.indices, 1), "1×: {:?}", w.indices);
    }
    // The first viewer starts the schedule: one window covering the present and the next window
    // length, then one window length per message, each following the last without a gap.
    assert_eq!(windows[0].indices[0], present, "starts at the present");
    assert_eq!(windows[0].indices.len(), 2 * SLOTS);
    for pair in windows.windows(2) {
        assert_eq!(pair[1].indices.len(), SLOTS);
        assert_eq!(
            pair[1].indices[0],
            pair[0].indices.last().unwrap() + 1,
            "windows follow each other"
        );
    }

    // A later viewer gets the window covering the present and the latest one, contiguous.
    let mut second = Viewer::connect(&lookahead_url(&hub, "ahead", None)).await;
    let present = second.hello["state"]["frame"].as_u64().unwrap() as u32;
    let (a, b) = (second.next_window().await, second.next_window().await);
    let covered: Vec<u32> = a.indices.iter().chain(&b.indices).copied().collect();
    assert!(consecutive(&covered, 1), "{covered:?}");
    assert!(
        covered.contains(&present),
        "present {present} in {covered:?}"
    );

    // Push stays the default on the same session.
    let mut pushed = Viewer::connect(&hub.ws_url("ahead", None)).await;
    assert_eq!(pushed.hello["mode"], "push");
    assert!(pushed.hello.get("window_ms").is_none());
    let frame = pushed.next_frame().await;
    assert!(frame.i >= present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_mode_is_refused_with_a_json_400() {
    let hub = hub_with_window(WINDOW_MS);
    let response = hub.get("/ws/sessions/demo?mode=pull").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().unwrap().contains("pull"), "{body}");
}

/// Reads messages in order until the state of epoch `epoch`, checking no window of a newer epoch
/// comes first; returns that state.
async fn state_of_epoch(viewer: &mut Viewer, epoch: u64) -> Value {
    loop {
        match viewer.next().await {
            Received::Json(v) if v["type"] == "state" && v["epoch"] == epoch => return v,
            Received::Json(v) if v["type"] == "state" => {
                assert!(v["epoch"].as_u64().unwrap() < epoch, "skipped ahead: {v}")
            }
            Received::Window(w) => assert!(w.epoch < epoch, "window before its state"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_pause_and_speed_take_effect_at_once_with_a_fresh_window() {
    let hub = hub_with_window(WINDOW_MS);
    let created = hub.create_session("jump", true).await;
    let token = created["control_token"].as_str().unwrap().to_owned();
    let mut viewer = Viewer::connect(&lookahead_url(&hub, "jump", Some(&token))).await;
    let mut epoch = viewer.hello["state"]["epoch"].as_u64().unwrap();
    viewer.next_window().await;
    let window = viewer.next_window().await;

    // Seek to a frame the viewer already holds: the window restarts there, in a new epoch.
    let target = window.indices[SLOTS / 2];
    viewer
        .send_json(json!({"cmd": "seek", "frame": target}))
        .await;
    epoch += 1;
    let state = state_of_epoch(&mut viewer, epoch).await;
    assert_eq!(state["frame"], target);
    assert_eq!(state["anchor_frame"], target);
    let fresh = viewer.next_window().await;
    assert_eq!(
        fresh.epoch, epoch,
        "no window of the old epoch after the state"
    );
    assert_eq!(fresh.indices[0], target);
    assert_eq!(fresh.indices.len(), 2 * SLOTS);
    assert!(consecutive(&fresh.indices, 1));

    // Paused: one window holding the one frame shown, and nothing more until the next command.
    viewer.send_json(json!({"cmd": "pause"})).await;
    epoch += 1;
    let state = state_of_epoch(&mut viewer, epoch).await;
    assert_eq!(state["playing"], false);
    let paused = viewer.next_window().await;
    assert_eq!(paused.epoch, epoch);
    assert_eq!(
        paused.indices,
        vec![state["frame"].as_u64().unwrap() as u32]
    );

    // 4×: each 40 ms display slot advances four frames, so a window still holds 25 frames/s.
    viewer.send_json(json!({"cmd": "speed", "value": 4})).await;
    viewer.send_json(json!({"cmd": "play"})).await;
    epoch += 2;
    let state = state_of_epoch(&mut viewer, epoch).await;
    assert_eq!(state["speed"], 4.0);
    let fast = loop {
        let w = viewer.next_window().await;
        if w.epoch == epoch {
            break w;
        }
    };
    assert_eq!(fast.indices.len(), 2 * SLOTS);
    assert!(consecutive(&fast.indices, 4), "{:?}", fast.indices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lookahead_viewer_gets_the_latest_window_not_a_backlog() {
    // 200 ms windows of 5 frames (about 5.5 KB): 25 of them go out while the viewer does not
    // read, far more than the socket buffers on both sides hold.
    let hub = TestHub::start_with(|c| {
        c.lookahead_window_ms = 200;
        c.socket_send_buffer = 4096;
        c.stall_timeout_ms = 60_000;
    });
    hub.create_session("lag", true).await;
    let mut slow = connect_non_reader(&lookahead_url(&hub, "lag", None)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut windows: Vec<Vec<u32>> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, slow.next()).await {
        if let Message::Binary(bytes) = message.unwrap() {
            let (_, indices) = window_indices(&bytes).expect("a window");
            windows.push(indices);
        }
    }
    assert!(
        windows.len() > 3,
        "reading again brings windows: {windows:?}"
    );
    let mut skipped = 0;
    for pair in windows.windows(2) {
        let (last, next) = (*pair[0].last().unwrap(), pair[1][0]);
        assert!(next > last, "in order, no window twice: {last} then {next}");
        if next > last + 1 {
            skipped += 1;
        }
    }
    assert!(
        skipped >= 1,
        "older unsent windows were replaced: {windows:?}"
    );
    eventually("the skipped windows' frames counted as dropped", || async {
        let info = hub.session_info("lag").await;
        (info.stats.frames_dropped > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_viewer_can_ask_for_the_server_clock() {
    let hub = hub_with_window(WINDOW_MS);
    let mut viewer = Viewer::connect(&lookahead_url(&hub, "demo", None)).await;
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1000.0
    };
    let before = wall_ms();
    viewer.send_json(json!({"cmd": "time", "t0": 123.25})).await;
    let reply = viewer.next_of_type("time").await;
    let after = wall_ms();
    assert_eq!(reply["t0"], 123.25, "the client's time is echoed");
    // Same machine, same clock: the server's reading falls between the client's two.
    let server = reply["server_ms"].as_f64().unwrap();
    assert!(
        (before - 1.0..=after + 1.0).contains(&server),
        "{before} <= {server} <= {after}"
    );
    viewer.send_json(json!({"cmd": "time"})).await;
    assert_eq!(viewer.next_of_type("error").await["code"], "bad_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_goes_out_in_pieces_and_arrives_whole() {
    // 5 s windows: the first covers 10 s, 250 frames, about 275 KB, written in 64 KiB pieces.
    let hub = hub_with_window(5_000);
    hub.create_session("long", true).await;
    let mut viewer = Viewer::connect(&lookahead_url(&hub, "long", None)).await;
    let window = viewer.next_window().await;
    assert_eq!(window.indices.len(), 250);
    assert!(consecutive(&window.indices, 1));
    let carried: Vec<u32> = window.frames.iter().map(|f| f.i).collect();
    assert_eq!(carried, window.indices);
    // The socket carries on with whole messages after it.
    viewer.send_json(json!({"cmd": "time", "t0": 1.0})).await;
    assert_eq!(viewer.next_of_type("time").await["t0"], 1.0);
}
