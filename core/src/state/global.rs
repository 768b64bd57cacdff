//! Global tables: a topic replicated in full to every instance and shared by all of its tasks,
//! for joins by a key taken from the value (ad id → campaign) without repartitioning the stream.
//!
//! The runtime reads the topic's every partition to its end before any task processes a record
//! (bootstrap), then keeps reading it on a thread of its own. Stores hold typed values, decoded
//! once when a record arrives rather than on every lookup; readers take a read lock per batch.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;

/// A replicated table the runtime feeds with raw records.
pub trait GlobalStore: Send + Sync {
    /// Applies records (`None` value: delete) under one write lock. Returns the records that
    /// could not be decoded, as `(index in records, reason)`; they are skipped.
    fn apply(&self, records: &[(Option<Bytes>, Option<Bytes>)]) -> Vec<(usize, String)>;
    /// Entries held.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The store as `Any`, for the typed join operator to downcast.
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// Makes an empty global store.
pub type GlobalStoreFactory = Arc<dyn Fn() -> Arc<dyn GlobalStore> + Send + Sync>;

/// A global table the topology declares: its name, its topic, and how to make its store.
#[derive(Clone)]
pub struct GlobalTableSpec {
    /// The store's name.
    pub name: String,
    /// The topic replicated.
    pub topic: String,
    /// Makes the store.
    pub factory: GlobalStoreFactory,
}

impl std::fmt::Debug for GlobalTableSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalTableSpec").field("name", &self.name).field("topic", &self.topic).finish()
    }
}
