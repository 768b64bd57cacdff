//! Running the click-analytics application: what `examples/click_analytics.rs` and
//! `garam demo clicks` share.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use garam_core::backend::Backend;
use garam_core::runtime::{App, AppConfig};

use super::{create_topics, topology, AnalyticsOptions, LiveView};

/// How the application runs (the example's flags).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `application.id`: names the consumer group, state directories and internal topics.
    pub application_id: String,
    /// Worker threads.
    pub threads: usize,
    /// `exactly-once` or `at-least-once`.
    pub guarantee: String,
    /// Treat the input as finished once caught up: close every window, emit, commit and stop
    /// (as a bounded source does in Flink). Events that arrive later are late.
    pub exit_when_idle: bool,
    /// Where the Parquet copies of `campaign-views-10s` and `page-views-1m` go, if anywhere.
    pub out_dir: Option<PathBuf>,
    /// The watermark's bound on disorder.
    pub max_out_of_order_ms: i64,
    /// Partitions of `clicks` and the outputs, when they are created.
    pub partitions: u32,
    /// How often Parquet files roll (at the first commit after this long).
    pub roll_interval: Duration,
    /// Show the live view when standard output is a terminal.
    pub live_view: bool,
    /// Stop after this long (default: at Ctrl-C / SIGTERM).
    pub stop_after: Option<Duration>,
    /// Further configuration, as `key=value`.
    pub config: Vec<(String, String)>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            application_id: "click-analytics".into(),
            threads: 2,
            guarantee: "exactly-once".into(),
            exit_when_idle: false,
            out_dir: None,
            max_out_of_order_ms: 2_000,
            partitions: 8,
            roll_interval: Duration::from_secs(60),
            live_view: true,
            stop_after: None,
            config: Vec::new(),
        }
    }
}

/// Creates the topics, then runs the application until Ctrl-C / SIGTERM (or, with
/// `exit_when_idle`, until the input is consumed and every window closed).
pub fn run(options: &RunOptions, backend: Arc<dyn Backend>) -> garam_core::Result<()> {
    create_topics(&*backend, options.partitions)?;
    let analytics = AnalyticsOptions {
        parquet_dir: options.out_dir.clone(),
        roll: garam_connectors::RollPolicy { max_age: options.roll_interval, ..Default::default() },
        ..AnalyticsOptions::default()
    };
    let mut config = AppConfig::new(&options.application_id);
    config.num_threads = options.threads;
    config.set("processing.guarantee", &options.guarantee)?;
    config.set("max.out.of.orderness.ms", &options.max_out_of_order_ms.to_string())?;
    for (k, v) in &options.config {
        config.set(k, v)?;
    }
    let mut app = App::new(topology(&analytics)?, config, backend.clone())?;
    app.start()?;
    let live = (options.live_view && std::io::stdout().is_terminal())
        .then(|| LiveView::start(app.monitor(), backend.clone(), Duration::from_secs(1)));
    let result = if options.exit_when_idle {
        app.run_to_end(Duration::from_millis(500))
    } else {
        if let Some(after) = options.stop_after {
            let monitor = app.monitor();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                monitor.request_shutdown();
            });
        }
        app.run_until_shutdown()
    };
    if let Some(live) = live {
        live.stop();
    }
    let m = app.metrics();
    tracing::info!(
        records_in = m.records_in,
        records_out = m.records_out,
        late = m.late_records,
        "click analytics stopped"
    );
    result
}
