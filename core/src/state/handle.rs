//! [`StoreHandle`]: a store as an operator uses it — metered, cached, changelogged, versioned.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::cache::{CacheBudget, StoreCache};
use super::{KeyValueStore, QueryView, VALUE_FORMAT_VERSION};
use crate::error::{Result, StreamsError};

/// A changelog record: a key and its versioned value (`None`: deleted).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// What a store has done (the metered layer). `App::metrics` reports them per store name,
/// summed over the tasks that ran it on this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreMetrics {
    /// Reads.
    pub gets: u64,
    /// Reads answered by the cache.
    pub cache_hits: u64,
    /// Writes (puts and deletes).
    pub writes: u64,
    /// Entries written to the backend (after the cache absorbed repeats).
    pub backend_writes: u64,
    /// Cache flushes (commits and evictions).
    pub flushes: u64,
    /// Changelog records applied by restores.
    pub restored: u64,
}

impl StoreMetrics {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &StoreMetrics) {
        self.gets += other.gets;
        self.cache_hits += other.cache_hits;
        self.writes += other.writes;
        self.backend_writes += other.backend_writes;
        self.flushes += other.flushes;
        self.restored += other.restored;
    }

    /// What was counted since `earlier`.
    fn since(&self, earlier: &StoreMetrics) -> StoreMetrics {
        StoreMetrics {
            gets: self.gets - earlier.gets,
            cache_hits: self.cache_hits - earlier.cache_hits,
            writes: self.writes - earlier.writes,
            backend_writes: self.backend_writes - earlier.backend_writes,
            flushes: self.flushes - earlier.flushes,
            restored: self.restored - earlier.restored,
        }
    }
}

/// A store as an operator uses it. The layers, outermost first: metered (counts in
/// [`StoreMetrics`]) → caching (optional, see [`CacheBudget`]) → changelogging (every change that
/// reaches the backend is queued for the changelog) → the backend. Values carry a format-version
/// byte in the backend and in the changelog; callers never see it.
pub struct StoreHandle {
    name: String,
    inner: Box<dyn KeyValueStore>,
    cache: Option<StoreCache>,
    /// Changes that reached the backend since the last drain, for the changelog.
    pending: Vec<Change>,
    buf: Vec<u8>,
    metrics: StoreMetrics,
    /// `metrics` as last taken by [`Self::take_unreported_metrics`].
    reported: StoreMetrics,
    view: std::sync::Arc<QueryView>,
}

impl StoreHandle {
    /// Wraps an opened store, without a cache: every write reaches the backend and the changelog.
    pub fn new(name: &str, inner: Box<dyn KeyValueStore>) -> Self {
        let view = QueryView::new(name, inner.reader());
        StoreHandle {
            name: name.to_string(),
            view,
            inner,
            cache: None,
            pending: Vec::new(),
            buf: Vec::new(),
            metrics: StoreMetrics::default(),
            reported: StoreMetrics::default(),
        }
    }

    /// Wraps an opened store behind a cache drawing on `budget`.
    pub fn with_cache(name: &str, inner: Box<dyn KeyValueStore>, budget: Rc<CacheBudget>) -> Self {
        let mut h = StoreHandle::new(name, inner);
        h.cache = Some(StoreCache::new(budget));
        h
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the store has done.
    pub fn metrics(&self) -> StoreMetrics {
        self.metrics
    }

    /// What the store has done since the last call: the worker adds it to the app's metrics, so
    /// that they keep counting when the task moves away and back.
    pub fn take_unreported_metrics(&mut self) -> StoreMetrics {
        let new = self.metrics.since(&self.reported);
        self.reported = self.metrics;
        new
    }

    /// What interactive queries read from other threads: the store as of the last commit or later
    /// (see [`QueryView`]).
    pub fn view(&self) -> std::sync::Arc<QueryView> {
        self.view.clone()
    }

    /// A thread-safe reader of the backend alone (without what the cache holds).
    pub fn reader(&self) -> std::sync::Arc<dyn super::ReadableStore> {
        self.inner.reader()
    }

    fn unversion<'a>(name: &str, raw: &'a [u8]) -> Result<&'a [u8]> {
        unversion(name, raw)
    }

    /// Prepares the reads of `keys` coming next (a few dozen): in a cache larger than the
    /// processor's, their lookups then wait for memory together, not one after another.
    pub fn warm<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        if let Some(cache) = &self.cache {
            cache.warm(keys);
        }
    }

    /// The value of `key`.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, <[u8]>::to_vec)
    }

    /// `read` applied to the value of `key`, in place: a cache hit (most reads of a count or an
    /// aggregate) copies nothing.
    pub fn get_with<R>(&mut self, key: &[u8], read: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.metrics.gets += 1;
        if let Some(cache) = &mut self.cache {
            if let Some(hit) = cache.get(key) {
                self.metrics.cache_hits += 1;
                return hit.map(|v| Ok(read(Self::unversion(&self.name, v)?))).transpose();
            }
            let raw = self.inner.get(key)?;
            let out =
                raw.as_deref().map(|v| Ok::<_, StreamsError>(read(Self::unversion(&self.name, v)?))).transpose()?;
            cache.insert_clean(key, raw.as_deref());
            return Ok(out);
        }
        match self.inner.get(key)? {
            Some(v) => Ok(Some(read(Self::unversion(&self.name, &v)?))),
            None => Ok(None),
        }
    }

    /// Sets `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.buf.clear();
        self.buf.push(VALUE_FORMAT_VERSION);
        self.buf.extend_from_slice(value);
        self.write(key, true, false)
    }

    /// Sets `key`, which the caller knows the store does not hold (it was never written, or was
    /// deleted): a join buffer's keys carry unique sequence numbers. Such an entry, deleted while
    /// only the cache and changelog know it, is never written to the backend — short-lived
    /// entries cost no RocksDB write, flush or compaction.
    pub fn put_new(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.buf.clear();
        self.buf.push(VALUE_FORMAT_VERSION);
        self.buf.extend_from_slice(value);
        self.write(key, true, true)
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write(key, false, false)
    }

    /// Writes `self.buf` (`put`) or a tombstone to `key`.
    fn write(&mut self, key: &[u8], put: bool, new_key: bool) -> Result<()> {
        self.metrics.writes += 1;
        let value = put.then_some(self.buf.as_slice());
        match &mut self.cache {
            Some(cache) => {
                cache.write(key, value, new_key);
                if cache.over_budget() {
                    self.persist_cache()?;
                    if let Some(cache) = &mut self.cache {
                        cache.evict_cold();
                    }
                }
                Ok(())
            }
            None => {
                match value {
                    Some(v) => self.inner.put(key, v)?,
                    None => self.inner.delete(key)?,
                }
                self.metrics.backend_writes += 1;
                self.pending.push((key.to_vec(), value.map(<[u8]>::to_vec)));
                Ok(())
            }
        }
    }

    /// Queues the cache's changes for the changelog, once per key (see [`Self::flush_cache_to`]).
    pub fn flush_cache(&mut self) -> Result<()> {
        let mut out = Vec::new();
        self.flush_cache_to(&mut |k, v| {
            out.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            Ok(())
        })?;
        self.pending = out;
        Ok(())
    }

    /// Sends every change the changelog lacks to `send`: those queued, then the cache's, once per
    /// key, borrowed from the cache. Called at the start of every commit: the changelog is what
    /// makes them durable.
    pub fn flush_cache_to(&mut self, send: &mut ChangeSink<'_>) -> Result<()> {
        let mut queued = std::mem::take(&mut self.pending).into_iter();
        while let Some((k, v)) = queued.next() {
            if let Err(e) = send(&k, v.as_deref()) {
                // Keep what was not sent, in order.
                self.pending = std::iter::once((k, v)).chain(queued).collect();
                return Err(e);
            }
        }
        let Some(cache) = &mut self.cache else {
            self.view.set_complete();
            return Ok(());
        };
        if !self.view.wanted() {
            return cache.log_dirty(send);
        }
        if !self.view.is_complete() {
            // The first commit after a query asked: everything the backend lacks.
            self.view.publish(cache.unpersisted());
            self.view.set_complete();
            return cache.log_dirty(send);
        }
        let mut changes: Vec<Change> = Vec::new();
        cache.log_dirty(|k, v| {
            changes.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            send(k, v)
        })?;
        self.view.publish(changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
        Ok(())
    }

    /// Writes every change the backend lacks in one sorted batch (those the changelog lacks are
    /// queued for it too). Called before an eviction and before a checkpoint.
    pub fn persist_cache(&mut self) -> Result<()> {
        let Some(cache) = &mut self.cache else { return Ok(()) };
        if !cache.has_unpersisted() {
            return Ok(());
        }
        let (all, dirty) = cache.take_unpersisted();
        self.inner.write_batch(&all)?;
        self.view.persisted(&all);
        self.metrics.flushes += 1;
        self.metrics.backend_writes += all.len() as u64;
        self.pending.extend(dirty);
        Ok(())
    }

    /// The backend's entries in `[from, to)` (`to` = `None`: to the end) with the cache's on top.
    fn merged(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let backend = match to {
            Some(to) => self.inner.range(from, to)?,
            None => self.inner.all()?.into_iter().filter(|(k, _)| k.as_slice() >= from).collect(),
        };
        let entries: Vec<(Vec<u8>, Vec<u8>)> = match &self.cache {
            Some(cache) if !cache.range(from, to).is_empty() => {
                let mut map: BTreeMap<Vec<u8>, Vec<u8>> = backend.into_iter().collect();
                for (k, v) in cache.range(from, to) {
                    match v {
                        Some(v) => map.insert(k.to_vec(), v.to_vec()),
                        None => map.remove(k),
                    };
                }
                map.into_iter().collect()
            }
            _ => backend,
        };
        entries.into_iter().map(|(k, v)| Ok((k, Self::unversion(&self.name, &v)?.to_vec()))).collect()
    }

    /// Every entry, in key order.
    pub fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.merged(&[], None)
    }

    /// Entries with `from <= key < to`, in key order.
    pub fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        self.merged(from, Some(to))
    }

    /// Takes the changes queued for the changelog.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.pending)
    }

    /// Applies one changelog record during a restore (already versioned; not queued again).
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.restore_batch(vec![(key.to_vec(), value.map(<[u8]>::to_vec))])
    }

    /// Applies changelog records in offset order: sorted by key, last write per key winning, and
    /// written as one batch.
    pub fn restore_batch(&mut self, mut changes: Vec<Change>) -> Result<()> {
        for (_, v) in &changes {
            if let Some(v) = v {
                Self::unversion(&self.name, v)?;
            }
        }
        self.metrics.restored += changes.len() as u64;
        // A stable sort keeps offset order within a key; the last of each run wins.
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut latest: Vec<Change> = Vec::with_capacity(changes.len());
        for c in changes {
            match latest.last_mut() {
                Some(last) if last.0 == c.0 => *last = c,
                _ => latest.push(c),
            }
        }
        if let Some(cache) = &mut self.cache {
            for (k, _) in &latest {
                cache.forget(k);
            }
        }
        self.inner.write_batch(&latest)
    }

    /// Writes the cache to the backend and flushes it (RocksDB: memtables to disk), for a
    /// checkpoint. Changes the changelog lacks are queued for it first.
    pub fn flush(&mut self) -> Result<()> {
        self.persist_cache()?;
        self.inner.flush()
    }

    /// True for stores on disk.
    pub fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// Where [`StoreHandle::flush_cache_to`] sends each change: `(key, value)`, `None` a tombstone.
pub type ChangeSink<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<()> + 'a;

/// Strips the format-version byte of a stored value.
pub fn unversion<'a>(store: &str, raw: &'a [u8]) -> Result<&'a [u8]> {
    match raw.split_first() {
        Some((&VALUE_FORMAT_VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(StreamsError::Topology(format!("store {store}: unknown value format version {v}"))),
        None => Err(StreamsError::Topology(format!("store {store}: empty value"))),
    }
}
