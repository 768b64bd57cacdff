//! Each app bounds its RocksDB stores with its own `state.memory.max.bytes`, counted once for all
//! its stores (its own test binary: the figures checked are the whole process's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use garam::log::{Log, TopicConfig};
use garam::prelude::*;
use garam_state::RocksDbSupplier;

/// An app counting `in` per key in a RocksDB store, with `budget` bytes of state memory.
fn app(log: &Log, dir: &std::path::Path, id: &str, budget: u64) -> App {
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .count(Materialized::named("counts").with(StringSerde, U64Serde))
        .to_stream()
        .to("out", Produced::with(StringSerde, U64Serde));
    let mut c = AppConfig::new(id);
    c.num_threads = 2;
    c.state_dir = Some(dir.join(id));
    c.set("state.memory.max.bytes", &budget.to_string()).unwrap();
    App::new(b.build().unwrap(), c, Arc::new(log.clone())).unwrap()
}

#[test]
fn two_apps_in_one_process_each_get_the_bound_they_configure() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("in", 4, TopicConfig::default()).unwrap();
    log.create_topic("out", 4, TopicConfig::default()).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for i in 0..1000 {
        p.send("in", garam::core::Record::new(Some(format!("k{}", i % 50)), Some("x"))).unwrap();
    }
    p.flush().unwrap();
    // Half of each budget goes to the store caches, half of the rest to the memtables.
    let (mut small, mut large) = (app(&log, dir.path(), "small", 64 << 20), app(&log, dir.path(), "large", 256 << 20));
    small.start().unwrap();
    large.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while [&small, &large].iter().any(|a| a.metrics().records_in < 1000) {
        assert!(Instant::now() < deadline, "the apps did not count their input");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Eight stores (two apps × four tasks) open; one bound per app: 16 MiB and 64 MiB of
    // memtables. One bound for the process would say 16 MiB; one per store, 320 MiB.
    let m = RocksDbSupplier::memory().expect("stores are open");
    assert_eq!(m.memtable_limit, (16 << 20) + (64 << 20), "{m:?}");
    let of = |app: &App| RocksDbSupplier::memory_of(app.store_context()).expect("the app's stores are open");
    assert_eq!((of(&small).memtable_limit, of(&large).memtable_limit), (16 << 20, 64 << 20));
    small.close().unwrap();
    large.close().unwrap();
}
