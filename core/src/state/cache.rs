//! The caching layer: absorbs repeated updates to a key between commits.
//!
//! A store's cache holds recently read and written entries in a hash table. A write stays in the
//! cache (dirty) until the next commit, which sends it to the changelog once per key (logged).
//! Logged entries reach the backend only when the worker's cache budget runs out or the store is
//! checkpointed: then they go in one sorted batch, which RocksDB inserts into its memtable without
//! searching from the top of its skip list for each. The changelog, not the backend, is what makes
//! a write durable, so while the working set fits the cache the backend is not written at all.
//!
//! The budget (`cache.max.bytes` divided among the worker threads) is shared by every store on a
//! worker thread, as Kafka Streams' thread cache is. An entry is charged what it really costs —
//! its key and value, its table slot at the lowest load the table is let fall to, and allocator
//! rounding — so that many small stores (64 tasks × 3 stores) stay inside the budget, not just
//! one big one.
//!
//! Each entry keeps its key and value in its 32-byte table slot when they fit in 22 bytes (a
//! count or sum per short key), else in one allocation: a lookup, and a commit's pass over the
//! dirty entries, read the table and little else. A bit per table bucket marks the dirty
//! entries, so a commit that finds few of them reads those and not the whole table: its cost
//! follows what changed since the last commit, not the size of the cache (Kafka Streams keeps a
//! set of dirty keys for the same reason).

use std::cell::Cell;
use std::hash::BuildHasher;
use std::rc::Rc;

use hashbrown::HashTable;

use super::table_alloc::TableAlloc;
use super::Change;
use crate::Result;

/// Bytes every entry costs: its 32-byte slot, control byte and mark bit in a table at 7/16 load
/// (just after it doubled, or just before [`StoreCache::shrink_if_sparse`] shrinks it).
const ENTRY_OVERHEAD: usize = 76;
/// What a key and value too long to sit in the slot cost beyond their length: allocator rounding
/// and metadata of their own block.
const HEAP_OVERHEAD: usize = 16;

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

/// [`Entry::flags`]: the entry has a value (not absent or deleted).
const HAS_VALUE: u8 = 1;
/// Read or written since the last eviction (second chance).
const USED: u8 = 2;
/// The key was new when written ([`StoreCache::write`] with `new_key`) and the backend has not
/// held it since: deleting it needs no backend write.
const FRESH_BACKEND: u8 = 4;
/// Likewise for the changelog: deleting it before any value was logged needs no tombstone.
const FRESH_CHANGELOG: u8 = 8;

/// One cached key: 32 bytes in the table, holding the key and then the value — inline when
/// they fit in [`INLINE`] bytes (a count or a sum per short key), else in one allocation.
struct Entry {
    data: Data,
    key_len: u32,
    written: Written,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32, "an entry's slot is 32 bytes");

/// Asks the processor for the cache line at `at`, without waiting for it. A prefetch never
/// faults and reads nothing, so any address will do.
#[inline(always)]
fn prefetch(at: *const Entry) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `prefetch` only hints the cache; it reads nothing and cannot fault, whatever
        // the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// How far ahead of a scan [`prefetch_ahead`] asks for entries: 32 slots, sixteen cache lines.
const PREFETCH_SLOTS: usize = 32;

/// Asks the processor for the slot a scan of the table reaches `PREFETCH_SLOTS` entries after
/// `e`. A scan visits the slots one after another at falling addresses (hashbrown lays bucket `i`
/// out before bucket `i - 1`), and a commit's scan of a big table otherwise waits on each line in
/// turn. A prefetch never faults, so an address past the table's start is harmless.
#[inline(always)]
fn prefetch_ahead(e: &Entry) {
    prefetch((e as *const Entry).wrapping_sub(PREFETCH_SLOTS));
}

/// Counts a just-logged entry as in the changelog; true when it is a tombstone for a key the
/// backend never held, which can go.
#[inline]
fn set_logged(e: &mut Entry) -> bool {
    e.written = Written::Changelog;
    if e.has(HAS_VALUE) {
        e.set(FRESH_CHANGELOG, false);
        false
    } else {
        e.has(FRESH_BACKEND)
    }
}

/// How many marked entries [`StoreCache::log_marked`] asks the processor for before it reads
/// them: enough fetches in flight to keep the memory busy while it sends.
const MARKS_AHEAD: usize = 32;

/// Key and value bytes that fit in the slot itself: reading them costs no further cache miss.
const INLINE: usize = 22;

enum Data {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Data {
    fn new(key: &[u8], value: &[u8]) -> Data {
        let len = key.len() + value.len();
        if len <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            bytes[key.len()..len].copy_from_slice(value);
            Data::Inline { len: len as u8, bytes }
        } else {
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(key);
            v.extend_from_slice(value);
            Data::Heap(v.into_boxed_slice())
        }
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Inline { len, bytes } => &bytes[..*len as usize],
            Data::Heap(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Data::Inline { len, bytes } => &mut bytes[..*len as usize],
            Data::Heap(b) => b,
        }
    }
}

impl Entry {
    fn new(key: &[u8], value: Option<&[u8]>, written: Written, flags: u8) -> Entry {
        // Keys come from records, which the log bounds far below 4 GiB.
        let key_len = u32::try_from(key.len()).expect("a store key longer than 4 GiB");
        let flags = if value.is_some() { flags | HAS_VALUE } else { flags & !HAS_VALUE };
        Entry { data: Data::new(key, value.unwrap_or_default()), key_len, written, flags }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        &self.data.bytes()[..self.key_len as usize]
    }

    #[inline]
    fn value(&self) -> Option<&[u8]> {
        self.has(HAS_VALUE).then(|| &self.data.bytes()[self.key_len as usize..])
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Replaces the value, in place when its length is unchanged (a count, a sum).
    fn set_value(&mut self, value: Option<&[u8]>) {
        let new = value.unwrap_or_default();
        let k = self.key_len as usize;
        let bytes = self.data.bytes_mut();
        if bytes.len() - k == new.len() {
            bytes[k..].copy_from_slice(new);
        } else {
            self.data = Data::new(&bytes[..k], new);
        }
        self.set(HAS_VALUE, value.is_some());
    }

    fn cost(&self) -> usize {
        match &self.data {
            Data::Inline { .. } => ENTRY_OVERHEAD,
            Data::Heap(b) => ENTRY_OVERHEAD + HEAP_OVERHEAD + b.len(),
        }
    }

    fn change(&self) -> Change {
        (self.key().to_vec(), self.value().map(<[u8]>::to_vec))
    }
}

/// One store's cache.
pub(crate) struct StoreCache {
    /// In pages of its own once it is big ([`TableAlloc`]): what the table leaves behind when it
    /// grows or shrinks goes back to the kernel.
    entries: HashTable<Entry, TableAlloc>,
    /// One bit per bucket of `entries`, set for every bucket holding an entry the changelog
    /// lacks (and perhaps for some that no longer do: a bit is a hint, the entry says), while
    /// `marked`. A commit that finds few dirty entries reads only the slots these bits name,
    /// where a scan of the table reads every one.
    marks: Vec<u64>,
    /// The marks name every dirty entry. Cleared when the table moves its entries (it grows,
    /// shrinks or rehashes) with some dirty: the next commit scans instead, and marks afresh.
    /// Rebuilding the marks at every move would tax a cache that keeps growing, or is evicted and
    /// refilled, for commits that scan anyway.
    marked: bool,
    hasher: foldhash::fast::RandomState,
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
        StoreCache {
            entries: HashTable::new_in(TableAlloc),
            marks: Vec::new(),
            marked: false,
            hasher: foldhash::fast::RandomState::default(),
            bytes: 0,
            dirty: 0,
            unpersisted: 0,
            budget,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Looks up `keys` ahead of their reads and writes, one after another with nothing depending
    /// on the results, so that the processor waits for their table slots (cache misses, in a
    /// big table) together rather than one at a time; the lookups proper then hit.
    pub(crate) fn warm<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        for key in keys {
            std::hint::black_box(self.entries.find(self.hash(key), |e| e.key() == key));
        }
    }

    fn find_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        self.entries.find_mut(hash, |e| e.key() == key)
    }

    fn insert(&mut self, entry: Entry) {
        let n = entry.cost();
        self.charge(n);
        let hash = self.hash(entry.key());
        let dirty = entry.written == Written::Nowhere;
        if self.entries.len() == self.entries.capacity() {
            // The insert would grow or rehash the table, moving entries to other buckets: do it
            // here, where it can be seen.
            let hasher = &self.hasher;
            self.entries.reserve(1, |e| hasher.hash_one(e.key()));
            self.moved();
        }
        let hasher = &self.hasher;
        let index = self.entries.insert_unique(hash, entry, |e| hasher.hash_one(e.key())).bucket_index();
        if dirty {
            self.mark(index);
        }
    }

    /// Marks bucket `index` as holding a dirty entry.
    #[inline]
    fn mark(&mut self, index: usize) {
        if self.marked {
            self.marks[index / 64] |= 1 << (index % 64);
        }
    }

    /// After the table moved its entries: the marks no longer say where the dirty ones are.
    fn moved(&mut self) {
        if self.dirty == 0 {
            self.reset_marks();
        } else {
            self.marked = false;
        }
    }

    /// No entry is dirty: every mark cleared, one per bucket.
    fn reset_marks(&mut self) {
        debug_assert_eq!(self.dirty, 0, "resetting the marks of dirty entries");
        self.marks.clear();
        self.marks.resize(self.entries.num_buckets().div_ceil(64), 0);
        self.marked = true;
    }

    fn charge(&mut self, n: usize) {
        self.bytes += n;
        self.budget.add(n);
    }

    fn forget_bytes(&mut self, n: usize) {
        self.bytes -= n;
        self.budget.sub(n);
    }

    /// `Some(value)` on a hit (`Some(None)`: known absent), `None` on a miss.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<Option<&[u8]>> {
        let e = self.find_mut(key)?;
        e.set(USED, true);
        Some(e.value())
    }

    /// Remembers what the backend holds for `key`, after a miss.
    pub(crate) fn insert_clean(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.insert(Entry::new(key, value, Written::Everywhere, USED));
    }

    /// Writes `key` (`None`: delete); it reaches the backend at the next flush. `new_key`: the
    /// caller knows the store does not hold `key` (a join buffer's unique sequence numbers), so
    /// a short-lived entry can come and go without a backend write — or, if it goes before the
    /// next commit, without a changelog record either.
    pub(crate) fn write(&mut self, key: &[u8], value: Option<&[u8]>, new_key: bool) {
        let hash = self.hash(key);
        let Ok(mut found) = self.entries.find_entry(hash, |e| e.key() == key) else {
            self.dirty += 1;
            self.unpersisted += 1;
            let fresh = if new_key { FRESH_BACKEND | FRESH_CHANGELOG } else { 0 };
            self.insert(Entry::new(key, value, Written::Nowhere, USED | fresh));
            return;
        };
        let index = found.bucket_index();
        let e = found.get_mut();
        if value.is_none() && e.has(FRESH_BACKEND) && e.has(FRESH_CHANGELOG) {
            // Neither the backend nor the changelog ever held the key: it leaves no trace.
            let (e, _) = found.remove();
            self.forget_entry(&e);
            return;
        }
        let old = e.cost();
        e.set_value(value);
        let new = e.cost();
        match e.written {
            Written::Everywhere => {
                self.dirty += 1;
                self.unpersisted += 1;
            }
            Written::Changelog => self.dirty += 1,
            Written::Nowhere => {}
        }
        e.written = Written::Nowhere;
        e.set(USED, true);
        self.bytes = self.bytes + new - old;
        self.budget.add(new);
        self.budget.sub(old);
        self.mark(index);
    }

    /// Uncounts a removed entry.
    fn forget_entry(&mut self, e: &Entry) {
        self.forget_bytes(e.cost());
        match e.written {
            Written::Nowhere => {
                self.dirty -= 1;
                self.unpersisted -= 1;
            }
            Written::Changelog => self.unpersisted -= 1,
            Written::Everywhere => {}
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
    ///
    /// While the marks name every dirty entry and under a quarter of the entries are dirty, it
    /// reads the marked buckets only; else it scans the whole table. Which is cheaper depends on
    /// the machine's memory (`commit_pass_costs` below measures both on a table of 500 K
    /// entries; BENCHMARKS.md has the figures). One machine streamed the table in 1.3 ms: there
    /// the marks (their earlier pass, which fetched a chunk and then sent it) cost 0.8 times the
    /// scan at 18 % of the entries dirty and 1.7 times at 31 %. Another took 5 ms: there the
    /// marks, whose fetches now overlap the sends, cost 0.37 times the scan at 18 % and 0.5 times
    /// at 31 %. A quarter is about where the first machine's two cross. Exactly-once's 100 ms
    /// commits in the main count bench log about a quarter of each cache on the slow machine,
    /// more on a fast one (more records per commit). So a commit's cost follows what changed,
    /// not the cache's size.
    pub(crate) fn log_dirty(&mut self, mut send: impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        if self.dirty == 0 {
            return Ok(());
        }
        if self.marked && self.dirty * 4 < self.entries.len() {
            self.log_marked(&mut send)?;
            if self.dirty == 0 {
                return Ok(());
            }
            // A dirty entry without its mark would be a bug; never lose it for that.
            debug_assert!(false, "{} dirty entries were not marked", self.dirty);
            tracing::error!(unmarked = self.dirty, "store cache: dirty entries had no mark; logging them by a scan");
        }
        self.log_scanned(&mut send)?;
        self.reset_marks();
        Ok(())
    }

    /// [`Self::log_dirty`] over the marked buckets, in bucket order. Each slot is asked for
    /// up to [`MARKS_AHEAD`] entries before it is read, so that the processor keeps that many fetches
    /// in flight while the entries before it are sent — a pipeline, not chunks fetched and then
    /// sent, which left the memory idle while a chunk was sent. A failure leaves the marks of the
    /// entries not sent.
    fn log_marked(&mut self, send: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        let mut ahead = [0usize; MARKS_AHEAD];
        // Buckets asked for and not yet read: `ahead[k % MARKS_AHEAD]` for `k` in `next..asked`.
        let (mut next, mut asked) = (0usize, 0usize);
        let (mut logged, mut dropped) = (0, 0);
        let mut word = 0;
        let mut result = Ok(());
        loop {
            while asked - next < MARKS_AHEAD && word < self.marks.len() {
                let bits = &mut self.marks[word];
                if *bits == 0 {
                    word += 1;
                    continue;
                }
                let i = word * 64 + bits.trailing_zeros() as usize;
                *bits &= *bits - 1;
                if let Some(e) = self.entries.get_bucket(i) {
                    prefetch(e);
                }
                ahead[asked % MARKS_AHEAD] = i;
                asked += 1;
            }
            if next == asked {
                break;
            }
            let i = ahead[next % MARKS_AHEAD];
            next += 1;
            let Some(e) = self.entries.get_bucket_mut(i) else { continue };
            if e.written != Written::Nowhere {
                continue;
            }
            if let Err(err) = send(e.key(), e.value()) {
                // This entry and those asked for after it keep their marks (the rest theirs).
                for k in next - 1..asked {
                    self.mark(ahead[k % MARKS_AHEAD]);
                }
                result = Err(err);
                break;
            }
            logged += 1;
            dropped += usize::from(set_logged(e));
        }
        self.count_logged(logged, dropped);
        result
    }

    /// [`Self::log_dirty`] by a scan of the whole table. Dirty entries are picked out a chunk at
    /// a time without a branch per entry — dirty and clean ones lie at random, so a branch on
    /// each would mispredict half the time, which was half of this scan's cost — then sent.
    fn log_scanned(&mut self, send: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<()>) -> Result<()> {
        const CHUNK: usize = 64;
        let mut chunk: [Option<&mut Entry>; CHUNK] = [const { None }; CHUNK];
        let (mut logged, mut dropped) = (0, 0);
        let mut entries = self.entries.iter_mut();
        let result = loop {
            let mut n = 0;
            for e in entries.by_ref() {
                prefetch_ahead(e);
                let dirty = e.written == Written::Nowhere;
                chunk[n] = Some(e);
                n += usize::from(dirty);
                if n == CHUNK {
                    break;
                }
            }
            if n == 0 {
                break Ok(());
            }
            let sent = chunk[..n].iter_mut().filter_map(Option::take).try_for_each(|e| {
                send(e.key(), e.value())?;
                logged += 1;
                dropped += usize::from(set_logged(e));
                Ok(())
            });
            if let Err(e) = sent {
                break Err(e);
            }
        };
        self.count_logged(logged, dropped);
        result
    }

    /// Counts `logged` entries as in the changelog, and removes the `dropped` among them:
    /// tombstones for keys the backend never held, logged, with nothing left to do.
    fn count_logged(&mut self, logged: usize, dropped: usize) {
        self.dirty -= logged;
        if dropped > 0 {
            let (mut freed, mut removed) = (0, 0);
            self.entries.retain(|e| {
                let gone = e.written == Written::Changelog && !e.has(HAS_VALUE) && e.has(FRESH_BACKEND);
                if gone {
                    freed += e.cost();
                    removed += 1;
                }
                !gone
            });
            self.forget_bytes(freed);
            self.unpersisted -= removed;
        }
    }

    /// The entries the backend lacks (logged or not).
    pub(crate) fn unpersisted(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.entries.iter().filter(|e| e.written != Written::Everywhere).map(|e| (e.key(), e.value()))
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
        self.entries.retain(|e| {
            if e.written == Written::Everywhere {
                return true;
            }
            if e.written == Written::Nowhere {
                dirty.push(e.change());
                if e.has(HAS_VALUE) {
                    e.set(FRESH_CHANGELOG, false);
                }
            }
            e.written = Written::Everywhere;
            if e.has(FRESH_BACKEND) {
                if !e.has(HAS_VALUE) {
                    // The backend never held the key: nothing to delete there.
                    freed += e.cost();
                    return false;
                }
                e.set(FRESH_BACKEND, false);
            }
            all.push(e.change());
            true
        });
        self.forget_bytes(freed);
        self.dirty = 0;
        self.unpersisted = 0;
        self.reset_marks();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        (all, dirty)
    }

    /// After a flush: drops the entries not used since the last eviction (all of them if that
    /// frees nothing), and gives the others a second chance.
    pub(crate) fn evict_cold(&mut self) {
        debug_assert_eq!(self.unpersisted, 0, "evicting before persisting");
        let before = self.bytes;
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = e.has(USED);
            e.set(USED, false);
            if !keep {
                freed += e.cost();
            }
            keep
        });
        self.forget_bytes(freed);
        if self.bytes == before || self.bytes >= self.budget.fair_share() {
            self.clear();
        }
        self.shrink_if_sparse();
    }

    /// Gives back a table that evictions left at under 7/16 load (the lowest a growing table
    /// reaches, which [`ENTRY_OVERHEAD`] charges for): a table keeps its capacity through
    /// removals, and 192 of them sized for their busiest moment would hold far more memory
    /// than the entries they are charged for.
    fn shrink_if_sparse(&mut self) {
        if self.entries.len() * 16 < self.entries.capacity() * 7 {
            let hasher = &self.hasher;
            self.entries.shrink_to(self.entries.len(), |e| hasher.hash_one(e.key()));
            self.moved();
        }
    }

    /// Forgets everything (after a flush).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.budget.sub(self.bytes);
        self.bytes = 0;
        self.dirty = 0;
        self.unpersisted = 0;
        self.reset_marks();
    }

    /// Forgets one key (the backend changed under the cache, as during a restore).
    pub(crate) fn forget(&mut self, key: &[u8]) {
        let hash = self.hash(key);
        if let Ok(found) = self.entries.find_entry(hash, |e| e.key() == key) {
            let (e, _) = found.remove();
            self.forget_entry(&e);
        }
    }

    /// Cached entries with `from <= key < to` (`to` = `None`: unbounded), in key order. Scans the
    /// whole cache: ranges over a key-value store are rare (queries, tests), point reads are not.
    pub(crate) fn range(&self, from: &[u8], to: Option<&[u8]>) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|e| e.key() >= from && to.is_none_or(|t| e.key() < t))
            .map(|e| (e.key(), e.value()))
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
    fn a_commit_logs_every_dirty_entry_once_and_a_failed_send_leaves_the_rest() {
        for scan in [false, true] {
            let mut c = cache();
            let key = |i: u32| format!("key-{i:04}").into_bytes();
            // 1000 keys, logged; then some updated and 100 deleted (tombstones the backend never
            // needs), so dirty and clean entries interleave: 140 updated, under a quarter of the
            // entries with the deleted, for the pass over the marks; 500 for the scan.
            let updated = if scan { 500 } else { 140 };
            for i in 0..1000 {
                c.write(&key(i), Some(b"1"), true);
            }
            assert_eq!(take_dirty(&mut c).len(), 1000);
            for i in (0..1000).step_by(1000 / updated).take(updated) {
                c.write(&key(i), Some(b"2"), false);
            }
            for i in (1..1000).step_by(10) {
                c.write(&key(i), None, false);
            }
            let expected: std::collections::BTreeSet<Vec<u8>> =
                (0..1000).step_by(1000 / updated).take(updated).chain((1..1000).step_by(10)).map(key).collect();
            assert_eq!(expected.len() * 4 < 1000, !scan);
            assert_eq!(c.dirty, expected.len());
            // The send fails on the 150th entry: 149 are logged, the rest stay dirty.
            let mut sent = Vec::new();
            let err = c.log_dirty(|k, _| {
                if sent.len() == 149 {
                    return Err(crate::StreamsError::Topology("full".into()));
                }
                sent.push(k.to_vec());
                Ok(())
            });
            assert!(err.is_err());
            assert_eq!(c.dirty, expected.len() - 149);
            let mut rest = Vec::new();
            let mut collect = |k: &[u8], _: Option<&[u8]>| {
                rest.push(k.to_vec());
                Ok(())
            };
            if scan {
                c.log_dirty(collect).unwrap();
            } else {
                // The marks alone must name what is left (`log_dirty` would fall back to a scan).
                c.log_marked(&mut collect).unwrap();
            }
            let all: Vec<Vec<u8>> = sent.into_iter().chain(rest).collect();
            assert_eq!(all.len(), expected.len(), "each dirty entry logged once");
            assert_eq!(all.into_iter().collect::<std::collections::BTreeSet<_>>(), expected);
            assert_eq!(c.dirty, 0);
            // The tombstones are gone from the cache; the rest is unpersisted, 900 live keys.
            let (backend, _) = c.take_unpersisted();
            assert_eq!(backend.len(), 900);
            assert!(backend.iter().all(|(_, v)| v.is_some()));
        }
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

    #[test]
    fn values_of_a_new_length_replace_the_old_and_bytes_follow() {
        let mut c = cache();
        c.write(b"key", Some(b"12345678"), false);
        c.write(b"key", Some(b"87654321"), false); // same length: in place
        assert_eq!(c.get(b"key"), Some(Some(&b"87654321"[..])));
        c.write(b"key", Some(b"x"), false);
        assert_eq!(c.get(b"key"), Some(Some(&b"x"[..])));
        c.write(b"key", Some(b""), false);
        assert_eq!(c.get(b"key"), Some(Some(&b""[..])), "an empty value is not a delete");
        c.write(b"key", None, false);
        assert_eq!(c.get(b"key"), Some(None));
        c.insert_clean(b"other", Some(b"v"));
        assert_eq!(c.get(b"other"), Some(Some(&b"v"[..])));
        let expected = 2 * ENTRY_OVERHEAD; // both fit inline
        assert_eq!((c.bytes, c.budget.used()), (expected, expected));
        c.write(b"long", Some(&[7; 40]), false);
        assert_eq!(c.get(b"long"), Some(Some(&[7; 40][..])));
        c.write(b"long", Some(b"short"), false); // back inline
        assert_eq!(c.get(b"long"), Some(Some(&b"short"[..])));
        c.write(b"long", Some(&[8; 40]), false);
        let expected = expected + ENTRY_OVERHEAD + HEAP_OVERHEAD + 44;
        assert_eq!((c.bytes, c.budget.used()), (expected, expected));
        let mut logged = take_dirty(&mut c);
        logged.sort();
        assert_eq!(keys(&logged), vec![(&b"key"[..], None), (&b"long"[..], Some(&[8; 40][..]))]);
    }

    #[test]
    fn an_eviction_that_empties_a_table_gives_its_memory_back() {
        let mut c = cache();
        for i in 0u32..10_000 {
            c.write(&i.to_be_bytes(), Some(b"v"), false);
        }
        let full = c.entries.capacity();
        c.take_unpersisted();
        c.evict_cold(); // every entry is used once: second chance for all, then all go
        assert!(c.entries.capacity() < full / 2, "capacity {} of {full}", c.entries.capacity());
        for i in 0u32..100 {
            c.write(&i.to_be_bytes(), Some(b"w"), false);
        }
        assert_eq!(c.get(&7u32.to_be_bytes()), Some(Some(&b"w"[..])));
        assert!(c.entries.capacity() < 1024);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u16, Option<u8>, bool),
        ReadMiss(u16, Option<u8>),
        Forget(u16),
        Log,
        LogFailingAfter(u8),
        Persist,
        PersistAndEvict,
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            40 => (0..3000u16, proptest::option::of(any::<u8>()), any::<bool>()).prop_map(|(k, v, long)| Op::Write(k, v, long)),
            5 => (0..3000u16, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::ReadMiss(k, v)),
            3 => (0..3000u16).prop_map(Op::Forget),
            3 => Just(Op::Log),
            1 => any::<u8>().prop_map(Op::LogFailingAfter),
            1 => Just(Op::Persist),
            1 => Just(Op::PersistAndEvict),
            1 => Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        /// Against a model of what the changelog lacks: every commit logs exactly the keys
        /// written since the last, with their latest values, however the table grew, shrank,
        /// evicted or failed a send in between (the marks that find dirty entries, and their
        /// giving way to a scan once the table moved them).
        #[test]
        fn a_commit_logs_exactly_what_changed_since_the_last(ops in proptest::collection::vec(op(), 1..400)) {
            let mut c = StoreCache::new(CacheBudget::new(1 << 30));
            let mut model: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
            let key = |k: u16| format!("k{k}").into_bytes();
            // A long value lives outside the slot.
            let value = |v: u8, long: bool| if long { vec![v; 40] } else { vec![v] };
            for op in ops {
                match op {
                    Op::Write(k, v, long) => {
                        let v = v.map(|v| value(v, long));
                        for i in 0..8 {
                            // Neighbours too, so that the table grows past a few buckets.
                            let k = key(k.wrapping_add(i * 3000));
                            c.write(&k, v.as_deref(), false);
                            model.insert(k, v.clone());
                        }
                    }
                    Op::ReadMiss(k, v) => {
                        let k = key(k);
                        if c.get(&k).is_none() {
                            c.insert_clean(&k, v.map(|v| vec![v]).as_deref());
                        }
                    }
                    Op::Forget(k) => {
                        c.forget(&key(k));
                        model.remove(&key(k));
                    }
                    Op::Log => {
                        let logged: std::collections::BTreeMap<_, _> = take_dirty(&mut c).into_iter().collect();
                        proptest::prop_assert_eq!(&logged, &model);
                        model.clear();
                    }
                    Op::LogFailingAfter(n) => {
                        let mut sent = Vec::new();
                        let result = c.log_dirty(|k, v| {
                            if sent.len() == n as usize {
                                return Err(crate::StreamsError::Topology("full".into()));
                            }
                            sent.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                            Ok(())
                        });
                        proptest::prop_assert_eq!(result.is_err(), model.len() > n as usize);
                        for (k, v) in sent {
                            proptest::prop_assert_eq!(model.remove(&k), Some(v));
                        }
                    }
                    Op::Persist | Op::PersistAndEvict => {
                        let (_, dirty) = c.take_unpersisted();
                        let dirty: std::collections::BTreeMap<_, _> = dirty.into_iter().collect();
                        proptest::prop_assert_eq!(&dirty, &model);
                        model.clear();
                        if matches!(op, Op::PersistAndEvict) {
                            c.evict_cold();
                        }
                    }
                    Op::Clear => {
                        c.clear();
                        model.clear();
                    }
                }
                proptest::prop_assert_eq!(c.dirty, model.len());
            }
        }
    }

    /// Not a check: prints what a commit's pass over one cache of 500 K entries costs at
    /// several dirty fractions, by the marks and by a scan (the figures and the threshold
    /// between them are in BENCHMARKS.md). Run with
    /// `cargo test --release -p garam-core --lib commit_pass_costs -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn commit_pass_costs() {
        let n = 500_000u64;
        let key = |i: u64| format!("key-{i}").into_bytes();
        for fraction in [0.01, 0.05, 0.1, 0.15, 0.2, 0.37, 0.7, 0.99] {
            for scan in [false, true] {
                let mut c = StoreCache::new(CacheBudget::new(1 << 34));
                for i in 0..n {
                    c.write(&key(i), Some(&[1; 9]), false);
                }
                c.log_scanned(&mut |_, _| Ok(())).unwrap();
                c.reset_marks();
                let (mut took, mut logged, mut x) = (std::time::Duration::ZERO, 0, 0x9e37_79b9_7f4a_7c15_u64);
                for _ in 0..10 {
                    for _ in 0..(n as f64 * fraction) as u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        c.write(&key(x % n), Some(&[2; 9]), false);
                    }
                    logged += c.dirty;
                    let start = std::time::Instant::now();
                    if scan {
                        c.log_scanned(&mut |_, _| Ok(())).unwrap();
                        c.reset_marks();
                    } else {
                        c.log_marked(&mut |_, _| Ok(())).unwrap();
                    }
                    took += start.elapsed();
                }
                println!(
                    "{:>4.0} % dirty, {}: {:6.1} ns per dirty entry, {:5.2} ms per commit",
                    fraction * 100.0,
                    if scan { "scan " } else { "marks" },
                    took.as_nanos() as f64 / logged as f64,
                    took.as_secs_f64() * 100.0
                );
            }
        }
    }
}
