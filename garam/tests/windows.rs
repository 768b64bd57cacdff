//! Windows over several partitions, a repartition and worker threads: results equal a batch
//! computation and do not depend on how a backlog is interleaved — the property Kafka Streams'
//! per-task stream time lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use garam::core::partitioner::partition_for_key;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use rand::{Rng, SeedableRng};

const PARTITIONS: u32 = 4;
const OUT_OF_ORDER_MS: i64 = 300;

fn windowed() -> WindowedSerde<String> {
    WindowedSerde(Arc::new(StringSerde) as Arc<dyn Serde<String>>)
}

/// Views per page (re-keyed from user: through a repartition topic) in 1 s tumbling windows,
/// emitted on close; and views per user in 1 s windows every 250 ms.
fn topology() -> garam::core::topology::Topology {
    let b = StreamBuilder::new();
    let clicks = b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde));
    clicks
        .group_by(|_user, page| page.clone(), Grouped::named("by-page").with(StringSerde, StringSerde))
        .windowed_by(TimeWindows::of(Duration::from_secs(1)), EmitStrategy::OnWindowClose)
        .count(Materialized::named("page-views"))
        .to_stream()
        .to("page-views", Produced::with(windowed(), U64Serde));
    clicks
        .group_by_key()
        .windowed_by(
            TimeWindows::of(Duration::from_secs(1)).advance_by(Duration::from_millis(250)),
            EmitStrategy::OnWindowClose,
        )
        .count(Materialized::named("user-views"))
        .to_stream()
        .to("user-views", Produced::with(windowed(), U64Serde));
    b.build().unwrap()
}

/// `(user, page, event time)`: event time rises 10 ms per record with up to 300 ms of disorder,
/// so within any partition no record is more than 300 ms behind the records before it.
fn events(n: usize) -> Vec<(String, String, i64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let t = 1_000_000 + 10 * i as i64 - rng.gen_range(0..OUT_OF_ORDER_MS);
            (format!("u{}", rng.gen_range(0..40)), format!("p{}", rng.gen_range(0..12)), t)
        })
        .collect()
}

fn batch_counts(
    events: &[(String, String, i64)],
    key: impl Fn(&(String, String, i64)) -> String,
    windows: TimeWindows,
) -> BTreeMap<Windowed<String>, u64> {
    let mut m = BTreeMap::new();
    for e in events {
        for window in windows.windows_for(e.2) {
            *m.entry(Windowed { key: key(e), window }).or_insert(0) += 1;
        }
    }
    m
}

fn read(log: &Log, topic: &str) -> Vec<(Windowed<String>, u64)> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: true,
            ..Default::default()
        })
        .unwrap();
    let serde = windowed();
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(50)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                let r = r.unwrap();
                let k = serde.deserialize(&r.key.unwrap()).unwrap();
                out.push((k, U64Serde.deserialize(&r.value.unwrap()).unwrap()));
            }
        }
    }
    out
}

/// Produces the events, partition by partition when `skewed` (one partition's whole backlog
/// before the next: consumed unevenly), else in event order; runs the app to the end of input.
fn run(events: &[(String, String, i64)], skewed: bool, threads: usize, eos: bool) -> [Vec<(Windowed<String>, u64)>; 2] {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    for t in ["clicks", "page-views", "user-views"] {
        log.create_topic(t, PARTITIONS, TopicConfig::default()).unwrap();
    }
    let mut order: Vec<&(String, String, i64)> = events.iter().collect();
    if skewed {
        order.sort_by_key(|e| std::cmp::Reverse(partition_for_key(e.0.as_bytes(), PARTITIONS)));
    }
    let mut p = log.producer(Default::default()).unwrap();
    for (user, page, t) in order {
        p.send("clicks", garam::core::Record::new(Some(user.clone()), Some(page.clone())).with_timestamp(*t)).unwrap();
    }
    p.flush().unwrap();
    let mut config = AppConfig::new("windows");
    config.num_threads = threads;
    config.set("max.out.of.orderness.ms", &OUT_OF_ORDER_MS.to_string()).unwrap();
    config.set("max.poll.records", "500").unwrap();
    if eos {
        config.set("processing.guarantee", "exactly_once_v2").unwrap();
    }
    let mut app = App::new(topology(), config, Arc::new(log.clone())).unwrap();
    app.run_to_end(Duration::from_millis(300)).unwrap();
    assert_eq!(app.metrics().late_records, 0, "no record is behind its partition by more than the bound");
    [read(&log, "page-views"), read(&log, "user-views")]
}

fn as_map(out: &[(Windowed<String>, u64)]) -> BTreeMap<Windowed<String>, u64> {
    let map: BTreeMap<_, _> = out.iter().cloned().collect();
    assert_eq!(map.len(), out.len(), "a window was emitted twice");
    map
}

#[test]
fn windowed_counts_equal_the_batch_result_however_the_backlog_is_interleaved() {
    let events = events(6_000);
    let pages = batch_counts(&events, |e| e.1.clone(), TimeWindows::of(Duration::from_secs(1)));
    let users = batch_counts(
        &events,
        |e| e.0.clone(),
        TimeWindows::of(Duration::from_secs(1)).advance_by(Duration::from_millis(250)),
    );
    for (skewed, threads, eos) in [(false, 1, false), (true, 2, false), (true, 1, true)] {
        let [page_out, user_out] = run(&events, skewed, threads, eos);
        assert_eq!(as_map(&page_out), pages, "pages: skewed {skewed}, {threads} threads, eos {eos}");
        assert_eq!(as_map(&user_out), users, "users: skewed {skewed}, {threads} threads, eos {eos}");
    }
}

#[test]
fn an_idle_upstream_partition_does_not_hold_windows_open() {
    // Only partition 0 has data. Downstream of the repartition, windows close only if the idle
    // upstream task of partition 1 is left out of the minimum.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    for t in ["clicks", "page-views", "user-views"] {
        log.create_topic(t, 2, TopicConfig::default()).unwrap();
    }
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..200i64 {
        let r = garam::core::Record::new(Some(format!("u{}", i % 3)), Some(format!("p{}", i % 2)))
            .with_timestamp(1_000 * i);
        p.send_to("clicks", Some(0), r).unwrap();
    }
    p.flush().unwrap();
    let mut config = AppConfig::new("idle");
    config.num_threads = 1;
    config.set("watermark.idle.timeout.ms", "200").unwrap();
    let mut app = App::new(topology(), config, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pages = Vec::new();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        pages = read(&log, "page-views");
        if pages.len() >= 199 {
            break;
        }
    }
    app.close().unwrap();
    // Windows of 1 s: every one but the last closes (the watermark is the last event's time).
    let closed: BTreeMap<Windowed<String>, u64> = pages.into_iter().collect();
    assert_eq!(closed.len(), 199, "windows closed without end of input: {}", closed.len());
    assert!(closed.values().all(|n| *n == 1));
}
