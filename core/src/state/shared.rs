//! [`SharedResources`]: what the stores of one app share, whatever their backend.

use std::any::Any;
use std::sync::{Arc, Mutex};

/// Resources the stores of one app share, one of each type, made by the first store that asks.
/// Per app, not per process: two apps in one process each get the memory bound they configure.
/// Clones share.
///
/// ```
/// use garam_core::state::SharedResources;
/// struct BlockCache(usize);
/// let app = SharedResources::default();
/// let first = app.get_or_insert_with(|| BlockCache(64));
/// let again = app.clone().get_or_insert_with(|| BlockCache(128));
/// assert_eq!(again.0, 64, "made once per app");
/// assert!(std::sync::Arc::ptr_eq(&first, &again));
/// let other_app = SharedResources::default();
/// assert_eq!(other_app.get_or_insert_with(|| BlockCache(128)).0, 128);
/// ```
#[derive(Clone, Default)]
pub struct SharedResources(Arc<Mutex<Vec<Arc<dyn Any + Send + Sync>>>>);

impl SharedResources {
    /// The resource of type `T`, made with `make` if there is none yet. `make` runs under this
    /// map's lock, so that one is made however many stores open at once: it must not use the map.
    pub fn get_or_insert_with<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = find(&all) {
            return found;
        }
        let made = Arc::new(make());
        all.push(made.clone());
        made
    }

    /// The resource of type `T`, if a store made one.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        find(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The resource of type `T` among `all`.
fn find<T: Any + Send + Sync>(all: &[Arc<dyn Any + Send + Sync>]) -> Option<Arc<T>> {
    all.iter().find_map(|r| r.clone().downcast::<T>().ok())
}

impl std::fmt::Debug for SharedResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |all| all.len());
        write!(f, "SharedResources({n} made)")
    }
}
