//! `garam consume TOPIC`: print records.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use clap::{Args, ValueEnum};
use garam_log::batch::ConsumedRecord;
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON object per record: topic, partition, offset, timestamp, key, value, headers.
    Json,
    /// The value only, as text.
    Value,
}

#[derive(Args)]
pub struct ConsumeArgs {
    topic: String,
    /// Consume as a member of this group, committing offsets as records are printed.
    #[arg(long)]
    group: Option<String>,
    /// Start at the earliest offset when there is no committed offset (default: only new records).
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Stop once every partition is caught up (like kcat -e).
    #[arg(long)]
    exit_at_end: bool,
    #[arg(long, value_enum, default_value = "json")]
    format: OutputFormat,
    /// read_committed shows only committed transactional records (and nothing past an open
    /// transaction); read_uncommitted shows everything written.
    #[arg(long, value_enum, default_value = "read_committed")]
    isolation_level: IsolationLevel,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
#[clap(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Only committed transactional records.
    ReadCommitted,
    /// Every record written.
    ReadUncommitted,
}

/// A byte field as JSON: a UTF-8 string where valid, otherwise base64 with `<name>_encoding`.
fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    match bytes {
        None => {
            obj.insert(name.into(), Value::Null);
        }
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => {
                obj.insert(name.into(), Value::String(s.to_string()));
            }
            Err(_) => {
                obj.insert(name.into(), Value::String(base64::engine::general_purpose::STANDARD.encode(b)));
                obj.insert(format!("{name}_encoding"), Value::String("base64".into()));
            }
        },
    }
}

/// The `consume --format json` line of a record.
pub fn record_json(topic: &str, partition: u32, r: &ConsumedRecord) -> Value {
    let mut obj = Map::new();
    obj.insert("topic".into(), json!(topic));
    obj.insert("partition".into(), json!(partition));
    obj.insert("offset".into(), json!(r.offset));
    obj.insert("timestamp".into(), json!(r.timestamp));
    put_bytes(&mut obj, "key", r.key.as_deref());
    put_bytes(&mut obj, "value", r.value.as_deref());
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| {
            let mut o = Map::new();
            o.insert("key".into(), json!(h.key));
            put_bytes(&mut o, "value", h.value.as_deref());
            Value::Object(o)
        })
        .collect();
    obj.insert("headers".into(), Value::Array(headers));
    Value::Object(obj)
}

pub fn run(dir: &Path, args: ConsumeArgs) -> Result<()> {
    let log = crate::open_log(dir)?;
    log.topic(&args.topic)?;
    let reset = if args.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    let mut consumer = log.consumer(ConsumerConfig {
        group: args.group.clone(),
        topics: vec![args.topic.clone()],
        client_id: "garam-cli".into(),
        auto_offset_reset: reset,
        read_committed: args.isolation_level == IsolationLevel::ReadCommitted,
        ..Default::default()
    })?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed: u64 = 0;
    let limit = args.max.unwrap_or(u64::MAX);
    'outer: while printed < limit {
        let polled = consumer.poll(Duration::from_millis(if args.exit_at_end { 50 } else { 500 }))?;
        let mut commits = Vec::new();
        for part in &polled {
            for r in part.records() {
                let r = r?;
                match args.format {
                    OutputFormat::Json => writeln!(out, "{}", record_json(&part.tp.topic, part.tp.partition, &r))?,
                    OutputFormat::Value => match &r.value {
                        Some(v) => writeln!(out, "{}", String::from_utf8_lossy(v))?,
                        None => writeln!(out, "null")?,
                    },
                }
                printed += 1;
                if printed >= limit {
                    commits.push((part.tp.clone(), r.offset + 1));
                    break;
                }
            }
            if printed < limit {
                commits.push((part.tp.clone(), part.next_offset()));
            }
            if printed >= limit {
                break;
            }
        }
        out.flush()?;
        if args.group.is_some() && !commits.is_empty() {
            consumer.commit(&commits)?;
        }
        if printed >= limit {
            break 'outer;
        }
        if args.exit_at_end
            && polled.is_empty()
            && consumer.lag().values().all(|l| *l == 0)
            && !consumer.assignment().is_empty()
        {
            break;
        }
    }
    out.flush()?;
    consumer.close()?;
    drop(consumer);
    log.close()?;
    Ok(())
}
