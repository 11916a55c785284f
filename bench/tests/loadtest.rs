//! The `loadtest` binary as its users meet it, against a hub started in this process: a run that
//! could not do what was asked (a dead port, an unknown session, a paused session) fails with a
//! message that says why, and the same run against a playing session succeeds.

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use replay_hub::config::Config;
use replay_hub::App;

const PATIENCE: Duration = Duration::from_secs(20);

/// A hub on a free loopback port with its generated demo race and demo session, stopped on drop.
struct Hub {
    addr: SocketAddr,
    admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Hub {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path());
        config.admin_token = Some("bench-admin-token".into());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = App::build(config).await.expect("hub starts");
                ready_tx
                    .send((app.addr(), app.admin_token().to_owned()))
                    .unwrap();
                app.run_until(async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let (addr, admin_token) = ready_rx.recv_timeout(PATIENCE).expect("hub ready");
        Self {
            addr,
            admin_token,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn ws_url(&self, session: &str) -> String {
        format!("ws://{}/ws/sessions/{session}", self.addr)
    }

    /// Creates a session over the demo race that does not play.
    fn create_paused_session(&self, id: &str) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let status = runtime.block_on(async {
            reqwest::Client::new()
                .post(format!("http://{}/api/sessions", self.addr))
                .bearer_auth(&self.admin_token)
                .json(&serde_json::json!({"race": "demo", "id": id, "autoplay": false}))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, 201, "create session {id}");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the load tool to completion (it must exit by itself) with three viewers for a second.
fn loadtest(url: &str, extra: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--url", url, "--viewers", "3", "--seconds", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(PATIENCE * 3)
        .expect("the load tool exits by itself")
        .unwrap()
}

#[test]
fn loadtest_fails_on_a_dead_port_and_an_unknown_session() {
    let dead = format!("ws://127.0.0.1:{}/ws/sessions/demo", free_port());
    let output = loadtest(&dead, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: no viewer could connect"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("1/1 s"),
        "no measurement without viewers: {stderr}"
    );

    let hub = Hub::start();
    let output = loadtest(&hub.ws_url("no-such-session"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no viewer could connect") && stderr.contains("404"),
        "{stderr}"
    );
}

#[test]
fn loadtest_fails_and_warns_on_a_paused_session_and_reports_a_playing_one() {
    let hub = Hub::start();
    hub.create_paused_session("still");
    let output = loadtest(&hub.ws_url("still"), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("warning: the session is paused"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: loadtest: no frames were received"),
        "{stderr}"
    );

    // The same run against the playing demo session succeeds, with the table on stdout and the
    // JSON report written.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = loadtest(&hub.ws_url("demo"), &["--json", json.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["connected"], 3, "{report}");
    assert!(report["frames_received"].as_u64() > Some(0), "{report}");
    assert!(!output.stdout.is_empty());
}

#[test]
fn loadtest_is_a_program_of_its_own() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(
        help.contains("Usage: loadtest") && help.contains("--server-pid"),
        "{help}"
    );
}
