//! Interactive queries: the stores of this instance's tasks, read from any thread.
//!
//! Workers register each task's stores here when they create the task (marked restoring until the
//! restore completes) and remove them when they close it. [`App::store`](crate::runtime::App::store)
//! hands out a typed [`ReadOnlyStore`] that routes a key to its partition's store with the default
//! partitioner (the same one that routed the input), and says which member hosts a key that is
//! not here ([`KeyQueryMetadata`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, TopicPartition};
use crate::error::{Result, StreamsError};
use crate::partitioner::partition_for_key;
use crate::serdes::SharedSerde;
use crate::state::QueryView;

#[derive(Clone)]
struct Hosted {
    view: Arc<QueryView>,
    restoring: bool,
}

#[derive(Default)]
struct StoreEntry {
    /// Partition → the local task's store.
    hosted: BTreeMap<u32, Hosted>,
    /// Partitions of the store's changelog (= of its task's input topics).
    partitions: u32,
    /// A query has asked for this store: new tasks keep their overlay from the start.
    queried: bool,
}

/// The queryable stores of this instance.
#[derive(Default)]
pub(crate) struct StoreRegistry {
    stores: Mutex<BTreeMap<String, StoreEntry>>,
}

impl StoreRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StoreEntry>> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task's store is now open here (`restoring` until its restore completes).
    pub(crate) fn register(&self, store: &str, partition: u32, partitions: u32, view: Arc<QueryView>, restoring: bool) {
        let mut stores = self.lock();
        let entry = stores.entry(store.to_string()).or_default();
        entry.partitions = entry.partitions.max(partitions);
        if entry.queried {
            // A new task's cache is empty: its overlay is complete from the start.
            view.request();
            view.set_complete();
        }
        entry.hosted.insert(partition, Hosted { view, restoring });
    }

    /// The restore of a task's store completed.
    pub(crate) fn restored(&self, store: &str, partition: u32) {
        if let Some(h) = self.lock().get_mut(store).and_then(|e| e.hosted.get_mut(&partition)) {
            h.restoring = false;
        }
    }

    /// A task's store closed (only if it is still the registered one).
    pub(crate) fn unregister(&self, store: &str, partition: u32, view: &Arc<QueryView>) {
        let mut stores = self.lock();
        if let Some(e) = stores.get_mut(store) {
            if e.hosted.get(&partition).is_some_and(|h| Arc::ptr_eq(&h.view, view)) {
                e.hosted.remove(&partition);
            }
        }
    }

    /// Marks `store` queried and asks every local view for its overlay; true once all are complete.
    pub(crate) fn request(&self, store: &str) -> bool {
        let mut stores = self.lock();
        let e = stores.entry(store.to_string()).or_default();
        e.queried = true;
        // Every view must hear the request: no short-circuit.
        let mut complete = true;
        for h in e.hosted.values() {
            complete &= h.view.request();
        }
        complete
    }

    /// The partitions of `store` hosted here whose view is not complete yet, each with whether
    /// it is restoring.
    pub(crate) fn incomplete(&self, store: &str) -> Vec<(u32, bool)> {
        let (_, hosted) = self.hosted(store);
        hosted.into_iter().filter(|(_, h)| !h.view.is_complete()).map(|(p, h)| (p, h.restoring)).collect()
    }

    fn hosted(&self, store: &str) -> (u32, BTreeMap<u32, Hosted>) {
        self.lock().get(store).map(|e| (e.partitions, e.hosted.clone())).unwrap_or_default()
    }
}

/// Where a key of a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQueryMetadata {
    /// The key's partition of the store.
    pub partition: u32,
    /// True when this instance hosts it.
    pub local: bool,
    /// The group member that owns the partition's task, if any does.
    pub member_id: Option<String>,
    /// That member's `application.server` (host:port), when it set one.
    pub host: Option<String>,
}

/// A store of the running app, typed, for reads from any thread. Reads see the store as of its
/// task's last commit or later (see [`QueryView`](crate::state::QueryView)).
pub struct ReadOnlyStore<K, V> {
    name: String,
    registry: Arc<StoreRegistry>,
    backend: Arc<dyn Backend>,
    group: String,
    /// The input topics of the store's sub-topology (ownership = this task's partitions).
    topics: Vec<String>,
    key: SharedSerde<K>,
    value: SharedSerde<V>,
    _p: PhantomData<fn() -> (K, V)>,
}

impl<K: 'static, V: 'static> ReadOnlyStore<K, V> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        registry: Arc<StoreRegistry>,
        backend: Arc<dyn Backend>,
        group: &str,
        topics: Vec<String>,
        key: SharedSerde<K>,
        value: SharedSerde<V>,
    ) -> Self {
        ReadOnlyStore {
            name: name.to_string(),
            registry,
            backend,
            group: group.to_string(),
            topics,
            key,
            value,
            _p: PhantomData,
        }
    }

    fn key_bytes(&self, key: &K) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.key.serialize(key, &mut out).map_err(|e| StreamsError::StoreNotFound {
            store: self.name.clone(),
            reason: format!("cannot serialize the key: {e}"),
        })?;
        Ok(out)
    }

    fn decode(&self, k: &[u8], v: &[u8]) -> Result<(K, V)> {
        let bad = |e: crate::serdes::SerdeError| StreamsError::StoreNotFound {
            store: self.name.clone(),
            reason: format!("cannot deserialize an entry: {e}"),
        };
        Ok((self.key.deserialize(k).map_err(bad)?, self.value.deserialize(v).map_err(bad)?))
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The partition of a serialized key: by the partition count the tasks here registered,
    /// else (none registered yet) by the input topics'.
    fn partition_of(&self, key: &[u8], registered: u32) -> u32 {
        let partitions = match registered {
            0 => self.topics.iter().filter_map(|t| self.backend.partition_count(t).ok().flatten()).max().unwrap_or(1),
            n => n,
        };
        partition_for_key(key, partitions)
    }

    /// Where `key` lives: its partition, and the member hosting it.
    pub fn metadata(&self, key: &K) -> Result<KeyQueryMetadata> {
        let bytes = self.key_bytes(key)?;
        let (partitions, hosted) = self.registry.hosted(&self.name);
        let partition = self.partition_of(&bytes, partitions);
        let owns =
            |tps: &[TopicPartition]| tps.iter().any(|tp| tp.partition == partition && self.topics.contains(&tp.topic));
        let owner = self.backend.group_members(&self.group)?.into_iter().find(|m| owns(&m.partitions));
        Ok(KeyQueryMetadata {
            partition,
            local: hosted.contains_key(&partition),
            host: owner.as_ref().and_then(|m| m.client_id.split_once('#').map(|(host, _)| host.to_string())),
            member_id: owner.map(|m| m.member_id),
        })
    }

    /// The value of `key`; an error when its partition is restoring or hosted elsewhere.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let bytes = self.key_bytes(key)?;
        let (partitions, hosted) = self.registry.hosted(&self.name);
        let partition = self.partition_of(&bytes, partitions);
        let Some(h) = hosted.get(&partition) else {
            let host = self.metadata(key).ok().and_then(|m| m.host.or(m.member_id));
            return Err(StreamsError::NotHosted { store: self.name.clone(), partition, host });
        };
        if h.restoring {
            return Err(StreamsError::StoreRestoring { store: self.name.clone(), partition });
        }
        match h.view.get(&bytes)? {
            Some(v) => Ok(Some(self.decode(&bytes, &v)?.1)),
            None => Ok(None),
        }
    }

    /// Entries with `from <= key < to` (in the order of the serialized keys) over every partition
    /// hosted here.
    pub fn range(&self, from: &K, to: &K) -> Result<Vec<(K, V)>> {
        let (from, to) = (self.key_bytes(from)?, self.key_bytes(to)?);
        self.scan(&from, Some(&to))
    }

    /// Every entry of every partition hosted here, in the order of the serialized keys.
    pub fn all(&self) -> Result<Vec<(K, V)>> {
        self.scan(&[], None)
    }

    /// Every entry of every partition hosted here, as an iterator: the entries of [`Self::all`],
    /// read when it is called, so an error (a partition restoring) comes before the first entry.
    pub fn iter(&self) -> Result<impl Iterator<Item = (K, V)>> {
        Ok(self.all()?.into_iter())
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>) -> Result<Vec<(K, V)>> {
        let (_, hosted) = self.registry.hosted(&self.name);
        let mut raw = Vec::new();
        for (partition, h) in &hosted {
            if h.restoring {
                return Err(StreamsError::StoreRestoring { store: self.name.clone(), partition: *partition });
            }
            raw.extend(h.view.range(from, to)?);
        }
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        raw.iter().map(|(k, v)| self.decode(k, v)).collect()
    }
}
