//! The RocksDB store — the only module that touches `rocksdb`.
//!
//! Every store of an app shares one LRU block cache and one write-buffer manager charged to that
//! cache, sized by the app's `state.memory.max.bytes`: with many tasks and stores, RocksDB's memory
//! stays bounded instead of growing with each instance (a classic Kafka Streams complaint). They
//! live in the app's [`SharedResources`](garam_core::state::SharedResources), so two apps in one
//! process each get the bound they configure.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use garam_core::state::{KeyValueStore, ReadableStore, StoreContext, StoreSupplier};
use garam_core::{Result, StreamsError};
use rocksdb::{
    BlockBasedOptions, Cache, Direction, FlushOptions, IteratorMode, Options, WriteBatch, WriteBufferManager,
    WriteOptions, DB,
};

/// Opens RocksDB stores.
#[derive(Debug, Clone, Copy, Default)]
pub struct RocksDbSupplier;

struct Shared {
    cache: Cache,
    /// RocksDB's share of `state.memory.max.bytes`: the block cache's capacity with no store open.
    budget: usize,
    /// The block cache's capacity as last set (RocksDB's C API has no getter in `rocksdb`).
    capacity: AtomicUsize,
    write_buffers: WriteBufferManager,
    /// Every open store, so that a writer finding the memtables over budget can flush the largest.
    open: Mutex<Vec<Weak<DB>>>,
    /// When memtables were last relieved, in microseconds since `started`.
    last_relief: AtomicU64,
    started: Instant,
}

/// At most one relief per this many microseconds: a flush takes a while to free its memtable.
const RELIEF_INTERVAL_US: u64 = 5_000;
/// At most this many memtables flushed by one relief: enough to bring 192 stores' small
/// memtables back under budget within a few reliefs, few enough that one writer does not stop
/// for long scheduling them.
const MAX_FLUSHES_PER_RELIEF: usize = 16;
/// Level-0 files from which a relief leaves a store alone: RocksDB slows writes at 20 (its
/// default `level0_slowdown_writes_trigger`, which stores keep).
const LEVEL0_BUSY: usize = 16;

/// What an open RocksDB instance holds outside the block cache and the memtables' arenas, which
/// the budget counts anyway: its first memtable, manifest and WAL writers, statistics, table and
/// blob file caches, version set. `heaptrack` measured 108 KB per instance with 192 instances
/// open (64 tasks × 3 stores, empty), 21 MB in all, outside any budget until it was charged.
const INSTANCE_BYTES: usize = 128 << 10;

impl Shared {
    /// Shrinks (or grows back) the block cache by what the `open` instances hold outside it, so
    /// that RocksDB as a whole stays inside its share however many stores are open. The cache
    /// keeps at least half its share: the memtables, charged to it, may use that much.
    fn charge_instances(&self, open: usize) {
        let capacity = self.budget.saturating_sub(open * INSTANCE_BYTES).max(self.budget / 2);
        // `Cache` is a handle: setting a clone's capacity sets the shared cache's.
        self.cache.clone().set_capacity(capacity);
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Flushes the largest active memtables of all open stores when the memtables exceed their
    /// budget, until the active ones are back to three quarters of it.
    ///
    /// RocksDB's write-buffer manager counts the memtables of every instance, but when they are
    /// over its limit it flushes the memtable of the instance being written to, and only that
    /// one. A store that was written to and then went quiet keeps its memtable until it closes:
    /// a restore fills each store's memtable in turn and moves on, and with 192 stores (64 tasks
    /// × 3) at a 32 MiB budget the memtables reached 65 MB against an 8 MiB limit. A store
    /// cache writes its store in batches, when its budget runs out: RocksDB then flushes the
    /// previous batch and keeps the new one, so every store holds its last batch — with 192
    /// stores, 93 MiB of memtables against a 64 MiB limit, no one memtable over half a MiB.
    /// Stalling writers instead (`allow_stall`) hung the 64 × 3 count: stalled writers were the
    /// ones that would have triggered flushes.
    fn relieve_memtables(&self) {
        let limit = self.write_buffers.get_buffer_size();
        if self.write_buffers.get_usage() <= limit {
            return;
        }
        // Another thread relieving, or a store opening or closing: next time.
        let Ok(open) = self.open.try_lock() else { return };
        let now = self.started.elapsed().as_micros() as u64;
        let last = self.last_relief.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RELIEF_INTERVAL_US
            || self.last_relief.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let mut active: Vec<(usize, Arc<DB>)> = open
            .iter()
            .filter_map(Weak::upgrade)
            .map(|db| (int_property(&db, "rocksdb.cur-size-active-mem-table"), db))
            .collect();
        // What flushes already under way hold is freed when they finish: count the active
        // memtables only, or each relief would flush again what the last one did.
        let mutable = active.iter().fold(0usize, |sum, (size, _)| sum.saturating_add(*size));
        let mut to_free = mutable.saturating_sub(limit / 4 * 3);
        active.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        let mut flushed = 0;
        // A memtable much smaller than the budget frees little and costs a table file.
        for (size, db) in active.iter().take_while(|(size, _)| *size >= limit / 512) {
            if to_free == 0 || flushed == MAX_FLUSHES_PER_RELIEF {
                break;
            }
            // A flush that would stall the store's writes — a memtable still being flushed (two
            // unflushed, its maximum), or level 0 near its slowdown trigger — makes `flush_opt`
            // wait for the stall to clear, even without waiting for the flush, and here on a
            // writer's thread, holding `open`. RocksDB's own trigger skips such stores too.
            if int_property(db, "rocksdb.num-immutable-mem-table") > 0
                || int_property(db, "rocksdb.num-files-at-level0") >= LEVEL0_BUSY
            {
                continue;
            }
            let mut flush = FlushOptions::default();
            flush.set_wait(false);
            match db.flush_opt(&flush) {
                Ok(()) => tracing::trace!(bytes = size, "flushing a memtable: memtables over budget"),
                Err(e) => tracing::warn!(error = %e, "rocksdb: flushing a memtable over budget failed"),
            }
            flushed += 1;
            to_free = to_free.saturating_sub(*size);
        }
    }
}

/// An integer property of a store's database (0 when RocksDB has none to give).
fn int_property(db: &DB, name: &str) -> usize {
    db.property_int_value(name).ok().flatten().map_or(0, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

// RocksDB's cache and write-buffer manager are thread-safe C++ objects.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// The memory of RocksDB stores, as RocksDB counts it: an app's, or the whole process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksMemory {
    /// The memtables of all stores, active and being flushed.
    pub memtables: usize,
    /// Their budget: half of RocksDB's share of `state.memory.max.bytes`.
    pub memtable_limit: usize,
    /// The block cache's usage, which includes the memtables' reservations.
    pub block_cache: usize,
    /// The block cache's capacity: RocksDB's share less what the open instances hold outside it.
    pub block_cache_capacity: usize,
    /// The active memtables' bytes, summed over the open stores.
    pub active_memtables: usize,
    /// Immutable memtables waiting for or in a flush, over the open stores.
    pub immutable_memtables: usize,
}

impl RocksDbSupplier {
    /// What the RocksDB stores of every app in the process hold now, summed (`None` before the
    /// first one opens). Asks every open store for its memtables: for a bench or a metrics
    /// report, not a hot path.
    pub fn memory() -> Option<RocksMemory> {
        let pools: Vec<Arc<Shared>> =
            POOLS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
        pools.iter().map(|s| s.memory()).reduce(|a, b| RocksMemory {
            memtables: a.memtables + b.memtables,
            memtable_limit: a.memtable_limit + b.memtable_limit,
            block_cache: a.block_cache + b.block_cache,
            block_cache_capacity: a.block_cache_capacity + b.block_cache_capacity,
            active_memtables: a.active_memtables + b.active_memtables,
            immutable_memtables: a.immutable_memtables + b.immutable_memtables,
        })
    }

    /// What the RocksDB stores opened with `ctx` (one app's) hold now; `None` before the first
    /// one opens.
    pub fn memory_of(ctx: &StoreContext) -> Option<RocksMemory> {
        ctx.shared.get::<Shared>().map(|s| s.memory())
    }
}

impl Shared {
    fn memory(&self) -> RocksMemory {
        let (mut active_memtables, mut immutable_memtables) = (0, 0);
        for db in self.open.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade) {
            active_memtables += int_property(&db, "rocksdb.cur-size-active-mem-table");
            immutable_memtables += int_property(&db, "rocksdb.num-immutable-mem-table");
        }
        RocksMemory {
            active_memtables,
            immutable_memtables,
            memtables: self.write_buffers.get_usage(),
            memtable_limit: self.write_buffers.get_buffer_size(),
            block_cache: self.cache.get_usage(),
            block_cache_capacity: self.capacity.load(Ordering::Relaxed),
        }
    }
}

/// The block cache in 2^4 = 16 shards, not the 64 RocksDB picks for this size. Each shard evicts
/// within its own part of the capacity, and the write-buffer manager's charges for the memtables
/// (256 KiB entries, pinned while the memtables live) land in shards by hash. In 64 shards of
/// 1.3–1.6 MiB, some shards drew more pinned charges than their part and ran over it, and the
/// cache with them: 107 MiB against 104 at 64 tasks × 3 stores, 88 against 80 at 128 × 3. In 16,
/// a shard's part holds ~20 charges, and the cache stays at its capacity. Sixteen locks are
/// still plenty for two worker threads and RocksDB's background threads.
const SHARD_BITS: std::ffi::c_int = 4;

/// Every app's block cache and write-buffer manager, from when its first store opens while the
/// app (its `StoreContext`) lives, for [`RocksDbSupplier::memory`]: an app with no store open
/// any more still counts its bounds. Each registration drops the entries of apps gone.
static POOLS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The block cache and write-buffer manager of the stores opened with `ctx` (one app's), made by
/// the first of them with the app's budget.
fn shared(ctx: &StoreContext) -> Arc<Shared> {
    let budget = ctx.memory_max_bytes;
    ctx.shared.get_or_insert_with(|| {
        let mut opts = rocksdb::LruCacheOptions::default();
        opts.set_capacity(budget as usize);
        opts.set_num_shard_bits(SHARD_BITS);
        let cache = Cache::new_lru_cache_opts(&opts);
        // Memtables are charged to the cache: block cache + write buffers stay under the budget.
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache((budget / 2) as usize, false, cache.clone());
        tracing::info!(bytes = budget, "RocksDB memory bound for all stores of the app");
        Shared {
            cache,
            budget: budget as usize,
            capacity: AtomicUsize::new(budget as usize),
            write_buffers,
            open: Mutex::default(),
            last_relief: AtomicU64::new(0),
            started: Instant::now(),
        }
    })
}

fn err(e: rocksdb::Error) -> StreamsError {
    StreamsError::backend(format!("rocksdb: {e}"), false)
}

struct RocksStore {
    db: Arc<DB>,
    write: WriteOptions,
    shared: Arc<Shared>,
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        // Under the lock, so no relief holds this store's database when it closes.
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|db| db.as_ptr() != Arc::as_ptr(&self.db) && db.strong_count() > 0);
        self.shared.charge_instances(open.len());
    }
}

/// Reads for other threads: RocksDB is safe to read while its owner writes.
struct RocksReader(Arc<DB>);

fn range(db: &DB, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in db.iterator(IteratorMode::From(from, Direction::Forward)) {
        let (k, v) = item.map_err(err)?;
        if k.as_ref() >= to {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

fn all(db: &DB) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    db.iterator(IteratorMode::Start).map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err)).collect()
}

impl ReadableStore for RocksReader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.0.get(key).map_err(err)
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        range(&self.0, from, to)
    }
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        all(&self.0)
    }
}

/// A logger handing RocksDB's warnings and errors for the store in `dir` to `tracing`.
fn tracing_logger(dir: &Path) -> rocksdb::InfoLogger {
    let store = dir.display().to_string();
    rocksdb::InfoLogger::new_callback_logger(rocksdb::LogLevel::Warn, move |level, msg| {
        let msg = msg.trim_end();
        match level {
            rocksdb::LogLevel::Error | rocksdb::LogLevel::Fatal => tracing::error!(%store, "rocksdb: {msg}"),
            rocksdb::LogLevel::Warn => tracing::warn!(%store, "rocksdb: {msg}"),
            _ => tracing::debug!(%store, "rocksdb: {msg}"),
        }
    })
}

impl StoreSupplier for RocksDbSupplier {
    fn open(&self, dir: &Path, ctx: &StoreContext) -> Result<Box<dyn KeyValueStore>> {
        let s = shared(ctx);
        let mut block = BlockBasedOptions::default();
        block.set_block_cache(&s.cache);
        block.set_cache_index_and_filter_blocks(true);
        // Most reads of a count or an aggregate miss (a key seen for the first time): a bloom
        // filter answers them without reading data blocks.
        block.set_bloom_filter(10.0, false);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&block);
        opts.set_write_buffer_manager(&s.write_buffers);
        opts.set_max_write_buffer_number(2);
        // Many stores (tasks × stores) share one budget: small memtables with small arena blocks,
        // or each instance's first arena block alone (write_buffer_size / 8 by default) adds up.
        // Every store with unflushed writes holds a block: 192 stores at 256 KiB held 48 MB, more
        // than RocksDB's share of a 32 MiB budget; at 64 KiB the 64 x 3 count at that budget
        // peaked 26 MB lower.
        opts.set_write_buffer_size(8 << 20);
        opts.set_arena_block_size(64 << 10);
        opts.set_max_open_files(64);
        // The table cache is per instance: 64 shards each would cost more than their files.
        opts.set_table_cache_num_shard_bits(0);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        // No memtable bloom filter: RocksDB allocates it whole with every memtable (400 KiB at
        // 8 MiB memtables), outside the write-buffer manager — 192 stores (64 tasks × 3) held
        // ~100 MB of them — and the store cache answers most reads before RocksDB.
        // RocksDB's own log goes to `tracing`, warnings and errors only, tagged with the store's
        // directory: an info log file per instance held a 64 KiB write buffer each (13 MB over
        // 192 stores) to record mostly routine flushes. No periodic statistics dumps either.
        opts.set_info_logger(tracing_logger(dir));
        opts.set_stats_dump_period_sec(0);
        opts.set_stats_persist_period_sec(0);
        // Each open file writer (the manifest, the WAL, a flush's table) holds a buffer of up
        // to this size, 64 KiB at the least by default: 192 stores held 40 MB of them at 64 KiB.
        // Going from 16 to 4 KiB took the 192 empty stores' heap from 39.7 to 33.9 MB; a flush
        // writes its table a 4 KiB block at a time anyway.
        opts.set_writable_file_max_buffer_size(4 << 10);
        let db = DB::open(&opts, dir).map_err(err)?;
        let mut write = WriteOptions::default();
        // The changelog is the durable copy; the store's own WAL would be a second one.
        write.disable_wal(true);
        let db = Arc::new(db);
        let mut open = s.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.is_empty() {
            let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
            pools.retain(|p| p.strong_count() > 0 && p.as_ptr() != Arc::as_ptr(&s));
            pools.push(Arc::downgrade(&s));
        }
        open.push(Arc::downgrade(&db));
        s.charge_instances(open.len());
        drop(open);
        Ok(Box::new(RocksStore { db, write, shared: s }))
    }
    fn persistent(&self) -> bool {
        true
    }
}

impl KeyValueStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(err)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.put_opt(key, value, &self.write).map_err(err)?;
        self.shared.relieve_memtables();
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.db.delete_opt(key, &self.write).map_err(err)
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        range(&self.db, from, to)
    }
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        all(&self.db)
    }
    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, v) in entries {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        self.db.write_opt(batch, &self.write).map_err(err)?;
        self.shared.relieve_memtables();
        Ok(())
    }
    fn reader(&self) -> Arc<dyn ReadableStore> {
        Arc::new(RocksReader(self.db.clone()))
    }
    fn flush(&mut self) -> Result<()> {
        // Without a WAL, a checkpoint is only honest once the memtables are on disk.
        self.db.flush().map_err(err)
    }
    fn persistent(&self) -> bool {
        true
    }
}
