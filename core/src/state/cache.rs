//! The caching layer: absorbs repeated updates to a key between commits.
//!
//! A store's cache holds recently read and written entries in a hash map. A write stays in the
//! cache (dirty) until the next commit, which sends it to the changelog once per key (logged).
//! Logged entries reach the backend only when the worker's cache budget runs out or the store is
//! checkpointed: then they go in one sorted batch, which RocksDB inserts into its memtable without
//! searching from the top of its skip list for each. The changelog, not the backend, is what makes
//! a write durable, so while the working set fits the cache the backend is not written at all.
//!
//! The budget (`cache.max.bytes` divided among the worker threads) is shared by every store on a
//! worker thread, as Kafka Streams' thread cache is.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use super::Change;

/// Bytes an entry costs beyond its key and value (map slot, two vectors, allocator rounding).
const ENTRY_OVERHEAD: usize = 96;

/// The cache budget of one worker thread, shared by the stores of its tasks.
#[derive(Debug)]
pub struct CacheBudget {
    max: usize,
    used: Cell<usize>,
    /// Caches drawing on the budget.
    caches: Cell<usize>,
}

impl CacheBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Rc<CacheBudget> {
        Rc::new(CacheBudget { max, used: Cell::new(0), caches: Cell::new(0) })
    }

    /// Bytes in use by every cache on this budget.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    fn add(&self, n: usize) {
        self.used.set(self.used.get() + n);
    }

    fn sub(&self, n: usize) {
        self.used.set(self.used.get().saturating_sub(n));
    }

    fn exceeded(&self) -> bool {
        self.used.get() > self.max
    }

    /// Each cache's fair share of the budget.
    fn fair_share(&self) -> usize {
        self.max / self.caches.get().max(1)
    }
}

/// Where an entry's latest value has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// The backend holds it (and so does the changelog).
    Everywhere,
    /// Only the cache holds it.
    Nowhere,
    /// The changelog holds it; the backend does not yet.
    Changelog,
}

struct Entry {
    /// The versioned value; `None`: absent or deleted.
    value: Option<Vec<u8>>,
    written: Written,
    /// Read or written since the last eviction (second chance).
    used: bool,
}

fn cost(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

/// One store's cache.
pub(crate) struct StoreCache {
    entries: HashMap<Vec<u8>, Entry, foldhash::fast::RandomState>,
    bytes: usize,
    /// Entries not in the changelog.
    dirty: usize,
    /// Entries not in the backend.
    unpersisted: usize,
    budget: Rc<CacheBudget>,
}

impl StoreCache {
    pub(crate) fn new(budget: Rc<CacheBudget>) -> Self {
        budget.caches.set(budget.caches.get() + 1);
        StoreCache { entries: HashMap::default(), bytes: 0, dirty: 0, unpersisted: 0, budget }
    }

    /// `Some(value)` on a hit (`Some(None)`: known absent), `None` on a miss.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Option<&[u8]>> {
        let e = self.entries.get_mut(key)?;
        e.used = true;
        Some(e.value.as_deref())
    }

    /// Remembers what the backend holds for `key`, after a miss.
    pub(crate) fn insert_clean(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let n = cost(key, &value);
        self.bytes += n;
        self.budget.add(n);
        self.entries.insert(key.to_vec(), Entry { value, written: Written::Everywhere, used: true });
    }

    /// Writes `key` (`None`: delete); it reaches the backend at the next flush.
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>) {
        match self.entries.get_mut(key) {
            Some(e) => {
                let old = cost(key, &e.value);
                match (&mut e.value, value) {
                    (Some(v), Some(new)) => {
                        v.clear();
                        v.extend_from_slice(new);
                    }
                    (slot, new) => *slot = new.map(<[u8]>::to_vec),
                }
                let new = cost(key, &e.value);
                self.bytes = self.bytes + new - old;
                self.budget.add(new);
                self.budget.sub(old);
                match e.written {
                    Written::Everywhere => {
                        self.dirty += 1;
                        self.unpersisted += 1;
                    }
                    Written::Changelog => self.dirty += 1,
                    Written::Nowhere => {}
                }
                e.written = Written::Nowhere;
                e.used = true;
            }
            None => {
                let value = value.map(<[u8]>::to_vec);
                let n = cost(key, &value);
                self.bytes += n;
                self.budget.add(n);
                self.dirty += 1;
                self.unpersisted += 1;
                self.entries.insert(key.to_vec(), Entry { value, written: Written::Nowhere, used: true });
            }
        }
    }

    /// True when the worker's caches together are over their budget and this one holds at
    /// least its fair share: the caches that hold more evict, not the one that happens to write
    /// (which could be nearly empty, and would then flush a handful of entries on every write).
    pub(crate) fn over_budget(&self) -> bool {
        self.budget.exceeded() && self.bytes >= self.budget.fair_share()
    }

    /// The entries the changelog lacks, now counted as logged.
    pub(crate) fn take_dirty(&mut self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.dirty);
        if self.dirty == 0 {
            return out;
        }
        for (k, e) in self.entries.iter_mut().filter(|(_, e)| e.written == Written::Nowhere) {
            e.written = Written::Changelog;
            out.push((k.clone(), e.value.clone()));
        }
        self.dirty = 0;
        out
    }

    /// The entries the backend lacks (logged or not).
    pub(crate) fn unpersisted(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.written != Written::Everywhere)
            .map(|(k, e)| (k.as_slice(), e.value.as_deref()))
    }

    /// True when some entry is not in the backend yet.
    pub(crate) fn has_unpersisted(&self) -> bool {
        self.unpersisted > 0
    }

    /// The entries the backend lacks, in key order, now counted as written everywhere; and those
    /// of them the changelog lacks too.
    pub(crate) fn take_unpersisted(&mut self) -> (Vec<Change>, Vec<Change>) {
        let mut all = Vec::with_capacity(self.unpersisted);
        let mut dirty = Vec::with_capacity(self.dirty);
        if self.unpersisted == 0 {
            return (all, dirty);
        }
        for (k, e) in self.entries.iter_mut().filter(|(_, e)| e.written != Written::Everywhere) {
            if e.written == Written::Nowhere {
                dirty.push((k.clone(), e.value.clone()));
            }
            e.written = Written::Everywhere;
            all.push((k.clone(), e.value.clone()));
        }
        self.dirty = 0;
        self.unpersisted = 0;
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        (all, dirty)
    }

    /// After a flush: drops the entries not used since the last eviction (all of them if that
    /// frees nothing), and gives the others a second chance.
    pub(crate) fn evict_cold(&mut self) {
        debug_assert_eq!(self.unpersisted, 0, "evicting before persisting");
        let before = self.bytes;
        let mut freed = 0;
        self.entries.retain(|k, e| {
            let keep = std::mem::replace(&mut e.used, false);
            if !keep {
                freed += cost(k, &e.value);
            }
            keep
        });
        self.bytes -= freed;
        self.budget.sub(freed);
        if self.bytes == before || self.bytes >= self.budget.fair_share() {
            self.clear();
        }
    }

    /// Forgets everything (after a flush).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.budget.sub(self.bytes);
        self.bytes = 0;
        self.dirty = 0;
        self.unpersisted = 0;
    }

    /// Forgets one key (the backend changed under the cache, as during a restore).
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            let n = cost(key, &e.value);
            self.bytes -= n;
            self.budget.sub(n);
            match e.written {
                Written::Nowhere => {
                    self.dirty -= 1;
                    self.unpersisted -= 1;
                }
                Written::Changelog => self.unpersisted -= 1,
                Written::Everywhere => {}
            }
        }
    }

    /// Cached entries with `from <= key < to` (`to` = `None`: unbounded), in key order. Scans the
    /// whole cache: ranges over a key-value store are rare (queries, tests), point reads are not.
    pub(crate) fn range(&self, from: &[u8], to: Option<&[u8]>) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(k, _)| k.as_slice() >= from && to.is_none_or(|t| k.as_slice() < t))
            .map(|(k, e)| (k.as_slice(), e.value.as_deref()))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }
}

impl Drop for StoreCache {
    fn drop(&mut self) {
        self.budget.caches.set(self.budget.caches.get().saturating_sub(1));
        self.budget.sub(self.bytes);
    }
}
