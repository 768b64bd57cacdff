//! State across members: a task moves to another member, restores its store, and counts on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;

mod common;
use common::wait_for;

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

/// A restore longer than the session timeout: the worker restores in steps and keeps polling, so
/// it stays in its group — the store is restored once, not over and over after each expiry.
#[test]
fn a_restore_longer_than_the_session_timeout_keeps_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    log.create_topic("counter-counts-changelog", 1, TopicConfig::default()).unwrap();
    // A changelog as a previous owner left it: 300 000 keys, each counted to 7.
    let n = 300_000u64;
    let mut p = log.producer(Default::default()).unwrap();
    let mut value = vec![1u8];
    value.extend_from_slice(&7u64.to_be_bytes());
    for i in 0..n {
        p.send_to(
            "counter-counts-changelog",
            Some(0),
            garam::core::Record::new(Some(format!("k{i}")), Some(value.clone())),
        )
        .unwrap();
    }
    p.flush().unwrap();
    drop(p);
    produce(&log, 0, 50);
    let mut c = AppConfig::new("counter");
    c.num_threads = 1;
    c.session_timeout = Duration::from_millis(300);
    c.state_dir = Some(dir.path().join("state"));
    let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    app.set_restore_listener(move |p| r2.lock().unwrap().push((p.clone(), std::time::Instant::now())));
    let started = std::time::Instant::now();
    app.start().unwrap();
    // Interactive queries say the store is restoring, then answer from the restored state.
    let store = app.store::<String, u64>("counts").unwrap();
    let mut restoring_seen = false;
    let value = loop {
        match store.get(&"k123456".to_string()) {
            Err(garam::core::StreamsError::StoreRestoring { .. }) => restoring_seen = true,
            // Before the first assignment.
            Err(garam::core::StreamsError::NotHosted { .. }) => {}
            Ok(v) => break v,
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(restoring_seen, "queries during the restore are refused");
    assert_eq!(value, Some(7));
    app.run_until_idle(Duration::from_millis(200)).unwrap();
    let m = app.metrics();
    assert_eq!(m.partitions_lost, 0, "the member kept its session while restoring: {m:?}");
    assert_eq!(m.restored, n);
    let reports = reports.lock().unwrap();
    let took = reports.last().unwrap().1 - reports[0].1;
    eprintln!("restore took {took:?}");
    let reports: Vec<_> = reports.iter().map(|(p, _)| p.clone()).collect();
    let done: Vec<_> = reports.iter().filter(|p| p.done).collect();
    assert_eq!(done.len(), 1, "restored once, in {:?}: {done:?}", started.elapsed());
    assert_eq!(done[0].restored, n);
    assert!(reports.len() > 1, "progress is reported while restoring");
    // Counting went on from the restored values: k0..k49 were at 7, plus one each.
    let counts = latest_counts(&log, false);
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|c| *c == 8), "{counts:?}");
}

/// With `num.standby.replicas=1`, each of two instances keeps a warm copy of the other's task;
/// when one leaves, the other takes its task over restoring only the changelog's tail.
#[test]
fn standby_replicas_make_failover_restore_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let make = |state: &str| {
        let mut c = AppConfig::new("standby");
        c.num_threads = 1;
        c.commit_interval = Duration::from_millis(50);
        c.state_dir = Some(dir.path().join(state));
        c.set("num.standby.replicas", "1").unwrap();
        App::new(topology(false), c, Arc::new(log.clone())).unwrap()
    };
    let mut a = make("a");
    a.start().unwrap();
    let mut b = make("b");
    b.start().unwrap();
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("one task each", &|| {
        a.metrics().tasks.values().flatten().count() == 1 && b.metrics().tasks.values().flatten().count() == 1
    });
    // 20 000 distinct keys: every count is 1, and the changelog has a record per key.
    let n = 20_000u64;
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..n {
        p.send("in", garam::core::Record::new(Some(format!("key-{i}")), Some("x"))).unwrap();
    }
    p.flush().unwrap();
    wait("the input", &|| a.metrics().records_in + b.metrics().records_in == n);
    let changelog_end = |p: u32| log.partition("standby-counts-changelog", p).unwrap().high_watermark();
    // Every key's count has reached the changelog (one record each), and the standbys have it.
    wait("the standbys to catch up", &|| {
        let (ma, mb) = (a.metrics(), b.metrics());
        changelog_end(0) + changelog_end(1) == n
            && ma.standby_tasks == 1
            && mb.standby_tasks == 1
            && ma.standby_lag == 0
            && mb.standby_lag == 0
            && mb.standby_restored > 0
    });
    let restored_before = b.metrics().restored;
    a.close().unwrap();
    wait("the takeover", &|| b.metrics().tasks.values().flatten().count() == 2 && b.metrics().total_lag() == 0);
    let tail = b.metrics().restored - restored_before;
    let full = changelog_end(0).min(changelog_end(1));
    assert!(tail * 10 < full, "failover restored {tail} of a {full}-record changelog");
    let store = b.store::<String, u64>("counts").unwrap();
    wait("every count", &|| store.all().map(|all| all.len() as u64 == n).unwrap_or(false));
    assert!(store.all().unwrap().iter().all(|(_, c)| *c == 1));
    b.close().unwrap();
}

/// Caches hold updates between commits; a rebalance must flush them into the changelog before it
/// commits the offsets of the partitions it gives away, or their new owner restores counts that
/// miss updates whose input will never be read again.
#[test]
fn a_rebalance_flushes_store_caches_before_committing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let make = |state: &str| {
        let mut c = AppConfig::new("cached");
        c.num_threads = 1;
        // No periodic commit during the test: only rebalances and closes commit.
        c.commit_interval = Duration::from_secs(600);
        c.state_dir = Some(dir.path().join(state));
        App::new(topology(false), c, Arc::new(log.clone())).unwrap()
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    produce(&log, 0, 2000);
    let mut a = make("a");
    a.start().unwrap();
    wait("the first input", &|| a.metrics().records_in == 2000);
    // B joins: A revokes its partitions with the updates of 2000 records still in its cache.
    let mut b = make("b");
    b.start().unwrap();
    wait("the rebalance", &|| {
        a.metrics().tasks.values().flatten().count() == 1 && b.metrics().tasks.values().flatten().count() == 1
    });
    produce(&log, 2000, 4000);
    wait("the second input", &|| {
        let (ma, mb) = (a.metrics(), b.metrics());
        ma.total_lag() == 0 && mb.total_lag() == 0 && mb.records_in > 0 && mb.restoring_tasks == 0
    });
    a.close().unwrap();
    b.close().unwrap();
    let counts = latest_counts(&log, false);
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|n| *n == 80), "{counts:?}");
}

/// Waits until each of the app's two threads holds its task, for input that should land in the
/// tasks' caches: a task that moves restores into its store, not its cache.
fn wait_for_a_task_per_thread(app: &App, deadline: std::time::Instant) {
    while app.metrics().tasks.values().filter(|t| t.len() == 1).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "timed out: {:?}", app.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The store caches' bytes are reported while an app runs: what the 50 keys' entries are
/// charged, within the budget; nothing with caching off, nor once the app has closed.
#[test]
fn store_cache_bytes_are_reported() {
    for cache_max in [None, Some("0")] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("in", 2, TopicConfig::default()).unwrap();
        log.create_topic("out", 2, TopicConfig::default()).unwrap();
        let mut c = AppConfig::new("cache-bytes");
        c.num_threads = 2;
        c.state_dir = Some(dir.path().join("state"));
        if let Some(max) = cache_max {
            c.set("statestore.cache.max.bytes", max).unwrap();
        }
        let budget = c.cache_bytes();
        let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
        app.start().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        wait_for_a_task_per_thread(&app, deadline);
        produce(&log, 0, 1000);
        // 50 keys of 2–3 bytes with 9-byte values: each at least its slot's 76-byte charge, once
        // both threads have reported (each every 100 ms).
        let least = if cache_max.is_some() { 0 } else { 50 * 76 };
        let reported = loop {
            let m = app.metrics();
            if m.records_in == 1000 && m.store_cache_bytes >= least {
                // A few more reports: nothing changes them now.
                std::thread::sleep(Duration::from_millis(250));
                break app.metrics().store_cache_bytes;
            }
            assert!(std::time::Instant::now() < deadline, "timed out: {m:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        if cache_max.is_some() {
            assert_eq!(reported, 0, "caching is off");
        } else {
            assert!((least..=budget).contains(&reported), "{reported} bytes for 50 keys, budget {budget}");
        }
        app.close().unwrap();
        assert_eq!(app.metrics().store_cache_bytes, 0, "a closed app's workers hold no cache");
    }
}

/// Each store's counts (the metered layer) reach `App::metrics`, summed over its tasks, and stay
/// once the tasks close: one read and one write per record, the cache answering all but each
/// key's first read, the backend written when the tasks close (and counted then).
#[test]
fn store_counts_are_reported_per_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let mut c = AppConfig::new("store-counts");
    c.num_threads = 2;
    c.state_dir = Some(dir.path().join("state"));
    // No commit during the test: the caches reach RocksDB only when the tasks close.
    c.commit_interval = Duration::from_secs(600);
    let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    wait_for_a_task_per_thread(&app, deadline);
    produce(&log, 0, 1000);
    let counts = || app.metrics().stores.get("counts").copied().unwrap_or_default();
    while counts().writes < 1000 {
        assert!(std::time::Instant::now() < deadline, "timed out: {:?}", app.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = counts();
    assert_eq!((m.gets, m.writes), (1000, 1000), "{m:?}");
    assert_eq!(m.cache_hits, 950, "every read but each of the 50 keys' first: {m:?}");
    assert_eq!((m.backend_writes, m.flushes), (0, 0), "nothing committed or evicted yet: {m:?}");
    app.close().unwrap();
    let m = app.metrics().stores["counts"];
    assert_eq!(m.writes, 1000, "the counts outlive the tasks");
    assert!(m.backend_writes >= 50 && m.flushes >= 1, "closing wrote the caches to RocksDB: {m:?}");
}

/// The checkpoint offsets of every task directory under `state`, by store.
fn checkpoints(state: &std::path::Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(apps) = std::fs::read_dir(state) else { return out };
    for task in apps.flatten().filter_map(|a| std::fs::read_dir(a.path()).ok()).flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join(".checkpoint")) else { continue };
        for (store, offset) in text.lines().skip(1).filter_map(|l| l.rsplit_once(' ')) {
            *out.entry(store.to_string()).or_default() += offset.parse::<u64>().unwrap();
        }
    }
    out
}

/// At-least-once: a running app checkpoints its stores every `statestore.checkpoint.interval.ms`,
/// not only when it closes, so that a restart after a crash replays only the changelog's tail.
#[test]
fn a_running_app_checkpoints_its_stores_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let mut c = AppConfig::new("checkpoints");
    c.num_threads = 1;
    c.commit_interval = Duration::from_millis(50);
    c.set("statestore.checkpoint.interval.ms", "100").unwrap();
    c.state_dir = Some(dir.path().join("state"));
    let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    let changelog_end = || log.offsets("checkpoints-counts-changelog", 0).map(|o| o.high_watermark).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    for round in 1..=3 {
        produce(&log, 0, 1000);
        // Every record counted and sent to the changelog, and the checkpoint up to its end.
        loop {
            let end = changelog_end();
            let at = checkpoints(&dir.path().join("state")).get("counts").copied().unwrap_or(0);
            if app.metrics().records_in == 1000 * round && end > last && at == end {
                last = at;
                break;
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: checkpoint at {at}, changelog end {end}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    app.close().unwrap();
}

/// A log with 1000 records over two partitions of `in`, and an app `app_id` (one thread, its
/// settings `config`) whose task `0_1` finds its state directory locked: by the file returned,
/// until it is dropped.
fn app_with_a_locked_task(app_id: &str, config: &[(&str, &str)]) -> (tempfile::TempDir, Log, std::fs::File, App) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    produce(&log, 0, 1000);
    let state = dir.path().join("state");
    let task_dir = state.join(app_id).join("0_1");
    std::fs::create_dir_all(&task_dir).unwrap();
    let held =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(task_dir.join(".lock")).unwrap();
    held.lock().unwrap();
    let mut c = AppConfig::new(app_id);
    c.num_threads = 1;
    c.state_dir = Some(state);
    for (key, value) in config {
        c.set(key, value).unwrap();
    }
    let app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
    (dir, log, held, app)
}

#[test]
fn a_state_directory_locked_past_the_task_timeout_fails_the_app_naming_it() {
    let (dir, _log, held, mut app) = app_with_a_locked_task("stuck", &[("task.timeout.ms", "1500")]);
    let started = std::time::Instant::now();
    let err = app.run_until_shutdown().unwrap_err().to_string();
    assert!(started.elapsed() >= Duration::from_millis(1500), "it waited task.timeout.ms first");
    assert!(err.contains("0_1") && err.contains("task.timeout.ms"), "names the task and the setting: {err}");
    assert!(err.contains(&dir.path().join("state").display().to_string()), "names the directory: {err}");
    assert_eq!(app.status(), garam::core::runtime::AppStatus::Failed);
    drop(held);
}

/// A task whose state directory is locked by its previous owner (here the test, holding it for
/// three session timeouts) waits with its input paused while the worker keeps polling: the member
/// stays in its group, and once the lock is let go the task opens and counts everything.
#[test]
fn a_task_waits_for_its_locked_state_directory_without_leaving_its_group() {
    let (_dir, log, held, mut app) = app_with_a_locked_task("locked", &[("session.timeout.ms", "1000")]);
    app.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The other task counts its half; the locked one waits.
    while app.metrics().records_in == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing counted: {:?}", app.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(3));
    let waiting = app.metrics();
    assert!(waiting.records_in < 1000, "the locked task's records wait: {waiting:?}");
    drop(held);
    while app.metrics().records_in < 1000 {
        assert!(std::time::Instant::now() < deadline, "the task never opened: {:?}", app.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = app.metrics();
    assert_eq!(m.partitions_lost, 0, "the member never dropped out of its group: {m:?}");
    app.close().unwrap();
    assert!(latest_counts(&log, false).values().all(|n| *n == 20), "every key counted once");
}

/// A versioned count, as the count store writes it to its changelog.
fn versioned_count(n: u64) -> Vec<u8> {
    let mut v = vec![garam::core::state::VALUE_FORMAT_VERSION];
    v.extend_from_slice(&n.to_be_bytes());
    v
}

fn write_changelog(log: &Log, topic: &str, records: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let mut p = log.producer(Default::default()).unwrap();
    for (k, v) in records {
        p.send(topic, garam::core::Record::new(Some(k), Some(v))).unwrap();
    }
    p.flush().unwrap();
}

/// A task's checkpoint names the changelog offset its store holds, not wherever the changelog
/// has got to when the checkpoint is written: after a rebalance the partitions' next owner may
/// already have written more, which this store never received.
#[test]
fn a_checkpoint_names_what_the_store_holds_not_what_the_changelog_gained_since() {
    use garam::core::runtime::stores::{BackendReader, TaskStores};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let changelog = "moved-counts-changelog";
    log.create_topic(changelog, 1, TopicConfig::default()).unwrap();
    write_changelog(&log, changelog, (0..5).map(|i| (format!("k{i}"), versioned_count(i))));
    let state = dir.path().join("state");
    let reader = BackendReader(&log);
    let ctx = AppConfig::new("moved").new_store_context();
    let task = garam::core::processor::TaskId { subtopology: 0, partition: 0 };
    let topology = topology(false);
    let mut stores = TaskStores::open(&topology, "moved", &state, task, &reader, false, &ctx, None).unwrap().unwrap();
    stores.restore_all(&reader, None).unwrap();
    // The partition has moved on: its next owner writes three more before this one checkpoints.
    write_changelog(&log, changelog, (5..8).map(|i| (format!("k{i}"), versioned_count(i))));
    stores.checkpoint().unwrap();
    let checkpoint = || std::fs::read_to_string(state.join("moved").join("0_0").join(".checkpoint")).unwrap();
    assert_eq!(checkpoint(), "v1\ncounts 5\n");
    // A commit while the task is still here: the changelog's end is then what the store holds.
    stores.note_committed(&reader).unwrap();
    stores.checkpoint().unwrap();
    assert_eq!(checkpoint(), "v1\ncounts 8\n");
}

/// A checkpoint past its changelog's end (a power cut lost the changelog's tail, or the topic
/// was deleted and made again, as an application reset does) means the store is ahead of its
/// changelog: it is wiped and rebuilt, as Kafka Streams does, not kept and counted on.
#[test]
fn a_checkpoint_past_the_changelogs_end_wipes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    produce(&log, 0, 100);
    let run = || {
        let mut c = AppConfig::new("reset");
        c.num_threads = 1;
        c.state_dir = Some(dir.path().join("state"));
        let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
        app.run_until_idle(Duration::from_millis(200)).unwrap();
        app.metrics()
    };
    run();
    assert!(latest_counts(&log, false).values().all(|n| *n == 2));
    // An application reset that keeps the state directory: the changelog, the group's offsets
    // and the output start again empty.
    for topic in ["reset-counts-changelog", "out"] {
        log.delete_topic(topic).unwrap();
    }
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    log.delete_group("reset").unwrap();
    let m = run();
    let counts = latest_counts(&log, false);
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|n| *n == 2), "counted from scratch, not on top of the old store: {counts:?} {m:?}");
}

/// A changelog record a store cannot read fails the restore with the changelog's topic,
/// partition and offset named, rather than a bare complaint or a silent skip.
#[test]
fn a_bad_changelog_record_fails_the_restore_naming_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let changelog = "bad-counts-changelog";
    log.create_topic(changelog, 1, TopicConfig::default()).unwrap();
    write_changelog(&log, changelog, (0..7).map(|i| (format!("k{i}"), versioned_count(i))));
    write_changelog(&log, changelog, [("k7".to_string(), vec![9, 0, 0, 0, 0, 0, 0, 0, 1])]);
    let mut c = AppConfig::new("bad");
    c.num_threads = 1;
    c.state_dir = Some(dir.path().join("state"));
    let mut app = App::new(topology(false), c, Arc::new(log.clone())).unwrap();
    let err = app.run_until_shutdown().unwrap_err().to_string();
    for part in ["bad-counts-changelog-0", "offset 7", "format version 9"] {
        assert!(err.contains(part), "names {part}: {err}");
    }
}

/// Partitions lost without a commit (the member's session expired while an operator ran) are
/// closed without a checkpoint, as Kafka Streams closes them dirty. A checkpoint then would vouch
/// for a store holding updates the changelog never got: counted again when the records are
/// read again from the last committed offset.
#[test]
fn partitions_lost_without_a_commit_are_not_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    produce(&log, 0, 100);
    let mut p = log.producer(Default::default()).unwrap();
    p.send("in", garam::core::Record::new(Some("k0"), Some("slow"))).unwrap();
    p.flush().unwrap();
    let mut c = AppConfig::new("lost");
    c.num_threads = 1;
    c.state_dir = Some(dir.path().join("state"));
    for (key, value) in [
        ("session.timeout.ms", "1000"),
        ("commit.interval.ms", "600000"),
        ("statestore.checkpoint.interval.ms", "3600000"),
    ] {
        c.set(key, value).unwrap();
    }
    let mut app = App::new(common::count_stalling_once(Duration::from_secs(3)), c, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.metrics().partitions_lost == 0 || app.metrics().records_in < 202 {
        assert!(std::time::Instant::now() < deadline, "{:?}", app.metrics());
        std::thread::sleep(Duration::from_millis(10));
    }
    let checkpoint = dir.path().join("state").join("lost").join("0_0").join(".checkpoint");
    assert!(!checkpoint.exists(), "the lost task was closed without a checkpoint");
    app.close().unwrap();
    let counts = latest_counts(&log, false);
    assert_eq!(counts.len(), 50);
    assert_eq!(counts["k0"], 3, "{counts:?}");
    assert!(counts.iter().filter(|(k, _)| *k != "k0").all(|(_, n)| *n == 2), "counted once: {counts:?}");
}

/// Under exactly-once a store runs ahead of the last commit: its writes reach RocksDB (here at
/// once, with no cache) before the transaction that logs them commits, and a database closed
/// without a WAL flushes them to disk. After an unclean stop the store must not resume from the
/// checkpoint of an earlier clean stop: it would keep the aborted updates and count the records
/// again on top of them. It is wiped and rebuilt from the committed changelog instead.
#[test]
fn after_an_unclean_stop_under_exactly_once_the_store_is_wiped_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let app = |settings: &[(&str, &str)]| {
        let mut c = AppConfig::new("unclean");
        c.num_threads = 1;
        c.state_dir = Some(dir.path().join("state"));
        c.set("processing.guarantee", "exactly-once").unwrap();
        c.set("statestore.cache.max.bytes", "0").unwrap();
        for (key, value) in settings {
            c.set(key, value).unwrap();
        }
        App::new(topology(false), c, Arc::new(log.clone())).unwrap()
    };
    produce(&log, 0, 100);
    app(&[]).run_until_idle(Duration::from_millis(200)).unwrap();
    let checkpoint = dir.path().join("state").join("unclean").join("0_0").join(".checkpoint");
    assert!(checkpoint.exists(), "a clean stop checkpoints the store");
    let changelog = log.topic("unclean-counts-changelog").unwrap().config();
    assert!(changelog.cleanup_policy.compact, "changelogs are compacted: {:?}", changelog.cleanup_policy);
    // A hundred more records, taken by the store inside a transaction that never commits: the
    // next record cannot be read, and the worker fails.
    let mut failing = app(&[("commit.interval.ms", "600000")]);
    failing.start().unwrap();
    produce(&log, 100, 200);
    wait_for("the hundred records", || failing.metrics().records_in == 100);
    let mut p = log.producer(Default::default()).unwrap();
    p.send("in", garam::core::Record::new(Some("k0"), Some(vec![0xffu8]))).unwrap();
    p.flush().unwrap();
    wait_for("the worker to fail", || failing.status() == garam::core::runtime::AppStatus::Failed);
    let err = failing.close().unwrap_err().to_string();
    assert!(err.contains("in-0") && err.contains("offset 200"), "names the bad record: {err}");
    assert!(!checkpoint.exists(), "an unclean stop under exactly-once leaves no checkpoint");
    // Restarted with the bad record skipped: every key counted four times, not six.
    let mut last = app(&[("deserialization.error.handler", "log-and-continue")]);
    last.run_until_idle(Duration::from_millis(200)).unwrap();
    let counts = latest_counts(&log, true);
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|n| *n == 4), "counted from the committed changelog: {counts:?} {:?}", last.metrics());
}

/// A standby whose changelog holds a record it cannot apply is reported and retried; it does not
/// hold up the instance's other standbys, which keep applying what their changelogs gain.
#[test]
fn a_standby_that_cannot_apply_its_changelog_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 4, TopicConfig::default()).unwrap();
    log.create_topic("out", 4, TopicConfig::default()).unwrap();
    let make = |state: &str| {
        let mut c = AppConfig::new("standbys");
        c.num_threads = 1;
        c.commit_interval = Duration::from_millis(50);
        c.state_dir = Some(dir.path().join(state));
        c.set("num.standby.replicas", "1").unwrap();
        App::new(topology(false), c, Arc::new(log.clone())).unwrap()
    };
    let (mut a, mut b) = (make("a"), make("b"));
    a.start().unwrap();
    b.start().unwrap();
    let tasks = |app: &App| -> Vec<u32> {
        let mut t: Vec<u32> =
            app.metrics().tasks.values().flatten().map(|id| id.rsplit('_').next().unwrap().parse().unwrap()).collect();
        t.sort();
        t
    };
    wait_for("two tasks and two standbys each", || {
        tasks(&a).len() == 2 && tasks(&b).len() == 2 && a.metrics().standby_tasks == 2 && b.metrics().standby_tasks == 2
    });
    // `b` keeps standbys of `a`'s tasks: break the first one's changelog.
    let (broken, healthy) = (tasks(&a)[0], tasks(&a)[1]);
    let mut p = log.producer(Default::default()).unwrap();
    p.send_to("standbys-counts-changelog", Some(broken), garam::core::Record::new(Some("bad"), Some(vec![9u8, 0])))
        .unwrap();
    p.flush().unwrap();
    let before = b.metrics().standby_restored;
    for i in 0..100 {
        p.send_to("in", Some(healthy), garam::core::Record::new(Some(format!("k{i}")), Some("x"))).unwrap();
    }
    p.flush().unwrap();
    wait_for("the healthy standby to apply its changelog", || b.metrics().standby_restored >= before + 100);
    // An active task that restores the broken changelog (after a rebalance) fails, naming it.
    for app in [&mut a, &mut b] {
        if let Err(e) = app.close() {
            assert!(e.to_string().contains("standbys-counts-changelog"), "{e}");
        }
    }
}

/// A store stopped for longer than its changelog's `delete.retention.ms` may hold keys deleted
/// meanwhile whose tombstones compaction has since removed: resuming from its checkpoint would
/// keep them for ever. Its checkpoint is below the changelog's resume floor, so it is wiped and
/// rebuilt instead. A standby that lagged as long is found the same way; one rebuilt from the
/// start is not (what a removed tombstone deleted was removed before it).
#[test]
fn a_store_whose_changelog_dropped_a_delete_past_its_checkpoint_is_rebuilt() {
    use garam::core::runtime::stores::{BackendReader, TaskStores};
    let dir = tempfile::tempdir().unwrap();
    let log =
        garam::log::Log::open_with(dir.path(), garam::log::LogOptions { background: false, ..Default::default() })
            .unwrap();
    let changelog = "gone-counts-changelog";
    let mut config = TopicConfig::default();
    config.set("cleanup.policy", "compact").unwrap();
    config.set("delete.retention.ms", "1000").unwrap();
    log.create_topic(changelog, 1, config).unwrap();
    write_changelog(&log, changelog, (0..5).map(|i| (format!("k{i}"), versioned_count(i))));
    let state = dir.path().join("state");
    let reader = BackendReader(&log);
    let ctx = AppConfig::new("gone").new_store_context();
    let task = garam::core::processor::TaskId { subtopology: 0, partition: 0 };
    let topology = topology(false);
    let open = || TaskStores::open(&topology, "gone", &state, task, &reader, false, &ctx, None).unwrap().unwrap();
    let holds =
        |stores: &TaskStores, key: &str| stores.stores["counts"].borrow_mut().get(key.as_bytes()).unwrap().is_some();
    let mut stores = open();
    stores.restore_all(&reader, None).unwrap();
    assert!(holds(&stores, "k1"));
    stores.checkpoint().unwrap();
    drop(stores);

    // A standby here follows the changelog from the start; then it stops applying.
    let mut standby = TaskStores::open_standby(&topology, "gone", &state.join("standby"), task, &reader, false, &ctx)
        .unwrap()
        .unwrap();
    standby.restore_all(&reader, None).unwrap();
    assert_eq!(standby.below_resume_floor(&reader).unwrap(), None);

    // While both are away, k1 is deleted, and compaction removes the tombstone a day later.
    let mut p = log.producer(Default::default()).unwrap();
    p.send(changelog, garam::core::Record { key: Some("k1".into()), value: None, timestamp: None, headers: vec![] })
        .unwrap();
    p.flush().unwrap();
    log.partition(changelog, 0).unwrap().roll().unwrap();
    write_changelog(&log, changelog, [("k9".to_string(), versioned_count(9))]);
    let now = garam::core::time::now_ms();
    log.run_cleaner(now).unwrap();
    log.run_cleaner(now + 1000).unwrap();
    assert_eq!(log.partition(changelog, 0).unwrap().resume_floor(), 6, "the tombstone at 5 is gone");

    let mut stores = open();
    stores.restore_all(&reader, None).unwrap();
    assert!(!holds(&stores, "k1"), "rebuilt from the start, not resumed at its checkpoint (5) past a lost delete");
    for key in ["k0", "k2", "k3", "k4", "k9"] {
        assert!(holds(&stores, key), "{key} restored");
    }
    assert_eq!(stores.restored(), 5, "the whole compacted changelog");
    assert_eq!(standby.below_resume_floor(&reader).unwrap(), Some("counts"), "the standby is stale too");
    drop(standby);
    // A standby opened now is rebuilt from the start: the floor already past it is no loss, nor
    // is the floor passing it again before it has caught up (what k2's tombstone deleted was
    // removed from the changelog before this standby could read it).
    let mut standby =
        TaskStores::open_standby(&topology, "gone", &state.join("fresh"), task, &reader, false, &ctx).unwrap().unwrap();
    assert_eq!(standby.below_resume_floor(&reader).unwrap(), None);
    p.send(changelog, garam::core::Record { key: Some("k2".into()), value: None, timestamp: None, headers: vec![] })
        .unwrap();
    p.flush().unwrap();
    log.partition(changelog, 0).unwrap().roll().unwrap();
    write_changelog(&log, changelog, [("k8".to_string(), versioned_count(8))]);
    log.run_cleaner(now + 2000).unwrap();
    log.run_cleaner(now + 3000).unwrap();
    assert_eq!(log.partition(changelog, 0).unwrap().resume_floor(), 8, "the tombstone at 7 is gone");
    assert_eq!(standby.below_resume_floor(&reader).unwrap(), None, "not caught up yet: no rebuild loop");
    standby.restore_all(&reader, None).unwrap(); // to the end when it opened
    standby.catch_up(&reader).unwrap();
    standby.restore_all(&reader, None).unwrap();
    assert_eq!(standby.below_resume_floor(&reader).unwrap(), None, "caught up");
    assert!(!holds(&standby, "k2") && holds(&standby, "k8"));
}
