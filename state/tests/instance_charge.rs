//! Open RocksDB instances are charged to the shared block cache: with many stores open, RocksDB
//! as a whole stays inside its share. The share is an app's: stores opened with another context
//! have a cache of their own.

use garam_core::state::{KeyValueStore, StoreContext, StoreSupplier};
use garam_state::RocksDbSupplier;

/// RocksDB's share: 16 MiB.
static CTX: std::sync::LazyLock<StoreContext> = std::sync::LazyLock::new(|| StoreContext::new(16 << 20));

fn capacity() -> usize {
    RocksDbSupplier::memory_of(&CTX).unwrap().block_cache_capacity
}

#[test]
fn each_open_store_shrinks_the_block_cache_until_half_the_share_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let open = |range: std::ops::Range<usize>| -> Vec<Box<dyn KeyValueStore>> {
        range.map(|i| RocksDbSupplier.open(&dir.path().join(format!("s{i}")), &CTX).unwrap()).collect()
    };
    let mut first = open(0..16);
    let full = capacity();
    assert!(full < 16 << 20 && full > 8 << 20, "16 stores left {full} bytes of 16 MiB");
    let per_store = ((16 << 20) - full) / 16;
    assert!(per_store >= 64 << 10, "an open store is charged {per_store} bytes");

    // Past half the share, the cache stops shrinking: the memtables may use that half.
    let more = open(16..16 + (8 << 20) / per_store);
    assert_eq!(capacity(), 8 << 20);

    // Closing stores gives their charge back.
    drop(more);
    assert_eq!(capacity(), full);
    first.truncate(8);
    assert_eq!(capacity(), (16 << 20) - 8 * per_store);
    drop(first);
    assert_eq!(capacity(), 16 << 20);
}

#[test]
fn each_app_gets_the_bound_it_configures() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (StoreContext::new(16 << 20), StoreContext::new(64 << 20));
    let open = |name: &str, ctx: &StoreContext| RocksDbSupplier.open(&dir.path().join(name), ctx).unwrap();
    let _a = open("a", &small);
    // Clones of a context are the same app.
    let _b = [open("b1", &large), open("b2", &large.clone())];
    let (small, large) = (RocksDbSupplier::memory_of(&small).unwrap(), RocksDbSupplier::memory_of(&large).unwrap());
    assert_eq!(small.memtable_limit, 8 << 20, "half of the small app's share");
    assert_eq!(large.memtable_limit, 32 << 20, "half of the large app's share, not the first app's");
    let charged = |m: garam_state::RocksMemory, budget: usize| budget - m.block_cache_capacity;
    let one = charged(small, 16 << 20);
    assert!(one > 0, "an open store is charged to its app's cache");
    assert_eq!(charged(large, 64 << 20), 2 * one, "the large app's cache is charged for its own two stores");
    let all = RocksDbSupplier::memory().unwrap();
    assert!(all.memtable_limit >= (40 << 20), "the process's figures add the apps up: {all:?}");
}
