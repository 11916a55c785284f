//! The `replay-hub` binary: parses the command line, sets up logging and runs the command.
//! Everything else lives in the library, where the tests and benches reach it too.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use replay_hub::config::{Cli, LogFormat, Subcommand};
use replay_hub::App;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: with 19,800 look-ahead viewers the hub holds about
/// 16 KiB per viewer under jemalloc against 19.3 KiB under glibc, at the same CPU per frame.
/// Most of a viewer is actix-http's two 8 KiB connection buffers, of which little is written;
/// jemalloc keeps same-sized blocks apart from small ones, so their unwritten pages are never
/// touched (BENCHMARKS.md, "Memory per viewer and per race").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Runs the command; an expected failure is one line on stderr and exit code 1, never a
/// backtrace (whatever `RUST_BACKTRACE` says).
fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: text, coloured only when stderr is a terminal (and `NO_COLOR` is unset),
/// or one JSON object per line with the current span and its parents' fields.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.into_command() {
        Subcommand::Serve(config) => actix_web::rt::System::new().block_on(serve(config)),
        Subcommand::Generate(args) => {
            let started = std::time::Instant::now();
            let meta = replay_hub::cli::generate_race_file(&args)?;
            println!(
                "wrote {} ({} laps, {} drivers, {} frames) in {:.2} s",
                args.out.display(),
                meta.total_laps,
                meta.drivers.len(),
                meta.total_frames,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Subcommand::Import(args) => {
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            if let Some(replay_hub::config::ImportSource::Openf1(openf1)) = args.source {
                let summary = runtime.block_on(replay_hub::import::openf1::run_cli(openf1))?;
                print!("{summary}");
                return Ok(());
            }
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let summary = runtime.block_on(replay_hub::cli::import_race_file(&args))?;
            println!("{summary}");
            Ok(())
        }
    }
}

async fn serve(config: replay_hub::config::Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    // Every viewer is a socket: allow as many as the hard limit lets this process open.
    match replay_hub::fd_limit::raise_to_hard() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open file limit"),
    }
    let app = App::build(config)
        .await
        .context("replay-hub could not start")?;
    let mut host = app.addr();
    if host.ip().is_unspecified() {
        host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    println!("replay-hub listening on http://{host}");
    for id in app.resumed() {
        let record = data_dir.join("sessions").join(format!("{id}.json"));
        println!(
            "resumed:     http://{host}/sessions/{id} (same control token as before; for a new one, delete the session or remove {} before starting)",
            record.display()
        );
    }
    if let Some(demo) = app.demo() {
        println!("watch:       http://{host}/sessions/{}", demo.id);
        println!(
            "control:     http://{host}/sessions/{}?token={}",
            demo.id, demo.control_token
        );
        println!("viewer URL:  ws://{host}/ws/sessions/{}", demo.id);
        println!(
            "control URL: ws://{host}/ws/sessions/{}?token={}",
            demo.id, demo.control_token
        );
    }
    if app.admin_token_generated() {
        println!("admin token: {}", app.admin_token());
    } else {
        println!("admin token: set from --admin-token / REPLAY_HUB_ADMIN_TOKEN");
    }
    app.run().await.context("server error")
}
