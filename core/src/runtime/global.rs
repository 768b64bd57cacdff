//! Global tables at run time: every partition of each global topic is read to its end before any
//! task processes a record (bootstrap), then followed on a thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::{Result, StreamsError};
use crate::state::GlobalStore;
use crate::topology::{GlobalStores, Topology};

const FETCH_BYTES: usize = 4 << 20;

struct Feed {
    topic: String,
    partition: u32,
    offset: u64,
    store: Arc<dyn GlobalStore>,
}

/// The read positions of an instance's global tables.
pub(crate) struct GlobalFeeds {
    feeds: Vec<Feed>,
}

/// Makes the (empty) global stores of a topology.
pub(crate) fn stores(topology: &Topology) -> GlobalStores {
    topology.global_tables().iter().map(|g| (g.name.clone(), (g.factory)())).collect()
}

impl GlobalFeeds {
    /// One feed per partition of each global topic (which must exist).
    pub(crate) fn new(topology: &Topology, stores: &GlobalStores, backend: &dyn Backend) -> Result<Self> {
        let mut feeds = Vec::new();
        for g in topology.global_tables() {
            let n = backend.partition_count(&g.topic)?.ok_or_else(|| {
                StreamsError::Topology(format!(
                    "global table '{}' reads topic '{}', which does not exist",
                    g.name, g.topic
                ))
            })?;
            let store = stores
                .get(&g.name)
                .cloned()
                .ok_or_else(|| StreamsError::Topology(format!("internal: no store for global table '{}'", g.name)))?;
            for partition in 0..n {
                feeds.push(Feed { topic: g.topic.clone(), partition, offset: 0, store: store.clone() });
            }
        }
        Ok(GlobalFeeds { feeds })
    }

    /// Reads every partition to its current end.
    pub(crate) fn bootstrap(&mut self, backend: &dyn Backend) -> Result<u64> {
        let mut total = 0;
        for f in &mut self.feeds {
            let end = backend.end_offset(&f.topic, f.partition, true)?;
            while f.offset < end {
                let (n, moved) = Self::fetch(f, backend)?;
                total += n;
                if !moved {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// One fetch from every partition; returns the records applied.
    pub(crate) fn poll(&mut self, backend: &dyn Backend) -> Result<u64> {
        let mut total = 0;
        for f in &mut self.feeds {
            total += Self::fetch(f, backend)?.0;
        }
        Ok(total)
    }

    /// Applies one fetch; returns the records applied and whether the position moved.
    fn fetch(f: &mut Feed, backend: &dyn Backend) -> Result<(u64, bool)> {
        let fetched = backend.fetch(&f.topic, f.partition, f.offset, FETCH_BYTES, true)?;
        let records: Vec<(Option<Bytes>, Option<Bytes>)> =
            fetched.records.iter().map(|r| (r.key.clone(), r.value.clone())).collect();
        for (i, reason) in f.store.apply(&records) {
            tracing::warn!(topic = %f.topic, partition = f.partition, offset = fetched.records[i].offset, %reason,
                "skipping a global-table record that cannot be decoded");
        }
        let moved = fetched.next_offset > f.offset;
        f.offset = fetched.next_offset.max(f.offset);
        Ok((records.len() as u64, moved))
    }

    /// Follows the topics until `shutdown`.
    pub(crate) fn follow(mut self, backend: Arc<dyn Backend>, shutdown: Arc<AtomicBool>) -> Result<()> {
        while !shutdown.load(Ordering::Acquire) {
            if self.poll(&*backend)? == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}
