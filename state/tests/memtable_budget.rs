//! The memtables of many RocksDB stores stay near their shared budget when stores are written
//! in turn and then left idle, as a restore does.

use std::time::{Duration, Instant};

use garam_core::state::{KeyValueStore, StoreContext, StoreSupplier};
use garam_state::RocksDbSupplier;

/// RocksDB's share: 8 MiB, so memtables get 4 MiB.
static CTX: std::sync::LazyLock<StoreContext> = std::sync::LazyLock::new(|| StoreContext::new(8 << 20));

#[test]
fn idle_stores_do_not_keep_memtables_over_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<Box<dyn KeyValueStore>> =
        (0..32).map(|i| RocksDbSupplier.open(&dir.path().join(format!("s{i}")), &CTX).unwrap()).collect();
    // One batch of ~1 MiB per store, each store once: RocksDB's write-buffer manager, over its
    // limit, flushes the store about to be written (its memtable still empty), so left to itself
    // every store keeps its megabyte — 32 MiB against 4.
    for (i, store) in stores.iter_mut().enumerate() {
        let batch: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            (0..4096u32).map(|k| (format!("{i}-{k:08}").into_bytes(), Some(vec![i as u8; 240]))).collect();
        store.write_batch(&batch).unwrap();
    }
    let limit = RocksDbSupplier::memory_of(&CTX).unwrap().memtable_limit;
    assert_eq!(limit, 4 << 20);
    // Later writes, anywhere, relieve the largest memtables until the total is back near budget.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut k = 0u32;
    while RocksDbSupplier::memory_of(&CTX).unwrap().memtables > 2 * limit && Instant::now() < deadline {
        stores[0].put(format!("touch-{k}").as_bytes(), b"x").unwrap();
        k += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = RocksDbSupplier::memory_of(&CTX).unwrap();
    assert!(m.memtables <= 2 * limit, "memtables {} bytes against a limit of {limit}", m.memtables);
    // Nothing was lost on the way to disk.
    for (i, store) in stores.iter().enumerate() {
        assert_eq!(store.get(format!("{i}-00004095").as_bytes()).unwrap(), Some(vec![i as u8; 240]));
    }
}
