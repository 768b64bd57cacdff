//! `examples/key_counts.rs` killed with SIGKILL at random moments, at least 20 times, and restarted:
//! the store ends with the true counts; under exactly-once the committed output holds, per key,
//! strictly increasing counts ending at the true count with no duplicate; under at-least-once the
//! counts may exceed the truth but never fall short.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use rand::{Rng, SeedableRng};

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

fn run(guarantee: &str) {
    let dir = tempfile::tempdir().unwrap();
    let total = 60_000u64;
    let mut truth: BTreeMap<String, u64> = BTreeMap::new();
    {
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("events", 4, TopicConfig::default()).unwrap();
        log.create_topic("counts", 4, TopicConfig::default()).unwrap();
        let mut p = log.producer(Default::default()).unwrap();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        for i in 0..total {
            let k = format!("key-{}", rng.gen_range(0..KEYS));
            *truth.entry(k.clone()).or_default() += 1;
            p.send("events", garam::core::Record::new(Some(k), Some(format!("{{\"n\":{i}}}")))).unwrap();
        }
        p.flush().unwrap();
        drop(p);
        log.close().unwrap();
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    for _ in 0..20 {
        let mut child = spawn(dir.path(), guarantee, false);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
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
