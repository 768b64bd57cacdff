//! State across members: a task moves to another member, restores its store, and counts on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;

fn topology(in_memory: bool) -> garam::core::topology::Topology {
    let b = StreamBuilder::new();
    let m = Materialized::named("counts").with(StringSerde, U64Serde);
    let m = if in_memory { m.in_memory() } else { m };
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .count(m)
        .to_stream()
        .to("out", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}

fn produce(log: &Log, from: u64, to: u64) {
    let mut p = log.producer(Default::default()).unwrap();
    for i in from..to {
        p.send("in", garam::core::Record::new(Some(format!("k{}", i % 50)), Some("x"))).unwrap();
    }
    p.flush().unwrap();
}

fn latest_counts(log: &Log, eos: bool) -> BTreeMap<String, u64> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec!["out".into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: eos,
            ..Default::default()
        })
        .unwrap();
    let mut m = BTreeMap::new();
    loop {
        let polled = c.poll(Duration::from_millis(50)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                let k = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
                m.insert(k, u64::from_be_bytes(r.value.unwrap()[..8].try_into().unwrap()));
            }
        }
    }
    m
}

#[test]
fn a_task_moves_restores_and_counts_on() {
    for (in_memory, eos) in [(false, false), (true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("in", 3, TopicConfig::default()).unwrap();
        log.create_topic("out", 3, TopicConfig::default()).unwrap();
        let make = |state: &str| {
            let mut c = AppConfig::new("counter");
            c.num_threads = 1;
            c.commit_interval = Duration::from_millis(20);
            c.state_dir = Some(dir.path().join(state));
            if eos {
                c.set("processing.guarantee", "exactly_once_v2").unwrap();
            }
            App::new(topology(in_memory), c, Arc::new(log.clone())).unwrap()
        };
        produce(&log, 0, 3000);
        let mut first = make("member-a");
        first.run_until_idle(Duration::from_millis(200)).unwrap();
        produce(&log, 3000, 6000);
        // Another member, with an empty state dir: it must restore every store from its changelog.
        let mut second = make("member-b");
        let restored = Arc::new(Mutex::new(0u64));
        let r2 = restored.clone();
        second.set_restore_listener(move |p| {
            if p.done {
                *r2.lock().unwrap() += p.restored;
            }
        });
        second.run_until_idle(Duration::from_millis(200)).unwrap();
        assert!(*restored.lock().unwrap() > 0, "the second member restored from the changelog");
        let counts = latest_counts(&log, eos);
        assert_eq!(counts.len(), 50);
        assert!(counts.values().all(|n| *n == 120), "in_memory={in_memory} eos={eos}: {counts:?}");
        drop(first);
        drop(second);
    }
}
