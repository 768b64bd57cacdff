//! The in-memory store: an ordered map behind a read-write lock (interactive queries read it from
//! other threads).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use garam_core::state::{KeyValueStore, ReadableStore, StoreContext, StoreSupplier};
use garam_core::Result;

/// Opens in-memory stores (nothing on disk: every start restores from the changelog).
#[derive(Debug, Clone, Copy, Default)]
pub struct InMemorySupplier;

type Map = Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>;

struct InMemoryStore {
    map: Map,
}

struct InMemoryReader(Map);

impl StoreSupplier for InMemorySupplier {
    fn open(&self, _dir: &Path, _ctx: &StoreContext) -> Result<Box<dyn KeyValueStore>> {
        Ok(Box::new(InMemoryStore { map: Map::default() }))
    }
    fn persistent(&self) -> bool {
        false
    }
}

// A panic while the lock was held cannot leave a half-applied entry: every write is one call.
fn read(map: &Map) -> RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
    map.read().unwrap_or_else(|e| e.into_inner())
}

fn write(map: &Map) -> RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
    map.write().unwrap_or_else(|e| e.into_inner())
}

fn range(map: &Map, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if from >= to {
        return Vec::new();
    }
    read(map).range(from.to_vec()..to.to_vec()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn all(map: &Map) -> Vec<(Vec<u8>, Vec<u8>)> {
    read(map).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn put(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], value: &[u8]) {
    match map.get_mut(key) {
        Some(v) => {
            v.clear();
            v.extend_from_slice(value);
        }
        None => {
            map.insert(key.to_vec(), value.to_vec());
        }
    }
}

impl KeyValueStore for InMemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(read(&self.map).get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        put(&mut write(&self.map), key, value);
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        write(&self.map).remove(key);
        Ok(())
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(range(&self.map, from, to))
    }
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(all(&self.map))
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn persistent(&self) -> bool {
        false
    }
    fn write_batch(&mut self, entries: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        let mut map = write(&self.map);
        for (k, v) in entries {
            match v {
                Some(v) => put(&mut map, k, v),
                None => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }
    fn reader(&self) -> Arc<dyn ReadableStore> {
        Arc::new(InMemoryReader(self.map.clone()))
    }
}

impl ReadableStore for InMemoryReader {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(read(&self.0).get(key).cloned())
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(range(&self.0, from, to))
    }
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(all(&self.0))
    }
}
