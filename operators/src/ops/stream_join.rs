//! Stream-stream windowed joins (inner, left, outer), as two operators — one per input — over one
//! shared join buffer.
//!
//! A left record at `tl` joins the right records with `tr` in `[tl - before, tl + after]`. Each side
//! buffers its records in the join store (values there; an index of `(key, time, seq)` in memory,
//! rebuilt from the store when the task starts) and probes the other side's buffer; pairs are
//! emitted at once, timestamped `max(tl, tr)`. A buffered record can match nothing more once the
//! watermark passes its last matching time plus grace; it is then purged and — for the outer
//! side(s) of a left or outer join, if it never matched — emitted with `None` for the other side,
//! exactly once and never early. Records behind the watermark by more than grace are late.
//!
//! Store keys: `[side][u32 key length][key][time][seq]` (big-endian, times order-preserving);
//! values: `[matched][value]`, so a restarted task knows which records still owe an unmatched
//! result.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use garam_core::processor::{Batch, Downstream, DownstreamRef, Fanout, Lifecycle, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::serdes::SharedSerde;
use garam_core::state::window::WINDOW_META_KEY;
use garam_core::state::SharedStore;
use garam_core::topology::builder::Factory;
use garam_core::{Result, StreamsError};

use crate::Data;

/// `joiner(left, right)`; `None` for an unmatched side (left and outer joins only). A `None`
/// result emits nothing.
pub(crate) type PairJoiner<V1, V2, VR> = Arc<dyn Fn(Option<&V1>, Option<&V2>) -> Option<VR> + Send + Sync>;

/// Which input a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Side {
    Left = 0,
    Right = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }
}

/// Everything a join needs, shared by its tasks.
pub(crate) struct StreamJoinSpec<K, V1, V2, VR> {
    pub store: String,
    pub before: i64,
    pub after: i64,
    pub grace: i64,
    /// Which sides emit their unmatched records (left join: left; outer: both).
    pub emit_unmatched: [bool; 2],
    pub key: SharedSerde<K>,
    pub left: SharedSerde<V1>,
    pub right: SharedSerde<V2>,
    pub joiner: PairJoiner<V1, V2, VR>,
}

/// One key's buffered records per side, `(time, seq, matched)` sorted: most keys hold a handful,
/// so a sorted vector (one small allocation) beats a tree node per record.
struct KeyEntries {
    key: Box<[u8]>,
    sides: [Vec<(i64, u64, bool)>; 2],
}

fn insert_sorted(v: &mut Vec<(i64, u64, bool)>, e: (i64, u64, bool)) {
    let at = v.partition_point(|x| (x.0, x.1) < (e.0, e.1));
    v.insert(at, e);
}

/// The in-memory index of a join buffer: keys in slots, found by hash. The closing queue names a
/// key by its slot, so closing a record takes no hash lookup and no copy of the key; a slot is
/// freed (and its key dropped) when both sides' lists are empty.
#[derive(Default)]
struct Index {
    slots: Vec<KeyEntries>,
    free: Vec<u32>,
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl Index {
    fn hash(&self, key: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// The slot of `key`, made if the key has none.
    fn slot_for(&mut self, key: &[u8]) -> u32 {
        let hash = self.hash(key);
        let slots = &self.slots;
        if let Some(&s) = self.table.find(hash, |&s| &*slots[s as usize].key == key) {
            return s;
        }
        let entries = KeyEntries { key: key.into(), sides: [Vec::new(), Vec::new()] };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = entries;
                s
            }
            None => {
                self.slots.push(entries);
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, s, |&s| std::hash::BuildHasher::hash_one(hasher, &*slots[s as usize].key));
        s
    }

    /// Drops the slot if it holds nothing more.
    fn release_if_empty(&mut self, slot: u32) {
        let entries = &mut self.slots[slot as usize];
        if !entries.sides[0].is_empty() || !entries.sides[1].is_empty() {
            return;
        }
        let key = std::mem::take(&mut entries.key);
        let hash = self.hash(&key);
        if let Ok(found) = self.table.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        self.free.push(slot);
    }
}

/// The buffered records by close time: `(close time, seq) → (slot, side, time)`. Seqs are unique,
/// so the order never looks further. (A binary heap spent more on sifting than the tree does.)
type Closing = std::collections::BTreeMap<(i64, u64), (u32, Side, i64)>;

/// The join buffer of one task, shared by its two operators.
struct JoinState {
    store: SharedStore,
    index: Index,
    closing: Closing,
    next_seq: u64,
    watermark: i64,
    loaded: bool,
}

fn stored_key(side: Side, key: &[u8], time: i64, seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.push(side as u8);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

fn split_stored(raw: &[u8]) -> Option<(Side, &[u8], i64, u64)> {
    let side = match raw.first()? {
        0 => Side::Left,
        1 => Side::Right,
        _ => return None,
    };
    let len = u32::from_be_bytes(raw.get(1..5)?.try_into().ok()?) as usize;
    let key = raw.get(5..5 + len)?;
    let rest = raw.get(5 + len..)?;
    if rest.len() != 16 {
        return None;
    }
    let time = (u64::from_be_bytes(rest[..8].try_into().ok()?) ^ (1 << 63)) as i64;
    let seq = u64::from_be_bytes(rest[8..].try_into().ok()?);
    Some((side, key, time, seq))
}

struct JoinSide<K, V1, V2, VR> {
    side: Side,
    spec: Arc<StreamJoinSpec<K, V1, V2, VR>>,
    state: Rc<RefCell<JoinState>>,
    next: Fanout<K, VR>,
    key_buf: Vec<u8>,
    store_key: Vec<u8>,
    value_buf: Vec<u8>,
}

impl<K: Data, V1: Data, V2: Data, VR: Data> JoinSide<K, V1, V2, VR> {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> StreamsError {
        StreamsError::Topology(format!("store {}: cannot {what}: {e}", self.spec.store))
    }

    /// The last time a record of `side` at `t` can match, plus grace, plus one: when it closes.
    fn close_at(spec: &StreamJoinSpec<K, V1, V2, VR>, side: Side, t: i64) -> i64 {
        let reach = if side == Side::Left { spec.after } else { spec.before };
        t.saturating_add(reach).saturating_add(spec.grace).saturating_add(1)
    }

    fn load(&self, state: &mut JoinState) -> Result<()> {
        if state.loaded {
            return Ok(());
        }
        state.loaded = true;
        let entries = state.store.borrow().all()?;
        for (k, v) in entries {
            if k == WINDOW_META_KEY {
                state.watermark = crate::ops::window_aggregate::stored_watermark(&self.spec.store, &v)?;
                continue;
            }
            let (side, key, time, seq) =
                split_stored(&k).ok_or_else(|| self.error("read the join buffer", "a key has the wrong layout"))?;
            let matched = v.first().copied().unwrap_or(0) == 1;
            let slot = state.index.slot_for(key);
            insert_sorted(&mut state.index.slots[slot as usize].sides[side as usize], (time, seq, matched));
            let at = Self::close_at(&self.spec, side, time);
            state.closing.insert((at, seq), (slot, side, time));
            state.next_seq = state.next_seq.max(seq + 1);
        }
        Ok(())
    }

    fn decode_left(&self, b: &[u8]) -> Result<V1> {
        self.spec.left.deserialize(b.get(1..).unwrap_or(&[])).map_err(|e| self.error("read a buffered record", e))
    }

    fn decode_right(&self, b: &[u8]) -> Result<V2> {
        self.spec.right.deserialize(b.get(1..).unwrap_or(&[])).map_err(|e| self.error("read a buffered record", e))
    }
}

/// What a side's input value is, to join it in the right argument position.
enum Value<V1, V2> {
    Left(V1),
    Right(V2),
}

impl<K: Data, V1: Data, V2: Data, VR: Data> JoinSide<K, V1, V2, VR> {
    fn process(&mut self, records: Vec<(StreamRecord<K, ()>, Value<V1, V2>)>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = self.spec.clone();
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        self.load(&mut state)?;
        let store = state.store.clone();
        let mut store = store.borrow_mut();
        let side = self.side;
        let other = side.other();
        let (lo, hi) = if side == Side::Left { (spec.before, spec.after) } else { (spec.after, spec.before) };
        let mut out = Vec::new();
        for (r, value) in records {
            let t = r.timestamp;
            if t.saturating_add(spec.grace) < state.watermark {
                ctx.counters.late += 1;
                continue;
            }
            self.key_buf.clear();
            spec.key.serialize(&r.key, &mut self.key_buf).map_err(|e| self.error("serialize a key", e))?;
            let seq = state.next_seq;
            state.next_seq += 1;
            // Probe the other side's buffer.
            let mut matched = false;
            let (from, to) = (t.saturating_sub(lo), t.saturating_add(hi));
            let track_other = spec.emit_unmatched[other as usize];
            let mut newly_matched = Vec::new();
            let slot = state.index.slot_for(&self.key_buf);
            {
                let times = &mut state.index.slots[slot as usize].sides[other as usize];
                let first = times.partition_point(|x| x.0 < from);
                for (ot, oseq, other_matched) in times[first..].iter_mut().take_while(|x| x.0 <= to) {
                    let (ot, oseq) = (*ot, *oseq);
                    matched = true;
                    stored_key(other, &self.key_buf, ot, oseq, &mut self.store_key);
                    let Some(bytes) = store.get(&self.store_key)? else { continue };
                    let joined = match &value {
                        Value::Left(v) => (spec.joiner)(Some(v), Some(&self.decode_right(&bytes)?)),
                        Value::Right(v) => (spec.joiner)(Some(&self.decode_left(&bytes)?), Some(v)),
                    };
                    if let Some(joined) = joined {
                        out.push(StreamRecord {
                            key: r.key.clone(),
                            value: joined,
                            timestamp: t.max(ot),
                            headers: r.headers.clone(),
                        });
                    }
                    if track_other && !*other_matched {
                        *other_matched = true;
                        newly_matched.push((self.store_key.clone(), bytes));
                    }
                }
            }
            for (k, mut bytes) in newly_matched {
                if let Some(flag) = bytes.first_mut() {
                    *flag = 1;
                }
                store.put(&k, &bytes)?;
            }
            // Buffer this record for the other side's later records.
            self.value_buf.clear();
            self.value_buf.push(matched as u8);
            match &value {
                Value::Left(v) => spec.left.serialize(v, &mut self.value_buf),
                Value::Right(v) => spec.right.serialize(v, &mut self.value_buf),
            }
            .map_err(|e| self.error("serialize a value", e))?;
            stored_key(side, &self.key_buf, t, seq, &mut self.store_key);
            // Unique (seq): a record that closes while only the cache and changelog hold it never
            // reaches RocksDB.
            store.put_new(&self.store_key, &self.value_buf)?;
            insert_sorted(&mut state.index.slots[slot as usize].sides[side as usize], (t, seq, matched));
            let at = Self::close_at(&spec, side, t);
            state.closing.insert((at, seq), (slot, side, t));
        }
        drop(store);
        drop(state);
        self.next.push(out, ctx)
    }

    fn close_windows(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        let spec = self.spec.clone();
        let state = self.state.clone();
        let mut state = state.borrow_mut();
        self.load(&mut state)?;
        if ctx.watermark <= state.watermark {
            return Ok(());
        }
        state.watermark = ctx.watermark;
        let store = state.store.clone();
        let mut store = store.borrow_mut();
        let mut out = Vec::new();
        while let Some(((at, _), _)) = state.closing.first_key_value() {
            if *at > state.watermark {
                break;
            }
            let Some(((_, seq), (slot, side, t))) = state.closing.pop_first() else { break };
            let mut matched = true;
            let entries = &mut state.index.slots[slot as usize];
            let times = &mut entries.sides[side as usize];
            if let Ok(at) = times.binary_search_by(|x| (x.0, x.1).cmp(&(t, seq))) {
                matched = times.remove(at).2;
            }
            stored_key(side, &entries.key, t, seq, &mut self.store_key);
            let key = if !matched && spec.emit_unmatched[side as usize] { Some(entries.key.clone()) } else { None };
            state.index.release_if_empty(slot);
            if let Some(key) = key {
                if let Some(bytes) = store.get(&self.store_key)? {
                    let k = spec.key.deserialize(&key).map_err(|e| self.error("read a key", e))?;
                    let joined = match side {
                        Side::Left => (spec.joiner)(Some(&self.decode_left(&bytes)?), None),
                        Side::Right => (spec.joiner)(None, Some(&self.decode_right(&bytes)?)),
                    };
                    if let Some(joined) = joined {
                        out.push(StreamRecord::new(k, joined, t));
                    }
                }
            }
            store.delete(&self.store_key)?;
        }
        store.put(WINDOW_META_KEY, &state.watermark.to_be_bytes())?;
        drop(store);
        drop(state);
        self.next.push(out, ctx)
    }
}

struct LeftInput<K, V1, V2, VR>(JoinSide<K, V1, V2, VR>);
struct RightInput<K, V1, V2, VR>(JoinSide<K, V1, V2, VR>);

impl<K: Data, V1: Data, V2: Data, VR: Data> Downstream<K, V1> for LeftInput<K, V1, V2, VR> {
    fn push(&mut self, batch: Batch<K, V1>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let records = batch
            .into_iter()
            .map(|r| {
                (
                    StreamRecord { key: r.key, value: (), timestamp: r.timestamp, headers: r.headers },
                    Value::Left(r.value),
                )
            })
            .collect();
        self.0.process(records, ctx)
    }
}

impl<K: Data, V1: Data, V2: Data, VR: Data> Downstream<K, V2> for RightInput<K, V1, V2, VR> {
    fn push(&mut self, batch: Batch<K, V2>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let records = batch
            .into_iter()
            .map(|r| {
                (
                    StreamRecord { key: r.key, value: (), timestamp: r.timestamp, headers: r.headers },
                    Value::Right(r.value),
                )
            })
            .collect();
        self.0.process(records, ctx)
    }
}

impl<K: Data, V1: Data, V2: Data, VR: Data> Lifecycle for LeftInput<K, V1, V2, VR> {
    fn init(&mut self, _ctx: &mut TaskContext<'_>) -> Result<()> {
        let state = self.0.state.clone();
        let mut state = state.borrow_mut();
        self.0.load(&mut state)
    }

    fn on_watermark(&mut self, ctx: &mut TaskContext<'_>) -> Result<()> {
        self.0.close_windows(ctx)
    }
}

/// The factories of the two sides: the left one closes windows for both.
pub(crate) fn factories<K: Data, V1: Data, V2: Data, VR: Data>(
    spec: StreamJoinSpec<K, V1, V2, VR>,
) -> (Factory, Factory) {
    let spec = Arc::new(spec);
    let make = |side: Side| {
        let spec = spec.clone();
        Factory::Node(Arc::new(move |inst, id| {
            let store = inst.store(&spec.store)?;
            let state = inst.shared(&format!("join:{}", spec.store), || {
                Ok(RefCell::new(JoinState {
                    store,
                    index: Index::default(),
                    closing: Closing::new(),
                    next_seq: 0,
                    watermark: i64::MIN,
                    loaded: false,
                }))
            })?;
            let join = JoinSide {
                side,
                spec: spec.clone(),
                state,
                next: inst.children::<K, VR>(id)?,
                key_buf: Vec::new(),
                store_key: Vec::new(),
                value_buf: Vec::new(),
            };
            Ok(match side {
                Side::Left => crate::ops::registered::<K, V1, _>(inst, LeftInput(join)),
                Side::Right => {
                    let handle: DownstreamRef<K, V2> = Rc::new(RefCell::new(RightInput(join)));
                    Box::new(handle) as Box<dyn Any>
                }
            })
        }))
    };
    (make(Side::Left), make(Side::Right))
}
