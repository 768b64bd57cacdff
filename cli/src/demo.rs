//! `garam demo clicks`: the main job on the embedded default, end to end.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use garam_core::Record;
use garam_log::consumer::{group_lag, ConsumerConfig, OffsetReset};
use garam_log::TopicConfig;
use rand::{Rng, SeedableRng};

#[derive(Subcommand)]
pub enum DemoCommand {
    /// Create `clicks`, produce synthetic click events keyed by user, consume them with a consumer
    /// group, and print per-partition record counts and lag.
    Clicks(ClicksDemo),
}

#[derive(Args)]
pub struct ClicksDemo {
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "demo-clicks")]
    group: String,
}

pub fn run(dir: &Path, cmd: DemoCommand) -> Result<()> {
    match cmd {
        DemoCommand::Clicks(d) => clicks(dir, d),
    }
}

fn clicks(dir: &Path, d: ClicksDemo) -> Result<()> {
    let log = crate::open_log(dir)?;
    let topic = log.ensure_topic("clicks", d.partitions, TopicConfig::default())?;
    println!("data dir {}: topic clicks with {} partitions", dir.display(), topic.partition_count());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(d.seed);
    let mut producer = log.producer(Default::default())?;
    let start_ms = garam_core::time::now_ms();
    let event_types = ["view", "view", "view", "view", "view", "view", "view", "view", "click", "purchase"];
    for i in 0..d.events {
        let user = format!("user-{}", rng.gen_range(0..d.users));
        let ad_type = ["banner", "modal", "video"][rng.gen_range(0..3)];
        let event = serde_json::json!({
            "user_id": user,
            "page_id": format!("page-{}", rng.gen_range(0..100)),
            "ad_id": format!("ad-{}", rng.gen_range(0..1000)),
            "ad_type": ad_type,
            "event_type": event_types[rng.gen_range(0..event_types.len())],
            "event_time": start_ms + i as i64,
            "ip_address": format!("10.{}.{}.{}", rng.gen_range(0..256), rng.gen_range(0..256), rng.gen_range(0..256)),
        });
        producer
            .send("clicks", Record::new(Some(user), Some(event.to_string())).with_timestamp(start_ms + i as i64))?;
    }
    producer.flush()?;
    println!("produced {} click events keyed by user_id", d.events);

    let mut consumer = log.consumer(ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        client_id: "demo".into(),
        ..ConsumerConfig::group(&d.group, &["clicks"])
    })?;
    let mut counts = vec![0u64; topic.partition_count() as usize];
    loop {
        let polled = consumer.poll(Duration::from_millis(200))?;
        if polled.is_empty() && consumer.lag().values().all(|l| *l == 0) {
            break;
        }
        let mut commits = Vec::new();
        for part in &polled {
            for r in part.records() {
                r?;
                counts[part.tp.partition as usize] += 1;
            }
            commits.push((part.tp.clone(), part.next_offset()));
        }
        consumer.commit(&commits)?;
    }
    consumer.close()?;
    drop(consumer);
    println!("consumed with group {}:", d.group);
    println!("{:>9} {:>10} {:>10} {:>14} {:>6}", "PARTITION", "CONSUMED", "COMMITTED", "LOG-END-OFFSET", "LAG");
    for (p, committed, end, lag) in group_lag(&log, &d.group, "clicks")? {
        println!(
            "{:>9} {:>10} {:>10} {:>14} {:>6}",
            p,
            counts[p as usize],
            committed.map_or("-".into(), |c| c.to_string()),
            end,
            lag
        );
    }
    println!("total consumed: {}", counts.iter().sum::<u64>());
    log.close()?;
    Ok(())
}
