//! `gochat-wscodec`: decoding masked client frames (unmask in place + UTF-8
//! check, as a gateway shard does on its read buffer) and encoding unmasked
//! server frames (one allocation, header + payload). Throughput is counted in
//! wire bytes (frame header + payload).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gochat_bench::{large_send_message, new_message, stored_group_message, MASK, SMALL_SEND_MESSAGE};
use gochat_wscodec::{client_frame, server_text, Message, MessageDecoder, OpCode};

/// The gateway's default `max_frame_bytes` / `max_message_bytes` (1 MiB).
const MAX: usize = 1 << 20;
const LARGE: usize = 64 * 1024;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_codec/decode_client");
    let cases = [
        ("small", SMALL_SEND_MESSAGE.as_bytes().to_vec(), BatchSize::SmallInput),
        ("64KiB", large_send_message(LARGE), BatchSize::LargeInput),
    ];
    for (name, payload, batch) in cases {
        let frame = client_frame(OpCode::Text, true, &payload, MASK);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        // One decoder per connection, reused across frames as in the gateway.
        let mut decoder = MessageDecoder::new(MAX, MAX);
        // Decoding unmasks in place, so each iteration gets a fresh copy of the
        // masked frame (made outside the timed section).
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |buf| {
                    let decoded = decoder.decode(buf).expect("valid frame").expect("complete frame");
                    match decoded.message {
                        Some(Message::Text(text)) => (decoded.consumed, black_box(text).len()),
                        other => panic!("unexpected {other:?}"),
                    }
                },
                batch,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_codec/encode_server");
    // Small: a real new-message push (~300 B); large: 64 KiB of JSON text.
    let cases = [("small", new_message(&stored_group_message()).to_vec()), ("64KiB", large_send_message(LARGE))];
    for (name, payload) in cases {
        group.throughput(Throughput::Bytes(server_text(&payload).len() as u64));
        group.bench_function(name, |b| b.iter(|| server_text(black_box(&payload))));
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
