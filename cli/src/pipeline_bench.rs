//! `garam bench pipeline`: the stateless Streams pipeline's processing throughput.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use garam::core::Record;
use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct PipelineBench {
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Directory for the benchmark's log (deleted afterwards unless --keep).
    #[arg(long, default_value = "./garam-bench-pipeline")]
    dir: PathBuf,
    #[arg(long)]
    keep: bool,
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "at-least-once")]
    guarantee: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Click {
    user_id: String,
    page_id: String,
    event_type: String,
    event_time: i64,
}

#[derive(Serialize, Deserialize, Clone)]
struct View {
    user_id: String,
    page_id: String,
    minute: i64,
}

pub fn run(b: PipelineBench) -> Result<()> {
    let _ = std::fs::remove_dir_all(&b.dir);
    let log = Log::open(&b.dir)?;
    log.create_topic("pipeline-in", b.partitions, TopicConfig::default())?;
    log.create_topic("pipeline-out", b.partitions, TopicConfig::default())?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut producer =
        log.producer(garam::log::producer::ProducerConfig { batch_size: 256 * 1024, ..Default::default() })?;
    let fill_start = Instant::now();
    let mut progress = crate::progress::Progress::new("fill", Some(b.records));
    let types = ["view", "view", "view", "view", "click"];
    for i in 0..b.records {
        let user = format!("user-{}", rng.gen_range(0..100_000));
        let click = Click {
            user_id: user.clone(),
            page_id: format!("page-{}", rng.gen_range(0..1000)),
            event_type: types[rng.gen_range(0..types.len())].to_string(),
            event_time: 1_700_000_000_000 + i as i64,
        };
        producer.send("pipeline-in", Record::new(Some(user), Some(serde_json::to_vec(&click)?)))?;
        if i % 65536 == 0 {
            progress.update(i);
        }
    }
    producer.flush()?;
    progress.finish();
    drop(producer);
    // Write the input back to disk now, so the kernel's write-back of the fill does not compete
    // with the measured run for the machine's cores.
    log.flush()?;
    eprintln!(
        "filled pipeline-in with {} records over {} partitions in {:.2} s",
        b.records,
        b.partitions,
        fill_start.elapsed().as_secs_f64()
    );

    let builder = StreamBuilder::new();
    builder
        .stream::<String, Click>("pipeline-in", Consumed::with(StringSerde, JsonSerde::new()))
        .filter(|_, c| c.event_type == "view")
        .map_values(|c| View { user_id: c.user_id, page_id: c.page_id, minute: c.event_time / 60_000 })
        .to("pipeline-out", Produced::with(StringSerde, JsonSerde::new()));
    let mut config = AppConfig::new("bench-pipeline");
    config.num_threads = b.threads;
    config.set("processing.guarantee", &b.guarantee)?;
    let mut app = App::new(builder.build()?, config, Arc::new(log.clone()))?;
    let start = Instant::now();
    app.start()?;
    let mut progress = crate::progress::Progress::new("process", Some(b.records));
    loop {
        let m = app.metrics();
        progress.update(m.records_in);
        if m.records_in >= b.records {
            break;
        }
        if app.is_shutting_down() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let processed_s = start.elapsed().as_secs_f64();
    app.close()?;
    let total_s = start.elapsed().as_secs_f64();
    progress.finish();
    let m = app.metrics();
    println!(
        "pipeline: {} records with {} thread(s), {} in {:.2} s = {:.0} records/s ({} written; {:.2} s including the final commit)",
        m.records_in,
        b.threads,
        b.guarantee,
        processed_s,
        m.records_in as f64 / processed_s,
        m.records_out,
        total_s
    );
    println!("peak memory: {:.0} MiB", crate::bench::peak_rss_mib());
    drop(app);
    log.close()?;
    drop(log);
    if !b.keep {
        std::fs::remove_dir_all(&b.dir)?;
    }
    Ok(())
}
