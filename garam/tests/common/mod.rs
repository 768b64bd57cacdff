//! Helpers shared by the integration tests (the click-analytics ones, mostly).
#![allow(dead_code)]

use std::time::Duration;

use garam::analytics;
use garam::clicks::{ads, ClickConfig, ClickEvent, ClickGenerator};
use garam::core::Record;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::Log;
use serde::de::DeserializeOwned;

pub const PARTITIONS: u32 = 4;
pub const OUT_OF_ORDER_MS: i64 = 2_000;

/// Few users (so they have several sessions) at `per_second` events per second of event time.
pub fn events(n: usize, per_second: u64) -> Vec<ClickEvent> {
    generator(per_second).take(n).collect()
}

/// The events of [`events`], endless.
pub fn generator(per_second: u64) -> ClickGenerator {
    let config = ClickConfig {
        seed: 11,
        users: 500,
        pages: 40,
        events_per_second: per_second,
        out_of_order_ms: OUT_OF_ORDER_MS,
        ..ClickConfig::default()
    };
    ClickGenerator::new(config)
}

/// Creates the topics and produces the ad table and `events`.
pub fn produce(log: &Log, events: &[ClickEvent]) {
    analytics::create_topics(log, PARTITIONS).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for ad in ads() {
        p.send("ads", Record::new(Some(ad.ad_id.clone()), Some(serde_json::to_vec(&ad).unwrap()))).unwrap();
    }
    p.flush().unwrap();
    produce_events(log, events);
}

/// Appends `events` to `clicks`.
pub fn produce_events(log: &Log, events: &[ClickEvent]) {
    let mut p = log.producer(Default::default()).unwrap();
    for e in events {
        let r = Record::new(Some(e.user_id.clone()), Some(serde_json::to_vec(e).unwrap())).with_timestamp(e.event_time);
        p.send("clicks", r).unwrap();
    }
    p.flush().unwrap();
}

/// The committed values of `topic`, decoded from JSON.
pub fn read<T: DeserializeOwned>(log: &Log, topic: &str) -> Vec<T> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: true,
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
                out.push(serde_json::from_slice(&r.unwrap().value.unwrap()).unwrap());
            }
        }
    }
    out
}

/// What the kills of a crash test landed on.
#[derive(Debug)]
pub struct Kills {
    /// Kills in all.
    pub kills: usize,
    /// Kills that interrupted work: the run had committed progress, and input was left.
    pub interrupted: usize,
    /// Input records produced in all.
    pub input: u64,
}

/// Starts the app under test with `start` and SIGKILLs it some milliseconds later, again and
/// again, until `wanted` kills have interrupted work — the run committed progress before its
/// kill, and input was left — or `max_kills` kills in all. Before each start, `produce(n)` appends
/// `n` more input records, topping the input up to twice what the fastest run so far committed in
/// its window (`min_backlog` at least). With all the input written up front, a run drained it
/// before the first or second kill and the later kills hit an idle app. `committed()` reads the
/// app's committed input offsets, summed over its partitions. Counting kills rather than asserting
/// a share of them keeps the test independent of the machine's speed.
///
/// The kill moments are drawn from a window `max_ms - 50` ms wide that starts at 50 ms and moves
/// later whenever a kill lands before the run committed anything, to that kill's moment: a run's
/// start (opening the log, restoring its stores — longer with every run under exactly-once) takes
/// what it takes on a slow machine, and kills that all land before the first commit would use up
/// `max_kills` without interrupting any work.
pub fn kill_until_interrupted(
    wanted: usize,
    max_kills: usize,
    max_ms: u64,
    min_backlog: u64,
    seed: u64,
    mut produce: impl FnMut(u64),
    mut start: impl FnMut() -> std::process::Child,
    mut committed: impl FnMut() -> u64,
) -> Kills {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mut end, mut done, mut per_ms) = (0u64, 0u64, 0u64);
    let (mut earliest, width) = (50u64, max_ms.saturating_sub(50).max(1));
    let mut k = Kills { kills: 0, interrupted: 0, input: 0 };
    while k.interrupted < wanted && k.kills < max_kills {
        let want = done + (2 * per_ms * (earliest + width)).max(min_backlog);
        if end < want {
            produce(want - end);
            end = want;
        }
        let ms = rng.gen_range(earliest..earliest + width);
        let mut child = start();
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        k.kills += 1;
        let now = committed();
        if now > done {
            k.interrupted += usize::from(now < end);
            // A run that got through all its input was faster than it shows.
            let rate = (now - done).div_ceil(ms);
            per_ms = per_ms.max(if now >= end { 4 * rate } else { rate });
        } else if now < end {
            // Killed before its first commit: the next kills come later.
            earliest = earliest.max(ms);
        }
        done = now;
    }
    k.input = end;
    eprintln!("{k:?}");
    assert!(k.interrupted >= wanted, "only {} of {} kills interrupted work: {k:?}", k.interrupted, k.kills);
    k
}

/// Waits up to 30 s for `ok`, failing the test with `what` after that.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Counts the records of `in` per key into the store `counts`, writing every count to `out`;
/// the first record whose value is "slow" stalls its worker for `stall` in an operator.
pub fn count_stalling_once(stall: Duration) -> garam::core::topology::Topology {
    use garam::prelude::*;
    let stalled = std::sync::atomic::AtomicBool::new(false);
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .map_values(move |v: String| {
            if v == "slow" && !stalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(stall);
            }
            v
        })
        .group_by_key()
        .count(Materialized::named("counts").with(StringSerde, U64Serde))
        .to_stream()
        .to("out", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}
