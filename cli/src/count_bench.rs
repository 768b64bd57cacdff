//! `garam bench count`: a stateful count with RocksDB, a changelog and a chosen guarantee; then a
//! restore of the same store from its changelog into an empty state directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use garam::core::Record;
use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use rand::{Rng, SeedableRng};

#[derive(Args)]
pub struct CountBench {
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value = "./garam-bench-count")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Extra app configuration, as key=value (for example statestore.cache.max.bytes=0).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

fn topology() -> Result<garam::core::topology::Topology> {
    let b = StreamBuilder::new();
    b.stream::<String, bytes::Bytes>("count-in", Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .count(Materialized::named("bench-counts").with(StringSerde, U64Serde))
        .to_stream()
        .to("count-out", Produced::with(StringSerde, U64Serde));
    Ok(b.build()?)
}

pub fn run(b: CountBench) -> Result<()> {
    let _ = std::fs::remove_dir_all(&b.dir);
    let log = Log::open(&b.dir)?;
    log.create_topic("count-in", b.partitions, TopicConfig::default())?;
    log.create_topic("count-out", b.partitions, TopicConfig::default())?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
    let mut p = log.producer(garam::log::producer::ProducerConfig { batch_size: 256 * 1024, ..Default::default() })?;
    let mut progress = crate::progress::Progress::new("fill", Some(b.records));
    for i in 0..b.records {
        let key = format!("key-{}", rng.gen_range(0..b.keys));
        p.send("count-in", Record::new(Some(key), Some(&b"{\"v\":1}"[..])))?;
        if i % 65536 == 0 {
            progress.update(i);
        }
    }
    p.flush()?;
    progress.finish();
    drop(p);
    log.flush()?;

    let mut config = AppConfig::new("bench-count");
    config.num_threads = b.threads;
    config.set("processing.guarantee", &b.guarantee)?;
    config.state_dir = Some(b.dir.join("state-a"));
    for kv in &b.config {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--config expects key=value, got '{kv}'"))?;
        config.set(k, v)?;
    }
    let mut app = App::new(topology()?, config.clone(), Arc::new(log.clone()))?;
    let start = Instant::now();
    app.start()?;
    let mut progress = crate::progress::Progress::new("count", Some(b.records));
    while app.metrics().records_in < b.records && !app.is_shutting_down() {
        progress.update(app.metrics().records_in);
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    app.close()?;
    progress.finish();
    let m = app.metrics();
    println!(
        "count: {} records, {} keys, {} thread(s), {}: {:.2} s = {:.0} records/s (RocksDB + changelog; {} commits, avg {:.0} µs)",
        m.records_in,
        b.keys,
        b.threads,
        b.guarantee,
        secs,
        m.records_in as f64 / secs,
        m.commits,
        m.commit_latency_avg_us
    );
    drop(app);

    // Restore: an empty state directory rebuilds every store from its changelog.
    config.state_dir = Some(b.dir.join("state-b"));
    let mut app = App::new(topology()?, config, Arc::new(log.clone()))?;
    let restored = Arc::new(AtomicU64::new(0));
    let r = restored.clone();
    app.set_restore_listener(move |p| {
        if p.done {
            r.fetch_add(p.restored, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    app.run_until_idle(Duration::from_millis(100))?;
    let secs = start.elapsed().as_secs_f64();
    let n = restored.load(Ordering::Relaxed);
    println!(
        "restore: {n} changelog records in {secs:.2} s = {:.0} records/s (including start and group join)",
        n as f64 / secs
    );
    println!("peak memory: {:.0} MB", crate::bench::peak_rss_mb());
    drop(app);
    log.close()?;
    drop(log);
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}
