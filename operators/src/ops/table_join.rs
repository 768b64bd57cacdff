//! Table-table joins (inner, left, outer): each side's change is joined with the other table's
//! current value, read from its store, and goes downstream as a change of the joined table — old
//! and new joined values — so aggregations downstream can subtract what they added.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, DownstreamRef, Fanout, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::serdes::SharedSerde;
use garam_core::state::SharedStore;
use garam_core::topology::builder::Factory;
use garam_core::{Result, StreamsError};

use crate::change::Change;
use crate::ops::stream_join::PairJoiner;
use crate::Data;

/// One side of a table-table join.
pub(crate) struct TableJoinSpec<K, V1, V2, VR> {
    /// The other table's store and value serde.
    pub other_store: String,
    pub key: SharedSerde<K>,
    pub left: SharedSerde<V1>,
    pub right: SharedSerde<V2>,
    pub joiner: PairJoiner<V1, V2, VR>,
}

struct Side<K, V1, V2, VR> {
    spec: Arc<TableJoinSpec<K, V1, V2, VR>>,
    other: SharedStore,
    next: Fanout<K, Change<VR>>,
    buf: Vec<u8>,
}

impl<K: Data, V1: Data, V2: Data, VR: Data> Side<K, V1, V2, VR> {
    fn lookup<T: 'static>(&mut self, key: &K, serde: &SharedSerde<T>) -> Result<Option<T>> {
        let mut store = self.other.borrow_mut();
        let bad = |what: &str, e: garam_core::serdes::SerdeError| {
            StreamsError::Topology(format!("store {}: cannot {what}: {e}", self.spec.other_store))
        };
        self.buf.clear();
        self.spec.key.serialize(key, &mut self.buf).map_err(|e| bad("serialize a key", e))?;
        match store.get(&self.buf)? {
            Some(b) => Ok(Some(serde.deserialize(&b).map_err(|e| bad("read a value", e))?)),
            None => Ok(None),
        }
    }
}

/// Takes the left table's changes.
struct LeftSide<K, V1, V2, VR>(Side<K, V1, V2, VR>);
/// Takes the right table's changes.
struct RightSide<K, V1, V2, VR>(Side<K, V1, V2, VR>);

impl<K: Data, V1: Data, V2: Data, VR: Data> Downstream<K, Change<V1>> for LeftSide<K, V1, V2, VR> {
    fn push(&mut self, batch: Batch<K, Change<V1>>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        let right = self.0.spec.right.clone();
        for r in batch {
            let other = self.0.lookup(&r.key, &right)?;
            let j = &self.0.spec.joiner;
            let change =
                Change { old: j(r.value.old.as_ref(), other.as_ref()), new: j(r.value.new.as_ref(), other.as_ref()) };
            if change.old.is_some() || change.new.is_some() {
                out.push(StreamRecord { key: r.key, value: change, timestamp: r.timestamp, headers: r.headers });
            }
        }
        self.0.next.push(out, ctx)
    }
}

impl<K: Data, V1: Data, V2: Data, VR: Data> Downstream<K, Change<V2>> for RightSide<K, V1, V2, VR> {
    fn push(&mut self, batch: Batch<K, Change<V2>>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        let left = self.0.spec.left.clone();
        for r in batch {
            let other = self.0.lookup(&r.key, &left)?;
            let j = &self.0.spec.joiner;
            let change =
                Change { old: j(other.as_ref(), r.value.old.as_ref()), new: j(other.as_ref(), r.value.new.as_ref()) };
            if change.old.is_some() || change.new.is_some() {
                out.push(StreamRecord { key: r.key, value: change, timestamp: r.timestamp, headers: r.headers });
            }
        }
        self.0.next.push(out, ctx)
    }
}

/// The factories of the two sides: the left one takes the left table's changes and reads the
/// right table's store, and the other way round.
pub(crate) fn factories<K: Data, V1: Data, V2: Data, VR: Data>(
    left: TableJoinSpec<K, V1, V2, VR>,
    right: TableJoinSpec<K, V1, V2, VR>,
) -> (Factory, Factory) {
    fn side<K: Data, V1: Data, V2: Data, VR: Data>(
        spec: &Arc<TableJoinSpec<K, V1, V2, VR>>,
        inst: &mut garam_core::topology::Instantiation<'_>,
        id: garam_core::topology::NodeId,
    ) -> Result<Side<K, V1, V2, VR>> {
        Ok(Side {
            spec: spec.clone(),
            other: inst.store(&spec.other_store)?,
            next: inst.children::<K, Change<VR>>(id)?,
            buf: Vec::new(),
        })
    }
    let (l, r) = (Arc::new(left), Arc::new(right));
    let lf = Factory::Node(Arc::new(move |inst, id| {
        let handle: DownstreamRef<K, Change<V1>> = Rc::new(RefCell::new(LeftSide(side(&l, inst, id)?)));
        Ok(Box::new(handle) as Box<dyn Any>)
    }));
    let rf = Factory::Node(Arc::new(move |inst, id| {
        let handle: DownstreamRef<K, Change<V2>> = Rc::new(RefCell::new(RightSide(side(&r, inst, id)?)));
        Ok(Box::new(handle) as Box<dyn Any>)
    }));
    (lf, rf)
}
