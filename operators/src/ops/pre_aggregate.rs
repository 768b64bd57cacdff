//! Per-batch pre-aggregation (Flink's local aggregation before a shuffle): each batch's records
//! are folded per (new key, time window) and one partial aggregate per pair goes on, timestamped
//! with the latest record it folded in. Nothing is kept between batches, so there is no state to
//! restore; the windowed aggregate after the repartition merges the partials.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, Fanout, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::topology::builder::Factory;
use garam_core::Result;

use super::node;
use crate::Data;

/// `split(record key, value) -> (new key, part)`, `init()`, `fold(aggregate, part)`.
pub(crate) struct PreAggregateSpec<K, V, K2, V2, VA> {
    pub size_ms: i64,
    pub split: Arc<dyn Fn(K, V) -> (K2, V2) + Send + Sync>,
    pub init: Arc<dyn Fn() -> VA + Send + Sync>,
    pub fold: Arc<dyn Fn(VA, V2) -> VA + Send + Sync>,
}

struct PreAggregate<K, V, K2, V2, VA> {
    spec: Arc<PreAggregateSpec<K, V, K2, V2, VA>>,
    partials: HashMap<(K2, i64), (Option<VA>, i64), foldhash::fast::RandomState>,
    next: Fanout<K2, VA>,
}

impl<K: Data, V: Data, K2: Data + Hash + Eq, V2, VA: Data> Downstream<K, V> for PreAggregate<K, V, K2, V2, VA> {
    fn push(&mut self, mut batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = &self.spec;
        for r in batch.drain(..) {
            let window = r.timestamp - r.timestamp.rem_euclid(spec.size_ms);
            let (key, part) = (spec.split)(r.key, r.value);
            let entry = self.partials.entry((key, window)).or_insert((None, r.timestamp));
            let current = entry.0.take().unwrap_or_else(|| (spec.init)());
            entry.0 = Some((spec.fold)(current, part));
            entry.1 = entry.1.max(r.timestamp);
        }
        garam_core::batch_pool::recycle(batch);
        let mut out = garam_core::batch_pool::with_capacity(self.partials.len());
        out.extend(
            self.partials
                .drain()
                .filter_map(|((key, _), (value, timestamp))| Some(StreamRecord::new(key, value?, timestamp))),
        );
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data, K2: Data + Hash + Eq, V2: 'static, VA: Data>(
    spec: PreAggregateSpec<K, V, K2, V2, VA>,
) -> Factory {
    let spec = Arc::new(spec);
    node::<K, V, K2, VA, _>(move |next| PreAggregate {
        spec: spec.clone(),
        partials: HashMap::with_hasher(foldhash::fast::RandomState::default()),
        next,
    })
}
