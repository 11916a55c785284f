//! What hostile clients, files and cache or broker entries send: each is answered with its
//! documented error, and the hub keeps serving everyone else.

use crate::common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket client that writes raw frames, for what well-behaved client libraries refuse
/// to send.
struct RawWs {
    stream: TcpStream,
}

impl RawWs {
    async fn connect(hub: &TestHub, path: &str) -> Self {
        let mut stream = TcpStream::connect(hub.addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            hub.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream }
    }

    /// A masked client frame: `first` is FIN/RSV/opcode, `declared` the length in the header
    /// (which may exceed the payload sent with it).
    fn frame(first: u8, declared: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match declared {
            0..=125 => out.push(0x80 | declared as u8),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(declared as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&declared.to_be_bytes());
            }
        }
        let mask = [0x11, 0x22, 0x33, 0x44];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads the server's frames until its close frame; its code, or None if the connection
    /// ended without one. Panics if nothing ends within the test's patience.
    async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let mut head = [0u8; 2];
                if self.stream.read_exact(&mut head).await.is_err() {
                    return None;
                }
                let len = match head[1] & 0x7f {
                    126 => u64::from(self.stream.read_u16().await.ok()?),
                    127 => self.stream.read_u64().await.ok()?,
                    n => u64::from(n),
                };
                let mut payload = vec![0u8; len as usize];
                self.stream.read_exact(&mut payload).await.ok()?;
                if head[0] & 0x0f == 0x8 {
                    return Some(u16::from_be_bytes([payload[0], payload[1]]));
                }
            }
        })
        .await
        .expect("the server closes in time")
    }
}

async fn metric(hub: &TestHub, line_start: &str) -> f64 {
    let text = hub.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_header_claiming_256_mib_is_refused_before_its_payload() {
    let hub = TestHub::start();
    let mut healthy = Viewer::connect(&hub.ws_url("demo", None)).await;
    let mut raw = RawWs::connect(&hub, "/ws/sessions/demo").await;
    // The header and the first 64 KiB of a 256 MiB binary frame: the rest never comes.
    let mut bytes = RawWs::frame(0x82, 256 << 20, &[]);
    bytes.extend(vec![0u8; 64 << 10]);
    raw.send(&bytes).await;
    assert_eq!(
        raw.close_code().await,
        Some(1009),
        "closed as too big from the header, without waiting for 256 MiB"
    );
    // Everyone else plays on, and the close is counted for what it was.
    let before = healthy.next_frame().await.i;
    let after = healthy.next_frame().await.i;
    assert!(after > before, "the demo plays on: {before} then {after}");
    let too_big = metric(
        &hub,
        "replay_hub_ws_disconnects_total{reason=\"message_too_big\"}",
    )
    .await;
    assert_eq!(too_big, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_their_close_codes_and_are_counted() {
    let hub = TestHub::start();
    // Reserved bits set: 1002.
    let mut raw = RawWs::connect(&hub, "/ws/sessions/demo").await;
    raw.send(&RawWs::frame(0xc1, 2, b"{}")).await;
    assert_eq!(raw.close_code().await, Some(1002), "RSV1 set");
    // A text message that is not UTF-8: 1007.
    let mut raw = RawWs::connect(&hub, "/ws/sessions/demo").await;
    raw.send(&RawWs::frame(0x81, 4, &[0xff, 0xfe, 0x7b, 0x7d]))
        .await;
    assert_eq!(raw.close_code().await, Some(1007), "invalid UTF-8");
    // Fragments that add up to more than the 4 KiB limit, each under it: 1009.
    let mut raw = RawWs::connect(&hub, "/ws/sessions/demo").await;
    let part = vec![b' '; 3000];
    let mut bytes = RawWs::frame(0x01, 3000, &part);
    bytes.extend(RawWs::frame(0x80, 3000, &part));
    raw.send(&bytes).await;
    assert_eq!(
        raw.close_code().await,
        Some(1009),
        "fragments over the limit"
    );
    eventually("the disconnects counted", || async {
        let protocol = metric(
            &hub,
            "replay_hub_ws_disconnects_total{reason=\"protocol_error\"}",
        )
        .await;
        let too_big = metric(
            &hub,
            "replay_hub_ws_disconnects_total{reason=\"message_too_big\"}",
        )
        .await;
        (protocol == 2.0 && too_big == 1.0).then_some(())
    })
    .await;
    // The hub still serves.
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    viewer.next_frame().await;
}

/// The test race's header and metadata, claiming `total_frames`, followed by no frame at all.
fn race_claiming(id: &str, total_frames: u32) -> Vec<u8> {
    use replay_hub::race::{read_meta, FORMAT_VERSION};
    let file = std::fs::File::open(race_file()).unwrap();
    let mut meta = read_meta(std::io::BufReader::new(file)).unwrap();
    meta.id = id.into();
    meta.total_frames = total_frames;
    let meta_bytes = rmp_serde::to_vec(&meta).unwrap();
    let mut bytes = b"F1REPLAY".to_vec();
    bytes.extend(FORMAT_VERSION.to_be_bytes());
    bytes.extend((meta_bytes.len() as u32).to_be_bytes());
    bytes.extend(meta_bytes);
    bytes.push(0xdd);
    bytes.extend(total_frames.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_files_claiming_absurd_frame_counts_are_refused() {
    // One such file already in the data directory: the hub starts and does not list it.
    let hub = TestHub::start_with(|c| {
        std::fs::write(
            c.data_dir.join("boot.race"),
            race_claiming("boot", 1_000_000_000),
        )
        .unwrap();
    });
    let races: serde_json::Value = hub.get("/api/races").await.json().await.unwrap();
    let ids: Vec<&str> = races
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["test-race"]);
    for (id, claimed) in [("huge", 1_000_000_000), ("empty", 0)] {
        let response = hub
            .http()
            .put(hub.url(&format!("/api/races/{id}")))
            .bearer_auth(&hub.admin_token)
            .body(race_claiming(id, claimed))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{id}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("total_frames"), "{message}");
    }
    assert_eq!(hub.get("/api/races/huge").await.status(), 404);
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    viewer.next_frame().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_values_longer_than_they_may_be_are_refused_unread() {
    use replay_hub::cache::{CacheError, CacheSpec, Compression, RaceCache};
    use replay_hub::loader::file_content_id;
    use replay_hub::shutdown::Tasks;
    let prefix = Prefix::new("hostile");
    let cache = RaceCache::open(
        &CacheSpec::Redis(REDIS_URL.into()),
        &prefix.0,
        Compression::Zstd,
        &Tasks::default(),
    )
    .unwrap();
    eventually("the cache is ready", || async {
        cache.is_ready().then_some(())
    })
    .await;
    let race = std::sync::Arc::new(replay_hub::loader::load_race_file(race_file()).unwrap());
    let content = file_content_id(race_file()).unwrap();
    cache.store(&race, &content).await.unwrap();
    let mut conn = redis_conn(REDIS_URL);
    let base = format!("{}:{}:race:test-race", prefix.0, replay_hub::cache::SCHEMA);
    // A first chunk of 64 MiB: far more than 1,000 frames of this race can compress to.
    let _: () = redis::cmd("SET")
        .arg(format!("{base}:{content}:chunk:0"))
        .arg(vec![0u8; 64 << 20])
        .query(&mut conn)
        .unwrap();
    match cache.load("test-race", None, u64::MAX).await {
        Err(CacheError::Corrupt { key, reason }) => {
            assert!(key.ends_with(":chunk:0"), "{key}");
            assert!(reason.contains("bytes it may hold"), "{reason}");
        }
        other => panic!(
            "expected a corrupt chunk, got {:?}",
            other.map(|r| r.is_some())
        ),
    }
    // Metadata that no race file could carry.
    let mut meta = (*race.meta).clone();
    meta.total_frames = 1_000_000_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{base}:meta"))
        .arg(rmp_serde::to_vec(&meta).unwrap())
        .query(&mut conn)
        .unwrap();
    match cache.meta("test-race").await {
        Err(CacheError::Corrupt { reason, .. }) => {
            assert!(reason.contains("total_frames"), "{reason}")
        }
        other => panic!("expected corrupt metadata, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_broker_records_are_refused_and_the_session_plays_on() {
    use serde_json::json;
    let prefix = Prefix::new("hostile-broker");
    let hub = TestHub::start_with(|c| {
        redis_cache(REDIS_URL, &prefix.0)(c);
        c.broker = Some(REDIS_URL.into());
        c.demo_session = String::new();
    });
    hub.create_session("victim", true).await;
    let mut viewer = Viewer::connect(&hub.ws_url("victim", None)).await;
    let key = format!("{}:v1:session:victim", prefix.0);
    let mut redis = redis_conn(REDIS_URL);
    let stored: String = redis::cmd("GET").arg(&key).query(&mut redis).unwrap();
    let good: serde_json::Value = serde_json::from_str(&stored).unwrap();
    let hostile = [
        ("speed", json!(0)),
        ("speed", json!(-1)),
        ("anchor_ms", json!(i64::MAX)),
        ("anchor_ms", json!(-5)),
    ];
    for (n, (field, value)) in hostile.into_iter().enumerate() {
        let mut record = good.clone();
        record["timeline"][field] = value.clone();
        record["timeline"]["epoch"] = json!(100 + n);
        let announcement = json!({"id": "victim", "record": record});
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(record.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(format!("{}:v1:sessions", prefix.0))
            .arg(announcement.to_string())
            .ignore()
            .query(&mut redis)
            .unwrap();
        // Frames keep coming and keep moving: the record was not adopted.
        let first = viewer.next_frame().await.i;
        let mut last = first;
        for _ in 0..10 {
            last = viewer.next_frame().await.i;
        }
        assert!(
            last > first,
            "{field}={value}: playing on ({first} → {last})"
        );
        let info = hub.session_info("victim").await;
        assert_eq!(info.state.speed, 1.0, "{field}={value}");
        assert!(info.state.epoch < 100, "{field}={value}: not adopted");
    }
    // A viewer joining now is served; so is a listing that meets the stored bad record.
    let mut late = Viewer::connect(&hub.ws_url("victim", None)).await;
    late.next_frame().await;
    assert_eq!(hub.get("/api/sessions").await.status(), 200);
}

/// The test race's file with its id changed (and its checksum redone), as another race.
fn race_copy(id: &str) -> Vec<u8> {
    use replay_hub::race::RaceMeta;
    let bytes = std::fs::read(race_file()).unwrap();
    let meta_len = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let mut meta: RaceMeta = rmp_serde::from_slice(&bytes[14..14 + meta_len]).unwrap();
    meta.id = id.into();
    let meta_bytes = rmp_serde::to_vec(&meta).unwrap();
    let mut out = bytes[..10].to_vec();
    out.extend((meta_bytes.len() as u32).to_be_bytes());
    out.extend(meta_bytes);
    out.extend(&bytes[14 + meta_len..bytes.len() - 16]);
    let crc = crc32fast::hash(&out);
    out.extend(&bytes[bytes.len() - 16..bytes.len() - 4]);
    out.extend(crc.to_be_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_races_stay_within_the_memory_budget() {
    let one_race = replay_hub::loader::load_race_file(race_file())
        .unwrap()
        .memory_bytes();
    let hub = TestHub::start_with(|c| {
        for id in ["x1", "x2", "x3"] {
            std::fs::write(c.data_dir.join(format!("{id}.race")), race_copy(id)).unwrap();
        }
        // The demo plays the first race by id, test-race. Room for it (its session pins it)
        // and about one and a half more.
        c.race_memory_budget = one_race * 5 / 2;
    });
    let loaded = || metric(&hub, "replay_hub_hub_races_loaded");
    assert_eq!(loaded().await, 1.0, "the demo's race");
    // A bad range is refused from the metadata: nothing is loaded for it.
    let response = hub.get("/api/races/x1/frames?from=0&to=0").await;
    assert_eq!(response.status(), 400);
    assert_eq!(loaded().await, 1.0, "a bad range loads nothing");
    // Anonymous frame requests load races, and the least recently used one no session plays
    // goes to make room.
    for id in ["x1", "x2", "x3"] {
        let response = hub
            .get(&format!("/api/races/{id}/frames?from=0&to=2"))
            .await;
        assert_eq!(response.status(), 200, "{id}");
        assert_eq!(loaded().await, 2.0, "after {id}");
    }
    assert_eq!(
        metric(&hub, "replay_hub_hub_races_evicted_total").await,
        2.0
    );
    let held = metric(&hub, "replay_hub_hub_race_memory_bytes").await;
    assert!(held <= (one_race * 5 / 2) as f64, "{held} bytes held");
    // A session pins its race; a second played race leaves no room for a third.
    let create = |race: &'static str, id: &'static str| {
        hub.http()
            .post(hub.url("/api/sessions"))
            .bearer_auth(&hub.admin_token)
            .json(&serde_json::json!({"race": race, "id": id}))
            .send()
    };
    assert_eq!(create("x3", "on-x3").await.unwrap().status(), 201);
    let refused = create("x1", "on-x1").await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("race memory budget"),
        "{body}"
    );
    // The played races are still served.
    let mut viewer = Viewer::connect(&hub.ws_url("on-x3", None)).await;
    viewer.next_frame().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_that_fails_to_load_is_not_read_again_on_every_request() {
    let hub = TestHub::start_with(|c| {
        // A good header over damaged frames: it lists, and fails when loaded.
        let mut bytes = race_copy("broken");
        let middle = bytes.len() / 2;
        bytes[middle..middle + 64].fill(0xc1);
        std::fs::write(c.data_dir.join("broken.race"), bytes).unwrap();
    });
    let mut messages = Vec::new();
    for _ in 0..3 {
        let response = hub.get("/api/races/broken/frames?from=0&to=1").await;
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        messages.push(body["message"].as_str().unwrap().to_owned());
    }
    assert!(
        messages[0].contains("could not be loaded"),
        "{}",
        messages[0]
    );
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    // Each load asks the cache first: one load was tried, not three. (The demo's race was a
    // miss too when the hub started.)
    let misses = metric(
        &hub,
        "replay_hub_cache_requests_total{backend=\"dir\",result=\"miss\"}",
    )
    .await;
    assert_eq!(misses, 2.0, "the demo's race and one try of the broken one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_files_of_interrupted_uploads_are_removed_at_start() {
    let hub = TestHub::start_with(|c| {
        std::fs::write(c.data_dir.join(".gp57.3f2a91bc.upload"), b"half an upload").unwrap();
        std::fs::write(c.data_dir.join("notes.upload.txt"), b"not ours").unwrap();
    });
    assert!(!hub.dir.path().join(".gp57.3f2a91bc.upload").exists());
    assert!(
        hub.dir.path().join("notes.upload.txt").exists(),
        "only staging files go"
    );
    assert!(hub.dir.path().join("test-race.race").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_lost_redis_as_degraded_without_going_unready() {
    let mut redis = PrivateRedis::start();
    let prefix = Prefix::new("ready-degraded");
    let url = redis.url();
    let hub = TestHub::start_with(|c| {
        redis_cache(&url, &prefix.0)(c);
        c.broker = Some(url.clone());
    });
    let ready = || async {
        let response = hub.get("/readyz").await;
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    eventually("cache and broker up", || async {
        let (status, body) = ready().await;
        (status == 200 && body["degraded"] == serde_json::json!([])).then_some(())
    })
    .await;
    redis.kill();
    let body = eventually("both reported degraded", || async {
        let (status, body) = ready().await;
        assert_eq!(status, 200, "still ready: {body}");
        (body["degraded"] == serde_json::json!(["cache", "broker"])).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["cache"]["ready"], false);
    assert_eq!(body["broker"]["ready"], false);
    let text = hub.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("replay_hub_cache_up{backend=\"redis\"} 0"),
        "cache_up"
    );
    assert!(text.contains("replay_hub_broker_up 0"), "broker_up");
    // It still serves: the demo plays from memory.
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    viewer.next_frame().await;
}

/// A WebSocket handshake from a page of `origin`: the status, and the stream if it upgraded.
async fn connect_from(url: &str, origin: Option<&str>) -> Result<Viewer, (u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            let mut viewer = Viewer {
                ws,
                hello: serde_json::Value::Null,
            };
            viewer.hello = viewer.next_json().await;
            Ok(viewer)
        }
        Err(Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            Err((status, serde_json::from_slice(&body).unwrap()))
        }
        Err(other) => panic!("handshake failed: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_pages_may_open_websockets() {
    let hub = TestHub::start_with(|c| {
        c.allowed_origins = "https://watch.example.com".parse().unwrap();
    });
    let url = hub.ws_url("demo", hub.demo_token.as_deref());
    let (status, body) = connect_from(&url, Some("https://evil.example"))
        .await
        .err()
        .expect("a foreign page is refused");
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("--allowed-origins"));
    let own = format!("http://{}", hub.addr);
    for allowed in [
        None,
        Some(own.as_str()),
        Some("http://localhost:5173"),
        Some("https://watch.example.com"),
    ] {
        let viewer = connect_from(&url, allowed).await;
        assert!(viewer.is_ok(), "{allowed:?}");
    }
    let refused = metric(&hub, "replay_hub_ws_refused_total{reason=\"origin\"}").await;
    assert_eq!(refused, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_token_can_be_presented_after_connecting() {
    let hub = TestHub::start();
    let token = hub.demo_token.clone().unwrap();
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    assert_eq!(viewer.hello["can_control"], false);
    viewer.send_json(serde_json::json!({"cmd": "pause"})).await;
    assert_eq!(viewer.next_of_type("error").await["code"], "forbidden");
    viewer
        .send_json(serde_json::json!({"cmd": "auth", "token": "not-the-token"}))
        .await;
    assert_eq!(viewer.next_of_type("error").await["code"], "forbidden");
    viewer
        .send_json(serde_json::json!({"cmd": "auth", "token": token}))
        .await;
    let auth = viewer.next_of_type("auth").await;
    assert_eq!(auth["can_control"], true);
    viewer.send_json(serde_json::json!({"cmd": "pause"})).await;
    let state = viewer.next_of_type("state").await;
    assert_eq!(state["playing"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_slot() {
    let hub = TestHub::start_with(|c| c.max_connections_per_ip = 3);
    let url = hub.ws_url("demo", None);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Viewer::connect(&url).await);
    }
    let (status, body) = connect_from(&url, None)
        .await
        .err()
        .expect("a fourth is refused");
    assert_eq!(status, 429);
    assert_eq!(body["error"], "too_many_requests");
    assert!(body["message"].as_str().unwrap().contains("3 connections"));
    // A slot comes back when its connection goes.
    drop(open.pop());
    let again = eventually("a slot given back", || async {
        connect_from(&url, None).await.ok()
    })
    .await;
    drop(again);
    let refused = metric(&hub, "replay_hub_ws_refused_total{reason=\"per_ip\"}").await;
    assert!(refused >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_a_bounded_command_rate_from_all_its_controllers() {
    let hub = TestHub::start_with(|c| c.session_commands_per_second = 5);
    let token = hub.demo_token.clone().unwrap();
    let url = hub.ws_url("demo", Some(&token));
    let (mut a, mut b) = (Viewer::connect(&url).await, Viewer::connect(&url).await);
    // 20 seeks from two controllers at once: each is within its own connection's limit (20/s).
    for n in 0..10 {
        a.send_json(serde_json::json!({"cmd": "seek", "frame": 100 + n}))
            .await;
        b.send_json(serde_json::json!({"cmd": "seek", "frame": 200 + n}))
            .await;
    }
    let refused = eventually("refusals counted", || async {
        let text = hub.get("/metrics").await.text().await.unwrap();
        let count = |result: &str| -> f64 {
            let prefix =
                format!("replay_hub_session_commands_total{{kind=\"seek\",result=\"{result}\"}}");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let (ok, limited) = (count("ok"), count("rate_limited"));
        (ok + limited == 20.0).then_some((ok, limited))
    })
    .await;
    let (ok, limited) = refused;
    assert!(
        (5.0..20.0).contains(&ok),
        "{ok} accepted, {limited} refused"
    );
    // Refusals are answered: after its first few, `a`'s seeks met the session's limit.
    let error = a.next_of_type("error").await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    drop(b);
}
