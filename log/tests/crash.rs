//! Crash safety: a child process appends and commits in a loop and is SIGKILLed at random moments.
//! After every kill the log must be a gap-free prefix of what was sent, hold every record the child
//! reported as flushed, read back without a CRC error, and committed offsets must never go backwards.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use garam_core::Record;
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::group::TopicPartition;
use garam_log::{Log, LogOptions, TopicConfig};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "GARAM_CRASH_CHILD_DIR";
const PARTITIONS: u32 = 3;

fn small_segments() -> TopicConfig {
    let mut c = TopicConfig::default();
    c.set("segment.bytes", "65536").unwrap();
    c
}

/// The child: runs only when the parent re-executes this test binary with `CHILD_ENV` set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = Log::open_with(&dir, LogOptions { background: true, ..Default::default() }).unwrap();
    log.ensure_topic("t", PARTITIONS, small_segments()).unwrap();
    let mut producer = log.producer(Default::default()).unwrap();
    // Continue each partition's sequence where the log ends: the log is a prefix of what was sent.
    let mut next: Vec<u64> = (0..PARTITIONS).map(|p| log.offsets("t", p).unwrap().log_end_offset).collect();
    let mut out = std::io::stdout().lock();
    let mut rng = rand::rngs::SmallRng::from_entropy();
    loop {
        for p in 0..PARTITIONS {
            for _ in 0..rng.gen_range(1..50) {
                let v = format!("{p}:{}", next[p as usize]);
                producer.send_to("t", Some(p), Record::new(Some(v.clone()), Some(v))).unwrap();
                next[p as usize] += 1;
            }
        }
        producer.flush_durable().unwrap();
        // Everything up to `next` is fsynced: tell the parent.
        writeln!(out, "flushed {}", next.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")).unwrap();
        // Commit, per partition, an offset that only grows.
        let offsets: Vec<_> = (0..PARTITIONS).map(|p| (TopicPartition::new("t", p), next[p as usize] / 2)).collect();
        log.groups().commit("g", None, &offsets, "").unwrap();
        writeln!(out, "committed {}", offsets.iter().map(|o| o.1.to_string()).collect::<Vec<_>>().join(" ")).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn log_survives_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut flushed = vec![0u64; PARTITIONS as usize];
    let mut committed = vec![0u64; PARTITIONS as usize];
    let kills = 25;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it get going: wait for its first report, then a random extra moment.
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines() {
                match l {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let mut parts = line.split_whitespace();
            let kind = parts.next();
            let nums: Vec<u64> = parts.filter_map(|n| n.parse().ok()).collect();
            if nums.len() != PARTITIONS as usize {
                continue; // a torn last line
            }
            match kind {
                Some("flushed") => flushed = nums,
                Some("committed") => committed = nums,
                _ => {}
            }
        }

        let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
        if log.topic("t").is_err() {
            continue; // killed before the topic existed
        }
        let mut c = log
            .consumer(ConsumerConfig {
                topics: vec!["t".into()],
                auto_offset_reset: OffsetReset::Earliest,
                ..Default::default()
            })
            .unwrap();
        let ends: Vec<u64> = (0..PARTITIONS).map(|p| log.offsets("t", p).unwrap().log_end_offset).collect();
        let mut seen = vec![0u64; PARTITIONS as usize];
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen != ends && Instant::now() < deadline {
            for part in c.poll(Duration::from_millis(100)).unwrap() {
                for r in part.records() {
                    let r = r.unwrap_or_else(|e| panic!("round {round}: read error {e}"));
                    let p = part.tp.partition as usize;
                    let expected = format!("{p}:{}", seen[p]);
                    assert_eq!(r.offset, seen[p], "round {round}: gap in partition {p}");
                    assert_eq!(
                        r.value.as_deref(),
                        Some(expected.as_bytes()),
                        "round {round}: partition {p} offset {}",
                        r.offset
                    );
                    seen[p] += 1;
                }
            }
        }
        assert_eq!(seen, ends, "round {round}: could not read everything back");
        for p in 0..PARTITIONS as usize {
            assert!(
                ends[p] >= flushed[p],
                "round {round}: partition {p} lost flushed records ({} < {})",
                ends[p],
                flushed[p]
            );
            let got = log.groups().committed("g", &TopicPartition::new("t", p as u32)).map_or(0, |c| c.offset);
            assert!(got >= committed[p], "round {round}: committed offset went backwards ({got} < {})", committed[p]);
            committed[p] = got;
        }
        drop(c);
        log.close().unwrap();
    }
    assert!(flushed.iter().sum::<u64>() > 0, "the child never got to flush");
}
