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
use crate::Result;

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
    /// The key was new when written ([`StoreCache::write`] with `new_key`) and the backend has not
    /// held it since: deleting it needs no backend write.
    fresh_backend: bool,
    /// Likewise for the changelog: deleting it before any value was logged needs no tombstone.
    fresh_changelog: bool,
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
        let entry =
            Entry { value, written: Written::Everywhere, used: true, fresh_backend: false, fresh_changelog: false };
        self.entries.insert(key.to_vec(), entry);
    }

    /// Writes `key` (`None`: delete); it reaches the backend at the next flush. `new_key`: the
    /// caller knows the store does not hold `key` (a join buffer's unique sequence numbers), so
    /// a short-lived entry can come and go without a backend write — or, if it goes before the
    /// next commit, without a changelog record either.
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>, new_key: bool) {
        if value.is_none() && self.entries.get(key).is_some_and(|e| e.fresh_backend && e.fresh_changelog) {
            self.forget(key);
            return;
        }
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
                let entry = Entry {
                    value,
                    written: Written::Nowhere,
                    used: true,
                    fresh_backend: new_key,
                    fresh_changelog: new_key,
                };
                self.entries.insert(key.to_vec(), entry);
            }
        }
    }

    /// True when the worker's caches together are over their budget and this one holds at
    /// least its fair share: the caches that hold more evict, not the one that happens to write
    /// (which could be nearly empty, and would then flush a handful of entries on every write).
    pub(crate) fn over_budget(&self) -> bool {
        self.budget.exceeded() && self.bytes >= self.budget.fair_share()
    }

    /// Hands each entry the changelog lacks to `send`, borrowed (no copy: a commit under
    /// exactly-once logs most of the cache), and counts it as logged. Stops at the first error;
    /// the entries not sent stay unlogged.
    pub(crate) fn log_dirty(&mut self, mut send: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        if self.dirty == 0 {
            return Ok(());
        }
        let (mut freed, mut dropped, mut logged) = (0, 0, 0);
        let mut failed = None;
        self.entries.retain(|k, e| {
            if e.written != Written::Nowhere || failed.is_some() {
                return true;
            }
            if let Err(err) = send(k, e.value.as_deref()) {
                failed = Some(err);
                return true;
            }
            logged += 1;
            e.written = Written::Changelog;
            if e.value.is_some() {
                e.fresh_changelog = false;
            } else if e.fresh_backend {
                // A tombstone for a key the backend never held: logged, nothing is left to do.
                freed += cost(k, &e.value);
                dropped += 1;
                return false;
            }
            true
        });
        self.forget_bytes(freed);
        self.unpersisted -= dropped;
        self.dirty -= logged;
        failed.map_or(Ok(()), Err)
    }

    fn forget_bytes(&mut self, n: usize) {
        self.bytes -= n;
        self.budget.sub(n);
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
        let mut freed = 0;
        self.entries.retain(|k, e| {
            if e.written == Written::Everywhere {
                return true;
            }
            if e.written == Written::Nowhere {
                dirty.push((k.clone(), e.value.clone()));
                if e.value.is_some() {
                    e.fresh_changelog = false;
                }
            }
            e.written = Written::Everywhere;
            if e.fresh_backend {
                if e.value.is_none() {
                    // The backend never held the key: nothing to delete there.
                    freed += cost(k, &e.value);
                    return false;
                }
                e.fresh_backend = false;
            }
            all.push((k.clone(), e.value.clone()));
            true
        });
        self.forget_bytes(freed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> StoreCache {
        StoreCache::new(CacheBudget::new(1 << 20))
    }

    fn take_dirty(c: &mut StoreCache) -> Vec<Change> {
        let mut out = Vec::new();
        c.log_dirty(|k, v| {
            out.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            Ok(())
        })
        .unwrap();
        out
    }

    fn keys(changes: &[Change]) -> Vec<(&[u8], Option<&[u8]>)> {
        changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect()
    }

    #[test]
    fn a_new_key_deleted_before_the_commit_leaves_no_trace() {
        let mut c = cache();
        c.write(b"k", Some(b"v"), true);
        c.write(b"k", None, false);
        assert!(take_dirty(&mut c).is_empty());
        assert!(!c.has_unpersisted());
        assert_eq!((c.bytes, c.budget.used()), (0, 0));
    }

    #[test]
    fn a_new_key_deleted_after_it_was_logged_gets_a_tombstone_in_the_changelog_only() {
        let mut c = cache();
        c.write(b"k", Some(b"v"), true);
        assert_eq!(keys(&take_dirty(&mut c)), vec![(&b"k"[..], Some(&b"v"[..]))]);
        c.write(b"k", Some(b"w"), false); // an update keeps the key new to the backend
        c.write(b"k", None, false);
        assert_eq!(keys(&take_dirty(&mut c)), vec![(&b"k"[..], None)]);
        let (backend, log) = c.take_unpersisted();
        assert!(backend.is_empty() && log.is_empty(), "the backend never held k");
        assert_eq!(c.get(b"k"), None, "forgotten: a read asks the backend");
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn a_new_key_persisted_before_its_delete_is_deleted_from_the_backend() {
        let mut c = cache();
        c.write(b"k", Some(b"v"), true);
        let (backend, log) = c.take_unpersisted();
        assert_eq!(
            (keys(&backend), keys(&log)),
            (vec![(&b"k"[..], Some(&b"v"[..]))], vec![(&b"k"[..], Some(&b"v"[..]))])
        );
        c.write(b"k", None, false);
        let (backend, log) = c.take_unpersisted();
        assert_eq!((keys(&backend), keys(&log)), (vec![(&b"k"[..], None)], vec![(&b"k"[..], None)]));
    }

    #[test]
    fn a_key_not_known_to_be_new_is_always_deleted_everywhere() {
        let mut c = cache();
        c.write(b"k", Some(b"v"), false);
        c.write(b"k", None, false);
        let (backend, log) = c.take_unpersisted();
        assert_eq!((keys(&backend), keys(&log)), (vec![(&b"k"[..], None)], vec![(&b"k"[..], None)]));
    }
}
