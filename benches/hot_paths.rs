//! The hot paths: encoding a frame; a session publishing a frame and every viewer's socket
//! writer taking it (the whole per-viewer send path short of the socket write); and building a
//! look-ahead window (msgpack and compact). Run with `cargo bench --bench hot_paths`; figures
//! in BENCHMARKS.md.

use std::hint::black_box;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replay_hub::encode::{encode_frame, window_message, ws_binary, EncodedRace};
use replay_hub::feed::Broadcast;
use replay_hub::metrics::Metrics;
use replay_hub::race::{generate, Frame, GenParams};
use replay_hub::writer::DeliveryStats;
use replay_hub::writer::{Out, Subscription, Wire, Writer};

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

fn encoded_race() -> Arc<EncodedRace> {
    let (meta, frames) = race();
    Arc::new(EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).expect("encodes"))
}

/// One viewer's socket writer, subscribed to `broadcast`.
struct Socket {
    body: Pin<Box<Writer>>,
}

fn writer(broadcast: &Broadcast, stats: &Arc<DeliveryStats>) -> Socket {
    let wire = Rc::new(Wire::default());
    wire.send(Out::Subscribe(Subscription {
        feed: broadcast.subscribe(),
        stats: stats.clone(),
        state_version: 1,
    }));
    Socket {
        body: Box::pin(Writer::new(wire, BoxBody::new(()))),
    }
}

/// Everything a writer has to send now, as the HTTP dispatcher would take it.
fn drain(writer: &mut Socket, cx: &mut Context<'_>) -> usize {
    let mut bytes = 0;
    while let Poll::Ready(Some(Ok(chunk))) = writer.body.as_mut().poll_next(cx) {
        bytes += chunk.len();
    }
    bytes
}

/// A session tick: the frame is framed once and published; this thread's relay copies it and
/// every writer takes it. Writers live in a local task set, as on an HTTP worker.
fn fan_out(c: &mut Criterion) {
    let race = encoded_race();
    let state = Bytes::from_static(b"state");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    let mut group = c.benchmark_group("publish a frame, every writer takes it");
    for viewers in [1usize, 100, 1000, 5000] {
        let stats = Arc::new(DeliveryStats::new(Metrics::new()));
        let mut broadcast = Broadcast::new();
        let mut writers: Vec<Socket> = local.block_on(&runtime, async {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            let mut writers: Vec<Socket> =
                (0..viewers).map(|_| writer(&broadcast, &stats)).collect();
            for w in &mut writers {
                drain(w, &mut cx);
            }
            writers
        });
        let mut index = 0u32;
        group.throughput(Throughput::Elements(viewers as u64));
        group.bench_with_input(BenchmarkId::from_parameter(viewers), &viewers, |b, _| {
            b.iter_custom(|iters| {
                local.block_on(&runtime, async {
                    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                    let started = Instant::now();
                    for _ in 0..iters {
                        index = (index + 1) % race.total_frames();
                        let frame = race.frame(index).expect("index in range");
                        broadcast.publish((1, &state), ws_binary(frame), 1, None, Instant::now());
                        // Let the relay take the new value, as the worker's scheduler would.
                        tokio::task::yield_now().await;
                        let mut bytes = 0;
                        for w in &mut writers {
                            bytes += drain(w, &mut cx);
                        }
                        black_box(bytes);
                    }
                    started.elapsed()
                })
            })
        });
        drop(writers);
    }
    group.finish();
}

/// Building one look-ahead window of 25 frames (1 s at 1×), once per window per session.
fn window(c: &mut Criterion) {
    let race = encoded_race();
    let indices: Vec<u32> = (1000..1025).collect();
    c.bench_function("build a 25-frame look-ahead window", |b| {
        b.iter(|| black_box(ws_binary(window_message(&race, 3, black_box(&indices)))).len())
    });
    // The compact form: the race's frames decoded, quantised, delta-coded and deflated.
    c.bench_function("build a 25-frame compact (qdelta1) window", |b| {
        b.iter(|| {
            let frames: Vec<_> = black_box(&indices)
                .iter()
                .map(|&i| replay_hub::encode::decode_frame(&race.frame(i).unwrap()).unwrap())
                .collect();
            black_box(ws_binary(
                replay_hub::window_codec::encode(3, &frames).unwrap(),
            ))
            .len()
        })
    });
    let frames: Vec<_> = indices
        .iter()
        .map(|&i| replay_hub::encode::decode_frame(&race.frame(i).unwrap()).unwrap())
        .collect();
    let compact = replay_hub::window_codec::encode(3, &frames).unwrap();
    let limits = replay_hub::window_codec::DecodeLimits::default();
    c.bench_function("decode a 25-frame compact (qdelta1) window", |b| {
        b.iter(|| {
            black_box(replay_hub::window_codec::decode(black_box(&compact), &limits).unwrap())
                .frames
                .len()
        })
    });
}

criterion_group!(benches, encoding, fan_out, window);
criterion_main!(benches);
