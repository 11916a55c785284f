//! `replay-hub import openf1` against a fixture server started by each test: a real HTTP
//! server on port 0 answering OpenF1 queries over a generated session, with a request log and
//! injected faults. The imported race must pass the hub's validation, play in the hub, and
//! keep its cars on the track outline.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{TestHub, Viewer, PATIENCE};
use openf1_fixture::{
    Fault, FaultAction, Fixture, FixtureServer, FixtureSpec, GAP_CAR, PITTING_CAR, RETIRING_CAR,
};
use replay_hub::config::{Cli, ImportSource, Openf1Args, Subcommand as Sub};
use replay_hub::import::openf1::{import, RaceEventKind};
use replay_hub::race::{DriverStatus, Frame, RaceMeta, RaceReader, TrackStatus};
use serde_json::json;

pub(crate) fn args(url: &str, data_dir: &Path, extra: &[&str]) -> Openf1Args {
    let dir = data_dir.to_str().unwrap();
    let mut argv = vec![
        "replay-hub",
        "import",
        "openf1",
        "--session-key",
        "9590",
        "--api-url",
        url,
        "--data-dir",
        dir,
        "--window-minutes",
        "1",
        "--requests-per-second",
        "500",
        "--backoff-ms",
        "20",
        "--quiet",
        "--cache",
        "none",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().into_command() {
        Sub::Import(a) => match a.source {
            Some(ImportSource::Openf1(o)) => o,
            None => panic!("no openf1 source"),
        },
        other => panic!("expected import, got {other:?}"),
    }
}

pub(crate) fn read_race(path: &Path) -> (RaceMeta, Vec<Frame>) {
    let reader = RaceReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = reader.meta().clone();
    let frames: Vec<Frame> = reader.map(|f| f.expect("every frame valid")).collect();
    assert_eq!(frames.len() as u32, meta.total_frames);
    (meta, frames)
}

/// Distance from a point to the race file's centreline.
fn off_track(meta: &RaceMeta, x: f32, y: f32) -> f32 {
    let t = &meta.track;
    (0..t.centre_x.len() - 1)
        .map(|i| {
            let (ax, ay, bx, by) = (
                t.centre_x[i],
                t.centre_y[i],
                t.centre_x[i + 1],
                t.centre_y[i + 1],
            );
            let (vx, vy) = (bx - ax, by - ay);
            let f =
                (((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy).max(1e-9)).clamp(0.0, 1.0);
            ((x - ax - vx * f).powi(2) + (y - ay - vy * f).powi(2)).sqrt()
        })
        .fold(f32::MAX, f32::min)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_messy_session_that_validates_plays_and_stays_on_track() {
    let fixture = Fixture::generate(&FixtureSpec::small());
    let lap_texts = fixture
        .records("intervals")
        .iter()
        .filter(|r| {
            r["gap_to_leader"]
                .as_str()
                .is_some_and(|s| s.contains("LAP"))
        })
        .count();
    assert!(lap_texts > 0, "the fixture has a lapped car");
    assert!(fixture
        .records("intervals")
        .iter()
        .any(|r| r["interval"].is_null()));
    let faults = vec![
        Fault {
            endpoint: "drivers".into(),
            query_contains: String::new(),
            action: FaultAction::Status {
                status: 429,
                retry_after: Some(1),
            },
            times: 1,
        },
        Fault {
            endpoint: "laps".into(),
            query_contains: String::new(),
            action: FaultAction::Status {
                status: 500,
                retry_after: None,
            },
            times: 1,
        },
    ];
    let server = FixtureServer::start(fixture, faults).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = args(&server.url, dir.path(), &[]);
    let summary = import(&a, Arc::new(AtomicBool::new(false)))
        .await
        .expect("import succeeds");
    let text = summary.to_string();

    // The 429 and the 500 were each answered by a retry.
    let log = server.log();
    let statuses = |endpoint: &str| -> Vec<u16> {
        log.iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.status)
            .collect()
    };
    assert_eq!(statuses("drivers"), [429, 200]);
    assert_eq!(statuses("laps"), [500, 200]);
    assert_eq!(summary.client.retries, 2, "{text}");
    // Location data came per driver, split over time windows, each window once.
    let windows: Vec<&str> = log
        .iter()
        .filter(|r| r.endpoint == "location" && r.query.contains("driver_number=1&"))
        .map(|r| r.query.as_str())
        .collect();
    assert!(windows.len() >= 3, "{windows:?}");
    let mut unique = windows.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), windows.len());
    assert!(log
        .iter()
        .filter(|r| r.endpoint == "location")
        .all(|r| r.query.contains("date>=") && r.query.contains("date<")));

    // What the summary reports.
    assert_eq!(summary.cars, 4, "{text}");
    assert_eq!(summary.data.drivers_left_out, [16], "{text}");
    assert!(summary.data.gaps_filled >= 1, "{text}");
    assert!(summary.data.samples_dropped >= 1, "{text}");
    assert!(
        text.contains("gaps filled") && text.contains("samples dropped"),
        "{text}"
    );

    let out = dir.path().join("monza-2024.race");
    assert_eq!(summary.out, out);
    let (meta, frames) = read_race(&out);
    assert_eq!(meta.total_laps, 3);
    assert!(
        meta.track_status
            .iter()
            .any(|s| s.status == TrackStatus::SafetyCar),
        "{:?}",
        meta.track_status
    );
    assert_eq!(meta.track_status.first().unwrap().start_t, 0.0);
    let codes: Vec<&str> = meta.drivers.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["VER", "PER", "HAM", "RUS"]);
    let lap_m = meta.track.length_m;
    assert!((1900.0..2100.0).contains(&lap_m), "outline length {lap_m}");

    // Events, each at a frame of the race.
    let events = &summary.events;
    assert!(events.iter().all(|e| e.frame < meta.total_frames));
    assert!(events.iter().any(
        |e| matches!(&e.kind, RaceEventKind::PitStop { driver, .. } if driver == codes[PITTING_CAR])
    ));
    assert!(events.iter().any(|e| matches!(&e.kind, RaceEventKind::Retirement { driver, .. } if driver == codes[RETIRING_CAR])));
    assert!(events.iter().any(|e| e.kind
        == RaceEventKind::TrackStatus {
            status: TrackStatus::SafetyCar
        }));
    let lap_starts: Vec<u16> = events
        .iter()
        .filter_map(|e| match e.kind {
            RaceEventKind::LapStart { lap } => Some(lap),
            _ => None,
        })
        .collect();
    assert_eq!(lap_starts, [1, 2, 3]);
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, RaceEventKind::Weather { .. })));
    // The race file carries them as its timeline, which the hub serves at /events.
    use replay_hub::race::EventKind;
    let timeline = &meta.timeline;
    let kinds = |kind: EventKind| timeline.events.iter().filter(move |e| e.kind == kind);
    assert!(kinds(EventKind::Pit).any(|e| e.driver.as_deref() == Some(codes[PITTING_CAR])));
    assert!(kinds(EventKind::Retirement).any(|e| e.driver.as_deref() == Some(codes[RETIRING_CAR])));
    assert!(kinds(EventKind::TrackStatus).any(|e| e.status == Some(TrackStatus::SafetyCar)));
    let laps: Vec<u16> = kinds(EventKind::Lap).filter_map(|e| e.lap).collect();
    assert_eq!(laps, [1, 2, 3]);
    assert!(!timeline.weather.is_empty(), "weather samples");
    assert!(timeline.events.windows(2).all(|w| w[0].frame <= w[1].frame));

    // Every frame: a classification permutation, cars on the outline, no jumps.
    let n = meta.drivers.len();
    let mut seen = [false; 4];
    for (k, f) in frames.iter().enumerate() {
        let mut pos: Vec<u8> = f.drivers.iter().map(|d| d.position).collect();
        pos.sort();
        assert_eq!(pos, (1..=n as u8).collect::<Vec<_>>(), "frame {k}");
        for (i, d) in f.drivers.iter().enumerate() {
            let off = off_track(&meta, d.x, d.y);
            assert!(
                off < 20.0,
                "frame {k}: {} is {off} m off the outline",
                codes[i]
            );
            if k > 0 {
                let p = &frames[k - 1].drivers[i];
                let step = ((d.x - p.x).powi(2) + (d.y - p.y).powi(2)).sqrt();
                assert!(step < 5.0, "frame {k}: {} jumped {step} m", codes[i]);
            }
            assert!(d.gap_to_leader.is_finite() && d.gap_to_leader >= 0.0);
        }
        let d = &f.drivers;
        seen[0] |= d[PITTING_CAR].status == DriverStatus::Pit;
        seen[1] |= d[RETIRING_CAR].status == DriverStatus::Retired;
        seen[2] |= d[GAP_CAR].status == DriverStatus::Finished;
        // The lapped car's "+1 LAP" gap became seconds.
        seen[3] |= d[3].gap_to_leader > 30.0 && d[3].status == DriverStatus::Running;
    }
    assert_eq!(seen, [true; 4], "pit, retired, finished, lapped gap");
    let last = frames.last().unwrap();
    assert_eq!(
        last.drivers[RETIRING_CAR].position as usize, n,
        "retired cars come last"
    );
    assert_eq!(last.drivers[RETIRING_CAR].speed, 0.0);

    // It plays in the hub.
    let hub = TestHub::start_with(|c| c.demo_session = String::new());
    let body = std::fs::read(&out).unwrap();
    let put = hub
        .http()
        .put(hub.url("/api/races/monza-2024"))
        .bearer_auth(&hub.admin_token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let created = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&json!({"race": "monza-2024", "id": "monza", "autoplay": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mut viewer = Viewer::connect(&hub.ws_url("monza", None)).await;
    let hello = viewer.hello.clone();
    assert_eq!(hello["race"], "monza-2024");
    let frame = viewer.next_frame().await;
    assert_eq!(frame.drivers.len(), 4);
    server.stop();
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_replay-hub")
}

#[test]
fn an_interrupted_import_resumes_from_its_download_cache() {
    let fixture = Fixture::generate(&FixtureSpec::small());
    // The third driver's first location window hangs until the import is interrupted.
    let hang = Fault {
        endpoint: "location".into(),
        query_contains: "driver_number=44&".into(),
        action: FaultAction::Hang(Duration::from_secs(30)),
        times: 1,
    };
    let server = FixtureServer::start(fixture, vec![hang]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let run = || {
        Command::new(binary())
            .args([
                "import",
                "openf1",
                "--session-key",
                "9590",
                "--api-url",
                &server.url,
                "--data-dir",
                data,
            ])
            .args([
                "--window-minutes",
                "1",
                "--requests-per-second",
                "500",
                "--quiet",
                "--cache",
                "none",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = run();
    let started = Instant::now();
    while !server.log().iter().any(|r| r.status == 0) {
        assert!(
            started.elapsed() < PATIENCE,
            "the import never reached the hanging request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done_first: Vec<String> = server
        .log()
        .iter()
        .filter(|r| r.status == 200 || r.status == 404)
        .map(|r| format!("{}?{}", r.endpoint, r.query))
        .collect();
    assert!(done_first.len() > 10, "{done_first:?}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".race"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no race is left half-written: {leftovers:?}"
    );

    server.clear_log();
    let output = run().wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("answered from the download cache"),
        "{stdout}"
    );
    let second: Vec<String> = server
        .log()
        .iter()
        .map(|r| format!("{}?{}", r.endpoint, r.query))
        .collect();
    assert!(!second.is_empty());
    for done in &done_first {
        assert!(!second.contains(done), "{done} was downloaded twice");
    }
    assert!(
        second.iter().any(|q| q.contains("driver_number=44&")),
        "the interrupted request is redone"
    );
    let (meta, _) = read_race(&dir.path().join("monza-2024.race"));
    assert_eq!(meta.drivers.len(), 4);
}

#[test]
fn help_documents_every_option_and_file_import_still_parses() {
    let output = Command::new(binary())
        .args(["import", "openf1", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--session-key",
        "--year",
        "--country",
        "--session",
        "--list",
        "--id",
        "--out",
        "--data-dir",
        "--download-dir",
        "--api-url",
        "--requests-per-second",
        "--retries",
        "--backoff-ms",
        "--timeout-secs",
        "--max-response-bytes",
        "--window-minutes",
        "--max-minutes",
        "--quiet",
        "--cache",
        "REPLAY_HUB_OPENF1_URL",
        "https://api.openf1.org/v1",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    match Cli::try_parse_from(["replay-hub", "import", "race.race", "--cache", "none"])
        .unwrap()
        .into_command()
    {
        Sub::Import(a) => {
            assert!(a.source.is_none());
            assert_eq!(a.file.unwrap(), Path::new("race.race"));
        }
        other => panic!("expected import, got {other:?}"),
    }
    assert!(
        Cli::try_parse_from(["replay-hub", "import"]).is_err(),
        "a file or a source is required"
    );
}
