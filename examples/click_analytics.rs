//! Real-time click analytics — Garam's main job, and a contract other programs rely on.
//!
//! Reads click events from topic `clicks` (key `user_id`; JSON
//! `{"user_id","page_id","ad_id","ad_type","event_type","event_time","ip_address"}`, event time
//! `event_time`) and the ad → campaign table from topic `ads` (a global table), and writes, each
//! window once when it closes:
//!
//! 1. `campaign-views-10s`: `{"campaign_id","window_start","window_end","views"}` — the Yahoo
//!    Streaming Benchmark query;
//! 2. `page-views-1m`: `{"page_id","window_start","window_end","views"}`;
//! 3. `campaign-ctr-1m`: `{"campaign_id","window_start","window_end","views","clicks","ctr"}`;
//! 4. `user-sessions`: `{"user_id","session_start","session_end","events","clicks"}` (30 min gap);
//! 5. `top-pages-1m`: `{"window_start","window_end","pages":[{"page_id","views"}…]}`.
//!
//! With `--out-dir`, outputs 1 and 2 also go to Parquet files under
//! `<out-dir>/<output>/dt=YYYY-MM-DD/hr=HH/`, made visible when the app commits.
//!
//! ```sh
//! garam --data-dir ./garam-data gen ads
//! garam --data-dir ./garam-data gen clicks --events 1000000 --out-of-order-ms 1000
//! cargo run --release -p garam --example click_analytics -- --data-dir ./garam-data \
//!     --out-dir ./analytics-out --exit-when-idle
//! ```

use std::path::PathBuf;

use clap::Parser;
use garam::analytics::{self, RunOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "./garam-data")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// exactly-once or at-least-once.
    #[arg(long, default_value = "exactly-once")]
    guarantee: String,
    /// Treat the input as finished once caught up: close every window, emit, commit and stop.
    #[arg(long)]
    exit_when_idle: bool,
    /// Also write campaign-views-10s and page-views-1m as Parquet here.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// How far behind the newest event an event may be and still count (the watermark's bound).
    #[arg(long, default_value_t = 2000)]
    max_out_of_order_ms: i64,
    /// Partitions of clicks and the outputs, when they are created.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Parquet files roll at the first commit this long after their first row (or at 128 MiB).
    #[arg(long, default_value_t = 60_000)]
    roll_interval_ms: u64,
    /// No live view, even in a terminal.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("GARAM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = RunOptions {
        threads: args.threads,
        guarantee: args.guarantee,
        exit_when_idle: args.exit_when_idle,
        out_dir: args.out_dir,
        max_out_of_order_ms: args.max_out_of_order_ms,
        partitions: args.partitions,
        roll_interval: std::time::Duration::from_millis(args.roll_interval_ms),
        live_view: !args.quiet,
        ..RunOptions::default()
    };
    analytics::run(&options, garam::embedded(&args.data_dir)?)?;
    Ok(())
}
