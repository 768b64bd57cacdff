//! `garam bench clicks`: the Yahoo Streaming Benchmark query end to end — filter views →
//! global-table join ad → campaign → 10 s tumbling count per campaign → `campaign-views-10s` —
//! under exactly-once with RocksDB state. Prints events/s, CPU seconds and peak memory; with
//! `--rate`, event-to-result latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use garam::analytics::{self, AnalyticsOptions, CampaignViews};
use garam::clicks::{ads_with, ClickConfig, ClickGenerator};
use garam::connectors::file_source::FileSource;
use garam::core::backend::Backend;
use garam::core::Record;
use garam::log::Log;
use garam::prelude::*;

#[derive(Args)]
pub struct ClicksBench {
    /// Events to generate (ignored with --input).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Read the events from this JSON-lines file instead of generating them.
    #[arg(long, requires = "ads")]
    input: Option<PathBuf>,
    /// The ad → campaign table: CSV `ad_id,campaign_id` (with that header) or JSON lines.
    #[arg(long)]
    ads: Option<PathBuf>,
    /// Produce in real time at this many events/s while the query runs, and report
    /// event-to-result latency.
    #[arg(long)]
    rate: Option<u64>,
    /// Generate ids as UUIDs (~245-byte events, the Yahoo Streaming Benchmark's size).
    #[arg(long)]
    uuid_ids: bool,
    /// Disorder of generated events, and the watermark's bound.
    #[arg(long, default_value_t = 100)]
    out_of_order_ms: i64,
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value = "./garam-bench-clicks")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Extra app configuration, as key=value.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 overall are 12 and 13 after the name and state; USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn config(b: &ClicksBench) -> Result<AppConfig> {
    let mut config = AppConfig::new("bench-clicks");
    config.num_threads = b.threads;
    config.set("processing.guarantee", &b.guarantee)?;
    config.set("max.out.of.orderness.ms", &b.out_of_order_ms.to_string())?;
    config.state_dir = Some(b.dir.join("state"));
    for kv in &b.config {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--config expects key=value, got '{kv}'"))?;
        config.set(k, v)?;
    }
    Ok(config)
}

fn generator(b: &ClicksBench, start_ms: i64) -> ClickGenerator {
    ClickGenerator::new(ClickConfig {
        out_of_order_ms: b.out_of_order_ms,
        start_ms,
        ids: crate::gen::ids(b.uuid_ids),
        ..ClickConfig::default()
    })
}

/// Loads the ad table and (unless producing in real time) the events.
fn load(b: &ClicksBench, log: &Log) -> Result<u64> {
    let stop = AtomicBool::new(false);
    match &b.ads {
        Some(path) => {
            let mut source = FileSource::new(path, analytics::ADS);
            source.key_field = Some("ad_id".into());
            let p = source.run(log, &stop)?;
            println!("loaded {} ads from {}", p.records, path.display());
        }
        None => {
            let mut p = log.producer(Default::default())?;
            for ad in ads_with(crate::gen::ids(b.uuid_ids)) {
                p.send(analytics::ADS, Record::new(Some(ad.ad_id.clone()), Some(serde_json::to_vec(&ad)?)))?;
            }
            p.flush()?;
        }
    }
    if b.rate.is_some() {
        return Ok(0);
    }
    if let Some(path) = &b.input {
        let mut source = FileSource::new(path, analytics::CLICKS);
        source.key_field = Some("user_id".into());
        source.timestamp_field = Some("event_time".into());
        let started = Instant::now();
        let p = source.run(log, &stop).with_context(|| format!("loading {}", path.display()))?;
        println!("loaded {} events from {} in {:.1} s", p.records, path.display(), started.elapsed().as_secs_f64());
        return Ok(p.records);
    }
    let mut p = log.producer(garam::log::producer::ProducerConfig { batch_size: 256 * 1024, ..Default::default() })?;
    let mut progress = crate::progress::Progress::new("gen clicks", Some(b.events));
    let mut events = generator(b, ClickConfig::default().start_ms);
    let mut buf = Vec::with_capacity(256);
    for i in 0..b.events {
        let e = events.next().ok_or_else(|| anyhow::anyhow!("the generator ended"))?;
        buf.clear();
        serde_json::to_writer(&mut buf, &e)?;
        p.send(
            analytics::CLICKS,
            Record::new(Some(e.user_id.clone()), Some(buf.clone())).with_timestamp(e.event_time),
        )?;
        if i % 65_536 == 0 {
            progress.update(i);
        }
    }
    p.flush()?;
    progress.finish();
    Ok(b.events)
}

pub fn run(b: ClicksBench) -> Result<()> {
    let _ = std::fs::remove_dir_all(&b.dir);
    let log = Log::open(b.dir.join("log"))?;
    analytics::create_topics(&log, b.partitions)?;
    let events = load(&b, &log)?;
    log.flush()?;
    let topology =
        analytics::topology(&AnalyticsOptions { outputs: vec![analytics::CAMPAIGN_VIEWS], ..Default::default() })?;
    let mut app = App::new(topology, config(&b)?, Arc::new(log.clone()))?;
    match b.rate {
        None => throughput(&b, &log, &mut app, events)?,
        Some(rate) => latency(&b, &log, &mut app, rate)?,
    }
    println!("peak memory: {:.0} MiB", crate::bench::peak_rss_mib());
    log.close()?;
    drop(log);
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}

fn throughput(b: &ClicksBench, log: &Log, app: &mut App, events: u64) -> Result<()> {
    let cpu = cpu_seconds();
    let start = Instant::now();
    app.start()?;
    let mut progress = crate::progress::Progress::new("clicks", Some(events));
    // Done when every click is read: `records_in` also counts the repartitioned partials, so
    // wait for the lag of `clicks` to reach zero as well.
    let partitions = b.partitions as usize;
    loop {
        let m = app.metrics();
        let clicks: Vec<u64> = m
            .lag
            .iter()
            .filter(|(tp, _)| tp.strip_prefix(analytics::CLICKS).is_some_and(|r| r.starts_with('-')))
            .map(|(_, l)| *l)
            .collect();
        let read = m.records_in.min(events);
        progress.update(read);
        if (m.records_in >= events && clicks.len() == partitions && clicks.iter().all(|l| *l == 0))
            || app.is_shutting_down()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    progress.finish();
    // Close the windows still open, so the results are complete.
    app.run_to_end(Duration::from_millis(300))?;
    let m = app.metrics();
    let results = crate::bench::committed_records(log, analytics::CAMPAIGN_VIEWS)?;
    println!(
        "clicks (YSB: views ⋈ ads → 10 s count per campaign): {events} events, {} partitions, {} thread(s), {}: \
         {secs:.2} s = {:.0} events/s, {cpu:.1} CPU s ({:.2} µs CPU per event), {results} results, {} late",
        b.partitions,
        b.threads,
        b.guarantee,
        events as f64 / secs,
        cpu * 1e6 / events.max(1) as f64,
        m.late_records
    );
    Ok(())
}

/// Produces at `rate` in real time while the query runs; latency of each result = the wall time
/// it became readable (read committed) − the wall time the last event of its window was produced.
fn latency(b: &ClicksBench, log: &Log, app: &mut App, rate: u64) -> Result<()> {
    app.start()?;
    let last_produced: Arc<Mutex<BTreeMap<i64, i64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (log, last_produced, done) = (log.clone(), last_produced.clone(), done.clone());
        let mut events = generator(b, garam_core::time::now_ms());
        let total = b.events;
        std::thread::spawn(move || -> Result<()> {
            let mut p = log.producer(Default::default())?;
            let started = Instant::now();
            let mut buf = Vec::with_capacity(256);
            let mut touched: Vec<i64> = Vec::new();
            let mut i = 0;
            while i < total {
                let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while i < due {
                    let e = events.next_at(garam_core::time::now_ms());
                    buf.clear();
                    serde_json::to_writer(&mut buf, &e)?;
                    p.send(
                        analytics::CLICKS,
                        Record::new(Some(e.user_id.clone()), Some(buf.clone())).with_timestamp(e.event_time),
                    )?;
                    if e.event_type == "view" {
                        touched.push(e.event_time.div_euclid(10_000) * 10_000);
                    }
                    i += 1;
                }
                p.flush()?;
                let now = garam_core::time::now_ms();
                let mut last = last_produced.lock().unwrap_or_else(|e| e.into_inner());
                for w in touched.drain(..) {
                    last.insert(w, now);
                }
                drop(last);
                std::thread::sleep(Duration::from_millis(1));
            }
            done.store(true, Ordering::Release);
            Ok(())
        })
    };
    let mut offsets = vec![0u64; b.partitions as usize];
    let mut latencies: Vec<i64> = Vec::new();
    let mut done_at: Option<Instant> = None;
    let mut progress = crate::progress::Progress::new("clicks", Some(b.events));
    loop {
        progress.update(app.metrics().records_in);
        let mut seen = false;
        for (p, offset) in offsets.iter_mut().enumerate() {
            let f = Backend::fetch(log, analytics::CAMPAIGN_VIEWS, p as u32, *offset, 4 << 20, true)?;
            let now = garam_core::time::now_ms();
            for r in &f.records {
                let Some(v) = r.value.as_deref() else { continue };
                let v: CampaignViews = serde_json::from_slice(v)?;
                let last = last_produced.lock().unwrap_or_else(|e| e.into_inner()).get(&v.window_start).copied();
                if let Some(last) = last {
                    latencies.push(now - last);
                }
                seen = true;
            }
            *offset = (*offset).max(f.next_offset);
        }
        if done.load(Ordering::Acquire) {
            // Windows still open after the last event never close; stop a little after it.
            let at = *done_at.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        if app.is_shutting_down() {
            break;
        }
        if !seen {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    progress.finish();
    producer.join().map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    app.close()?;
    latencies.sort_unstable();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    let m = app.metrics();
    println!(
        "clicks latency at {rate} events/s, {} events, {} partitions, {} thread(s), {}: {} results, \
         p50 {} ms, p99 {} ms, max {} ms ({} late)",
        b.events,
        b.partitions,
        b.threads,
        b.guarantee,
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
        m.late_records
    );
    Ok(())
}
