//! Session windows: a key's records closer than the inactivity gap form one session; a record
//! that bridges two sessions merges them (their aggregates combined with the merger).
//!
//! A session `[first, last]` can still grow while a record at `last + gap` would not be late, so it
//! closes when the watermark passes `last + gap + grace`; a record is late when it is behind the
//! watermark by more than grace — it could only have joined a closed session. Closed sessions are
//! emitted (under [`EmitStrategy::OnWindowClose`]) and purged.
//!
//! Open sessions are indexed in memory — per key, and by close time — rebuilt from the store when
//! the task starts, so finding a key's sessions is a hash lookup, never a store scan. Under
//! [`EmitStrategy::OnWindowUpdate`] a merge emits a deletion (`new: None`) for each session merged
//! away and the merged session's value.

use std::collections::BTreeSet;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, Fanout, Lifecycle, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::serdes::SharedSerde;
use garam_core::state::window::{session_key, split_session_key, WINDOW_META_KEY};
use garam_core::state::SharedStore;
use garam_core::topology::builder::Factory;
use garam_core::{Result, StreamsError};

use crate::change::Change;
use crate::ops::window_aggregate::{Aggregator, LateTopic};
use crate::window::{EmitStrategy, SessionWindows, Window, Windowed};
use crate::Data;

/// Combines the aggregates of two sessions a record bridges.
pub(crate) type Merger<K, VA> = Arc<dyn Fn(&K, VA, VA) -> VA + Send + Sync>;

/// Everything one session aggregation needs, shared by its tasks.
pub(crate) struct SessionAggregateSpec<K, V, VA> {
    pub store: String,
    pub windows: SessionWindows,
    pub emit: EmitStrategy,
    pub key: SharedSerde<K>,
    pub value: SharedSerde<VA>,
    pub aggregator: Aggregator<K, V, VA>,
    pub merger: Merger<K, VA>,
    pub late: Option<LateTopic<K, V>>,
}

struct SessionAggregate<K, V, VA> {
    spec: Arc<SessionAggregateSpec<K, V, VA>>,
    store: SharedStore,
    next: Fanout<Windowed<K>, Change<VA>>,
    watermark: i64,
    /// Open sessions `(start, end)` per serialized key.
    by_key: crate::ops::KeyMap<Vec<(i64, i64)>>,
    /// Open sessions by `(close time, key, start, end)`.
    closing: BTreeSet<(i64, Vec<u8>, i64, i64)>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V: Data, VA: Data> SessionAggregate<K, V, VA> {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Topology(format!("store {}: cannot {what}: {e}", self.spec.store))
    }

    /// When a session whose last record is at `end` closes.
    fn close_at(&self, end: i64) -> i64 {
        end.saturating_add(self.spec.windows.gap).saturating_add(self.spec.windows.grace).saturating_add(1)
    }

    /// Takes the first session the watermark has closed out of the index: `(key, start, end)`.
    fn pop_closed(&mut self) -> Option<(Vec<u8>, i64, i64)> {
        if self.closing.first().is_none_or(|(at, ..)| *at > self.watermark) {
            return None;
        }
        let (_, kb, start, end) = self.closing.pop_first()?;
        if let Some(sessions) = self.by_key.get_mut(&kb) {
            sessions.retain(|&se| se != (start, end));
            if sessions.is_empty() {
                self.by_key.remove(&kb);
            }
        }
        Some((kb, start, end))
    }

    fn open(&mut self, key: &[u8], start: i64, end: i64) {
        self.by_key.entry_ref(key).or_default().push((start, end));
        let at = self.close_at(end);
        self.closing.insert((at, key.to_vec(), start, end));
    }
}

impl<K: Data, V: Data, VA: Data> Downstream<K, V> for SessionAggregate<K, V, VA> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = self.spec.clone();
        let on_update = spec.emit == EmitStrategy::OnWindowUpdate;
        let gap = spec.windows.gap;
        let mut out = Vec::new();
        let store = self.store.clone();
        let mut store = store.borrow_mut();
        for r in batch {
            let t = r.timestamp;
            if t.saturating_add(spec.windows.grace) < self.watermark {
                LateTopic::handle(&spec.late, &spec.store, &r, ctx)?;
                continue;
            }
            self.key_buf.clear();
            spec.key.serialize(&r.key, &mut self.key_buf).map_err(|e| self.error("serialize a key", e))?;
            let kb = std::mem::take(&mut self.key_buf);
            // The sessions this record touches, earliest first.
            let mut touched: Vec<(i64, i64)> = Vec::new();
            if let Some(sessions) = self.by_key.get_mut(&kb) {
                sessions.retain(|&(s, e)| {
                    let hit = s.saturating_sub(gap) <= t && t <= e.saturating_add(gap);
                    if hit {
                        touched.push((s, e));
                    }
                    !hit
                });
                if sessions.is_empty() {
                    self.by_key.remove(&kb);
                }
            }
            touched.sort_unstable();
            let (mut start, mut end) = (t, t);
            let mut agg: Option<VA> = None;
            for (s, e) in touched {
                let at = self.close_at(e);
                self.closing.remove(&(at, kb.clone(), s, e));
                let stored = session_key(&kb, s, e)?;
                let Some(bytes) = store.get(&stored)? else { continue };
                store.delete(&stored)?;
                let v = spec.value.deserialize(&bytes).map_err(|e| self.error("read an aggregate", e))?;
                if on_update {
                    out.push(StreamRecord {
                        key: Windowed { key: r.key.clone(), window: Window { start: s, end: e } },
                        value: Change { old: Some(v.clone()), new: None },
                        timestamp: t,
                        headers: r.headers.clone(),
                    });
                }
                agg = Some(match agg {
                    None => v,
                    Some(a) => (spec.merger)(&r.key, a, v),
                });
                start = start.min(s);
                end = end.max(e);
            }
            let new = (spec.aggregator)(&r.key, r.value, agg);
            self.value_buf.clear();
            spec.value.serialize(&new, &mut self.value_buf).map_err(|e| self.error("serialize an aggregate", e))?;
            store.put(&session_key(&kb, start, end)?, &self.value_buf)?;
            self.open(&kb, start, end);
            if on_update {
                out.push(StreamRecord {
                    key: Windowed { key: r.key, window: Window { start, end } },
                    value: Change { old: None, new: Some(new) },
                    timestamp: t,
                    headers: r.headers,
                });
            }
            self.key_buf = kb;
        }
        drop(store);
        self.next.push(out, ctx)
    }
}

impl<K: Data, V: Data, VA: Data> Lifecycle for SessionAggregate<K, V, VA> {
    fn init(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        let store = self.store.clone();
        let store = store.borrow();
        for (k, v) in store.all()? {
            if k == WINDOW_META_KEY {
                self.watermark = crate::ops::window_aggregate::stored_watermark(&self.spec.store, &v)?;
            } else if let Some((key, start, end)) = split_session_key(&k) {
                let key = key.to_vec();
                self.open(&key, start, end);
            } else {
                return Err(self.error("read a session", "the key does not have the session layout"));
            }
        }
        drop(store);
        // As for time windows (`WindowAggregate::init`): under exactly-once, a session closed
        // before the stored watermark is here only if its delete was lost, and is dropped; under
        // at-least-once it may not have been emitted, and stays. (Sessions merged away whose
        // deletes were lost are not caught here: they would be merged again.)
        if !ctx.exactly_once {
            return Ok(());
        }
        let mut closed = 0u64;
        while let Some((kb, start, end)) = self.pop_closed() {
            self.store.clone().borrow_mut().delete(&session_key(&kb, start, end)?)?;
            closed += 1;
        }
        if closed > 0 {
            tracing::warn!(store = %self.spec.store, sessions = closed, watermark = self.watermark,
                "dropped sessions the store held past their close (their deletes were lost)");
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
        while let Some((kb, start, end)) = self.pop_closed() {
            let stored = session_key(&kb, start, end)?;
            if spec.emit == EmitStrategy::OnWindowClose {
                if let Some(v) = store.get(&stored)? {
                    let key = spec.key.deserialize(&kb).map_err(|e| self.error("read a key", e))?;
                    let value = spec.value.deserialize(&v).map_err(|e| self.error("read an aggregate", e))?;
                    out.push(StreamRecord::new(
                        Windowed { key, window: Window { start, end } },
                        Change { old: None, new: Some(value) },
                        end,
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

pub(crate) fn factory<K: Data, V: Data, VA: Data>(spec: SessionAggregateSpec<K, V, VA>) -> Factory {
    let spec = Arc::new(spec);
    Factory::Node(Arc::new(move |inst, id| {
        let node = SessionAggregate {
            spec: spec.clone(),
            store: inst.store(&spec.store)?,
            next: inst.children::<Windowed<K>, Change<VA>>(id)?,
            watermark: i64::MIN,
            by_key: Default::default(),
            closing: BTreeSet::new(),
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        };
        Ok(crate::ops::registered::<K, V, _>(inst, node))
    }))
}
