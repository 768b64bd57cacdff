//! Windowed aggregation over time windows (tumbling, hopping) on a window store.
//!
//! Each record updates the aggregate of every window it falls in that has not closed. A window
//! `[start, end)` closes when the operator's watermark reaches `end + grace`: under
//! [`EmitStrategy::OnWindowClose`] its final aggregate is emitted then (timestamped `end - 1`, so
//! it lies inside its window for the next windowed operator), and in both strategies the window is
//! purged from the store — retention is exactly size + grace. Records whose windows have all
//! closed are late: counted, dropped, or sent to the late topic.
//!
//! The open windows are indexed in memory by end time (rebuilt from the store when the task
//! starts), so closing windows costs one point read and one delete each, never a scan. The
//! operator's watermark is stored with the windows, under [`WINDOW_META_KEY`], so a restarted task
//! neither reopens nor re-emits a window it closed.

use std::collections::BTreeSet;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, Fanout, Lifecycle, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::serdes::{SerdeError, SharedSerde};
use garam_core::state::window::{split_window_key, write_window_key, WINDOW_META_KEY};
use garam_core::state::SharedStore;
use garam_core::topology::builder::Factory;
use garam_core::{Result, StreamsError};

use crate::change::Change;
use crate::window::{EmitStrategy, TimeWindows, Window, Windowed};
use crate::Data;

/// `aggregator(key, value, aggregate so far) -> aggregate` (`None`: the window's first record).
pub(crate) type Aggregator<K, V, VA> = Arc<dyn Fn(&K, V, Option<VA>) -> VA + Send + Sync>;

/// Where late records go, with the input's serdes.
pub(crate) struct LateTopic<K, V> {
    pub topic: String,
    pub key: SharedSerde<K>,
    pub value: SharedSerde<V>,
}

impl<K: 'static, V: 'static> LateTopic<K, V> {
    /// Counts a late record and, with a late topic, sends it there.
    pub(crate) fn handle(
        late: &Option<Self>,
        store: &str,
        r: &StreamRecord<K, V>,
        ctx: &mut TaskContext<'_>,
    ) -> Result<()> {
        ctx.counters.late += 1;
        let Some(late) = late else { return Ok(()) };
        let bad = |what: &str, e: SerdeError| {
            StreamsError::Topology(format!("store {store}: cannot serialize a late record's {what}: {e}"))
        };
        let (mut key, mut value) = (Vec::new(), Vec::new());
        late.key.serialize(&r.key, &mut key).map_err(|e| bad("key", e))?;
        late.value.serialize(&r.value, &mut value).map_err(|e| bad("value", e))?;
        ctx.collector.send(&late.topic, None, Some(&key), Some(&value), r.timestamp, &r.headers)
    }
}

/// Reads the watermark a windowed operator stored under [`WINDOW_META_KEY`].
pub(crate) fn stored_watermark(store: &str, v: &[u8]) -> Result<i64> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StreamsError::Topology(format!("store {store}: cannot read its watermark: not 8 bytes")))?;
    Ok(i64::from_be_bytes(b))
}

/// Everything one windowed aggregation needs, shared by its tasks.
pub(crate) struct WindowAggregateSpec<K, V, VA> {
    pub store: String,
    pub windows: TimeWindows,
    pub emit: EmitStrategy,
    pub key: SharedSerde<K>,
    pub value: SharedSerde<VA>,
    pub aggregator: Aggregator<K, V, VA>,
    pub late: Option<LateTopic<K, V>>,
}

struct WindowAggregate<K, V, VA> {
    spec: Arc<WindowAggregateSpec<K, V, VA>>,
    store: SharedStore,
    next: Fanout<Windowed<K>, Change<VA>>,
    /// The watermark this operator has acted on (closed windows up to).
    watermark: i64,
    /// Open windows by `(end, stored key)`.
    open: BTreeSet<(i64, Vec<u8>)>,
    windows: Vec<Window>,
    key_buf: Vec<u8>,
    store_key: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V: Data, VA: Data> WindowAggregate<K, V, VA> {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Topology(format!("store {}: cannot {what}: {e}", self.spec.store))
    }

    fn is_closed(&self, w: &Window) -> bool {
        w.end.saturating_add(self.spec.windows.grace) <= self.watermark
    }
}

impl<K: Data, V: Data, VA: Data> Downstream<K, V> for WindowAggregate<K, V, VA> {
    fn push(&mut self, mut batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = self.spec.clone();
        let on_update = spec.emit == EmitStrategy::OnWindowUpdate;
        let mut out = garam_core::batch_pool::with_capacity(if on_update { batch.len() } else { 0 });
        let store = self.store.clone();
        let mut store = store.borrow_mut();
        let bad =
            |what: &str, e: SerdeError| StreamsError::Topology(format!("store {}: cannot {what}: {e}", spec.store));
        let mut windows = std::mem::take(&mut self.windows);
        for r in batch.drain(..) {
            spec.windows.windows_into(r.timestamp, &mut windows);
            windows.retain(|w| !self.is_closed(w));
            if windows.is_empty() {
                LateTopic::handle(&spec.late, &spec.store, &r, ctx)?;
                continue;
            }
            self.key_buf.clear();
            spec.key.serialize(&r.key, &mut self.key_buf).map_err(|e| bad("serialize a key", e))?;
            let mut value = Some(r.value);
            for (i, w) in windows.iter().enumerate() {
                // The record's value moves into its last window and is cloned for the others.
                let v = if i + 1 == windows.len() { value.take() } else { value.clone() };
                let Some(v) = v else { break };
                write_window_key(&self.key_buf, w.start, &mut self.store_key)?;
                let old = match store.get_with(&self.store_key, |b| spec.value.deserialize(b))? {
                    Some(v) => Some(v.map_err(|e| bad("read an aggregate", e))?),
                    None => {
                        self.open.insert((w.end, self.store_key.clone()));
                        None
                    }
                };
                let (previous, start) = if on_update { (old.clone(), old) } else { (None, old) };
                let new = (spec.aggregator)(&r.key, v, start);
                self.value_buf.clear();
                spec.value.serialize(&new, &mut self.value_buf).map_err(|e| bad("serialize an aggregate", e))?;
                store.put(&self.store_key, &self.value_buf)?;
                if on_update {
                    out.push(StreamRecord {
                        key: Windowed { key: r.key.clone(), window: *w },
                        value: Change { old: previous, new: Some(new) },
                        timestamp: r.timestamp,
                        headers: r.headers.clone(),
                    });
                }
            }
        }
        self.windows = windows;
        garam_core::batch_pool::recycle(batch);
        drop(store);
        self.next.push(out, ctx)
    }
}

impl<K: Data, V: Data, VA: Data> Lifecycle for WindowAggregate<K, V, VA> {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        let store = self.store.clone();
        let entries = store.borrow().all()?;
        for (k, v) in entries {
            if k == WINDOW_META_KEY {
                self.watermark = crate::ops::window_aggregate::stored_watermark(&self.spec.store, &v)?;
            } else if let Some((_, start)) = split_window_key(&k) {
                self.open.insert((start.saturating_add(self.spec.windows.size), k));
            } else {
                return Err(self.error("read a window", "the key does not have the window layout"));
            }
        }
        // Under exactly-once, a window closed before the stored watermark was emitted and deleted
        // in the transaction that stored the watermark; it is here only if its delete was lost
        // (compaction removed the tombstone before this copy of the store read it, on a backend
        // with no resume floor). Dropped, never emitted again. Under at-least-once the watermark
        // may have reached the changelog without the window's result reaching its topic (a crash
        // mid-commit), so the window stays, to be emitted again when the watermark next moves:
        // a duplicate, never a loss.
        if !ctx.exactly_once {
            return Ok(());
        }
        let grace = self.spec.windows.grace;
        let mut closed = 0u64;
        while let Some((end, _)) = self.open.first() {
            if end.saturating_add(grace) > self.watermark {
                break;
            }
            let Some((_, stored)) = self.open.pop_first() else { break };
            store.borrow_mut().delete(&stored)?;
            closed += 1;
        }
        if closed > 0 {
            tracing::warn!(store = %self.spec.store, windows = closed, watermark = self.watermark,
                "dropped windows the store held past their close (their deletes were lost)");
        }
        Ok(())
    }

    fn on_watermark(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        if ctx.watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = ctx.watermark;
        let spec = self.spec.clone();
        let store = self.store.clone();
        let mut store = store.borrow_mut();
        let mut out = Vec::new();
        while let Some((end, _)) = self.open.first() {
            if end.saturating_add(spec.windows.grace) > self.watermark {
                break;
            }
            let Some((end, stored)) = self.open.pop_first() else { break };
            if spec.emit == EmitStrategy::OnWindowClose {
                if let Some(v) = store.get(&stored)? {
                    let (key, start) = split_window_key(&stored)
                        .ok_or_else(|| self.error("read a window", "the key does not have the window layout"))?;
                    let key = spec.key.deserialize(key).map_err(|e| self.error("read a key", e))?;
                    let value = spec.value.deserialize(&v).map_err(|e| self.error("read an aggregate", e))?;
                    out.push(StreamRecord::new(
                        Windowed { key, window: Window { start, end } },
                        Change { old: None, new: Some(value) },
                        end.saturating_sub(1),
                    ));
                }
            }
            store.delete(&stored)?;
        }
        store.put(WINDOW_META_KEY, &self.watermark.to_be_bytes())?;
        drop(store);
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data, VA: Data>(spec: WindowAggregateSpec<K, V, VA>) -> Factory {
    let spec = Arc::new(spec);
    Factory::Node(Arc::new(move |inst, id| {
        let node = WindowAggregate {
            spec: spec.clone(),
            store: inst.store(&spec.store)?,
            next: inst.children::<Windowed<K>, Change<VA>>(id)?,
            watermark: i64::MIN,
            open: BTreeSet::new(),
            windows: Vec::new(),
            key_buf: Vec::new(),
            store_key: Vec::new(),
            value_buf: Vec::new(),
        };
        Ok(crate::ops::registered::<K, V, _>(inst, node))
    }))
}
