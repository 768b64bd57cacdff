//! Open RocksDB instances are charged to the shared block cache: with many stores open, RocksDB
//! as a whole stays inside its share (its own test binary: the budget is the process's, fixed
//! by the first store opened).

use garam_core::state::{KeyValueStore, StoreContext, StoreSupplier};
use garam_state::RocksDbSupplier;

/// RocksDB's share: 16 MiB.
const CTX: StoreContext = StoreContext { memory_max_bytes: 16 << 20 };

fn capacity() -> usize {
    RocksDbSupplier::memory().unwrap().block_cache_capacity
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
