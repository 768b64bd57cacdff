//! `examples/click_analytics.rs` under exactly-once, killed with SIGKILL at random moments and
//! restarted: its five topics and its Parquet files end identical to an uninterrupted run's — no
//! window missing or repeated, no partial or duplicate Parquet row, no staging file left. The
//! input is topped up before each start (`common::kill_until_interrupted`), so the kills land while it
//! works; the uninterrupted run then gets the same input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use garam::analytics;
use garam::log::Log;

mod common;

fn example() -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push("click_analytics");
    p
}

fn spawn(dir: &Path, out: &Path, exit_when_idle: bool) -> std::process::Child {
    let mut cmd = Command::new(example());
    cmd.args(["--guarantee", "exactly-once", "--threads", "2", "--quiet", "--partitions", "4"])
        .args(["--max-out-of-order-ms", &common::OUT_OF_ORDER_MS.to_string(), "--roll-interval-ms", "150"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--out-dir")
        .arg(out)
        .env("GARAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("stderr")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()));
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    cmd.spawn().expect("examples are built by `cargo test -p garam` (or --workspace)")
}

/// Every output topic's committed values (as JSON text, sorted).
fn topics(dir: &Path) -> BTreeMap<&'static str, Vec<String>> {
    let log = Log::open(dir).unwrap();
    let mut out = BTreeMap::new();
    for t in analytics::OUTPUTS {
        let mut values: Vec<serde_json::Value> = common::read(&log, t);
        let mut text: Vec<String> = values.drain(..).map(|v| v.to_string()).collect();
        text.sort();
        out.insert(t, text);
    }
    out
}

/// Every row of every Parquet file under `dir`, by output (sorted), and the files' partitions.
fn parquet_rows(dir: &Path) -> BTreeMap<String, Vec<String>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, UInt64Type};
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "a staging file was left: {}", path.display());
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let output = rel.split('/').next().unwrap().to_string();
            let file = std::fs::File::open(&path).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let key = batch.column(0).as_string::<i32>();
                let start = batch.column(1).as_primitive::<Int64Type>();
                let end = batch.column(2).as_primitive::<Int64Type>();
                let views = batch.column(3).as_primitive::<UInt64Type>();
                for i in 0..batch.num_rows() {
                    let partition = garam::connectors::hourly_partition(start.value(i));
                    assert!(
                        rel.contains(&partition),
                        "{rel}: a row of window {} belongs in {partition}",
                        start.value(i)
                    );
                    rows.entry(output.clone()).or_default().push(format!(
                        "{} {} {} {}",
                        key.value(i),
                        start.value(i),
                        end.value(i),
                        views.value(i)
                    ));
                }
            }
        }
    }
    for r in rows.values_mut() {
        r.sort();
    }
    rows
}

#[test]
fn click_analytics_survives_sigkill_with_identical_topics_and_parquet_files() {
    let clean = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    for dir in [clean.path(), crashed.path()] {
        let log = Log::open(dir.join("log")).unwrap();
        common::produce(&log, &[]);
        log.close().unwrap();
    }
    let crashed_log = crashed.path().join("log");
    let (mut generator, mut events) = (common::generator(20), Vec::new());
    let produce = |n: u64| {
        let more: Vec<_> = generator.by_ref().take(n as usize).collect();
        let log = Log::open(&crashed_log).unwrap();
        common::produce_events(&log, &more);
        log.close().unwrap();
        events.extend(more);
    };
    let committed = || {
        let log = Log::open(&crashed_log).unwrap();
        let offsets = garam::core::backend::Backend::group_offsets(&log, "click-analytics", "clicks").unwrap();
        log.close().unwrap();
        offsets.iter().filter_map(|(_, c, _)| *c).sum()
    };
    let start = || spawn(&crashed_log, &crashed.path().join("out"), false);
    common::kill_until_interrupted(8, 30, 1200, 40_000, 17, produce, start, committed);

    // The uninterrupted run, on the same input.
    let log = Log::open(clean.path().join("log")).unwrap();
    common::produce_events(&log, &events);
    log.close().unwrap();
    drop(log);
    let status = spawn(&clean.path().join("log"), &clean.path().join("out"), true).wait().unwrap();
    let stderr = std::fs::read_to_string(clean.path().join("log.stderr")).unwrap_or_default();
    assert!(status.success(), "the uninterrupted run failed: {stderr}");

    let status = spawn(&crashed.path().join("log"), &crashed.path().join("out"), true).wait().unwrap();
    let stderr = std::fs::read_to_string(crashed.path().join("log.stderr")).unwrap_or_default();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            ["WARN", "ERROR", "revoked", "assigned", "closed task", "created task", "left", "stopped"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    assert!(status.success(), "the final run failed: {}", lines.join("\n"));

    let expected = topics(&clean.path().join("log"));
    assert!(expected.values().all(|v| !v.is_empty()), "every output has results");
    let got = topics(&crashed.path().join("log"));
    for t in analytics::OUTPUTS {
        assert_eq!(got[t].len(), expected[t].len(), "{t}: result count");
        assert_eq!(got[t], expected[t], "{t}");
    }
    let expected_rows = parquet_rows(&clean.path().join("out"));
    assert_eq!(expected_rows.len(), 2, "campaign-views-10s and page-views-1m go to Parquet");
    assert_eq!(expected_rows["campaign-views-10s"].len(), expected["campaign-views-10s"].len());
    assert_eq!(expected_rows["page-views-1m"].len(), expected["page-views-1m"].len());
    assert_eq!(parquet_rows(&crashed.path().join("out")), expected_rows);
}
