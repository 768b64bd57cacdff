//! Reduce over a grouped stream: the first value of a key starts its aggregate.

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

use crate::Data;

struct Reduce<K, V> {
    store: SharedStore,
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    f: Arc<dyn Fn(V, V) -> V + Send + Sync>,
    next: Fanout<K, V>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V: Data> Downstream<K, V> for Reduce<K, V> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = Vec::with_capacity(batch.len());
        let mut store = self.store.borrow_mut();
        let name = store.name().to_string();
        let bad = |what: &str, e: garam_core::serdes::SerdeError| {
            StreamsError::Topology(format!("store {name}: cannot {what}: {e}"))
        };
        for r in batch {
            self.key_buf.clear();
            self.key.serialize(&r.key, &mut self.key_buf).map_err(|e| bad("serialize a key", e))?;
            let new = match store.get(&self.key_buf)? {
                Some(v) => (self.f)(self.value.deserialize(&v).map_err(|e| bad("read an aggregate", e))?, r.value),
                None => r.value,
            };
            self.value_buf.clear();
            self.value.serialize(&new, &mut self.value_buf).map_err(|e| bad("serialize an aggregate", e))?;
            store.put(&self.key_buf, &self.value_buf)?;
            out.push(StreamRecord { key: r.key, value: new, timestamp: r.timestamp, headers: r.headers });
        }
        drop(store);
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data>(
    store: String,
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    f: Arc<dyn Fn(V, V) -> V + Send + Sync>,
) -> Factory {
    Factory::Node(Arc::new(move |inst, id| {
        let next = inst.children::<K, V>(id)?;
        let node = Reduce {
            store: inst.store(&store)?,
            key: key.clone(),
            value: value.clone(),
            f: f.clone(),
            next,
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        };
        let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(node));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}
