//! `garam groups …`

use std::path::Path;

use anyhow::{bail, Result};
use clap::Subcommand;
use garam_log::group::TopicPartition;

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// List groups with members or committed offsets.
    List,
    /// Per topic-partition: committed offset, log end offset, lag; and the members.
    Describe { group: String },
    /// Set a stopped group's committed offsets.
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
        #[arg(long, group = "to")]
        to_earliest: bool,
        #[arg(long, group = "to")]
        to_latest: bool,
        /// First offset with a timestamp ≥ this epoch-ms value.
        #[arg(long, group = "to")]
        to_datetime: Option<i64>,
        #[arg(long, group = "to")]
        to_offset: Option<u64>,
    },
    /// Delete a stopped group's committed offsets.
    Delete { group: String },
}

pub fn run(dir: &Path, cmd: GroupsCommand) -> Result<()> {
    let log = crate::open_log(dir)?;
    match cmd {
        GroupsCommand::List => {
            for g in log.groups().list() {
                println!("{g}");
            }
        }
        GroupsCommand::Describe { group } => {
            let d = log.groups().describe(&group);
            if d.offsets.is_empty() && d.members.is_empty() {
                bail!("unknown group '{group}': no members and no committed offsets");
            }
            println!("Group: {}\tState: {}\tGeneration: {}", d.group, d.state, d.generation);
            println!(
                "{:<30} {:>9} {:>16} {:>16} {:>10}",
                "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
            );
            for (tp, c) in &d.offsets {
                let Ok(p) = log.partition(&tp.topic, tp.partition) else {
                    continue;
                };
                let end = p.high_watermark();
                println!(
                    "{:<30} {:>9} {:>16} {:>16} {:>10}",
                    tp.topic,
                    tp.partition,
                    c.offset,
                    end,
                    end.saturating_sub(c.offset)
                );
            }
            for m in &d.members {
                let owned: Vec<String> = m.owned.iter().map(|tp| tp.to_string()).collect();
                println!("Member: {}\tClient: {}\tPartitions: {}", m.member_id, m.client_id, owned.join(","));
            }
        }
        GroupsCommand::ResetOffsets { group, topic, partition, to_earliest, to_latest, to_datetime, to_offset } => {
            let t = log.topic(&topic)?;
            let parts: Vec<u32> = match partition {
                Some(p) => {
                    t.partition(p)?;
                    vec![p]
                }
                None => (0..t.partition_count()).collect(),
            };
            let mut offsets = Vec::new();
            for p in parts {
                let part = t.partition(p)?;
                let o = part.offsets();
                let target = if to_earliest {
                    o.log_start_offset
                } else if to_latest {
                    o.high_watermark
                } else if let Some(ts) = to_datetime {
                    part.offset_for_time(ts)?.unwrap_or(o.high_watermark)
                } else if let Some(x) = to_offset {
                    if x < o.log_start_offset || x > o.high_watermark {
                        bail!(
                            "offset {x} is out of range for {topic}-{p} ({}..={})",
                            o.log_start_offset,
                            o.high_watermark
                        );
                    }
                    x
                } else {
                    bail!("say where to: --to-earliest, --to-latest, --to-datetime MS or --to-offset N");
                };
                offsets.push((TopicPartition::new(topic.clone(), p), target));
            }
            log.reset_group_offsets(&group, &offsets)?;
            for (tp, o) in offsets {
                println!("{tp} -> {o}");
            }
        }
        GroupsCommand::Delete { group } => {
            log.delete_group(&group)?;
            println!("deleted group {group}");
        }
    }
    log.close()?;
    Ok(())
}
