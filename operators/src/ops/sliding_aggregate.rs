//! Sliding windows (Kafka Streams' `SlidingWindows`): windows of a fixed time difference `d`
//! defined by the records themselves. For each record at `t` there is the window `[t - d, t]`
//! ending at it, and the window `[t + 1, t + 1 + d]` starting just after it (when it holds
//! records); every distinct such window with records in it gets a result.
//!
//! The operator buffers each key's records (values in the store, `(time, seq)` in memory) and
//! computes a window's aggregate from the buffer: when it closes (the watermark reaches its end
//! plus grace plus one) under [`EmitStrategy::OnWindowClose`], or each time a record changes it
//! under [`EmitStrategy::OnWindowUpdate`]. A record is purged once every window holding it has
//! closed. Recomputing from the buffer costs the records in a window per result — fine for the
//! handful per key a window usually holds; Kafka's incremental algorithm is the next step for
//! dense keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, Fanout, Lifecycle, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::serdes::SharedSerde;
use garam_core::state::window::WINDOW_META_KEY;
use garam_core::state::{SharedStore, StoreHandle};
use garam_core::topology::builder::Factory;
use garam_core::{Result, StreamsError};

use crate::change::Change;
use crate::ops::window_aggregate::{stored_watermark, Aggregator, LateTopic};
use crate::window::{EmitStrategy, Window, Windowed};
use crate::Data;

/// Everything one sliding-window aggregation needs, shared by its tasks.
pub(crate) struct SlidingAggregateSpec<K, V, VA> {
    pub store: String,
    pub difference: i64,
    pub grace: i64,
    pub emit: EmitStrategy,
    pub key: SharedSerde<K>,
    pub input: SharedSerde<V>,
    pub aggregator: Aggregator<K, V, VA>,
    pub late: Option<LateTopic<K, V>>,
}

/// What the close-time map holds: a window to emit, or a record to purge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The window of `key` ending at this time.
    Window(Vec<u8>, i64),
    /// The record of `key` at `(time, seq)`.
    Purge(Vec<u8>, i64, u64),
}

struct SlidingAggregate<K, V, VA> {
    spec: Arc<SlidingAggregateSpec<K, V, VA>>,
    store: SharedStore,
    next: Fanout<Windowed<K>, Change<VA>>,
    watermark: i64,
    /// Per key, the buffered records' `(time, seq)`, sorted.
    records: crate::ops::KeyMap<Vec<(i64, u64)>>,
    /// Per key, the window ends still to be emitted (deduplicates candidates).
    pending: crate::ops::KeyMap<BTreeSet<i64>>,
    /// `(due time, 0 for windows / 1 for purges, seq) → what`: at equal times windows go first —
    /// a record's purge is due when the last window holding it closes. Seqs are unique.
    due: BTreeMap<(i64, u8, u64), Due>,
    next_seq: u64,
    key_buf: Vec<u8>,
    store_key: Vec<u8>,
    value_buf: Vec<u8>,
}

fn record_key(key: &[u8], time: i64, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

fn split_record_key(raw: &[u8]) -> Option<(&[u8], i64, u64)> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = raw.get(4..4 + len)?;
    let rest = raw.get(4 + len..)?;
    if rest.len() != 16 {
        return None;
    }
    let time = (u64::from_be_bytes(rest[..8].try_into().ok()?) ^ (1 << 63)) as i64;
    Some((key, time, u64::from_be_bytes(rest[8..].try_into().ok()?)))
}

impl<K: Data, V: Data, VA: Data> SlidingAggregate<K, V, VA> {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Topology(format!("store {}: cannot {what}: {e}", self.spec.store))
    }

    /// When the window ending at `end` closes.
    fn close_at(&self, end: i64) -> i64 {
        end.saturating_add(self.spec.grace).saturating_add(1)
    }

    /// Buffers a record's `(time, seq)` and schedules its windows and its purge; true when the
    /// window starting just after it is new.
    fn track(&mut self, key: &[u8], t: i64, seq: u64) -> bool {
        let times = self.records.entry_ref(key).or_default();
        let at = times.partition_point(|x| *x < (t, seq));
        times.insert(at, (t, seq));
        let d = self.spec.difference;
        let mut after_is_new = false;
        for end in [t, t.saturating_add(1).saturating_add(d)] {
            let close = self.close_at(end);
            if close <= self.watermark {
                continue; // emitted before a restart
            }
            if self.pending.entry_ref(key).or_default().insert(end) {
                self.due.insert((close, 0, self.next_seq), Due::Window(key.to_vec(), end));
                self.next_seq += 1;
                after_is_new = end != t;
            }
        }
        let purge = self.close_at(t.saturating_add(d));
        self.due.insert((purge, 1, self.next_seq), Due::Purge(key.to_vec(), t, seq));
        self.next_seq += 1;
        after_is_new
    }

    /// The aggregate of `key`'s records in `[end - d, end]`, or `None` when there are none.
    fn aggregate(&mut self, store: &mut StoreHandle, kb: &[u8], k: &K, end: i64) -> Result<Option<VA>> {
        let start = end.saturating_sub(self.spec.difference);
        let Some(times) = self.records.get(kb) else { return Ok(None) };
        let first = times.partition_point(|x| x.0 < start);
        let within: Vec<(i64, u64)> = times[first..].iter().take_while(|x| x.0 <= end).copied().collect();
        let mut agg = None;
        for (t, seq) in within {
            record_key(kb, t, seq, &mut self.store_key);
            let Some(bytes) = store.get(&self.store_key)? else { continue };
            let v = self.spec.input.deserialize(&bytes).map_err(|e| self.error("read a buffered record", e))?;
            agg = Some((self.spec.aggregator)(k, v, agg));
        }
        Ok(agg)
    }

    fn result(k: K, end: i64, d: i64, value: VA, timestamp: i64) -> StreamRecord<Windowed<K>, Change<VA>> {
        StreamRecord::new(
            Windowed { key: k, window: Window { start: end.saturating_sub(d), end: end.saturating_add(1) } },
            Change { old: None, new: Some(value) },
            timestamp,
        )
    }
}

impl<K: Data, V: Data, VA: Data> Downstream<K, V> for SlidingAggregate<K, V, VA> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = self.spec.clone();
        let store = self.store.clone();
        let mut store = store.borrow_mut();
        let d = spec.difference;
        let mut out = Vec::new();
        for r in batch {
            let t = r.timestamp;
            if t.saturating_add(spec.grace) < self.watermark {
                LateTopic::handle(&spec.late, &spec.store, &r, ctx)?;
                continue;
            }
            self.key_buf.clear();
            spec.key.serialize(&r.key, &mut self.key_buf).map_err(|e| self.error("serialize a key", e))?;
            let kb = std::mem::take(&mut self.key_buf);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.value_buf.clear();
            spec.input.serialize(&r.value, &mut self.value_buf).map_err(|e| self.error("serialize a value", e))?;
            record_key(&kb, t, seq, &mut self.store_key);
            store.put(&self.store_key, &self.value_buf)?;
            let after_is_new = self.track(&kb, t, seq);
            if spec.emit == EmitStrategy::OnWindowUpdate {
                // Every pending window this record falls in has a new aggregate, and the window
                // starting just after it, if new, may hold earlier records.
                let mut ends: Vec<i64> = self
                    .pending
                    .get(&kb)
                    .map(|p| p.range(t..=t.saturating_add(d)).copied().collect())
                    .unwrap_or_default();
                if after_is_new {
                    ends.push(t.saturating_add(1).saturating_add(d));
                }
                for end in ends {
                    if let Some(agg) = self.aggregate(&mut store, &kb, &r.key, end)? {
                        out.push(Self::result(r.key.clone(), end, d, agg, t));
                    }
                }
            }
            self.key_buf = kb;
        }
        drop(store);
        self.next.push(out, ctx)
    }
}

impl<K: Data, V: Data, VA: Data> Lifecycle for SlidingAggregate<K, V, VA> {
    fn init(&mut self, _ctx: &mut TaskContext<'_>) -> Result<()> {
        let store = self.store.clone();
        let entries = store.borrow().all()?;
        let mut buffered = Vec::new();
        for (k, v) in entries {
            if k == WINDOW_META_KEY {
                self.watermark = stored_watermark(&self.spec.store, &v)?;
            } else {
                let (key, t, seq) =
                    split_record_key(&k).ok_or_else(|| self.error("read the buffer", "a key has the wrong layout"))?;
                buffered.push((key.to_vec(), t, seq));
            }
        }
        for (key, t, seq) in buffered {
            self.next_seq = self.next_seq.max(seq + 1);
            let _ = self.track(&key, t, seq);
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
        while let Some((&(at, ..), _)) = self.due.first_key_value() {
            if at > self.watermark {
                break;
            }
            let Some((_, due)) = self.due.pop_first() else { break };
            match due {
                Due::Window(kb, end) => {
                    if let Some(p) = self.pending.get_mut(&kb) {
                        p.remove(&end);
                        if p.is_empty() {
                            self.pending.remove(&kb);
                        }
                    }
                    if spec.emit == EmitStrategy::OnWindowClose {
                        let k = spec.key.deserialize(&kb).map_err(|e| self.error("read a key", e))?;
                        if let Some(agg) = self.aggregate(&mut store, &kb, &k, end)? {
                            out.push(Self::result(k, end, spec.difference, agg, end));
                        }
                    }
                }
                Due::Purge(kb, t, seq) => {
                    if let Some(times) = self.records.get_mut(&kb) {
                        times.retain(|x| *x != (t, seq));
                        if times.is_empty() {
                            self.records.remove(&kb);
                        }
                    }
                    record_key(&kb, t, seq, &mut self.store_key);
                    store.delete(&self.store_key)?;
                }
            }
        }
        store.put(WINDOW_META_KEY, &self.watermark.to_be_bytes())?;
        drop(store);
        self.next.push(out, ctx)
    }
}

pub(crate) fn factory<K: Data, V: Data, VA: Data>(spec: SlidingAggregateSpec<K, V, VA>) -> Factory {
    let spec = Arc::new(spec);
    Factory::Node(Arc::new(move |inst, id| {
        let node = SlidingAggregate {
            spec: spec.clone(),
            store: inst.store(&spec.store)?,
            next: inst.children::<Windowed<K>, Change<VA>>(id)?,
            watermark: i64::MIN,
            records: Default::default(),
            pending: Default::default(),
            due: BTreeMap::new(),
            next_seq: 0,
            key_buf: Vec::new(),
            store_key: Vec::new(),
            value_buf: Vec::new(),
        };
        Ok(crate::ops::registered::<K, V, _>(inst, node))
    }))
}
