//! A complete Garam application: upper-cases the values of `--input` into `--output`.
//!
//! ```sh
//! cargo run -p garam --example uppercase -- --data-dir ./garam-data --input words --output shouts
//! ```
//!
//! It runs until Ctrl-C or SIGTERM, then stops fetching, finishes its batches, flushes, commits and
//! leaves the group.

use std::path::PathBuf;

use clap::Parser;
use garam::prelude::*;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "./garam-data")]
    data_dir: PathBuf,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "uppercase")]
    application_id: String,
    /// at-least-once or exactly-once.
    #[arg(long, default_value = "at-least-once")]
    guarantee: String,
    /// Stop (after a final commit) once every input partition is caught up.
    #[arg(long)]
    exit_when_idle: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("GARAM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let b = StreamBuilder::new();
    b.stream::<Option<String>, String>(&args.input, Consumed::default())
        .map_values(|v| v.to_uppercase())
        .to(&args.output, Produced::default());
    let topology = b.build()?;
    eprintln!("{}", topology.describe());
    let mut config = AppConfig::new(args.application_id);
    config.num_threads = args.threads;
    config.set("processing.guarantee", &args.guarantee)?;
    let mut app = App::new(topology, config, garam::embedded(&args.data_dir)?)?;
    if args.exit_when_idle {
        app.run_until_idle(std::time::Duration::from_millis(200))?;
    } else {
        app.run_until_shutdown()?;
    }
    eprintln!("stopped cleanly");
    Ok(())
}
