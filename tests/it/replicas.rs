//! Several hubs serving one session in step through Redis: the same frame at the same moment,
//! control from any replica, a replica lost, Redis lost.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{
    eventually, redis_cache, redis_conn, HubProcess, Prefix, PrivateRedis, Received, TestHub,
    Viewer, REDIS_URL,
};
use futures_util::StreamExt;
use replay_hub::config::Config;
use serde_json::json;
use tokio::time::Instant;

fn replica(redis: &str, prefix: &str) -> impl FnOnce(&mut Config) {
    let (broker, cache) = (redis.to_owned(), redis_cache(redis, prefix));
    move |c: &mut Config| {
        cache(c);
        c.broker = Some(broker);
        c.demo_session = String::new();
    }
}

/// (arrival in wall-clock Unix ms, frame index) for `span`.
async fn timed_frames(viewer: &mut Viewer, span: Duration) -> Vec<(i64, u32)> {
    let end = Instant::now() + span;
    let mut seen = Vec::new();
    while let Ok(received) = tokio::time::timeout_at(end, viewer.next()).await {
        if let Received::Frame(frame) = received {
            seen.push((replay_hub::clock::wall_ms(), frame.i));
        }
    }
    seen
}

/// Both replicas play one timeline: they report the same anchor, and neither sends a frame
/// before that timeline reaches it. (How close in time the two are is measured in
/// BENCHMARKS.md, not asserted here: these machines are shared.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_two_replicas_see_the_same_frame() {
    let prefix = Prefix::new("replicas-sync");
    let a = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    let b = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    a.create_session("shared", true).await;
    let mut on_a = Viewer::connect(&a.ws_url("shared", None)).await;
    let mut on_b = Viewer::connect(&b.ws_url("shared", None)).await;
    assert_eq!(
        on_b.hello["session"], "shared",
        "joined on the other replica"
    );
    let (seen_a, seen_b) = tokio::join!(
        timed_frames(&mut on_a, Duration::from_secs(3)),
        timed_frames(&mut on_b, Duration::from_secs(3))
    );
    let (state_a, state_b) = (
        a.session_info("shared").await.state,
        b.session_info("shared").await.state,
    );
    let anchor = |s: &replay_hub::encode::PlayState| {
        (s.playing, s.speed, s.anchor_frame, s.anchor_ms, s.epoch)
    };
    assert_eq!(
        anchor(&state_a),
        anchor(&state_b),
        "one timeline on both replicas"
    );
    assert!(state_a.playing);
    for (replica, seen) in [("A", &seen_a), ("B", &seen_b)] {
        assert!(seen.len() > 20, "{replica} plays: {} frames", seen.len());
        for &(at_ms, index) in seen.iter() {
            let due = f64::from(state_a.anchor_frame)
                + (at_ms - state_a.anchor_ms) as f64 * state_a.speed * 25.0 / 1000.0;
            assert!(
                f64::from(index) <= due.floor() + 1.0,
                "{replica} sent frame {index} before its time (due {due:.1})"
            );
        }
    }
}

/// Two replicas settling concurrent commands: the one whose command lost adopts the stored
/// timeline of the same epoch, and its viewers must still be told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_adopted_at_the_same_epoch_reaches_viewers_as_a_state() {
    let prefix = Prefix::new("replicas-same-epoch");
    let hub = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    hub.create_session("tie", true).await;
    let key = format!("{}:v1:session:tie", prefix.0);
    // What another replica does when its command wins: store the record, announce it.
    let store_and_announce = |redis: &mut redis::Connection, record: &serde_json::Value| {
        let announcement = json!({"id": "tie", "record": record});
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(record.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(format!("{}:v1:sessions", prefix.0))
            .arg(announcement.to_string())
            .ignore()
            .query(redis)
            .unwrap();
    };
    for mode in ["", "?mode=lookahead"] {
        let mut viewer = Viewer::connect(&format!("{}{mode}", hub.ws_url("tie", None))).await;
        let epoch = viewer.hello["state"]["epoch"].as_u64().unwrap();
        // What another replica's winning command of the same epoch would have stored.
        let mut redis = redis_conn(REDIS_URL);
        let stored: String = redis::cmd("GET").arg(&key).query(&mut redis).unwrap();
        let mut record: serde_json::Value = serde_json::from_str(&stored).unwrap();
        let target = 3000 + epoch as u32; // a different anchor on each pass
        record["timeline"]["anchor_frame"] = json!(target);
        record["timeline"]["playing"] = json!(false);
        assert_eq!(record["timeline"]["epoch"], epoch);
        store_and_announce(&mut redis, &record);
        let state = viewer.next_of_type("state").await;
        assert_eq!(state["epoch"], epoch, "same epoch, new state: {state}");
        assert_eq!(state["anchor_frame"], target);
        assert_eq!(state["playing"], false);
        let shown = match viewer.next().await {
            Received::Frame(frame) => vec![frame.i],
            Received::Window(window) => window.indices,
            other => panic!("expected frames after the state, got {other:?}"),
        };
        assert_eq!(
            shown,
            vec![target],
            "{mode}: the adopted frame follows its state"
        );
        // Playing again for the next pass.
        record["timeline"]["playing"] = json!(true);
        record["timeline"]["epoch"] = json!(epoch + 1);
        store_and_announce(&mut redis, &record);
        let state = viewer.next_of_type("state").await;
        assert_eq!(state["epoch"], epoch + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_on_one_replica_shows_on_the_other() {
    let prefix = Prefix::new("replicas-seek");
    let a = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    let b = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    let created = a.create_session("seek", true).await;
    let token = created["control_token"].as_str().unwrap();
    let mut controller = Viewer::connect(&a.ws_url("seek", Some(token))).await;
    // The token works on the other replica too: only its hash travels.
    let remote_controller = Viewer::connect(&b.ws_url("seek", Some(token))).await;
    assert_eq!(remote_controller.hello["can_control"], true);
    let mut watcher = Viewer::connect(&b.ws_url("seek", None)).await;
    // How fast is for BENCHMARKS.md ("Replicas: a seek on one hub, seen on another"); here,
    // that each seek arrives, anchored where it was asked (`frame` is the frame current when B
    // adopted it, a little later while playing).
    for (n, target) in [400u32, 2000, 900, 3100, 150].into_iter().enumerate() {
        controller
            .send_json(json!({"cmd": "seek", "frame": target}))
            .await;
        let state = watcher.next_of_type("state").await;
        assert_eq!(state["anchor_frame"], target, "seek {n} reached B");
        assert!(watcher.next_frame().await.i >= target);
    }
    // A command on B reaches A the same way.
    let mut from_b = remote_controller;
    from_b.send_json(json!({"cmd": "pause"})).await;
    let paused = tokio::time::timeout(common::PATIENCE, async {
        // Skip A's own seek states still unread.
        while controller.next_of_type("state").await["playing"] != false {}
    })
    .await;
    assert!(paused.is_ok(), "the pause from B reached A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_killed_replica_resume_on_the_other() {
    let prefix = Prefix::new("replicas-kill");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::race_file(), dir.path().join("test-race.race")).unwrap();
    // Replica A is a real process, so it can die the hard way.
    let data_dir = dir.path().to_str().unwrap();
    let mut a = HubProcess::spawn(&[
        "--admin-token",
        "a",
        "--demo-session",
        "",
        "--broker",
        REDIS_URL,
        "--cache",
        REDIS_URL,
        "--cache-prefix",
        &prefix.0,
        "--data-dir",
        data_dir,
    ]);
    let addr = a.addr.clone();
    let created = a.create_session("a", "survivor", true).await;
    assert_eq!(created["id"], "survivor");
    let b = TestHub::start_with(replica(REDIS_URL, &prefix.0));
    let mut on_a = Viewer::connect(&format!("ws://{addr}/ws/sessions/survivor")).await;
    let reference = Viewer::connect(&b.ws_url("survivor", None)).await;
    on_a.next_frame().await;

    a.process.0.kill().unwrap();
    a.process.0.wait().unwrap();
    // The viewer notices and reconnects to the surviving replica.
    loop {
        match tokio::time::timeout(common::PATIENCE, on_a.ws.next())
            .await
            .unwrap()
        {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    let mut resumed = Viewer::connect(&b.ws_url("survivor", None)).await;
    let first = resumed.next_frame().await.i;
    // `reference` may hold frames queued while nobody read it: a fresh viewer tells where the
    // session is now, a moment after `resumed` joined.
    drop(reference);
    let now_on_b = Viewer::connect(&b.ws_url("survivor", None))
        .await
        .next_frame()
        .await
        .i;
    assert!(
        first <= now_on_b && now_on_b - first <= 25,
        "resumed at {first}, the session is at {now_on_b}"
    );
    assert!(first > 0, "resumed where the session is, not at the start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playback_survives_a_redis_restart_and_resyncs() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let local_cache = |c: &mut Config| {
        replica(&url, "replicas")(c);
        c.cache.cache = None;
    };
    let a = TestHub::start_with(local_cache);
    let b = TestHub::start_with(local_cache);
    let created = a.create_session("steady", true).await;
    let token = created["control_token"].as_str().unwrap();
    let mut controller = Viewer::connect(&a.ws_url("steady", Some(token))).await;
    let mut watcher = Viewer::connect(&b.ws_url("steady", None)).await;

    redis.kill();
    eventually("B notices Redis is gone", || async {
        let response = b.get("/readyz").await;
        assert_eq!(response.status(), 200, "B stays ready: it serves");
        let body: serde_json::Value = response.json().await.unwrap();
        // Its cache is the directory one: only the broker is lost.
        (body["degraded"] == json!(["broker"])).then_some(())
    })
    .await;
    // Both replicas play on from their local timelines.
    let before = watcher.next_frame().await.i;
    let seen = timed_frames(&mut watcher, Duration::from_secs(1)).await;
    assert!(seen.last().unwrap().1 > before + 10, "B still plays");
    controller.next_frame().await;

    redis.restart();
    for hub in [&a, &b] {
        eventually("no longer degraded", || async {
            let body: serde_json::Value = hub.get("/readyz").await.json().await.unwrap();
            (body["degraded"] == json!([])).then_some(())
        })
        .await;
    }
    // Re-synced: a seek on A reaches B again.
    controller
        .send_json(json!({"cmd": "seek", "frame": 2500}))
        .await;
    let state = tokio::time::timeout(common::PATIENCE, async {
        loop {
            let state = watcher.next_of_type("state").await;
            if state["frame"] == 2500 {
                return state;
            }
        }
    })
    .await
    .expect("the seek reaches B");
    assert_eq!(state["playing"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_viewers_with_a_reconnect_hint_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::race_file(), dir.path().join("test-race.race")).unwrap();
    let hub = HubProcess::spawn(&[
        "--shutdown-timeout-ms",
        "3000",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let addr = hub.addr.clone();
    let mut viewer = Viewer::connect(&format!("ws://{addr}/ws/sessions/demo")).await;
    viewer.next_frame().await;
    let pid = hub.pid().to_string();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let close = loop {
        match viewer.next().await {
            Received::Closed(frame) => break frame.expect("a close frame"),
            _ => continue,
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.contains("reconnect"), "{}", close.reason);
    let status = tokio::task::spawn_blocking(move || {
        let mut hub = hub;
        let status = hub.process.0.wait();
        (status, hub)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "clean exit: {status}");
    // Within the hub's own drain bound, well inside a pod's grace period.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
