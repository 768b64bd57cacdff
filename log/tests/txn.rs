//! Transactions: read-committed visibility, aborts, fencing, offsets committed with the records,
//! and atomicity across SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use garam_core::backend::TopicPartition;
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::partition::Fault;
use garam_log::txn::GroupMetadata;
use garam_log::{Log, LogError, LogOptions, TopicConfig};
use rand::{Rng, SeedableRng};

fn quiet() -> LogOptions {
    LogOptions { background: false, ..Default::default() }
}

fn read(log: &Log, topic: &str, committed: bool) -> Vec<String> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: committed,
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
                out.push(String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// A producer whose every send appends a batch of its own at once.
fn one_record_batches() -> garam_log::producer::ProducerConfig {
    garam_log::producer::ProducerConfig { batch_size: 1, ..Default::default() }
}

fn send(p: &mut garam_log::txn::TransactionalProducer, topic: &str, part: u32, v: &str) {
    p.send_raw(topic, Some(part), Some(v.as_bytes()), Some(v.as_bytes()), 0, &[]).unwrap();
}

#[test]
fn committed_records_appear_together_aborted_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let mut p = log.transactional_producer("t1", Default::default()).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "a");
    send(&mut p, "out", 1, "b");
    // Not committed yet: read-uncommitted sees it once appended; read-committed does not.
    p.commit_transaction(None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(&log, "out", true), vec!["a", "b"]);

    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "c");
    // Force the batch out so it is in the log while the transaction is open.
    let (pid, _) = p.producer_id_and_epoch();
    p.abort_transaction().unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "b"], "aborted: never visible to read-committed");
    assert!(log.partition("out", 0).unwrap().open_transactions().iter().all(|(x, _)| *x != pid));

    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "d");
    let mut raw = garam_log::batch::BatchBuilder::new(Default::default());
    raw.push(0, None, Some(b"plain"), &[]);
    log.append("out", 0, &mut raw.finish().unwrap().to_vec()).unwrap();
    // Flush the transaction's batch by committing later; before that, a non-transactional record
    // after it is held back by the last stable offset too.
    p.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "b", "d", "plain"]);
    assert_eq!(read(&log, "out", false), vec!["a", "b", "d", "plain"], "aborted records were never appended here");
}

#[test]
fn open_transactions_hold_back_read_committed_readers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let mut p = log.transactional_producer("t", one_record_batches()).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "x"); // batch_size 1: appended at once
    let part = log.partition("out", 0).unwrap();
    assert_eq!(part.high_watermark(), 1);
    assert_eq!(part.last_stable_offset(), 0);
    assert_eq!(read(&log, "out", false), vec!["x"]);
    assert!(read(&log, "out", true).is_empty());
    p.abort_transaction().unwrap();
    assert_eq!(part.last_stable_offset(), 2, "past the abort marker");
    assert!(read(&log, "out", true).is_empty());
}

#[test]
fn offsets_commit_with_the_records_and_zombies_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let mut old = log.transactional_producer("app-0", one_record_batches()).unwrap();
    old.begin_transaction().unwrap();
    send(&mut old, "out", 0, "1");
    old.commit_transaction(Some(&g), &[(tp.clone(), 5)]).unwrap();
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 5);

    old.begin_transaction().unwrap();
    send(&mut old, "out", 0, "zombie-open");
    // A new instance with the same transactional id fences the old one and aborts its transaction.
    let mut new = log.transactional_producer("app-0", Default::default()).unwrap();
    assert!(new.producer_id_and_epoch().1 > old.producer_id_and_epoch().1);
    let err = old.commit_transaction(Some(&g), &[(tp.clone(), 9)]).unwrap_err();
    assert!(matches!(err, LogError::ProducerFenced { .. }), "{err}");
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 5, "the zombie's offsets never land");
    assert_eq!(read(&log, "out", true), vec!["1"]);
    new.begin_transaction().unwrap();
    send(&mut new, "out", 0, "2");
    new.commit_transaction(Some(&g), &[(tp.clone(), 7)]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["1", "2"]);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 7);
}

const CHILD_ENV: &str = "GARAM_TXN_CHILD_DIR";

/// Child: transaction k writes k's records to two partitions and commits offset k+1.
#[test]
fn txn_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let log = Log::open_with(&dir, quiet()).unwrap();
    log.ensure_topic("in", 1, TopicConfig::default()).unwrap();
    log.ensure_topic("out", 2, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let mut k = log.groups().committed("g", &tp).map_or(0, |c| c.offset);
    let mut p = log
        .transactional_producer("crashy", garam_log::producer::ProducerConfig { batch_size: 200, ..Default::default() })
        .unwrap();
    let mut rng = rand::rngs::SmallRng::from_entropy();
    loop {
        p.begin_transaction().unwrap();
        let n = rng.gen_range(1..20);
        for i in 0..n {
            let v = format!("{k}:{i}:{n}");
            send(&mut p, "out", (i % 2) as u32, &v);
        }
        if rng.gen_bool(0.2) {
            p.abort_transaction().unwrap();
            println!("aborted {k}");
            continue;
        }
        p.commit_transaction(Some(&g), &[(tp.clone(), k + 1)]).unwrap();
        println!("committed {k}");
        k += 1;
    }
}

#[test]
fn transactions_are_atomic_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut acknowledged = 0u64;
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args(["--exact", "txn_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..250)));
        child.kill().unwrap();
        child.wait().unwrap();
        for l in reader.join().unwrap() {
            if let Some(k) = l.strip_prefix("committed ").and_then(|k| k.parse::<u64>().ok()) {
                acknowledged = acknowledged.max(k + 1);
            }
        }
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        if log.topic("out").is_err() {
            continue;
        }
        let committed = log.groups().committed("g", &TopicPartition::new("in", 0)).map_or(0, |c| c.offset);
        assert!(committed >= acknowledged, "round {round}: acknowledged commit {acknowledged} lost ({committed})");
        // Every transaction visible to read-committed is whole, and exactly those below the
        // committed offset are visible: records and offsets went together.
        let mut seen: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for v in read(&log, "out", true) {
            let parts: Vec<u64> = v.split(':').map(|x| x.parse().unwrap()).collect();
            let e = seen.entry(parts[0]).or_insert((0, parts[2] as usize));
            e.0 += 1;
        }
        for (k, (got, want)) in &seen {
            assert_eq!(got, want, "round {round}: transaction {k} is partial");
        }
        let visible: BTreeSet<u64> = seen.keys().copied().collect();
        let expected: BTreeSet<u64> = (0..committed).collect();
        assert_eq!(visible, expected, "round {round}: visible transactions differ from committed offsets");
        assert!(
            log.partition("out", 0).unwrap().open_transactions().is_empty(),
            "round {round}: recovery aborted open transactions"
        );
        log.close().unwrap();
    }
    assert!(acknowledged > 0, "the child never committed");
}

#[test]
fn a_refused_commit_aborts_everything_the_transaction_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let mut p = log.transactional_producer("t", one_record_batches()).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "a");
    send(&mut p, "out", 1, "b");
    // The member does not own the input partition (it never joined): refused before the commit point.
    let g = GroupMetadata { group: "g".into(), member_id: Some("nobody".into()) };
    let err = p.commit_transaction(Some(&g), &[(TopicPartition::new("in", 0), 1)]).unwrap_err();
    assert!(matches!(err, LogError::Group { .. }), "{err}");
    p.abort_transaction().unwrap();
    for part in 0..2 {
        let pt = log.partition("out", part).unwrap();
        assert!(pt.open_transactions().is_empty(), "partition {part} still has an open transaction");
        assert_eq!(pt.last_stable_offset(), pt.high_watermark());
    }
    assert!(read(&log, "out", true).is_empty());
    assert!(log.groups().committed("g", &TopicPartition::new("in", 0)).is_none());
}

#[test]
fn producers_cannot_append_transaction_markers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, TopicConfig::default()).unwrap();
    let mut b = garam_log::batch::BatchBuilder::new(Default::default());
    b.producer(5, 0, -1);
    b.transactional(true);
    b.control(true);
    b.push(0, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]), &[]);
    let err = log.append("t", 0, &mut b.finish().unwrap().to_vec()).unwrap_err().to_string();
    assert!(err.contains("transaction coordinator"), "{err}");
}

#[test]
fn compaction_keeps_committed_values_over_aborted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    let mut c = TopicConfig::default();
    c.set("cleanup.policy", "compact").unwrap();
    log.create_topic("c", 1, c).unwrap();
    let mut p = log.transactional_producer("t", one_record_batches()).unwrap();
    p.begin_transaction().unwrap();
    p.send_raw("c", Some(0), Some(b"k"), Some(b"committed"), 0, &[]).unwrap();
    p.commit_transaction(None, &[]).unwrap();
    p.begin_transaction().unwrap();
    p.send_raw("c", Some(0), Some(b"k"), Some(b"aborted"), 0, &[]).unwrap();
    p.abort_transaction().unwrap();
    log.partition("c", 0).unwrap().roll().unwrap();
    // Markers carry wall-clock time: clean "later" than they were written.
    log.run_cleaner(garam_core::time::now_ms() + 1000).unwrap();
    assert_eq!(read(&log, "c", true), vec!["committed"]);
    assert_eq!(read(&log, "c", false), vec!["committed"], "the aborted record was dropped by the cleaner");
}

/// A commit sends each store's changelog through `send_to_partition`: no lookup per record, but
/// the same transaction as records sent one by one — the partition is registered, batches fill
/// and roll over, an abort hides them, and a missing partition is refused before any record.
#[test]
fn records_sent_to_one_partition_in_bulk_commit_and_abort_with_their_transaction() {
    use garam_core::backend::BackendProducer;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("cl", 2, TopicConfig::default()).unwrap();
    // Tiny batches: many batches roll over within one call.
    let config = garam_log::producer::ProducerConfig { batch_size: 64, ..Default::default() };
    let mut p = log.transactional_producer("bulk", config).unwrap();
    let bulk = |p: &mut garam_log::txn::TransactionalProducer, prefix: &str| {
        BackendProducer::send_to_partition(p, "cl", 1, 7, &mut |sink| {
            for i in 0..100 {
                let v = format!("{prefix}{i:03}");
                sink(v.as_bytes(), Some(v.as_bytes()))?;
            }
            Ok(())
        })
    };
    p.begin_transaction().unwrap();
    bulk(&mut p, "c").unwrap();
    p.commit_transaction(None, &[]).unwrap();
    p.begin_transaction().unwrap();
    bulk(&mut p, "a").unwrap();
    p.abort_transaction().unwrap();

    let committed = read(&log, "cl", true);
    assert_eq!(committed, (0..100).map(|i| format!("c{i:03}")).collect::<Vec<_>>());
    assert_eq!(read(&log, "cl", false).len(), 200, "the aborted records were appended, then hidden");
    assert_eq!(log.partition("cl", 0).unwrap().high_watermark(), 0, "all went to partition 1");

    p.begin_transaction().unwrap();
    let mut called = false;
    let err = BackendProducer::send_to_partition(&mut p, "cl", 2, 0, &mut |_| {
        called = true;
        Ok(())
    });
    assert!(err.is_err_and(|e| e.to_string().contains("partition 2")), "a partition the topic lacks");
    assert!(!called);
}

/// Copies a log directory as a crash would leave it (what the files hold now).
fn crash_image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            crash_image(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A commit records its transaction complete lazily — at the next commit, an abort, or the
/// producer's drop — once its markers and offsets are durable. A crash before that leaves the
/// prepare record, and opening the log completes the transaction again: idempotently, without
/// committing the producer's next transaction (already appending), and without rewinding
/// offsets another member committed further in the meantime.
#[test]
fn a_transaction_not_yet_recorded_complete_is_completed_again_on_open_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let tiny = one_record_batches();
    let mut a = log.transactional_producer("a", tiny.clone()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a1");
    a.commit_transaction(Some(&g), &[(tp.clone(), 5)]).unwrap();
    // Its next transaction is appending (batches of one record) when the crash comes.
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a2-open");
    // A rebalance moved the input partition: another producer commits it further, and finishes.
    let mut b = log.transactional_producer("b", Default::default()).unwrap();
    b.begin_transaction().unwrap();
    send(&mut b, "out", 1, "b1");
    b.commit_transaction(Some(&g), &[(tp.clone(), 9)]).unwrap();
    drop(b);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 9);
    crash_image(dir.path(), image.path());
    drop(a);
    drop(log);

    let log = Log::open_with(image.path(), quiet()).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a1", "b1"], "a's open transaction is aborted, not committed");
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 9, "recovery must not rewind to a's 5");
    assert!(log.partition("out", 0).unwrap().open_transactions().is_empty());
    // A new producer for `a` commits normally after the recovered transaction.
    let mut a = log.transactional_producer("a", Default::default()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a3");
    a.commit_transaction(Some(&g), &[(tp.clone(), 11)]).unwrap();
    drop(a);
    drop(log);
    let log = Log::open_with(image.path(), quiet()).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a1", "a3", "b1"]);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 11);
}

/// Resetting a group's offsets while this process still holds a transaction that committed
/// offsets for it (not yet recorded complete) settles that transaction first: a crash afterwards
/// must not have recovery complete it again over the reset.
#[test]
fn a_reset_after_a_transaction_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let mut a = log.transactional_producer("a", Default::default()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a1");
    a.commit_transaction(Some(&g), &[(tp.clone(), 5)]).unwrap();
    log.reset_group_offsets("g", &[(tp.clone(), 2)]).unwrap();
    crash_image(dir.path(), image.path());
    drop(a);
    drop(log);

    let log = Log::open_with(image.path(), quiet()).unwrap();
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 2, "the reset stands");
    assert_eq!(read(&log, "out", true), vec!["a1"]);
}

#[test]
fn a_topic_deleted_and_recreated_after_a_commit_is_not_given_its_markers_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    // Batches of one record: each send is appended at once.
    let tiny = one_record_batches();
    let mut a = log.transactional_producer("a", tiny).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a1");
    a.commit_transaction(None, &[]).unwrap();
    log.delete_topic("out").unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    // The same producer's next transaction, still open, in the new topic.
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a2");
    crash_image(dir.path(), image.path());
    drop(a);
    drop(log);

    let log = Log::open_with(image.path(), quiet()).unwrap();
    assert_eq!(read(&log, "out", true), Vec::<String>::new(), "the open transaction is not committed");
    assert_eq!(read(&log, "out", false), vec!["a2"], "the new topic holds the new transaction's record");
}

#[test]
fn a_transaction_whose_topic_is_deleted_under_it_fails_to_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tiny = one_record_batches();
    let mut a = log.transactional_producer("a", tiny).unwrap();
    let mut b = log.transactional_producer("b", Default::default()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "a1");
    log.delete_topic("out").unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let err = a.commit_transaction(None, &[]).unwrap_err();
    assert!(matches!(err, garam_log::LogError::TopicDeleted { ref topic, partition: 0 } if topic == "out"), "{err}");
    a.abort_transaction().unwrap();
    // Queued, not yet appended: the next send says they were dropped, then writes to the new topic.
    b.begin_transaction().unwrap();
    send(&mut b, "out", 0, "b1");
    log.delete_topic("out").unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let err = b.send_raw("out", Some(0), None, Some(b"b2"), 0, &[]).unwrap_err();
    assert!(matches!(err, garam_log::LogError::TopicDeleted { .. }), "{err}");
    send(&mut b, "out", 0, "b3");
    b.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["b3"]);
}

#[test]
fn the_next_transaction_queues_behind_a_commit_in_flight_and_never_joins_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    // batch_size 1: every send appends at once, so the next transaction's first record would
    // reach the partition while the commit's fsyncs still run, were it not held back.
    let mut p = log.transactional_producer("t", one_record_batches()).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "a");
    send(&mut p, "out", 0, "b");
    p.start_commit(Some(&g), &[(tp.clone(), 2)]).unwrap();
    assert!(p.commit_in_flight());
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "c");
    // The send did not wait for the commit: c is held until the commit's markers are written
    // (or, had the commit finished already, appended above them) — never below.
    let part = log.partition("out", 0).unwrap();
    let written = read(&log, "out", false);
    assert!(
        written == ["a", "b"] || (written == ["a", "b", "c"] && part.high_watermark() == 4),
        "c below the COMMIT marker: {written:?}, high watermark {}",
        part.high_watermark()
    );
    assert_eq!(read(&log, "out", true), vec!["a", "b"]);
    p.await_commit().unwrap();
    assert!(!p.commit_in_flight());
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 2);
    p.commit_transaction(Some(&g), &[(tp.clone(), 3)]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "b", "c"]);
    assert_eq!(part.high_watermark(), 5, "a, b, COMMIT, c, COMMIT");
    // d belongs to the next transaction alone: aborting it leaves the committed ones.
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "d");
    p.abort_transaction().unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "b", "c"]);
    assert!(part.open_transactions().is_empty());
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "e");
    p.commit_transaction(Some(&g), &[(tp.clone(), 4)]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "b", "c", "e"]);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 4);
}

#[test]
fn a_commit_refused_in_flight_is_aborted_with_the_next_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let mut p = log.transactional_producer("t", Default::default()).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "a");
    // The member does not own the input partition: the committer refuses it before the commit point.
    let g = GroupMetadata { group: "g".into(), member_id: Some("nobody".into()) };
    p.start_commit(Some(&g), &[(TopicPartition::new("in", 0), 1)]).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 1, "b");
    let err = p.await_commit().unwrap_err();
    assert!(matches!(err, LogError::Group { .. }), "{err}");
    // Both transactions' records are aborted, in both partitions.
    p.abort_transaction().unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 1, "c");
    p.commit_transaction(None, &[]).unwrap();
    for part in 0..2 {
        let pt = log.partition("out", part).unwrap();
        assert!(pt.open_transactions().is_empty(), "partition {part} still has an open transaction");
    }
    assert_eq!(read(&log, "out", true), vec!["c"]);
    assert!(log.groups().committed("g", &TopicPartition::new("in", 0)).is_none());
}

/// Kafka's coordinator aborts a transaction whose producer went away once it times out; a
/// producer dropped with its transaction open aborts it itself, or its records would hold every
/// read-committed reader of their partitions until the log is next opened.
#[test]
fn a_producer_dropped_with_its_transaction_open_aborts_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tiny = one_record_batches();
    let mut a = log.transactional_producer("a", tiny.clone()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "left-open"); // batch_size 1: appended at once
    let part = log.partition("out", 0).unwrap();
    assert_eq!(part.last_stable_offset(), 0);
    drop(a);
    assert!(part.open_transactions().is_empty(), "aborted by the drop");
    let mut b = log.transactional_producer("b", tiny).unwrap();
    b.begin_transaction().unwrap();
    send(&mut b, "out", 0, "b1");
    b.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["b1"], "the dropped transaction's record is never visible");
    assert_eq!(part.last_stable_offset(), part.high_watermark());
}

/// A read-committed consumer without a committed offset that starts at the latest begins at the
/// last stable offset, as Kafka's does: a transaction open then is read once it commits, not
/// skipped.
#[test]
fn a_read_committed_consumer_starting_at_latest_reads_a_transaction_open_when_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tiny = one_record_batches();
    let mut a = log.transactional_producer("a", tiny).unwrap();
    a.begin_transaction().unwrap();
    for v in ["x", "y", "z"] {
        send(&mut a, "out", 0, v);
    }
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec!["out".into()],
            auto_offset_reset: OffsetReset::Latest,
            read_committed: true,
            ..Default::default()
        })
        .unwrap();
    assert!(c.poll(Duration::from_millis(10)).unwrap().is_empty());
    a.commit_transaction(None, &[]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        for part in c.poll(Duration::from_millis(10)).unwrap() {
            for r in part.records() {
                seen.push(String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap());
            }
        }
    }
    assert_eq!(seen, vec!["x", "y", "z"]);
}

/// A roll fsyncs the producer snapshot but not the segment it closed. A power cut that tears
/// that segment leaves the log ending before the snapshot; the snapshot must not be taken up
/// again once new batches pass its offset, or a transaction begun below it would be missed and
/// its records shown to read-committed readers.
#[test]
fn a_producer_snapshot_past_a_torn_log_end_is_never_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let torn = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    let mut config = TopicConfig::default();
    config.set("segment.bytes", "4096").unwrap();
    log.create_topic("out", 1, config).unwrap();
    let mut p = log.producer(one_record_batches()).unwrap();
    let part = log.partition("out", 0).unwrap();
    let value = "v".repeat(1000);
    while part.segment_count() < 2 {
        p.send("out", garam_core::Record::new(None::<Vec<u8>>, Some(value.clone().into_bytes()))).unwrap();
        p.flush().unwrap();
    }
    let rolled_at = part.high_watermark() - 1; // the snapshot's offset: the new segment's base
    crash_image(dir.path(), torn.path());
    drop(p);
    drop(log);
    // The power cut: the closed segment's last bytes never reached the disk.
    let first = torn.path().join("topics").join("out").join("0").join("00000000000000000000.log");
    let len = std::fs::metadata(&first).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 10).unwrap();

    let log = Log::open_with(torn.path(), quiet()).unwrap();
    let part = log.partition("out", 0).unwrap();
    assert_eq!(part.high_watermark(), rolled_at - 1, "the torn record is cut");
    let mut a = log.transactional_producer("a", one_record_batches()).unwrap();
    a.begin_transaction().unwrap();
    send(&mut a, "out", 0, "u1"); // at rolled_at - 1
    send(&mut a, "out", 0, "u2"); // at rolled_at: the log now reaches the snapshot's offset
    crash_image(torn.path(), image.path());
    drop(a);
    drop(log);

    let log = Log::open_with(image.path(), quiet()).unwrap();
    let shown: Vec<String> = read(&log, "out", true).into_iter().filter(|v| v.starts_with('u')).collect();
    assert!(shown.is_empty(), "an open transaction's records shown to read-committed readers: {shown:?}");
    let all = read(&log, "out", false);
    assert!(all.contains(&"u1".to_string()) && all.contains(&"u2".to_string()), "both are in the log: {all:?}");
}

/// A log with a two-partition topic `out`, and a producer for `x` (batches of one record) with a
/// transaction open that has appended "z0" to partition 0.
fn open_transaction_of_x(
) -> (tempfile::TempDir, Log, garam_log::txn::TransactionalProducer, garam_log::producer::ProducerConfig) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let tiny = one_record_batches();
    let mut old = log.transactional_producer("x", tiny.clone()).unwrap();
    old.begin_transaction().unwrap();
    send(&mut old, "out", 0, "z0");
    (dir, log, old, tiny)
}

/// A fenced producer's send to a partition its transaction had not written yet fails before the
/// record can be appended: nothing it sends reaches a partition the new producer's fencing never
/// reached, where it would hold the last stable offset and join the new producer's transaction.
#[test]
fn a_fenced_producer_appends_nothing_to_a_partition_it_had_not_written() {
    let (_dir, log, mut old, tiny) = open_transaction_of_x();
    let mut new = log.transactional_producer("x", tiny).unwrap(); // fences `old`
    let sent = old.send_raw("out", Some(1), Some(b"z1"), Some(b"z1"), 0, &[]);
    assert!(matches!(sent, Err(LogError::ProducerFenced { .. })), "{sent:?}");
    drop(old);
    assert!(log.partition("out", 1).unwrap().open_transactions().is_empty(), "nothing of `old` in partition 1");
    new.begin_transaction().unwrap();
    send(&mut new, "out", 1, "n1");
    new.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["n1"]);
    assert_eq!(read(&log, "out", false), vec!["n1", "z0"], "z0 was appended before the fencing, and aborted by it");
}

/// The transaction log holds two records per commit; an exactly-once application committing
/// every 100 ms would grow it without end, and every open reads it whole. Past its limit it is
/// rewritten with what recovery needs, and recovery after a crash finds the same: the epochs
/// (a new producer still fences the old), and the last transaction, committed but not yet
/// recorded complete.
#[test]
fn the_transaction_log_is_compacted_past_its_limit_and_recovers_the_same() {
    let options = || LogOptions { background: false, transaction_log_compact_bytes: 4096, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), options()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let mut a = log.transactional_producer("a", Default::default()).unwrap();
    let mut b = log.transactional_producer("b", Default::default()).unwrap();
    for i in 0..300u64 {
        a.begin_transaction().unwrap();
        send(&mut a, "out", (i % 2) as u32, &format!("a{i}"));
        a.commit_transaction(Some(&g), &[(tp.clone(), i + 1)]).unwrap();
    }
    b.begin_transaction().unwrap();
    send(&mut b, "out", 0, "b-open");
    let file = dir.path().join("transactions").join("transactions.log");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size < 8192, "compacted: {size} bytes after 300 commits");
    let (pid, epoch) = a.producer_id_and_epoch();
    crash_image(dir.path(), image.path());
    drop((a, b, log));

    let log = Log::open_with(image.path(), options()).unwrap();
    let committed = read(&log, "out", true);
    assert_eq!(committed.len(), 300, "every commit, and b's open transaction aborted");
    assert!(!committed.contains(&"b-open".to_string()));
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 300);
    let a = log.transactional_producer("a", Default::default()).unwrap();
    assert_eq!(a.producer_id_and_epoch(), (pid, epoch + 1), "the epoch survived the compaction");
}

/// The same while a commit is in flight: a partition first written then has its epoch checked
/// at once (it is registered when the append gate opens); and a fenced producer appends nothing
/// more, whether its commit in flight got in before the fence or was refused.
#[test]
fn a_producer_fenced_with_a_commit_in_flight_appends_nothing_more() {
    let (_dir, log, mut old, tiny) = open_transaction_of_x();
    old.start_commit(None, &[]).unwrap();
    old.begin_transaction().unwrap();
    let _new = log.transactional_producer("x", tiny).unwrap(); // fences `old`
    let sent = old.send_raw("out", Some(1), Some(b"z1"), Some(b"z1"), 0, &[]);
    assert!(matches!(sent, Err(LogError::ProducerFenced { .. })), "{sent:?}");
    let _ = old.await_commit(); // committed before the fence, or refused by it
    let again = old.send_raw("out", Some(0), Some(b"z2"), Some(b"z2"), 0, &[]);
    assert!(matches!(again, Err(LogError::ProducerFenced { .. })), "{again:?}");
    drop(old);
    assert_eq!(read(&log, "out", false), vec!["z0"], "only what it wrote before the fence");
    assert!(read(&log, "out", true).iter().all(|v| v == "z0"));
    for p in 0..2 {
        assert!(log.partition("out", p).unwrap().open_transactions().is_empty(), "partition {p}");
    }
}

/// A batch held for a partition first written while a commit was in flight is appended only
/// once the partition is registered, and that fails for a producer fenced meanwhile: a fence
/// between the commit's end and its settling leaves nothing in a partition the fencer did not
/// abort.
#[test]
fn a_batch_held_during_a_commit_is_not_appended_after_a_fence() {
    let (_dir, log, mut old, tiny) = open_transaction_of_x();
    old.start_commit(None, &[]).unwrap();
    old.begin_transaction().unwrap();
    // Most likely while the commit's fsyncs run: held, its partition joining later.
    send(&mut old, "out", 1, "z1");
    // The commit ends (its markers visible, its outcome sent); nothing settles it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read(&log, "out", true) != vec!["z0"] {
        assert!(std::time::Instant::now() < deadline, "the commit never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let _new = log.transactional_producer("x", tiny).unwrap(); // fences `old`
    let more = old.send_raw("out", Some(1), Some(b"z2"), Some(b"z2"), 0, &[]);
    assert!(more.is_err(), "a fenced producer appends nothing: {more:?}");
    drop(old);
    assert_eq!(read(&log, "out", true), vec!["z0"], "the commit before the fence, and nothing after");
    for p in 0..2 {
        assert!(log.partition("out", p).unwrap().open_transactions().is_empty(), "partition {p}");
    }
}

/// A transactional id whose producer id has used its epochs gets a new producer id, as in Kafka
/// (KIP-360). The old producer id's open transaction is aborted there and then, by markers of the
/// old producer id itself (a marker closes only its own producer id's transaction) at the last
/// epoch, above the old producer's, so that its partitions refuse its later batches. It used to
/// stay open, holding read-committed readers back, until the log was next opened.
#[test]
fn an_open_transaction_of_a_producer_whose_epochs_ran_out_is_aborted_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    // A transaction log in which `x`'s producer id has two epochs left.
    let txns = dir.path().join("transactions");
    std::fs::create_dir_all(&txns).unwrap();
    let body = [&[1u8][..], br#"{"kind":"init","id":"x","pid":1000000,"epoch":32765}"#].concat();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    frame.extend_from_slice(&body);
    std::fs::write(txns.join("transactions.log"), frame).unwrap();

    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tiny = one_record_batches();
    let mut old = log.transactional_producer("x", tiny.clone()).unwrap();
    assert_eq!(old.producer_id_and_epoch(), (1_000_000, i16::MAX - 1));
    old.begin_transaction().unwrap();
    send(&mut old, "out", 0, "z0");
    let part = log.partition("out", 0).unwrap();
    assert_eq!(part.open_transactions().len(), 1);

    let mut new = log.transactional_producer("x", tiny).unwrap();
    let (pid, epoch) = new.producer_id_and_epoch();
    assert!(pid != 1_000_000 && epoch == 0, "a new producer id: {pid}, epoch {epoch}");
    assert!(part.open_transactions().is_empty(), "the old producer id's transaction is aborted");
    // The partition it had written refuses its next batch: nothing opens a transaction there
    // that no one could end.
    let late = old.send_raw("out", Some(0), Some(b"z1"), Some(b"z1"), 0, &[]);
    assert!(matches!(late, Err(LogError::ProducerFenced { .. })), "{late:?}");
    assert!(part.open_transactions().is_empty(), "nothing of the old producer is open");
    let fenced = old.commit_transaction(None, &[]);
    assert!(matches!(fenced, Err(LogError::ProducerFenced { .. })), "{fenced:?}");
    new.begin_transaction().unwrap();
    send(&mut new, "out", 0, "n1");
    new.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["n1"]);
    assert_eq!(part.last_stable_offset(), part.high_watermark());
}

/// A failed fsync fails the commit before its commit point, and every later flush of that
/// partition (Linux may report success to the next fsync for pages it dropped): nothing of the
/// transaction becomes visible, and once the log is reopened — whose recovery validates what
/// the disk really holds — the next transaction commits.
#[test]
fn a_failed_fsync_fails_the_commit_and_every_flush_after_it_until_the_log_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = one_record_batches();
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("out", 1, TopicConfig::default()).unwrap();
        let mut p = log.transactional_producer("x", tiny.clone()).unwrap();
        p.begin_transaction().unwrap();
        send(&mut p, "out", 0, "a");
        let part = log.partition("out", 0).unwrap();
        part.inject_fault(Fault::Fsync);
        let failed = p.commit_transaction(None, &[]).unwrap_err();
        assert!(failed.to_string().contains("injected"), "{failed}");
        assert!(part.fsync_failed());
        let again = p.commit_transaction(None, &[]).unwrap_err();
        assert!(again.to_string().contains("an earlier fsync failed"), "the retry's fsync is not believed: {again}");
        assert_eq!(read(&log, "out", true), Vec::<String>::new());
        assert!(p.abort_transaction().is_err(), "the abort's markers cannot be made durable either");
    }
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    assert!(!log.partition("out", 0).unwrap().fsync_failed());
    let mut p = log.transactional_producer("x", tiny).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "b");
    p.commit_transaction(None, &[]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["b"]);
}

/// A commit that fails after its prepare record is durable — its COMMIT marker cannot be
/// appended — has committed: it reports the failure, appends nothing more (the next
/// transaction's record never goes), and the next open of the log
/// completes it, its records and offsets together.
#[test]
fn a_commit_that_fails_past_its_commit_point_is_completed_when_the_log_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let tiny = one_record_batches();
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("in", 1, TopicConfig::default()).unwrap();
        log.create_topic("out", 1, TopicConfig::default()).unwrap();
        let mut p = log.transactional_producer("x", tiny.clone()).unwrap();
        p.begin_transaction().unwrap();
        send(&mut p, "out", 0, "a");
        log.partition("out", 0).unwrap().inject_fault(Fault::MarkerAppend);
        p.start_commit(Some(&g), &[(tp.clone(), 2)]).unwrap();
        p.begin_transaction().unwrap();
        // The next transaction's record, sent once the commit has (most likely) failed in the
        // background: refused, or held behind the commit, it must never be appended.
        std::thread::sleep(Duration::from_millis(100));
        let _ = p.send_raw("out", Some(0), Some(b"b"), Some(b"b"), 0, &[]);
        let failed = p.await_commit().unwrap_err();
        assert!(failed.to_string().contains("injected"), "{failed}");
        let after = p.send_raw("out", Some(0), Some(b"c"), Some(b"c"), 0, &[]);
        assert!(after.is_err(), "nothing more is appended past a failed commit point");
        assert!(p.abort_transaction().is_err(), "past its commit point, it cannot abort");
        drop(p);
        assert_eq!(read(&log, "out", false), vec!["a"], "the next transaction's record never went");
        assert_eq!(read(&log, "out", true), Vec::<String>::new(), "not visible before its marker");
    }
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a"], "recovery completed it");
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 2, "with its offsets");
    let mut p = log.transactional_producer("x", tiny).unwrap();
    p.begin_transaction().unwrap();
    send(&mut p, "out", 0, "d");
    p.commit_transaction(Some(&g), &[(tp.clone(), 3)]).unwrap();
    assert_eq!(read(&log, "out", true), vec!["a", "d"]);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 3);
}

/// A transaction a new producer's `init` completed for its fenced predecessor (whose commit had
/// failed past its commit point) is forgotten: the id's next producer does not complete it again,
/// which would move back the group's offsets that a reset moved since.
#[test]
fn a_transaction_completed_by_the_next_producer_is_not_completed_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let tp = TopicPartition::new("in", 0);
    let g = GroupMetadata { group: "g".into(), member_id: None };
    let tiny = one_record_batches();
    let mut first = log.transactional_producer("x", tiny.clone()).unwrap();
    first.begin_transaction().unwrap();
    send(&mut first, "out", 0, "a");
    log.partition("out", 0).unwrap().inject_fault(Fault::MarkerAppend);
    assert!(first.commit_transaction(Some(&g), &[(tp.clone(), 100)]).is_err(), "failed past its commit point");
    let second = log.transactional_producer("x", tiny.clone()).unwrap(); // completes it
    assert_eq!(read(&log, "out", true), vec!["a"]);
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 100);
    log.reset_group_offsets("g", &[(tp.clone(), 0)]).unwrap();
    drop(second);
    drop(first);
    let _third = log.transactional_producer("x", tiny).unwrap();
    assert_eq!(log.groups().committed("g", &tp).unwrap().offset, 0, "the reset stands");
}
