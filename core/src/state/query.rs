//! [`QueryView`]: what interactive queries read of a store from other threads.
//!
//! A store belongs to its task's worker thread; its cache is not shared. Queries read the backend
//! (RocksDB and the in-memory map are safe to read while their owner writes) plus an overlay of
//! the changes the cache has sent to the changelog but not yet written to the backend. So a query
//! sees the store as of its task's last commit at least, and may see later writes: those a cache
//! evicted to the backend since, a store without a cache writes through, and those of the commit
//! under way, published as it starts. Under exactly-once these may belong to a transaction not
//! committed yet, which an abort would take back — as in Kafka Streams, whose queries read the
//! store and not a committed snapshot of it.
//! The overlay is kept only once a query has asked for the store: until then commits pay nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{unversion, Change, ReadableStore};
use crate::error::Result;

type Overlay = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// A store as interactive queries see it.
pub struct QueryView {
    name: String,
    backend: Arc<dyn ReadableStore>,
    overlay: RwLock<Overlay>,
    /// A query asked for this store: commits keep the overlay from now on.
    wanted: AtomicBool,
    /// The overlay holds everything the backend lacks (set by the owner at a commit).
    complete: AtomicBool,
}

impl QueryView {
    pub(crate) fn new(name: &str, backend: Arc<dyn ReadableStore>) -> Arc<QueryView> {
        Arc::new(QueryView {
            name: name.to_string(),
            backend,
            overlay: RwLock::new(Overlay::default()),
            wanted: AtomicBool::new(false),
            complete: AtomicBool::new(false),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the owner to keep the overlay; true once it is complete (after the owner's next
    /// commit). Stores without a cache are always complete.
    pub fn request(&self) -> bool {
        self.wanted.store(true, Ordering::Release);
        self.complete.load(Ordering::Acquire)
    }

    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Marks the view complete (a store without a cache, or after the first full publish).
    pub(crate) fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Committed changes the backend does not have yet.
    pub(crate) fn publish<'a>(&self, changes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) {
        let mut overlay = self.write();
        for (k, v) in changes {
            overlay.insert(k.to_vec(), v.map(<[u8]>::to_vec));
        }
    }

    /// The backend now has these changes.
    pub(crate) fn persisted(&self, changes: &[Change]) {
        let mut overlay = self.write();
        if overlay.is_empty() {
            return;
        }
        for (k, _) in changes {
            overlay.remove(k);
        }
    }

    /// The value of `key` (version byte removed).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let raw = match self.read().get(key) {
            Some(v) => v.clone(),
            None => self.backend.get(key)?,
        };
        raw.map(|v| Ok(unversion(&self.name, &v)?.to_vec())).transpose()
    }

    /// Entries with `from <= key < to` (`to` = `None`: to the end), in key order.
    pub fn range(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let backend = match to {
            Some(to) => self.backend.range(from, to)?,
            None => self.backend.all()?.into_iter().filter(|(k, _)| k.as_slice() >= from).collect(),
        };
        let overlay = self.read();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = backend.into_iter().collect();
        for (k, v) in overlay.iter() {
            if k.as_slice() < from || to.is_some_and(|t| k.as_slice() >= t) {
                continue;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        drop(overlay);
        merged.into_iter().map(|(k, v)| Ok((k, unversion(&self.name, &v)?.to_vec()))).collect()
    }
}
