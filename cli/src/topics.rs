//! `garam topics …`

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use garam_log::TopicConfig;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Topic config as key=value (repeatable), e.g. cleanup.policy=compact.
        #[arg(long = "config", short = 'c')]
        config: Vec<String>,
        /// Succeed if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// List topics.
    List,
    /// Describe a topic: config and per-partition offsets.
    Describe { name: String },
    /// Change config or grow the partition count.
    Alter {
        name: String,
        #[arg(long = "config", short = 'c')]
        config: Vec<String>,
        /// Config keys to return to their defaults.
        #[arg(long = "delete-config")]
        delete_config: Vec<String>,
        /// New (larger) partition count.
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

pub fn run(dir: &Path, cmd: TopicsCommand) -> Result<()> {
    let log = crate::open_log(dir)?;
    match cmd {
        TopicsCommand::Create { name, partitions, config, if_not_exists } => {
            let overrides = TopicConfig::parse_pairs(config.iter().map(String::as_str))?;
            let cfg = TopicConfig::from_overrides(&overrides)?;
            match log.create_topic(&name, partitions, cfg) {
                Err(garam_log::LogError::TopicExists(_)) if if_not_exists => {}
                r => {
                    r?;
                    println!("created topic {name} with {partitions} partition(s)");
                }
            }
        }
        TopicsCommand::List => {
            for t in log.topics() {
                println!("{}", t.name());
            }
        }
        TopicsCommand::Describe { name } => {
            let t = log.topic(&name)?;
            let cfg = t.config();
            let overrides: Vec<String> = cfg.overrides().iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("Topic: {}\tPartitionCount: {}\tConfigs: {}", t.name(), t.partition_count(), overrides.join(","));
            for p in t.partitions() {
                let o = p.offsets();
                println!(
                    "\tPartition: {}\tLogStartOffset: {}\tHighWatermark: {}\tLogEndOffset: {}\tSegments: {}\tSize: {}",
                    p.id(),
                    o.log_start_offset,
                    o.high_watermark,
                    o.log_end_offset,
                    p.segment_count(),
                    p.size_bytes()
                );
            }
        }
        TopicsCommand::Alter { name, config, delete_config, partitions } => {
            let set: BTreeMap<String, String> = TopicConfig::parse_pairs(config.iter().map(String::as_str))?;
            if !set.is_empty() || !delete_config.is_empty() {
                log.alter_topic_config(&name, &set, &delete_config)?;
            }
            if let Some(n) = partitions {
                log.add_partitions(&name, n)?;
            }
            println!("altered topic {name}");
        }
        TopicsCommand::Delete { name } => {
            log.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    log.close()?;
    Ok(())
}
