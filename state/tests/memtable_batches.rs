//! The memtables of many RocksDB stores stay inside their shared budget when each store is
//! written in batches in turn, as store caches write their stores when their budget runs out.

use std::time::{Duration, Instant};

use garam_core::state::{KeyValueStore, StoreContext, StoreSupplier};
use garam_state::RocksDbSupplier;

/// RocksDB's share: 8 MiB, so memtables get 4 MiB.
static CTX: std::sync::LazyLock<StoreContext> = std::sync::LazyLock::new(|| StoreContext::new(8 << 20));

fn batch(store: usize, round: u32) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..1000u32).map(|k| (format!("{store:02}-{round:02}-{k:04}").into_bytes(), Some(vec![store as u8; 64]))).collect()
}

#[test]
fn stores_written_in_batches_keep_their_memtables_inside_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<Box<dyn KeyValueStore>> =
        (0..64).map(|i| RocksDbSupplier.open(&dir.path().join(format!("s{i}")), &CTX).unwrap()).collect();
    let limit = RocksDbSupplier::memory_of(&CTX).unwrap().memtable_limit;
    assert_eq!(limit, 4 << 20);
    // Each round writes ~100 KiB to every store. RocksDB alone, over its limit, flushes the
    // store being written and so leaves every store its last batch: 64 of them, ~7 MiB, none
    // big enough to stand out.
    for round in 0..4 {
        for (i, store) in stores.iter_mut().enumerate() {
            store.write_batch(&batch(i, round)).unwrap();
        }
    }
    // Flushes finish in the background; a relief runs on a write (at most every 5 ms), so
    // writes after the last one may have left more: a small write now and then relieves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut k = 0u32;
    while RocksDbSupplier::memory_of(&CTX).unwrap().memtables > limit && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        stores[0].put(format!("touch-{k}").as_bytes(), b"x").unwrap();
        k += 1;
    }
    let m = RocksDbSupplier::memory_of(&CTX).unwrap();
    assert!(m.memtables <= limit, "memtables {} bytes against a limit of {limit} ({m:?})", m.memtables);
    assert!(m.active_memtables <= limit, "{m:?}");
    // Nothing was lost on the way to disk.
    for (i, store) in stores.iter().enumerate() {
        for round in 0..4 {
            assert_eq!(store.get(format!("{i:02}-{round:02}-0999").as_bytes()).unwrap(), Some(vec![i as u8; 64]));
        }
    }
}
