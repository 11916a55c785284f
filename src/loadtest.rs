//! `replay-hub loadtest`: opens many real WebSocket viewers against a running hub (and, if asked,
//! some that never read) and reports what the readers received: frames per second per viewer,
//! gaps between frames, how far apart viewers got the same frame, bandwidth, and, given the
//! server's pid, its CPU per delivered frame and its resident memory. Figures in BENCHMARKS.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::config::LoadtestArgs;
use crate::encode::frame_index;

/// Per-viewer counters, written by its reader task and sampled by the reporter.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    out_of_order: AtomicU64,
    /// (frame index, µs since the window opened) of every frame received in the window.
    arrivals: Mutex<Vec<(u32, u32)>>,
}

/// The measurement window, shared by every reader: they record arrivals only while it is open.
struct Window {
    open: AtomicBool,
    start: Mutex<Option<Instant>>,
}

/// The figures of one run, printed as a table and optionally written as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub viewers: usize,
    pub connected: usize,
    pub connect_errors: usize,
    pub seconds: f64,
    pub fps_p50: f64,
    pub fps_min: f64,
    pub bytes_per_second: f64,
    pub out_of_order: u64,
    /// Time between consecutive frames at one viewer, in ms.
    pub gap_p50_ms: f64,
    pub gap_p99_ms: f64,
    pub gap_max_ms: f64,
    /// For each frame index, the spread of its arrival across viewers, in ms.
    pub sync_spread_p50_ms: f64,
    pub sync_spread_p99_ms: f64,
    pub stalled: usize,
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_end_kib: Option<u64>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_frame: Option<f64>,
}

pub async fn run(args: LoadtestArgs) -> Result<Report, String> {
    let mut counters = Vec::with_capacity(args.viewers);
    let mut connect_errors = 0;
    let started = Instant::now();
    let window = Arc::new(Window {
        open: AtomicBool::new(false),
        start: Mutex::new(None),
    });
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
            }
        }
    }
    // Connect in small batches so the hub's accept queue is not flooded.
    for batch in (0..args.viewers).collect::<Vec<_>>().chunks(50) {
        let attempts = batch
            .iter()
            .map(|_| tokio_tungstenite::connect_async(args.url.as_str()));
        for result in futures_util::future::join_all(attempts).await {
            match result {
                Ok((ws, _)) => {
                    let c = Arc::new(Counters::default());
                    tokio::spawn(read(ws, c.clone(), window.clone()));
                    counters.push(c);
                }
                Err(err) => {
                    connect_errors += 1;
                    if connect_errors <= 3 {
                        eprintln!("connect failed: {err}");
                    }
                }
            }
        }
        eprint!("\rconnected {}/{}", counters.len(), args.viewers);
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    // Let every viewer settle past its hello before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

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
    Ok(Report {
        viewers: args.viewers,
        connected: counters.len(),
        connect_errors,
        seconds: elapsed,
        fps_p50: fps.get(fps.len() / 2).copied().unwrap_or(0.0),
        fps_min: fps.first().copied().unwrap_or(0.0),
        bytes_per_second: bytes as f64 / elapsed,
        out_of_order: counters
            .iter()
            .map(|c| c.out_of_order.load(Ordering::Relaxed))
            .sum(),
        gap_p50_ms: percentile(&gaps, 0.5),
        gap_p99_ms: percentile(&gaps, 0.99),
        gap_max_ms: gaps.last().copied().unwrap_or(0.0),
        sync_spread_p50_ms: percentile(&spreads, 0.5),
        sync_spread_p99_ms: percentile(&spreads, 0.99),
        stalled: args.stalled,
        server_rss_start_kib: rss_start,
        server_rss_end_kib: rss_end,
        server_cpu_seconds: cpu,
        server_cpu_us_per_frame: cpu
            .filter(|_| delivered > 0)
            .map(|c| c * 1e6 / delivered as f64),
    })
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

/// Every gap between consecutive frames at each viewer, sorted, in ms.
fn gaps_ms(arrivals: &[Vec<(u32, u32)>]) -> Vec<f64> {
    let mut gaps: Vec<f64> = arrivals
        .iter()
        .flat_map(|a| a.windows(2).map(|w| f64::from(w[1].1 - w[0].1) / 1000.0))
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
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.2} {unit}"));
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        [
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
                "received                {:.2} MB/s",
                self.bytes_per_second / 1e6
            ),
            format!("out-of-order frames     {}", self.out_of_order),
            format!(
                "gap between frames      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.gap_p50_ms, self.gap_p99_ms, self.gap_max_ms
            ),
            format!(
                "sync spread per frame   p50 {:.1} ms, p99 {:.1} ms",
                self.sync_spread_p50_ms, self.sync_spread_p99_ms
            ),
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
    }
}
