//! `Table<K, V>`: the latest value per key, as a stream of changes; and [`GroupedTable`], a table
//! re-grouped by a new key for aggregation with an adder and a subtractor.

use std::sync::Arc;

use garam_core::serdes::{ArcSerde, OptionSerde, Serde, SharedSerde, U64Serde};
use garam_core::state::{StoreSpec, StoreSupplier};
use garam_core::topology::NodeKind;

use crate::builder::{Grouped, Repartitioned};
use crate::change::{Change, ChangeSerde};
use crate::ops::keyed_update::{self, Update};
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

/// A table: the latest value of each key. It travels as a stream of [`Change`]s (old and new
/// value), produced by aggregations and by [`StreamBuilder::table`](crate::StreamBuilder::table).
pub struct Table<K, V> {
    pub(crate) changes: Stream<K, Change<V>>,
    pub(crate) value_serde: Option<SharedSerde<V>>,
    pub(crate) store: Option<String>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table { changes: self.changes.clone(), value_serde: self.value_serde.clone(), store: self.store.clone() }
    }
}

fn change_serde<V: 'static>(value: &Option<SharedSerde<V>>) -> Option<SharedSerde<Change<V>>> {
    value.clone().map(|v| Arc::new(ChangeSerde(v)) as SharedSerde<Change<V>>)
}

impl<K: Data, V: Data> Table<K, V> {
    pub(crate) fn from_changes(
        changes: Stream<K, Change<V>>,
        value_serde: Option<SharedSerde<V>>,
        store: Option<String>,
    ) -> Self {
        let mut changes = changes;
        changes.value_serde = change_serde(&value_serde);
        Table { changes, value_serde, store }
    }

    /// The table's updates as a stream of new values (deletions are not in it; see
    /// [`Table::to_stream_with_deletes`]).
    pub fn to_stream(&self) -> Stream<K, V> {
        let mut s = self.changes.flat_map_values(|c: Change<V>| c.new);
        s.value_serde = self.value_serde.clone();
        s
    }

    /// The table's updates with deletions as `None` — written to a topic, they are tombstones.
    pub fn to_stream_with_deletes(&self) -> Stream<K, Option<V>> {
        let mut s = self.changes.map_values(|c: Change<V>| c.new);
        s.value_serde = self.value_serde.clone().map(|v| Arc::new(OptionSerde(ArcSerde(v))) as SharedSerde<Option<V>>);
        s
    }

    /// The table's changes, old and new value.
    pub fn to_change_stream(&self) -> Stream<K, Change<V>> {
        self.changes.clone()
    }

    /// The store holding this table, if it is materialized.
    pub fn store_name(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// The rows that satisfy `pred`. A row that stops satisfying it is deleted downstream.
    pub fn filter(&self, pred: impl Fn(&K, &V) -> bool + Send + Sync + 'static) -> Table<K, V> {
        let changes = self
            .changes
            .map_values_with_key(move |k, c: Change<V>| Change {
                old: c.old.filter(|v| pred(k, v)),
                new: c.new.filter(|v| pred(k, v)),
            })
            .filter(|_, c| c.old.is_some() || c.new.is_some());
        Table::from_changes(changes, self.value_serde.clone(), None)
    }

    /// Each row's value through `f` (old and new values alike).
    pub fn map_values<V2: Data>(&self, f: impl Fn(V) -> V2 + Send + Sync + 'static) -> Table<K, V2> {
        let changes = self.changes.map_values(move |c: Change<V>| Change { old: c.old.map(&f), new: c.new.map(&f) });
        Table::from_changes(changes, None, None)
    }

    /// Gives the values' serde (after `map_values`, before `group_by` or `to_stream().to(..)`).
    pub fn with_value_serde(&self, value: impl Serde<V>) -> Table<K, V> {
        Table::from_changes(self.changes.clone(), Some(Arc::new(value)), self.store.clone())
    }

    /// Re-groups the rows by a new key (and value) for aggregation, through the repartition topic
    /// `<application.id>-<grouped name>-repartition`. A changed row leaves its old group (the old
    /// value goes to the subtractor) and joins its new one (the new value goes to the adder).
    pub fn group_by<K2: Data, V2: Data>(
        &self,
        selector: impl Fn(&K, &V) -> (K2, V2) + Send + Sync + 'static,
        grouped: Grouped<K2, V2>,
    ) -> GroupedTable<K2, V2> {
        let regrouped = self.changes.flat_map(move |k: K, c: Change<V>| {
            let old = c.old.map(|o| {
                let (k2, v2) = selector(&k, &o);
                (k2, Change { old: Some(v2), new: None })
            });
            let new = c.new.map(|n| {
                let (k2, v2) = selector(&k, &n);
                (k2, Change { old: None, new: Some(v2) })
            });
            old.into_iter().chain(new)
        });
        let mut r = Repartitioned::<K2, Change<V2>>::named(&grouped.name);
        r.key = grouped.key;
        r.value = change_serde(&grouped.value);
        GroupedTable { changes: regrouped.repartition(r), value_serde: grouped.value }
    }
}

/// A table re-grouped by a new key: the input of aggregations that add a row's new value to its
/// group and subtract its old one (Kafka Streams' `KGroupedTable`).
pub struct GroupedTable<K, V> {
    changes: Stream<K, Change<V>>,
    value_serde: Option<SharedSerde<V>>,
}

impl<K: Data, V: Data> GroupedTable<K, V> {
    /// Aggregates each group: `init()` starts it, `adder(key, value, agg)` adds a row's new value,
    /// `subtractor(key, value, agg)` removes a row's old value.
    pub fn aggregate<VA: Data>(
        &self,
        init: impl Fn() -> VA + Send + Sync + 'static,
        adder: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        subtractor: impl Fn(&K, V, VA) -> VA + Send + Sync + 'static,
        materialized: Materialized<K, VA>,
    ) -> Table<K, VA> {
        let update: Update<K, Change<V>, VA> = Arc::new(move |k, c, current| {
            let mut agg = current.unwrap_or_else(&init);
            if let Some(old) = c.old {
                agg = subtractor(k, old, agg);
            }
            if let Some(new) = c.new {
                agg = adder(k, new, agg);
            }
            Some(agg)
        });
        stateful(&self.changes, "aggregate", materialized, update)
    }

    /// Counts the rows in each group.
    pub fn count(&self, materialized: Materialized<K, u64>) -> Table<K, u64> {
        let m = if materialized.value.is_none() { materialized.with_value_serde(U64Serde) } else { materialized };
        self.aggregate(|| 0u64, |_, _, n| n + 1, |_, _, n| n.saturating_sub(1), m)
    }

    /// Combines each group's values: `adder(agg, new value)`, `subtractor(agg, old value)`.
    pub fn reduce(
        &self,
        adder: impl Fn(V, V) -> V + Send + Sync + 'static,
        subtractor: impl Fn(V, V) -> V + Send + Sync + 'static,
        materialized: Materialized<K, V>,
    ) -> Table<K, V> {
        let value = materialized.value.clone().or_else(|| self.value_serde.clone());
        let update: Update<K, Change<V>, V> = Arc::new(move |_, c, current| {
            let mut agg = current;
            if let Some(old) = c.old {
                agg = agg.map(|a| subtractor(a, old));
            }
            if let Some(new) = c.new {
                agg = Some(match agg {
                    Some(a) => adder(a, new),
                    None => new,
                });
            }
            agg
        });
        stateful(&self.changes, "reduce", Materialized { value, ..materialized }, update)
    }
}

impl<K: Data, V: Data> Table<K, V> {
    fn table_join<V2: Data, VR: Data>(
        &self,
        other: &Table<K, V2>,
        kind: &str,
        joiner: crate::ops::stream_join::PairJoiner<V, V2, VR>,
    ) -> Table<K, VR> {
        use crate::ops::table_join::{factories, TableJoinSpec};
        let mut g = self.changes.graph.borrow_mut();
        let key = self.changes.key_serde.clone().or_else(|| other.changes.key_serde.clone());
        let (Some(ls), Some(rs), Some(key), Some(left), Some(right)) =
            (self.store.clone(), other.store.clone(), key, self.value_serde.clone(), other.value_serde.clone())
        else {
            g.add_error(
                "a table-table join needs both tables materialized with serdes (from builder.table or an \
                 aggregation)"
                    .to_string(),
            );
            drop(g);
            let none = self.changes.flat_map_values(|_| std::iter::empty::<Change<VR>>());
            return Table::from_changes(none, None, None);
        };
        let spec = |other_store: &str| TableJoinSpec {
            other_store: other_store.to_string(),
            key: key.clone(),
            left: left.clone(),
            right: right.clone(),
            joiner: joiner.clone(),
        };
        let (lf, rf) = factories(spec(&rs), spec(&ls));
        let base = format!("{ls}-{rs}-{kind}");
        let l = g.add_node(format!("{base}-this"), NodeKind::Processor { stores: vec![] }, &[self.changes.node], lf);
        let r = g.add_node(format!("{base}-other"), NodeKind::Processor { stores: vec![] }, &[other.changes.node], rf);
        let m = g.add_node(
            format!("{base}-merge"),
            NodeKind::Processor { stores: vec![] },
            &[l, r],
            crate::ops::stateless::pass::<K, Change<VR>>(),
        );
        g.connect_store(&rs, l);
        g.connect_store(&ls, r);
        drop(g);
        let changes = Stream::new(self.changes.graph.clone(), m, Some(key), None, false);
        Table::from_changes(changes, None, None)
    }

    /// Joins two co-partitioned tables: a key has a joined value while both tables have one.
    /// Every update of either side goes downstream as a change of the joined table.
    pub fn join<V2: Data, VR: Data>(
        &self,
        other: &Table<K, V2>,
        joiner: impl Fn(&V, &V2) -> VR + Send + Sync + 'static,
    ) -> Table<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| match (a, b) {
            (Some(a), Some(b)) => Some(joiner(a, b)),
            _ => None,
        });
        self.table_join(other, "join", j)
    }

    /// Like [`Table::join`], and a key has a joined value whenever this table has one.
    pub fn left_join<V2: Data, VR: Data>(
        &self,
        other: &Table<K, V2>,
        joiner: impl Fn(&V, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> Table<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| a.map(|a| joiner(a, b)));
        self.table_join(other, "left-join", j)
    }

    /// Like [`Table::join`], and a key has a joined value whenever either table has one.
    pub fn outer_join<V2: Data, VR: Data>(
        &self,
        other: &Table<K, V2>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> VR + Send + Sync + 'static,
    ) -> Table<K, VR> {
        let j = Arc::new(move |a: Option<&V>, b: Option<&V2>| (a.is_some() || b.is_some()).then(|| joiner(a, b)));
        self.table_join(other, "outer-join", j)
    }
}

/// Adds the stateful operator `<store>-<kind>` over `input` with its store, checking the store's
/// name and serdes (problems are reported by `build()`).
pub(crate) fn stateful<K: Data, V: Data, VA: Data>(
    input: &Stream<K, V>,
    kind: &str,
    m: Materialized<K, VA>,
    update: Update<K, V, VA>,
) -> Table<K, VA> {
    let name = m.name.clone();
    let unbuilt = || Table::from_changes(input.map_values(|_| Change { old: None, new: None }), None, None);
    let mut g = input.graph.borrow_mut();
    if g.stores().iter().any(|(s, _)| s.name == name) {
        g.add_error(format!("two stores are named '{name}'; every stateful operator needs its own name"));
        drop(g);
        return unbuilt();
    }
    let key = m.key.clone().or_else(|| input.key_serde.clone());
    let (Some(key), Some(value)) = (key, m.value.clone()) else {
        g.add_error(format!(
            "store '{name}' needs serdes: give them with Materialized::named(\"{name}\").with(key_serde, value_serde)"
        ));
        drop(g);
        return unbuilt();
    };
    let f = keyed_update::factory::<K, V, VA>(name.clone(), key.clone(), value.clone(), update);
    let id = g.add_node(format!("{name}-{kind}"), NodeKind::Processor { stores: vec![] }, &[input.node], f);
    let serdes: Arc<dyn std::any::Any + Send + Sync> = Arc::new((key.clone(), value.clone()));
    g.add_store(StoreSpec { name: name.clone(), supplier: m.supplier.clone(), serdes: Some(serdes) }, id);
    drop(g);
    let changes = Stream::new(input.graph.clone(), id, Some(key), None, false);
    Table::from_changes(changes, Some(value), Some(name))
}
