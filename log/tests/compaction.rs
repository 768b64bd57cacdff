//! Compaction against a model: a compacted topic read from the start yields exactly the latest value
//! of every key not deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use garam_core::Record;
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::{Log, LogOptions, TopicConfig};
use proptest::prelude::*;

fn read_all(log: &Log) -> Vec<(u64, Vec<u8>, Option<Vec<u8>>)> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec!["c".into()],
            auto_offset_reset: OffsetReset::Earliest,
            ..Default::default()
        })
        .unwrap();
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(10)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                out.push((r.offset, r.key.unwrap().to_vec(), r.value.map(|v| v.to_vec())));
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    Roll,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (0u8..20, any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..20).prop_map(Op::Delete),
            1 => Just(Op::Roll),
        ],
        1..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn compacted_topic_matches_the_model(ops in ops(), tombstones_expired in any::<bool>(), reopen in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
        let mut c = TopicConfig::default();
        c.set("cleanup.policy", "compact").unwrap();
        c.set("segment.bytes", "512").unwrap();
        log.create_topic("c", 1, c).unwrap();
        let mut producer = log.producer(Default::default()).unwrap();
        let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let ts = 1_000_000;
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    let (k, v) = (vec![b'k', *k], v.to_be_bytes().to_vec());
                    producer.send("c", Record::new(Some(k.clone()), Some(v.clone())).with_timestamp(ts)).unwrap();
                    model.insert(k, Some(v));
                }
                Op::Delete(k) => {
                    let k = vec![b'k', *k];
                    producer.send("c", Record { key: Some(k.clone().into()), value: None, timestamp: Some(ts), headers: vec![] }).unwrap();
                    model.insert(k, None);
                }
                Op::Roll => {
                    producer.flush().unwrap();
                    log.partition("c", 0).unwrap().roll().unwrap();
                }
            }
        }
        producer.flush().unwrap();
        drop(producer);
        let before = read_all(&log);
        // The first cleaning stamps tombstones with a delete horizon of now + delete.retention.ms;
        // only a cleaning after that horizon removes them.
        let now = ts + 1;
        log.run_cleaner(now).unwrap();
        log.run_cleaner(now).unwrap(); // idempotent
        if tombstones_expired {
            log.run_cleaner(now + 86_400_001).unwrap();
        }
        if reopen {
            log.close().unwrap();
            drop(log);
            log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
        }
        let after = read_all(&log);
        // Offsets still increase, and every surviving record is one that was written.
        prop_assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
        prop_assert!(after.iter().all(|r| before.contains(r)));
        // Replaying the compacted log gives the model.
        let mut replay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (_, k, v) in &after {
            replay.insert(k.clone(), v.clone());
        }
        let live = |m: &BTreeMap<Vec<u8>, Option<Vec<u8>>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            m.iter().filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v))).collect()
        };
        prop_assert_eq!(live(&replay), live(&model));
        // In the cleaned part (every closed segment) each key appears only as its latest write, and
        // expired tombstones are gone; only the active segment may hold superseded records.
        let active_base = *log.partition("c", 0).unwrap().segment_base_offsets().last().unwrap();
        let latest: BTreeMap<&Vec<u8>, u64> = before.iter().map(|(o, k, _)| (k, *o)).collect();
        for (o, k, v) in after.iter().filter(|r| r.0 < active_base) {
            prop_assert_eq!(latest.get(k), Some(o), "superseded record for {:?} at {} in a cleaned segment", k, o);
            if tombstones_expired {
                prop_assert!(v.is_some(), "expired tombstone for {:?} survived at {}", k, o);
            }
        }
        if !tombstones_expired {
            // Unexpired tombstones of deleted keys are kept so readers learn of the delete.
            for (k, v) in &model {
                if v.is_none() {
                    prop_assert!(after.iter().any(|(_, ak, av)| ak == k && av.is_none()), "tombstone for {:?} lost", k);
                }
            }
        }
    }
}

#[test]
fn an_old_tombstone_survives_the_first_cleaning_for_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
    let mut c = TopicConfig::default();
    c.set("cleanup.policy", "compact").unwrap();
    c.set("delete.retention.ms", "1000").unwrap();
    log.create_topic("c", 1, c).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    p.send("c", Record::new(Some("k"), Some("v")).with_timestamp(0)).unwrap();
    p.send("c", Record { key: Some("k".into()), value: None, timestamp: Some(0), headers: vec![] }).unwrap();
    p.flush().unwrap();
    log.partition("c", 0).unwrap().roll().unwrap();
    let now = 1_700_000_000_000;
    log.run_cleaner(now).unwrap();
    let after_first: Vec<_> = read_all(&log);
    assert_eq!(after_first, vec![(1, b"k".to_vec(), None)], "the value is gone, the tombstone stays");
    log.run_cleaner(now + 999).unwrap();
    assert_eq!(read_all(&log).len(), 1, "still inside the delete horizon");
    log.run_cleaner(now + 1000).unwrap();
    assert!(read_all(&log).is_empty(), "removed once the horizon has passed");
}

#[test]
fn the_resume_floor_moves_past_a_removed_tombstone_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = || LogOptions { background: false, ..Default::default() };
    let log = Log::open_with(dir.path(), options()).unwrap();
    let mut c = TopicConfig::default();
    c.set("cleanup.policy", "compact").unwrap();
    c.set("delete.retention.ms", "1000").unwrap();
    log.create_topic("c", 1, c).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    let tombstone = |k: &'static str| Record { key: Some(k.into()), value: None, timestamp: Some(0), headers: vec![] };
    // 0: a=1, 1: b=1, 2: a deleted, 3: b=2, 4: c=1 — then a later tombstone in the active segment.
    for r in [
        Record::new(Some("a"), Some("1")).with_timestamp(0),
        Record::new(Some("b"), Some("1")).with_timestamp(0),
        tombstone("a"),
        Record::new(Some("b"), Some("2")).with_timestamp(0),
        Record::new(Some("c"), Some("1")).with_timestamp(0),
    ] {
        p.send("c", r).unwrap();
    }
    p.flush().unwrap();
    let part = log.partition("c", 0).unwrap();
    part.roll().unwrap();
    p.send("c", tombstone("c")).unwrap();
    p.flush().unwrap();
    let now = 1_700_000_000_000;
    log.run_cleaner(now).unwrap();
    assert_eq!(part.resume_floor(), 0, "superseded values removed, but no tombstone: every delete is still readable");
    log.run_cleaner(now + 1000).unwrap();
    assert!(read_all(&log).iter().all(|(o, _, _)| *o != 2), "the tombstone at 2 is gone");
    assert_eq!(part.resume_floor(), 3, "a reader at 2 or before would miss a's delete; from 3 on it misses none");
    drop((part, p));
    log.close().unwrap();
    drop(log);
    let log = Log::open_with(dir.path(), options()).unwrap();
    assert_eq!(log.partition("c", 0).unwrap().resume_floor(), 3, "kept across a reopen");
    let backend: &dyn garam_core::backend::Backend = &log;
    assert_eq!(backend.resume_floor("c", 0).unwrap(), 3, "and what the runtime reads");
}
