//! WebSocket behaviour against the real hub: synchronised fan-out, control, bad input, slow and
//! stalled viewers, deletion and shutdown.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{connect_non_reader, eventually, Received, TestHub, Viewer};
use futures_util::{SinkExt, StreamExt};
use replay_hub::hub::SessionRace;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Collects frame indices for `span` of wall time.
async fn collect_frames(viewer: &mut Viewer, span: Duration) -> Vec<u32> {
    let end = Instant::now() + span;
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Ok(received) = tokio::time::timeout_at(end, viewer.next()).await {
            match received {
                Received::Frame(frame) => seen.push(frame.i),
                Received::Json(_) => {}
                Received::Window(w) => panic!("a window in push mode: {:?}", w.indices),
                Received::Closed(c) => panic!("closed: {c:?}"),
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_see_the_same_frames_in_step() {
    let hub = TestHub::start();
    let mut viewers = Vec::new();
    for _ in 0..20 {
        viewers.push(Viewer::connect(&hub.ws_url("demo", None)).await);
    }
    let tasks: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move { collect_frames(&mut v, Duration::from_secs(3)).await })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.unwrap());
    }
    // The window every viewer was watching for.
    let first = all.iter().map(|s| s[0]).max().unwrap();
    let last = all.iter().map(|s| *s.last().unwrap()).min().unwrap();
    assert!(last > first + 40, "the session advanced: {first}..{last}");
    let sets: Vec<BTreeSet<u32>> = all
        .iter()
        .map(|s| {
            s.iter()
                .copied()
                .filter(|i| (first..=last).contains(i))
                .collect()
        })
        .collect();
    // What the session offered in the window: every index any viewer got. A tick the machine
    // delayed skips an index for everyone, which is no fault of the fan-out.
    let offered = sets.iter().fold(BTreeSet::new(), |acc, s| &acc | s);
    for (n, seen) in all.iter().enumerate() {
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "viewer {n} in order");
        assert!(
            sets[n].len() * 10 >= offered.len() * 9,
            "viewer {n} got {} of {} frames",
            sets[n].len(),
            offered.len()
        );
    }
    // Every tick offers all viewers the same index: the sets (nearly) coincide.
    let common = sets.iter().skip(1).fold(sets[0].clone(), |acc, s| &acc & s);
    assert!(
        common.len() * 10 >= offered.len() * 8,
        "{} of {} frames seen by all",
        common.len(),
        offered.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_applies_to_everyone() {
    let hub = TestHub::start();
    let created = hub.create_session("ctl", false).await;
    let token = created["control_token"].as_str().unwrap();
    let mut controller = Viewer::connect(&hub.ws_url("ctl", Some(token))).await;
    assert_eq!(controller.hello["can_control"], true);
    assert_eq!(controller.hello["state"]["playing"], false);
    let mut others = Vec::new();
    for _ in 0..3 {
        let v = Viewer::connect(&hub.ws_url("ctl", None)).await;
        assert_eq!(v.hello["can_control"], false);
        others.push(v);
    }
    let epoch0 = controller.hello["state"]["epoch"].as_u64().unwrap();

    controller
        .send_json(json!({"cmd": "seek", "frame": 1000}))
        .await;
    for v in others.iter_mut().chain([&mut controller]) {
        let state = v.next_of_type("state").await;
        assert_eq!(state["frame"], 1000);
        assert_eq!(state["playing"], false);
        assert_eq!(state["epoch"], epoch0 + 1);
        assert_eq!(v.next_frame().await.i, 1000);
    }

    controller
        .send_json(json!({"cmd": "speed", "value": 4}))
        .await;
    controller.send_json(json!({"cmd": "play"})).await;
    for v in others.iter_mut() {
        // States are level-triggered: a viewer that is behind gets the latest one only, so the
        // speed change may arrive folded into the play state.
        let play = loop {
            let state = v.next_of_type("state").await;
            if state["playing"] == true {
                break state;
            }
            assert_eq!(state["speed"], 4.0, "the speed change comes first: {state}");
        };
        assert_eq!(play["speed"], 4.0);
        let a = v.next_frame().await.i;
        let b = v.next_frame().await.i;
        assert!(b > a && a >= 1000, "playing forward at speed 4: {a}, {b}");
    }

    controller.send_json(json!({"cmd": "pause"})).await;
    for v in others.iter_mut() {
        let paused = v.next_of_type("state").await;
        assert_eq!(paused["playing"], false);
        let at = paused["frame"].as_u64().unwrap() as u32;
        // Paused: the one frame offered is the paused frame, and nothing follows it.
        assert_eq!(v.next_frame().await.i, at);
        let more = tokio::time::timeout(Duration::from_millis(400), v.next()).await;
        assert!(more.is_err(), "no frames while paused: {more:?}");
    }
    let info = hub.session_info("ctl").await;
    assert!(!info.state.playing);
    assert_eq!(info.viewers, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_frame_after_a_seek() {
    let hub = TestHub::start();
    let created = hub.create_session("seeky", true).await;
    let token = created["control_token"].as_str().unwrap().to_owned();
    let mut controller = Viewer::connect(&hub.ws_url("seeky", Some(&token))).await;
    let mut watcher = Viewer::connect(&hub.ws_url("seeky", None)).await;
    let epoch0 = watcher.hello["state"]["epoch"].as_u64().unwrap();
    let watch = tokio::spawn(async move {
        // After a state message for target f, every frame is in [f, f + 10 s of play]. States
        // may be collapsed (latest wins), so watch until the last seek's epoch.
        let mut window: Option<(u32, u32)> = None;
        let mut checked = 0;
        loop {
            match watcher.next().await {
                Received::Json(v) if v["type"] == "state" => {
                    let f = v["frame"].as_u64().unwrap() as u32;
                    window = Some((f, f + 250));
                    if v["epoch"].as_u64().unwrap() >= epoch0 + 20 {
                        break;
                    }
                }
                Received::Frame(frame) => {
                    if let Some((lo, hi)) = window {
                        assert!(
                            (lo..=hi).contains(&frame.i),
                            "stale frame {} after seek to {lo}",
                            frame.i
                        );
                        checked += 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        checked
    });
    for n in 0..20 {
        let target = if n % 2 == 0 { 200 } else { 3000 };
        controller
            .send_json(json!({"cmd": "seek", "frame": target}))
            .await;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let checked = tokio::time::timeout(common::PATIENCE, watch)
        .await
        .expect("the last seek's state arrives")
        .unwrap();
    assert!(checked >= 10, "frames were checked: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_the_token_are_forbidden() {
    let hub = TestHub::start();
    for url in [hub.ws_url("demo", None), hub.ws_url("demo", Some("wrong"))] {
        let mut viewer = Viewer::connect(&url).await;
        assert_eq!(viewer.hello["can_control"], false);
        viewer.send_json(json!({"cmd": "pause"})).await;
        let error = viewer.next_of_type("error").await;
        assert_eq!(error["code"], "forbidden");
    }
    assert!(
        hub.session_info("demo").await.state.playing,
        "nothing paused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_documented_answer_and_the_hub_keeps_serving() {
    let hub = TestHub::start_with(|c| c.commands_per_second = 5);
    let token = hub.demo_token.clone().unwrap();
    let url = hub.ws_url("demo", Some(&token));
    let mut viewer = Viewer::connect(&url).await;
    let total = viewer.hello["total_frames"].as_u64().unwrap();
    let cases = [
        ("{not json".to_owned(), "bad_json"),
        (r#"{"cmd":"rewind"}"#.to_owned(), "unknown_command"),
        (
            format!(r#"{{"cmd":"seek","frame":{total}}}"#),
            "out_of_range",
        ),
        (r#"{"cmd":"speed","value":100}"#.to_owned(), "out_of_range"),
        (r#"{"cmd":"seek"}"#.to_owned(), "bad_argument"),
    ];
    for (text, code) in cases {
        viewer.send_text(&text).await;
        let error = viewer.next_of_type("error").await;
        assert_eq!(error["code"], code, "{text}");
        assert!(error["message"].as_str().unwrap().len() > 5);
        // Rate limit is 5/s: stay under it.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    viewer
        .ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(
        viewer.next_of_type("error").await["code"],
        "binary_not_supported"
    );

    // Still open and obeying after all that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    viewer.send_json(json!({"cmd": "seek", "frame": 10})).await;
    assert_eq!(viewer.next_of_type("state").await["frame"], 10);

    // Beyond the rate limit.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..12 {
        viewer.send_json(json!({"cmd": "speed", "value": 1})).await;
    }
    let mut limited = false;
    for _ in 0..40 {
        let v = viewer.next_json().await;
        if v["type"] == "error" {
            assert_eq!(v["code"], "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "commands beyond the limit are refused");

    // Oversized message: 1009, and only this connection goes.
    viewer.send_text(&"x".repeat(5000)).await;
    assert_eq!(viewer.close_code().await, Some(1009));
    let response = hub.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let mut again = Viewer::connect(&url).await;
    again.next_frame().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_never_reads_does_not_hold_back_the_others() {
    let hub = TestHub::start_with(|c| c.socket_send_buffer = 4096);
    hub.create_session("slow", true).await;
    let _stuck = connect_non_reader(&hub.ws_url("slow", None)).await;
    // Healthy viewers read all along; each records what arrived after `measure_from` is set.
    let measuring = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut viewer = Viewer::connect(&hub.ws_url("slow", None)).await;
        let measuring = measuring.clone();
        readers.push(tokio::spawn(async move {
            let start = measuring.notified();
            tokio::pin!(start);
            loop {
                tokio::select! {
                    () = &mut start => break,
                    _ = viewer.next_frame() => {}
                }
            }
            collect_frames(&mut viewer, Duration::from_secs(2)).await
        }));
    }
    // Wait until the stuck viewer is dropping frames, then measure the healthy ones.
    eventually("frames dropped for the stuck viewer", || async {
        let info = hub.session_info("slow").await;
        (info.stats.frames_dropped > 25).then_some(())
    })
    .await;
    let info = hub.session_info("slow").await;
    assert_eq!(info.viewers, 6, "the stuck viewer is slow, not yet stalled");
    measuring.notify_waiters();
    for (n, reader) in readers.into_iter().enumerate() {
        let seen = reader.await.unwrap();
        let span = (seen.last().unwrap() - seen[0] + 1) as usize;
        assert!(
            seen.len() * 10 >= span * 9,
            "healthy viewer {n}: {} of {span}",
            seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_is_closed_with_4001() {
    let hub = TestHub::start_with(|c| {
        c.socket_send_buffer = 4096;
        c.stall_timeout_ms = 500;
        c.heartbeat_ms = 100;
        c.client_timeout_ms = 60_000;
    });
    hub.create_session("stall", true).await;
    let mut stuck = connect_non_reader(&hub.ws_url("stall", None)).await;
    let mut healthy = Viewer::connect(&hub.ws_url("stall", None)).await;
    let reading = tokio::spawn(async move { while healthy.ws.next().await.is_some() {} });
    eventually("the stuck viewer is closed", || async {
        let info = hub.session_info("stall").await;
        (info.stats.stalled_closed == 1 && info.viewers == 1).then_some(())
    })
    .await;
    // Reading now drains the backlog and then finds the close frame.
    let code = loop {
        match tokio::time::timeout(common::PATIENCE, stuck.next())
            .await
            .unwrap()
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| u16::from(f.code))
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    assert!(
        !reading.is_finished(),
        "the healthy viewer is still connected"
    );
    assert_eq!(hub.session_info("stall").await.stats.stalled_closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_the_client_timeout() {
    let hub = TestHub::start_with(|c| {
        c.heartbeat_ms = 100;
        c.client_timeout_ms = 500;
    });
    // A raw client that completes the handshake, reads everything and never answers a ping.
    let mut tcp = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let request = format!(
        "GET /ws/sessions/demo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        hub.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + common::PATIENCE;
    let code = loop {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap();
        if n == 0 {
            break find_close_code(&received);
        }
        received.extend_from_slice(&buf[..n]);
        if let Some(code) = find_close_code(&received) {
            break Some(code);
        }
    };
    assert_eq!(code, Some(4002));
}

/// Walks the unmasked server frames after the HTTP response head; returns a close frame's code.
fn find_close_code(bytes: &[u8]) -> Option<u16> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut at = head_end;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 if at + 10 <= bytes.len() => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[at + 2..at + 10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if at + header + len > bytes.len() {
            return None;
        }
        if opcode == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([
                bytes[at + header],
                bytes[at + header + 1],
            ]));
        }
        at += header + len;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_over_one_race_share_its_frames() {
    let hub = TestHub::start();
    hub.create_session("one", false).await;
    hub.create_session("two", false).await;
    let one = hub
        .hub
        .send(SessionRace("one".into()))
        .await
        .unwrap()
        .unwrap();
    let two = hub
        .hub
        .send(SessionRace("two".into()))
        .await
        .unwrap()
        .unwrap();
    let demo = hub
        .hub
        .send(SessionRace("demo".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(
        Arc::ptr_eq(&one, &two) && Arc::ptr_eq(&one, &demo),
        "one copy of the race"
    );

    // And the bytes a viewer gets are the shared encoded bytes, the same the REST endpoint serves.
    let mut viewer = Viewer::connect(&hub.ws_url("one", None)).await;
    let frame = loop {
        match viewer.ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Binary(b) => break b,
            _ => continue,
        }
    };
    assert_eq!(&frame[..], &one.frame(0).unwrap()[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_closes_its_viewers_with_its_own_code() {
    let hub = TestHub::start();
    hub.create_session("gone", true).await;
    let mut viewer = Viewer::connect(&hub.ws_url("gone", None)).await;
    viewer.next_frame().await;
    let response = hub
        .http()
        .delete(hub.url("/api/sessions/gone"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let closed = loop {
        match viewer.next().await {
            Received::Closed(frame) => break frame.unwrap(),
            _ => continue,
        }
    };
    // Not 1001, which a restart sends too: a client tells "over" from "reconnect" by the code.
    assert_eq!(u16::from(closed.code), 4003);
    assert_eq!(closed.reason.as_str(), "session deleted");
    assert_eq!(hub.get("/api/sessions/gone").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_viewers_with_1001_and_returns() {
    let hub = TestHub::start();
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    viewer.next_frame().await;
    let stopping = tokio::task::spawn_blocking(move || hub.shutdown());
    assert_eq!(viewer.close_code().await, Some(1001));
    stopping.await.unwrap().expect("server stopped cleanly");
}
