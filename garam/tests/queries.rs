//! Interactive queries: typed reads of a running app's stores, restoring errors, and the metadata
//! that says which instance hosts a key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use garam::core::StreamsError;
use garam::log::{Log, TopicConfig};
use garam::prelude::*;

mod common;
use common::wait_for;

fn topology() -> garam::core::topology::Topology {
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .count(Materialized::named("counts").with(StringSerde, U64Serde))
        .to_stream()
        .to("out", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}

fn produce(log: &Log, keys: u64, from: u64, to: u64) -> BTreeMap<String, u64> {
    let mut p = log.producer(Default::default()).unwrap();
    let mut truth = BTreeMap::new();
    for i in from..to {
        let k = format!("k{}", i % keys);
        p.send("in", garam::core::Record::new(Some(k.clone()), Some("x"))).unwrap();
        *truth.entry(k).or_insert(0) += 1;
    }
    p.flush().unwrap();
    truth
}

/// A started instance of app `id` with one thread, its `application.server` and a state directory
/// of its own.
fn started_instance(log: &Log, dir: &std::path::Path, id: &str, server: &str) -> App {
    let mut c = AppConfig::new(id);
    c.num_threads = 1;
    c.state_dir = Some(dir.join(server.replace(':', "_")));
    c.set("application.server", server).unwrap();
    let mut app = App::new(topology(), c, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    app
}

#[test]
fn a_running_app_answers_get_range_and_all_as_of_its_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 3, TopicConfig::default()).unwrap();
    log.create_topic("out", 3, TopicConfig::default()).unwrap();
    let mut truth = produce(&log, 40, 0, 4000);
    let mut config = AppConfig::new("iq");
    config.num_threads = 2;
    config.state_dir = Some(dir.path().join("state"));
    let mut app = App::new(topology(), config, Arc::new(log.clone())).unwrap();
    assert!(matches!(app.store::<String, u64>("counts"), Err(StreamsError::NotRunning)), "before the start");
    app.start().unwrap();
    wait_for("the input", || app.metrics().records_in == 4000);
    let store = app.store::<String, u64>("counts").unwrap();
    // Everything processed is visible after the next commit (the default cache holds it until then).
    wait_for("a commit", || store.all().map(|all| all.len() == 40).unwrap_or(false));
    wait_for("the counts", || store.get(&"k7".into()).unwrap() == Some(100));
    for (k, n) in &truth {
        assert_eq!(store.get(k).unwrap(), Some(*n), "{k}");
        let md = store.metadata(k).unwrap();
        assert!(md.local, "{k}: {md:?}");
        assert!(md.member_id.is_some());
    }
    assert_eq!(store.get(&"absent".into()).unwrap(), None);
    let mut all: Vec<(String, u64)> = store.all().unwrap();
    all.sort();
    assert_eq!(all, truth.iter().map(|(k, n)| (k.clone(), *n)).collect::<Vec<_>>());
    let mut iterated: Vec<(String, u64)> = store.iter().unwrap().collect();
    iterated.sort();
    assert_eq!(iterated, all);
    // Serialized string keys order as the strings do.
    let ranged = store.range(&"k1".into(), &"k2".into()).unwrap();
    let expect: Vec<_> = truth.range("k1".to_string().."k2".to_string()).map(|(k, n)| (k.clone(), *n)).collect();
    assert_eq!(ranged, expect);
    // Later input shows up too.
    for (k, n) in produce(&log, 40, 0, 400) {
        *truth.get_mut(&k).unwrap() += n;
    }
    wait_for("the new counts", || store.get(&"k3".into()).unwrap() == truth.get("k3").copied());
    // Wrong names and types are errors, not panics.
    assert!(matches!(app.store::<String, u64>("nope"), Err(StreamsError::StoreNotFound { .. })));
    assert!(matches!(app.store::<u64, u64>("counts"), Err(StreamsError::StoreNotFound { .. })));
    app.close().unwrap();
    assert!(matches!(app.store::<String, u64>("counts"), Err(StreamsError::NotRunning)), "after the close");
}

#[test]
fn keys_hosted_by_another_instance_name_its_application_server() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let truth = produce(&log, 20, 0, 2000);
    let make = |server: &str| started_instance(&log, dir.path(), "iq2", server);
    let mut a = make("host-a:7001");
    let mut b = make("host-b:7002");
    let (sa, sb) = (a.store::<String, u64>("counts").unwrap(), b.store::<String, u64>("counts").unwrap());
    // Once the group has settled, every key is answered by exactly one instance, and the other
    // names it.
    wait_for("both instances to host a partition and count everything", || {
        truth.iter().all(|(k, n)| match (sa.get(k), sb.get(k)) {
            (Ok(Some(x)), Err(StreamsError::NotHosted { host: Some(h), .. })) => x == *n && h == "host-a:7001",
            (Err(StreamsError::NotHosted { host: Some(h), .. }), Ok(Some(x))) => x == *n && h == "host-b:7002",
            _ => false,
        })
    });
    for k in truth.keys() {
        let (ma, mb) = (sa.metadata(k).unwrap(), sb.metadata(k).unwrap());
        assert_eq!(ma.partition, mb.partition);
        assert_ne!(ma.local, mb.local, "{k}");
        assert_eq!(ma.host, mb.host);
        let expected = if ma.local { "host-a:7001" } else { "host-b:7002" };
        assert_eq!(ma.host.as_deref(), Some(expected), "{k}");
    }
    a.close().unwrap();
    b.close().unwrap();
}

/// Three instances, two partitions: one instance hosts no task of the store, and still names
/// each key's partition and owner (it once said partition 0 for every key).
#[test]
fn an_instance_hosting_nothing_names_each_keys_partition_and_owner() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 2, TopicConfig::default()).unwrap();
    log.create_topic("out", 2, TopicConfig::default()).unwrap();
    let truth = produce(&log, 20, 0, 2000);
    let mut apps: Vec<App> = ["host-a:7001", "host-b:7002", "host-c:7003"]
        .into_iter()
        .map(|server| started_instance(&log, dir.path(), "iq3", server))
        .collect();
    let stores: Vec<_> = apps.iter().map(|a| a.store::<String, u64>("counts").unwrap()).collect();
    let mut partitions_named = std::collections::BTreeSet::new();
    wait_for("every key answered by one instance, named by the other two", || {
        partitions_named.clear();
        truth.iter().all(|(k, n)| {
            let Ok(md) = stores[0].metadata(k) else { return false };
            let answers: Vec<_> = stores.iter().map(|s| s.get(k)).collect();
            let hosts = answers.iter().filter(|a| matches!(a, Ok(Some(x)) if x == n)).count();
            let named = answers.iter().filter(|a| match a {
                Err(StreamsError::NotHosted { partition, host: Some(h), .. }) => {
                    partitions_named.insert(*partition);
                    *partition == md.partition && Some(h) == md.host.as_ref()
                }
                _ => false,
            });
            hosts == 1 && named.count() == 2
        })
    });
    assert_eq!(partitions_named.len(), 2, "both partitions named");
    for app in &mut apps {
        app.close().unwrap();
    }
}

/// A task that does not commit (its worker stuck in a slow operator) makes `App::store` answer
/// `StoreUnavailable` naming its partition, after waiting a commit interval and ten seconds.
#[test]
fn a_store_whose_task_does_not_commit_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 1, TopicConfig::default()).unwrap();
    log.create_topic("out", 1, TopicConfig::default()).unwrap();
    let mut config = AppConfig::new("iq-stuck");
    config.num_threads = 1;
    config.commit_interval = Duration::from_millis(100);
    config.state_dir = Some(dir.path().join("state"));
    config.set("interactive.query.timeout.ms", "3000").unwrap();
    let mut app = App::new(common::count_stalling_once(Duration::from_secs(6)), config, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    produce(&log, 10, 0, 100);
    wait_for("the first records", || app.metrics().records_in == 100);
    let mut p = log.producer(Default::default()).unwrap();
    p.send("in", garam::core::Record::new(Some("k0".to_string()), Some("slow"))).unwrap();
    p.flush().unwrap();
    // The worker takes the record and sleeps in the operator: it commits no more for a while.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    match app.store::<String, u64>("counts") {
        Err(StreamsError::StoreUnavailable { store, reason }) => {
            assert_eq!(store, "counts");
            assert!(reason.contains("[0]"), "names the partition: {reason}");
        }
        Err(e) => panic!("expected StoreUnavailable, got {e}"),
        Ok(_) => panic!("expected StoreUnavailable, got the store"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "it waited interactive.query.timeout.ms for a commit first, and no longer: {waited:?}"
    );
    app.close().unwrap();
}
