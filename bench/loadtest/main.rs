//! `loadtest` (package replay-hub-bench): opens many real WebSocket viewers against a running hub (and, if asked,
//! some that never read) and reports what the readers received: frames per second per viewer,
//! gaps between frames, how far apart viewers got the same frame, bandwidth, and, given the
//! server's pid, its CPU per delivered frame and its resident memory. Figures in BENCHMARKS.md.
//!
//! In look-ahead mode each viewer also does what a real client does: it estimates its offset to
//! the server clock with rounds of time requests (the best of each round kept, as the web
//! viewer's `clock.js` does: once on connecting, again once every viewer is connected, then every
//! 30 s) and works out when it would show each frame it got; gaps and spreads are then those of
//! display times, and frames that arrive too late are counted. Display times come from the
//! session's timeline and the measured offset only, never from when a window arrived, so a hub
//! whose clock or timeline is off shows up as spread and late frames.
//!
//! A run that could not do what was asked fails: no viewer connected ([`LoadtestError`], before
//! the measurement), or fewer viewers or no frames ([`Report::shortfall`], after it); a paused
//! or ended session, or one the server closes, is warned about on stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use replay_hub::encode::{frame_index, window_indices};
use replay_hub::feed::Mode;
use replay_hub::window_codec::{self, WindowEncoding};

mod args;

use args::LoadtestArgs;

/// Runs the load test: the table on stdout (and the JSON report if asked for); a run that could
/// not do what was asked is one `error:` line on stderr and exit code 1.
fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    match run_cli(LoadtestArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli(args: LoadtestArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    let json = args.json.clone();
    let report = runtime.block_on(run(args)).map_err(|e| e.to_string())?;
    println!("{}", report.table());
    if let Some(path) = json {
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    match report.shortfall() {
        None => Ok(()),
        Some(shortfall) => Err(format!("loadtest: {shortfall}")),
    }
}

/// Per-viewer counters, written by its reader task and sampled by the reporter.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    out_of_order: AtomicU64,
    /// Look-ahead: frames that arrived after the moment they were due on screen.
    late: AtomicU64,
    /// (frame index, µs since the window opened) of every frame received in the window: when it
    /// arrived (push) or when its viewer would show it (look-ahead).
    arrivals: Mutex<Vec<(u32, u32)>>,
    /// Look-ahead: when the round of time requests behind the clock estimate in force started,
    /// in µs on the run's [`Clock`] (0: no estimate yet)…
    synced_from_us: AtomicU64,
    /// …and the round trip, in µs, of the answer it kept.
    sync_rtt_us: AtomicU64,
}

/// The measurement window, shared by every reader: they record arrivals only while it is open.
struct Window {
    open: AtomicBool,
    start: Mutex<Option<Instant>>,
    clock: Clock,
    seen: Seen,
    /// Look-ahead: from when viewers sync their clocks again, once all are connected; viewer `n`
    /// starts its round at this instant plus its share of `sync_spread`.
    syncs: tokio::sync::watch::Sender<Option<Instant>>,
    sync_spread: Duration,
    viewers: usize,
}

impl Window {
    /// When viewer `n` starts its clock sync, after the moment the syncs start.
    fn sync_delay(&self, n: usize) -> Duration {
        self.sync_spread
            .mul_f64(n as f64 / self.viewers.max(1) as f64)
    }
}

/// What viewers learnt of the session itself, for warnings: set by any reader.
#[derive(Default)]
struct Seen {
    /// A hello said the session was paused (before its last frame).
    paused: AtomicBool,
    /// A hello said the session was paused at its last frame.
    ended: AtomicBool,
    /// The first close the server sent, as "code reason".
    closed: Mutex<Option<String>>,
}

impl Seen {
    /// Notes what a text message says about the session.
    fn note_text(&self, value: &serde_json::Value) {
        if value["type"] != "hello" || value["state"]["playing"] != false {
            return;
        }
        let frame = value["state"]["frame"].as_u64().unwrap_or(0);
        let total = value["total_frames"].as_u64().unwrap_or(u64::MAX);
        if frame + 1 >= total {
            self.ended.store(true, Ordering::Relaxed);
        } else {
            self.paused.store(true, Ordering::Relaxed);
        }
    }

    fn note_close(&self, frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if closed.is_none() {
            *closed = Some(match frame {
                Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                None => "without a close frame".into(),
            });
        }
    }

    /// Warnings for the operator, once the viewers have had their hello.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.ended.load(Ordering::Relaxed) {
            warnings.push(
                "the session has ended (paused at its last frame): seek or restart it to get frames"
                    .to_owned(),
            );
        } else if self.paused.load(Ordering::Relaxed) {
            warnings.push(
                "the session is paused: no new frames arrive until a controller plays it"
                    .to_owned(),
            );
        }
        if let Some(close) = &*self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
            warnings.push(format!("the server closed viewers: {close}"));
        }
        warnings
    }
}

/// Why a load test could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("--source-addrs {0} needs a hub on a loopback IPv4 address, not {1}")]
    SourceAddrs(u8, String),
    #[error("no viewer could connect to {url} (0 of {requested}): {reason}")]
    NoViewer {
        url: String,
        requested: usize,
        reason: String,
    },
}

/// Wall-clock ms read through one monotonic clock, the same for every viewer of the run.
#[derive(Clone, Copy)]
struct Clock {
    base: Instant,
    base_ms: f64,
}

impl Clock {
    fn new() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        Self {
            base: Instant::now(),
            base_ms,
        }
    }

    fn now_ms(&self) -> f64 {
        self.ms_at(Instant::now())
    }

    fn us_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }

    fn ms_at(&self, at: Instant) -> f64 {
        self.base_ms + at.saturating_duration_since(self.base).as_secs_f64() * 1000.0
    }
}

/// The figures of one run, printed as a table and optionally written as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub viewers: usize,
    pub connected: usize,
    pub connect_errors: usize,
    pub seconds: f64,
    pub fps_p50: f64,
    pub fps_min: f64,
    pub bytes_per_second: f64,
    /// Bytes on the wire (WebSocket payloads) per frame of content received.
    pub bytes_per_frame: f64,
    pub out_of_order: u64,
    /// Time between consecutive frames at one viewer, in ms.
    pub gap_p50_ms: f64,
    pub gap_p99_ms: f64,
    pub gap_max_ms: f64,
    /// For each frame index, the spread of its arrival across viewers, in ms.
    pub sync_spread_p50_ms: f64,
    pub sync_spread_p99_ms: f64,
    pub sync_spread_max_ms: f64,
    /// Look-ahead: the same spread among the viewers whose clock estimate came from a round trip
    /// of at most 40 ms (good to half a frame), and how many they are: what the hub does, less
    /// what a starved load tool does to its own clock estimates.
    pub exact_clock_viewers: usize,
    pub exact_clock_spread_p99_ms: f64,
    /// Look-ahead: frames that arrived after their display time.
    pub late_frames: u64,
    /// Look-ahead: viewers whose clock was synced again once every viewer had connected, before
    /// the measurement (the others measure with the estimate they made on connecting).
    pub clock_resynced: usize,
    /// Look-ahead: the round trip of the time answer behind each viewer's clock estimate at the
    /// end (its offset is good to half of it), in ms.
    pub clock_rtt_p50_ms: f64,
    pub clock_rtt_p99_ms: f64,
    pub clock_rtt_max_ms: f64,
    /// Frames every reading viewer received during the window, added up.
    pub frames_received: u64,
    /// What was wrong with the session (paused, ended, closed by the server).
    pub warnings: Vec<String>,
    pub stalled: usize,
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_end_kib: Option<u64>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_frame: Option<f64>,
}

pub async fn run(mut args: LoadtestArgs) -> Result<Report, LoadtestError> {
    if args.mode == Mode::Lookahead && !args.url.contains("mode=") {
        let sep = if args.url.contains('?') { '&' } else { '?' };
        args.url = format!("{}{sep}mode=lookahead", args.url);
    }
    if args.mode == Mode::Lookahead
        && args.enc != WindowEncoding::Msgpack
        && !args.url.contains("enc=")
    {
        args.url = format!("{}&enc={}", args.url, args.enc.as_str());
    }
    let sources = Sources::new(&args.url, args.source_addrs).await?;
    // One descriptor per viewer and a few to spare: raise the soft limit (and, where allowed,
    // the hard one) rather than fail after thousands of connections.
    let wanted = (args.viewers + args.stalled + 64) as u64;
    match replay_hub::fd_limit::raise(wanted) {
        Ok(limit) if limit < wanted => eprintln!(
            "warning: only {limit} file descriptors may be open (asked for {wanted}): some viewers will fail to connect"
        ),
        Ok(_) => {}
        Err(err) => eprintln!("warning: could not raise the file-descriptor limit: {err}"),
    }
    let mut counters = Vec::with_capacity(args.viewers);
    let mut connect_errors = 0;
    let started = Instant::now();
    let window = Arc::new(Window {
        open: AtomicBool::new(false),
        start: Mutex::new(None),
        clock: Clock::new(),
        seen: Seen::default(),
        syncs: tokio::sync::watch::Sender::new(None),
        sync_spread: sync_spread(args.viewers),
        viewers: args.viewers,
    });
    let mut first_error = None;
    // Viewers that connect and never read: the hub must not let them slow the others down.
    let mut stalled = Vec::with_capacity(args.stalled);
    for _ in 0..args.stalled {
        match connect_stalled(&args.url).await {
            Ok(ws) => stalled.push(ws),
            Err(err) => {
                connect_errors += 1;
                if connect_errors <= 3 {
                    eprintln!("stalled viewer failed to connect: {err}");
                }
                first_error.get_or_insert(err);
            }
        }
    }
    // Connect in small batches so the hub's accept queue is not flooded.
    for batch in (0..args.viewers).collect::<Vec<_>>().chunks(50) {
        let attempts = batch.iter().map(|&n| sources.connect(&args.url, n));
        for (&n, result) in batch
            .iter()
            .zip(futures_util::future::join_all(attempts).await)
        {
            match result {
                Ok(ws) => {
                    let c = Arc::new(Counters::default());
                    match args.mode {
                        Mode::Push => tokio::spawn(read(ws, c.clone(), window.clone())),
                        Mode::Lookahead => {
                            tokio::spawn(read_windows(ws, c.clone(), window.clone(), n))
                        }
                    };
                    counters.push(c);
                }
                Err(err) => {
                    connect_errors += 1;
                    if connect_errors <= 3 {
                        eprintln!("connect failed: {err}");
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        eprint!("\rconnected {}/{}", counters.len(), args.viewers);
        // A hub that refuses the first batch refuses the rest: no point in trying them all.
        if counters.is_empty() && stalled.is_empty() {
            break;
        }
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    if counters.is_empty() && stalled.is_empty() && args.viewers + args.stalled > 0 {
        return Err(LoadtestError::NoViewer {
            url: args.url.clone(),
            requested: args.viewers + args.stalled,
            reason: first_error.unwrap_or_else(|| "no attempt succeeded".into()),
        });
    }
    // Let every viewer settle past its hello before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut warnings = window.seen.warnings();
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let clock_resynced = match args.mode {
        Mode::Lookahead => resync_clocks(&window, &counters).await,
        Mode::Push => 0,
    };

    let snapshot = |cs: &[Arc<Counters>]| -> Vec<(u64, u64)> {
        cs.iter()
            .map(|c| {
                (
                    c.frames.load(Ordering::Relaxed),
                    c.bytes.load(Ordering::Relaxed),
                )
            })
            .collect()
    };
    let cpu_start = args.server_pid.and_then(process_cpu_seconds);
    let rss_start = args.server_pid.and_then(process_rss_kib);
    let before = snapshot(&counters);
    let opened = Instant::now();
    *window.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(opened);
    window.open.store(true, Ordering::Release);
    let seconds = args.seconds.max(1);
    for s in 1..=seconds {
        tokio::time::sleep_until((opened + Duration::from_secs(s)).into()).await;
        let frames: u64 = counters
            .iter()
            .map(|c| c.frames.load(Ordering::Relaxed))
            .sum();
        eprint!("\r{s}/{seconds} s, {frames} frames received");
    }
    eprintln!();
    window.open.store(false, Ordering::Release);
    let elapsed = opened.elapsed().as_secs_f64();
    let after = snapshot(&counters);
    let arrivals: Vec<Vec<(u32, u32)>> = counters
        .iter()
        .map(|c| std::mem::take(&mut *c.arrivals.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let (gaps, spreads) = (gaps_ms(&arrivals), spreads_ms(&arrivals));
    let exact: Vec<Vec<(u32, u32)>> = counters
        .iter()
        .zip(&arrivals)
        .filter(|(c, _)| {
            c.synced_from_us.load(Ordering::Relaxed) > 0
                && c.sync_rtt_us.load(Ordering::Relaxed) <= EXACT_RTT_US
        })
        .map(|(_, a)| a.clone())
        .collect();
    let exact_spreads = spreads_ms(&exact);
    let mut clock_rtts: Vec<f64> = counters
        .iter()
        .filter(|c| c.synced_from_us.load(Ordering::Relaxed) > 0)
        .map(|c| c.sync_rtt_us.load(Ordering::Relaxed) as f64 / 1000.0)
        .collect();
    clock_rtts.sort_by(f64::total_cmp);
    drop(stalled);
    let cpu_end = args.server_pid.and_then(process_cpu_seconds);
    let rss_end = args.server_pid.and_then(process_rss_kib);

    let mut fps: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) as f64 / elapsed)
        .collect();
    fps.sort_by(f64::total_cmp);
    let delivered: u64 = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).sum();
    let bytes: u64 = before.iter().zip(&after).map(|(b, a)| a.1 - b.1).sum();
    let cpu = cpu_start.zip(cpu_end).map(|(s, e)| e - s);
    for warning in window.seen.warnings() {
        if !warnings.contains(&warning) {
            eprintln!("warning: {warning}");
            warnings.push(warning);
        }
    }
    Ok(Report {
        mode: args.mode.as_str(),
        viewers: args.viewers,
        connected: counters.len(),
        connect_errors,
        seconds: elapsed,
        fps_p50: fps.get(fps.len() / 2).copied().unwrap_or(0.0),
        fps_min: fps.first().copied().unwrap_or(0.0),
        bytes_per_second: bytes as f64 / elapsed,
        bytes_per_frame: if delivered > 0 {
            bytes as f64 / delivered as f64
        } else {
            0.0
        },
        out_of_order: counters
            .iter()
            .map(|c| c.out_of_order.load(Ordering::Relaxed))
            .sum(),
        gap_p50_ms: percentile(&gaps, 0.5),
        gap_p99_ms: percentile(&gaps, 0.99),
        gap_max_ms: gaps.last().copied().unwrap_or(0.0),
        sync_spread_p50_ms: percentile(&spreads, 0.5),
        sync_spread_p99_ms: percentile(&spreads, 0.99),
        sync_spread_max_ms: spreads.last().copied().unwrap_or(0.0),
        exact_clock_viewers: exact.len(),
        exact_clock_spread_p99_ms: percentile(&exact_spreads, 0.99),
        late_frames: counters
            .iter()
            .map(|c| c.late.load(Ordering::Relaxed))
            .sum(),
        clock_resynced,
        clock_rtt_p50_ms: percentile(&clock_rtts, 0.5),
        clock_rtt_p99_ms: percentile(&clock_rtts, 0.99),
        clock_rtt_max_ms: clock_rtts.last().copied().unwrap_or(0.0),
        frames_received: delivered,
        warnings,
        stalled: args.stalled,
        server_rss_start_kib: rss_start,
        server_rss_end_kib: rss_end,
        server_cpu_seconds: cpu,
        server_cpu_us_per_frame: cpu
            .filter(|_| delivered > 0)
            .map(|c| c * 1e6 / delivered as f64),
    })
}

/// Where viewers connect from: the system's choice, or one of several loopback source
/// addresses in turn (each has its own range of ephemeral ports).
struct Sources {
    hub: Option<std::net::SocketAddr>,
    count: u8,
}

impl Sources {
    async fn new(url: &str, count: u8) -> Result<Self, LoadtestError> {
        if count <= 1 {
            return Ok(Self {
                hub: None,
                count: 1,
            });
        }
        let refused = |what: String| LoadtestError::SourceAddrs(count, what);
        let addr = resolve(url).await.map_err(refused)?;
        if !(addr.is_ipv4() && addr.ip().is_loopback()) {
            return Err(refused(addr.to_string()));
        }
        Ok(Self {
            hub: Some(addr),
            count,
        })
    }

    /// Connects viewer `n` (from 127.0.0.(1 + n mod count) when spreading).
    async fn connect(
        &self,
        url: &str,
        n: usize,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        let Some(hub) = self.hub else {
            return tokio_tungstenite::connect_async(url)
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| e.to_string());
        };
        let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(self.count)) as u8);
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind((source, 0).into())
            .map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket.connect(hub).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .map_err(|e| e.to_string())?;
        Ok(ws)
    }
}

/// The socket address of a ws:// URL's host.
async fn resolve(url: &str) -> Result<std::net::SocketAddr, String> {
    let request = url
        .parse::<tokio_tungstenite::tungstenite::http::Uri>()
        .map_err(|e| e.to_string())?;
    let host = request.host().ok_or("no host in the URL")?.to_owned();
    let port = request.port_u16().unwrap_or(80);
    let found = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?
        .next();
    found.ok_or_else(|| format!("host {host} not found"))
}

/// A viewer with a tiny receive buffer that never reads: it stalls as soon as it can.
async fn connect_stalled(
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let request = url
        .parse::<tokio_tungstenite::tungstenite::http::Uri>()
        .map_err(|e| e.to_string())?;
    let host = request.host().ok_or("no host in the URL")?;
    let port = request.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("host not found")?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .set_recv_buffer_size(4096)
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn read<S>(mut ws: S, counters: Arc<Counters>, window: Arc<Window>)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut last: Option<u32> = None;
    while let Some(Ok(message)) = ws.next().await {
        match &message {
            Message::Text(text) => {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                    window.seen.note_text(&value);
                }
            }
            Message::Close(frame) => window.seen.note_close(frame.as_ref()),
            _ => {}
        }
        if let Message::Binary(bytes) = message {
            if let Some(i) = frame_index(&bytes) {
                if last.is_some_and(|l| i < l) {
                    counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = Some(i);
                if window.open.load(Ordering::Acquire) {
                    let start = *window.start.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(start) = start {
                        let micros = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        counters
                            .arrivals
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((i, micros));
                    }
                }
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Time requests in one round of a viewer's clock sync, each [`SAMPLE_GAP`] after the answer to
/// the one before; the answer with the shortest round trip is kept (as in the web viewer's
/// `clock.js`).
const TIME_SAMPLES: u32 = 5;
/// The hub writes every viewer its next window at the same moment, once a window period (1 s by
/// default), and on a machine shared with the hub that burst holds up the answers of time
/// requests made during it: samples a quarter of a second apart put some between the bursts.
/// (A browser makes its requests back to back; its machine does not write the hub's windows.)
const SAMPLE_GAP: Duration = Duration::from_millis(250);
/// A viewer syncs its clock again this long after its last round started, as the web viewer does.
const RESYNC: Duration = Duration::from_secs(30);
/// Viewers that start their sync each second once all are connected. Real clients sync from
/// their own connect times, spread out; thousands at one instant would measure the burst.
const SYNCS_PER_SECOND: f64 = 2_000.0;
/// How long the measurement waits past the spread for the last viewers' syncs.
const SYNC_GRACE: Duration = Duration::from_secs(20);
/// Look-ahead: a viewer whose clock estimate came from a round trip this short knows the
/// server's clock to half a frame; the spread among those viewers is reported on its own.
const EXACT_RTT_US: u64 = 40_000;

/// Over how long the viewers of a run start their sync once all are connected.
fn sync_spread(viewers: usize) -> Duration {
    Duration::from_secs_f64(viewers as f64 / SYNCS_PER_SECOND)
}

/// Starts every look-ahead viewer's clock sync, spread over [`sync_spread`], and waits until they
/// have all finished it (or the grace is up). Returns how many did.
async fn resync_clocks(window: &Window, counters: &[Arc<Counters>]) -> usize {
    let from = Instant::now();
    let from_us = window.clock.us_at(from);
    window.syncs.send_replace(Some(from));
    let deadline = from + window.sync_spread + SYNC_GRACE;
    let synced = || {
        counters
            .iter()
            .filter(|c| c.synced_from_us.load(Ordering::Relaxed) >= from_us)
            .count()
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = synced();
        eprint!("\rclocks synced again {done}/{}", counters.len());
        if done == counters.len() || Instant::now() >= deadline {
            eprintln!(" in {:.1} s", from.elapsed().as_secs_f64());
            if done < counters.len() {
                eprintln!(
                    "warning: {} viewers did not sync their clocks again in time: they measure with the estimate they made on connecting",
                    counters.len() - done
                );
            }
            return done;
        }
    }
}

/// One viewer's estimate of the server clock, from rounds of [`TIME_SAMPLES`] time requests.
#[derive(Debug, Default)]
struct ClockSync {
    /// The estimate in force: the best answer of the last finished round.
    estimate: Option<Estimate>,
    /// When that round started, on the run's clock (ms).
    estimate_from_ms: f64,
    /// The round under way: its best answer so far, requests still to answer, when it started.
    round: Option<Estimate>,
    pending: u32,
    round_from_ms: f64,
    /// A sync was asked for while a round was under way: another round follows it.
    again: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    /// Server clock minus ours, in ms.
    offset_ms: f64,
    /// The round trip of the answer it came from, in ms (the offset is good to half of it).
    rtt_ms: f64,
}

impl ClockSync {
    /// Asks for a round starting at `now_ms`; true if the caller is to send a time request now,
    /// false if a round is under way (the new one starts when it ends).
    fn start(&mut self, now_ms: f64) -> bool {
        if self.pending > 0 {
            self.again = true;
            return false;
        }
        self.round = None;
        self.pending = TIME_SAMPLES;
        self.round_from_ms = now_ms;
        true
    }

    /// A time answer: `t0` as the request carried it, the server's clock, and our clock when it
    /// arrived. True if the caller is to send another time request.
    fn answer(&mut self, t0: f64, server_ms: f64, t1: f64) -> bool {
        let rtt_ms = t1 - t0;
        // A NaN or negative round trip (a garbled t0) is no sample.
        if self.pending == 0 || rtt_ms.is_nan() || rtt_ms < 0.0 {
            return false;
        }
        let sample = Estimate {
            offset_ms: server_ms - (t0 + t1) / 2.0,
            rtt_ms,
        };
        if self.round.is_none_or(|best| sample.rtt_ms < best.rtt_ms) {
            self.round = Some(sample);
        }
        self.pending -= 1;
        if self.pending > 0 {
            return true;
        }
        // A later round replaces the estimate, better or not: clocks drift, paths change.
        self.estimate = self.round;
        self.estimate_from_ms = self.round_from_ms;
        if std::mem::take(&mut self.again) {
            return self.start(t1);
        }
        false
    }
}

/// Waits until `at`, or forever if there is no such moment.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A look-ahead viewer (the `n`th of the run): syncs its clock, follows the state, and records
/// when it would show each frame of every window it gets.
async fn read_windows<S>(mut ws: S, counters: Arc<Counters>, window: Arc<Window>, n: usize)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    let clock = window.clock;
    let time_request = |clock: &Clock| {
        Message::text(serde_json::json!({"cmd": "time", "t0": clock.now_ms()}).to_string())
    };
    let mut sync = ClockSync::default();
    sync.start(clock.now_ms());
    if ws.send(time_request(&clock)).await.is_err() {
        return;
    }
    let mut syncs = window.syncs.subscribe();
    let mut next_sync: Option<Instant> = None;
    let mut next_request: Option<Instant> = None;
    let mut state: Option<Anchor> = None;
    let mut last: Option<u32> = None;
    loop {
        let message = tokio::select! {
            message = ws.next() => match message {
                Some(Ok(message)) => message,
                _ => return,
            },
            Ok(()) = syncs.changed() => {
                let from = *syncs.borrow_and_update();
                next_sync = from.map(|from| from + window.sync_delay(n));
                continue;
            }
            () = sleep_until(next_sync) => {
                next_sync = next_sync.map(|at| at + RESYNC);
                if sync.start(clock.now_ms()) && ws.send(time_request(&clock)).await.is_err() {
                    return;
                }
                continue;
            }
            () = sleep_until(next_request) => {
                next_request = None;
                if ws.send(time_request(&clock)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let received = Instant::now();
        match message {
            Message::Text(text) => {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                window.seen.note_text(&value);
                match value["type"].as_str() {
                    Some("hello") => state = Anchor::from_json(&value["state"]),
                    // A new state starts over: its frames may go back (a seek).
                    Some("state") => {
                        state = Anchor::from_json(&value);
                        last = None;
                    }
                    Some("time") => {
                        let (Some(t0), Some(server)) =
                            (value["t0"].as_f64(), value["server_ms"].as_f64())
                        else {
                            continue;
                        };
                        let more = sync.answer(t0, server, clock.ms_at(received));
                        if let Some(estimate) = sync.estimate {
                            let from_us = (sync.estimate_from_ms - clock.base_ms) * 1000.0;
                            counters
                                .sync_rtt_us
                                .store((estimate.rtt_ms * 1000.0) as u64, Ordering::Relaxed);
                            counters
                                .synced_from_us
                                .store(from_us.max(1.0) as u64, Ordering::Relaxed);
                        }
                        if more {
                            next_request = Some(received + SAMPLE_GAP);
                        }
                    }
                    _ => {}
                }
            }
            Message::Binary(bytes) => {
                let header = match bytes.first() {
                    Some(&window_codec::MARKER) => window_codec::peek(&bytes).ok(),
                    _ => window_indices(&bytes),
                };
                let Some((epoch, indices)) = header else {
                    continue;
                };
                counters
                    .frames
                    .fetch_add(indices.len() as u64, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                let Some(anchor) = state.filter(|s| s.epoch == epoch) else {
                    continue;
                };
                if last.is_some_and(|l| indices.first().is_some_and(|&f| f < l)) {
                    counters.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last = indices.last().copied().or(last);
                let start = *window.start.lock().unwrap_or_else(|e| e.into_inner());
                let (Some(start), Some(estimate)) = (start, sync.estimate) else {
                    continue;
                };
                if !window.open.load(Ordering::Acquire) {
                    continue;
                }
                let offset = estimate.offset_ms;
                let (start_ms, arrived_ms) = (clock.ms_at(start), clock.ms_at(received));
                let mut arrivals = counters.arrivals.lock().unwrap_or_else(|e| e.into_inner());
                for i in indices {
                    // When this viewer shows frame i, on its own clock: from the session's
                    // timeline and the measured offset, whenever the window arrived.
                    let shown = anchor.shown_ms(i) - offset;
                    // A paused window's one frame is shown from the pause on: never late.
                    if anchor.playing && shown < arrived_ms {
                        counters.late.fetch_add(1, Ordering::Relaxed);
                    }
                    let since_start = (shown - start_ms) * 1000.0;
                    if (0.0..f64::from(u32::MAX)).contains(&since_start) {
                        arrivals.push((i, since_start as u32));
                    }
                }
            }
            Message::Close(frame) => window.seen.note_close(frame.as_ref()),
            _ => {}
        }
    }
}

/// The timeline anchor of a state message: what a look-ahead client schedules frames by.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    epoch: u64,
    playing: bool,
    speed: f64,
    frame: u32,
    at_ms: f64,
}

impl Anchor {
    fn from_json(state: &serde_json::Value) -> Option<Self> {
        Some(Self {
            epoch: state["epoch"].as_u64()?,
            playing: state["playing"].as_bool()?,
            speed: state["speed"].as_f64()?,
            frame: state["anchor_frame"].as_u64()? as u32,
            at_ms: state["anchor_ms"].as_f64()?,
        })
    }

    /// Server time at which frame `i` goes on screen: the start of the first 40 ms display slot
    /// that shows it (at speed s, slot j shows frame anchor + floor(j × s)).
    fn shown_ms(&self, i: u32) -> f64 {
        if !self.playing {
            return self.at_ms;
        }
        let slot = ((f64::from(i) - f64::from(self.frame)) / self.speed - 1e-9).ceil();
        self.at_ms + slot.max(0.0) * 1000.0 / f64::from(replay_hub::race::FPS)
    }
}

/// Every gap between consecutive frames at each viewer, sorted, in ms.
fn gaps_ms(arrivals: &[Vec<(u32, u32)>]) -> Vec<f64> {
    let mut gaps: Vec<f64> = arrivals
        .iter()
        // Negative when a viewer's clock estimate moved back between two frames (a re-sync).
        .flat_map(|a| {
            a.windows(2)
                .map(|w| (i64::from(w[1].1) - i64::from(w[0].1)) as f64 / 1000.0)
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// For every frame index that at least two viewers got, the spread of its arrival, sorted, in ms.
fn spreads_ms(arrivals: &[Vec<(u32, u32)>]) -> Vec<f64> {
    let mut by_frame: std::collections::HashMap<u32, (u32, u32, usize)> =
        std::collections::HashMap::new();
    for &(index, at) in arrivals.iter().flatten() {
        let entry = by_frame.entry(index).or_insert((at, at, 0));
        entry.0 = entry.0.min(at);
        entry.1 = entry.1.max(at);
        entry.2 += 1;
    }
    let mut spreads: Vec<f64> = by_frame
        .values()
        .filter(|(_, _, n)| *n >= 2)
        .map(|(lo, hi, _)| f64::from(hi - lo) / 1000.0)
        .collect();
    spreads.sort_by(f64::total_cmp);
    spreads
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

impl Report {
    /// What the run was asked for and did not get: fewer viewers than requested, or no frames.
    pub fn shortfall(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.connected < self.viewers {
            missing.push(format!(
                "only {} of {} viewers connected",
                self.connected, self.viewers
            ));
        }
        if self.viewers > 0 && self.frames_received == 0 {
            let why = match self.warnings.first() {
                Some(warning) => format!(" ({warning})"),
                None => String::new(),
            };
            missing.push(format!("no frames were received{why}"));
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2} {unit}"));
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        let what = match self.mode {
            "lookahead" => "display",
            _ => "arrival",
        };
        [
            format!("delivery mode           {}", self.mode),
            format!(
                "viewers connected       {} of {} ({} errors)",
                self.connected, self.viewers, self.connect_errors
            ),
            format!("window                  {:.1} s", self.seconds),
            format!(
                "frames/s per viewer     p50 {:.1}, min {:.1}",
                self.fps_p50, self.fps_min
            ),
            format!(
                "received                {:.2} MB/s ({:.0} B per frame of content, {:.2} KB/s per viewer)",
                self.bytes_per_second / 1e6,
                self.bytes_per_frame,
                self.bytes_per_second / 1e3 / self.connected.max(1) as f64
            ),
            format!("out-of-order frames     {}", self.out_of_order),
            format!(
                "gap between frames      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({what})",
                self.gap_p50_ms, self.gap_p99_ms, self.gap_max_ms
            ),
            format!(
                "sync spread per frame   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({what})",
                self.sync_spread_p50_ms, self.sync_spread_p99_ms, self.sync_spread_max_ms
            ),
            format!(
                "  among exact clocks    p99 {:.1} ms, {} viewers (clock round trip at most 40 ms)",
                self.exact_clock_spread_p99_ms, self.exact_clock_viewers
            ),
            format!("late frames             {}", self.late_frames),
            format!(
                "clock sync              {} of {} synced again after connecting; round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.clock_resynced,
                self.connected,
                self.clock_rtt_p50_ms,
                self.clock_rtt_p99_ms,
                self.clock_rtt_max_ms
            ),
            format!("frames received         {}", self.frames_received),
            format!(
                "stalled viewers         {} (connected, never reading)",
                self.stalled
            ),
            format!(
                "server CPU              {}",
                opt(self.server_cpu_seconds, "s")
            ),
            format!(
                "server CPU per frame    {}",
                opt(self.server_cpu_us_per_frame, "µs")
            ),
            format!(
                "server RSS start / end  {} / {}",
                kib(self.server_rss_start_kib),
                kib(self.server_rss_end_kib)
            ),
        ]
        .join("\n")
    }
}

/// utime + stime of a process, in seconds, from /proc (Linux).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every mainstream Linux configuration.
    100.0
}

/// Resident set size of a process in KiB, from /proc (Linux).
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_per_viewer_and_spreads_per_frame() {
        // Viewer A gets frames 1, 2, 3 at 0, 40, 80 ms; viewer B gets 1 and 3 at 5 and 95 ms.
        let arrivals = vec![
            vec![(1, 0), (2, 40_000), (3, 80_000)],
            vec![(1, 5_000), (3, 95_000)],
        ];
        assert_eq!(gaps_ms(&arrivals), vec![40.0, 40.0, 90.0]);
        // Frame 2 reached one viewer only: no spread for it.
        assert_eq!(spreads_ms(&arrivals), vec![5.0, 15.0]);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.99), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        // A re-sync that moves a viewer's clock back shows as a negative gap, not a wrapped one.
        assert_eq!(gaps_ms(&[vec![(1, 50_000), (2, 40_000)]]), vec![-10.0]);
    }

    #[test]
    fn a_clock_sync_keeps_the_shortest_round_trip_of_each_round() {
        let mut sync = ClockSync::default();
        assert!(sync.start(0.0));
        // Server 1000 ms ahead; round trips of 30, 4 and 10 ms (the 4 ms one arrives early:
        // its outbound leg was 1 ms), then two more of 50 ms.
        let answers = [
            (0.0, 1015.0, 30.0),
            (30.0, 1031.0, 34.0),
            (34.0, 1039.0, 44.0),
        ];
        for (t0, server, t1) in answers {
            assert!(sync.answer(t0, server, t1), "more requests to come");
            assert_eq!(sync.estimate, None, "no estimate before the round ends");
        }
        assert!(sync.answer(44.0, 1069.0, 94.0));
        assert!(!sync.answer(94.0, 1119.0, 144.0), "the round is over");
        let first = sync.estimate.unwrap();
        assert_eq!(first.rtt_ms, 4.0);
        assert_eq!(first.offset_ms, 1031.0 - 32.0, "off by half the asymmetry");
        // An answer nobody is waiting for changes nothing.
        assert!(!sync.answer(144.0, 1150.0, 146.0));
        assert_eq!(sync.estimate, Some(first));

        // A later round replaces the estimate even with longer round trips.
        assert!(sync.start(200.0));
        for k in 0..TIME_SAMPLES {
            let t0 = 200.0 + f64::from(k) * 100.0;
            sync.answer(t0, t0 + 1004.0, t0 + 8.0);
        }
        let second = sync.estimate.unwrap();
        assert_eq!((second.rtt_ms, second.offset_ms), (8.0, 1000.0));
        assert_eq!(sync.estimate_from_ms, 200.0);
    }

    #[test]
    fn a_sync_asked_for_during_a_round_follows_it() {
        let mut sync = ClockSync::default();
        assert!(sync.start(0.0));
        assert!(!sync.start(5.0), "one request at a time");
        for k in 1..TIME_SAMPLES {
            assert!(sync.answer(0.0, 1000.0, f64::from(k)));
        }
        // The first round ends and the second starts at once: send again.
        assert!(sync.answer(0.0, 1000.0, 7.0));
        assert_eq!(sync.estimate_from_ms, 0.0);
        assert_eq!(sync.round_from_ms, 7.0);
        for _ in 1..TIME_SAMPLES {
            assert!(sync.answer(7.0, 1007.0, 9.0));
        }
        assert!(!sync.answer(7.0, 1007.0, 9.0));
        assert_eq!(sync.estimate_from_ms, 7.0);
    }

    #[test]
    fn viewers_start_their_syncs_spread_out() {
        let window = Window {
            open: AtomicBool::new(false),
            start: Mutex::new(None),
            clock: Clock::new(),
            seen: Seen::default(),
            syncs: tokio::sync::watch::Sender::new(None),
            sync_spread: sync_spread(4_000),
            viewers: 4_000,
        };
        assert_eq!(window.sync_spread, Duration::from_secs(2));
        assert_eq!(window.sync_delay(0), Duration::ZERO);
        assert_eq!(window.sync_delay(1_000), Duration::from_millis(500));
        assert!(window.sync_delay(3_999) < Duration::from_secs(2));
    }

    #[test]
    fn a_frame_is_shown_from_the_first_display_slot_that_holds_it() {
        let anchor = Anchor {
            epoch: 1,
            playing: true,
            speed: 1.0,
            frame: 100,
            at_ms: 1000.0,
        };
        assert_eq!(anchor.shown_ms(100), 1000.0);
        assert_eq!(anchor.shown_ms(125), 2000.0, "25 frames a second at 1x");
        let fast = Anchor {
            speed: 4.0,
            ..anchor
        };
        // Slots show 100, 104, 108, ...: frame 104 from the second slot, 105 never on its own
        // slot (it would be shown, if sent, from the third).
        assert_eq!(fast.shown_ms(104), 1040.0);
        assert_eq!(fast.shown_ms(105), 1080.0);
        let paused = Anchor {
            playing: false,
            ..anchor
        };
        assert_eq!(paused.shown_ms(100), 1000.0);
    }
}
