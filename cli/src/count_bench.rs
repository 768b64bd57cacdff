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
    pub(crate) records: u64,
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) keys: u64,
    /// at-least-once, exactly-once, or both: alternating counts under each for `--rounds` rounds,
    /// then what exactly-once costs.
    #[arg(long, default_value = "exactly-once")]
    pub(crate) guarantee: String,
    /// Rounds of `--guarantee both`.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    #[arg(long, default_value_t = 8)]
    pub(crate) partitions: u32,
    /// Count stores per task (each counts the same input; the memory test uses 64 partitions × 3).
    #[arg(long, default_value_t = 1)]
    pub(crate) stores: usize,
    #[arg(long, default_value = "./garam-bench-count")]
    pub(crate) dir: PathBuf,
    #[arg(long)]
    pub(crate) keep: bool,
    /// Extra app configuration, as key=value (for example statestore.cache.max.bytes=0).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub(crate) config: Vec<String>,
    /// Only the restore, of a count left in `--dir` (how the bench runs its restore phase: in a
    /// process of its own, as an instance restarting would).
    #[arg(long, hide = true)]
    restore_only: bool,
    /// Only the count, without the restore (how `--guarantee both` runs each of its counts).
    #[arg(long, hide = true)]
    pub(crate) count_only: bool,
    /// Print RSS and RocksDB's memory every second while counting (to stderr).
    #[arg(long)]
    pub(crate) memory_timeline: bool,
}

/// The process's resident memory and RocksDB's own count of its memory, at one moment.
#[derive(Default)]
struct MemorySample {
    at: Duration,
    /// Resident memory, MiB (`VmRSS`).
    rss_mib: f64,
    /// Of it, anonymous memory (the heaps; the rest is the binary's code and other file pages).
    anon_mib: f64,
    rocks: Option<garam_state::RocksMemory>,
    /// Bytes the store caches hold, as charged to their budget.
    store_caches: u64,
}

impl MemorySample {
    /// Now, timed from `start`, with the store caches' bytes from `app`'s metrics.
    fn now(start: Instant, app: &App) -> Self {
        let (rss_mib, anon_mib) = crate::bench::rss_and_anon_mib();
        MemorySample {
            at: start.elapsed(),
            rss_mib,
            anon_mib,
            rocks: garam_state::RocksDbSupplier::memory(),
            store_caches: app.metrics().store_cache_bytes,
        }
    }
}

impl std::fmt::Display for MemorySample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = 1048576.0;
        write!(
            f,
            "{:.1} s: RSS {:.0} MiB ({:.0} MiB anonymous); store caches {:.0} MiB",
            self.at.as_secs_f64(),
            self.rss_mib,
            self.anon_mib,
            self.store_caches as f64 / MIB
        )?;
        if let Some(r) = self.rocks {
            write!(
                f,
                "; RocksDB memtables {:.0} MiB (limit {:.0} MiB; active {:.0} MiB, {} immutable), block cache {:.0} MiB with them (capacity {:.0} MiB)",
                r.memtables as f64 / MIB,
                r.memtable_limit as f64 / MIB,
                r.active_memtables as f64 / MIB,
                r.immutable_memtables,
                r.block_cache as f64 / MIB,
                r.block_cache_capacity as f64 / MIB
            )?;
        }
        Ok(())
    }
}

/// The line a `--restore-only` child prints its peak on, for the parent to read.
const RESTORE_PEAK: &str = "restore peak memory:";

fn topology(stores: usize) -> Result<garam::core::topology::Topology> {
    let b = StreamBuilder::new();
    let input = b.stream::<String, bytes::Bytes>("count-in", Consumed::with(StringSerde, BytesSerde));
    for i in 0..stores.max(1) {
        let name = if i == 0 { "bench-counts".to_string() } else { format!("bench-counts-{i}") };
        input
            .group_by_key()
            .count(Materialized::named(&name).with(StringSerde, U64Serde))
            .to_stream()
            .to("count-out", Produced::with(StringSerde, U64Serde));
    }
    Ok(b.build()?)
}

fn app_config(b: &CountBench, state: &str) -> Result<AppConfig> {
    let mut config = AppConfig::new("bench-count");
    config.num_threads = b.threads;
    config.set("processing.guarantee", &b.guarantee)?;
    config.state_dir = Some(b.dir.join(state));
    for kv in &b.config {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--config expects key=value, got '{kv}'"))?;
        config.set(k, v)?;
    }
    Ok(config)
}

pub fn run(b: CountBench) -> Result<()> {
    if b.guarantee == "both" {
        if b.restore_only || b.count_only {
            anyhow::bail!("--guarantee both runs counts of its own; it takes neither --restore-only nor --count-only");
        }
        return crate::count_compare::run(&b);
    }
    if b.restore_only {
        return restore(&b);
    }
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

    let config = app_config(&b, "state-a")?;
    let mut app = App::new(topology(b.stores)?, config.clone(), Arc::new(log.clone()))?;
    let start = Instant::now();
    let cpu_at_start = crate::bench::cpu_seconds();
    app.start()?;
    let mut progress = crate::progress::Progress::new("count", Some(b.records));
    let mut at_peak = MemorySample::default();
    let mut last_sample = Instant::now();
    let mut printed_second = u64::MAX;
    while app.metrics().records_in < b.records && !app.is_shutting_down() {
        progress.update(app.metrics().records_in);
        std::thread::sleep(Duration::from_millis(5));
        if last_sample.elapsed() >= Duration::from_millis(50) {
            let now = MemorySample::now(start, &app);
            if b.memory_timeline && now.at.as_secs() != printed_second {
                printed_second = now.at.as_secs();
                eprintln!("{now}");
            }
            last_sample = Instant::now();
            if now.rss_mib >= at_peak.rss_mib {
                at_peak = now;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = crate::bench::cpu_seconds() - cpu_at_start;
    // A count shorter than the sampling period still reports where it stood.
    let last = MemorySample::now(start, &app);
    if last.rss_mib >= at_peak.rss_mib {
        at_peak = last;
    }
    app.close()?;
    progress.finish();
    let m = app.metrics();
    println!(
        "count: {} records, {} keys, {} partitions × {} store(s), {} thread(s), {}: {:.2} s = {:.0} records/s (RocksDB + changelog; {} commits, avg {:.0} µs); CPU {:.2} s = {:.0} records per CPU-second",
        m.records_in,
        b.keys,
        b.partitions,
        b.stores.max(1),
        b.threads,
        b.guarantee,
        secs,
        m.records_in as f64 / secs,
        m.commits,
        m.commit_latency_avg_us,
        cpu,
        m.records_in as f64 / cpu.max(1e-9)
    );
    drop(app);
    // Where the count's memory stood when it peaked (sampled every 50 ms), RocksDB's part as
    // RocksDB counts it.
    println!("count's peak: {at_peak}");
    if b.count_only {
        log.close()?;
        drop(log);
        if !b.keep {
            std::fs::remove_dir_all(&b.dir)?;
        }
        return Ok(());
    }
    // The count's peak (with the fill before it); the restore runs in a process of its own, as an
    // instance restarting would, so that its peak is its own and not what the allocators here
    // hold back from the count.
    let count_peak = crate::bench::peak_rss_mib();
    log.close()?;
    drop(log);
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg("--restore-only")
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let out = String::from_utf8_lossy(&child.stdout);
    if !child.status.success() {
        anyhow::bail!("the restore phase failed ({}): {out}", child.status);
    }
    let mut restore_peak = 0.0;
    for line in out.lines() {
        match line.strip_prefix(RESTORE_PEAK) {
            Some(mib) => restore_peak = mib.trim().trim_end_matches("MiB").trim().parse().unwrap_or(0.0),
            None => println!("{line}"),
        }
    }
    println!(
        "peak memory: {:.0} MiB (counting {count_peak:.0} MiB, restoring {restore_peak:.0} MiB in a new process; state.memory.max.bytes = {} MiB, of which store caches {} MiB)",
        count_peak.max(restore_peak),
        config.state_memory_max_bytes >> 20,
        config.cache_bytes() >> 20
    );
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}

/// The restore phase: an empty state directory rebuilds every store from the changelogs the
/// count left in `--dir`.
fn restore(b: &CountBench) -> Result<()> {
    let log = Log::open(&b.dir)?;
    let config = app_config(b, "state-b")?;
    let mut app = App::new(topology(b.stores)?, config.clone(), Arc::new(log.clone()))?;
    let restored = Arc::new(AtomicU64::new(0));
    // Restore time: from the first progress report to the last store's completion.
    let window = Arc::new(std::sync::Mutex::new((None::<Instant>, None::<Instant>)));
    let (r, w) = (restored.clone(), window.clone());
    app.set_restore_listener(move |p| {
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.0.get_or_insert_with(Instant::now);
        if p.done {
            r.fetch_add(p.restored, Ordering::Relaxed);
            w.1 = Some(Instant::now());
        }
    });
    let start = Instant::now();
    app.run_until_idle(Duration::from_millis(100))?;
    let total = start.elapsed().as_secs_f64();
    let n = restored.load(Ordering::Relaxed);
    let (first, last) = *window.lock().unwrap_or_else(|e| e.into_inner());
    // The first report comes after the first fetch: count from the app's start instead when earlier.
    let secs = match (first, last) {
        (Some(_), Some(l)) => l.duration_since(start).as_secs_f64(),
        _ => total,
    };
    println!(
        "restore: {n} changelog records in {secs:.2} s = {:.0} records/s (from start to the last store restored; {total:.2} s until idle and closed)",
        n as f64 / secs
    );
    println!("{RESTORE_PEAK} {:.0} MiB", crate::bench::peak_rss_mib());
    drop(app);
    log.close()?;
    Ok(())
}
