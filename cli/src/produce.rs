//! `garam produce TOPIC`: lines from stdin to a topic.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use garam_core::Record;
use garam_log::producer::ProducerConfig;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    /// Each line is a JSON value (validated).
    Json,
    /// Each line is a value as is.
    Text,
}

#[derive(Args)]
pub struct ProduceArgs {
    topic: String,
    /// Take the key from this top-level JSON field (strings as is, other values as JSON).
    #[arg(long)]
    key_field: Option<String>,
    /// Write every record to this partition instead of partitioning by key.
    #[arg(long)]
    partition: Option<u32>,
    /// Take the timestamp (epoch ms) from this top-level JSON field.
    #[arg(long)]
    timestamp_field: Option<String>,
    /// Input format; json when --key-field or --timestamp-field is given.
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// Split text lines at the first occurrence of this separator into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// fsync before exiting.
    #[arg(long)]
    sync: bool,
}

pub fn run(dir: &Path, args: ProduceArgs) -> Result<()> {
    let log = crate::open_log(dir)?;
    let topic = log.topic(&args.topic)?;
    if let Some(p) = args.partition {
        if p >= topic.partition_count() {
            bail!("topic '{}' has no partition {p} (it has {})", args.topic, topic.partition_count());
        }
    }
    let format = args.format.unwrap_or(if args.key_field.is_some() || args.timestamp_field.is_some() {
        InputFormat::Json
    } else {
        InputFormat::Text
    });
    if format == InputFormat::Text && (args.key_field.is_some() || args.timestamp_field.is_some()) {
        bail!("--key-field and --timestamp-field need --format json");
    }
    let mut producer = log.producer(ProducerConfig::default())?;
    let stdin = std::io::stdin().lock();
    let mut progress = crate::progress::Progress::new("produced", None);
    let mut n: u64 = 0;
    for (i, line) in stdin.lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let record = match format {
            InputFormat::Text => match args.key_separator.as_deref().and_then(|s| line.split_once(s)) {
                Some((k, v)) => Record::new(Some(k.to_string()), Some(v.to_string())),
                None => Record::new(None::<String>, Some(line)),
            },
            InputFormat::Json => {
                let v: serde_json::Value =
                    serde_json::from_str(&line).with_context(|| format!("stdin line {lineno}: not valid JSON"))?;
                let key = match &args.key_field {
                    None => None,
                    Some(f) => match v.get(f) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Null) | None => {
                            bail!("stdin line {lineno}: key field '{f}' is missing or null")
                        }
                        Some(other) => Some(other.to_string()),
                    },
                };
                let ts = match &args.timestamp_field {
                    None => None,
                    Some(f) => Some(v.get(f).and_then(serde_json::Value::as_i64).with_context(|| {
                        format!("stdin line {lineno}: timestamp field '{f}' is missing or not an integer (epoch ms)")
                    })?),
                };
                let mut r = Record::new(key, Some(line));
                r.timestamp = ts;
                r
            }
        };
        producer.send_to(&args.topic, args.partition, record)?;
        n += 1;
        progress.update(n);
    }
    if args.sync {
        producer.flush_durable()?;
    } else {
        producer.flush()?;
    }
    progress.finish();
    eprintln!("produced {n} record(s) to {}", args.topic);
    drop(producer);
    log.close()?;
    Ok(())
}
