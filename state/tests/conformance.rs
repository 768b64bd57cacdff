//! One conformance suite, run against every store backend and through the `StoreHandle` layer
//! (versioned values, changelog records, restore).

use std::collections::BTreeMap;

use garam_core::state::{KeyValueStore, StoreContext, StoreHandle, StoreSupplier};
use garam_state::{InMemorySupplier, RocksDbSupplier};
use proptest::prelude::*;

const CTX: StoreContext = StoreContext { memory_max_bytes: 64 << 20 };

fn suppliers() -> Vec<(&'static str, Box<dyn StoreSupplier>)> {
    vec![("memory", Box::new(InMemorySupplier)), ("rocksdb", Box::new(RocksDbSupplier))]
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let key = proptest::collection::vec(0u8..6, 0..3);
    proptest::collection::vec(
        prop_oneof![
            3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::Put(k, v)),
            1 => key.prop_map(Op::Delete),
        ],
        0..60,
    )
}

fn check_against_model(store: &mut dyn KeyValueStore, ops: &[Op]) {
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                store.put(k, v).unwrap();
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                store.delete(k).unwrap();
                model.remove(k);
            }
        }
    }
    for k in model.keys() {
        assert_eq!(store.get(k).unwrap().as_ref(), model.get(k));
    }
    assert_eq!(store.get(b"absent-key").unwrap(), None);
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(store.all().unwrap(), all);
    let (from, to) = (vec![1u8], vec![3u8, 0]);
    let ranged: Vec<_> = model.range(from.clone()..to.clone()).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(store.range(&from, &to).unwrap(), ranged);
    assert!(store.range(&to, &from).unwrap().is_empty());
    store.flush().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_backend_matches_a_model(ops in ops()) {
        for (name, s) in suppliers() {
            let dir = tempfile::tempdir().unwrap();
            let mut store = s.open(dir.path(), &CTX).unwrap();
            check_against_model(&mut *store, &ops);
            // Reopened, a persistent store still holds everything (after a flush).
            if s.persistent() {
                drop(store);
                let reopened = s.open(dir.path(), &CTX).unwrap();
                let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                for op in &ops {
                    match op { Op::Put(k, v) => { model.insert(k.clone(), v.clone()); } Op::Delete(k) => { model.remove(k); } }
                }
                let all: Vec<_> = model.into_iter().collect();
                prop_assert_eq!(reopened.all().unwrap(), all, "{} after reopen", name);
            }
        }
    }

    /// Through the handle: values are versioned, every change is queued for the changelog, and
    /// replaying the changelog into an empty store rebuilds the same content.
    #[test]
    fn handles_version_values_and_rebuild_from_their_changelog(ops in ops()) {
        for (name, s) in suppliers() {
            let dir = tempfile::tempdir().unwrap();
            let mut h = StoreHandle::new("s", s.open(&dir.path().join("a"), &CTX).unwrap());
            for op in &ops {
                match op { Op::Put(k, v) => h.put(k, v).unwrap(), Op::Delete(k) => h.delete(k).unwrap() }
            }
            let changelog = h.drain_changes();
            prop_assert_eq!(changelog.len(), ops.len());
            prop_assert!(changelog.iter().all(|(_, v)| v.as_ref().is_none_or(|v| v[0] == 1)), "{}: format version", name);
            let mut rebuilt = StoreHandle::new("s", s.open(&dir.path().join("b"), &CTX).unwrap());
            for (k, v) in &changelog {
                rebuilt.restore(k, v.as_deref()).unwrap();
            }
            prop_assert!(rebuilt.drain_changes().is_empty(), "restores are not logged again");
            prop_assert_eq!(rebuilt.all().unwrap(), h.all().unwrap(), "{}", name);
        }
    }
}

#[test]
fn unknown_value_versions_are_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RocksDbSupplier.open(dir.path(), &CTX).unwrap();
    raw.put(b"k", &[9, 1, 2]).unwrap();
    let h = StoreHandle::new("s", raw);
    let e = h.get(b"k").unwrap_err().to_string();
    assert!(e.contains("unknown value format version 9"), "{e}");
}
