//! Micro-benchmarks of the pieces every message goes through: building a frame (once per
//! message), fanning it out to the sockets of a room (once per delivery), and the per-socket
//! rate limiter (once per message received). Run with `cargo bench --bench hot_path`; the
//! whole-server figures are in BENCHMARKS.md (confab-bench).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use confab::hub::{Hub, SocketLink};
use confab::metrics::Metrics;
use confab::protocol::{EventKind, Frame, RoomName, event_body, splice_id};
use confab::ratelimit::TokenBucket;
use confab::user::{Identity, User};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn identity() -> Identity {
    Identity::new(User {
        id: "0123456789abcdef0123456789abcdef".into(),
        name: "Ada Lovelace".into(),
        image: "/static/avatars/3.svg".into(),
        role: None,
        bot: false,
    })
}

/// One message's serialization: the body, then the id spliced in.
fn frame_serialization(c: &mut Criterion) {
    let user = identity();
    let room = RoomName::lobby();
    let text = "Did the cluster tests pass overnight? All green here, three nodes and nginx.";
    c.bench_function("frame: event_body + splice_id", |b| {
        b.iter(|| {
            let body = event_body(
                EventKind::Chat,
                &room,
                user.json(),
                black_box(text),
                1_764_072_000_000,
            );
            splice_id(black_box(1_764_072_000_000_123), &body)
        });
    });
}

/// One frame handed to every socket of a room, then each queue drained as its writer would.
fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan-out");
    for sockets in [10usize, 100, 1000] {
        let hub = Arc::new(Hub::new(Metrics::new("bench")));
        let room = RoomName::lobby();
        let links: Vec<Arc<SocketLink>> = (0..sockets)
            .map(|_| Arc::new(SocketLink::new(1024)))
            .collect();
        let _registrations: Vec<_> = links
            .iter()
            .map(|link| hub.register(&room, &identity(), link.clone()))
            .collect();
        let frame = Frame::new(
            1,
            "{\"id\":1,\"type\":\"chat\",\"room\":\"lobby\",\"data\":\"hello\"}",
        );
        let mut batch = VecDeque::new();
        group.throughput(Throughput::Elements(sockets as u64));
        group.bench_with_input(BenchmarkId::from_parameter(sockets), &sockets, |b, _| {
            b.iter(|| {
                hub.dispatch("lobby", black_box(&frame));
                for link in &links {
                    link.take_queued(&mut batch);
                    batch.clear();
                }
            });
        });
    }
    group.finish();
}

/// The token bucket's check, as the reader makes it for every message.
fn rate_limiter(c: &mut Criterion) {
    let start = tokio::time::Instant::now();
    let mut bucket = TokenBucket::new(start);
    let mut tick = 0u64;
    c.bench_function("rate limiter: try_take", |b| {
        b.iter(|| {
            tick += 1;
            bucket.try_take(black_box(
                start + std::time::Duration::from_micros(tick * 100),
            ))
        });
    });
}

criterion_group!(hot_path, frame_serialization, fan_out, rate_limiter);
criterion_main!(hot_path);
