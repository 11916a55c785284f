//! `replay-hub loadtest`: opens many real WebSocket viewers against a running hub and reports
//! what they received: frames per second per viewer, bandwidth, and, given the server's pid, its
//! CPU per delivered frame and its resident memory. Used for the figures in BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_end_kib: Option<u64>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_frame: Option<f64>,
}

pub async fn run(args: LoadtestArgs) -> Result<Report, String> {
    let mut counters = Vec::with_capacity(args.viewers);
    let mut connect_errors = 0;
    let started = Instant::now();
    // Connect in small batches so the hub's accept queue is not flooded.
    for batch in (0..args.viewers).collect::<Vec<_>>().chunks(50) {
        let attempts = batch
            .iter()
            .map(|_| tokio_tungstenite::connect_async(args.url.as_str()));
        for result in futures_util::future::join_all(attempts).await {
            match result {
                Ok((ws, _)) => {
                    let c = Arc::new(Counters::default());
                    tokio::spawn(read(ws, c.clone()));
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
    let window = Instant::now();
    let seconds = args.seconds.max(1);
    for s in 1..=seconds {
        tokio::time::sleep_until((window + Duration::from_secs(s)).into()).await;
        let frames: u64 = counters
            .iter()
            .map(|c| c.frames.load(Ordering::Relaxed))
            .sum();
        eprint!("\r{s}/{seconds} s, {frames} frames received");
    }
    eprintln!();
    let elapsed = window.elapsed().as_secs_f64();
    let after = snapshot(&counters);
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
        server_rss_start_kib: rss_start,
        server_rss_end_kib: rss_end,
        server_cpu_seconds: cpu,
        server_cpu_us_per_frame: cpu
            .filter(|_| delivered > 0)
            .map(|c| c * 1e6 / delivered as f64),
    })
}

async fn read<S>(mut ws: S, counters: Arc<Counters>)
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
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
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
