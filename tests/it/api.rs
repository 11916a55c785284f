//! REST behaviour against the real hub: races, metadata caching, frame ranges, sessions and their
//! errors, and the `generate` command.

use crate::common;

use common::TestHub;
use replay_hub::encode::decode_frame;
use replay_hub::hub::RaceSummary;
use serde_json::{json, Value};

async fn assert_json_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().unwrap().len() > 5, "{body}");
    body
}

#[tokio::test]
async fn health_and_race_list() {
    let hub = TestHub::start();
    let health: Value = hub.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let races: Vec<RaceSummary> = hub.get("/api/races").await.json().await.unwrap();
    assert_eq!(races.len(), 1);
    assert_eq!(races[0].id, "test-race");
    assert_eq!(races[0].laps, 2);
    assert_eq!(races[0].drivers, 20);
    assert!(races[0].total_frames > 2 * 60 * 25);
}

#[tokio::test]
async fn race_metadata_is_cacheable_with_a_strong_etag() {
    let hub = TestHub::start();
    let response = hub.get("/api/races/test-race").await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    let cache = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache.contains("max-age="), "{cache}");
    let meta: Value = response.json().await.unwrap();
    assert_eq!(meta["id"], "test-race");
    assert_eq!(meta["fps"], 25);
    assert_eq!(meta["drivers"].as_array().unwrap().len(), 20);
    assert!(meta["track"]["centre_x"].as_array().unwrap().len() > 10);

    let again = hub
        .http()
        .get(hub.url("/api/races/test-race"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    let other = hub
        .http()
        .get(hub.url("/api/races/test-race"))
        .header("If-None-Match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    assert_json_error(hub.get("/api/races/nope").await, 404, "not_found").await;
}

#[tokio::test]
async fn frame_ranges_are_the_encoded_frames_and_bad_ranges_are_400() {
    let hub = TestHub::start();
    let response = hub.get("/api/races/test-race/frames?from=100&to=110").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/msgpack");
    let body = response.bytes().await.unwrap();
    let frames: Vec<rmpv_like::Frame> = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(frames.len(), 10);
    for (n, frame) in frames.iter().enumerate() {
        assert_eq!(frame.i, 100 + n as u32);
        assert_eq!(frame.kind, "frame");
        assert_eq!(frame.drivers.len(), 20);
    }
    // The same bytes as a single frame decoded on its own.
    let one = hub.get("/api/races/test-race/frames?from=105&to=106").await;
    let one = one.bytes().await.unwrap();
    let decoded = decode_frame(&one[1..]).unwrap();
    assert_eq!(decoded.i, 105);

    let total = hub
        .get("/api/races")
        .await
        .json::<Vec<RaceSummary>>()
        .await
        .unwrap()[0]
        .total_frames;
    let last = hub
        .get(&format!(
            "/api/races/test-race/frames?from={}&to={total}",
            total - 3
        ))
        .await;
    assert_eq!(
        last.status(),
        200,
        "to is exclusive: to == total is the end"
    );
    let most = hub.get("/api/races/test-race/frames?from=0&to=1500").await;
    assert_eq!(most.status(), 200, "exactly the per-request limit");
    for query in [
        format!("from=0&to={}", total + 1),
        "from=0&to=1501".to_owned(),
        "from=10&to=10".to_owned(),
        "from=20&to=10".to_owned(),
        "from=0&to=99999999".to_owned(),
        "from=x&to=1".to_owned(),
        "from=1".to_owned(),
    ] {
        let response = hub
            .get(&format!("/api/races/test-race/frames?{query}"))
            .await;
        assert_json_error(response, 400, "bad_request").await;
    }
    assert_json_error(
        hub.get("/api/races/nope/frames?from=0&to=1").await,
        404,
        "not_found",
    )
    .await;
}

/// Just enough of a wire frame to check ranges without the driver schema.
mod rmpv_like {
    #[derive(serde::Deserialize)]
    pub struct Frame {
        #[serde(rename = "type")]
        pub kind: String,
        pub i: u32,
        pub drivers: Vec<serde::de::IgnoredAny>,
    }
}

#[tokio::test]
async fn sessions_need_the_admin_token_and_validate_input() {
    let hub = TestHub::start();
    let post = |body: Value, token: Option<&str>| {
        let mut request = hub.http().post(hub.url("/api/sessions")).json(&body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    let admin = Some(hub.admin_token.as_str());
    let body = json!({"race": "test-race", "id": "s1"});
    let response = post(body.clone(), None).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_json_error(response, 401, "unauthorized").await;
    assert_json_error(
        post(body.clone(), Some("nope")).await.unwrap(),
        401,
        "unauthorized",
    )
    .await;

    let created = post(body.clone(), admin).await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/api/sessions/s1");
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["id"], "s1");
    assert_eq!(created["control_token"].as_str().unwrap().len(), 32);
    assert_eq!(
        created["ws_url"],
        format!("ws://{}/ws/sessions/s1", hub.addr)
    );

    assert_json_error(post(body, admin).await.unwrap(), 409, "conflict").await;
    let unknown = json!({"race": "nope"});
    assert_json_error(post(unknown, admin).await.unwrap(), 404, "not_found").await;
    let bad_id = json!({"race": "test-race", "id": "Bad Id!"});
    assert_json_error(post(bad_id, admin).await.unwrap(), 400, "bad_request").await;
    let extra = json!({"race": "test-race", "colour": "red"});
    assert_json_error(post(extra, admin).await.unwrap(), 400, "bad_request").await;
    let malformed = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .header("content-type", "application/json")
        .body("{\"race\":")
        .send()
        .await
        .unwrap();
    assert_json_error(malformed, 400, "bad_request").await;

    // A generated id, and the listing.
    let anon: Value = post(json!({"race": "test-race"}), admin)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anon["id"].as_str().unwrap().len(), 8);
    let sessions: Vec<Value> = hub.get("/api/sessions").await.json().await.unwrap();
    let mut ids: Vec<&str> = sessions.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec!["demo", "s1", anon["id"].as_str().unwrap()];
    expected.sort();
    assert_eq!(ids, expected);

    let info: Value = hub.get("/api/sessions/s1").await.json().await.unwrap();
    assert_eq!(info["race"], "test-race");
    assert_eq!(info["viewers"], 0);
    assert_eq!(info["state"]["playing"], true);

    assert_json_error(hub.get("/api/sessions/nope").await, 404, "not_found").await;
    let delete = hub
        .http()
        .delete(hub.url("/api/sessions/s1"))
        .send()
        .await
        .unwrap();
    assert_json_error(delete, 401, "unauthorized").await;
    let delete = hub
        .http()
        .delete(hub.url("/api/sessions/nope"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_json_error(delete, 404, "not_found").await;
    // The WebSocket route answers an unknown session with 404 before upgrading.
    assert_json_error(hub.get("/ws/sessions/nope").await, 404, "not_found").await;
}

#[tokio::test]
async fn a_new_session_answers_with_its_page_and_socket_urls_in_the_clients_scheme() {
    let hub = TestHub::start();
    let create = |id: &str, proto: Option<&str>| {
        let mut request = hub
            .http()
            .post(hub.url("/api/sessions"))
            .bearer_auth(&hub.admin_token)
            .json(&json!({"race": "test-race", "id": id}));
        if let Some(proto) = proto {
            request = request
                .header("x-forwarded-proto", proto)
                .header("x-forwarded-host", "replays.example.org");
        }
        request.send()
    };
    let plain: Value = create("plain", None).await.unwrap().json().await.unwrap();
    let token = plain["control_token"].as_str().unwrap();
    let host = hub.addr;
    assert_eq!(plain["watch_url"], format!("http://{host}/sessions/plain"));
    assert_eq!(
        plain["control_page_url"],
        format!("http://{host}/sessions/plain?token={token}")
    );
    assert_eq!(plain["ws_url"], format!("ws://{host}/ws/sessions/plain"));
    assert_eq!(
        plain["control_url"],
        format!("ws://{host}/ws/sessions/plain?token={token}")
    );
    // The page URL serves the viewer.
    let page = hub
        .http()
        .get(plain["watch_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/assets/app.js"));

    // Behind a TLS-terminating proxy: https pages and wss sockets on the public host.
    let tls: Value = create("behind-tls", Some("https"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tls["control_token"].as_str().unwrap();
    assert_eq!(
        tls["watch_url"],
        "https://replays.example.org/sessions/behind-tls"
    );
    assert_eq!(
        tls["control_page_url"],
        format!("https://replays.example.org/sessions/behind-tls?token={token}")
    );
    assert_eq!(
        tls["ws_url"],
        "wss://replays.example.org/ws/sessions/behind-tls"
    );
    assert_eq!(
        tls["control_url"],
        format!("wss://replays.example.org/ws/sessions/behind-tls?token={token}")
    );
    let http: Value = create("behind-http", Some("http"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        http["ws_url"],
        "ws://replays.example.org/ws/sessions/behind-http"
    );
}

#[tokio::test]
async fn the_session_limit_is_enforced() {
    let hub = TestHub::start_with(|c| c.max_sessions = 2);
    hub.create_session("second", false).await;
    let response = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"race": "test-race"}))
        .send()
        .await
        .unwrap();
    assert_json_error(response, 503, "unavailable").await;
}

#[tokio::test]
async fn broken_race_files_are_skipped_or_refused_with_the_reason() {
    let hub = TestHub::start_with(|c| {
        // No header at all: skipped at start-up.
        std::fs::write(c.data_dir.join("broken.race"), b"definitely not a race").unwrap();
        // A valid header over truncated frames: listed, and refused when loaded.
        let params = replay_hub::race::GenParams {
            laps: 2,
            drivers: 2,
            seed: 3,
            id: "cut".into(),
            name: "Cut".into(),
        };
        let (meta, frames) = replay_hub::race::generate(&params, |_, _| {}).unwrap();
        let mut bytes = Vec::new();
        replay_hub::race::write_race(&mut bytes, &meta, frames).unwrap();
        std::fs::write(c.data_dir.join("cut.race"), &bytes[..bytes.len() / 2]).unwrap();
    });
    let races: Vec<RaceSummary> = hub.get("/api/races").await.json().await.unwrap();
    let ids: Vec<&str> = races.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["cut", "test-race"]);
    let response = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"race": "cut"}))
        .send()
        .await
        .unwrap();
    let body = assert_json_error(response, 500, "internal").await;
    assert!(
        body["message"].as_str().unwrap().contains("truncated"),
        "{body}"
    );
    // The hub goes on serving the good race.
    hub.create_session("after", true).await;
}

#[tokio::test]
async fn every_error_is_json_even_off_the_map() {
    let hub = TestHub::start();
    assert_json_error(hub.get("/nowhere").await, 404, "not_found").await;
    // A plain GET on the WebSocket route is not an upgrade.
    assert_json_error(hub.get("/ws/sessions/demo").await, 400, "bad_request").await;
    // The admin check comes before the body is parsed.
    let response = hub
        .http()
        .post(hub.url("/api/sessions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_json_error(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_web_viewer_is_served_from_the_binary() {
    let hub = TestHub::start();
    for (path, content_type, marker) in [
        ("/", "text/html", "Races and sessions"),
        ("/sessions/demo", "text/html", "leaderboard"),
        ("/assets/app.js", "text/javascript", "requestAnimationFrame"),
        ("/assets/worker.js", "text/javascript", "WebSocket"),
        ("/assets/style.css", "text/css", "body"),
    ] {
        let response = hub.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with(content_type), "{path}: {kind}");
        assert!(response.text().await.unwrap().contains(marker), "{path}");
    }
    assert_json_error(hub.get("/assets/nope.js").await, 404, "not_found").await;
}

#[test]
fn generate_is_deterministic_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_replay-hub"))
            .args([
                "generate",
                "--laps",
                "2",
                "--drivers",
                "6",
                "--seed",
                seed,
                "--quiet",
            ])
            .args(["--id", "gen", "--out"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    let a = run("a.race", "11");
    let b = run("b.race", "11");
    let c = run("c.race", "12");
    assert!(a == b, "same seed, same bytes");
    assert!(a != c, "another seed, another race");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_replay-hub"))
        .args(["generate", "--id", "Not Valid", "--out"])
        .arg(dir.path().join("x.race"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid race id"));
}
