//! Shared test harness: starts the real hub on port 0 in its own actix system thread and talks to
//! it with real HTTP (reqwest) and WebSocket (tokio-tungstenite) clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::Addr;
use futures_util::{SinkExt, StreamExt};
use replay_hub::config::Config;
use replay_hub::encode::{decode_frame, decode_window, DecodedFrame, DecodedWindow};
use replay_hub::hub::Hub;
use replay_hub::race::{generate, write_race, GenParams};
use replay_hub::session::SessionInfo;
use replay_hub::App;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Patience for anything a test waits on; generous because CI machines are shared.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A small race file generated once per test binary: 2 laps, 20 drivers. It lives under
/// `target/tmp` (not the system's temporary directory) under one fixed name, replaced whole
/// by each test binary, so runs leave nothing behind that accumulates.
pub fn race_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("test-race.race");
        let tmp = dir.join(format!("test-race.race.{}.tmp", std::process::id()));
        let params = GenParams {
            laps: 2,
            drivers: 20,
            seed: 7,
            id: "test-race".into(),
            name: "Test Grand Prix".into(),
        };
        let (meta, frames) = generate(&params, |_, _| {}).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        write_race(&mut out, &meta, frames).unwrap();
        std::io::Write::flush(&mut out).unwrap();
        drop(out);
        // Atomic: another test binary may be reading the previous copy.
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
}

pub struct TestHub {
    pub addr: SocketAddr,
    pub admin_token: String,
    pub hub: Addr<Hub>,
    pub demo_token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestHub {
    /// A hub over the test race with a "demo" session playing.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        // Logs only when asked for: RUST_LOG=debug cargo test -- --nocapture
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(race_file(), dir.path().join("test-race.race")).unwrap();
        let mut config = Config::for_tests(dir.path());
        config.admin_token = Some("test-admin-token".into());
        tune(&mut config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = App::build(config).await.expect("hub starts");
                let demo_token = app.demo().map(|d| d.control_token.clone());
                ready_tx
                    .send((
                        app.addr(),
                        app.admin_token().to_owned(),
                        app.hub(),
                        demo_token,
                    ))
                    .unwrap();
                app.run_until(async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let (addr, admin_token, hub, demo_token) =
            ready_rx.recv_timeout(PATIENCE).expect("hub ready");
        Self {
            addr,
            admin_token,
            hub,
            demo_token,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, session: &str, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws/sessions/{session}?token={t}", self.addr),
            None => format!("ws://{}/ws/sessions/{session}", self.addr),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Creates a session with the admin token; returns the 201 body.
    pub async fn create_session(&self, id: &str, autoplay: bool) -> Value {
        let response = self
            .http
            .post(self.url("/api/sessions"))
            .bearer_auth(&self.admin_token)
            .json(&json!({"race": "test-race", "id": id, "autoplay": autoplay}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "create session {id}");
        response.json().await.unwrap()
    }

    pub async fn session_info(&self, id: &str) -> SessionInfo {
        let response = self.get(&format!("/api/sessions/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Stops the hub the way SIGTERM does and waits for its thread.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("hub thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

/// What a viewer received, one WebSocket message at a time.
#[derive(Debug)]
pub enum Received {
    Frame(DecodedFrame),
    Json(Value),
    /// A look-ahead window.
    Window(DecodedWindow),
    Closed(Option<CloseFrame>),
}

pub struct Viewer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

impl Viewer {
    /// Connects and reads the hello message.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let mut viewer = Self {
            ws,
            hello: Value::Null,
        };
        match viewer.next().await {
            Received::Json(hello) if hello["type"] == "hello" => viewer.hello = hello,
            other => panic!("expected hello, got {other:?}"),
        }
        viewer
    }

    /// The next message, decoded; panics after [`PATIENCE`] without one.
    pub async fn next(&mut self) -> Received {
        // One deadline for the whole wait: pings in between do not extend it.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a message in time");
            match message {
                None => return Received::Closed(None),
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(Message::Binary(bytes))) => {
                    if bytes.first() == Some(&replay_hub::window_codec::MARKER) {
                        let limits = replay_hub::window_codec::DecodeLimits::default();
                        let window = replay_hub::window_codec::decode(&bytes, &limits)
                            .expect("a compact window");
                        return Received::Window(window);
                    }
                    if let Ok(window) = decode_window(&bytes) {
                        return Received::Window(window);
                    }
                    let frame = decode_frame(&bytes).expect("a wire frame");
                    return Received::Frame(frame);
                }
                Some(Ok(Message::Text(text))) => {
                    return Received::Json(serde_json::from_str(&text).expect("JSON text"))
                }
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON message, skipping frames.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Received::Json(v) => return v,
                Received::Frame(..) | Received::Window(_) => continue,
                Received::Closed(c) => panic!("closed while waiting for JSON: {c:?}"),
            }
        }
    }

    /// The next JSON message of `type`, skipping frames and other messages.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next frame, skipping JSON messages.
    pub async fn next_frame(&mut self) -> DecodedFrame {
        loop {
            match self.next().await {
                Received::Frame(f) => return f,
                Received::Json(_) | Received::Window(_) => continue,
                Received::Closed(c) => panic!("closed while waiting for a frame: {c:?}"),
            }
        }
    }

    /// The next look-ahead window, skipping JSON messages.
    pub async fn next_window(&mut self) -> DecodedWindow {
        loop {
            match self.next().await {
                Received::Window(w) => return w,
                Received::Json(_) => continue,
                other => panic!("expected a window, got {other:?}"),
            }
        }
    }

    /// Reads until the server closes; returns the close frame's code (None without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("closed in time")
            {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }
}

/// Connects without ever reading, with a tiny receive buffer so the server notices soon.
pub async fn connect_non_reader(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws
}

/// Polls `check` every 50 ms until it returns `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shared Redis on this machine; tests use it with a unique key prefix each.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A key prefix no other test (or run) uses; its keys are deleted when dropped.
pub struct Prefix(pub String);

impl Prefix {
    pub fn new(test: &str) -> Self {
        Self(format!(
            "rh-test-{test}-{}",
            replay_hub::ids::random_token(4)
        ))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(REDIS_URL) {
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.0))
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        }
    }
}

/// Config for a hub whose cache is the Redis at `url`, under key prefix `prefix`.
pub fn redis_cache(url: &str, prefix: &str) -> impl Fn(&mut Config) + Clone {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    move |c: &mut Config| {
        c.cache.cache = Some(replay_hub::cache::CacheSpec::Redis(url.clone()));
        c.cache.cache_prefix = prefix.clone();
    }
}

/// A synchronous connection to the shared Redis, to inspect or damage what the hub wrote.
pub fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .expect("the test Redis answers")
}

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` that a test may stop, stall or kill.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Self {
            port,
            child: None,
            dir,
        };
        redis.restart();
        redis
    }

    /// (Re)starts the server on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        while redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "redis-server started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary as a separate process (`serve` on a free port), killed when dropped.
pub struct HubProcess {
    pub process: KillOnDrop,
    /// host:port it listens on.
    pub addr: String,
}

impl HubProcess {
    /// `args` follow `serve --bind 127.0.0.1:0`.
    pub fn spawn(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_replay-hub"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("the hub prints its address").unwrap();
            if let Some(addr) = line.strip_prefix("replay-hub listening on http://") {
                break addr.to_owned();
            }
        };
        // Keep reading so the hub never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            process: KillOnDrop(child),
            addr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Creates session `id` over the test race with `admin_token`; returns the 201 body.
    pub async fn create_session(&self, admin_token: &str, id: &str, autoplay: bool) -> Value {
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/sessions", self.addr))
            .bearer_auth(admin_token)
            .json(&json!({"race": "test-race", "id": id, "autoplay": autoplay}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "create session {id}");
        response.json().await.unwrap()
    }
}
