//! Race files put into (or taken out of) a running hub's data directory: picked up by the
//! watcher without a restart, or at once with `POST /api/races/rescan`.

use crate::common;

use common::{eventually, TestHub};
use replay_hub::race::{generate, write_race, GenParams};
use serde_json::Value;

/// Writes a small race `id` into `dir` the way `replay-hub generate` does (a temporary file,
/// then a rename), or in place when `in_place`, like `cp`.
fn write_race_file(dir: &std::path::Path, id: &str, in_place: bool) -> std::path::PathBuf {
    let params = GenParams {
        laps: 2,
        drivers: 4,
        seed: 3,
        id: id.into(),
        name: format!("{id} Grand Prix"),
    };
    let (meta, frames) = generate(&params, |_, _| {}).unwrap();
    let path = dir.join(format!("{id}.race"));
    let target = if in_place {
        path.clone()
    } else {
        dir.join(format!("{id}.race.tmp"))
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&target).unwrap());
    write_race(&mut out, &meta, frames).unwrap();
    std::io::Write::flush(&mut out).unwrap();
    drop(out);
    if !in_place {
        std::fs::rename(&target, &path).unwrap();
    }
    path
}

async fn race_ids(hub: &TestHub) -> Vec<String> {
    let races: Vec<Value> = hub.get("/api/races").await.json().await.unwrap();
    races
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_race_file_dropped_into_the_data_dir_appears_without_a_restart() {
    // The periodic fallback off: only the file-system notification can find it.
    let hub = TestHub::start_with(|c| c.rescan_interval_ms = 0);
    let missing = hub.get("/api/races/gp-new").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("GET /api/races") && message.contains("data directory"),
        "{message}"
    );

    write_race_file(hub.dir.path(), "gp-new", false);
    eventually("the new race to be listed", || async {
        race_ids(&hub)
            .await
            .contains(&"gp-new".to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(hub.get("/api/races/gp-new").await.status(), 200);
    let created = hub
        .http()
        .post(hub.url("/api/sessions"))
        .bearer_auth(&hub.admin_token)
        .json(&serde_json::json!({"race": "gp-new", "id": "fresh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Copied in place, as `cp` does, it is found too once written.
    write_race_file(hub.dir.path(), "gp-copied", true);
    eventually("the copied race to be listed", || async {
        race_ids(&hub)
            .await
            .contains(&"gp-copied".to_owned())
            .then_some(())
    })
    .await;

    // A removed file that was never loaded (so is not in the cache) leaves the catalogue.
    std::fs::remove_file(hub.dir.path().join("gp-copied.race")).unwrap();
    eventually("the removed race to go", || async {
        (!race_ids(&hub).await.contains(&"gp-copied".to_owned())).then_some(())
    })
    .await;
    assert_eq!(hub.get("/api/races/gp-copied").await.status(), 404);
    // One that was loaded is served on from the cache, and its session plays on.
    std::fs::remove_file(hub.dir.path().join("gp-new.race")).unwrap();
    let report: Value = hub
        .http()
        .post(hub.url("/api/races/rescan"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["added"], serde_json::json!([]), "{report}");
    assert_eq!(hub.session_info("fresh").await.race, "gp-new");
}

#[tokio::test(flavor = "multi_thread")]
async fn rescan_is_for_admins_and_lists_the_directory_at_once() {
    let hub = TestHub::start_with(|c| c.rescan_interval_ms = 0);
    let anonymous = hub
        .http()
        .post(hub.url("/api/races/rescan"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    write_race_file(hub.dir.path(), "gp-rescan", false);
    let response = hub
        .http()
        .post(hub.url("/api/races/rescan"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["races"], 2, "{report}");
    // Listed as soon as the rescan has answered, whether it or the watcher saw it first.
    assert!(race_ids(&hub).await.contains(&"gp-rescan".to_owned()));

    // Nothing changed since: nothing to report.
    let again: Value = hub
        .http()
        .post(hub.url("/api/races/rescan"))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["added"], serde_json::json!([]), "{again}");
    assert_eq!(again["removed"], serde_json::json!([]), "{again}");
}
