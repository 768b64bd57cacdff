//! Application metrics: counters the workers update, readable through `App::metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::backend::TopicPartition;

/// Live counters (atomics: workers update them without locks).
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) late: AtomicU64,
    /// Set by `App::run_to_end`: input has ended, close every window.
    pub(crate) end_of_input: std::sync::atomic::AtomicBool,
    /// Workers that have moved their tasks' watermarks with `end_of_input` set.
    pub(crate) end_acks: AtomicU64,
    /// Member → task → watermark.
    pub(crate) watermarks: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
    pub(crate) batches: AtomicU64,
    pub(crate) process_us: AtomicU64,
    pub(crate) commits: AtomicU64,
    /// Bumped to ask every worker to commit at its next loop (run_until_idle).
    pub(crate) commit_requests: AtomicU64,
    pub(crate) commit_us: AtomicU64,
    pub(crate) rebalances: AtomicU64,
    pub(crate) partitions_lost: AtomicU64,
    pub(crate) restored: AtomicU64,
    pub(crate) standby_tasks: AtomicU64,
    pub(crate) standby_restored: AtomicU64,
    pub(crate) standby_lag: AtomicU64,
    pub(crate) commit_max_us: AtomicU64,
    pub(crate) lag: Mutex<BTreeMap<String, BTreeMap<TopicPartition, u64>>>,
    pub(crate) tasks: Mutex<BTreeMap<String, Vec<String>>>,
    /// Member → tasks restoring (inputs paused).
    pub(crate) restoring: Mutex<BTreeMap<String, usize>>,
    /// Member → bytes its store caches hold.
    pub(crate) store_cache_bytes: Mutex<BTreeMap<String, u64>>,
    /// Store name → what its tasks on this instance have done, ever.
    pub(crate) stores: Mutex<BTreeMap<String, crate::state::StoreMetrics>>,
}

/// A point-in-time copy of the metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Records skipped by `log-and-continue`.
    pub skipped: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records dropped as late: every window they belong to had closed.
    pub late_records: u64,
    /// The watermark of each task (`i64::MIN` until every input has delivered a record).
    pub watermarks: BTreeMap<String, i64>,
    /// Batches processed.
    pub batches: u64,
    /// Mean processing time per batch, µs.
    pub process_latency_avg_us: f64,
    /// Commits done.
    pub commits: u64,
    /// Mean commit time, µs.
    pub commit_latency_avg_us: f64,
    /// Slowest commit, µs.
    pub commit_latency_max_us: u64,
    /// Rebalance callbacks (assignments and revocations) seen by the workers.
    pub rebalances: u64,
    /// Partitions lost without a commit (a member's session expired).
    pub partitions_lost: u64,
    /// Changelog records applied by store restores.
    pub restored: u64,
    /// Tasks restoring their stores now (their inputs paused).
    pub restoring_tasks: u64,
    /// Standby tasks kept on this instance.
    pub standby_tasks: u64,
    /// Changelog records applied by standbys.
    pub standby_restored: u64,
    /// Changelog records the standbys have yet to apply.
    pub standby_lag: u64,
    /// Bytes the store caches of every worker thread hold, as charged against
    /// `statestore.cache.max.bytes` (refreshed every 100 ms).
    pub store_cache_bytes: u64,
    /// Lag per partition (`topic-partition` → records behind).
    pub lag: BTreeMap<String, u64>,
    /// Tasks per member.
    pub tasks: BTreeMap<String, Vec<String>>,
    /// Per store: reads, cache hits, writes, backend writes, cache flushes and records restored,
    /// summed over the tasks that ran it on this instance (refreshed every 100 ms and when a task
    /// closes).
    pub stores: BTreeMap<String, crate::state::StoreMetrics>,
}

impl MetricsSnapshot {
    /// Total lag over every partition.
    pub fn total_lag(&self) -> u64 {
        self.lag.values().sum()
    }
}

impl Metrics {
    /// Adds what the stores of `tasks` have done since they last reported (see
    /// [`StoreHandle::take_unreported_metrics`](crate::state::StoreHandle::take_unreported_metrics)).
    pub(crate) fn report_stores<'t>(&self, tasks: impl Iterator<Item = &'t crate::runtime::task::Task>) {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        for task in tasks {
            for (name, store) in &task.stores().stores {
                let new = store.borrow_mut().take_unreported_metrics();
                match stores.get_mut(name) {
                    Some(total) => total.add(&new),
                    None => {
                        stores.insert(name.clone(), new);
                    }
                }
            }
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let batches = get(&self.batches);
        let commits = get(&self.commits);
        let lag = self
            .lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|m| m.iter().map(|(tp, l)| (tp.to_string(), *l)))
            .collect();
        MetricsSnapshot {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            late_records: get(&self.late),
            watermarks: self
                .watermarks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .flat_map(|m| m.iter().map(|(t, w)| (t.clone(), *w)))
                .collect(),
            skipped: get(&self.skipped),
            dead_lettered: get(&self.dead_lettered),
            batches,
            process_latency_avg_us: if batches == 0 { 0.0 } else { get(&self.process_us) as f64 / batches as f64 },
            commits,
            commit_latency_avg_us: if commits == 0 { 0.0 } else { get(&self.commit_us) as f64 / commits as f64 },
            commit_latency_max_us: get(&self.commit_max_us),
            rebalances: get(&self.rebalances),
            partitions_lost: get(&self.partitions_lost),
            restored: get(&self.restored),
            restoring_tasks: self.restoring.lock().unwrap_or_else(|e| e.into_inner()).values().sum::<usize>() as u64,
            standby_tasks: get(&self.standby_tasks),
            standby_restored: get(&self.standby_restored),
            standby_lag: get(&self.standby_lag),
            store_cache_bytes: self.store_cache_bytes.lock().unwrap_or_else(|e| e.into_inner()).values().sum(),
            lag,
            tasks: self.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            stores: self.stores.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}
