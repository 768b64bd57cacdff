//! `garam gen clicks` and `garam gen ads`: the click-analytics input, deterministic for a seed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use garam::clicks::{ads_with, ClickConfig, ClickGenerator, IdFormat};
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
    /// Ids as UUIDs (events of ~245 bytes, as the Yahoo Streaming Benchmark writes them)
    /// instead of `user-17`, `ad-295` (~155 bytes). Events and ads must agree.
    #[arg(long)]
    uuid_ids: bool,
    /// Write JSON lines to this file instead of the topic (input for `bench clicks --input` and
    /// for other engines).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct AdsArgs {
    #[arg(long, default_value = "ads")]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Ids as UUIDs (events of ~245 bytes, as the Yahoo Streaming Benchmark writes them)
    /// instead of `user-17`, `ad-295` (~155 bytes). Events and ads must agree.
    #[arg(long)]
    uuid_ids: bool,
    /// Write the table to this file instead of the topic: CSV `ad_id,campaign_id` if it ends in
    /// `.csv`, else JSON lines.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
}

pub(crate) fn ids(uuid: bool) -> IdFormat {
    if uuid {
        IdFormat::Uuid
    } else {
        IdFormat::Short
    }
}

/// Writes to a file instead of a topic.
fn to_file(cmd: &GenCommand) -> Result<bool> {
    use std::io::Write;
    match cmd {
        GenCommand::Clicks(a) => {
            let Some(path) = &a.file else { return Ok(false) };
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            let config = ClickConfig {
                seed: a.seed,
                users: a.users,
                out_of_order_ms: a.out_of_order_ms,
                ids: ids(a.uuid_ids),
                ..Default::default()
            };
            let mut progress = crate::progress::Progress::new("gen clicks", Some(a.events));
            for (i, e) in ClickGenerator::new(config).take(a.events as usize).enumerate() {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")?;
                if i % 65_536 == 0 {
                    progress.update(i as u64);
                }
            }
            out.flush()?;
            progress.finish();
            println!("wrote {} click events to {}", a.events, path.display());
        }
        GenCommand::Ads(a) => {
            let Some(path) = &a.file else { return Ok(false) };
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            let csv = path.extension().is_some_and(|e| e == "csv");
            if csv {
                writeln!(out, "ad_id,campaign_id")?;
            }
            for ad in ads_with(ids(a.uuid_ids)) {
                if csv {
                    writeln!(out, "{},{}", ad.ad_id, ad.campaign_id)?;
                } else {
                    serde_json::to_writer(&mut out, &ad)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            println!("wrote {} ads to {}", ads_with(ids(a.uuid_ids)).len(), path.display());
        }
    }
    Ok(true)
}

pub fn run(dir: &Path, cmd: GenCommand) -> Result<()> {
    if to_file(&cmd)? {
        return Ok(());
    }
    let log = crate::open_log(dir)?;
    match cmd {
        GenCommand::Clicks(a) => {
            log.ensure_topic(&a.topic, a.partitions, TopicConfig::default())?;
            let config = ClickConfig {
                seed: a.seed,
                users: a.users,
                out_of_order_ms: a.out_of_order_ms,
                ids: ids(a.uuid_ids),
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
            let table = ads_with(ids(a.uuid_ids));
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
