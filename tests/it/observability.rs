//! Metrics and dashboards against the real thing: `promtool check metrics` on the hub's
//! output, and a real Prometheus scraping a hub under a small load that must answer every PromQL
//! expression of the Grafana dashboard with data. Needs `prometheus` and `promtool` (the Debian
//! package `prometheus`, which the test script installs).

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, KillOnDrop, TestHub, Viewer};
use serde_json::{json, Value};

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: install the Debian package `prometheus` (scripts/test does)"
    );
}

/// A hub with some of everything: viewers, commands (good, forbidden, bad), a cache miss.
async fn hub_under_load() -> (TestHub, Vec<tokio::task::JoinHandle<()>>) {
    let hub = TestHub::start();
    let token = hub.demo_token.clone().unwrap();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut viewer = Viewer::connect(&hub.ws_url("demo", None)).await;
        readers.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            while viewer.ws.next().await.is_some() {}
        }));
    }
    let mut controller = Viewer::connect(&hub.ws_url("demo", Some(&token))).await;
    for command in [
        json!({"cmd": "speed", "value": 2}),
        json!({"cmd": "seek", "frame": 100}),
        json!({"cmd": "play"}),
    ] {
        controller.send_json(command).await;
    }
    controller.send_text("{oops").await;
    let mut watcher = Viewer::connect(&hub.ws_url("demo", None)).await;
    watcher.send_json(json!({"cmd": "pause"})).await;
    assert_eq!(watcher.next_of_type("error").await["code"], "forbidden");
    // Keep the controller and watcher connected while Prometheus scrapes.
    readers.push(tokio::spawn(async move {
        use futures_util::StreamExt;
        let _watcher = watcher;
        while controller.ws.next().await.is_some() {}
    }));
    (hub, readers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool() {
    require("promtool");
    let (hub, _readers) = hub_under_load().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = hub.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for name in [
        "replay_hub_ws_viewers 10",
        "replay_hub_session_viewers{session=\"demo\"} 10",
        "replay_hub_hub_sessions 1",
        "replay_hub_session_commands_total{kind=\"seek\",result=\"ok\"} 1",
        "replay_hub_session_commands_total{kind=\"pause\",result=\"forbidden\"} 1",
        "replay_hub_session_commands_total{kind=\"invalid\",result=\"bad_json\"} 1",
        "replay_hub_cache_requests_total{backend=\"dir\",result=\"miss\"} 1",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `expr` in the dashboard JSON (targets of panels, nested rows included).
fn dashboard_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| dashboard_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Grafana's variables, as a dashboard with "All" selected over the last few seconds would
/// send them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__range", "1m")
        .replace("$instance", ".*")
        .replace("$session", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    require("prometheus");
    let (hub, _readers) = hub_under_load().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: replay-hub\n    static_configs:\n      - targets: ['{addr}']\n",
            rules = std::fs::canonicalize("dashboards/alerts.yml").unwrap().display(),
            addr = hub.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(prometheus);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let query = |expr: String| {
        let http = http.clone();
        let url = format!("{base}/api/v1/query");
        async move {
            let response = http.get(url).query(&[("query", &expr)]).send().await.ok()?;
            response.json::<Value>().await.ok()
        }
    };
    // Enough scrapes for every rate() window to hold two samples.
    eventually("Prometheus has scraped the hub a few times", || {
        let q = query("count_over_time(up{job=\"replay-hub\"}[1m])".into());
        async move {
            let v = q.await?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n >= 6.0).then_some(())
        }
    })
    .await;

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("dashboards/replay-hub.json").unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    // The template variables' label_values(metric, label) need their metric to exist too.
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            let inner = definition
                .trim_start_matches("label_values(")
                .rsplit_once(',')
                .unwrap()
                .0;
            exprs.push(inner.to_owned());
        }
    }
    assert!(exprs.len() >= 20, "found {} expressions", exprs.len());
    let mut failures = Vec::new();
    for expr in &exprs {
        let answer = query(substitute(expr)).await;
        match answer {
            Some(v) if v["status"] == "success" => {
                if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                    failures.push(format!("no series: {expr}"));
                }
            }
            Some(v) => failures.push(format!("error {}: {expr}", v["error"])),
            None => failures.push(format!("no answer: {expr}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The alert rules loaded, and none fires for a healthy hub.
    let rules = query("ALERTS".into()).await.unwrap();
    assert_eq!(rules["status"], "success");
    assert_eq!(
        rules["data"]["result"],
        json!([]),
        "no alert for a healthy hub"
    );
}
