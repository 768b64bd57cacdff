//! Aggregation over a grouped stream: the store holds each key's aggregate; every record updates
//! it and the new value is forwarded.

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

/// `init()` for a key seen for the first time.
pub(crate) type Initializer<VA> = Arc<dyn Fn() -> VA + Send + Sync>;
/// `agg(key, value, aggregate) -> new aggregate`.
pub(crate) type Aggregator<K, V, VA> = Arc<dyn Fn(&K, V, VA) -> VA + Send + Sync>;

struct Aggregate<K, V, VA> {
    store: SharedStore,
    key: SharedSerde<K>,
    value: SharedSerde<VA>,
    init: Initializer<VA>,
    agg: Aggregator<K, V, VA>,
    next: Fanout<K, VA>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V: Data, VA: Data> Downstream<K, V> for Aggregate<K, V, VA> {
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
            let current = match store.get(&self.key_buf)? {
                Some(v) => self.value.deserialize(&v).map_err(|e| bad("read an aggregate", e))?,
                None => (self.init)(),
            };
            let new = (self.agg)(&r.key, r.value, current);
            self.value_buf.clear();
            self.value.serialize(&new, &mut self.value_buf).map_err(|e| bad("serialize an aggregate", e))?;
            store.put(&self.key_buf, &self.value_buf)?;
            out.push(StreamRecord { key: r.key, value: new, timestamp: r.timestamp, headers: r.headers });
        }
        drop(store);
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data, VA: Data>(
    store: String,
    key: SharedSerde<K>,
    value: SharedSerde<VA>,
    init: Initializer<VA>,
    agg: Aggregator<K, V, VA>,
) -> Factory {
    Factory::Node(Arc::new(move |inst, id| {
        let next = inst.children::<K, VA>(id)?;
        let node = Aggregate {
            store: inst.store(&store)?,
            key: key.clone(),
            value: value.clone(),
            init: init.clone(),
            agg: agg.clone(),
            next,
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        };
        let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(node));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}
