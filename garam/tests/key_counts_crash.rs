//! `examples/key_counts.rs` killed with SIGKILL at random moments, at least 20 times, and restarted:
//! the store ends with the true counts; under exactly-once the committed output holds, per key,
//! strictly increasing counts ending at the true count with no duplicate; under at-least-once the
//! counts may exceed the truth but never fall short.
//!
//! Before each run the test tops the input up (`common::kill_until_interrupted`), so that the kills land
//! while the example is counting on a fast machine as on a slow one, and checks afterwards that
//! they did. The store is read twice: from its changelog, and from RocksDB itself through
//! interactive queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use garam::core::backend::TopicPartition;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use rand::{Rng, SeedableRng};

mod common;

const KEYS: u64 = 300;

fn example() -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push("key_counts");
    p
}

fn spawn(dir: &Path, guarantee: &str, exit_when_idle: bool) -> std::process::Child {
    let mut cmd = Command::new(example());
    cmd.args(["--input", "events", "--output", "counts", "--guarantee", guarantee, "--threads", "2", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    if guarantee == "at-least-once" {
        // Its default 1 s would commit seldom before a kill within 500 ms.
        cmd.args(["--commit-interval-ms", "200"]);
    }
    cmd.spawn().expect("examples are built by `cargo test -p garam` (or --workspace)")
}

fn read(log: &Log, topic: &str, read_committed: bool) -> Vec<(String, Vec<u8>)> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed,
            ..Default::default()
        })
        .unwrap();
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(100)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                out.push((
                    String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                    r.value.map(|v| v.to_vec()).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

/// Appends `n` records of random keys to `events`, counting them in `truth`.
fn produce(dir: &Path, n: u64, rng: &mut rand::rngs::SmallRng, truth: &mut BTreeMap<String, u64>) {
    let log = Log::open(dir).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..n {
        let k = format!("key-{}", rng.gen_range(0..KEYS));
        *truth.entry(k.clone()).or_default() += 1;
        p.send("events", garam::core::Record::new(Some(k), Some(format!("{{\"n\":{i}}}")))).unwrap();
    }
    p.flush().unwrap();
    drop(p);
    log.close().unwrap();
}

/// The example's committed input offsets, summed over the partitions of `events`.
fn committed(dir: &Path) -> u64 {
    let log = Log::open(dir).unwrap();
    let done = (0..4)
        .filter_map(|p| log.groups().committed("key-counts", &TopicPartition::new("events", p)))
        .map(|c| c.offset)
        .sum();
    log.close().unwrap();
    done
}

/// The example's store as the example left it, read with interactive queries by an app of the
/// same topology and application id, run in this process on the same directory.
fn store_counts(dir: &Path, guarantee: &str) -> BTreeMap<String, u64> {
    let b = StreamBuilder::new();
    b.stream::<String, bytes::Bytes>("events", Consumed::with(StringSerde, BytesSerde))
        .group_by_key()
        .count(Materialized::named("key-counts").with(StringSerde, U64Serde))
        .to_stream()
        .to("counts", Produced::with(StringSerde, U64Serde));
    let mut config = AppConfig::new("key-counts");
    config.set("processing.guarantee", guarantee).unwrap();
    let mut app = App::new(b.build().unwrap(), config, garam::embedded(dir).unwrap()).unwrap();
    app.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read from where the example left it: checkpointed up to the changelog's end.
    let counts = loop {
        match app.store::<String, u64>("key-counts").and_then(|s| s.all()) {
            Ok(all) if all.len() as u64 == KEYS => break all.into_iter().collect(),
            // Restoring, or tasks not assigned yet.
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("the store never answered for every key: {:?}", other.map(|a| a.len())),
        }
    };
    assert_eq!(app.metrics().restored, 0, "the store needed no restore: it is the example's");
    app.close().unwrap();
    counts
}

/// The tests of this file run one at a time. A child between its fork and its exec holds a copy of
/// every descriptor its parent had open, the lock of a log the other test just opened among them:
/// that log stays locked for the moment, and the test (or its own child) opening it next fails.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(guarantee: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    {
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("events", 4, TopicConfig::default()).unwrap();
        log.create_topic("counts", 4, TopicConfig::default()).unwrap();
        log.close().unwrap();
    }
    let mut input_rng = rand::rngs::SmallRng::seed_from_u64(3);
    // At least 20 kills, 20 of them interrupting a run that had committed progress.
    common::kill_until_interrupted(
        20,
        60,
        500,
        20_000,
        9,
        |n| produce(dir.path(), n, &mut input_rng, &mut truth),
        || spawn(dir.path(), guarantee, false),
        || committed(dir.path()),
    );
    assert!(spawn(dir.path(), guarantee, true).wait().unwrap().success());

    let log = Log::open(dir.path()).unwrap();
    let eos = guarantee == "exactly-once";
    // The store, as its changelog holds it (latest value per key; value = version byte + u64 BE).
    let mut store: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in read(&log, "key-counts-key-counts-changelog", eos) {
        assert_eq!(v[0], 1, "changelog values start with their format version");
        store.insert(k, u64::from_be_bytes(v[1..9].try_into().unwrap()));
    }
    // The output: every update.
    let mut outputs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (k, v) in read(&log, "counts", eos) {
        let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(json["key"], k.as_str());
        outputs.entry(k).or_default().push(json["count"].as_u64().unwrap());
    }
    log.close().unwrap();
    drop(log);
    // The store itself (RocksDB, as the example left it) holds what its changelog holds.
    assert_eq!(store_counts(dir.path(), guarantee), store, "the store and its changelog disagree");
    for (k, n) in &truth {
        let got = store.get(k).copied().unwrap_or(0);
        let outs = outputs.get(k).cloned().unwrap_or_default();
        if eos {
            assert_eq!(got, *n, "store count of {k}");
            assert!(outs.windows(2).all(|w| w[0] < w[1]), "{k}: counts not strictly increasing: {outs:?}");
            assert_eq!(outs.last().copied(), Some(*n), "{k}: last output");
            assert_eq!(outs.len() as u64, *n, "{k}: one output per record, no duplicate");
        } else {
            assert!(got >= *n, "at-least-once: {k} fell short ({got} < {n})");
            assert!(outs.last().copied().unwrap_or(0) >= *n);
        }
    }
}

#[test]
fn key_counts_exactly_once_survives_sigkill() {
    run("exactly-once");
}

#[test]
fn key_counts_at_least_once_never_falls_short() {
    run("at-least-once");
}
