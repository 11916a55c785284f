//! A hub without a broker keeps its sessions in the data directory: after a restart the same
//! session id answers with the same control token at the frame its timeline says.

use crate::common;

use common::{TestHub, Viewer};
use serde_json::json;

/// A data directory holding the test race, kept across hub runs.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::race_file(), dir.path().join("test-race.race")).unwrap();
    dir
}

fn hub_over(dir: &std::path::Path) -> TestHub {
    let dir = dir.to_owned();
    TestHub::start_with(move |c| c.data_dir = dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_hub_serves_the_same_sessions_with_the_same_tokens() {
    let dir = data_dir();
    let hub = hub_over(dir.path());
    let demo_token = hub.demo_token.clone().expect("a demo session");
    let created = hub.create_session("keep", false).await;
    let token = created["control_token"].as_str().unwrap().to_owned();
    let mut control = Viewer::connect(&hub.ws_url("keep", Some(&token))).await;
    assert_eq!(control.hello["can_control"], true);
    control
        .send_json(json!({"cmd": "speed", "value": 2.0}))
        .await;
    control.next_of_type("state").await;
    control
        .send_json(json!({"cmd": "seek", "frame": 500}))
        .await;
    let before = control.next_of_type("state").await;
    assert_eq!(before["frame"], 500);
    let gone = hub.create_session("gone", false).await;
    assert!(gone["control_token"].is_string());
    let deleted = hub
        .http()
        .delete(hub.url("/api/sessions/gone"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    drop(control);
    hub.shutdown().unwrap();

    let hub = hub_over(dir.path());
    assert_eq!(
        hub.demo_token, None,
        "the demo session was resumed, not created anew"
    );
    // The paused session is at the frame it was paused at, with the same speed and epoch.
    let mut viewer = Viewer::connect(&hub.ws_url("keep", None)).await;
    let state = &viewer.hello["state"];
    assert_eq!(state["frame"], 500, "{state}");
    assert_eq!(state["playing"], false);
    assert_eq!(state["speed"], 2.0);
    assert_eq!(state["epoch"], before["epoch"]);
    assert_eq!(viewer.hello["can_control"], false);

    // The old control token still controls it; another one does not.
    let mut wrong = Viewer::connect(&hub.ws_url("keep", Some("not-the-token"))).await;
    assert_eq!(wrong.hello["can_control"], false);
    wrong.send_json(json!({"cmd": "play"})).await;
    assert_eq!(wrong.next_of_type("error").await["code"], "forbidden");
    let mut control = Viewer::connect(&hub.ws_url("keep", Some(&token))).await;
    assert_eq!(control.hello["can_control"], true);
    control.send_json(json!({"cmd": "play"})).await;
    let playing = control.next_of_type("state").await;
    assert_eq!(playing["playing"], true);
    assert_eq!(viewer.next_of_type("state").await["playing"], true);

    // The demo session kept its token too, and was playing on through the restart.
    let demo = Viewer::connect(&hub.ws_url("demo", Some(&demo_token))).await;
    assert_eq!(demo.hello["can_control"], true);
    assert_eq!(demo.hello["state"]["playing"], true);

    // A deleted session stays deleted.
    assert_eq!(hub.get("/api/sessions/gone").await.status(), 404);
    hub.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_playing_session_resumes_where_its_clock_says() {
    let dir = data_dir();
    let hub = hub_over(dir.path());
    let created = hub.create_session("live", true).await;
    let token = created["control_token"].as_str().unwrap().to_owned();
    let mut control = Viewer::connect(&hub.ws_url("live", Some(&token))).await;
    control
        .send_json(json!({"cmd": "seek", "frame": 1000}))
        .await;
    let anchored = control.next_of_type("state").await;
    drop(control);
    hub.shutdown().unwrap();

    let hub = hub_over(dir.path());
    let viewer = Viewer::connect(&hub.ws_url("live", None)).await;
    let state = &viewer.hello["state"];
    assert_eq!(state["playing"], true);
    assert_eq!(state["anchor_frame"], anchored["anchor_frame"]);
    assert_eq!(state["anchor_ms"], anchored["anchor_ms"]);
    // Time went on while the hub was down: the frame is past the seek, as the anchor says.
    assert!(state["frame"].as_u64().unwrap() > 1000, "{state}");
    hub.shutdown().unwrap();
}
