//! Behaviour of the embedded log through its public API.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use garam_core::partitioner::partition_for_key;
use garam_core::Record;
use garam_log::batch::{BatchBuilder, BatchIter, Compression};
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::{Log, LogError, LogOptions, TopicConfig};

fn quiet() -> LogOptions {
    LogOptions { background: false, ..Default::default() }
}

fn cfg(pairs: &[(&str, &str)]) -> TopicConfig {
    let mut c = TopicConfig::default();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

/// A consumer of every partition of `topic` from its first offset, polls of at most
/// `max_poll_records`.
fn from_the_start(log: &Log, topic: &str, max_poll_records: Option<usize>) -> garam_log::consumer::Consumer {
    log.consumer(ConsumerConfig {
        topics: vec![topic.into()],
        auto_offset_reset: OffsetReset::Earliest,
        max_poll_records,
        ..Default::default()
    })
    .unwrap()
}

fn read_all(log: &Log, topic: &str) -> Vec<(u32, u64, Option<Vec<u8>>, Option<Vec<u8>>)> {
    let mut c = from_the_start(log, topic, None);
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(20)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                out.push((part.tp.partition, r.offset, r.key.map(|k| k.to_vec()), r.value.map(|v| v.to_vec())));
            }
        }
    }
    out.sort();
    out
}

fn one_batch(n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.push(ts + i as i64, Some(format!("k{i}").as_bytes()), Some(format!("v{i}").as_bytes()), &[]);
    }
    b.finish().unwrap().to_vec()
}

#[test]
fn topics_persist_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("a", 2, cfg(&[("cleanup.policy", "compact")])).unwrap();
        assert!(matches!(log.create_topic("a", 1, TopicConfig::default()), Err(LogError::TopicExists(_))));
        assert!(matches!(log.create_topic("b/c", 1, TopicConfig::default()), Err(LogError::InvalidTopicName { .. })));
        assert!(log.create_topic("z", 0, TopicConfig::default()).is_err());
        log.add_partitions("a", 4).unwrap();
        assert!(log.add_partitions("a", 3).is_err(), "partitions never shrink");
        let set = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        log.alter_topic_config("a", &set, &[]).unwrap();
        let bad = BTreeMap::from([("retention.ms".to_string(), "x".to_string())]);
        assert!(log.alter_topic_config("a", &bad, &[]).is_err());
        log.create_topic("gone", 1, TopicConfig::default()).unwrap();
        log.delete_topic("gone").unwrap();
        assert!(matches!(log.delete_topic("gone"), Err(LogError::UnknownTopic(_))));
        log.close().unwrap();
    }
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    let t = log.topic("a").unwrap();
    assert_eq!(t.partition_count(), 4);
    assert!(t.config().cleanup_policy.compact);
    assert_eq!(t.config().retention_ms, Some(1000));
    assert!(log.topic("gone").is_err());
}

#[test]
fn second_process_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open_with(dir.path(), quiet()).unwrap();
    let err = Log::open_with(dir.path(), quiet()).unwrap_err().to_string();
    assert!(err.contains(&std::process::id().to_string()), "{err}");
    assert!(err.contains("locked"), "{err}");
}

#[test]
fn keyed_records_land_where_kafka_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 7, TopicConfig::default()).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..500 {
        p.send("t", Record::new(Some(format!("user-{i}")), Some("x"))).unwrap();
    }
    p.flush().unwrap();
    let all = read_all(&log, "t");
    assert_eq!(all.len(), 500);
    for (part, _, key, _) in all {
        assert_eq!(part, partition_for_key(&key.unwrap(), 7));
    }
}

#[test]
fn keyless_records_stick_then_spread() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 4, TopicConfig::default()).unwrap();
    let mut p = log.producer(garam_log::producer::ProducerConfig { batch_size: 1024, ..Default::default() }).unwrap();
    for _ in 0..2000 {
        p.send("t", Record::new(None::<&str>, Some("some value bytes"))).unwrap();
    }
    p.flush().unwrap();
    let ends: Vec<u64> = (0..4).map(|i| log.offsets("t", i).unwrap().log_end_offset).collect();
    assert_eq!(ends.iter().sum::<u64>(), 2000);
    assert!(ends.iter().all(|e| *e > 0), "{ends:?}");
}

#[test]
fn idempotent_retries_are_not_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, TopicConfig::default()).unwrap();
    let (pid, epoch) = log.init_producer_id().unwrap();
    let mut b = BatchBuilder::new(Compression::None);
    b.producer(pid, epoch, 0);
    b.push(1, Some(b"k"), Some(b"v"), &[]);
    b.push(2, Some(b"k"), Some(b"v"), &[]);
    let batch = b.finish().unwrap().to_vec();
    let first = log.append("t", 0, &mut batch.clone()).unwrap();
    let retry = log.append("t", 0, &mut batch.clone()).unwrap();
    assert!(!first.duplicate && retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (first.base_offset, first.last_offset));
    assert_eq!(log.offsets("t", 0).unwrap().log_end_offset, 2);
    // A gap in sequence is refused.
    b.producer(pid, epoch, 5);
    b.push(3, None, Some(b"v"), &[]);
    let mut gap = b.finish().unwrap().to_vec();
    assert!(matches!(log.append("t", 0, &mut gap), Err(LogError::OutOfOrderSequence { expected: 2, .. })));
    // The retry is still recognised after a clean reopen.
    log.close().unwrap();
    drop(log);
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    assert!(log.append("t", 0, &mut batch.clone()).unwrap().duplicate);
}

#[test]
fn produced_garbage_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("max.message.bytes", "1000")])).unwrap();
    let mut bad = one_batch(3, 0);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(log.append("t", 0, &mut bad).is_err(), "bad CRC");
    assert!(log.append("t", 0, &mut vec![1, 2, 3]).is_err(), "truncated");
    assert!(log.append("t", 0, &mut one_batch(200, 0)).is_err(), "too large");
    assert_eq!(log.offsets("t", 0).unwrap().log_end_offset, 0);
}

#[test]
fn log_append_time_stamps_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("message.timestamp.type", "LogAppendTime")])).unwrap();
    let before = garam_core::time::now_ms();
    let info = log.append("t", 0, &mut one_batch(3, 5)).unwrap();
    assert!(info.log_append_time >= before);
    let data = log.read("t", 0, 0, 1 << 20).unwrap();
    for b in BatchIter::new(data.batches) {
        let b = b.unwrap();
        b.verify().unwrap();
        for r in b.records().unwrap() {
            assert_eq!(r.unwrap().timestamp, info.log_append_time);
        }
    }
}

#[test]
fn offsets_for_times_and_fetch_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("segment.bytes", "1024"), ("index.interval.bytes", "100")])).unwrap();
    for i in 0..50 {
        log.append("t", 0, &mut one_batch(2, 1000 + i * 10)).unwrap();
    }
    let p = log.partition("t", 0).unwrap();
    assert!(p.segment_count() > 3);
    // Batch i holds offsets 2i, 2i+1 with timestamps 1000+10i, 1001+10i.
    assert_eq!(log.offset_for_time("t", 0, 0).unwrap(), Some(0));
    assert_eq!(log.offset_for_time("t", 0, 1001).unwrap(), Some(1));
    assert_eq!(log.offset_for_time("t", 0, 1002).unwrap(), Some(2));
    assert_eq!(log.offset_for_time("t", 0, 1255).unwrap(), Some(52));
    assert_eq!(log.offset_for_time("t", 0, 99_999).unwrap(), None);
    // Fetch from the middle of a batch returns that batch; every offset is reachable.
    for o in 0..100 {
        let d = log.read("t", 0, o, 1).unwrap();
        let b = BatchIter::new(d.batches).next().unwrap().unwrap();
        assert!(b.header().base_offset as u64 <= o && o <= b.header().last_offset() as u64);
    }
    assert!(matches!(log.read("t", 0, 101, 100), Err(LogError::OffsetOutOfRange { .. })));
    assert!(log.read("t", 0, 100, 100).unwrap().batches.is_empty());
}

/// `max.poll.records` bounds every poll, across batches and partitions; a batch larger than the
/// limit is a poll of its own. What a poll holds back comes in the next: no record lost, none twice.
#[test]
fn a_poll_holds_at_most_max_poll_records_and_the_next_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 2, TopicConfig::default()).unwrap();
    for _ in 0..10 {
        log.append("t", 0, &mut one_batch(100, 0)).unwrap();
    }
    log.append("t", 1, &mut one_batch(1000, 0)).unwrap();
    let mut c = from_the_start(&log, "t", Some(250));
    let (mut seen, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let polled = c.poll(Duration::from_millis(20)).unwrap();
        if polled.is_empty() {
            break;
        }
        let mut n = 0;
        for part in &polled {
            for r in part.records() {
                seen.push((part.tp.partition, r.unwrap().offset));
                n += 1;
            }
            assert_eq!(c.position(&part.tp), Some(part.next_offset()), "the position follows what was returned");
        }
        sizes.push((polled.len(), n));
    }
    // Partition 0 comes in polls of two batches (200); partition 1's batch in a poll of its own.
    let mut sorted = sizes.clone();
    sorted.sort();
    assert_eq!(sorted, [vec![(1, 200); 5], vec![(1, 1000)]].concat(), "{sizes:?}");
    let expected: Vec<(u32, u64)> = (0..2).flat_map(|p| (0..1000).map(move |o| (p, o))).collect();
    seen.sort();
    assert_eq!(seen, expected, "every record once");
}

/// A `max.poll.records` of 0 is taken as 1 (Kafka refuses it): polls still move.
#[test]
fn a_max_poll_records_of_zero_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, TopicConfig::default()).unwrap();
    log.append("t", 0, &mut one_batch(5, 0)).unwrap();
    let mut c = from_the_start(&log, "t", Some(0));
    let polled = c.poll(Duration::from_millis(20)).unwrap();
    assert_eq!(polled.iter().map(|p| p.records().count()).sum::<usize>(), 5, "one whole batch");
}

#[test]
fn a_caught_up_consumer_waits_for_new_data() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 2, TopicConfig::default()).unwrap();
    let mut c = log.consumer(ConsumerConfig { topics: vec!["t".into()], ..Default::default() }).unwrap();
    let l2 = log.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        l2.append("t", 1, &mut one_batch(1, 0)).unwrap();
    });
    let start = Instant::now();
    let got = c.poll(Duration::from_secs(20)).unwrap();
    writer.join().unwrap();
    assert_eq!(got.iter().map(|p| p.records().count()).sum::<usize>(), 1);
    assert!(start.elapsed() < Duration::from_secs(15), "woken by the append, not the deadline");
    // And an empty poll returns at its deadline.
    assert!(c.poll(Duration::from_millis(50)).unwrap().is_empty());
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_tail_is_truncated_and_indexes_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let pdir;
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("t", 1, cfg(&[("segment.bytes", "2048"), ("index.interval.bytes", "64")])).unwrap();
        for i in 0..40 {
            log.append("t", 0, &mut one_batch(3, i)).unwrap();
        }
        pdir = log.partition("t", 0).unwrap().dir().to_path_buf();
        log.close().unwrap();
    }
    // Damage: a torn tail on the active segment, a garbage index on a closed one, and no clean marker.
    let segs = segment_files(&pdir);
    let active = segs.last().unwrap();
    let len = fs::metadata(active).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(active).unwrap();
    f.set_len(len - 7).unwrap();
    fs::write(segs[0].with_extension("index"), b"garbage!").unwrap();
    fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();

    let log = Log::open_with(dir.path(), quiet()).unwrap();
    let end = log.offsets("t", 0).unwrap().log_end_offset;
    assert_eq!(end, 117, "the torn last batch (3 records) is gone, the rest is intact");
    let all = read_all(&log, "t");
    assert_eq!(all.len(), 117);
    assert!(all.iter().enumerate().all(|(i, r)| r.1 == i as u64));
    // Appends continue after the truncation point.
    log.append("t", 0, &mut one_batch(1, 0)).unwrap();
    assert_eq!(log.offsets("t", 0).unwrap().log_end_offset, 118);
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pdir;
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("t", 1, TopicConfig::default()).unwrap();
        for i in 0..10 {
            log.append("t", 0, &mut one_batch(3, i)).unwrap();
        }
        pdir = log.partition("t", 0).unwrap().dir().to_path_buf();
    } // dropped: clean close
    let seg = segment_files(&pdir)[0].clone();
    let mut raw = fs::read(&seg).unwrap();
    raw[250] ^= 0xff; // inside the records of the 3rd batch (94 bytes each)
    fs::write(&seg, &raw).unwrap();
    fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();
    let err = Log::open_with(dir.path(), quiet()).unwrap_err().to_string();
    assert!(err.contains("00000000000000000000.log"), "{err}");
    assert!(err.contains("t-0"), "{err}");
    assert!(err.contains("at offset 6"), "the third batch holds offsets 6..=8: {err}");
}

#[test]
fn retention_deletes_old_and_excess_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("time", 1, cfg(&[("segment.bytes", "1024"), ("retention.ms", "60000")])).unwrap();
    log.create_topic("size", 1, cfg(&[("segment.bytes", "1024"), ("retention.bytes", "2048")])).unwrap();
    let now = garam_core::time::now_ms();
    for i in 0..40 {
        // The first half is two hours old.
        let ts = if i < 20 { now - 7_200_000 } else { now };
        log.append("time", 0, &mut one_batch(2, ts)).unwrap();
        log.append("size", 0, &mut one_batch(2, now)).unwrap();
    }
    log.run_cleaner(now).unwrap();
    let t = log.offsets("time", 0).unwrap();
    assert!(t.log_start_offset > 0 && t.log_start_offset <= 40, "{t:?}");
    let all = read_all(&log, "time");
    assert!(all.iter().all(|r| r.1 >= t.log_start_offset));
    let p = log.partition("size", 0).unwrap();
    assert!(p.size_bytes() <= 2048 + 1024, "{}", p.size_bytes());
    assert!(log.offsets("size", 0).unwrap().log_start_offset > 0);
    // A consumer that was behind the log start is reset, not stuck.
    let got = read_all(&log, "size");
    assert_eq!(got.len() as u64, 80 - log.offsets("size", 0).unwrap().log_start_offset);
}

#[test]
fn group_commit_shares_fsyncs_between_waiting_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("flush.messages", "1")])).unwrap();
    let threads = 8;
    let per_thread = 50;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let log = log.clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    // Returns only once the append is fsynced.
                    let info = log.append("t", 0, &mut one_batch(1, 0)).unwrap();
                    assert!(log.partition("t", 0).unwrap().flushed_offset() > info.last_offset);
                }
            });
        }
    });
    let p = log.partition("t", 0).unwrap();
    assert_eq!(p.offsets().log_end_offset, threads * per_thread);
    assert!(p.fsync_count() <= threads * per_thread, "at most one fsync per append");
    assert!(p.fsync_count() > 0);
}

#[test]
fn a_torn_segment_before_the_last_drops_everything_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let pdir;
    {
        let log = Log::open_with(dir.path(), quiet()).unwrap();
        log.create_topic("t", 1, cfg(&[("segment.bytes", "1024")])).unwrap();
        for i in 0..40 {
            log.append("t", 0, &mut one_batch(3, i)).unwrap();
        }
        pdir = log.partition("t", 0).unwrap().dir().to_path_buf();
    }
    let segs = segment_files(&pdir);
    assert!(segs.len() >= 3);
    // Power loss: the second segment lost its tail, later ones survived; no recovery point yet.
    let len = fs::metadata(&segs[1]).unwrap().len();
    fs::OpenOptions::new().write(true).open(&segs[1]).unwrap().set_len(len - 30).unwrap();
    fs::remove_file(dir.path().join(".clean-shutdown")).unwrap();
    fs::remove_file(pdir.join("recovery-point")).unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    let all = read_all(&log, "t");
    assert!(!all.is_empty());
    assert!(all.iter().enumerate().all(|(i, r)| r.1 == i as u64), "a gap-free prefix");
    let end = log.offsets("t", 0).unwrap().log_end_offset;
    assert_eq!(all.len() as u64, end);
    assert!(end < 120 && end % 3 == 0, "cut at a batch boundary inside the second segment: {end}");
    assert_eq!(log.partition("t", 0).unwrap().segment_count(), 2);
    // The recovered data counts as unflushed until it is fsynced again.
    let p = log.partition("t", 0).unwrap();
    assert!(p.flushed_offset() < end);
    p.flush().unwrap();
    assert_eq!(p.flushed_offset(), end);
}

#[test]
fn an_oversized_record_is_refused_without_losing_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("max.message.bytes", "2000")])).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for _ in 0..30 {
        p.send("t", Record::new(Some("k"), Some(vec![b'x'; 100]))).unwrap();
    }
    let err = p.send("t", Record::new(Some("k"), Some(vec![b'x'; 5000]))).unwrap_err();
    assert!(err.to_string().contains("max.message.bytes"), "{err}");
    p.flush().unwrap();
    assert_eq!(log.offsets("t", 0).unwrap().log_end_offset, 30, "every accepted record was written");
}

#[test]
fn delete_records_before_hides_records_and_retention_removes_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_with(dir.path(), quiet()).unwrap();
    log.create_topic("t", 1, cfg(&[("segment.bytes", "1024"), ("cleanup.policy", "compact")])).unwrap();
    for i in 0..40 {
        log.append("t", 0, &mut one_batch(3, i)).unwrap();
    }
    let p = log.partition("t", 0).unwrap();
    let before = p.segment_count();
    p.delete_records_before(60).unwrap();
    assert!(matches!(log.read("t", 0, 10, 100), Err(LogError::OffsetOutOfRange { .. })));
    p.apply_retention(0).unwrap();
    assert!(p.segment_count() < before);
    assert!(p.segment_base_offsets()[1] > 60, "only the segment holding offset 60 is kept before it");
    assert_eq!(read_all(&log, "t").first().map(|r| r.1), Some(60));
}
