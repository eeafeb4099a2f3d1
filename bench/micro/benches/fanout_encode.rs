//! Encode-once fan-out vs per-recipient encode, for one `new-message` pushed
//! to N recipients (a group conversation).
//!
//! - `encode_once_clone`: what GoChat does: the logic serialises the
//!   new-message JSON once (`frames::new_message`), the gateway shard builds
//!   the WebSocket frame once (`server_text` in `push_loop`) and queues a
//!   clone of the same `Bytes` (a refcount bump) on every recipient.
//! - `encode_per_recipient`: the naive alternative: JSON + frame per recipient.
//!
//! Both queue into one `VecDeque<Bytes>` per recipient and then drain the
//! queues (the write task releasing the frames), so the timed work is
//! encode + enqueue + release. Throughput is in recipients: criterion's
//! `elem/s` inverted is the per-recipient time.

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gochat_bench::{new_message, stored_group_message};
use gochat_wscodec::server_text;

fn drain(queues: &mut [VecDeque<Bytes>]) {
    for q in queues {
        while let Some(frame) = q.pop_front() {
            black_box(frame.len());
        }
    }
}

fn fanout(c: &mut Criterion) {
    let msg = stored_group_message();
    let mut group = c.benchmark_group("fanout_encode");
    // An iteration at N = 10,000 takes milliseconds; fewer samples keep the
    // run short without hurting the median.
    group.sample_size(30);
    for n in [100usize, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        let mut queues: Vec<VecDeque<Bytes>> = (0..n).map(|_| VecDeque::with_capacity(4)).collect();

        group.bench_with_input(BenchmarkId::new("encode_once_clone", n), &n, |b, _| {
            b.iter(|| {
                let json = new_message(black_box(&msg));
                let frame = server_text(&json);
                for q in queues.iter_mut() {
                    q.push_back(frame.clone());
                }
                drain(&mut queues);
            })
        });
        group.bench_with_input(BenchmarkId::new("encode_per_recipient", n), &n, |b, _| {
            b.iter(|| {
                for q in queues.iter_mut() {
                    let json = new_message(black_box(&msg));
                    q.push_back(server_text(&json));
                }
                drain(&mut queues);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
