//! Standby replicas (`num.standby.replicas`): warm copies of other instances' task stores.
//!
//! One thread per app instance tails the changelogs of the tasks it keeps standbys for, applying
//! committed records only, into the same state directory an active task would use, and
//! checkpoints what it applied. When such a task fails over to this instance, its worker finds the
//! checkpoint and restores only the tail. Which instances keep a task's standbys is decided by
//! rendezvous hashing over the group's instances, excluding the task's active owner, so every
//! instance reaches the same answer without coordination.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stores::{BackendReader, TaskStores};
use super::worker::Shared;
use crate::backend::TopicPartition;
use crate::error::Result;
use crate::processor::TaskId;

/// The instance part of a worker's client id: `[host:port#]<instance>/<thread>`.
pub(crate) fn instance_of(client_id: &str) -> &str {
    let rest = client_id.split_once('#').map_or(client_id, |(_, r)| r);
    rest.split_once('/').map_or(rest, |(i, _)| i)
}

/// The tasks this instance should keep standbys for.
fn wanted(shared: &Shared) -> Result<BTreeSet<TaskId>> {
    let n = shared.config.num_standby_replicas;
    let mut out = BTreeSet::new();
    if n == 0 {
        return Ok(out);
    }
    let members = shared.backend.group_members(&shared.config.application_id)?;
    let mut instances: BTreeSet<&str> = members.iter().map(|m| instance_of(&m.client_id)).collect();
    instances.insert(&shared.instance_id);
    let owner_of =
        |tp: &TopicPartition| members.iter().find(|m| m.partitions.contains(tp)).map(|m| instance_of(&m.client_id));
    let subs: BTreeSet<usize> = shared.topology.all_stores().into_iter().map(|(_, sub)| sub).collect();
    for sub in subs {
        let Some(topic) = shared.topic_to_sub.iter().find(|(_, s)| **s == sub).map(|(t, _)| t.clone()) else {
            continue;
        };
        let partitions = shared.backend.partition_count(&topic)?.unwrap_or(0);
        for partition in 0..partitions {
            let task = TaskId { subtopology: sub, partition };
            let Some(owner) = owner_of(&TopicPartition::new(topic.clone(), partition)) else { continue };
            let mut ranked: Vec<(u32, &str)> = instances
                .iter()
                .filter(|i| **i != owner)
                .map(|i| {
                    (crate::partitioner::to_positive(crate::partitioner::murmur2(format!("{i}/{task}").as_bytes())), *i)
                })
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            if ranked.iter().take(n).any(|(_, i)| *i == shared.instance_id) {
                out.insert(task);
            }
        }
    }
    Ok(out)
}

struct Standby {
    stores: TaskStores,
    checkpointed: u64,
    last_checkpoint: Instant,
    /// Why its last update failed (a changelog record it cannot apply, say): reported once, and
    /// tried again each round without holding up the other standbys.
    failing: Option<String>,
}

impl Standby {
    /// Applies what its changelogs gained (until `deadline`) and checkpoints at most every second;
    /// returns its lag.
    fn update(&mut self, shared: &Shared, reader: &BackendReader<'_>, deadline: Instant) -> Result<u64> {
        self.stores.catch_up(reader)?;
        let before = self.stores.restored();
        let applied = self.stores.restore_step(reader, deadline, None);
        shared.metrics.standby_restored.fetch_add(self.stores.restored() - before, Ordering::Relaxed);
        applied?;
        if self.stores.restored() != self.checkpointed && self.last_checkpoint.elapsed() >= Duration::from_secs(1) {
            self.stores.checkpoint()?;
            self.checkpointed = self.stores.restored();
            self.last_checkpoint = Instant::now();
        }
        self.stores.lag(reader)
    }
}

/// Runs until `shutdown`, then checkpoints and closes every standby.
pub(crate) fn run(shared: Arc<Shared>, shutdown: Arc<AtomicBool>) {
    let span = tracing::info_span!("standby", app = %shared.config.application_id);
    let _enter = span.enter();
    let mut standbys: BTreeMap<TaskId, Standby> = BTreeMap::new();
    let mut open_failures = OpenFailures::default();
    while !shutdown.load(Ordering::Acquire) {
        if let Err(e) = step(&shared, &mut standbys, &mut open_failures) {
            tracing::warn!(error = %e, "standby update failed; retrying");
            std::thread::sleep(Duration::from_millis(200));
        }
        shared.metrics.standby_tasks.store(standbys.len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
    for (id, s) in std::mem::take(&mut standbys) {
        close(id, s);
    }
    shared.metrics.standby_tasks.store(0, Ordering::Relaxed);
}

fn close(id: TaskId, s: Standby) {
    if let Err(e) = s.stores.checkpoint() {
        tracing::warn!(task = %id, error = %e, "checkpointing a standby failed");
    }
    tracing::info!(task = %id, "closed standby");
}

/// How often a standby whose stores failed to open is tried again.
const OPEN_RETRY: Duration = Duration::from_secs(1);

/// Standbys whose stores failed to open: the error last reported and when the open was last
/// tried. The standby thread goes round every 20 ms; each error is reported once, and the open
/// tried again at most every [`OPEN_RETRY`], rather than fifty warnings and opens a second.
#[derive(Default)]
struct OpenFailures(BTreeMap<TaskId, (String, Instant)>);

impl OpenFailures {
    /// True when `id`'s stores may be tried now.
    fn due(&self, id: &TaskId, now: Instant) -> bool {
        self.0.get(id).is_none_or(|(_, at)| now.saturating_duration_since(*at) >= OPEN_RETRY)
    }

    /// Records a failed open; true when it is to be reported (not the task's last error again).
    fn failed(&mut self, id: TaskId, error: String, now: Instant) -> bool {
        let new = self.0.get(&id).is_none_or(|(last, _)| *last != error);
        self.0.insert(id, (error, now));
        new
    }

    /// Forgets tasks opened since, or no longer wanted here.
    fn retain(&mut self, keep: impl Fn(&TaskId) -> bool) {
        self.0.retain(|id, _| keep(id));
    }
}

fn step(shared: &Shared, standbys: &mut BTreeMap<TaskId, Standby>, open_failures: &mut OpenFailures) -> Result<()> {
    let wanted = wanted(shared)?;
    let active = shared.active.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Tasks that became active here (their worker is waiting for the lock) or are no longer ours.
    for id in standbys.keys().copied().collect::<Vec<_>>() {
        if !wanted.contains(&id) || active.contains(&id) {
            if let Some(s) = standbys.remove(&id) {
                close(id, s);
            }
        }
    }
    let reader = BackendReader(&*shared.backend);
    // Standbys their changelogs can no longer bring up to date: closed (checkpointing what they
    // applied, which is below the floor) and opened again below, which wipes and rebuilds them.
    let mut stale = Vec::new();
    for (id, s) in standbys.iter() {
        match s.stores.below_resume_floor(&reader) {
            Ok(Some(store)) => {
                tracing::warn!(task = %id, store, "standby missed deletes its changelog no longer holds; rebuilding it");
                stale.push(*id);
            }
            Ok(None) => {}
            // Its update below reports what is wrong with its changelog; the others go on.
            Err(e) => tracing::debug!(task = %id, error = %e, "reading a standby's resume floor failed"),
        }
    }
    for id in stale {
        if let Some(s) = standbys.remove(&id) {
            close(id, s);
        }
    }
    let now = Instant::now();
    let missing: Vec<TaskId> = wanted
        .iter()
        .filter(|id| !active.contains(id) && !standbys.contains_key(id) && open_failures.due(id, now))
        .copied()
        .collect();
    for id in &missing {
        let opened = TaskStores::open_standby(
            &shared.topology,
            &shared.config.application_id,
            &shared.state_dir,
            *id,
            &reader,
            shared.eos(),
            &shared.store_context,
        );
        match opened {
            Ok(Some(stores)) => {
                tracing::info!(task = %id, "opened standby");
                standbys
                    .insert(*id, Standby { stores, checkpointed: 0, last_checkpoint: Instant::now(), failing: None });
            }
            Ok(None) => {}
            // One task's stores failing to open hold up no other standby; it is tried again.
            Err(e) => {
                if open_failures.failed(*id, e.to_string(), now) {
                    tracing::warn!(task = %id, error = %e, "opening a standby failed; the others go on, it is tried again every second");
                }
            }
        }
    }
    open_failures.retain(|id| wanted.contains(id) && !standbys.contains_key(id));
    let deadline = Instant::now() + Duration::from_millis(100);
    let mut lag = 0;
    for (id, s) in standbys.iter_mut() {
        if shared.active.lock().unwrap_or_else(|e| e.into_inner()).contains(id) {
            continue;
        }
        match s.update(shared, &reader, deadline) {
            Ok(l) => {
                lag += l;
                s.failing = None;
            }
            Err(e) => {
                let e = e.to_string();
                if s.failing.as_ref() != Some(&e) {
                    tracing::warn!(task = %id, error = %e, "standby update failed; the others go on, it is tried again");
                }
                lag += s.stores.lag(&reader).unwrap_or(0);
                s.failing = Some(e);
            }
        }
    }
    shared.metrics.standby_lag.store(lag, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_that_cannot_open_is_reported_once_per_error_and_tried_each_second() {
        let mut failures = OpenFailures::default();
        let id = TaskId { subtopology: 0, partition: 1 };
        let t0 = Instant::now();
        assert!(failures.due(&id, t0));
        assert!(failures.failed(id, "disk full".into(), t0), "a first error is reported");
        assert!(!failures.due(&id, t0 + Duration::from_millis(20)), "not tried again on the next round");
        assert!(failures.due(&id, t0 + OPEN_RETRY));
        assert!(!failures.failed(id, "disk full".into(), t0 + OPEN_RETRY), "the same error is not reported again");
        assert!(failures.failed(id, "permission denied".into(), t0 + 2 * OPEN_RETRY), "another one is");
        failures.retain(|_| false); // opened, or no longer wanted
        assert!(failures.due(&id, t0));
        assert!(failures.failed(id, "disk full".into(), t0), "reported again after it opened once");
    }
}
