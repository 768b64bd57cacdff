//! `garam bench window`: windowed counts on event time, with RocksDB window stores, changelogs
//! and watermarks — one line per case with records/s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use garam::core::Record;
use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use rand::{Rng, SeedableRng};

#[derive(Args)]
pub struct WindowBench {
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Records per millisecond of event time (100: 10 M records span 100 s).
    #[arg(long, default_value_t = 100)]
    records_per_ms: u64,
    /// Event-time disorder of the input, and the watermark's out-of-orderness bound.
    #[arg(long, default_value_t = 1000)]
    out_of_order_ms: i64,
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Cases to run: tumbling, hopping, join (default: all).
    #[arg(long = "case")]
    cases: Vec<String>,
    #[arg(long, default_value = "./garam-bench-window")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Extra app configuration, as key=value.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

fn topology(windows: TimeWindows) -> Result<garam::core::topology::Topology> {
    let b = StreamBuilder::new();
    b.stream::<String, bytes::Bytes>("window-in", Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .windowed_by(windows, EmitStrategy::OnWindowClose)
        .count(Materialized::named("bench-window-counts"))
        .to_stream()
        .to("window-out", Produced::with(WindowedSerde(Arc::new(StringSerde) as Arc<dyn Serde<String>>), U64Serde));
    Ok(b.build()?)
}

/// Ad views joined with the clicks on them (each click names one view; clicks come 0.5–2.5 s
/// after their view), within 10 s.
fn join_topology() -> Result<garam::core::topology::Topology> {
    let b = StreamBuilder::new();
    let views = b.stream::<String, bytes::Bytes>("join-views", Consumed::with(StringSerde, BytesSerde));
    let clicks = b.stream::<String, bytes::Bytes>("join-clicks", Consumed::with(StringSerde, BytesSerde));
    views
        .join(
            &clicks,
            |v, c| {
                let mut out = v.to_vec();
                out.extend_from_slice(c);
                bytes::Bytes::from(out)
            },
            JoinWindows::of(Duration::from_secs(10)).before(Duration::ZERO),
            StreamJoined::named("bench-view-click"),
        )
        .to("join-out", Produced::with(StringSerde, BytesSerde));
    Ok(b.build()?)
}

/// Fills `join-views` with `records / 2` views and `join-clicks` with a click on each of them.
fn fill_join(log: &Log, b: &WindowBench, start_time: i64) -> Result<()> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
    let mut p = log.producer(garam::log::producer::ProducerConfig { batch_size: 256 * 1024, ..Default::default() })?;
    let views = b.records / 2;
    let per_ms = (b.records_per_ms / 2).max(1);
    let mut progress = crate::progress::Progress::new("fill join", Some(views));
    let ooo = b.out_of_order_ms.max(1);
    for i in 0..views {
        let key = format!("imp-{i}");
        let base = start_time + (i / per_ms) as i64;
        p.send(
            "join-views",
            Record::new(Some(key.clone()), Some(&b"view"[..])).with_timestamp(base - rng.gen_range(0..ooo)),
        )?;
        let click = base + 1_500 - rng.gen_range(0..ooo);
        p.send("join-clicks", Record::new(Some(key), Some(&b"click"[..])).with_timestamp(click))?;
        if i % 65536 == 0 {
            progress.update(i);
        }
    }
    p.flush()?;
    progress.finish();
    Ok(())
}

pub fn run(b: WindowBench) -> Result<()> {
    let _ = std::fs::remove_dir_all(&b.dir);
    let log = Log::open(&b.dir)?;
    log.create_topic("window-in", b.partitions, TopicConfig::default())?;
    log.create_topic("window-out", b.partitions, TopicConfig::default())?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let mut p = log.producer(garam::log::producer::ProducerConfig { batch_size: 256 * 1024, ..Default::default() })?;
    let mut progress = crate::progress::Progress::new("fill", Some(b.records));
    let start_time = 1_700_000_000_000i64;
    for i in 0..b.records {
        let key = format!("key-{}", rng.gen_range(0..b.keys));
        let t = start_time + (i / b.records_per_ms.max(1)) as i64 - rng.gen_range(0..b.out_of_order_ms.max(1));
        p.send("window-in", Record::new(Some(key), Some(&b"{\"v\":1}"[..])).with_timestamp(t))?;
        if i % 65536 == 0 {
            progress.update(i);
        }
    }
    p.flush()?;
    progress.finish();
    drop(p);
    log.flush()?;

    let all = [
        ("tumbling", "10 s tumbling count", TimeWindows::of(Duration::from_secs(10))),
        (
            "hopping",
            "10 s every 1 s hopping count",
            TimeWindows::of(Duration::from_secs(10)).advance_by(Duration::from_secs(1)),
        ),
    ];
    let wanted = |case: &str| b.cases.is_empty() || b.cases.iter().any(|c| c == case);
    let mut runs: Vec<(&str, String, garam::core::topology::Topology)> = Vec::new();
    for (case, label, windows) in all {
        if wanted(case) {
            runs.push((case, label.to_string(), topology(windows)?));
        }
    }
    if wanted("join") {
        for t in ["join-views", "join-clicks", "join-out"] {
            log.create_topic(t, b.partitions, TopicConfig::default())?;
        }
        fill_join(&log, &b, start_time)?;
        runs.push(("join", "stream-stream join (views ⋈ clicks, 10 s)".to_string(), join_topology()?));
    }
    for (case, label, topology) in runs {
        let mut config = AppConfig::new(format!("bench-window-{case}"));
        config.num_threads = b.threads;
        config.set("processing.guarantee", &b.guarantee)?;
        config.set("max.out.of.orderness.ms", &b.out_of_order_ms.to_string())?;
        config.state_dir = Some(b.dir.join(format!("state-{case}")));
        for kv in &b.config {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--config expects key=value, got '{kv}'"))?;
            config.set(k, v)?;
        }
        let expected = if case == "join" { b.records / 2 * 2 } else { b.records };
        let out_topic = if case == "join" { "join-out" } else { "window-out" };
        let before = crate::bench::committed_records(&log, out_topic)?;
        let mut app = App::new(topology, config, Arc::new(log.clone()))?;
        let start = Instant::now();
        app.start()?;
        let mut progress = crate::progress::Progress::new(case, Some(expected));
        while app.metrics().records_in < expected && !app.is_shutting_down() {
            progress.update(app.metrics().records_in);
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = start.elapsed().as_secs_f64();
        app.close()?;
        progress.finish();
        let m = app.metrics();
        let results = crate::bench::committed_records(&log, out_topic)? - before;
        println!(
            "window {label}: {} records, {} keys, {} partitions, {} thread(s), {}: {:.2} s = {:.0} records/s ({} results, {} late)",
            m.records_in,
            if case == "join" { b.records / 2 } else { b.keys },
            b.partitions,
            b.threads,
            b.guarantee,
            secs,
            m.records_in as f64 / secs,
            results,
            m.late_records
        );
    }
    println!("peak memory: {:.0} MiB", crate::bench::peak_rss_mib());
    log.close()?;
    drop(log);
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}
