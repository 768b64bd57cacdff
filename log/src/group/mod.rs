//! Consumer groups: membership, assignment, ownership and committed offsets.
//!
//! The coordinator runs in-process. A partition is *owned* by at most one member at any moment:
//! a member acquires a partition only after the coordinator has assigned it to that member and its
//! previous owner has released it (after its revoke callback, where it commits). Members that stop
//! heartbeating for `session_timeout` are expired: their partitions are freed and their later calls
//! fail with a retriable error, so a zombie cannot commit over its successor.

mod assignor;
mod offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use assignor::{range, sticky, Assignment, Assignor, Subscriptions, TopicPartition};
use offsets::OffsetStore;
pub use offsets::{CommittedOffset, OffsetKey};

use crate::error::{LogError, Result};
use crate::signal::Signal;

struct Member {
    client_id: String,
    topics: Vec<String>,
    session_timeout: Duration,
    last_seen: Instant,
    signal: Arc<Signal>,
    /// Generation whose assignment this member has synced with (eager revocation).
    synced_generation: u64,
}

#[derive(Default)]
struct Group {
    generation: u64,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    target: Assignment,
    owners: HashMap<TopicPartition, String>,
    partition_counts: BTreeMap<String, u32>,
}

/// What a member must do before it may acquire new partitions.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    /// The group's generation.
    pub generation: u64,
    /// Partitions to revoke (run the revoke callback and commit, then [`Coordinator::release`]).
    pub revoke: Vec<TopicPartition>,
}

/// A member's view for `describe`.
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Client id the member gave.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Partitions it owns now.
    pub owned: Vec<TopicPartition>,
}

/// A group's state for `describe`.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// Current generation.
    pub generation: u64,
    /// "Stable", "Rebalancing" or "Empty".
    pub state: &'static str,
    /// Live members.
    pub members: Vec<MemberDescription>,
    /// Committed offsets per topic-partition.
    pub offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

/// The in-process group coordinator of a log.
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    offsets: Mutex<OffsetStore>,
    next_member: AtomicU64,
}

impl Coordinator {
    pub(crate) fn open(dir: &Path) -> Result<Coordinator> {
        Ok(Coordinator {
            groups: Mutex::new(HashMap::new()),
            offsets: Mutex::new(OffsetStore::open(dir)?),
            next_member: AtomicU64::new(1),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self) -> MutexGuard<'_, OffsetStore> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member; returns its id. The group rebalances.
    pub(crate) fn join(
        &self,
        group: &str,
        client_id: &str,
        topics: Vec<String>,
        assignor: Assignor,
        session_timeout: Duration,
        signal: Arc<Signal>,
        partition_counts: BTreeMap<String, u32>,
    ) -> String {
        let id = format!("{client_id}-{}", self.next_member.fetch_add(1, Ordering::Relaxed));
        let mut groups = self.groups();
        let g = groups.entry(group.to_string()).or_default();
        if g.members.is_empty() {
            g.assignor = assignor;
        }
        g.members.insert(
            id.clone(),
            Member {
                client_id: client_id.to_string(),
                topics,
                session_timeout,
                last_seen: Instant::now(),
                signal,
                synced_generation: 0,
            },
        );
        for (t, n) in partition_counts {
            g.partition_counts.insert(t, n);
        }
        tracing::info!(group, member = %id, "member joined; rebalancing");
        rebalance(g);
        id
    }

    fn member_gone(group: &str, member: &str) -> LogError {
        LogError::Group {
            group: group.to_string(),
            reason: format!("member {member} is not in the group (session expired or left); rejoin"),
            retriable: true,
        }
    }

    /// Heartbeat plus the partitions the member must revoke now. `counts` refreshes topic sizes
    /// (a topic that gained partitions triggers a rebalance).
    pub(crate) fn sync(&self, group: &str, member: &str, counts: &BTreeMap<String, u32>) -> Result<SyncPlan> {
        self.expire_sessions();
        let mut groups = self.groups();
        let g = groups.get_mut(group).ok_or_else(|| Self::member_gone(group, member))?;
        if counts.iter().any(|(t, n)| g.partition_counts.get(t) != Some(n)) {
            for (t, n) in counts {
                g.partition_counts.insert(t.clone(), *n);
            }
            rebalance(g);
        }
        let generation = g.generation;
        let eager = g.assignor.is_eager();
        let m = g.members.get_mut(member).ok_or_else(|| Self::member_gone(group, member))?;
        m.last_seen = Instant::now();
        let newly = m.synced_generation != generation;
        m.synced_generation = generation;
        let target = g.target.get(member).cloned().unwrap_or_default();
        let owned = g.owners.iter().filter(|(_, o)| o.as_str() == member).map(|(tp, _)| tp.clone());
        let revoke: Vec<TopicPartition> =
            if eager && newly { owned.collect() } else { owned.filter(|tp| !target.contains(tp)).collect() };
        Ok(SyncPlan { generation, revoke })
    }

    /// The member gives up partitions (after committing in its revoke callback).
    pub(crate) fn release(&self, group: &str, member: &str, tps: &[TopicPartition]) {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        for tp in tps {
            if g.owners.get(tp).is_some_and(|o| o == member) {
                g.owners.remove(tp);
            }
        }
        // Wake the members that were waiting for these partitions.
        for (id, m) in &g.members {
            if id != member && g.target.get(id).is_some_and(|t| tps.iter().any(|tp| t.contains(tp))) {
                m.signal.notify();
            }
        }
    }

    /// Takes ownership of every target partition nobody else owns; returns the newly owned ones.
    pub(crate) fn acquire(&self, group: &str, member: &str) -> Result<Vec<TopicPartition>> {
        let mut groups = self.groups();
        let g = groups.get_mut(group).ok_or_else(|| Self::member_gone(group, member))?;
        if !g.members.contains_key(member) {
            return Err(Self::member_gone(group, member));
        }
        let mut got = Vec::new();
        for tp in g.target.get(member).cloned().unwrap_or_default() {
            if !g.owners.contains_key(&tp) {
                g.owners.insert(tp.clone(), member.to_string());
                got.push(tp);
            }
        }
        Ok(got)
    }

    /// Partitions the member owns now.
    pub(crate) fn owned(&self, group: &str, member: &str) -> Vec<TopicPartition> {
        let groups = self.groups();
        groups.get(group).map_or_else(Vec::new, |g| {
            g.owners.iter().filter(|(_, o)| *o == member).map(|(tp, _)| tp.clone()).collect()
        })
    }

    /// Removes a member (after it revoked and released everything). The group rebalances.
    pub(crate) fn leave(&self, group: &str, member: &str) {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        g.owners.retain(|_, o| o != member);
        if g.members.remove(member).is_some() {
            tracing::info!(group, member, "member left; rebalancing");
            rebalance(g);
        }
    }

    /// Expires members whose session timed out, freeing their partitions.
    pub fn expire_sessions(&self) {
        let now = Instant::now();
        let mut groups = self.groups();
        for (name, g) in groups.iter_mut() {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now.duration_since(m.last_seen) > m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in &dead {
                tracing::warn!(group = %name, member = %id, "session expired; its partitions are reassigned");
                g.members.remove(id);
                g.owners.retain(|_, o| o != id);
            }
            rebalance(g);
        }
    }

    /// Commits offsets: a member's for partitions it owns, or (with `member = None`) an
    /// administrative commit for a group with no active member. Offsets never move backwards here; use
    /// [`Coordinator::reset_offsets`] to rewind.
    pub fn commit(
        &self,
        group: &str,
        member: Option<&str>,
        offsets: &[(TopicPartition, u64)],
        metadata: &str,
    ) -> Result<()> {
        self.commit_inner(group, member, offsets, metadata, &[])
    }

    /// Like `commit`, but the owning member may move the partitions in `rewound` backwards: its
    /// position was reset because the committed offset fell out of the log's range.
    pub(crate) fn commit_inner(
        &self,
        group: &str,
        member: Option<&str>,
        offsets: &[(TopicPartition, u64)],
        metadata: &str,
        rewound: &[TopicPartition],
    ) -> Result<()> {
        let mut store = self.store();
        {
            let groups = self.groups();
            if let Some(member) = member {
                let g = groups.get(group).ok_or_else(|| Self::member_gone(group, member))?;
                if !g.members.contains_key(member) {
                    return Err(Self::member_gone(group, member));
                }
                for (tp, _) in offsets {
                    if g.owners.get(tp).is_none_or(|o| o != member) {
                        return Err(LogError::Group {
                            group: group.to_string(),
                            reason: format!("member {member} does not own {tp}; it was reassigned"),
                            retriable: true,
                        });
                    }
                }
            } else if groups.get(group).is_some_and(|g| !g.members.is_empty()) {
                return Err(LogError::Group {
                    group: group.to_string(),
                    reason: "the group has active members; only they can commit".into(),
                    retriable: false,
                });
            }
        }
        for (tp, off) in offsets {
            if let Some(c) = store.get(group, &tp.topic, tp.partition) {
                if *off < c.offset && !(member.is_some() && rewound.contains(tp)) {
                    return Err(LogError::OffsetRegression {
                        group: group.to_string(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset: *off,
                        committed: c.offset,
                    });
                }
            }
        }
        let now = garam_core::time::now_ms();
        let entries = offsets
            .iter()
            .filter(|(tp, off)| store.get(group, &tp.topic, tp.partition).is_none_or(|c| c.offset != *off))
            .map(|(tp, off)| {
                (
                    (group.to_string(), tp.topic.clone(), tp.partition),
                    CommittedOffset { offset: *off, metadata: metadata.to_string(), timestamp: now },
                )
            })
            .collect();
        store.commit(entries)
    }

    /// Transactional commit for a member: under the store's and the group's locks, checks that
    /// `member` owns every partition, runs `commit_point` (the transaction's prepare and markers),
    /// then records the offsets.
    pub(crate) fn commit_owned(
        &self,
        group: &str,
        member: Option<&str>,
        offsets: &[(TopicPartition, u64)],
        commit_point: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut store = self.store();
        let groups = self.groups();
        match member {
            Some(member) => {
                let g = groups.get(group).ok_or_else(|| Self::member_gone(group, member))?;
                if !g.members.contains_key(member) {
                    return Err(Self::member_gone(group, member));
                }
                for (tp, _) in offsets {
                    if g.owners.get(tp).is_none_or(|o| o != member) {
                        return Err(LogError::Group {
                            group: group.to_string(),
                            reason: format!("member {member} does not own {tp}; it was reassigned"),
                            retriable: true,
                        });
                    }
                }
            }
            None if groups.get(group).is_some_and(|g| !g.members.is_empty()) => {
                return Err(LogError::Group {
                    group: group.to_string(),
                    reason: "the group has active members; only they can commit".into(),
                    retriable: false,
                });
            }
            None => {}
        }
        commit_point()?;
        // Not fsynced here: the prepare record holds these offsets, and the transaction is
        // recorded complete only once a later fsync (`sync_offsets`) has made them durable.
        store.commit_with(entries(group, offsets, "txn"), false)
    }

    /// Fsyncs the offset store.
    pub(crate) fn sync_offsets(&self) -> Result<()> {
        self.store().sync()
    }

    /// Applies a committed transaction's offsets (recovery after a crash past the commit point),
    /// except where the group holds a later offset already: a transaction is recorded complete
    /// lazily, so after a rebalance another member may have committed the partition further
    /// before the crash, and recovery must not rewind it.
    pub(crate) fn apply_transactional(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        let mut store = self.store();
        let behind: Vec<(TopicPartition, u64)> = offsets
            .iter()
            .filter(|(tp, o)| store.get(group, &tp.topic, tp.partition).is_none_or(|c| c.offset <= *o))
            .cloned()
            .collect();
        store.commit(entries(group, &behind, "txn"))
    }

    /// Sets committed offsets explicitly (may rewind). Only for groups with no active member.
    /// [`crate::Log::reset_group_offsets`] also settles this process's transactions first.
    pub(crate) fn reset_offsets(&self, group: &str, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        let mut store = self.store();
        if self.groups().get(group).is_some_and(|g| !g.members.is_empty()) {
            return Err(LogError::Group {
                group: group.to_string(),
                reason: "cannot reset offsets while the group has active members; stop them first".into(),
                retriable: true,
            });
        }
        store.commit(entries(group, offsets, "reset"))
    }

    /// The committed offset of a partition.
    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<CommittedOffset> {
        self.store().get(group, &tp.topic, tp.partition).cloned()
    }

    /// Every group known: with members now, or with committed offsets.
    pub fn list(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.store().all().keys().map(|k| k.0.clone()).collect();
        names.extend(self.groups().iter().filter(|(_, g)| !g.members.is_empty()).map(|(n, _)| n.clone()));
        names.into_iter().collect()
    }

    /// Members, ownership and committed offsets of a group.
    pub fn describe(&self, group: &str) -> GroupDescription {
        let offsets = self
            .store()
            .all()
            .iter()
            .filter(|(k, _)| k.0 == group)
            .map(|(k, v)| (TopicPartition::new(k.1.clone(), k.2), v.clone()))
            .collect();
        let groups = self.groups();
        let Some(g) = groups.get(group) else {
            return GroupDescription {
                group: group.to_string(),
                generation: 0,
                state: "Empty",
                members: vec![],
                offsets,
            };
        };
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.clone(),
                owned: {
                    let mut o: Vec<_> = g.owners.iter().filter(|(_, x)| *x == id).map(|(tp, _)| tp.clone()).collect();
                    o.sort();
                    o
                },
            })
            .collect::<Vec<_>>();
        let settled = g.target.iter().all(|(m, tps)| tps.iter().all(|tp| g.owners.get(tp) == Some(m)));
        let state = if g.members.is_empty() {
            "Empty"
        } else if settled {
            "Stable"
        } else {
            "Rebalancing"
        };
        GroupDescription { group: group.to_string(), generation: g.generation, state, members, offsets }
    }

    /// Deletes a group's committed offsets. Only for groups with no active member.
    pub(crate) fn delete_group(&self, group: &str) -> Result<()> {
        if self.groups().get(group).is_some_and(|g| !g.members.is_empty()) {
            return Err(LogError::Group {
                group: group.into(),
                reason: "the group has active members".into(),
                retriable: true,
            });
        }
        self.store().delete_group(group)
    }

    pub(crate) fn close(&self) -> Result<()> {
        self.store().sync()
    }
}

/// Offset-store entries for `offsets` of `group`, stamped now.
fn entries(group: &str, offsets: &[(TopicPartition, u64)], metadata: &str) -> Vec<(OffsetKey, CommittedOffset)> {
    let now = garam_core::time::now_ms();
    offsets
        .iter()
        .map(|(tp, o)| {
            (
                (group.to_string(), tp.topic.clone(), tp.partition),
                CommittedOffset { offset: *o, metadata: metadata.to_string(), timestamp: now },
            )
        })
        .collect()
}

fn rebalance(g: &mut Group) {
    g.generation += 1;
    let subs: Subscriptions = g.members.iter().map(|(id, m)| (id.clone(), m.topics.clone())).collect();
    let counts: BTreeMap<String, u32> = g
        .partition_counts
        .iter()
        .filter(|(t, _)| subs.values().any(|ts| ts.contains(t)))
        .map(|(t, n)| (t.clone(), *n))
        .collect();
    g.target = match g.assignor {
        Assignor::Range => range(&subs, &counts),
        Assignor::CooperativeSticky => sticky(&subs, &counts, &g.target),
    };
    for m in g.members.values() {
        m.signal.notify();
    }
}
