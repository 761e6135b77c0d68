//! Criterion micro-benchmarks of the hub's hot path: envelope encode/decode and the channel
//! registry (lookup, encode once, queue to every subscriber).
//!
//!     cargo bench -p ws-bench --bench hot_path

// A benchmark fails loudly on a setup that cannot work.
#![allow(clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use ws_protocol::{Payload, PublishRef, WsMessage, encode_publication};
use ws_server::bench_support::FanOut;

fn price() -> WsMessage {
    WsMessage::PriceUpdate {
        input_mint: "So11111111111111111111111111111111111111112".into(),
        output_mint: "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v".into(),
        price: 187.4213,
        volume: 1200,
        timestamp: 1_763_780_000_000,
    }
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    let data = Payload::from_value(&price()).expect("serializable");
    let publish = WsMessage::Publish {
        id: None,
        key: None,
        channel: "prices:SOL-USDC".into(),
        data: data.clone(),
        ack_range: false,
    }
    .to_json();
    let publication = encode_publication("prices:SOL-USDC", 42, data.as_raw());
    group.bench_function("encode PriceUpdate", |b| {
        b.iter(|| black_box(price()).to_json());
    });
    group.bench_function("encode Publication (raw data)", |b| {
        b.iter(|| encode_publication(black_box("prices:SOL-USDC"), 42, black_box(data.as_raw())));
    });
    group.bench_function("decode Publish", |b| {
        b.iter(|| WsMessage::from_json(black_box(&publish)));
    });
    // What the hub does with a canonical Publish instead (see `PublishRef`).
    group.bench_function("read Publish in place", |b| {
        b.iter(|| PublishRef::parse(black_box(&publish)).map(|p| p.data.len()));
    });
    group.bench_function("decode Publication", |b| {
        b.iter(|| WsMessage::from_json(black_box(&publication)));
    });
    group.bench_function("decode Publication + data as PriceUpdate", |b| {
        b.iter(|| match WsMessage::from_json(black_box(&publication)) {
            Ok(WsMessage::Publication { data, .. }) => data.decode::<WsMessage>().ok(),
            _ => None,
        });
    });
    group.finish();
}

fn registry(c: &mut Criterion) {
    let data = Payload::from_value(&price()).expect("serializable");
    let mut group = c.benchmark_group("fan-out");
    for subscribers in [1usize, 100, 1000] {
        let fanout = FanOut::new(1, subscribers, 1 << 20);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("publish to subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let published = fanout.publish("c0", data.as_raw());
                    fanout.drain(0);
                    published
                });
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("lookup");
    for channels in [10usize, 10_000] {
        let fanout = FanOut::new(channels, 1, 1 << 20);
        let middle = channels / 2;
        let name = format!("c{middle}");
        group.bench_with_input(
            BenchmarkId::new("publish among channels", channels),
            &channels,
            |b, _| {
                b.iter(|| {
                    let published = fanout.publish(black_box(&name), data.as_raw());
                    fanout.drain(middle);
                    published
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("publish to a channel nobody has", channels),
            &channels,
            |b, _| b.iter(|| fanout.publish(black_box("missing"), data.as_raw())),
        );
    }
    group.finish();
}

criterion_group!(benches, envelope, registry);
criterion_main!(benches);
