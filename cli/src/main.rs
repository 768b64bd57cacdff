//! `garam`: the command-line tool over the embedded log.

mod apps;
mod bench;
mod clicks_bench;
mod consume;
mod count_bench;
mod count_compare;
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

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (`libmimalloc-sys` exports no constant
/// for it; a test checks that this index holds the option's default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Has mimalloc return freed pages to the system 100 ms after they empty, not 1 s (mimalloc 3's
/// default), unless the environment sets it (`MIMALLOC_PURGE_DELAY`, in any case, or its legacy
/// name `MIMALLOC_RESET_DELAY`: mimalloc marks an option set from the environment as initialised,
/// and `mi_option_set_default` leaves those alone).
///
/// Per-batch buffers and store caches that evict and regrow free tens of megabytes a second, and
/// the second's delay kept them resident: with 64 tasks × 3 stores the count peaked at 336–339 MB
/// with it, ~300 MB at 0 ms, ~320 MB at 100 ms. Each purged page that is used again costs a page
/// fault: the 8-task count took 110 K faults at 1 s, 172 K at 100 ms, 385 K at 10 ms (a visible
/// ~5 % of its speed), and a fifth of its speed at 0 ms.
fn purge_freed_memory_promptly() {
    // SAFETY: a plain store into mimalloc's option table, made before `main` starts any thread.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, 100) };
}

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
    purge_freed_memory_promptly();
    // RocksDB is the only user of glibc's malloc here (Rust allocates through mimalloc), so one
    // arena costs little contention (no change in throughput) and saves the holes of one per
    // thread: ~10 MiB of the 64 × 3 count's peak (BENCHMARKS.md). Before any thread starts.
    garam_state::limit_malloc_arenas(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // 1000 ms is mimalloc 3's default purge delay; its neighbours default to 1 and 0. A
        // mimalloc whose options moved would fail here rather than set some other option.
        let set_by_env = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy().to_ascii_uppercase();
            k == "MIMALLOC_PURGE_DELAY" || k == "MIMALLOC_RESET_DELAY"
        });
        if !set_by_env {
            assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        }
    }
}
