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
pub mod window;

pub use cache::CacheBudget;
pub use global::{GlobalStore, GlobalTableSpec};
pub use handle::{unversion, Change, ChangeSink, StoreHandle, StoreMetrics};
pub use query::QueryView;
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
#[derive(Debug, Clone, Default)]
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

/// Resources the stores of one app share, one of each type, made by the first store that asks.
/// Per app, not per process: two apps in one process each get the memory bound they configure.
/// Clones share.
///
/// ```
/// use garam_core::state::SharedResources;
/// struct BlockCache(usize);
/// let app = SharedResources::default();
/// let first = app.get_or_insert_with(|| BlockCache(64));
/// let again = app.clone().get_or_insert_with(|| BlockCache(128));
/// assert_eq!(again.0, 64, "made once per app");
/// assert!(std::sync::Arc::ptr_eq(&first, &again));
/// let other_app = SharedResources::default();
/// assert_eq!(other_app.get_or_insert_with(|| BlockCache(128)).0, 128);
/// ```
#[derive(Clone, Default)]
pub struct SharedResources(Arc<std::sync::Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>>);

impl SharedResources {
    /// The resource of type `T`, made with `make` if there is none yet.
    pub fn get_or_insert_with<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = all.iter().find_map(|r| r.clone().downcast::<T>().ok()) {
            return found;
        }
        let made = Arc::new(make());
        all.push(made.clone());
        made
    }

    /// The resource of type `T`, if a store made one.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().find_map(|r| r.clone().downcast::<T>().ok())
    }
}

impl std::fmt::Debug for SharedResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |all| all.len());
        write!(f, "SharedResources({n} made)")
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
