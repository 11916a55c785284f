//! Serves a generated OpenF1 session on 127.0.0.1 for benchmarking `replay-hub import openf1`
//! (BENCHMARKS.md): `cargo run --release -p replay-hub-bench --bin openf1_server -- [LAPS]
//! [DRIVERS] [PORT]`.
//! Prints the API URL, then serves until killed.

use openf1_fixture::{Fixture, FixtureServer, FixtureSpec};

fn main() -> std::io::Result<()> {
    let arg = |i: usize| std::env::args().nth(i).and_then(|a| a.parse::<u32>().ok());
    let mut spec = FixtureSpec::full();
    spec.laps = arg(1).unwrap_or(spec.laps);
    spec.drivers = arg(2).map(|d| d as usize).unwrap_or(spec.drivers);
    let port = arg(3).unwrap_or(0) as u16;
    let started = std::time::Instant::now();
    let fixture = Fixture::generate(&spec);
    let server = FixtureServer::start_on(fixture, Vec::new(), port)?;
    eprintln!(
        "generated {} laps x {} cars in {:.1} s",
        spec.laps,
        spec.drivers,
        started.elapsed().as_secs_f64()
    );
    println!("{}", server.url);
    loop {
        std::thread::park();
    }
}
