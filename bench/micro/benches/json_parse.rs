//! Parsing a typical client `send-message` frame (~250 B, protocol v1 §3.3):
//! simd-json in place, as the gateway does, against serde_json.
//!
//! simd-json clobbers its input, so its cases get a fresh copy of the frame
//! per iteration, made outside the timed section (the gateway parses straight
//! in its read buffer and makes no copy either). serde_json reads the shared
//! bytes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gochat_bench::{gateway_send_message, SendMessageFrame, SENDER_ID, SEND_MESSAGE};

fn parse(c: &mut Criterion) {
    // The workspace builds simd-json without `runtime-detection`, so unless the
    // build targets AVX2/SSE4.2 (e.g. RUSTFLAGS="-C target-cpu=native") it runs
    // its scalar fallback. Say which one this run measures.
    eprintln!("simd-json implementation: {}", simd_json::Deserializer::algorithm());
    let frame = SEND_MESSAGE.as_bytes().to_vec();
    let mut group = c.benchmark_group("json_parse/send_message");
    group.throughput(Throughput::Bytes(frame.len() as u64));

    // The DOM only: simd_json::to_borrowed_value, strings borrowed from the buffer.
    group.bench_function("simd_json/borrowed_value", |b| {
        b.iter_batched_ref(
            || frame.clone(),
            |buf| {
                let value = simd_json::to_borrowed_value(buf).expect("valid json");
                black_box(&value);
            },
            BatchSize::SmallInput,
        )
    });
    // Same, with the parser's scratch buffers kept across calls (one set per
    // shard would do); the gateway currently allocates them per frame.
    let mut buffers = simd_json::Buffers::new(frame.len());
    group.bench_function("simd_json/borrowed_value_reused_buffers", |b| {
        b.iter_batched_ref(
            || frame.clone(),
            |buf| {
                let value = simd_json::to_borrowed_value_with_buffers(buf, &mut buffers).expect("valid json");
                black_box(&value);
            },
            BatchSize::SmallInput,
        )
    });
    // What the gateway does per send-message: borrowed DOM + protocol v1
    // validation + compact re-encode of `content` + owned ids.
    group.bench_function("simd_json/gateway_validate", |b| {
        b.iter_batched_ref(
            || frame.clone(),
            |buf| gateway_send_message(buf, black_box(SENDER_ID)).expect("valid send-message"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("simd_json/typed", |b| {
        b.iter_batched_ref(
            || frame.clone(),
            |buf| simd_json::serde::from_slice::<SendMessageFrame>(buf).expect("valid send-message"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("serde_json/value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&frame)).expect("valid json"))
    });
    group.bench_function("serde_json/typed", |b| {
        b.iter(|| serde_json::from_slice::<SendMessageFrame>(black_box(&frame)).expect("valid send-message"))
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
