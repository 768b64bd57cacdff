//! `GroupedStream<K, V>`: a stream partitioned by its key, the input of aggregations.

use std::sync::Arc;

use garam_core::serdes::{SharedSerde, U64Serde};
use garam_core::state::StoreSpec;
use garam_core::topology::builder::Factory;
use garam_core::topology::NodeKind;

use crate::ops;
use crate::stream::Stream;
use crate::table::{Materialized, Table};
use crate::Data;

/// A stream whose records with equal keys are in the same partition, so per-key state can live in
/// one task. Aggregations (`count`, `reduce`, `aggregate`) arrive with state stores.
pub struct GroupedStream<K, V> {
    stream: Stream<K, V>,
    name: Option<String>,
}

impl<K: Data, V: Data> GroupedStream<K, V> {
    pub(crate) fn new(stream: Stream<K, V>, name: Option<String>) -> Self {
        GroupedStream { stream, name }
    }

    /// The name given to the grouping (the repartition topic's), if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The co-partitioned stream behind the grouping.
    pub fn stream(&self) -> &Stream<K, V> {
        &self.stream
    }

    /// Aggregates each key's records into a value kept in a store named by `materialized`:
    /// `init()` starts a key, `agg(key, value, aggregate)` folds a record in. Every update is
    /// forwarded.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        agg: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<K, VA> {
        let (init, agg) = (Arc::new(init), Arc::new(agg));
        self.stateful("aggregate", materialized, |name, key, value| {
            ops::aggregate::factory::<K, V, VA>(name, key, value, init, agg)
        })
    }

    /// Counts records per key.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<K, u64> {
        let m = if materialized.value.is_none() { materialized.with_value_serde(U64Serde) } else { materialized };
        self.aggregate(|| 0u64, |_k, _v, n| n + 1, m)
    }

    /// Combines each key's values with `f(aggregate, value)`; the first value starts the aggregate.
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<K, V> {
        let value = materialized.value.clone().or_else(|| self.stream.value_serde.clone());
        let f = Arc::new(f);
        self.stateful("reduce", Materialized { value, ..materialized }, |name, key, value| {
            ops::reduce::factory::<K, V>(name, key, value, f)
        })
    }

    /// Adds a stateful operator `<store>-<kind>` with its store, checking the store's name and
    /// serdes (problems are reported by `build()`).
    fn stateful<VA: Data>(
        &self,
        kind: &str,
        m: Materialized<K, VA>,
        factory: impl FnOnce(String, SharedSerde<K>, SharedSerde<VA>) -> Factory,
    ) -> Table<K, VA> {
        let name = m.name.clone();
        let unbuilt = || Table {
            stream: Stream::new(self.stream.graph.clone(), self.stream.node, None, None, false),
            store: None,
        };
        let mut g = self.stream.graph.borrow_mut();
        if g.stores().iter().any(|(s, _)| s.name == name) {
            g.add_error(format!("two stores are named '{name}'; every stateful operator needs its own name"));
            drop(g);
            return unbuilt();
        }
        let key = m.key.clone().or_else(|| self.stream.key_serde.clone());
        let (Some(key), Some(value)) = (key, m.value.clone()) else {
            g.add_error(format!(
                "store '{name}' needs serdes: give them with Materialized::named(\"{name}\").with(key_serde, value_serde)"
            ));
            drop(g);
            return unbuilt();
        };
        let f = factory(name.clone(), key.clone(), value.clone());
        let id = g.add_node(format!("{name}-{kind}"), NodeKind::Processor { stores: vec![] }, &[self.stream.node], f);
        let serdes: Arc<dyn std::any::Any + Send + Sync> = Arc::new((key.clone(), value.clone()));
        g.add_store(StoreSpec { name: name.clone(), supplier: m.supplier.clone(), serdes: Some(serdes) }, id);
        drop(g);
        Table { stream: Stream::new(self.stream.graph.clone(), id, Some(key), Some(value), false), store: Some(name) }
    }
}
