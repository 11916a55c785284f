//! The chaos benchmark's own clients (`bench/chaos/run.sh` runs them beside the load tool,
//! `loadtest`): viewers that fail over to another replica when theirs goes away, and a churn of
//! controllers that connect, seek and disconnect. It prints (and writes with `--json`) what a
//! viewer lived through: outages, seconds to resume, frames skipped, viewers lost, churn cycles.
//!
//! Reconnecting viewers start on the first URL of `--urls`; on any disconnect a viewer tries
//! the next URL at once, then the others in turn, backing off up to a second between tries.
//! "Frames skipped" counts frame indices a viewer never received between two it did (the
//! session plays at speed 1 and is never seeked by anyone, so every index should arrive).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use replay_hub::encode::frame_index;
use serde::Serialize;
use tokio::time::{sleep, timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Comma-separated WebSocket URLs of one session on each replica, in failover order.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// Reconnecting viewers.
    #[arg(long, default_value_t = 500)]
    viewers: usize,
    /// Comma-separated control URLs (with `?token=`) of the churn session on each replica.
    #[arg(long, value_delimiter = ',')]
    churn_urls: Vec<String>,
    /// Churn clients started per second (each connects, seeks, waits for its state, leaves).
    #[arg(long, default_value_t = 200)]
    churn_per_second: u32,
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Patience for one connection attempt, hello or seek answer.
const PATIENCE: Duration = Duration::from_secs(5);
/// A viewer with no frame for this long at the end is lost.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// One viewer's interruption: from the moment its connection ended to its next frame.
#[derive(Debug, Clone, Serialize)]
struct Outage {
    /// Seconds into the run.
    at_s: f64,
    resume_s: Option<f64>,
    /// Frame indices missed across the outage.
    skipped: u64,
    /// The URL it resumed on.
    resumed_on: Option<usize>,
}

#[derive(Default)]
struct ViewerLog {
    frames: u64,
    skipped: u64,
    last_index: Option<u32>,
    last_frame_at: Option<Instant>,
    outages: Vec<Outage>,
    connect_failures: u64,
    on_url: Option<usize>,
}

#[derive(Default)]
struct ChurnStats {
    started: AtomicU64,
    completed: AtomicU64,
    connect_failed: AtomicU64,
    timed_out: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    /// Connect → seek answered (its state arrived), in ms, of completed cycles.
    latencies_ms: Mutex<Vec<f64>>,
}

#[derive(Serialize)]
struct Report {
    seconds: f64,
    viewers: usize,
    /// Viewers with no frame in the last `LOST_AFTER` of the run.
    viewers_lost: usize,
    /// Viewers on each URL at the end.
    viewers_per_url: Vec<usize>,
    frames_received: u64,
    frames_skipped: u64,
    frames_skipped_in_outages: u64,
    outages: usize,
    outages_unresumed: usize,
    resume_p50_s: f64,
    resume_p99_s: f64,
    resume_max_s: f64,
    connect_failures: u64,
    /// Frames received by all reconnecting viewers in each second of the run.
    frames_per_second: Vec<u64>,
    churn_started: u64,
    churn_completed: u64,
    churn_connect_failed: u64,
    churn_timed_out: u64,
    churn_refused: u64,
    churn_closed_by_server: u64,
    churn_p50_ms: f64,
    churn_p99_ms: f64,
    churn_max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

/// Counts received frames per second of the run.
struct PerSecond {
    start: Instant,
    counts: Vec<AtomicU64>,
}

impl PerSecond {
    fn note(&self) {
        let second = self.start.elapsed().as_secs() as usize;
        if let Some(c) = self.counts.get(second) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn viewer(
    urls: Arc<Vec<String>>,
    log: Arc<Mutex<ViewerLog>>,
    per_second: Arc<PerSecond>,
    end: Instant,
) {
    let start = per_second.start;
    let mut url = 0usize;
    let mut backoff = Duration::from_millis(50);
    let mut down_since: Option<Instant> = None;
    while Instant::now() < end {
        let attempt = timeout(PATIENCE, tokio_tungstenite::connect_async(&urls[url])).await;
        let Ok(Ok((mut socket, _))) = attempt else {
            log.lock().unwrap().connect_failures += 1;
            url = (url + 1) % urls.len();
            sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        backoff = Duration::from_millis(50);
        log.lock().unwrap().on_url = Some(url);
        let deadline = tokio::time::Instant::from_std(end);
        loop {
            let next = tokio::time::timeout_at(deadline, socket.next()).await;
            let message = match next {
                Err(_) => {
                    let _ = socket.close(None).await;
                    return;
                }
                Ok(Some(Ok(message))) => message,
                Ok(_) => break,
            };
            let Message::Binary(bytes) = message else {
                continue;
            };
            let Some(index) = frame_index(&bytes) else {
                continue;
            };
            per_second.note();
            let now = Instant::now();
            let mut log = log.lock().unwrap();
            log.frames += 1;
            let gap = match log.last_index {
                Some(last) if index > last => u64::from(index - last - 1),
                _ => 0,
            };
            log.skipped += gap;
            if let Some(since) = down_since.take() {
                if let Some(outage) = log.outages.last_mut() {
                    outage.resume_s = Some((now - since).as_secs_f64());
                    outage.skipped = gap;
                    outage.resumed_on = Some(url);
                }
            }
            log.last_index = Some(index);
            log.last_frame_at = Some(now);
        }
        // The connection ended before the run did: an outage begins.
        let now = Instant::now();
        if down_since.is_none() {
            down_since = Some(now);
            let mut log = log.lock().unwrap();
            log.on_url = None;
            log.outages.push(Outage {
                at_s: (now - start).as_secs_f64(),
                resume_s: None,
                skipped: 0,
                resumed_on: None,
            });
        }
        url = (url + 1) % urls.len();
    }
}

enum Cycle {
    Done,
    /// The hub answered the seek with an error message.
    Refused,
    /// The connection ended before the seek was answered.
    Closed,
}

/// One churn cycle: connect as a controller, seek somewhere, wait for the state it makes, leave.
async fn churn_cycle(url: String, stats: Arc<ChurnStats>) {
    let started = Instant::now();
    let Ok(Ok((mut socket, _))) = timeout(PATIENCE, tokio_tungstenite::connect_async(&url)).await
    else {
        stats.connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let outcome = timeout(PATIENCE, async {
        let mut target = None;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            match (value["type"].as_str(), target) {
                (Some("hello"), None) => {
                    let total = value["total_frames"].as_u64().unwrap_or(1).max(1);
                    let frame = rand::rng().random_range(0..total);
                    let seek = format!(r#"{{"cmd":"seek","frame":{frame}}}"#);
                    if socket.send(Message::text(seek)).await.is_err() {
                        return Cycle::Closed;
                    }
                    target = Some(frame);
                }
                // Other churn clients seek the same session all the time: the answer to this
                // one is the state anchored at its frame.
                (Some("state"), Some(t)) if value["anchor_frame"].as_u64() == Some(t) => {
                    return Cycle::Done;
                }
                (Some("error"), Some(_)) => return Cycle::Refused,
                _ => {}
            }
        }
        Cycle::Closed
    })
    .await;
    let _ = timeout(Duration::from_secs(1), socket.close(None)).await;
    match outcome {
        Ok(Cycle::Done) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            stats.latencies_ms.lock().unwrap().push(ms);
        }
        Ok(Cycle::Refused) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Cycle::Closed) => {
            stats.closed.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn churn(urls: Vec<String>, per_second: u32, end: Instant, stats: Arc<ChurnStats>) {
    if urls.is_empty() || per_second == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        stats.started.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(churn_cycle(urls[n % urls.len()].clone(), stats.clone()));
        n += 1;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(!args.urls.is_empty(), "--urls needs at least one URL");
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let per_second = Arc::new(PerSecond {
        start,
        counts: (0..=args.seconds).map(|_| AtomicU64::new(0)).collect(),
    });
    let urls = Arc::new(args.urls.clone());
    let logs: Vec<Arc<Mutex<ViewerLog>>> = (0..args.viewers)
        .map(|_| Arc::new(Mutex::new(ViewerLog::default())))
        .collect();
    let mut viewers = tokio::task::JoinSet::new();
    for log in &logs {
        viewers.spawn(viewer(urls.clone(), log.clone(), per_second.clone(), end));
        // Connect at about 500 a second, as the load tool does, not all at once.
        sleep(Duration::from_millis(2)).await;
    }
    let stats = Arc::new(ChurnStats::default());
    let churner = tokio::spawn(churn(
        args.churn_urls.clone(),
        args.churn_per_second,
        end,
        stats.clone(),
    ));
    // Every task ends by itself at `end` (give or take one connection attempt).
    while viewers.join_next().await.is_some() {}
    let _ = churner.await;

    let finished = Instant::now();
    let mut resumes = Vec::new();
    let (mut frames, mut skipped, mut in_outages, mut outages, mut unresumed) = (0, 0, 0, 0, 0);
    let (mut lost, mut failures) = (0, 0);
    let mut per_url = vec![0; urls.len()];
    for log in &logs {
        let log = log.lock().unwrap();
        frames += log.frames;
        skipped += log.skipped;
        failures += log.connect_failures;
        if log
            .last_frame_at
            .is_none_or(|at| finished - at > LOST_AFTER + (finished - end))
        {
            lost += 1;
        }
        if let Some(url) = log.on_url {
            per_url[url] += 1;
        }
        for outage in &log.outages {
            outages += 1;
            in_outages += outage.skipped;
            match outage.resume_s {
                Some(s) => resumes.push(s),
                None => unresumed += 1,
            }
        }
    }
    resumes.sort_by(f64::total_cmp);
    let mut churn_ms = stats.latencies_ms.lock().unwrap().clone();
    churn_ms.sort_by(f64::total_cmp);
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let report = Report {
        seconds: (end - start).as_secs_f64(),
        viewers: args.viewers,
        viewers_lost: lost,
        viewers_per_url: per_url,
        frames_received: frames,
        frames_skipped: skipped,
        frames_skipped_in_outages: in_outages,
        outages,
        outages_unresumed: unresumed,
        resume_p50_s: percentile(&resumes, 0.5),
        resume_p99_s: percentile(&resumes, 0.99),
        resume_max_s: resumes.last().copied().unwrap_or(0.0),
        connect_failures: failures,
        frames_per_second: per_second.counts.iter().map(get).collect(),
        churn_started: get(&stats.started),
        churn_completed: get(&stats.completed),
        churn_connect_failed: get(&stats.connect_failed),
        churn_timed_out: get(&stats.timed_out),
        churn_refused: get(&stats.refused),
        churn_closed_by_server: get(&stats.closed),
        churn_p50_ms: percentile(&churn_ms, 0.5),
        churn_p99_ms: percentile(&churn_ms, 0.99),
        churn_max_ms: churn_ms.last().copied().unwrap_or(0.0),
    };
    let json = serde_json::to_string_pretty(&report).unwrap();
    if let Some(path) = &args.json {
        std::fs::write(path, &json).unwrap();
    }
    let per_s = &report.frames_per_second;
    println!(
        "viewers {} lost {} | frames {} skipped {} ({} in outages) | outages {} unresumed {} | \
         resume p50 {:.2}s p99 {:.2}s max {:.2}s | churn {}/{} ok (connect failed {}, timed out {}, refused {}, closed {}) p50 {:.0}ms p99 {:.0}ms | min frames/s {}",
        report.viewers,
        report.viewers_lost,
        report.frames_received,
        report.frames_skipped,
        report.frames_skipped_in_outages,
        report.outages,
        report.outages_unresumed,
        report.resume_p50_s,
        report.resume_p99_s,
        report.resume_max_s,
        report.churn_completed,
        report.churn_started,
        report.churn_connect_failed,
        report.churn_timed_out,
        report.churn_refused,
        report.churn_closed_by_server,
        report.churn_p50_ms,
        report.churn_p99_ms,
        per_s.iter().skip(5).take(per_s.len().saturating_sub(7)).min().unwrap_or(&0),
    );
}
