//! Counts records per key — a contract other programs rely on.
//!
//! Reads JSON records from `--input` (the key is the record key), counts them per key in a RocksDB
//! store (`key-counts`, changelog `key-counts-key-counts-changelog`), and writes every updated count
//! to `--output` as `{"key": "...", "count": N}`, keyed by the key. A count needs only the key:
//! values are read as raw bytes and never parsed, so every record counts, its value JSON or not.
//!
//! ```sh
//! cargo run --release -p garam --example key_counts -- \
//!     --data-dir ./garam-data --input clicks --output click-counts --guarantee exactly-once
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use garam::operators::Materialized;
use garam::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "./garam-data")]
    data_dir: PathBuf,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    /// exactly-once or at-least-once.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Stop, after a final commit, once all input partitions are caught up.
    #[arg(long)]
    exit_when_idle: bool,
    /// How often to commit (default: 100 ms under exactly-once, 1 s under at-least-once).
    #[arg(long)]
    commit_interval_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Count {
    key: String,
    count: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("GARAM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let b = StreamBuilder::new();
    b.stream::<String, bytes::Bytes>(&args.input, Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .count(Materialized::named("key-counts").with(StringSerde, U64Serde))
        .to_stream()
        .map_values_with_key(|k, count| Count { key: k.clone(), count })
        .to(&args.output, Produced::with(StringSerde, JsonSerde::new()));
    let mut config = AppConfig::new("key-counts");
    config.num_threads = args.threads;
    config.set("processing.guarantee", &args.guarantee)?;
    if let Some(ms) = args.commit_interval_ms {
        config.set("commit.interval.ms", &ms.to_string())?;
    }
    let mut app = App::new(b.build()?, config, garam::embedded(&args.data_dir)?)?;
    if args.exit_when_idle {
        app.run_until_idle(Duration::from_millis(300))?;
    } else {
        app.run_until_shutdown()?;
    }
    Ok(())
}
