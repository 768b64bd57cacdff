//! File sinks commit files atomically and recover from the store; file sources read JSON lines
//! and CSV, once or tailing, and reject bad lines by file and line.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use garam_connectors::file_source::FileSource;
use garam_connectors::{FileSink, FileSinkExt, RollPolicy};
use garam_core::serdes::{JsonSerde, StringSerde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, StreamBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct View {
    page_id: String,
    hour: u32,
    views: u64,
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn topology(dir: &std::path::Path, max_rows: usize) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    let sink = FileSink::json_lines(dir)
        .partition_by(|v: &View| format!("hr={:02}", v.hour))
        .roll(RollPolicy { max_rows, ..RollPolicy::default() });
    b.stream::<String, View>("views", Consumed::with(StringSerde, JsonSerde::new())).to_files("views-files", sink);
    b.build().unwrap()
}

#[test]
fn rows_reach_files_at_commits_once_a_roll_is_due_and_survive_a_restart() {
    let out = tempfile::tempdir().unwrap();
    let driver = TopologyTestDriver::new(topology(out.path(), 3)).unwrap();
    let input = driver.input_topic("views", StringSerde, JsonSerde::<View>::new());
    for (i, hour) in [(0u64, 1u32), (1, 1), (2, 2)] {
        input.pipe(format!("p{i}"), View { page_id: format!("p{i}"), hour, views: i }).unwrap();
    }
    // The third row made a roll due: two files (one per partition directory), visible.
    let files = files_under(out.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("hr=01/part-0_0-000000-") && files[0].ends_with(".jsonl"), "{files:?}");
    assert!(files[1].starts_with("hr=02/part-0_0-000001-"), "{files:?}");
    let text = std::fs::read_to_string(out.path().join(&files[0])).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.starts_with("{\"page_id\":\"p0\",\"hour\":1,\"views\":0}\n"));

    // A row waits in the store (not in a file); a stray staging file is from an aborted commit.
    input.pipe("p3".into(), View { page_id: "p3".into(), hour: 1, views: 3 }).unwrap();
    std::fs::write(out.path().join(".staging/views-files.0_0.000007-0badf00d.jsonl"), "partial").unwrap();
    driver.restart().unwrap();
    input.pipe("p4".into(), View { page_id: "p4".into(), hour: 1, views: 4 }).unwrap();
    input.pipe("p5".into(), View { page_id: "p5".into(), hour: 1, views: 5 }).unwrap();
    let files = files_under(out.path());
    assert!(!files.iter().any(|f| f.starts_with(".staging")), "the stray staging file is removed: {files:?}");
    assert_eq!(files.len(), 3, "{files:?}");
    let third = std::fs::read_to_string(out.path().join(&files[1])).unwrap();
    let pages: Vec<View> = third.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(pages.iter().map(|v| v.views).collect::<Vec<_>>(), vec![3, 4, 5], "the buffered row survived");
}

#[test]
fn parquet_files_hold_the_rows_in_the_schema() {
    let out = tempfile::tempdir().unwrap();
    let b = StreamBuilder::new();
    let sample = View { page_id: String::new(), hour: 0, views: 0 };
    let sink =
        FileSink::parquet_inferred(out.path(), &sample).unwrap().roll(RollPolicy { max_rows: 2, ..Default::default() });
    b.stream::<String, View>("views", Consumed::with(StringSerde, JsonSerde::new())).to_files("views-parquet", sink);
    let driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = driver.input_topic("views", StringSerde, JsonSerde::<View>::new());
    input.pipe("a".into(), View { page_id: "a".into(), hour: 3, views: 7 }).unwrap();
    input.pipe("b".into(), View { page_id: "b".into(), hour: 4, views: 9 }).unwrap();
    let files = files_under(out.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].starts_with("part-0_0-000000-") && files[0].ends_with(".parquet"), "{files:?}");
    let file = std::fs::File::open(out.path().join(&files[0])).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    assert_eq!(batches[0].schema().field(2).name(), "views");
}

fn log() -> (tempfile::TempDir, garam_log::Log) {
    let dir = tempfile::tempdir().unwrap();
    let log = garam_log::Log::open(dir.path().join("log")).unwrap();
    log.create_topic("in", 2, garam_log::TopicConfig::default()).unwrap();
    (dir, log)
}

fn values(log: &garam_log::Log) -> Vec<(Option<String>, serde_json::Value, i64)> {
    use garam_core::backend::Backend;
    let mut out = Vec::new();
    for p in 0..2 {
        let f = Backend::fetch(log, "in", p, 0, 1 << 20, true).unwrap();
        for r in f.records {
            let key = r.key.as_deref().map(|k| String::from_utf8(k.to_vec()).unwrap());
            out.push((key, serde_json::from_slice(r.value.as_deref().unwrap()).unwrap(), r.timestamp));
        }
    }
    out.sort_by_key(|(_, _, t)| *t);
    out
}

#[test]
fn rows_that_do_not_fit_the_schema_or_escape_the_directory_are_refused_before_the_store() {
    let out = tempfile::tempdir().unwrap();
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("page_id", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("views", arrow_schema::DataType::Boolean, false),
    ]));
    let b = StreamBuilder::new();
    b.stream::<String, View>("views", Consumed::with(StringSerde, JsonSerde::new()))
        .to_files("bad-schema", FileSink::parquet(out.path(), schema));
    let driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = driver.input_topic("views", StringSerde, JsonSerde::<View>::new());
    let err = input.pipe("a".into(), View { page_id: "a".into(), hour: 3, views: 7 }).unwrap_err().to_string();
    assert!(err.contains("'views'") && err.contains("Boolean"), "{err}");

    let b = StreamBuilder::new();
    b.stream::<String, View>("views", Consumed::with(StringSerde, JsonSerde::new()))
        .to_files("escape", FileSink::json_lines(out.path()).partition_by(|v: &View| v.page_id.clone()));
    let driver = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = driver.input_topic("views", StringSerde, JsonSerde::<View>::new());
    let err = input.pipe("a".into(), View { page_id: "../../etc".into(), hour: 3, views: 7 }).unwrap_err();
    assert!(err.to_string().contains("'../../etc'"), "{err}");
}

#[test]
fn json_lines_and_csv_become_keyed_timestamped_records() {
    let (dir, log) = log();
    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(&jsonl, "{\"user_id\":\"u1\",\"event_time\":10}\n\n{\"user_id\":\"u2\",\"event_time\":20}").unwrap();
    let mut source = FileSource::new(&jsonl, "in");
    source.key_field = Some("user_id".into());
    source.timestamp_field = Some("event_time".into());
    let p = source.run(&log, &AtomicBool::new(false)).unwrap();
    assert_eq!(p.records, 2, "the blank line is skipped; the last line needs no newline when read once");
    let got = values(&log);
    assert_eq!(got[0].0.as_deref(), Some("u1"));
    assert_eq!((got[0].2, got[1].2), (10, 20));

    let csv = dir.path().join("ads.csv");
    std::fs::write(&csv, "ad_id,campaign_id,event_time\nad-1,\"c, 1\",30\n").unwrap();
    let mut source = FileSource::new(&csv, "in");
    source.key_field = Some("ad_id".into());
    source.timestamp_field = Some("event_time".into());
    source.run(&log, &AtomicBool::new(false)).unwrap();
    let got = values(&log);
    let ad = got.iter().find(|(k, _, _)| k.as_deref() == Some("ad-1")).unwrap();
    assert_eq!(ad.1, serde_json::json!({"ad_id": "ad-1", "campaign_id": "c, 1", "event_time": "30"}));
    assert_eq!(ad.2, 30, "a CSV timestamp field is parsed from its text");
}

#[test]
fn bad_and_huge_lines_are_rejected_by_file_and_line() {
    let (dir, log) = log();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"a\":1}\n{\"a\":\n").unwrap();
    let err = FileSource::new(&path, "in").run(&log, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let huge = dir.path().join("huge.jsonl");
    let mut f = std::fs::File::create(&huge).unwrap();
    f.write_all(&vec![b'x'; 5000]).unwrap();
    drop(f);
    let mut source = FileSource::new(&huge, "in");
    source.max_line_bytes = 1000;
    let err = source.run(&log, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(err.contains("huge.jsonl:1") && err.contains("longer than 1000 bytes"), "{err}");
}

#[test]
fn a_tailed_file_is_followed_and_a_restart_resumes_where_it_stopped() {
    let (dir, log) = log();
    let path = dir.path().join("growing.jsonl");
    std::fs::write(&path, "{\"n\":1}\n").unwrap();
    let mut source = FileSource::new(&path, "in");
    source.tail = true;
    source.position_file = Some(dir.path().join("growing.position"));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, l, st) = (source.clone(), log.clone(), stop.clone());
    let reader = std::thread::spawn(move || s.run(&l, &st).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"n\":2}\n{\"n\":").unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(values(&log).len(), 2, "the partial line waits for its newline");
    f.write_all(b"3}\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let p = reader.join().unwrap();
    assert_eq!(p.records, 3);
    f.write_all(b"{\"n\":4}\n").unwrap();
    source.tail = false;
    let p = source.run(&log, &AtomicBool::new(false)).unwrap();
    assert_eq!(p.records, 4, "the restart sent only the new line");
    let ns: Vec<i64> = values(&log).iter().map(|(_, v, _)| v["n"].as_i64().unwrap()).collect();
    let mut sorted = ns.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3, 4]);
}
