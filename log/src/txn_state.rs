//! A partition's view of transactions: which producers have one open (and from which offset), and
//! which were aborted — what read-committed fetches need (Kafka's last stable offset and aborted
//! transaction index).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::{Batch, BatchHeader};

/// What a control batch (transaction marker) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    /// The producer's open transaction aborted.
    Abort,
    /// The producer's open transaction committed.
    Commit,
}

impl ControlType {
    /// Kafka's control record key: `version i16 = 0 | type i16` (0 abort, 1 commit).
    pub fn key(self) -> [u8; 4] {
        let t: i16 = match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        };
        let mut k = [0u8; 4];
        k[2..].copy_from_slice(&t.to_be_bytes());
        k
    }

    /// Reads the marker type of a control batch.
    pub fn of(batch: &[u8]) -> Option<ControlType> {
        let b = Batch::new(Bytes::copy_from_slice(batch)).ok()?;
        let r = b.records().ok()?.next()?.ok()?;
        match r.key.as_deref()? {
            [_, _, 0, 0] => Some(ControlType::Abort),
            [_, _, 0, 1] => Some(ControlType::Commit),
            _ => None,
        }
    }
}

/// An aborted transaction's range in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Its first offset in this partition.
    pub first_offset: u64,
    /// The offset of its abort marker.
    pub last_offset: u64,
}

impl AbortedTxn {
    /// True when a transactional batch of `producer_id` at `offset` belongs to this aborted range.
    pub fn covers(&self, producer_id: i64, offset: u64) -> bool {
        self.producer_id == producer_id && self.first_offset <= offset && offset <= self.last_offset
    }
}

/// Open and aborted transactions of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TxnState {
    /// Producer id → first offset of its open transaction.
    pub ongoing: BTreeMap<i64, u64>,
    /// Aborted ranges, in marker order.
    pub aborted: Vec<AbortedTxn>,
}

impl TxnState {
    /// Applies an appended batch (with its marker type when it is a control batch).
    pub fn apply(&mut self, h: &BatchHeader, marker: Option<ControlType>) {
        if !h.is_transactional() || h.producer_id < 0 {
            return;
        }
        if h.is_control() {
            if let Some(first) = self.ongoing.remove(&h.producer_id) {
                if marker == Some(ControlType::Abort) {
                    self.aborted.push(AbortedTxn {
                        producer_id: h.producer_id,
                        first_offset: first,
                        last_offset: h.base_offset as u64,
                    });
                }
            }
        } else {
            self.ongoing.entry(h.producer_id).or_insert(h.base_offset as u64);
        }
    }

    /// The first offset of the oldest open transaction.
    pub fn first_unstable(&self) -> Option<u64> {
        self.ongoing.values().copied().min()
    }

    /// Aborted ranges that overlap `[from, to)`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.aborted.iter().filter(|a| a.last_offset >= from && a.first_offset < to).copied().collect()
    }

    /// Forgets aborted ranges wholly below the log start.
    pub fn prune(&mut self, log_start: u64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }
}
