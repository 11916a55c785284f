//! The encoded-race cache against a real Redis (the shared one, with a unique key prefix per test,
//! and private `redis-server`s for the tests that kill or stall it), the directory cache, race
//! upload and `replay-hub import`.

use crate::common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{
    eventually, race_file, redis_cache, redis_conn, HubProcess, Prefix, PrivateRedis, TestHub,
    Viewer, REDIS_URL,
};
use futures_util::StreamExt;
use replay_hub::cache::{CacheSpec, Compression, RaceCache, SCHEMA};
use replay_hub::encode::EncodedRace;
use replay_hub::hub::RaceSummary;
use replay_hub::loader::{file_content_id, load_race_file};
use replay_hub::shutdown::Tasks;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn encoded_test_race() -> Arc<EncodedRace> {
    Arc::new(load_race_file(race_file()).unwrap())
}

async fn ready(cache: &RaceCache) {
    eventually("the cache is ready", || async {
        cache.is_ready().then_some(())
    })
    .await;
}

fn assert_same(a: &EncodedRace, b: &EncodedRace) {
    assert_eq!(a.total_frames(), b.total_frames());
    assert_eq!(*a.meta, *b.meta);
    for i in 0..a.total_frames() {
        assert_eq!(a.frame(i), b.frame(i), "frame {i} differs");
    }
}

/// The first binary message a viewer of `url` receives.
async fn first_frame(url: &str) -> Vec<u8> {
    let mut viewer = Viewer::connect(url).await;
    loop {
        if let Message::Binary(bytes) = viewer.ws.next().await.unwrap().unwrap() {
            return bytes.to_vec();
        }
    }
}

/// Waits until a hub has written `race` back to the Redis at `url` under `prefix`.
async fn written_back(url: &str, prefix: &str, race: &str) {
    let manifest = format!("{prefix}:{SCHEMA}:race:{race}:manifest");
    let mut conn = redis_conn(url);
    eventually("the race written back to Redis", || {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&manifest)
            .query(&mut conn)
            .unwrap();
        async move { exists.then_some(()) }
    })
    .await;
}

async fn readyz(hub: &TestHub) -> (u16, Value) {
    let response = hub.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trip_is_byte_for_byte_under_a_versioned_key_schema() {
    let original = encoded_test_race();
    let content = file_content_id(race_file()).unwrap();
    for compression in [Compression::Zstd, Compression::None] {
        let prefix = Prefix::new("roundtrip");
        let spec = CacheSpec::Redis(REDIS_URL.into());
        let cache = RaceCache::open(&spec, &prefix.0, compression, &Tasks::default()).unwrap();
        ready(&cache).await;
        assert!(cache
            .load("test-race", None, u64::MAX)
            .await
            .unwrap()
            .is_none());
        cache.store(&original, &content).await.unwrap();
        let loaded = cache
            .load("test-race", Some(&content), u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_same(&original, &loaded);
        assert!(
            !loaded.meta.timeline.events.is_empty(),
            "the timeline comes back from the cache"
        );

        let mut conn = redis_conn(REDIS_URL);
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", prefix.0))
            .query(&mut conn)
            .unwrap();
        keys.sort();
        let schema = format!("{}:{SCHEMA}:", prefix.0);
        assert!(keys.iter().all(|k| k.starts_with(&schema)), "{keys:?}");
        assert!(keys.contains(&format!("{schema}race:test-race:manifest")));
        assert!(keys.contains(&format!("{schema}race:test-race:{content}:chunk:0")));
        assert!(
            content.starts_with("e1-"),
            "the encoding version is in the key"
        );
        // Another file content for the same id never reads these bytes.
        assert!(cache
            .load("test-race", Some("e1-ffffffff"), u64::MAX)
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_serves_a_race_from_redis_with_the_file_gone() {
    let prefix = Prefix::new("restart");
    let with_redis = redis_cache(REDIS_URL, &prefix.0);
    let first = TestHub::start_with(with_redis.clone());
    first_frame(&first.ws_url("demo", None)).await;
    written_back(REDIS_URL, &prefix.0, "test-race").await;
    first.shutdown().unwrap();

    let second = TestHub::start_with(|c| {
        with_redis(c);
        std::fs::remove_file(c.data_dir.join("test-race.race")).unwrap();
    });
    let races: Vec<RaceSummary> = second.get("/api/races").await.json().await.unwrap();
    assert_eq!(races.len(), 1, "no demo race generated: the cache has one");
    assert_eq!(races[0].id, "test-race");
    // The demo session plays the cached race, from the same bytes. (Which frame comes first
    // depends on how long each hub took to start: the bytes of that frame are what must agree.)
    let served = first_frame(&second.ws_url("demo", None)).await;
    let cached = encoded_test_race();
    let index = replay_hub::encode::frame_index(&served).unwrap();
    assert_eq!(&served[..], &cached.frame(index).unwrap()[..]);
    let (status, body) = readyz(&second).await;
    assert_eq!(status, 200);
    assert_eq!(body["cache"]["backend"], "redis");
    assert_eq!(body["cache"]["stats"]["hits"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_processes_share_one_redis() {
    let prefix = Prefix::new("two");
    let first = TestHub::start_with(redis_cache(REDIS_URL, &prefix.0));
    let empty = tempfile::tempdir().unwrap();
    // Upload a new race to the first hub: it validates, encodes and writes it to Redis.
    let race = std::fs::read(race_file()).unwrap();
    let uploaded = first
        .http()
        .put(first.url("/api/races/test-race"))
        .bearer_auth(&first.admin_token)
        .body(race)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200, "replaces the existing race");
    written_back(REDIS_URL, &prefix.0, "test-race").await;

    let second = HubProcess::spawn(&[
        "--admin-token",
        "second",
        "--data-dir",
        empty.path().to_str().unwrap(),
        "--cache",
        REDIS_URL,
        "--cache-prefix",
        &prefix.0,
        "--demo-session",
        "",
    ]);
    let addr = second.addr.clone();
    let http = reqwest::Client::new();
    let races: Vec<RaceSummary> = http
        .get(format!("http://{addr}/api/races"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        races.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["test-race"]
    );
    let created = second.create_session("second", "elsewhere", false).await;
    assert_eq!(created["id"], "elsewhere");
    let on_second = first_frame(&format!("ws://{addr}/ws/sessions/elsewhere")).await;
    let from_first = first
        .get("/api/races/test-race/frames?from=0&to=1")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &on_second[..],
        &from_first[1..],
        "the same bytes on both hubs"
    );
    // The second hub has no race file: what it served came from Redis. (It keeps its sessions
    // in `sessions/`.)
    let files: Vec<_> = std::fs::read_dir(empty.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "sessions")
        .collect();
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_back() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let hub = TestHub::start_with(|c| {
        c.cache.cache = Some(CacheSpec::Redis(url.clone()));
    });
    // Serving from the race file without the cache.
    first_frame(&hub.ws_url("demo", None)).await;
    // It serves, so it is ready; the missing cache is reported as degraded.
    let (status, body) = readyz(&hub).await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(body["cache"]["ready"], false);
    assert_eq!(body["degraded"], json!(["cache"]));

    let _redis = PrivateRedis::start_on(port);
    eventually("the cache back once Redis is", || async {
        let (status, body) = readyz(&hub).await;
        (status == 200 && body["cache"]["ready"] == true && body["degraded"] == json!([]))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_gives_a_clear_error_and_nothing_partial() {
    let mut redis = PrivateRedis::start();
    let spec = CacheSpec::Redis(redis.url());
    let cache = RaceCache::open(&spec, "kill", Compression::None, &Tasks::default()).unwrap();
    ready(&cache).await;
    let original = encoded_test_race();
    cache.store(&original, "e1-00000001").await.unwrap();

    // Stall the server, start a load, then kill the server under it.
    let pid = redis.pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load("test-race", None, u64::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!loading.is_finished(), "the load is under way");
    redis.kill();
    let result = tokio::time::timeout(common::PATIENCE, loading)
        .await
        .expect("the load ends")
        .unwrap();
    let err = result
        .map(|found| found.is_some())
        .expect_err("a killed Redis fails the load");
    assert!(!err.to_string().is_empty());

    // A fresh server on the same port holds nothing: the failed load left nothing behind.
    redis.restart();
    let found = eventually("reconnected", || async {
        cache.load("test-race", None, u64::MAX).await.ok()
    })
    .await;
    assert!(found.is_none(), "a partial race was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_without_a_file_fails_clearly_when_redis_is_gone() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let with_redis = |c: &mut replay_hub::config::Config| {
        c.cache.cache = Some(CacheSpec::Redis(url.clone()));
    };
    let first = TestHub::start_with(with_redis);
    first_frame(&first.ws_url("demo", None)).await;
    written_back(&url, "replay-hub", "test-race").await;
    first.shutdown().unwrap();
    let second = TestHub::start_with(|c| {
        with_redis(c);
        c.demo_session = String::new();
        std::fs::remove_file(c.data_dir.join("test-race.race")).unwrap();
    });
    let races: Vec<RaceSummary> = second.get("/api/races").await.json().await.unwrap();
    assert_eq!(races[0].id, "test-race");
    redis.kill();
    let response = second
        .http()
        .post(second.url("/api/sessions"))
        .bearer_auth(&second.admin_token)
        .json(&json!({"race": "test-race"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("no race file") && message.contains("cache"),
        "{message}"
    );
    assert_eq!(second.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_detected_reloaded_from_the_file_and_counted() {
    let prefix = Prefix::new("corrupt");
    let with_redis = redis_cache(REDIS_URL, &prefix.0);
    let first = TestHub::start_with(with_redis.clone());
    first_frame(&first.ws_url("demo", None)).await;
    let content = file_content_id(race_file()).unwrap();
    let chunk = format!("{}:{SCHEMA}:race:test-race:{content}:chunk:2", prefix.0);
    written_back(REDIS_URL, &prefix.0, "test-race").await;
    first.shutdown().unwrap();
    let mut conn = redis_conn(REDIS_URL);
    let _: () = redis::cmd("SETRANGE")
        .arg(&chunk)
        .arg(10)
        .arg("garbage")
        .query(&mut conn)
        .unwrap();

    let second = TestHub::start_with(with_redis);
    let frame = first_frame(&second.ws_url("demo", None)).await;
    let index = replay_hub::encode::frame_index(&frame).unwrap();
    assert_eq!(&frame[..], &encoded_test_race().frame(index).unwrap()[..]);
    let (_, body) = readyz(&second).await;
    assert_eq!(body["cache"]["stats"]["corrupt"], 1);
    assert_eq!(body["cache"]["stats"]["hits"], 0);
    // Reloaded from the file and written back whole.
    let cache = RaceCache::open(
        &CacheSpec::Redis(REDIS_URL.into()),
        &prefix.0,
        Compression::Zstd,
        &Tasks::default(),
    )
    .unwrap();
    ready(&cache).await;
    let repaired = eventually("the cache repaired", || async {
        cache
            .load("test-race", Some(&content), u64::MAX)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_same(&encoded_test_race(), &repaired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_before_anything_is_kept() {
    let hub = TestHub::start_with(|c| c.max_upload_bytes = 8 << 20);
    let good = std::fs::read(race_file()).unwrap();
    let put = |id: &str, body: Vec<u8>, token: Option<&str>| {
        let mut request = hub
            .http()
            .put(hub.url(&format!("/api/races/{id}")))
            .body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    let admin = Some(hub.admin_token.as_str());
    assert_eq!(
        put("test-race", good.clone(), None).await.unwrap().status(),
        401
    );

    let truncated = put("test-race", good[..good.len() - 1000].to_vec(), admin)
        .await
        .unwrap();
    assert_eq!(truncated.status(), 400);
    let body: Value = truncated.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("truncated"),
        "{body}"
    );

    let wrong_id = put("other", good.clone(), admin).await.unwrap();
    assert_eq!(wrong_id.status(), 400);
    let body: Value = wrong_id.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("not \"other\""),
        "{body}"
    );

    let garbage = put("junk", b"not a race".to_vec(), admin).await.unwrap();
    assert_eq!(garbage.status(), 400);
    let too_big = put("big", vec![0u8; 9 << 20], admin).await.unwrap();
    assert_eq!(too_big.status(), 413);
    let body: Value = too_big.json().await.unwrap();
    assert_eq!(body["error"], "too_large");

    // Nothing from the failures is listed or left on disk.
    let races: Vec<RaceSummary> = hub.get("/api/races").await.json().await.unwrap();
    assert_eq!(races.len(), 1);
    let leftovers: Vec<String> = std::fs::read_dir(hub.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "test-race.race" && n != "cache" && n != "sessions")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A good upload under a new id: a copy of the test race with another id.
    let params = replay_hub::race::GenParams {
        laps: 2,
        drivers: 3,
        seed: 9,
        id: "fresh".into(),
        name: "Fresh".into(),
    };
    let (meta, frames) = replay_hub::race::generate(&params, |_, _| {}).unwrap();
    let mut fresh = Vec::new();
    replay_hub::race::write_race(&mut fresh, &meta, frames).unwrap();
    let created = put("fresh", fresh, admin).await.unwrap();
    assert_eq!(created.status(), 201);
    let summary: RaceSummary = created.json().await.unwrap();
    assert_eq!((summary.id.as_str(), summary.drivers), ("fresh", 3));
    assert!(hub.dir.path().join("fresh.race").exists());
    let session = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"race": "fresh", "id": "on-fresh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 201);
    let mut viewer = Viewer::connect(&hub.ws_url("on-fresh", None)).await;
    assert_eq!(viewer.hello["race"], "fresh");
    assert_eq!(viewer.next_frame().await.drivers.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_fills_the_cache_for_a_hub_without_the_file() {
    let cache_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_replay-hub"))
        .arg("import")
        .arg(race_file())
        .arg("--cache")
        .arg(format!("dir:{}", cache_dir.path().display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("imported race \"test-race\""));

    let hub = TestHub::start_with(|c| {
        c.cache.cache = Some(CacheSpec::Dir(cache_dir.path().to_owned()));
        std::fs::remove_file(c.data_dir.join("test-race.race")).unwrap();
    });
    let frame = first_frame(&hub.ws_url("demo", None)).await;
    let index = replay_hub::encode::frame_index(&frame).unwrap();
    assert_eq!(&frame[..], &encoded_test_race().frame(index).unwrap()[..]);

    let bad = Command::new(env!("CARGO_BIN_EXE_replay-hub"))
        .args(["import", "/nonexistent.race", "--cache", "none"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_one_race_load_it_once() {
    let hub = TestHub::start_with(|c| c.demo_session = String::new());
    let creates = (0..6).map(|n| {
        hub.http()
            .post(hub.url("/api/sessions"))
            .bearer_auth(&hub.admin_token)
            .json(&json!({"race": "test-race", "id": format!("s{n}")}))
            .send()
    });
    for response in futures_util::future::join_all(creates).await {
        assert_eq!(response.unwrap().status(), 201);
    }
    let (_, body) = readyz(&hub).await;
    assert_eq!(body["cache"]["stats"]["misses"], 1, "one load: {body}");
    assert_eq!(body["cache"]["stats"]["hits"], 0);
    let first = hub
        .hub
        .send(replay_hub::hub::SessionRace("s0".into()))
        .await
        .unwrap()
        .unwrap();
    for n in 1..6 {
        let other = hub
            .hub
            .send(replay_hub::hub::SessionRace(format!("s{n}")))
            .await
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&first, &other), "session s{n} shares the race");
    }
}
