//! The hot paths: encoding a frame, and one session fan-out to N in-process viewers (the cost
//! per viewer of offering a frame: a `Deliver` into each bounded mailbox). Run with
//! `cargo bench --bench hot_paths`; figures in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replay_hub::encode::{encode_frame, EncodedRace};
use replay_hub::metrics::Metrics;
use replay_hub::race::{generate, Frame, GenParams};
use replay_hub::session::{Command, Control, Deliver, Ended, Join, Session};

fn race() -> (replay_hub::race::RaceMeta, Vec<Frame>) {
    let params = GenParams {
        laps: 2,
        drivers: 20,
        seed: 7,
        id: "bench".into(),
        name: "Bench".into(),
    };
    generate(&params, |_, _| {}).expect("the generator works")
}

fn encoding(c: &mut Criterion) {
    let (_, frames) = race();
    let frame = &frames[frames.len() / 2];
    let mut buf = BytesMut::with_capacity(4096);
    c.bench_function("encode one frame (20 drivers)", |b| {
        b.iter(|| {
            buf.clear();
            encode_frame(black_box(1234), black_box(frame), &mut buf);
            black_box(buf.len())
        })
    });
}

/// A viewer that only takes frames off its mailbox: what the session pays for, without sockets.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Sink {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        black_box(msg.bytes.len());
    }
}

impl Handler<Ended> for Sink {
    type Result = ();
    fn handle(&mut self, _: Ended, _: &mut Context<Self>) {}
}

fn fan_out(c: &mut Criterion) {
    let (meta, frames) = race();
    let race = std::sync::Arc::new(
        EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).expect("encodes"),
    );
    let runner = actix::System::new();
    let mut group = c.benchmark_group("session fan-out");
    for viewers in [100usize, 1000] {
        let session = runner.block_on(async {
            let session =
                Session::new("bench", race.clone(), false, 100_000, Metrics::new()).start();
            for _ in 0..viewers {
                let sink = Sink.start();
                session
                    .send(Join {
                        frames: sink.clone().recipient(),
                        ended: sink.recipient(),
                    })
                    .await
                    .expect("session alive")
                    .expect("room for viewers");
            }
            session
        });
        group.throughput(Throughput::Elements(viewers as u64));
        group.bench_with_input(BenchmarkId::from_parameter(viewers), &viewers, |b, _| {
            // Each seek makes the session offer a new frame to every viewer, as a tick does.
            b.iter_custom(|iters| {
                runner.block_on(async {
                    let mut measured = Duration::ZERO;
                    for n in 0..iters {
                        let frame = (n % 4000) as u32;
                        let started = Instant::now();
                        session
                            .send(Control(Command::Seek(frame)))
                            .await
                            .expect("session alive");
                        measured += started.elapsed();
                        // Let the viewers drain their mailboxes, outside the measured fan-out.
                        actix::clock::sleep(Duration::from_millis(1)).await;
                    }
                    measured
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encoding, fan_out);
criterion_main!(benches);
