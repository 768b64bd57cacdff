//! `garam`: the command-line tool over the embedded log.

mod apps;
mod bench;
mod clicks_bench;
mod consume;
mod count_bench;
mod demo;
mod gen;
mod groups;
mod pipeline_bench;
mod produce;
mod progress;
mod topics;
mod window_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the hot paths allocate per batch and per user value; glibc's malloc spent ~17% of a
/// pipeline run in malloc/free and page faults from returning large fetch buffers to the OS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Garam: stream processing on an embedded, durable, partitioned log.
#[derive(Parser)]
#[command(name = "garam", version, about)]
struct Cli {
    /// Data directory of the embedded log.
    #[arg(long, global = true, env = "GARAM_DATA_DIR", default_value = "./garam-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Produce lines from stdin (JSON or text) to a topic.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// List, describe and reset consumer groups.
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Describe stream-processing applications: members, tasks, lag.
    Apps {
        #[command(subcommand)]
        command: apps::AppsCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Generate input data: click events, the ad table.
    Gen {
        #[command(subcommand)]
        command: gen::GenCommand,
    },
    /// Demos that run end to end on the embedded log.
    Demo {
        #[command(subcommand)]
        command: demo::DemoCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("GARAM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topics { command } => topics::run(&cli.data_dir, command),
        Command::Produce(args) => produce::run(&cli.data_dir, args),
        Command::Consume(args) => consume::run(&cli.data_dir, args),
        Command::Groups { command } => groups::run(&cli.data_dir, command),
        Command::Apps { command } => apps::run(&cli.data_dir, command),
        Command::Bench { command } => bench::run(&cli.data_dir, command),
        Command::Gen { command } => gen::run(&cli.data_dir, command),
        Command::Demo { command } => demo::run(&cli.data_dir, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the chain of causes joined.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", msg.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// Opens the log at `dir`.
pub(crate) fn open_log(dir: &std::path::Path) -> anyhow::Result<garam_log::Log> {
    Ok(garam_log::Log::open(dir)?)
}
