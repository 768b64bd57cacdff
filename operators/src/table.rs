//! `Table<K, V>`: the latest value per key, as a stream of updates.

use std::sync::Arc;

use garam_core::serdes::{Serde, SharedSerde};
use garam_core::state::StoreSupplier;

use crate::stream::Stream;
use crate::Data;

/// How a stateful operator keeps its state: the store's name (which also names its changelog,
/// `<application.id>-<name>-changelog`), serdes, and the store backend (RocksDB by default).
pub struct Materialized<K, V> {
    pub(crate) name: String,
    pub(crate) key: Option<SharedSerde<K>>,
    pub(crate) value: Option<SharedSerde<V>>,
    pub(crate) supplier: Arc<dyn StoreSupplier>,
}

impl<K: 'static, V: 'static> Materialized<K, V> {
    /// A RocksDB store with this name (Kafka's `Materialized.as("name")`).
    pub fn named(name: &str) -> Self {
        Materialized {
            name: name.to_string(),
            key: None,
            value: None,
            supplier: Arc::new(garam_state::RocksDbSupplier),
        }
    }

    /// Sets the serdes the store uses.
    pub fn with(mut self, key: impl Serde<K>, value: impl Serde<V>) -> Self {
        self.key = Some(Arc::new(key));
        self.value = Some(Arc::new(value));
        self
    }

    /// Sets the value serde only (the key's comes from the grouping).
    pub fn with_value_serde(mut self, value: impl Serde<V>) -> Self {
        self.value = Some(Arc::new(value));
        self
    }

    /// Keeps the store in memory (rebuilt from the changelog on every start).
    pub fn in_memory(mut self) -> Self {
        self.supplier = Arc::new(garam_state::InMemorySupplier);
        self
    }

    /// Uses another store backend.
    pub fn with_supplier(mut self, supplier: impl StoreSupplier + 'static) -> Self {
        self.supplier = Arc::new(supplier);
        self
    }
}

/// A table: every record is the new value of its key. Produced by aggregations.
pub struct Table<K, V> {
    pub(crate) stream: Stream<K, V>,
    pub(crate) store: Option<String>,
}

impl<K: Data, V: Data> Table<K, V> {
    /// The stream of updates (one record per change of a key's value).
    pub fn to_stream(&self) -> Stream<K, V> {
        self.stream.clone()
    }

    /// The name of the store that materializes the table.
    pub fn store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// Keeps the updates for which `pred` holds.
    pub fn filter(&self, pred: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Table<K, V> {
        Table { stream: self.stream.filter(pred), store: None }
    }

    /// Maps the values of updates.
    pub fn map_values<V2: Data>(&self, f: impl Fn(V) -> V2 + Send + Sync + 'static) -> Table<K, V2> {
        Table { stream: self.stream.map_values(f), store: None }
    }
}
