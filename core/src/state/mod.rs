//! State stores as the runtime sees them: byte-level key-value stores, backed by a changelog topic.
//!
//! Implementations (RocksDB, in-memory) live in `garam-state`; the runtime opens one per task and
//! store under `state.dir/<application.id>/<task>/<store>`, restores it from its compacted changelog
//! topic `<application.id>-<store>-changelog` (the task's partition) before the task processes
//! input, and checkpoints the changelog offset after every commit. Operators reach a store through
//! a [`StoreHandle`]: metered, cached (see [`CacheBudget`]), changelogged and versioned.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::Result;

mod cache;
pub mod global;
mod handle;
mod query;
mod shared;
mod table_alloc;
pub mod window;

pub use cache::CacheBudget;
pub use global::{GlobalStore, GlobalTableSpec};
pub use handle::{unversion, Change, ChangeSink, StoreHandle, StoreMetrics};
pub use query::QueryView;
pub use shared::SharedResources;
pub use window::{Session, SessionStore, WindowStore};

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
    /// Applies puts (`Some`) and deletes (`None`) in order, as one batch where the backend can.
    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        for (k, v) in entries {
            match v {
                Some(v) => self.put(k, v)?,
                None => self.delete(k)?,
            }
        }
        Ok(())
    }
    /// A reader that other threads may use while the store's task writes (interactive queries).
    fn reader(&self) -> Arc<dyn ReadableStore>;
}

/// Thread-safe reads of a store's backend (interactive queries). Values are as stored, with their
/// format-version byte.
pub trait ReadableStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Every entry, in key order.
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// What a supplier gets when it opens a store. One app (or test driver) hands the same context,
/// clones of it, to every store it opens, so that its stores share one memory bound.
#[derive(Debug, Clone)]
pub struct StoreContext {
    /// RocksDB's share of `state.memory.max.bytes` (what the store caches leave): the bound on
    /// the memory of all RocksDB stores of the app together (block cache and write buffers).
    pub memory_max_bytes: u64,
    /// What the app's stores share: RocksDB's block cache and write-buffer manager.
    pub shared: SharedResources,
}

impl StoreContext {
    /// A context with resources of its own: the stores opened with it (and its clones) share
    /// them, and no others do.
    pub fn new(memory_max_bytes: u64) -> StoreContext {
        StoreContext { memory_max_bytes, shared: SharedResources::default() }
    }
}

/// Opens stores: the backend choice of a `Materialized`.
pub trait StoreSupplier: Send + Sync {
    /// Opens (or creates) the store in `dir`.
    fn open(&self, dir: &Path, ctx: &StoreContext) -> Result<Box<dyn KeyValueStore>>;
    /// True for stores on disk.
    fn persistent(&self) -> bool;
}

/// A store shared by the operators of one task.
pub type SharedStore = Rc<RefCell<StoreHandle>>;

/// A store the topology declares: its name and how to open it.
#[derive(Clone)]
pub struct StoreSpec {
    /// The store's name (from `Materialized::as`).
    pub name: String,
    /// How to open it.
    pub supplier: Arc<dyn StoreSupplier>,
    /// The typed serdes, `(SharedSerde<K>, SharedSerde<V>)`, for interactive queries.
    pub serdes: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl StoreSpec {
    /// The changelog topic of this store.
    pub fn changelog_topic(&self, application_id: &str) -> String {
        format!("{application_id}-{}-changelog", self.name)
    }
}
