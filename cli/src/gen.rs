//! `garam gen clicks` and `garam gen ads`: the click-analytics input, deterministic for a seed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use garam::clicks::{ads, ClickConfig, ClickGenerator};
use garam_core::Record;
use garam_log::TopicConfig;

#[derive(Subcommand)]
pub enum GenCommand {
    /// Click events (Yahoo Streaming Benchmark shape) keyed by user_id, as JSON.
    Clicks(ClicksArgs),
    /// The ad → campaign table (1000 ads, 100 campaigns) keyed by ad_id, as JSON.
    Ads(AdsArgs),
}

#[derive(Args)]
pub struct ClicksArgs {
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Events per second in real time (event time = wall time); without it, as fast as possible
    /// with event time rising 1 ms per 10 events.
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How far an event's time may be behind the events before it (bounded disorder).
    #[arg(long, default_value_t = 0)]
    out_of_order_ms: i64,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value = "clicks")]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
}

#[derive(Args)]
pub struct AdsArgs {
    #[arg(long, default_value = "ads")]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
}

pub fn run(dir: &Path, cmd: GenCommand) -> Result<()> {
    let log = crate::open_log(dir)?;
    match cmd {
        GenCommand::Clicks(a) => {
            log.ensure_topic(&a.topic, a.partitions, TopicConfig::default())?;
            let config = ClickConfig {
                seed: a.seed,
                users: a.users,
                out_of_order_ms: a.out_of_order_ms,
                start_ms: match a.rate {
                    Some(_) => garam_core::time::now_ms(),
                    None => ClickConfig::default().start_ms,
                },
                ..ClickConfig::default()
            };
            let mut generator = ClickGenerator::new(config);
            let mut producer = log.producer(Default::default())?;
            let mut progress = crate::progress::Progress::new("gen clicks", Some(a.events));
            let started = Instant::now();
            let mut buf = Vec::with_capacity(256);
            for i in 0..a.events {
                let event = match a.rate {
                    Some(rate) => {
                        // Pace to the rate; event time is the wall clock when sent.
                        let due = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            producer.flush()?;
                            std::thread::sleep(wait);
                        }
                        generator.next_at(garam_core::time::now_ms())
                    }
                    None => generator.next().ok_or_else(|| anyhow::anyhow!("the generator ended"))?,
                };
                buf.clear();
                serde_json::to_writer(&mut buf, &event)?;
                let record =
                    Record::new(Some(event.user_id.clone()), Some(buf.clone())).with_timestamp(event.event_time);
                producer.send(&a.topic, record)?;
                if i % 65_536 == 0 {
                    progress.update(i);
                }
            }
            producer.flush()?;
            progress.finish();
            println!("produced {} click events to {} keyed by user_id", a.events, a.topic);
        }
        GenCommand::Ads(a) => {
            log.ensure_topic(&a.topic, a.partitions, TopicConfig::default())?;
            let mut producer = log.producer(Default::default())?;
            let table = ads();
            for ad in &table {
                producer.send(&a.topic, Record::new(Some(ad.ad_id.clone()), Some(serde_json::to_vec(ad)?)))?;
            }
            producer.flush()?;
            println!("produced {} ads to {} keyed by ad_id", table.len(), a.topic);
        }
    }
    log.close()?;
    Ok(())
}
