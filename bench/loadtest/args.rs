//! The load tool's command line (`loadtest --help`); `main` parses it and [`crate::run`] reads it.

use std::path::PathBuf;

use clap::Parser;
use replay_hub::feed::Mode;
use replay_hub::window_codec::WindowEncoding;

/// loadtest: open many WebSocket viewers against a running replay-hub and report what they
/// receive (frames per second, gaps, spread between viewers, bandwidth, the hub's CPU and memory).
///
/// Exits non-zero when no viewer could connect, fewer viewers than asked connected, or no frames
/// were received.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version)]
pub struct LoadtestArgs {
    /// WebSocket URL of a session, e.g. ws://127.0.0.1:8080/ws/sessions/demo
    #[arg(long)]
    pub url: String,
    /// Viewers that read every frame.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Extra viewers that connect and never read (with a tiny receive buffer).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Seconds to measure for, after every viewer has connected.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Delivery mode to ask for: push (a message per frame) or lookahead (windows of frames,
    /// each shown at its time after a clock sync with the hub).
    #[arg(long, value_enum, default_value_t = Mode::Push)]
    pub mode: Mode,
    /// Look-ahead window encoding to ask for (`enc=` on the URL): msgpack (push frames in a
    /// msgpack map) or qdelta1 (quantised, delta-coded, deflated; see docs/PROTOCOL.md).
    #[arg(long, value_enum, default_value_t = WindowEncoding::Msgpack)]
    pub enc: WindowEncoding,
    /// Spread the viewers' sockets over this many loopback source addresses (127.0.0.1,
    /// 127.0.0.2, ...), so many thousands of connections to one hub do not run out of ephemeral
    /// ports; only for a hub on a loopback address.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addrs: u8,
    /// The hub's process id: adds its CPU time per delivered frame and its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
