//! The `replay-hub` binary: parses the command line, sets up logging and runs the command.
//! Everything else lives in the library, where the tests and benches reach it too.

use anyhow::Context as _;
use clap::Parser;
use replay_hub::config::{Cli, Command};
use replay_hub::App;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.into_command() {
        Command::Serve(config) => actix_web::rt::System::new().block_on(serve(config)),
        Command::Generate(args) => {
            let started = std::time::Instant::now();
            let meta = replay_hub::generate_race_file(&args).map_err(anyhow::Error::msg)?;
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
        Command::Import(args) => {
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            if let Some(replay_hub::config::ImportSource::Openf1(openf1)) = args.source {
                let summary = runtime.block_on(replay_hub::import::openf1::run_cli(openf1))?;
                print!("{summary}");
                return Ok(());
            }
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let summary = runtime
                .block_on(replay_hub::import_race_file(&args))
                .map_err(anyhow::Error::msg)?;
            println!("{summary}");
            Ok(())
        }
        Command::Loadtest(args) => {
            let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
            let json = args.json.clone();
            let report = runtime
                .block_on(replay_hub::loadtest::run(args))
                .map_err(anyhow::Error::msg)?;
            println!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

async fn serve(config: replay_hub::config::Config) -> anyhow::Result<()> {
    let app = App::build(config)
        .await
        .context("replay-hub could not start")?;
    let mut host = app.addr();
    if host.ip().is_unspecified() {
        host.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    println!("replay-hub listening on http://{host}");
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
    println!("admin token: {}", app.admin_token());
    app.run().await.context("server error")
}
