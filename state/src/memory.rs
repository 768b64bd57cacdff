//! The in-memory store: a `BTreeMap`.

use std::collections::BTreeMap;
use std::path::Path;

use garam_core::state::{KeyValueStore, StoreContext, StoreSupplier};
use garam_core::Result;

/// Opens in-memory stores (nothing on disk: every start restores from the changelog).
#[derive(Debug, Clone, Copy, Default)]
pub struct InMemorySupplier;

struct InMemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StoreSupplier for InMemorySupplier {
    fn open(&self, _dir: &Path, _ctx: &StoreContext) -> Result<Box<dyn KeyValueStore>> {
        Ok(Box::new(InMemoryStore { map: BTreeMap::new() }))
    }
    fn persistent(&self) -> bool {
        false
    }
}

impl KeyValueStore for InMemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self.map.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(key.to_vec(), value.to_vec());
            }
        }
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.map.remove(key);
        Ok(())
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self.map.range(from.to_vec()..to.to_vec()).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn all(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn persistent(&self) -> bool {
        false
    }
}
