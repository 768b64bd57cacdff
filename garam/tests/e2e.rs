//! End to end on the embedded log: the runtime with threads, a consumer group, and commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use garam::core::backend::Backend;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;

fn produce(log: &Log, topic: &str, from: u64, to: u64) {
    let mut p = log.producer(Default::default()).unwrap();
    for i in from..to {
        let key = format!("k{}", i % 97);
        p.send(topic, garam::core::Record::new(Some(key), Some(i.to_string())).with_timestamp(i as i64)).unwrap();
    }
    p.flush().unwrap();
}

/// Every record of a topic: (partition, key, value) in offset order per partition.
fn read_all(log: &Log, topic: &str) -> Vec<(u32, String, String)> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            ..Default::default()
        })
        .unwrap();
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(50)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                let s = |b: Option<bytes::Bytes>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                out.push((part.tp.partition, s(r.key), s(r.value)));
            }
        }
    }
    out
}

fn pipeline(input: &str, output: &str) -> garam::core::topology::Topology {
    let b = StreamBuilder::new();
    b.stream::<String, u64>(input, Consumed::with(StringSerde, JsonSerde::new()))
        .filter(|_, v| v % 3 != 0)
        .map_values(|v| v * 2)
        .to(output, Produced::with(StringSerde, JsonSerde::new()));
    b.build().unwrap()
}

fn expected(n: u64) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in (0..n).filter(|i| i % 3 != 0) {
        m.entry(format!("k{}", i % 97)).or_default().push((i * 2).to_string());
    }
    m
}

#[test]
fn two_threads_many_partitions_output_equals_transformed_input() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 8, TopicConfig::default()).unwrap();
    log.create_topic("out", 8, TopicConfig::default()).unwrap();
    produce(&log, "in", 0, 20_000);
    let mut config = AppConfig::new("e2e");
    config.num_threads = 2;
    config.commit_interval = Duration::from_millis(50);
    let mut app = App::new(pipeline("in", "out"), config, Arc::new(log.clone())).unwrap();
    app.run_until_idle(Duration::from_millis(300)).unwrap();
    let m = app.metrics();
    assert_eq!(m.records_in, 20_000);
    assert_eq!(m.records_out, expected(20_000).values().map(Vec::len).sum::<usize>() as u64);

    // As a multiset, and in input order per key (a key lives in one partition).
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, k, v) in read_all(&log, "out") {
        got.entry(k).or_default().push(v);
    }
    assert_eq!(got, expected(20_000));
    // Everything was committed on close.
    for (p, committed, end) in log.group_offsets("e2e", "in").unwrap() {
        assert_eq!(committed, Some(end), "partition {p}");
    }
}

#[test]
fn instances_joining_and_leaving_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 6, TopicConfig::default()).unwrap();
    log.create_topic("out", 6, TopicConfig::default()).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(log.clone());
    let app = |threads: usize| {
        let mut c = AppConfig::new("churn");
        c.num_threads = threads;
        c.commit_interval = Duration::from_millis(30);
        App::new(pipeline("in", "out"), c, backend.clone()).unwrap()
    };
    let total = 30_000;
    let mut first = app(1);
    first.start().unwrap();
    produce(&log, "in", 0, 10_000);
    let mut second = app(2);
    second.start().unwrap();
    produce(&log, "in", 10_000, 20_000);
    std::thread::sleep(Duration::from_millis(100));
    first.close().unwrap(); // leaves mid-stream
    let mut third = app(1);
    third.start().unwrap();
    produce(&log, "in", 20_000, total);
    std::thread::sleep(Duration::from_millis(100));
    second.close().unwrap();
    third.run_until_idle(Duration::from_millis(300)).unwrap();

    // At-least-once: every expected record is there; repeats are allowed, losses are not.
    let got: BTreeSet<(String, String)> = read_all(&log, "out").into_iter().map(|(_, k, v)| (k, v)).collect();
    for (k, vs) in expected(total) {
        for v in vs {
            assert!(got.contains(&(k.clone(), v.clone())), "lost {k}={v}");
        }
    }
    for (p, committed, end) in log.group_offsets("churn", "in").unwrap() {
        assert_eq!(committed, Some(end), "partition {p}");
    }
}

#[test]
fn dead_letter_topic_on_the_log_holds_the_original_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    p.send("in", garam::core::Record::new(Some("a"), Some("1"))).unwrap();
    p.send("in", garam::core::Record::new(Some("b"), Some("{broken"))).unwrap();
    p.send("in", garam::core::Record::new(Some("c"), Some("5"))).unwrap();
    p.flush().unwrap();
    let mut config = AppConfig::new("dlq-app");
    config.set("deserialization.error.handler", "dead-letter").unwrap();
    let mut app = App::new(pipeline("in", "out"), config, Arc::new(log.clone())).unwrap();
    app.run_until_idle(Duration::from_millis(200)).unwrap();
    assert_eq!(app.metrics().dead_lettered, 1);
    let dlq = read_all(&log, "dlq-app-dlq");
    assert_eq!(dlq, vec![(0, "b".to_string(), "{broken".to_string())]);
    let mut out: Vec<String> = read_all(&log, "out").into_iter().map(|r| r.2).collect();
    out.sort();
    assert_eq!(out, vec!["10", "2"]);
}

#[test]
fn a_failing_worker_stops_the_app_with_the_record_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    p.send("in", garam::core::Record::new(Some("a"), Some("1"))).unwrap();
    p.send("in", garam::core::Record::new(Some("a"), Some("nope"))).unwrap();
    p.send("in", garam::core::Record::new(Some("a"), Some("2"))).unwrap();
    p.flush().unwrap();
    let mut app = App::new(pipeline("in", "out"), AppConfig::new("failing"), Arc::new(log.clone())).unwrap();
    let err = app.run_until_shutdown().unwrap_err().to_string();
    assert!(err.contains("in-0 at offset 1"), "{err}");
    assert_eq!(app.status(), garam::core::runtime::AppStatus::Failed);
    // Nothing past the failure was committed: a restart reads the bad record (and the rest) again.
    let committed = log.groups().committed("failing", &garam::core::backend::TopicPartition::new("in", 0));
    assert!(committed.as_ref().is_none_or(|c| c.offset <= 1), "{committed:?}");
}

#[test]
fn missing_source_topics_and_copartitioning_fail_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    let mut app = App::new(pipeline("absent", "out"), AppConfig::new("x"), Arc::new(log.clone())).unwrap();
    assert!(app.start().unwrap_err().to_string().contains("'absent' does not exist"));
    log.create_topic("l", 2, TopicConfig::default()).unwrap();
    log.create_topic("r", 3, TopicConfig::default()).unwrap();
    let b = StreamBuilder::new();
    b.stream_from_topics::<String, String>(&["l", "r"], Consumed::with(StringSerde, StringSerde))
        .to("out", Produced::with(StringSerde, StringSerde));
    let mut app = App::new(b.build().unwrap(), AppConfig::new("y"), Arc::new(log.clone())).unwrap();
    let e = app.start().unwrap_err().to_string();
    assert!(e.contains("l (2 partitions)") && e.contains("r (3 partitions)"), "{e}");
}

#[test]
fn repartition_topics_are_created_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 4, TopicConfig::default()).unwrap();
    log.create_topic("out", 4, TopicConfig::default()).unwrap();
    produce(&log, "in", 0, 2000);
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .group_by(
            |_, v| (v.parse::<u64>().unwrap() % 10).to_string(),
            Grouped::named("by-digit").with(StringSerde, StringSerde),
        )
        .stream()
        .to("out", Produced::with(StringSerde, StringSerde));
    let mut config = AppConfig::new("rp");
    config.num_threads = 2;
    let mut app = App::new(b.build().unwrap(), config, Arc::new(log.clone())).unwrap();
    app.run_until_idle(Duration::from_millis(300)).unwrap();
    assert_eq!(log.partition_count("rp-by-digit-repartition"), Some(4));
    let out = read_all(&log, "out");
    assert_eq!(out.len(), 2000);
    // Every key now lives in exactly one output partition.
    let mut where_: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (p, k, v) in &out {
        assert_eq!(k, &(v.parse::<u64>().unwrap() % 10).to_string());
        where_.entry(k.clone()).or_default().insert(*p);
    }
    assert!(where_.values().all(|s| s.len() == 1));
}

#[test]
fn exactly_once_outputs_are_committed_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 4, TopicConfig::default()).unwrap();
    log.create_topic("out", 4, TopicConfig::default()).unwrap();
    produce(&log, "in", 0, 5000);
    let mut config = AppConfig::new("eos");
    config.set("processing.guarantee", "exactly_once_v2").unwrap();
    config.num_threads = 2;
    config.commit_interval = Duration::from_millis(50);
    let mut app = App::new(pipeline("in", "out"), config, Arc::new(log.clone())).unwrap();
    app.run_until_idle(Duration::from_millis(300)).unwrap();
    // Read committed: exactly the transformed input, no duplicate.
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec!["out".into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: true,
            ..Default::default()
        })
        .unwrap();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let polled = c.poll(Duration::from_millis(50)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                let s = |b: Option<bytes::Bytes>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                got.entry(s(r.key)).or_default().push(s(r.value));
            }
        }
    }
    assert_eq!(got, expected(5000));
    for (p, committed, end) in log.group_offsets("eos", "in").unwrap() {
        assert_eq!(committed, Some(end), "partition {p}");
    }
    for p in 0..4 {
        let part = log.partition("out", p).unwrap();
        assert_eq!(part.last_stable_offset(), part.high_watermark(), "no transaction left open");
    }
}

#[test]
fn a_panicking_processor_fails_the_app_without_committing_past_it() {
    for guarantee in ["at_least_once", "exactly_once_v2"] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("in", 1, TopicConfig::default()).unwrap();
        log.create_topic("out", 1, TopicConfig::default()).unwrap();
        produce(&log, "in", 0, 100);
        let b = StreamBuilder::new();
        b.stream::<String, u64>("in", Consumed::with(StringSerde, JsonSerde::new()))
            .map_values(|v| if v == 50 { panic!("boom at 50") } else { v })
            .to("out", Produced::with(StringSerde, JsonSerde::new()));
        let mut config = AppConfig::new("panics");
        config.set("processing.guarantee", guarantee).unwrap();
        let mut app = App::new(b.build().unwrap(), config, Arc::new(log.clone())).unwrap();
        let err = app.run_until_shutdown().unwrap_err().to_string();
        assert!(err.contains("boom at 50"), "{err}");
        let committed = log.groups().committed("panics", &garam::core::backend::TopicPartition::new("in", 0));
        assert!(
            committed.as_ref().is_none_or(|c| c.offset <= 50),
            "{guarantee}: committed past the panic: {committed:?}"
        );
    }
}
