//! Garam's state stores: RocksDB (default) and in-memory, behind `garam_core::state::KeyValueStore`.
//!
//! | module | job |
//! |---|---|
//! | [`memory`] | [`InMemorySupplier`]: an ordered map, rebuilt from the changelog on every start |
//! | [`malloc_arenas`] | [`limit_malloc_arenas`]: glibc's malloc, which RocksDB allocates from, held to few arenas (called from `main`) |
//! | `rocks` | [`RocksDbSupplier`]: the one module that uses `rocksdb`; one block cache and write-buffer manager bound every store of an app together |
//!
//! The runtime wraps each store in a `StoreHandle` (versioned values, changelog records) and opens
//! it under `state.dir/<application.id>/<task>/<store>`.
#![deny(missing_docs)]

pub mod malloc_arenas;
pub mod memory;
mod rocks;

pub use malloc_arenas::limit_malloc_arenas;
pub use memory::InMemorySupplier;
pub use rocks::{RocksDbSupplier, RocksMemory};
