//! Exactly-once across SIGKILL: an application is killed at random moments and restarted; in the
//! end the committed output is exactly the transformed input — nothing missing, nothing twice.
//! The input is topped up before each start (`common::kill_until_interrupted`), so the kills land while
//! it works.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use garam::core::backend::Backend;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};

mod common;

fn example(name: &str) -> PathBuf {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(name);
    p
}

fn run(dir: &std::path::Path, exit_when_idle: bool) -> std::process::Child {
    let mut cmd = Command::new(example("uppercase"));
    cmd.args(["--input", "words", "--output", "shouts", "--guarantee", "exactly-once", "--threads", "2", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    cmd.spawn().expect("the uppercase example is built by `cargo test -p garam` (or --workspace)")
}

#[test]
fn exactly_once_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("words", 4, TopicConfig::default()).unwrap();
        log.create_topic("shouts", 4, TopicConfig::default()).unwrap();
        log.close().unwrap();
    }
    let mut total = 0u64;
    let produce = |n: u64| {
        let log = Log::open(dir.path()).unwrap();
        let mut p = log.producer(Default::default()).unwrap();
        for i in total..total + n {
            p.send("words", garam::core::Record::new(Some(format!("k{}", i % 1000)), Some(format!("w{i}")))).unwrap();
        }
        p.flush().unwrap();
        drop(p);
        log.close().unwrap();
        total += n;
    };
    let committed = || {
        let log = Log::open(dir.path()).unwrap();
        let done = log.group_offsets("uppercase", "words").unwrap().iter().filter_map(|(_, c, _)| *c).sum();
        log.close().unwrap();
        done
    };
    let kills = common::kill_until_interrupted(12, 40, 600, 100_000, 5, produce, || run(dir.path(), false), committed);
    let total = kills.input;
    let status = run(dir.path(), true).wait().unwrap();
    assert!(status.success());

    let log = Log::open(dir.path()).unwrap();
    for (p, committed, end) in log.group_offsets("uppercase", "words").unwrap() {
        assert_eq!(committed, Some(end), "partition {p} fully consumed");
    }
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec!["shouts".into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: true,
            ..Default::default()
        })
        .unwrap();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        let polled = c.poll(Duration::from_millis(100)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                *seen.entry(String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap()).or_default() += 1;
            }
        }
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dupes.is_empty(), "duplicates under exactly-once: {dupes:?}");
    assert_eq!(seen.len() as u64, total, "every input record appears once");
    assert!((0..total).all(|i| seen.contains_key(&format!("W{i}"))));
}
