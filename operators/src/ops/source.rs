//! Source: deserializes fetched records into a typed batch.

use std::sync::Arc;

use garam_core::backend::TopicPartition;
use garam_core::batch_pool;
use garam_core::processor::{Fanout, RawSource, TaskContext};
use garam_core::record::{ConsumedRecord, StreamRecord};
use garam_core::serdes::{deserialize_opt, SharedSerde};
use garam_core::topology::builder::Factory;
use garam_core::Result;

use crate::builder::TimestampExtractor;
use crate::Data;

struct Source<K, V> {
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    timestamp: Option<TimestampExtractor<K, V>>,
    next: Fanout<K, V>,
}

impl<K: Data, V: Data> RawSource for Source<K, V> {
    fn push_raw(
        &mut self,
        tp: &TopicPartition,
        mut records: Vec<ConsumedRecord>,
        ctx: &mut TaskContext<'_>,
    ) -> Result<()> {
        let mut batch = batch_pool::with_capacity(records.len());
        for r in records.drain(..) {
            let key = match deserialize_opt(&*self.key, r.key.as_deref()) {
                Ok(k) => k,
                Err(e) => {
                    ctx.deserialization_failed(tp, &r, "key", e)?;
                    continue;
                }
            };
            let value = match deserialize_opt(&*self.value, r.value.as_deref()) {
                Ok(v) => v,
                Err(e) => {
                    ctx.deserialization_failed(tp, &r, "value", e)?;
                    continue;
                }
            };
            let timestamp = match &self.timestamp {
                Some(f) => f(&key, &value, r.timestamp),
                None => r.timestamp,
            };
            batch.push(StreamRecord { key, value, timestamp, headers: r.headers });
        }
        batch_pool::recycle(records);
        // Operators see the stream time of the records before them (a processor tracks it per
        // record); the task's stream time moves once the batch is through.
        let max = batch.iter().map(|r| r.timestamp).max();
        self.next.push(batch, ctx)?;
        if let Some(m) = max {
            ctx.stream_time = ctx.stream_time.max(m);
            ctx.batch_max_timestamp = ctx.batch_max_timestamp.max(m);
        }
        Ok(())
    }
}

pub(crate) fn factory<K: Data, V: Data>(
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    timestamp: Option<TimestampExtractor<K, V>>,
) -> Factory {
    Factory::Source(Arc::new(move |inst, id| {
        let next = inst.children::<K, V>(id)?;
        Ok(Box::new(Source { key: key.clone(), value: value.clone(), timestamp: timestamp.clone(), next })
            as Box<dyn RawSource>)
    }))
}
