//! Sink: serializes records into reused buffers and hands them to the task's collector.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, DownstreamRef, TaskContext};
use garam_core::serdes::SharedSerde;
use garam_core::topology::builder::Factory;
use garam_core::topology::TopicRef;
use garam_core::{Result, StreamsError};

use crate::builder::StreamPartitioner;
use crate::Data;

/// Where a sink writes.
pub(crate) enum Destination<K, V> {
    /// One topic.
    Fixed(TopicRef),
    /// A topic per record.
    PerRecord(Arc<dyn Fn(&K, &V) -> String + Send + Sync>),
}

impl<K, V> Clone for Destination<K, V> {
    fn clone(&self) -> Self {
        match self {
            Destination::Fixed(t) => Destination::Fixed(t.clone()),
            Destination::PerRecord(f) => Destination::PerRecord(f.clone()),
        }
    }
}

struct Sink<K, V> {
    topic: Option<String>,
    choose: Option<Arc<dyn Fn(&K, &V) -> String + Send + Sync>>,
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    partitioner: Option<StreamPartitioner<K, V>>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V: Data> Downstream<K, V> for Sink<K, V> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        for r in &batch {
            let chosen;
            let topic = match (&self.topic, &self.choose) {
                (Some(t), _) => t.as_str(),
                (None, Some(f)) => {
                    chosen = f(&r.key, &r.value);
                    chosen.as_str()
                }
                (None, None) => return Err(StreamsError::Topology("internal: sink without a topic".into())),
            };
            let ser = |what, e: garam_core::serdes::SerdeError| StreamsError::Serialization {
                what,
                topic: topic.to_string(),
                reason: e.to_string(),
            };
            self.key_buf.clear();
            self.value_buf.clear();
            self.key.serialize(&r.key, &mut self.key_buf).map_err(|e| ser("key", e))?;
            self.value.serialize(&r.value, &mut self.value_buf).map_err(|e| ser("value", e))?;
            let key = (!self.key.is_null(&r.key)).then_some(self.key_buf.as_slice());
            let value = (!self.value.is_null(&r.value)).then_some(self.value_buf.as_slice());
            let partition = match &self.partitioner {
                Some(p) => {
                    let n = ctx.collector.partition_count(topic)?;
                    Some(p(&r.key, &r.value, n) % n.max(1))
                }
                None => None,
            };
            ctx.collector.send(topic, partition, key, value, r.timestamp, &r.headers)?;
            ctx.counters.records_out += 1;
        }
        garam_core::batch_pool::recycle(batch);
        Ok(())
    }
}

pub(crate) fn factory<K: Data, V: Data>(
    dest: Destination<K, V>,
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    partitioner: Option<StreamPartitioner<K, V>>,
) -> Factory {
    Factory::Node(Arc::new(move |inst, _id| {
        let (topic, choose) = match &dest {
            Destination::Fixed(t) => (Some(t.resolve(inst.application_id())), None),
            Destination::PerRecord(f) => (None, Some(f.clone())),
        };
        let sink = Sink {
            topic,
            choose,
            key: key.clone(),
            value: value.clone(),
            partitioner: partitioner.clone(),
            key_buf: Vec::with_capacity(64),
            value_buf: Vec::with_capacity(256),
        };
        let handle: DownstreamRef<K, V> = Rc::new(RefCell::new(sink));
        Ok(Box::new(handle) as Box<dyn Any>)
    }))
}
