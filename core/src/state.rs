//! State stores as the runtime sees them: byte-level key-value stores, backed by a changelog topic.
//!
//! Implementations (RocksDB, in-memory) live in `garam-state`; the runtime opens one per task and
//! store under `state.dir/<application.id>/<task>/<store>`, restores it from its compacted changelog
//! topic `<application.id>-<store>-changelog` (the task's partition) before the task processes
//! input, and checkpoints the changelog offset after every commit. Operators reach a store through
//! a [`StoreHandle`], which versions values and records every change for the changelog.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::{Result, StreamsError};

/// Format version of store values and changelog records (the first byte of each).
pub const VALUE_FORMAT_VERSION: u8 = 1;

/// A byte-level, ordered key-value store.
pub trait KeyValueStore: Send {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Sets `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]) -> Result<()>;
    /// Entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every entry, in key order.
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Makes writes durable (RocksDB: flush memtables).
    fn flush(&mut self) -> Result<()>;
    /// True for stores on disk (a checkpoint then lets a restart skip most of the restore).
    fn persistent(&self) -> bool;
}

/// What a supplier gets when it opens a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreContext {
    /// `state.memory.max.bytes`: the bound on the memory of all RocksDB stores of the process
    /// together (block cache and write buffers).
    pub memory_max_bytes: u64,
}

/// Opens stores: the backend choice of a `Materialized`.
pub trait StoreSupplier: Send + Sync {
    /// Opens (or creates) the store in `dir`.
    fn open(&self, dir: &Path, ctx: &StoreContext) -> Result<Box<dyn KeyValueStore>>;
    /// True for stores on disk.
    fn persistent(&self) -> bool;
}

/// A store as an operator uses it: versioned values, and every change queued for the changelog.
pub struct StoreHandle {
    name: String,
    inner: Box<dyn KeyValueStore>,
    /// Changes since the last drain: key → versioned value (`None`: deleted).
    pending: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    buf: Vec<u8>,
}

/// A store shared by the operators of one task.
pub type SharedStore = Rc<RefCell<StoreHandle>>;

impl StoreHandle {
    /// Wraps an opened store.
    pub fn new(name: &str, inner: Box<dyn KeyValueStore>) -> Self {
        StoreHandle { name: name.to_string(), inner, pending: Vec::new(), buf: Vec::new() }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unversion<'a>(&self, raw: &'a [u8]) -> Result<&'a [u8]> {
        match raw.split_first() {
            Some((&VALUE_FORMAT_VERSION, rest)) => Ok(rest),
            Some((v, _)) => {
                Err(StreamsError::Topology(format!("store {}: unknown value format version {v}", self.name)))
            }
            None => Err(StreamsError::Topology(format!("store {}: empty value", self.name))),
        }
    }

    /// The value of `key`, version byte removed.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.inner.get(key)? {
            Some(v) => Ok(Some(self.unversion(&v)?.to_vec())),
            None => Ok(None),
        }
    }

    /// Sets `key` and queues the change for the changelog.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.buf.clear();
        self.buf.push(VALUE_FORMAT_VERSION);
        self.buf.extend_from_slice(value);
        self.inner.put(key, &self.buf)?;
        self.pending.push((key.to_vec(), Some(self.buf.clone())));
        Ok(())
    }

    /// Removes `key` and queues a tombstone for the changelog.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.inner.delete(key)?;
        self.pending.push((key.to_vec(), None));
        Ok(())
    }

    /// Every entry, versions removed.
    pub fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.all()?.into_iter().map(|(k, v)| Ok((k, self.unversion(&v)?.to_vec()))).collect()
    }

    /// Entries with `from <= key < to`, versions removed.
    pub fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.range(from, to)?.into_iter().map(|(k, v)| Ok((k, self.unversion(&v)?.to_vec()))).collect()
    }

    /// Takes the changes queued for the changelog.
    pub fn drain_changes(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        std::mem::take(&mut self.pending)
    }

    /// Applies a changelog record during restore (already versioned; not queued again).
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(v) => {
                self.unversion(v)?;
                self.inner.put(key, v)
            }
            None => self.inner.delete(key),
        }
    }

    /// Flushes the backend.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }

    /// True for stores on disk.
    pub fn persistent(&self) -> bool {
        self.inner.persistent()
    }
}

/// A store the topology declares: its name and how to open it.
#[derive(Clone)]
pub struct StoreSpec {
    /// The store's name (from `Materialized::as`).
    pub name: String,
    /// How to open it.
    pub supplier: Arc<dyn StoreSupplier>,
}

impl StoreSpec {
    /// The changelog topic of this store.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        format!("{application_id}-{}-changelog", self.name)
    }
}
