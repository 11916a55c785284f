//! The default demo, as `cargo run --release` starts it: a hub with an empty data directory
//! and no network generates its demo race on a real circuit (Monza, embedded in the binary),
//! serves that outline, and its cars race on it.

use crate::common;

use common::{TestHub, Viewer};
use replay_hub::race::circuit;
use replay_hub::race::DriverStatus;
use serde_json::Value;

/// Distance from `(x, y)` to the nearest point of a polyline sampled every metre or so.
fn off_outline(points: &[[f64; 2]], x: f64, y: f64) -> f64 {
    points
        .iter()
        .map(|p| (p[0] - x).hypot(p[1] - y))
        .fold(f64::MAX, f64::min)
}

#[tokio::test]
async fn the_default_demo_plays_on_a_real_circuit() {
    let empty = tempfile::tempdir().unwrap();
    let data_dir = empty.path().to_owned();
    let hub = TestHub::start_with(move |config| {
        config.data_dir = data_dir;
    });
    assert!(
        empty.path().join("demo.race").exists(),
        "the demo race was generated"
    );

    let monza = circuit::load(circuit::DEFAULT_CIRCUIT).unwrap();
    let meta: Value = hub.get("/api/races/demo").await.json().await.unwrap();
    assert!(
        meta["name"].as_str().unwrap().contains("Monza"),
        "{}",
        meta["name"]
    );
    let track = &meta["track"];
    let length = track["length_m"].as_f64().unwrap();
    assert!((length - monza.length).abs() < 0.01, "{length} m");
    assert!(
        (length - 5793.0).abs() / 5793.0 < 0.02,
        "Monza's real length"
    );
    let xs = track["centre_x"].as_array().unwrap();
    let ys = track["centre_y"].as_array().unwrap();
    assert!(xs.len() > 900, "{} points", xs.len());
    // Every point of the served centreline lies on the real outline.
    for (x, y) in xs.iter().zip(ys) {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        let off = off_outline(&monza.points, x, y);
        assert!(off < 1.0, "({x}, {y}) is {off} m off the outline");
    }

    // The demo session plays it: every car is on the track (or beside it, in the pit lane or
    // stopped in the run-off) in every frame a viewer receives.
    let token = hub.demo_token.clone().expect("a demo session");
    let mut control = Viewer::connect(&hub.ws_url("demo", Some(&token))).await;
    control
        .send_json(serde_json::json!({"cmd": "seek", "frame": 1500}))
        .await;
    control.next_of_type("state").await;
    let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
    let mut moving = 0;
    for _ in 0..50 {
        let frame = viewer.next_frame().await;
        for d in &frame.drivers {
            let off = off_outline(&monza.points, f64::from(d.x), f64::from(d.y));
            assert!(off < 16.0, "frame {}: {d:?} is {off} m off", frame.i);
            if d.status == DriverStatus::Running && d.speed > 50.0 {
                moving += 1;
            }
        }
    }
    assert!(moving > 0, "cars are racing");

    let events: Value = hub
        .get("/api/races/demo/events")
        .await
        .json()
        .await
        .unwrap();
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "lap" && e["lap"] == 2));
}
