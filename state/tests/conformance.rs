//! One conformance suite, run against every store backend and through the `StoreHandle` layer
//! (versioned values, changelog records, restore).

use std::collections::BTreeMap;

use garam_core::state::{
    CacheBudget, KeyValueStore, SessionStore, StoreContext, StoreHandle, StoreSupplier, WindowStore,
};
use garam_state::{InMemorySupplier, RocksDbSupplier};
use proptest::prelude::*;

static CTX: std::sync::LazyLock<StoreContext> = std::sync::LazyLock::new(|| StoreContext::new(64 << 20));

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
    // A batch applies in order, and the cross-thread reader sees it.
    let batch =
        vec![(b"b1".to_vec(), Some(b"x".to_vec())), (b"b1".to_vec(), None), (b"b2".to_vec(), Some(b"y".to_vec()))];
    store.write_batch(&batch).unwrap();
    let reader = store.reader();
    assert_eq!(reader.get(b"b1").unwrap(), None);
    assert_eq!(reader.get(b"b2").unwrap(), Some(b"y".to_vec()));
    assert_eq!(reader.all().unwrap(), store.all().unwrap());
    assert_eq!(reader.range(&from, &to).unwrap(), store.range(&from, &to).unwrap());
    store.write_batch(&[(b"b2".to_vec(), None)]).unwrap();
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

    /// Through every layer stack of the handle (no cache, a cache, a cache so small that it
    /// evicts all the time): reads see every write at once; values are versioned; after a
    /// checkpoint the backend, its cross-thread reader and a store rebuilt from the changelog all
    /// equal the model.
    #[test]
    fn every_layer_stack_matches_a_model_and_rebuilds_from_its_changelog(ops in handle_ops()) {
        for (name, s) in suppliers() {
            for (stack, budget) in [("uncached", None), ("cached", Some(1 << 20)), ("evicting", Some(200))] {
                let dir = tempfile::tempdir().unwrap();
                let backend = s.open(&dir.path().join("a"), &CTX).unwrap();
                let budget = budget.map(CacheBudget::new);
                let mut h = match &budget {
                    Some(b) => StoreHandle::with_cache("s", backend, b.clone()),
                    None => StoreHandle::new("s", backend),
                };
                let reader = h.reader();
                let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                let mut changelog = Vec::new();
                for op in &ops {
                    match op {
                        HandleOp::Put(k, v) => { h.put(k, v).unwrap(); model.insert(k.clone(), v.clone()); }
                        HandleOp::Delete(k) => { h.delete(k).unwrap(); model.remove(k); }
                        HandleOp::Get(k) => {
                            let got = h.get(k).unwrap();
                            prop_assert_eq!(got.as_ref(), model.get(k), "{} {}", name, stack);
                        }
                        HandleOp::Commit => { h.flush_cache().unwrap(); changelog.extend(h.drain_changes()); }
                    }
                }
                let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(h.all().unwrap(), all.clone(), "{} {}: all before the flush", name, stack);
                let (from, to) = (vec![1u8], vec![3u8, 0]);
                let ranged: Vec<_> = model.range(from.clone()..to.clone()).map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(h.range(&from, &to).unwrap(), ranged, "{} {}: range", name, stack);
                h.flush_cache().unwrap();
                changelog.extend(h.drain_changes());
                if stack == "uncached" {
                    let writes = ops.iter().filter(|o| matches!(o, HandleOp::Put(..) | HandleOp::Delete(_))).count();
                    prop_assert_eq!(changelog.len(), writes);
                }
                prop_assert!(changelog.iter().all(|(_, v)| v.as_ref().is_none_or(|v| v[0] == 1)), "{}: format version", name);
                // A checkpoint writes what only the changelog had to the backend.
                h.flush().unwrap();
                prop_assert!(h.drain_changes().is_empty(), "the changelog already had everything");
                let versioned: Vec<_> = reader.all().unwrap().into_iter().map(|(k, v)| (k, v[1..].to_vec())).collect();
                prop_assert_eq!(versioned, all.clone(), "{} {}: the reader after a flush", name, stack);
                let mut rebuilt = StoreHandle::new("s", s.open(&dir.path().join("b"), &CTX).unwrap());
                rebuilt.restore_batch(changelog).unwrap();
                prop_assert!(rebuilt.drain_changes().is_empty(), "restores are not logged again");
                prop_assert_eq!(rebuilt.all().unwrap(), all, "{} {}: rebuilt", name, stack);
                drop(h);
                if let Some(b) = budget {
                    prop_assert_eq!(b.used(), 0, "a dropped cache returns its bytes");
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum HandleOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Commit,
}

fn handle_ops() -> impl Strategy<Value = Vec<HandleOp>> {
    let key = proptest::collection::vec(0u8..6, 0..3);
    proptest::collection::vec(
        prop_oneof![
            4 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| HandleOp::Put(k, v)),
            1 => key.clone().prop_map(HandleOp::Delete),
            3 => key.prop_map(HandleOp::Get),
            1 => Just(HandleOp::Commit),
        ],
        0..80,
    )
}

#[test]
fn unknown_value_versions_are_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RocksDbSupplier.open(dir.path(), &CTX).unwrap();
    raw.put(b"k", &[9, 1, 2]).unwrap();
    let mut h = StoreHandle::new("s", raw);
    let e = h.get(b"k").unwrap_err().to_string();
    assert!(e.contains("unknown value format version 9"), "{e}");
}

#[derive(Debug, Clone)]
enum WindowOp {
    Put(u8, i64, u8),
    Delete(u8, i64),
    Fetch(u8, i64, i64),
    Commit,
}

fn window_ops() -> impl Strategy<Value = Vec<WindowOp>> {
    let t = -6i64..6;
    proptest::collection::vec(
        prop_oneof![
            4 => (0u8..3, t.clone(), any::<u8>()).prop_map(|(k, s, v)| WindowOp::Put(k, s, v)),
            1 => (0u8..3, t.clone()).prop_map(|(k, s)| WindowOp::Delete(k, s)),
            3 => (0u8..3, t.clone(), t).prop_map(|(k, a, b)| WindowOp::Fetch(k, a, b)),
            1 => Just(WindowOp::Commit),
        ],
        0..60,
    )
}

/// A handle of every backend and layer stack.
fn handles(dir: &std::path::Path) -> Vec<(String, StoreHandle)> {
    let mut out = Vec::new();
    for (name, s) in suppliers() {
        for (stack, budget) in [("uncached", None), ("cached", Some(1 << 20)), ("evicting", Some(200))] {
            let backend = s.open(&dir.join(format!("{name}-{stack}")), &CTX).unwrap();
            let h = match budget {
                Some(b) => StoreHandle::with_cache("w", backend, CacheBudget::new(b)),
                None => StoreHandle::new("w", backend),
            };
            out.push((format!("{name} {stack}"), h));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Window stores, on every backend and layer stack, match a model keyed by (key, start);
    /// fetches return a key's windows in the time range, in start order; purging drops old ones.
    #[test]
    fn window_stores_match_a_model(ops in window_ops()) {
        let dir = tempfile::tempdir().unwrap();
        for (name, mut h) in handles(dir.path()) {
            let mut model: BTreeMap<(Vec<u8>, i64), Vec<u8>> = BTreeMap::new();
            let mut w = WindowStore::new(&mut h);
            for op in &ops {
                match op {
                    WindowOp::Put(k, s, v) => { w.put(&[*k], *s, &[*v]).unwrap(); model.insert((vec![*k], *s), vec![*v]); }
                    WindowOp::Delete(k, s) => { w.delete(&[*k], *s).unwrap(); model.remove(&(vec![*k], *s)); }
                    WindowOp::Fetch(k, a, b) => {
                        let got = w.fetch(&[*k], *a, *b).unwrap();
                        let want: Vec<(i64, Vec<u8>)> = model.iter()
                            .filter(|((mk, s), _)| mk == &vec![*k] && s >= a && s <= b)
                            .map(|((_, s), v)| (*s, v.clone())).collect();
                        prop_assert_eq!(got, want, "{}", name);
                    }
                    WindowOp::Commit => {
                        w.handle().flush_cache().unwrap();
                        w.handle().drain_changes();
                    }
                }
            }
            let all: Vec<_> = model.iter().map(|((k, s), v)| (k.clone(), *s, v.clone())).collect();
            prop_assert_eq!(w.all().unwrap(), all, "{}", name);
            let purged = w.purge_before(0).unwrap();
            prop_assert_eq!(purged, model.keys().filter(|(_, s)| *s < 0).count(), "{}", name);
            prop_assert!(w.all().unwrap().iter().all(|(_, s, _)| *s >= 0));
        }
    }

    /// Session stores: `find(key, earliest_end, latest_start)` returns exactly the sessions of
    /// the key that end at or after `earliest_end` and start at or before `latest_start`.
    #[test]
    fn session_stores_find_what_a_record_merges_with(
        sessions in proptest::collection::vec((0u8..3, -6i64..6, 0i64..4), 0..30),
        removes in proptest::collection::vec(0usize..30, 0..5),
        queries in proptest::collection::vec((0u8..3, -8i64..8, -8i64..8), 1..10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (name, mut h) in handles(dir.path()) {
            let mut model: BTreeMap<(Vec<u8>, i64, i64), Vec<u8>> = BTreeMap::new();
            let mut s = SessionStore::new(&mut h);
            for (i, (k, start, len)) in sessions.iter().enumerate() {
                s.put(&[*k], *start, start + len, &[i as u8]).unwrap();
                model.insert((vec![*k], *start, start + len), vec![i as u8]);
            }
            for r in &removes {
                if let Some((k, st, en)) = sessions.get(*r).map(|(k, st, len)| (vec![*k], *st, st + len)) {
                    s.remove(&k, st, en).unwrap();
                    model.remove(&(k, st, en));
                }
            }
            for (k, earliest_end, latest_start) in &queries {
                let mut got: Vec<_> = s.find(&[*k], *earliest_end, *latest_start).unwrap()
                    .into_iter().map(|x| (x.key, x.start, x.end, x.value)).collect();
                got.sort();
                let want: Vec<_> = model.iter()
                    .filter(|((mk, st, en), _)| mk == &vec![*k] && en >= earliest_end && st <= latest_start)
                    .map(|((mk, st, en), v)| (mk.clone(), *st, *en, v.clone())).collect();
                prop_assert_eq!(got, want, "{}", name);
            }
            prop_assert_eq!(s.all().unwrap().len(), model.len(), "{}", name);
        }
    }
}
