//! The one stateful per-key operator behind `aggregate`, `count`, `reduce`, table sources and table
//! aggregations: each record updates its key's value in a store (`update(key, record, current) ->
//! new`, `None` deleting it), and the change — old and new value — is forwarded.

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
use crate::Data;

/// `update(key, record value, current value) -> new value` (`None`: absent / delete).
pub(crate) type Update<K, V, VA> = Arc<dyn Fn(&K, V, Option<VA>) -> Option<VA> + Send + Sync>;

struct KeyedUpdate<K, V, VA> {
    store: SharedStore,
    key: SharedSerde<K>,
    value: SharedSerde<VA>,
    update: Update<K, V, VA>,
    next: Fanout<K, Change<VA>>,
    /// The next group of the batch's keys (up to `WARM_AHEAD`), serialized one after another,
    /// and where each ends.
    key_buf: Vec<u8>,
    key_ends: Vec<usize>,
    value_buf: Vec<u8>,
}

/// Keys looked up ahead together: enough for the processor to wait on many slots at once, few
/// enough that theirs are still in its caches when their records come.
const WARM_AHEAD: usize = 32;

impl<K: Data, V: Data, VA: Data> Downstream<K, V> for KeyedUpdate<K, V, VA> {
    fn push(&mut self, mut batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = garam_core::batch_pool::with_capacity(batch.len());
        let mut store = self.store.borrow_mut();
        let name = store.name().to_string();
        let bad = |what: &str, e: garam_core::serdes::SerdeError| {
            StreamsError::Topology(format!("store {name}: cannot {what}: {e}"))
        };
        // Keys are serialized a group of WARM_AHEAD at a time, so each group can be looked up
        // ahead together; the buffers hold one group, not the batch (192 stores' operators each
        // keeping a batch's worth of keys cost 200 MB).
        let mut records = batch.drain(..);
        loop {
            let ahead = &records.as_slice()[..records.len().min(WARM_AHEAD)];
            if ahead.is_empty() {
                break;
            }
            self.key_buf.clear();
            self.key_ends.clear();
            for r in ahead {
                self.key.serialize(&r.key, &mut self.key_buf).map_err(|e| bad("serialize a key", e))?;
                self.key_ends.push(self.key_buf.len());
            }
            let keys = &self.key_buf;
            let ends = &self.key_ends;
            let key_at = |i: usize| &keys[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
            store.warm((0..ends.len()).map(key_at));
            for (i, r) in records.by_ref().take(ends.len()).enumerate() {
                let key = key_at(i);
                let old = store
                    .get_with(key, |v| self.value.deserialize(v))?
                    .transpose()
                    .map_err(|e| bad("read a value", e))?;
                let new = (self.update)(&r.key, r.value, old.clone());
                match &new {
                    Some(v) => {
                        self.value_buf.clear();
                        self.value.serialize(v, &mut self.value_buf).map_err(|e| bad("serialize a value", e))?;
                        store.put(key, &self.value_buf)?;
                    }
                    None if old.is_some() => store.delete(key)?,
                    None => continue,
                }
                out.push(StreamRecord {
                    key: r.key,
                    value: Change { old, new },
                    timestamp: r.timestamp,
                    headers: r.headers,
                });
            }
        }
        drop(records);
        garam_core::batch_pool::recycle(batch);
        drop(store);
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data, VA: Data>(
    store: String,
    key: SharedSerde<K>,
    value: SharedSerde<VA>,
    update: Update<K, V, VA>,
) -> Factory {
    Factory::Node(Arc::new(move |inst, id| {
        let node = KeyedUpdate {
            store: inst.store(&store)?,
            key: key.clone(),
            value: value.clone(),
            update: update.clone(),
            next: inst.children::<K, Change<VA>>(id)?,
            key_buf: Vec::new(),
            key_ends: Vec::with_capacity(WARM_AHEAD),
            value_buf: Vec::new(),
        };
        let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(node));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}
