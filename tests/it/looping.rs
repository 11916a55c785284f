//! Looping sessions: the demo (and a session created with `"loop": true`) plays again from the
//! start after a pause at the finish; other sessions stay stopped at the finish.
use crate::common;

use common::{TestHub, Viewer};
use serde_json::{json, Value};

/// Seeks `viewer` (a controller) a few frames before the finish and returns the last frame.
async fn seek_near_the_end(viewer: &mut Viewer) -> u64 {
    let last = viewer.hello["total_frames"].as_u64().unwrap() - 1;
    viewer
        .send_json(json!({"cmd": "seek", "frame": last - 10}))
        .await;
    last
}

/// The next state message that satisfies `matches`.
async fn state_where(viewer: &mut Viewer, matches: impl Fn(&Value) -> bool) -> Value {
    loop {
        let state = viewer.next_of_type("state").await;
        if matches(&state) {
            return state;
        }
    }
}

#[tokio::test]
async fn the_demo_plays_again_from_the_start_after_the_finish() {
    let hub = TestHub::start_with(|c| c.loop_pause_ms = 300);
    let info: Value = hub.get("/api/sessions/demo").await.json().await.unwrap();
    assert_eq!(info["loop"], true, "the demo loops: {info}");
    let token = hub.demo_token.clone().expect("a demo session");
    let mut viewer = Viewer::connect(&hub.ws_url("demo", Some(&token))).await;
    let last = seek_near_the_end(&mut viewer).await;
    // It stops at the finish...
    let finished = state_where(&mut viewer, |s| s["playing"] == false).await;
    assert_eq!(finished["frame"].as_u64(), Some(last), "{finished}");
    // ...then plays from the first frame again, in a new epoch.
    let again = state_where(&mut viewer, |s| s["playing"] == true).await;
    assert_eq!(again["frame"].as_u64(), Some(0), "{again}");
    assert!(again["epoch"].as_u64() > finished["epoch"].as_u64());
    let frame = viewer.next_frame().await;
    assert!(
        frame.i < 100,
        "playing from the start, at frame {}",
        frame.i
    );
}

#[tokio::test]
async fn only_sessions_created_to_loop_play_again() {
    let hub = TestHub::start_with(|c| {
        c.loop_pause_ms = 300;
        c.demo_session = String::new();
    });
    let create = |id: &str, body: Value| {
        let request = hub
            .http()
            .post(hub.url("/api/sessions"))
            .bearer_auth(&hub.admin_token)
            .json(&body);
        let id = id.to_owned();
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201, "create {id}");
            response.json::<Value>().await.unwrap()
        }
    };
    let looping = create(
        "looping",
        json!({"race": "test-race", "id": "looping", "loop": true}),
    )
    .await;
    let once = create("once", json!({"race": "test-race", "id": "once"})).await;
    assert_eq!(looping["loop"], true);
    assert_eq!(once["loop"], false);

    let token = looping["control_token"].as_str().unwrap();
    let mut viewer = Viewer::connect(&hub.ws_url("looping", Some(token))).await;
    seek_near_the_end(&mut viewer).await;
    state_where(&mut viewer, |s| s["playing"] == false).await;
    let again = state_where(&mut viewer, |s| s["playing"] == true).await;
    assert_eq!(again["frame"].as_u64(), Some(0));

    // The other one stops at the finish; once the looping one has come round (after the same
    // pause, started later), it is still stopped there.
    let token = once["control_token"].as_str().unwrap();
    let mut stopped = Viewer::connect(&hub.ws_url("once", Some(token))).await;
    let last = seek_near_the_end(&mut stopped).await;
    let finished = state_where(&mut stopped, |s| s["playing"] == false).await;
    assert_eq!(finished["frame"].as_u64(), Some(last));
    viewer
        .send_json(
            json!({"cmd": "seek", "frame": viewer.hello["total_frames"].as_u64().unwrap() - 10}),
        )
        .await;
    state_where(&mut viewer, |s| s["playing"] == false).await;
    state_where(&mut viewer, |s| s["playing"] == true).await;
    let info: Value = hub.get("/api/sessions/once").await.json().await.unwrap();
    assert_eq!(info["loop"], false);
    assert_eq!(info["state"]["playing"], false, "{info}");
    assert_eq!(info["state"]["frame"].as_u64(), Some(last));
}
