//! Micro-benchmarks: batch encode/decode and the log's append/read paths.
//! Run with `cargo bench -p garam-benches`; figures go in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use garam_log::batch::{Batch, BatchBuilder, Compression};
use garam_log::{Log, LogOptions, TopicConfig};

const RECORDS: usize = 1000;

fn build(codec: Compression) -> bytes::Bytes {
    let value = [b'x'; 100];
    let mut b = BatchBuilder::new(codec);
    for i in 0..RECORDS {
        b.push(i as i64, None, Some(&value), &[]);
    }
    b.finish().expect("encode")
}

/// Records shaped like a count's changelog: a 10-byte key and a 9-byte value (a format version
/// and a `u64`), where the per-record framing costs as much as the bytes.
fn build_small() -> bytes::Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..RECORDS {
        let key = [b'k', b'e', b'y', b'-', b'0' + (i % 10) as u8, b'0', b'0', b'0', b'0', b'0'];
        let value = (i as u64).to_be_bytes();
        let mut v = [1u8; 9];
        v[1..].copy_from_slice(&value);
        b.push(1_700_000_000_000, Some(&key), Some(&v), &[]);
    }
    b.finish().expect("encode")
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("encode/none/10B-key-9B-value", |b| b.iter(build_small));
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        g.bench_function(format!("encode/{}", codec.name()), |b| b.iter(|| build(codec)));
        let bytes = build(codec);
        g.bench_function(format!("decode/{}", codec.name()), |b| {
            b.iter(|| {
                let batch = Batch::new(bytes.clone()).expect("batch");
                batch.verify().expect("crc");
                batch
                    .records()
                    .expect("records")
                    .map(|r| r.expect("record").value.map_or(0, |v| v.len()))
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

fn log(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).expect("open");
    log.create_topic("t", 1, TopicConfig::default()).expect("topic");
    let batch = build(Compression::None).to_vec();
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("append/1000x100B", |b| b.iter(|| log.append("t", 0, &mut batch.clone()).expect("append")));
    g.bench_function("read/1MiB", |b| b.iter(|| log.read("t", 0, 0, 1 << 20).expect("read").batches.len()));
    g.finish();
}

criterion_group!(benches, codec, log);
criterion_main!(benches);
