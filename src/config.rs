//! Command line and environment configuration.
//!
//! `main` parses a [`Cli`]; `serve` hands its [`Config`] to [`crate::App::build`]. Every flag has a
//! `REPLAY_HUB_*` environment variable and a documented default, and every limit lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use crate::cache::{CacheSpec, Compression};

/// replay-hub: broadcast Formula 1 race replays to many synchronised viewers.
///
/// With no subcommand, `serve` runs with its defaults.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Subcommand>,

    #[command(flatten)]
    pub serve: Config,

    /// Log format on stderr: `text` for people (coloured only on a terminal), `json` for log
    /// shippers (one JSON object per line, with the span fields).
    #[arg(long, env = "REPLAY_HUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log events are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The subcommand to run; no subcommand means `serve` with the top-level flags.
    pub fn into_command(self) -> Subcommand {
        self.command.unwrap_or(Subcommand::Serve(self.serve))
    }
}

/// Made once per run, so the size of `Serve`'s config does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Serve races and sessions over HTTP and WebSocket (the default).
    Serve(Config),
    /// Generate a deterministic synthetic race file.
    Generate(GenerateArgs),
    /// Validate a race file, encode it and store it in the cache, for any hub to serve.
    Import(ImportArgs),
}

/// Where encoded races are cached; shared by `serve` and `import`.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Encoded-race cache: redis://host:6379/0, dir:PATH or none. Default: dir:<data-dir>/cache.
    #[arg(long, env = "REPLAY_HUB_CACHE")]
    pub cache: Option<CacheSpec>,

    /// Prefix of every Redis key (cache and broker), so several deployments can share one Redis.
    #[arg(long, env = "REPLAY_HUB_CACHE_PREFIX", default_value = "replay-hub")]
    pub cache_prefix: String,

    /// Compression of cached frame chunks.
    #[arg(long, env = "REPLAY_HUB_CACHE_COMPRESSION", value_enum, default_value_t = Compression::Zstd)]
    pub cache_compression: Compression,
}

impl CacheArgs {
    /// The cache to use, with the default (a directory under the data directory) filled in.
    pub fn spec(&self, data_dir: &std::path::Path) -> CacheSpec {
        self.cache
            .clone()
            .unwrap_or_else(|| CacheSpec::Dir(data_dir.join("cache")))
    }
}

/// Everything `serve` needs; tests build one with [`Config::for_tests`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on: HOST:PORT with an IP address or `localhost`, or a bare port
    /// (`8080`, `:8080`) on 127.0.0.1. Use 0.0.0.0:PORT for every interface, port 0 for a free port.
    #[arg(long, env = "REPLAY_HUB_BIND", default_value = "127.0.0.1:8080", value_parser = parse_bind)]
    pub bind: SocketAddr,

    /// Directory holding race files (`*.race`). Created if missing; when it holds no race, a short
    /// demo race is generated into it.
    #[arg(long, env = "REPLAY_HUB_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Redis URL through which replicas share sessions and their timelines (none: this hub's
    /// sessions are its own).
    #[arg(long, env = "REPLAY_HUB_BROKER")]
    pub broker: Option<String>,

    /// Largest race file accepted by `PUT /api/races/{id}`, in bytes.
    #[arg(long, env = "REPLAY_HUB_MAX_UPLOAD_BYTES", default_value_t = 512 << 20)]
    pub max_upload_bytes: u64,

    /// Bearer token for admin endpoints (create/delete sessions). Generated and printed when unset.
    #[arg(long, env = "REPLAY_HUB_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<String>,

    /// Session created and playing at start-up, over the first race ("" for none).
    #[arg(long, env = "REPLAY_HUB_DEMO_SESSION", default_value = "demo")]
    pub demo_session: String,

    /// How long a looping session (the demo, or one created with `"loop": true`) waits at the
    /// finish, in ms, before it plays again from the start.
    #[arg(long, env = "REPLAY_HUB_LOOP_PAUSE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub loop_pause_ms: u64,

    /// Laps of the demo race generated into an empty data directory.
    #[arg(long, env = "REPLAY_HUB_DEMO_LAPS", default_value_t = 10)]
    pub demo_laps: u16,

    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "REPLAY_HUB_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Most sessions that may exist at once.
    #[arg(long, env = "REPLAY_HUB_MAX_SESSIONS", default_value_t = 100)]
    pub max_sessions: usize,

    /// Most viewers connected to one session.
    #[arg(
        long,
        env = "REPLAY_HUB_MAX_VIEWERS_PER_SESSION",
        default_value_t = 10_000
    )]
    pub max_viewers_per_session: usize,

    /// Length of one look-ahead window in ms: how much upcoming playback a look-ahead viewer
    /// gets per message (and, at least, holds ahead of the present).
    #[arg(long, env = "REPLAY_HUB_LOOKAHEAD_WINDOW_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(200..=5_000))]
    pub lookahead_window_ms: u64,

    /// Memory encoded races may take, in bytes. Races no session plays are dropped, least
    /// recently used first, to stay under it; a race that would not fit beside the races being
    /// played is refused with 503.
    #[arg(long, env = "REPLAY_HUB_RACE_MEMORY_BUDGET", default_value_t = 1 << 30)]
    pub race_memory_budget: u64,

    /// After a race fails to load (a broken file, a cache and file both unusable), requests for
    /// it get the same error for this long before it is tried again, in ms.
    #[arg(long, env = "REPLAY_HUB_LOAD_RETRY_MS", default_value_t = 30_000)]
    pub load_retry_ms: u64,

    /// Pages (by their Origin header) that may open WebSockets, besides the hub's own origin and
    /// loopback pages: comma-separated `scheme://host[:port]`, or `*` for every origin. Clients
    /// that send no Origin (not browsers) are not affected. A refused page gets 403.
    #[arg(long, env = "REPLAY_HUB_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: crate::admission::OriginPolicy,

    /// Most WebSockets one client address may hold open at once (0: no limit); more get 429.
    #[arg(long, env = "REPLAY_HUB_MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    pub max_connections_per_ip: u32,

    /// Header holding the client's address, when the hub is behind a proxy that sets it (e.g.
    /// X-Forwarded-For; its first address is taken). Unset: the peer address. Only set this behind
    /// a proxy that overwrites the header, or clients can claim any address.
    #[arg(long, env = "REPLAY_HUB_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,

    /// Control commands one session accepts per second from all its controllers together
    /// (bursts up to this many); more are answered with `rate_limited`.
    #[arg(long, env = "REPLAY_HUB_SESSION_COMMANDS_PER_SECOND", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub session_commands_per_second: u32,

    /// Largest WebSocket message a client may send, in bytes; larger closes with 1009.
    #[arg(long, env = "REPLAY_HUB_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Control commands a connection may send per second (bursts up to this many).
    #[arg(long, env = "REPLAY_HUB_COMMANDS_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub commands_per_second: u32,

    /// Most frames one `GET /api/races/{race}/frames` request may return.
    #[arg(
        long,
        env = "REPLAY_HUB_MAX_FRAMES_PER_REQUEST",
        default_value_t = 1500
    )]
    pub max_frames_per_request: u32,

    /// Largest request body accepted by JSON endpoints, in bytes.
    #[arg(long, env = "REPLAY_HUB_MAX_JSON_BYTES", default_value_t = 16 * 1024)]
    pub max_json_bytes: usize,

    /// How often the hub pings each viewer, in milliseconds.
    #[arg(long, env = "REPLAY_HUB_HEARTBEAT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,

    /// A viewer from which nothing (not even a pong) arrived for this long is dropped, in ms.
    #[arg(long, env = "REPLAY_HUB_CLIENT_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout_ms: u64,

    /// A viewer whose socket accepted nothing for this long is closed with code 4001, in ms.
    #[arg(long, env = "REPLAY_HUB_STALL_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout_ms: u64,

    /// A connection whose peer acknowledges nothing for this long is cut by the kernel
    /// (TCP_USER_TIMEOUT, Linux), so a client that never reads cannot pin its buffers forever.
    /// A backstop behind the stall and heartbeat timeouts, so keep it well above both.
    /// In ms; 0 leaves the OS default.
    #[arg(
        long,
        env = "REPLAY_HUB_TCP_USER_TIMEOUT_MS",
        default_value_t = 120_000
    )]
    pub tcp_user_timeout_ms: u64,

    /// Kernel send buffer per connection in bytes (0 = the OS default, which autotunes up to
    /// several MB). Bounds what a slow viewer holds in kernel memory (256 KiB is about 10 s of
    /// frames) before its frames are dropped instead, and lets a stalled one be detected.
    #[arg(long, env = "REPLAY_HUB_SOCKET_SEND_BUFFER", default_value_t = 256 * 1024)]
    pub socket_send_buffer: usize,

    /// How often the data directory is listed again for race files added, changed or removed,
    /// in ms, besides the file-system notifications that pick them up at once (0: never).
    #[arg(long, env = "REPLAY_HUB_RESCAN_INTERVAL_MS", default_value_t = 30_000)]
    pub rescan_interval_ms: u64,

    /// Most time shutdown may take before connections are cut, in ms.
    #[arg(long, env = "REPLAY_HUB_SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_timeout_ms: u64,
}

impl Config {
    /// Defaults with port 0 and the given data directory: what integration tests start from.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        // unwrap: parsing the defaults with no arguments cannot fail.
        let mut config = Cli::try_parse_from(["replay-hub"]).unwrap().serve;
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config.demo_laps = 2;
        config.workers = 2;
        config
    }

    pub fn lookahead_window(&self) -> Duration {
        Duration::from_millis(self.lookahead_window_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn rescan_interval(&self) -> Option<Duration> {
        (self.rescan_interval_ms > 0).then(|| Duration::from_millis(self.rescan_interval_ms))
    }
}

/// Parses `--bind`: `HOST:PORT` with an IP address (`[::1]:8080` for IPv6) or `localhost`, or a
/// bare port (`8080` or `:8080`), which listens on 127.0.0.1.
pub fn parse_bind(value: &str) -> Result<SocketAddr, BadBind> {
    let value = value.trim();
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = value.strip_prefix(':').unwrap_or(value);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = value.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Err(BadBind)
}

/// A `--bind` value that is neither an address nor a port.
#[derive(Debug, thiserror::Error)]
#[error(
    "expected HOST:PORT with an IP address or localhost (127.0.0.1:8080, 0.0.0.0:8080, \
     [::1]:8080, localhost:8080) or a bare port (8080)"
)]
pub struct BadBind;

/// Parses `--admin-token`: an empty one would let `Authorization: Bearer ` through, and one with
/// whitespace at either end could never be presented (the presented token is trimmed).
pub fn parse_admin_token(value: &str) -> Result<String, BadAdminToken> {
    if value.trim().is_empty() {
        return Err(BadAdminToken::Empty);
    }
    if value.trim() != value {
        return Err(BadAdminToken::Whitespace);
    }
    Ok(value.to_owned())
}

/// An `--admin-token` / `REPLAY_HUB_ADMIN_TOKEN` the hub refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum BadAdminToken {
    #[error("the admin token is empty: set a secret, or unset it to have one generated")]
    Empty,
    #[error("the admin token starts or ends with whitespace (a trailing newline?): remove it")]
    Whitespace,
}

/// Arguments of `replay-hub generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Race laps.
    #[arg(long, default_value_t = 57)]
    pub laps: u16,
    /// Number of drivers (2 to 20).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(2..=20))]
    pub drivers: u8,
    /// Seed: the same seed always gives the same race, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Race id (lowercase letters, digits, '-' and '_'); defaults to the output file's stem.
    #[arg(long)]
    pub id: Option<String>,
    /// Race name shown to viewers.
    #[arg(long, default_value = "Generated Grand Prix")]
    pub name: String,
    /// Layout: "random" (made from the seed) or a built-in real circuit, e.g. it-1922 (Monza).
    #[arg(
        long,
        default_value = "random",
        value_parser = clap::builder::PossibleValuesParser::new(
            std::iter::once("random").chain(crate::race::circuit::ids())
        )
    )]
    pub circuit: String,
    /// Output race file.
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `replay-hub import`: a race file, or a source to import from.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: Option<ImportSource>,

    /// The race file to import.
    #[arg(required = true)]
    pub file: Option<PathBuf>,

    /// Data directory whose cache is the default.
    #[arg(long, env = "REPLAY_HUB_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Longest wait for the cache to answer before giving up, in ms.
    #[arg(long, env = "REPLAY_HUB_IMPORT_WAIT_MS", default_value_t = 5_000)]
    pub wait_ms: u64,
}

/// Where `replay-hub import` can fetch a race from instead of a file.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImportSource {
    /// Download a session from the OpenF1 API and write it as a race file (docs/IMPORTING.md).
    Openf1(Openf1Args),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = Cli::try_parse_from(["replay-hub"]).unwrap();
        match cli.into_command() {
            Subcommand::Serve(config) => {
                assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
                assert_eq!(config.max_message_bytes, 4096);
            }
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn serve_flags_parse_at_top_level_and_under_serve() {
        let top = Cli::try_parse_from(["replay-hub", "--bind", "0.0.0.0:9000"]).unwrap();
        let sub = Cli::try_parse_from(["replay-hub", "serve", "--bind", "0.0.0.0:9000"]).unwrap();
        for cli in [top, sub] {
            match cli.into_command() {
                Subcommand::Serve(config) => assert_eq!(config.bind.port(), 9000),
                other => panic!("expected serve, got {other:?}"),
            }
        }
    }

    #[test]
    fn bind_takes_a_bare_port_and_localhost() {
        for (given, expected) in [
            ("8080", "127.0.0.1:8080"),
            (":18503", "127.0.0.1:18503"),
            ("localhost:18503", "127.0.0.1:18503"),
            ("0.0.0.0:9000", "0.0.0.0:9000"),
            ("[::1]:9000", "[::1]:9000"),
        ] {
            assert_eq!(parse_bind(given).unwrap().to_string(), expected, "{given}");
        }
        for bad in [
            "",
            "example.com:80",
            "localhost",
            "127.0.0.1",
            "8080x",
            "70000",
        ] {
            let err = parse_bind(bad).unwrap_err().to_string();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn log_format_is_global() {
        let cli = Cli::try_parse_from([
            "replay-hub",
            "generate",
            "--out",
            "x",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["replay-hub"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
    }

    #[test]
    fn generate_rejects_too_many_drivers() {
        let err = Cli::try_parse_from(["replay-hub", "generate", "--drivers", "21", "--out", "x"])
            .unwrap_err();
        assert!(err.to_string().contains("21"), "{err}");
    }
}

/// The public API; `--api-url` or `REPLAY_HUB_OPENF1_URL` points elsewhere (a mirror, tests).
pub const DEFAULT_OPENF1_URL: &str = "https://api.openf1.org/v1";

/// Arguments of `replay-hub import openf1`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["session_key", "year", "list"])))]
pub struct Openf1Args {
    /// The session to import, as OpenF1 numbers it (see --list).
    #[arg(long, conflicts_with_all = ["country", "list"])]
    pub session_key: Option<u32>,
    /// Season, with --country (and --session) to find the session, or with --list.
    #[arg(long)]
    pub year: Option<i32>,
    /// Country of the meeting, e.g. Italy (as OpenF1's country_name).
    #[arg(long, requires = "year")]
    pub country: Option<String>,
    /// Session name within the meeting: Race, Sprint, Qualifying, Practice 1...
    #[arg(long, default_value = "Race")]
    pub session: String,
    /// List the year's meetings and sessions with their keys instead of importing.
    #[arg(long, requires = "year")]
    pub list: bool,
    /// Race id (a-z, 0-9, '-', '_'); default: circuit and year, e.g. monza-2024.
    #[arg(long)]
    pub id: Option<String>,
    /// Output race file; default: <data-dir>/<id>.race.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Data directory: the default home of the race file, the download cache and the cache.
    #[arg(long, env = "REPLAY_HUB_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Where downloaded responses are kept, one file per request; default:
    /// <data-dir>/openf1-downloads. A re-run reads them instead of downloading again.
    #[arg(long)]
    pub download_dir: Option<PathBuf>,
    /// Base URL of the OpenF1 API.
    #[arg(long, env = "REPLAY_HUB_OPENF1_URL", default_value = DEFAULT_OPENF1_URL)]
    pub api_url: String,
    /// Requests per second at most (the public API allows 30 per 10 s).
    #[arg(long, default_value_t = 2.5)]
    pub requests_per_second: f64,
    /// Retries of a request answered with 429, 5xx or a network error (backoff doubles from
    /// --backoff-ms, with jitter; a Retry-After header is honoured).
    #[arg(long, default_value_t = 6)]
    pub retries: u32,
    /// First retry delay in ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Largest response accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_response_bytes: u64,
    /// Minutes of location and car data per request (per driver).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub window_minutes: u32,
    /// Longest replay written, in minutes (a longer session is refused).
    #[arg(long, default_value_t = 300)]
    pub max_minutes: u32,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// After writing, also store the encoded race in this cache (as `replay-hub import FILE`);
    /// `none` skips it.
    #[command(flatten)]
    pub cache: CacheArgs,
}
