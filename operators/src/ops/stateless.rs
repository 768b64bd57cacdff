//! Stateless operators: filter, map, map_values, flat_map, flat_map_values, peek, pass-through.

use std::marker::PhantomData;
use std::sync::Arc;

use garam_core::batch_pool;
use garam_core::processor::{Batch, Downstream, Fanout, TaskContext};
use garam_core::record::StreamRecord;
use garam_core::topology::builder::Factory;
use garam_core::Result;

use super::node;
use crate::Data;

struct Filter<K, V, F> {
    f: Arc<F>,
    negate: bool,
    next: Fanout<K, V>,
}

impl<K: Data, V: Data, F: Fn(&K, &V) -> bool> Downstream<K, V> for Filter<K, V, F> {
    fn push(&mut self, mut batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let (f, negate) = (&self.f, self.negate);
        batch.retain(|r| f(&r.key, &r.value) != negate);
        self.next.push(batch, ctx)
    }
}

pub(crate) fn filter<K: Data, V: Data>(f: impl Fn(&K, &V) -> bool + Send + Sync + 'static, negate: bool) -> Factory {
    let f = Arc::new(f);
    node::<K, V, K, V, _>(move |next| Filter { f: f.clone(), negate, next })
}

struct Map<KIn, VIn, K, V, F> {
    f: Arc<F>,
    next: Fanout<K, V>,
    _in: PhantomData<fn(KIn, VIn)>,
}

impl<KIn: 'static, VIn: 'static, K: Data, V: Data, F: Fn(KIn, VIn) -> (K, V)> Downstream<KIn, VIn>
    for Map<KIn, VIn, K, V, F>
{
    fn push(&mut self, batch: Batch<KIn, VIn>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let f = &self.f;
        let out = batch_pool::map(batch, |r| {
            let (key, value) = f(r.key, r.value);
            StreamRecord { key, value, timestamp: r.timestamp, headers: r.headers }
        });
        self.next.push(out, ctx)
    }
}

pub(crate) fn map<KIn: Data, VIn: Data, K: Data, V: Data>(
    f: impl Fn(KIn, VIn) -> (K, V) + Send + Sync + 'static,
) -> Factory {
    let f = Arc::new(f);
    node::<KIn, VIn, K, V, _>(move |next| Map { f: f.clone(), next, _in: PhantomData })
}

struct MapValues<VIn, K, V, F> {
    f: Arc<F>,
    next: Fanout<K, V>,
    _in: PhantomData<fn(VIn)>,
}

impl<VIn: 'static, K: Data, V: Data, F: Fn(&K, VIn) -> V> Downstream<K, VIn> for MapValues<VIn, K, V, F> {
    fn push(&mut self, batch: Batch<K, VIn>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let f = &self.f;
        let out = batch_pool::map(batch, |r| {
            let value = f(&r.key, r.value);
            StreamRecord { key: r.key, value, timestamp: r.timestamp, headers: r.headers }
        });
        self.next.push(out, ctx)
    }
}

pub(crate) fn map_values<K: Data, VIn: Data, V: Data>(f: impl Fn(&K, VIn) -> V + Send + Sync + 'static) -> Factory {
    let f = Arc::new(f);
    node::<K, VIn, K, V, _>(move |next| MapValues { f: f.clone(), next, _in: PhantomData })
}

struct FlatMap<KIn, VIn, K, V, F> {
    f: Arc<F>,
    next: Fanout<K, V>,
    _in: PhantomData<fn(KIn, VIn)>,
}

impl<KIn: 'static, VIn: 'static, K: Data, V: Data, I, F> Downstream<KIn, VIn> for FlatMap<KIn, VIn, K, V, F>
where
    F: Fn(KIn, VIn) -> I,
    I: IntoIterator<Item = (K, V)>,
{
    fn push(&mut self, mut batch: Batch<KIn, VIn>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = batch_pool::with_capacity(batch.len());
        for r in batch.drain(..) {
            for (key, value) in (self.f)(r.key, r.value) {
                out.push(StreamRecord { key, value, timestamp: r.timestamp, headers: r.headers.clone() });
            }
        }
        batch_pool::recycle(batch);
        self.next.push(out, ctx)
    }
}

pub(crate) fn flat_map<KIn: Data, VIn: Data, K: Data, V: Data, I>(
    f: impl Fn(KIn, VIn) -> I + Send + Sync + 'static,
) -> Factory
where
    I: IntoIterator<Item = (K, V)>,
{
    let f = Arc::new(f);
    node::<KIn, VIn, K, V, _>(move |next| FlatMap { f: f.clone(), next, _in: PhantomData })
}

struct FlatMapValues<VIn, K, V, F> {
    f: Arc<F>,
    next: Fanout<K, V>,
    _in: PhantomData<fn(VIn)>,
}

impl<VIn: 'static, K: Data, V: Data, I, F> Downstream<K, VIn> for FlatMapValues<VIn, K, V, F>
where
    F: Fn(VIn) -> I,
    I: IntoIterator<Item = V>,
{
    fn push(&mut self, mut batch: Batch<K, VIn>, ctx: &mut TaskContext<'_>) -> Result<()> {
        let mut out = batch_pool::with_capacity(batch.len());
        for r in batch.drain(..) {
            let mut values = (self.f)(r.value).into_iter();
            let Some(first) = values.next() else { continue };
            let Some(second) = values.next() else {
                // One value per record (a table's changes as a stream): the key moves, not
                // cloned — a `String` key cloned per record was an allocation per record.
                out.push(StreamRecord { key: r.key, value: first, timestamp: r.timestamp, headers: r.headers });
                continue;
            };
            for value in [first, second].into_iter().chain(values) {
                out.push(StreamRecord {
                    key: r.key.clone(),
                    value,
                    timestamp: r.timestamp,
                    headers: r.headers.clone(),
                });
            }
        }
        batch_pool::recycle(batch);
        self.next.push(out, ctx)
    }
}

pub(crate) fn flat_map_values<K: Data, VIn: Data, V: Data, I>(f: impl Fn(VIn) -> I + Send + Sync + 'static) -> Factory
where
    I: IntoIterator<Item = V>,
{
    let f = Arc::new(f);
    node::<K, VIn, K, V, _>(move |next| FlatMapValues { f: f.clone(), next, _in: PhantomData })
}

struct Peek<K, V, F> {
    f: Arc<F>,
    next: Fanout<K, V>,
}

impl<K: Data, V: Data, F: Fn(&K, &V)> Downstream<K, V> for Peek<K, V, F> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        for r in &batch {
            (self.f)(&r.key, &r.value);
        }
        self.next.push(batch, ctx)
    }
}

pub(crate) fn peek<K: Data, V: Data>(f: impl Fn(&K, &V) + Send + Sync + 'static) -> Factory {
    let f = Arc::new(f);
    node::<K, V, K, V, _>(move |next| Peek { f: f.clone(), next })
}

struct Pass<K, V> {
    next: Fanout<K, V>,
}

impl<K: Data, V: Data> Downstream<K, V> for Pass<K, V> {
    fn push(&mut self, batch: Batch<K, V>, ctx: &mut TaskContext<'_>) -> Result<()> {
        self.next.push(batch, ctx)
    }
}

/// Passes batches on unchanged (merge points, split branches).
pub(crate) fn pass<K: Data, V: Data>() -> Factory {
    node::<K, V, K, V, _>(|next| Pass { next })
}
