//! Consumer groups with members joining and leaving during consumption: no partition is ever owned
//! by two members at once, and with commit-after-process no record is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garam_core::Record;
use garam_log::consumer::{ConsumerConfig, OffsetReset, RebalanceListener, RevokeCommits};
use garam_log::group::{Assignor, TopicPartition};
use garam_log::{Log, LogOptions, TopicConfig};

const PARTITIONS: u32 = 6;
const RECORDS: u64 = 30_000;

/// Commits what was processed when partitions are taken away.
struct CommitOnRevoke;

impl RebalanceListener for CommitOnRevoke {
    fn on_revoked(&mut self, partitions: &[TopicPartition], commits: &mut RevokeCommits<'_>) {
        let offsets: Vec<_> =
            partitions.iter().filter_map(|tp| commits.position(tp).map(|o| (tp.clone(), o))).collect();
        commits.commit(&offsets).unwrap();
    }
}

fn run(assignor: Assignor) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), LogOptions { background: true, ..Default::default() }).unwrap();
    log.create_topic("t", PARTITIONS, TopicConfig::default()).unwrap();

    // Who is processing which partition right now: a second owner is a violation.
    let processing: Arc<Mutex<HashMap<u32, String>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<(u32, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let producer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut p = log.producer(Default::default()).unwrap();
            for i in 0..RECORDS {
                p.send("t", Record::new(Some(format!("k{i}")), Some(i.to_string()))).unwrap();
                if i % 500 == 0 {
                    p.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            p.flush().unwrap();
        })
    };

    let member = |name: String, lifetime: Duration| {
        let (log, processing, seen, stop) = (log.clone(), processing.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = log
                .consumer(ConsumerConfig {
                    client_id: name.clone(),
                    assignor,
                    auto_offset_reset: OffsetReset::Earliest,
                    ..ConsumerConfig::group("g", &["t"])
                })
                .unwrap();
            c.set_listener(Box::new(CommitOnRevoke));
            let born = Instant::now();
            while born.elapsed() < lifetime && !stop.load(Ordering::Acquire) {
                let polled = c.poll(Duration::from_millis(20)).unwrap();
                let mut commits = Vec::new();
                for part in &polled {
                    let p = part.tp.partition;
                    {
                        let mut owners = processing.lock().unwrap();
                        if let Some(other) = owners.get(&p) {
                            panic!("partition {p} processed by {name} while {other} holds it");
                        }
                        owners.insert(p, name.clone());
                    }
                    for r in part.records() {
                        seen.lock().unwrap().insert((p, r.unwrap().offset));
                    }
                    processing.lock().unwrap().remove(&p);
                    commits.push((part.tp.clone(), part.next_offset()));
                }
                if !commits.is_empty() {
                    c.commit(&commits).unwrap();
                }
            }
            c.close().unwrap();
        })
    };

    // A long-lived member plus a churn of short-lived ones.
    let mut handles = vec![member("stable".into(), Duration::from_secs(600))];
    for i in 0..8 {
        handles.push(member(format!("m{i}"), Duration::from_millis(150 + 60 * i)));
        std::thread::sleep(Duration::from_millis(70));
    }
    producer.join().unwrap();
    // Wait for the group to catch up, then stop everyone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed: u64 = (0..PARTITIONS)
            .map(|p| log.groups().committed("g", &TopicPartition::new("t", p)).map_or(0, |c| c.offset))
            .sum();
        if committed == RECORDS || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    for h in handles {
        h.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, _) in seen.iter() {
        *per_partition.entry(*p).or_default() += 1;
    }
    for p in 0..PARTITIONS {
        let end = log.offsets("t", p).unwrap().log_end_offset;
        for o in 0..end {
            assert!(seen.contains(&(p, o)), "record {p}@{o} was skipped");
        }
        let c = log.groups().committed("g", &TopicPartition::new("t", p)).unwrap().offset;
        assert_eq!(c, end, "partition {p} fully committed");
    }
    assert_eq!(seen.len() as u64, RECORDS);
}

#[test]
fn cooperative_sticky_group_survives_churn() {
    run(Assignor::CooperativeSticky);
}

#[test]
fn range_group_survives_churn() {
    run(Assignor::Range);
}

#[test]
fn expired_member_loses_partitions_and_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
    log.create_topic("t", 2, TopicConfig::default()).unwrap();
    let cfg = ConsumerConfig { session_timeout: Duration::from_millis(100), ..ConsumerConfig::group("g", &["t"]) };
    let mut zombie = log.consumer(cfg.clone()).unwrap();
    zombie.poll(Duration::from_millis(1)).unwrap();
    assert_eq!(zombie.assignment().len(), 2);
    std::thread::sleep(Duration::from_millis(200));
    let mut fresh = log.consumer(cfg).unwrap();
    fresh.poll(Duration::from_millis(1)).unwrap();
    assert_eq!(fresh.assignment().len(), 2, "the expired member's partitions moved");
    let tp = TopicPartition::new("t", 0);
    assert!(zombie.commit(&[(tp.clone(), 0)]).is_err(), "a zombie cannot commit");
    fresh.commit(&[(tp.clone(), 0)]).unwrap();
    // Offsets never go backwards by accident; an explicit reset can rewind a stopped group.
    log.append("t", 0, &mut {
        let mut b = garam_log::batch::BatchBuilder::new(Default::default());
        b.push(0, None, Some(b"x"), &[]);
        b.push(0, None, Some(b"y"), &[]);
        b.finish().unwrap().to_vec()
    })
    .unwrap();
    fresh.commit(&[(tp.clone(), 2)]).unwrap();
    assert!(fresh.commit(&[(tp.clone(), 1)]).is_err());
    assert!(log.reset_group_offsets("g", &[(tp.clone(), 0)]).is_err(), "members are active");
    drop(fresh);
    drop(zombie);
    log.reset_group_offsets("g", &[(tp.clone(), 0)]).unwrap();
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 0);
}

#[test]
fn a_committed_offset_past_the_log_end_is_reset_and_can_be_committed_lower() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
    log.create_topic("t", 1, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("t", 0);
    // As after a power failure that lost the log's unflushed tail but not the fsynced commit.
    log.groups().commit("g", None, &[(tp.clone(), 100)], "").unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..10 {
        p.send("t", Record::new(Some(format!("k{i}")), Some("v"))).unwrap();
    }
    p.flush().unwrap();
    let mut c = log
        .consumer(ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::group("g", &["t"]) })
        .unwrap();
    let mut n = 0;
    for part in c.poll(Duration::from_millis(100)).unwrap() {
        n += part.records().count();
    }
    assert_eq!(n, 10, "the new records are read, not skipped");
    c.commit_positions().unwrap();
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 10);
}
