//! The `garam` binary end to end.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn garam(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_garam"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn garam");
    {
        let mut i = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("garam output")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn one_line_error(o: &Output, needle: &str) {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].contains(needle), "{err}");
}

#[test]
fn produce_then_consume_json() {
    let d = tempfile::tempdir().unwrap();
    ok(&garam(d.path(), &["topics", "create", "clicks", "--partitions", "3"], None));
    let input = "{\"user\":\"u1\",\"ts\":1000,\"v\":1}\n{\"user\":\"u2\",\"ts\":2000,\"v\":2}\n{\"user\":\"u1\",\"ts\":3000,\"v\":3}\n";
    ok(&garam(d.path(), &["produce", "clicks", "--key-field", "user", "--timestamp-field", "ts"], Some(input)));
    let out = ok(&garam(d.path(), &["consume", "clicks", "--from-beginning", "--exit-at-end", "--group", "g"], None));
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let first = out.lines().next().unwrap();
    let keys: Vec<&str> =
        ["\"topic\"", "\"partition\"", "\"offset\"", "\"timestamp\"", "\"key\"", "\"value\"", "\"headers\""].to_vec();
    let positions: Vec<usize> = keys.iter().map(|k| first.find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {first}");
    let u1: Vec<&serde_json::Value> = rows.iter().filter(|r| r["key"] == "u1").collect();
    assert_eq!(u1.len(), 2);
    assert_eq!(u1[0]["partition"], u1[1]["partition"], "same key, same partition");
    let mut ts: Vec<i64> = rows.iter().map(|r| r["timestamp"].as_i64().unwrap()).collect();
    ts.sort();
    assert_eq!(ts, vec![1000, 2000, 3000]);
    // The group committed everything: describe shows zero lag, and a second run prints nothing.
    let desc = ok(&garam(d.path(), &["groups", "describe", "g"], None));
    assert!(desc.contains("clicks"), "{desc}");
    assert!(desc.lines().filter(|l| l.starts_with("clicks")).all(|l| l.trim_end().ends_with(" 0")), "{desc}");
    let again = ok(&garam(d.path(), &["consume", "clicks", "--from-beginning", "--exit-at-end", "--group", "g"], None));
    assert!(again.is_empty());
    // Reset and read again.
    ok(&garam(d.path(), &["groups", "reset-offsets", "g", "--topic", "clicks", "--to-earliest"], None));
    let out = ok(&garam(
        d.path(),
        &["consume", "clicks", "--exit-at-end", "--group", "g", "--format", "value", "--max", "2"],
        None,
    ));
    assert_eq!(out.lines().count(), 2);
}

#[test]
fn binary_values_are_base64_with_a_marker() {
    let d = tempfile::tempdir().unwrap();
    {
        let log = garam_log::Log::open(d.path()).unwrap();
        log.create_topic("b", 1, Default::default()).unwrap();
        let mut p = log.producer(Default::default()).unwrap();
        let mut r = garam_core::Record::new(Some(vec![0xffu8, 0xfe]), Some(b"text".to_vec()));
        r.headers.push(garam_core::Header::new("h", "hv"));
        p.send("b", r).unwrap();
        p.flush().unwrap();
        log.close().unwrap();
    }
    let out = ok(&garam(d.path(), &["consume", "b", "--from-beginning", "--exit-at-end"], None));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["key"], "//4=");
    assert_eq!(v["key_encoding"], "base64");
    assert_eq!(v["value"], "text");
    assert!(v.get("value_encoding").is_none());
    assert_eq!(v["headers"][0]["key"], "h");
    assert_eq!(v["headers"][0]["value"], "hv");
}

#[test]
fn topic_admin() {
    let d = tempfile::tempdir().unwrap();
    ok(&garam(d.path(), &["topics", "create", "t", "--partitions", "2", "--config", "cleanup.policy=compact"], None));
    ok(&garam(d.path(), &["topics", "alter", "t", "--partitions", "4", "--config", "retention.ms=1000"], None));
    let desc = ok(&garam(d.path(), &["topics", "describe", "t"], None));
    assert!(desc.contains("PartitionCount: 4"), "{desc}");
    assert!(desc.contains("cleanup.policy=compact") && desc.contains("retention.ms=1000"), "{desc}");
    assert_eq!(ok(&garam(d.path(), &["topics", "list"], None)).trim(), "t");
    ok(&garam(d.path(), &["topics", "delete", "t"], None));
    assert_eq!(ok(&garam(d.path(), &["topics", "list"], None)).trim(), "");
}

#[test]
fn errors_are_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    one_line_error(&garam(d.path(), &["consume", "nope"], None), "unknown topic 'nope'");
    one_line_error(&garam(d.path(), &["topics", "create", "a/b"], None), "invalid topic name 'a/b'");
    one_line_error(&garam(d.path(), &["topics", "create", "a", "--partitions", "0"], None), "partition count");
    one_line_error(
        &garam(d.path(), &["topics", "create", "a", "--config", "retention.ms=soon"], None),
        "retention.ms=soon",
    );
    ok(&garam(d.path(), &["topics", "create", "a", "--partitions", "2"], None));
    one_line_error(&garam(d.path(), &["topics", "alter", "a", "--partitions", "1"], None), "can only grow");
    one_line_error(&garam(d.path(), &["produce", "a", "--partition", "9"], Some("x\n")), "no partition 9");
    one_line_error(&garam(d.path(), &["produce", "a", "--key-field", "k"], Some("not json\n")), "line 1");
    // A locked data dir names the holder.
    let held = garam_log::Log::open(d.path()).unwrap();
    one_line_error(&garam(d.path(), &["topics", "list"], None), &std::process::id().to_string());
    drop(held);
}

#[test]
fn corrupt_segment_is_reported_with_file_and_offset() {
    let d = tempfile::tempdir().unwrap();
    ok(&garam(d.path(), &["topics", "create", "c"], None));
    let lines: String = (0..50).map(|i| format!("value-{i}\n")).collect();
    // Many small appends so the segment holds many batches.
    for chunk in lines.lines().collect::<Vec<_>>().chunks(5) {
        ok(&garam(d.path(), &["produce", "c"], Some(&(chunk.join("\n") + "\n"))));
    }
    let seg = d.path().join("topics/c/0/00000000000000000000.log");
    let mut raw = std::fs::read(&seg).unwrap();
    raw[150] ^= 0x55;
    std::fs::write(&seg, raw).unwrap();
    let out = garam(d.path(), &["consume", "c", "--from-beginning", "--exit-at-end"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CRC") || err.contains("corrupt"), "{err}");
}

#[test]
fn apps_describe_shows_members_tasks_and_lag() {
    use garam::prelude::*;
    let d = tempfile::tempdir().unwrap();
    let log = garam_log::Log::open(d.path()).unwrap();
    log.create_topic("in", 4, Default::default()).unwrap();
    log.create_topic("out", 4, Default::default()).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..100 {
        p.send("in", garam_core::Record::new(Some(format!("k{i}")), Some("v"))).unwrap();
    }
    p.flush().unwrap();
    drop(p);
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .to("out", Produced::with(StringSerde, StringSerde));
    let mut config = AppConfig::new("described");
    config.num_threads = 2;
    let mut app = App::new(b.build().unwrap(), config, std::sync::Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    // Wait until the status file shows both members with their tasks.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        // Until the app writes its first status file, `describe` falls back to opening the log,
        // which this process holds: that attempt fails, so retry rather than assert on it.
        let o = garam(d.path(), &["apps", "describe", "described"], None);
        if !o.status.success() && std::time::Instant::now() <= deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        let out = ok(&o);
        if out.matches("Member:").count() == 2 && out.contains("in-3") || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(out.contains("Status: Running"), "{out}");
    assert_eq!(out.matches("Member:").count(), 2, "{out}");
    assert!(out.contains("Tasks: 0_"), "{out}");
    assert!(out.contains("in-0") && out.contains("in-3"), "lag per partition: {out}");
    app.close().unwrap();
    let out = ok(&garam(d.path(), &["apps", "describe", "described"], None));
    assert!(out.contains("Status: Stopped"), "{out}");
    drop(app);
    drop(log);
    // Without a status file, committed offsets and lag come from the log.
    std::fs::remove_dir_all(d.path().join("apps")).unwrap();
    let out = ok(&garam(d.path(), &["apps", "describe", "described"], None));
    assert!(out.contains("not running") && out.contains("in "), "{out}");
    one_line_error(&garam(d.path(), &["apps", "describe", "nobody"], None), "unknown application 'nobody'");
}

#[test]
fn consume_isolation_levels() {
    let d = tempfile::tempdir().unwrap();
    {
        let log = garam_log::Log::open(d.path()).unwrap();
        log.create_topic("t", 1, Default::default()).unwrap();
        let mut p = log
            .transactional_producer("x", garam_log::producer::ProducerConfig { batch_size: 1, ..Default::default() })
            .unwrap();
        p.begin_transaction().unwrap();
        p.send_raw("t", Some(0), None, Some(b"aborted"), 0, &[]).unwrap();
        p.abort_transaction().unwrap();
        p.begin_transaction().unwrap();
        p.send_raw("t", Some(0), None, Some(b"committed"), 0, &[]).unwrap();
        p.commit_transaction(None, &[]).unwrap();
        log.close().unwrap();
    }
    let committed =
        ok(&garam(d.path(), &["consume", "t", "--from-beginning", "--exit-at-end", "--format", "value"], None));
    assert_eq!(committed.lines().collect::<Vec<_>>(), vec!["committed"]);
    let all = ok(&garam(
        d.path(),
        &[
            "consume",
            "t",
            "--from-beginning",
            "--exit-at-end",
            "--format",
            "value",
            "--isolation-level",
            "read_uncommitted",
        ],
        None,
    ));
    assert_eq!(all.lines().collect::<Vec<_>>(), vec!["aborted", "committed"]);
}

#[test]
fn gen_writes_the_click_analytics_input_deterministically() {
    let read = |seed: &str| {
        let d = tempfile::tempdir().unwrap();
        ok(&garam(d.path(), &["gen", "ads"], None));
        ok(&garam(
            d.path(),
            &["gen", "clicks", "--events", "2000", "--seed", seed, "--out-of-order-ms", "100", "--users", "50"],
            None,
        ));
        let ads = ok(&garam(d.path(), &["consume", "ads", "--from-beginning", "--exit-at-end"], None));
        let clicks = ok(&garam(d.path(), &["consume", "clicks", "--from-beginning", "--exit-at-end"], None));
        let parse =
            |out: &str| -> Vec<serde_json::Value> { out.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
        (parse(&ads), parse(&clicks))
    };
    let (ads, clicks) = read("7");
    assert_eq!(ads.len(), 1000);
    let ad: serde_json::Value = serde_json::from_str(ads[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(ads[0]["key"], ad["ad_id"]);
    assert!(ad["campaign_id"].as_str().unwrap().starts_with("campaign-"));
    assert_eq!(clicks.len(), 2000);
    for c in &clicks {
        let e: serde_json::Value = serde_json::from_str(c["value"].as_str().unwrap()).unwrap();
        let fields: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, ["user_id", "page_id", "ad_id", "ad_type", "event_type", "event_time", "ip_address"]);
        assert_eq!(c["key"], e["user_id"], "keyed by user_id");
        assert_eq!(c["timestamp"], e["event_time"]);
        assert!(["view", "click", "purchase"].contains(&e["event_type"].as_str().unwrap()));
    }
    let values = |v: &[serde_json::Value]| {
        let mut s: Vec<String> = v.iter().map(|c| c["value"].as_str().unwrap().to_string()).collect();
        s.sort();
        s
    };
    assert_eq!(values(&clicks), values(&read("7").1), "the same seed gives the same events");
    assert_ne!(values(&clicks), values(&read("8").1));
}

#[test]
fn demo_clicks_runs_the_application_with_results_in_topics_and_parquet() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("out");
    let out = ok(&garam(
        d.path(),
        &["demo", "clicks", "--rate", "3000", "--duration", "14", "--out-dir", out_dir.to_str().unwrap()],
        None,
    ));
    let results = |topic: &str| -> u64 {
        let line = out.lines().find(|l| l.trim_start().starts_with(topic)).unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!(results("campaign-views-10s") > 0, "a 10 s window closed within 14 s: {out}");
    let files: usize = out
        .lines()
        .find(|l| l.starts_with("Parquet files"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(files > 0, "the final commit published Parquet files: {out}");
    let views = ok(&garam(d.path(), &["consume", "campaign-views-10s", "--from-beginning", "--exit-at-end"], None));
    let first: serde_json::Value = serde_json::from_str(views.lines().next().unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(first["value"].as_str().unwrap()).unwrap();
    assert_eq!(v["window_end"].as_i64().unwrap() - v["window_start"].as_i64().unwrap(), 10_000);
    assert!(v["views"].as_u64().unwrap() > 0);
}

#[test]
fn bench_clicks_reads_events_and_ads_from_files() {
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("events.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&events).unwrap());
    let config = garam::clicks::ClickConfig { events_per_second: 1000, ..Default::default() };
    for e in garam::clicks::ClickGenerator::new(config).take(30_000) {
        serde_json::to_writer(&mut f, &e).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let ads = d.path().join("ads.csv");
    let mut csv = String::from("ad_id,campaign_id\n");
    for ad in garam::clicks::ads() {
        csv.push_str(&format!("{},{}\n", ad.ad_id, ad.campaign_id));
    }
    std::fs::write(&ads, csv).unwrap();
    let bench_dir = d.path().join("bench");
    let out = ok(&garam(
        d.path(),
        &[
            "bench",
            "clicks",
            "--input",
            events.to_str().unwrap(),
            "--ads",
            ads.to_str().unwrap(),
            "--dir",
            bench_dir.to_str().unwrap(),
            "--partitions",
            "4",
        ],
        None,
    ));
    assert!(out.contains("loaded 1000 ads") && out.contains("loaded 30000 events"), "{out}");
    let line = out.lines().find(|l| l.starts_with("clicks (YSB")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("30000 events") && line.contains("events/s") && line.contains("CPU s"), "{line}");
    // 30 s of event time: 3 or 4 ten-second windows for each of the 100 campaigns.
    let results: u64 = line.split(" results").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!((300..=400).contains(&results), "{line}");
    assert!(out.contains("peak memory"), "{out}");
}

/// A single guarantee runs the count and then the restore of its stores, in a process of its
/// own, into an empty state directory: every key's changelog record is read back.
#[test]
fn bench_count_restores_what_it_counted() {
    let d = tempfile::tempdir().unwrap();
    let bench_dir = d.path().join("bench");
    let args = ["bench", "count", "--records", "3000", "--keys", "100", "--partitions", "2", "--threads", "1"];
    let rest = ["--guarantee", "exactly-once", "--dir", bench_dir.to_str().unwrap()];
    let out = ok(&garam(d.path(), &[&args[..], &rest[..]].concat(), None));
    assert!(out.lines().any(|l| l.contains("count: 3000 records")), "{out}");
    let restore = out.lines().find(|l| l.starts_with("restore: ")).unwrap_or_else(|| panic!("a restore line: {out}"));
    let restored: u64 = restore["restore: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!((100..=3000).contains(&restored), "at least one record per key, at most one per input record: {restore}");
    assert!(restore.contains("records/s"), "{restore}");
    assert!(out.lines().any(|l| l.starts_with("peak memory: ") && l.contains("restoring")), "{out}");
}

#[test]
fn bench_count_compares_the_guarantees_in_alternating_rounds() {
    let d = tempfile::tempdir().unwrap();
    let bench_dir = d.path().join("bench");
    let args = ["bench", "count", "--records", "3000", "--keys", "100", "--partitions", "2", "--threads", "1"];
    let rest = ["--guarantee", "both", "--rounds", "2", "--dir", bench_dir.to_str().unwrap()];
    let out = ok(&garam(d.path(), &[&args[..], &rest[..]].concat(), None));
    let counts: Vec<&str> = out.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(counts.len(), 4, "{out}");
    // The order turns round every other round.
    for (line, guarantee) in counts.iter().zip(["exactly-once", "at-least-once", "at-least-once", "exactly-once"]) {
        assert!(line.contains(&format!("{guarantee}: ")) && line.contains("count: 3000 records"), "{line}");
    }
    let summary = out.lines().last().unwrap();
    assert!(summary.starts_with("exactly-once against at-least-once, 2 alternating round(s)"), "{out}");
    assert!(summary.contains("exactly-once costs"), "{summary}");
    assert!(!bench_dir.exists(), "the counts clean up after themselves");
}
