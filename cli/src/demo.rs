//! `garam demo clicks`: the main job on the embedded default, end to end — the ad table, a live
//! click stream, the click-analytics application and its live view, in one command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use garam::analytics::{self, RunOptions};
use garam::clicks::{ads, ClickConfig, ClickGenerator};
use garam_core::Record;

#[derive(Subcommand)]
pub enum DemoCommand {
    /// Create the topics, produce the ad table and a live click stream, and run the
    /// click-analytics application (examples/click_analytics.rs) with its live view. Ctrl-C stops.
    Clicks(ClicksDemo),
}

#[derive(Args)]
pub struct ClicksDemo {
    /// Click events per second, in real time.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// How far an event's time may be behind the events before it.
    #[arg(long, default_value_t = 500)]
    out_of_order_ms: i64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where the Parquet copies of campaign-views-10s and page-views-1m go.
    #[arg(long, default_value = "./garam-data/analytics-out")]
    out_dir: PathBuf,
}

pub fn run(dir: &Path, cmd: DemoCommand) -> Result<()> {
    match cmd {
        DemoCommand::Clicks(d) => clicks(dir, d),
    }
}

fn clicks(dir: &Path, d: ClicksDemo) -> Result<()> {
    let log = crate::open_log(dir)?;
    analytics::create_topics(&log, d.partitions)?;
    let mut producer = log.producer(Default::default())?;
    for ad in ads() {
        producer.send(analytics::ADS, Record::new(Some(ad.ad_id.clone()), Some(serde_json::to_vec(&ad)?)))?;
    }
    producer.flush()?;
    println!(
        "data dir {}: {} ads; producing {} click events/s to '{}' ({} partitions); Parquet to {}",
        dir.display(),
        ads().len(),
        d.rate,
        analytics::CLICKS,
        d.partitions,
        d.out_dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let generator = {
        let (stop, produced, log) = (stop.clone(), produced.clone(), log.clone());
        let config = ClickConfig {
            seed: d.seed,
            users: d.users,
            out_of_order_ms: d.out_of_order_ms,
            start_ms: garam_core::time::now_ms(),
            ..ClickConfig::default()
        };
        let rate = d.rate.max(1);
        std::thread::Builder::new().name("demo-clicks".into()).spawn(move || -> Result<()> {
            let mut generator = ClickGenerator::new(config);
            let mut producer = log.producer(Default::default())?;
            let started = Instant::now();
            let mut buf = Vec::with_capacity(256);
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                // Send what is due, then flush and sleep a little: batches, at the rate.
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while i < due {
                    let event = generator.next_at(garam_core::time::now_ms());
                    buf.clear();
                    serde_json::to_writer(&mut buf, &event)?;
                    producer.send(
                        analytics::CLICKS,
                        Record::new(Some(event.user_id.clone()), Some(buf.clone())).with_timestamp(event.event_time),
                    )?;
                    i += 1;
                }
                producer.flush()?;
                produced.store(i, Ordering::Release);
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })?
    };

    let options = RunOptions {
        application_id: "demo-click-analytics".into(),
        threads: d.threads,
        out_dir: Some(d.out_dir.clone()),
        partitions: d.partitions,
        stop_after: d.duration.map(Duration::from_secs),
        ..RunOptions::default()
    };
    let result = analytics::run(&options, Arc::new(log.clone()));
    stop.store(true, Ordering::Release);
    let generated = generator.join().map_err(|_| anyhow::anyhow!("the click generator panicked"))?;
    result?;
    generated?;
    println!("produced {} click events", produced.load(Ordering::Acquire));
    for t in analytics::OUTPUTS {
        println!("  {t:<20} {:>8} results", crate::bench::committed_records(&log, t)?);
    }
    println!("Parquet files under {}: {}", d.out_dir.display(), count_files(&d.out_dir, "parquet"));
    log.close()?;
    Ok(())
}

fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                usize::from(p.extension().is_some_and(|x| x == ext))
            }
        })
        .sum()
}
