//! Prometheus metrics: this module owns the registry and every metric the hub exports.
//!
//! `App` builds one [`Metrics`] and hands an `Arc` of it to the hub, sessions, viewers, the cache
//! and the HTTP layer; `GET /metrics` renders it. Names follow
//! `replay_hub_<subsystem>_<name>_<unit|total>`; no label is per viewer.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.1 ms to 1 s: what matters for a 40 ms frame period.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.04, 0.08, 0.25, 0.5, 1.0,
];
/// Load-time buckets from 10 ms to a minute.
const LOAD_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Why a WebSocket viewer went away, as the `reason` label of disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed, or its connection ended.
    Client,
    Stalled,
    HeartbeatTimeout,
    TooBig,
    Protocol,
    Policy,
    /// The session was deleted or the hub is shutting down.
    SessionEnded,
    SessionFull,
}

impl Disconnect {
    pub const ALL: [Self; 8] = [
        Self::Client,
        Self::Stalled,
        Self::HeartbeatTimeout,
        Self::TooBig,
        Self::Protocol,
        Self::Policy,
        Self::SessionEnded,
        Self::SessionFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Stalled => "stalled",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::TooBig => "message_too_big",
            Self::Protocol => "protocol_error",
            Self::Policy => "policy",
            Self::SessionEnded => "session_ended",
            Self::SessionFull => "session_full",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub process_cpu_ratio: Gauge,
    pub process_cpu_seconds: Counter,
    pub process_resident_memory: IntGauge,
    pub races_loaded: IntGauge,
    pub sessions: IntGauge,
    pub viewers: IntGauge,
    /// Viewers per session; bounded by `max_sessions`, and removed with the session.
    pub session_viewers: IntGaugeVec,
    pub frames_sent: IntCounter,
    pub frames_dropped: IntCounterVec,
    pub bytes_sent: IntCounter,
    pub send_latency: Histogram,
    pub tick_duration: Histogram,
    pub tick_lateness: Histogram,
    pub commands: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_up: IntGaugeVec,
    pub load_seconds: HistogramVec,
    pub ws_connects: IntCounter,
    pub ws_disconnects: IntCounterVec,
    /// Bytes of encoded races held in memory, against `--race-memory-budget`.
    pub race_memory: IntGauge,
    pub races_evicted: IntCounter,
    /// 1 while the broker is subscribed (only with `--broker`).
    pub broker_up: IntGauge,
    /// WebSocket upgrades refused before a viewer started, by reason.
    pub ws_refused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let m = Metrics {
            process_cpu_ratio: Gauge::with_opts(opts(
                "process_cpu_ratio",
                "CPU used by the hub over the last sample, as a ratio of one core",
            ))
            .unwrap_or_else(unreachable),
            process_cpu_seconds: Counter::with_opts(opts(
                "process_cpu_seconds_total",
                "CPU time used by the hub, user and system",
            ))
            .unwrap_or_else(unreachable),
            process_resident_memory: IntGauge::with_opts(opts(
                "process_resident_memory_bytes",
                "Resident memory of the hub",
            ))
            .unwrap_or_else(unreachable),
            races_loaded: IntGauge::with_opts(opts(
                "hub_races_loaded",
                "Races whose encoded frames are in memory",
            ))
            .unwrap_or_else(unreachable),
            sessions: IntGauge::with_opts(opts("hub_sessions", "Sessions that exist"))
                .unwrap_or_else(unreachable),
            viewers: IntGauge::with_opts(opts(
                "ws_viewers",
                "WebSocket viewers connected, all sessions",
            ))
            .unwrap_or_else(unreachable),
            session_viewers: IntGaugeVec::new(
                opts("session_viewers", "Viewers connected to each session"),
                &["session"],
            )
            .unwrap_or_else(unreachable),
            frames_sent: IntCounter::with_opts(opts(
                "delivery_frames_sent_total",
                "Frames handed to viewer sockets",
            ))
            .unwrap_or_else(unreachable),
            frames_dropped: IntCounterVec::new(
                opts(
                    "delivery_frames_dropped_total",
                    "Frames a viewer did not get: replaced by a newer one (slow) or lost with a stalled viewer",
                ),
                &["reason"],
            )
            .unwrap_or_else(unreachable),
            bytes_sent: IntCounter::with_opts(opts(
                "delivery_bytes_sent_total",
                "Frame bytes handed to viewer sockets (bandwidth)",
            ))
            .unwrap_or_else(unreachable),
            send_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "replay_hub_delivery_send_latency_seconds",
                    "From the session tick that offered a frame to its bytes handed to the socket",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(unreachable),
            tick_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "replay_hub_session_tick_duration_seconds",
                    "Time a session spends in one tick (fan-out included)",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(unreachable),
            tick_lateness: Histogram::with_opts(
                HistogramOpts::new(
                    "replay_hub_session_tick_lateness_seconds",
                    "How late a session tick fired after its 40 ms schedule",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap_or_else(unreachable),
            commands: IntCounterVec::new(
                opts("session_commands_total", "Control commands received"),
                &["kind", "result"],
            )
            .unwrap_or_else(unreachable),
            cache_requests: IntCounterVec::new(
                opts(
                    "cache_requests_total",
                    "Race loads asked of the cache, by result: hit, miss, corrupt, error",
                ),
                &["backend", "result"],
            )
            .unwrap_or_else(unreachable),
            cache_up: IntGaugeVec::new(
                opts("cache_up", "1 while the cache backend answers, else 0"),
                &["backend"],
            )
            .unwrap_or_else(unreachable),
            load_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "replay_hub_cache_load_seconds",
                    "Time to load a race's encoded frames, by where they came from",
                )
                .buckets(LOAD_BUCKETS.to_vec()),
                &["backend", "source"],
            )
            .unwrap_or_else(unreachable),
            ws_connects: IntCounter::with_opts(opts(
                "ws_connects_total",
                "WebSocket viewers that joined a session",
            ))
            .unwrap_or_else(unreachable),
            ws_disconnects: IntCounterVec::new(
                opts("ws_disconnects_total", "WebSocket viewers gone, by reason"),
                &["reason"],
            )
            .unwrap_or_else(unreachable),
            race_memory: IntGauge::with_opts(opts(
                "hub_race_memory_bytes",
                "Bytes of encoded races held in memory (bounded by --race-memory-budget)",
            ))
            .unwrap_or_else(unreachable),
            races_evicted: IntCounter::with_opts(opts(
                "hub_races_evicted_total",
                "Loaded races dropped from memory to stay within the race memory budget",
            ))
            .unwrap_or_else(unreachable),
            broker_up: IntGauge::with_opts(opts(
                "broker_up",
                "1 while the broker (replica coordination through Redis) is subscribed, else 0",
            ))
            .unwrap_or_else(unreachable),
            ws_refused: IntCounterVec::new(
                opts(
                    "ws_refused_total",
                    "WebSocket upgrades refused before a viewer started, by reason: origin, per_ip",
                ),
                &["reason"],
            )
            .unwrap_or_else(unreachable),
            registry,
        };
        m.register_all();
        for reason in ["origin", "per_ip"] {
            m.ws_refused.with_label_values(&[reason]);
        }
        // Every label value a dashboard expects exists from the start, at zero.
        for reason in ["slow", "stalled"] {
            m.frames_dropped.with_label_values(&[reason]);
        }
        for reason in Disconnect::ALL {
            m.ws_disconnects.with_label_values(&[reason.label()]);
        }
        Arc::new(m)
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 24] = [
            Box::new(self.process_cpu_ratio.clone()),
            Box::new(self.process_cpu_seconds.clone()),
            Box::new(self.process_resident_memory.clone()),
            Box::new(self.races_loaded.clone()),
            Box::new(self.sessions.clone()),
            Box::new(self.viewers.clone()),
            Box::new(self.session_viewers.clone()),
            Box::new(self.frames_sent.clone()),
            Box::new(self.frames_dropped.clone()),
            Box::new(self.bytes_sent.clone()),
            Box::new(self.send_latency.clone()),
            Box::new(self.tick_duration.clone()),
            Box::new(self.tick_lateness.clone()),
            Box::new(self.commands.clone()),
            Box::new(self.cache_requests.clone()),
            Box::new(self.cache_up.clone()),
            Box::new(self.load_seconds.clone()),
            Box::new(self.ws_connects.clone()),
            Box::new(self.ws_disconnects.clone()),
            Box::new(self.race_memory.clone()),
            Box::new(self.races_evicted.clone()),
            Box::new(self.broker_up.clone()),
            Box::new(self.ws_refused.clone()),
            Box::new(build_info()),
        ];
        for collector in collectors {
            // unwrap: every name above is distinct and valid, so registration cannot fail.
            self.registry
                .register(collector)
                .unwrap_or_else(unreachable);
        }
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // unwrap: encoding gathered families into memory cannot fail.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .unwrap_or_else(unreachable);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn disconnected(&self, reason: Disconnect) {
        self.ws_disconnects
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Samples the process's CPU and memory every `every`, for as long as the runtime lives.
    pub fn sample_process(self: &Arc<Self>, every: Duration, tasks: &crate::shutdown::Tasks) {
        let metrics = self.clone();
        tasks.spawn("process sampler", async move {
            let Ok(pid) = sysinfo::get_current_pid() else {
                return;
            };
            let mut system = sysinfo::System::new();
            let kind = sysinfo::ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory();
            let mut last_cpu_ms = 0;
            loop {
                system.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    true,
                    kind,
                );
                if let Some(process) = system.process(pid) {
                    metrics
                        .process_cpu_ratio
                        .set(f64::from(process.cpu_usage()) / 100.0);
                    let cpu_ms = process.accumulated_cpu_time();
                    metrics
                        .process_cpu_seconds
                        .inc_by(cpu_ms.saturating_sub(last_cpu_ms) as f64 / 1000.0);
                    last_cpu_ms = cpu_ms;
                    metrics
                        .process_resident_memory
                        .set(i64::try_from(process.memory()).unwrap_or(i64::MAX));
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("replay_hub_{name}"), help)
}

fn build_info() -> IntGauge {
    let gauge = IntGauge::with_opts(
        opts("build_info", "Always 1; the version is a label")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )
    .unwrap_or_else(unreachable);
    gauge.set(1);
    gauge
}

/// Metric construction fails only on invalid names or duplicate registration, both fixed in
/// the code above; reaching this is a bug.
fn unreachable<T>(err: prometheus::Error) -> T {
    panic!("metrics definition error: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_render() {
        let metrics = Metrics::new();
        metrics.frames_sent.inc();
        metrics.disconnected(Disconnect::Stalled);
        let text = metrics.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("replay_hub_"), "{name}");
            let counter = line.ends_with("counter");
            assert_eq!(counter, name.ends_with("_total"), "{line}");
        }
        assert!(text.contains("replay_hub_delivery_frames_sent_total 1"));
        assert!(text.contains("replay_hub_ws_disconnects_total{reason=\"stalled\"} 1"));
        assert!(text.contains("replay_hub_delivery_frames_dropped_total{reason=\"slow\"} 0"));
    }
}
