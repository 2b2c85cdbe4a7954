//! Erasure codec throughput: encode a 4 MiB block as ec:4+2, decode it with
//! two data shards lost, and replica:3, against a memcpy of the same bytes
//! measured in the same run (docs/BENCHMARKS.md records the ratios).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tessera_common::{Codec, Protection, MAX_BLOCK};

fn codec(c: &mut Criterion) {
    let data: Vec<u8> = (0..MAX_BLOCK).map(|i| (i * 31 + i / 4093) as u8).collect();
    let mut g = c.benchmark_group("block_4MiB");
    g.throughput(Throughput::Bytes(MAX_BLOCK as u64));
    g.bench_function("memcpy_baseline", |b| {
        b.iter(|| std::hint::black_box(data.clone()))
    });
    g.bench_function("crc32", |b| {
        b.iter(|| tessera_common::crc32(std::hint::black_box(&data)))
    });
    for spec in ["ec:4+2", "ec:8+3", "replica:3"] {
        let p: Protection = spec.parse().unwrap();
        let codec = Codec::new(p);
        // What the write path calls: the block is shared, not copied.
        let shared = bytes::Bytes::from(data.clone());
        g.bench_with_input(BenchmarkId::new("encode", spec), &shared, |b, d| {
            b.iter(|| codec.encode_shared(d.clone()))
        });
        let shards = codec.encode(&data);
        g.bench_with_input(
            BenchmarkId::new("decode_lost_m_data_shards", spec),
            &shards,
            |b, s| {
                b.iter(|| {
                    let mut partial: Vec<Option<Vec<u8>>> = s.iter().cloned().map(Some).collect();
                    for lost in partial.iter_mut().take(p.m.into()) {
                        *lost = None;
                    }
                    codec.decode(1, partial, data.len()).unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
