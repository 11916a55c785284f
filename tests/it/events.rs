//! `GET /api/races/{race}/events` on a real hub: a generated race's timeline lists its pit
//! stops, retirements and safety car, is cacheable with a strong ETag, and stays out of the
//! metadata.

use crate::common;

use common::TestHub;
use replay_hub::race::{generate, write_race, GenParams};
use serde_json::Value;

/// A generated race with pit stops, a retirement and a safety car (seed chosen for that).
fn eventful_race() -> (replay_hub::race::RaceMeta, Vec<u8>) {
    let params = GenParams {
        laps: 8,
        drivers: 10,
        seed: SEED,
        id: "eventful".into(),
        name: "Eventful Grand Prix".into(),
    };
    let (meta, frames) = generate(&params, |_, _| {}).unwrap();
    let mut bytes = Vec::new();
    write_race(&mut bytes, &meta, frames).unwrap();
    (meta, bytes)
}

const SEED: u64 = 19;

#[tokio::test]
async fn events_list_the_pits_retirements_and_safety_car_of_a_generated_race() {
    let hub = TestHub::start();
    let (meta, bytes) = eventful_race();
    let put = hub
        .http()
        .put(hub.url("/api/races/eventful"))
        .bearer_auth(&hub.admin_token)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());

    let response = hub
        .http()
        .get(hub.url("/api/races/eventful/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    assert!(response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age"));
    let body: Value = response.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["kind"] == kind).collect() };

    // Every car that did not retire stopped at least once; each stop names its driver.
    let pits = of("pit");
    let retirements = of("retirement");
    assert!(!retirements.is_empty(), "seed {SEED} has a retirement");
    let retired: Vec<&str> = retirements
        .iter()
        .map(|e| e["driver"].as_str().unwrap())
        .collect();
    for d in &meta.drivers {
        if !retired.contains(&d.code.as_str()) {
            assert!(
                pits.iter().any(|e| e["driver"] == d.code.as_str()),
                "{} pitted",
                d.code
            );
        }
    }
    // The safety car comes out and goes in again, as the track status intervals say.
    let statuses: Vec<&str> = of("track_status")
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    let sc = statuses.iter().position(|s| *s == "safety_car");
    let sc = sc.expect("a safety car period");
    assert_eq!(statuses.get(sc + 1), Some(&"green"), "{statuses:?}");
    let interval = meta
        .track_status
        .iter()
        .find(|iv| serde_json::to_value(iv.status).unwrap() == "safety_car")
        .unwrap();
    let deployed = of("track_status")[sc];
    assert_eq!(deployed["t"].as_f64().unwrap(), interval.start_t);
    assert_eq!(deployed["message"], "SAFETY CAR DEPLOYED");

    // Laps 1..=8 start in order, the flag falls once, frames are in the race and in order.
    let laps: Vec<u64> = of("lap")
        .iter()
        .map(|e| e["lap"].as_u64().unwrap())
        .collect();
    assert_eq!(laps, (1..=8).collect::<Vec<_>>());
    assert_eq!(of("chequered").len(), 1);
    let frames: Vec<u64> = events
        .iter()
        .map(|e| e["frame"].as_u64().unwrap())
        .collect();
    assert!(frames.windows(2).all(|w| w[0] <= w[1]));
    assert!(*frames.last().unwrap() < u64::from(meta.total_frames));
    for e in events {
        let frame = e["frame"].as_f64().unwrap();
        assert!(
            (e["t"].as_f64().unwrap() - frame / 25.0).abs() < 1e-6,
            "{e}"
        );
    }
    let weather = body["weather"].as_array().unwrap();
    assert!(weather.len() >= 2);
    assert!(weather[0]["air_temp_c"].as_f64().unwrap() > 0.0);
    assert_eq!(weather[0]["rainfall"], false);

    // Revalidation answers 304 with the same tag.
    let again = hub
        .http()
        .get(hub.url("/api/races/eventful/events"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);

    // The metadata stays lean: no timeline, and its own tag.
    let meta_response = hub
        .http()
        .get(hub.url("/api/races/eventful"))
        .send()
        .await
        .unwrap();
    assert_ne!(meta_response.headers()["etag"].to_str().unwrap(), etag);
    let meta_json: Value = meta_response.json().await.unwrap();
    assert!(meta_json.get("timeline").is_none());
    assert_eq!(meta_json["id"], "eventful");
}

#[tokio::test]
async fn events_of_an_unknown_race_are_a_json_404() {
    let hub = TestHub::start();
    let response = hub
        .http()
        .get(hub.url("/api/races/nope/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].as_str().unwrap().contains("nope"));
}

/// A race file as version 1 wrote it: 9 metadata fields, no timeline.
fn version_1_file() -> Vec<u8> {
    let params = GenParams {
        laps: 2,
        drivers: 4,
        seed: 3,
        id: "old-format".into(),
        name: "Old Format GP".into(),
    };
    let (meta, frames) = generate(&params, |_, _| {}).unwrap();
    let v1 = (
        &meta.id,
        &meta.name,
        meta.total_laps,
        meta.fps,
        meta.total_frames,
        &meta.fields,
        &meta.track,
        &meta.drivers,
        &meta.track_status,
    );
    let meta_bytes = rmp_serde::to_vec(&v1).unwrap();
    let mut out = b"F1REPLAY".to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_bytes);
    rmp::encode::write_array_len(&mut out, frames.len() as u32).unwrap();
    for f in &frames {
        rmp_serde::encode::write(&mut out, f).unwrap();
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(b"F1RPLEND");
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[tokio::test]
async fn a_version_1_race_file_still_plays_with_an_empty_timeline() {
    let hub = TestHub::start();
    let put = hub
        .http()
        .put(hub.url("/api/races/old-format"))
        .bearer_auth(&hub.admin_token)
        .body(version_1_file())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let events: Value = hub
        .get("/api/races/old-format/events")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events, serde_json::json!({"events": [], "weather": []}));
    let meta: Value = hub.get("/api/races/old-format").await.json().await.unwrap();
    assert_eq!(meta["drivers"].as_array().unwrap().len(), 4);

    let created = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&serde_json::json!({"race": "old-format", "id": "old"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mut viewer = common::Viewer::connect(&hub.ws_url("old", None)).await;
    assert_eq!(viewer.hello["race"], "old-format");
    let frame = viewer.next_frame().await;
    assert_eq!(frame.drivers.len(), 4);
}
