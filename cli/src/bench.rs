//! `garam bench …`: end-to-end throughput runs whose figures go in BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use garam_core::Record;
use garam_log::batch::Compression;
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::producer::ProducerConfig;
use garam_log::{Log, LogOptions, TopicConfig};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Produce then consume N records through the embedded log.
    Log(LogBench),
    /// JSON decode → filter → map → JSON encode → to(topic) over a pre-filled 8-partition topic.
    Pipeline(crate::pipeline_bench::PipelineBench),
    /// Stateful count per key with RocksDB and a changelog, then a restore from the changelog.
    Count(crate::count_bench::CountBench),
    /// Windowed counts on event time (tumbling, hopping) with RocksDB window stores.
    Window(crate::window_bench::WindowBench),
    /// The Yahoo Streaming Benchmark query end to end on click events: events/s, CPU, memory;
    /// with --rate, event-to-result latency.
    Clicks(crate::clicks_bench::ClicksBench),
}

#[derive(Args)]
pub struct LogBench {
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Producer batch.size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Directory for the benchmark's log (deleted afterwards unless --keep).
    #[arg(long, default_value = "./garam-bench-log")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Producer threads, each with its own producer.
    #[arg(long, default_value_t = 1)]
    producers: u64,
    /// Set the topic's flush.messages: appends wait for an fsync (shared by group commit).
    #[arg(long)]
    flush_messages: Option<u64>,
}

pub fn run(_data_dir: &Path, cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Log(b) => log_bench(b),
        BenchCommand::Pipeline(b) => crate::pipeline_bench::run(b),
        BenchCommand::Count(b) => crate::count_bench::run(b),
        BenchCommand::Window(b) => crate::window_bench::run(b),
        BenchCommand::Clicks(b) => crate::clicks_bench::run(b),
    }
}

/// Committed records in every partition of `topic`, read back through the backend.
pub(crate) fn committed_records(log: &Log, topic: &str) -> Result<u64> {
    use garam_core::backend::Backend;
    let mut n = 0;
    for p in 0..Backend::partition_count(log, topic)?.unwrap_or(0) {
        let mut offset = 0;
        loop {
            let f = Backend::fetch(log, topic, p, offset, 8 << 20, true)?;
            n += f.records.len() as u64;
            if f.next_offset <= offset {
                break;
            }
            offset = f.next_offset;
        }
    }
    Ok(n)
}

/// Peak resident memory of this process since it started, in MiB (`VmHWM`).
pub(crate) fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// CPU time this process has used since it started, user and system, in seconds. Records per
/// CPU-second leave out the time a shared machine gives to other processes; they still vary
/// between runs (~10 % on the 2-core machine of BENCHMARKS.md), if less.
pub(crate) fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the struct it is given; on failure we read the zeroes.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Resident memory of this process now and its anonymous part, in MiB (`VmRSS`, `RssAnon`),
/// from one reading: the anonymous part is the heaps, without the binary's code and other file
/// pages, which the kernel can drop and read back.
pub(crate) fn rss_and_anon_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status_field_mib(&status, "VmRSS:"), status_field_mib(&status, "RssAnon:"))
}

/// A field of `/proc/self/status` given in kB, in MiB (0 where there is none).
fn status_mib(field: &str) -> f64 {
    status_field_mib(&std::fs::read_to_string("/proc/self/status").unwrap_or_default(), field)
}

/// A field of the text of `/proc/self/status` given in kB, in MiB (0 where there is none).
fn status_field_mib(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn log_bench(b: LogBench) -> Result<()> {
    let compression =
        Compression::parse(&b.compression).ok_or_else(|| anyhow::anyhow!("unknown compression '{}'", b.compression))?;
    let _ = std::fs::remove_dir_all(&b.dir);
    let opts = LogOptions { background: true, ..Default::default() };
    let log = Log::open_with(&b.dir, opts.clone())?;
    let mut topic_config = TopicConfig::default();
    if let Some(n) = b.flush_messages {
        topic_config.set("flush.messages", &n.to_string())?;
    }
    log.create_topic("bench", b.partitions, topic_config)?;
    let value: Vec<u8> = (0..b.value_bytes).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let value = bytes::Bytes::from(value);
    let producers = b.producers.max(1);
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..producers)
            .map(|t| {
                let (log, value) = (log.clone(), value.clone());
                let records = b.records / producers + u64::from(t < b.records % producers);
                let config = ProducerConfig { batch_size: b.batch_bytes, compression, idempotent: true };
                scope.spawn(move || -> Result<()> {
                    let mut producer = log.producer(config)?;
                    let mut progress = crate::progress::Progress::new("produce", Some(records));
                    for i in 0..records {
                        let record = Record {
                            key: None,
                            value: Some(value.clone()),
                            timestamp: Some(i as i64),
                            headers: Vec::new(),
                        };
                        producer.send("bench", record)?;
                        if t == 0 && i % 65536 == 0 {
                            progress.update(i);
                        }
                    }
                    producer.flush()?;
                    progress.finish();
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
        }
        Ok(())
    })?;
    let produce_s = start.elapsed().as_secs_f64();
    let fsyncs: u64 = log.topic("bench")?.partitions().iter().map(|p| p.fsync_count()).sum();
    let bytes: u64 = log.topic("bench")?.partitions().iter().map(|p| p.size_bytes()).sum();
    println!(
        "produce: {} records in {:.2} s = {:.0} records/s, {:.1} MB/s (log bytes {:.1} MB, {producers} producer thread(s), {fsyncs} fsyncs)",
        b.records,
        produce_s,
        b.records as f64 / produce_s,
        (b.records as f64 * b.value_bytes as f64) / produce_s / 1e6,
        bytes as f64 / 1e6
    );

    let mut consumer = log.consumer(ConsumerConfig {
        topics: vec!["bench".into()],
        auto_offset_reset: OffsetReset::Earliest,
        max_partition_fetch_bytes: 4 << 20,
        fetch_max_bytes: 32 << 20,
        ..Default::default()
    })?;
    let mut progress = crate::progress::Progress::new("consume", Some(b.records));
    let start = Instant::now();
    let mut n = 0u64;
    let mut payload = 0u64;
    while n < b.records {
        for part in consumer.poll(Duration::from_secs(5))? {
            for r in part.records() {
                let r = r?;
                payload += r.value.as_ref().map_or(0, |v| v.len() as u64);
                n += 1;
            }
        }
        progress.update(n);
    }
    let consume_s = start.elapsed().as_secs_f64();
    progress.finish();
    println!(
        "consume: {} records in {:.2} s = {:.0} records/s, {:.1} MB/s",
        n,
        consume_s,
        n as f64 / consume_s,
        payload as f64 / consume_s / 1e6
    );
    drop(consumer);
    log.close()?;
    drop(log);
    let start = Instant::now();
    let log = Log::open_with(&b.dir, opts)?;
    let open_s = start.elapsed().as_secs_f64();
    println!("reopen: {:.1} MB log with intact indexes opened in {:.3} s", bytes as f64 / 1e6, open_s);
    log.close()?;
    drop(log);
    // As after a crash: no clean-shutdown marker, so every active segment is CRC-validated.
    std::fs::remove_file(b.dir.join(".clean-shutdown"))?;
    let start = Instant::now();
    let log = Log::open_with(&b.dir, LogOptions { background: false, ..Default::default() })?;
    println!(
        "recovery: {:.1} MB log reopened after an unclean stop in {:.3} s",
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    println!("peak memory: {:.0} MiB", peak_rss_mib());
    log.close()?;
    drop(log);
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}
