//! Partition assignment strategies: pure functions from members and partitions to an assignment.

use std::collections::{BTreeMap, BTreeSet};

pub use garam_core::backend::TopicPartition;

/// How a group spreads partitions over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Kafka's `RangeAssignor` with the eager protocol: every rebalance revokes everything first.
    Range,
    /// Kafka's `CooperativeStickyAssignor`: balanced, keeps partitions where they are, and only the
    /// partitions that move are revoked.
    #[default]
    CooperativeSticky,
}

impl Assignor {
    /// Parses `range` or `cooperative-sticky`.
    pub fn parse(s: &str) -> Option<Assignor> {
        match s {
            "range" => Some(Assignor::Range),
            "cooperative-sticky" | "sticky" => Some(Assignor::CooperativeSticky),
            _ => None,
        }
    }

    /// True when every rebalance revokes all partitions (eager protocol).
    pub fn is_eager(self) -> bool {
        self == Assignor::Range
    }
}

/// Member id → subscribed topics.
pub type Subscriptions = BTreeMap<String, Vec<String>>;
/// Member id → assigned partitions.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Range: per topic, consecutive partition ranges to members in id order, the first ones one extra.
pub fn range(subs: &Subscriptions, partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out: Assignment = subs.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (topic, &n) in partitions {
        let members: Vec<&String> = subs.iter().filter(|(_, ts)| ts.contains(topic)).map(|(m, _)| m).collect();
        if members.is_empty() {
            continue;
        }
        let per = n / members.len() as u32;
        let extra = n % members.len() as u32;
        let mut next = 0;
        for (i, m) in members.iter().enumerate() {
            let count = per + u32::from((i as u32) < extra);
            let set = out.entry((*m).clone()).or_default();
            for p in next..next + count {
                set.insert(TopicPartition::new(topic.clone(), p));
            }
            next += count;
        }
    }
    out
}

/// Sticky and balanced: start from `previous`, drop what is no longer valid, hand out unassigned
/// partitions to the least-loaded eligible member, then move partitions from the most to the least
/// loaded member until no move improves the balance.
pub fn sticky(subs: &Subscriptions, partitions: &BTreeMap<String, u32>, previous: &Assignment) -> Assignment {
    let eligible = |m: &str, tp: &TopicPartition| subs.get(m).is_some_and(|ts| ts.contains(&tp.topic));
    let all: BTreeSet<TopicPartition> = partitions
        .iter()
        .filter(|(t, _)| subs.values().any(|ts| ts.contains(t)))
        .flat_map(|(t, &n)| (0..n).map(move |p| TopicPartition::new(t.clone(), p)))
        .collect();
    let mut out: Assignment = subs.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    let mut taken = BTreeSet::new();
    for (m, tps) in previous {
        if let Some(set) = out.get_mut(m) {
            for tp in tps {
                if all.contains(tp) && eligible(m, tp) && taken.insert(tp.clone()) {
                    set.insert(tp.clone());
                }
            }
        }
    }
    for tp in all.iter().filter(|tp| !taken.contains(*tp)) {
        if let Some((m, _)) = out.iter().filter(|(m, _)| eligible(m, tp)).min_by_key(|(m, s)| (s.len(), (*m).clone())) {
            let m = m.clone();
            out.entry(m).or_default().insert(tp.clone());
        }
    }
    // Balance: bounded by the number of partitions.
    for _ in 0..=all.len() {
        let Some((max_m, _)) = out.iter().max_by_key(|(m, s)| (s.len(), std::cmp::Reverse((*m).clone()))) else {
            break;
        };
        let max_m = max_m.clone();
        let mut moved = false;
        let candidates: Vec<TopicPartition> = out[&max_m].iter().rev().cloned().collect();
        for tp in candidates {
            let max_len = out[&max_m].len();
            let target = out
                .iter()
                .filter(|(m, s)| **m != max_m && eligible(m, &tp) && s.len() + 1 < max_len)
                .min_by_key(|(m, s)| (s.len(), (*m).clone()))
                .map(|(m, _)| m.clone());
            if let Some(t) = target {
                out.get_mut(&max_m).map(|s| s.remove(&tp));
                out.get_mut(&t).map(|s| s.insert(tp));
                moved = true;
                break;
            }
        }
        if !moved {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(members: &[&str], topics: &[&str]) -> Subscriptions {
        members.iter().map(|m| (m.to_string(), topics.iter().map(|t| t.to_string()).collect())).collect()
    }

    #[test]
    fn range_matches_kafka() {
        let parts = BTreeMap::from([("t".to_string(), 5u32)]);
        let a = range(&subs(&["a", "b"], &["t"]), &parts);
        let ps = |m: &str| a[m].iter().map(|tp| tp.partition).collect::<Vec<_>>();
        assert_eq!(ps("a"), vec![0, 1, 2]);
        assert_eq!(ps("b"), vec![3, 4]);
    }

    #[test]
    fn sticky_balances_and_sticks() {
        let parts = BTreeMap::from([("t".to_string(), 8u32)]);
        let one = sticky(&subs(&["a"], &["t"]), &parts, &Assignment::new());
        assert_eq!(one["a"].len(), 8);
        let two = sticky(&subs(&["a", "b"], &["t"]), &parts, &one);
        assert_eq!(two["a"].len(), 4);
        assert_eq!(two["b"].len(), 4);
        assert!(two["a"].is_subset(&one["a"]), "a keeps what it had");
        let three = sticky(&subs(&["a", "b", "c"], &["t"]), &parts, &two);
        let sizes: Vec<usize> = three.values().map(BTreeSet::len).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        let moved = three["a"].difference(&two["a"]).count() + three["b"].difference(&two["b"]).count();
        assert_eq!(moved, 0, "a and b only lose partitions to c");
        let total: usize = sizes.iter().sum();
        assert_eq!(total, 8);
    }
}
