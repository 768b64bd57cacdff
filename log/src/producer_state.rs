//! Idempotence: per producer id, the epoch and the last batches' sequences, so a retried batch is
//! recognised and not written twice.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;

/// Batches remembered per producer (Kafka keeps 5: a producer has at most 5 in flight).
const REMEMBERED: usize = 5;

/// A batch the log accepted from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqBatch {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<SeqBatch>,
}

/// What the producer table says of an incoming batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// Not idempotent, or the next in sequence: append it.
    Append,
    /// Already appended at these offsets.
    Duplicate(SeqBatch),
    /// The epoch is older than the producer's current one.
    Fenced { current: i16 },
    /// A gap or reordering.
    OutOfOrder { expected: i32 },
}

/// The producer table of one partition.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    pub fn check(&self, h: &BatchHeader) -> SeqCheck {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return SeqCheck::Append;
        }
        let Some(e) = self.producers.get(&h.producer_id) else {
            return SeqCheck::Append;
        };
        if h.producer_epoch < e.epoch {
            return SeqCheck::Fenced { current: e.epoch };
        }
        if h.producer_epoch > e.epoch {
            return if h.base_sequence == 0 { SeqCheck::Append } else { SeqCheck::OutOfOrder { expected: 0 } };
        }
        if let Some(b) = e.batches.iter().find(|b| b.first_seq == h.base_sequence && b.last_seq == h.last_sequence()) {
            return SeqCheck::Duplicate(*b);
        }
        let expected = e.batches.back().map_or(0, |b| if b.last_seq == i32::MAX { 0 } else { b.last_seq + 1 });
        if h.base_sequence == expected {
            SeqCheck::Append
        } else {
            SeqCheck::OutOfOrder { expected }
        }
    }

    /// Every producer's entry.
    pub fn entries(&self) -> impl Iterator<Item = (&i64, &ProducerEntry)> {
        self.producers.iter()
    }

    /// Records an appended batch (its header carries the assigned base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id >= 0 && h.is_control() {
            // A transaction marker written with a bumped epoch fences the producer's older epochs.
            let e = self
                .producers
                .entry(h.producer_id)
                .or_insert_with(|| ProducerEntry { epoch: h.producer_epoch, batches: VecDeque::new() });
            if h.producer_epoch > e.epoch {
                e.epoch = h.producer_epoch;
                e.batches.clear();
            }
            return;
        }
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let e = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(SeqBatch {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset: h.base_offset as u64,
            last_offset: h.last_offset() as u64,
        });
        if e.batches.len() > REMEMBERED {
            e.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, n: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: n,
        }
    }

    #[test]
    fn duplicates_gaps_and_fencing() {
        let mut t = ProducerTable::default();
        let b1 = header(7, 0, 0, 3, 0);
        assert_eq!(t.check(&b1), SeqCheck::Append);
        t.record(&b1);
        assert!(matches!(t.check(&header(7, 0, 0, 3, 99)), SeqCheck::Duplicate(b) if b.base_offset == 0));
        assert_eq!(t.check(&header(7, 0, 5, 1, 0)), SeqCheck::OutOfOrder { expected: 3 });
        assert_eq!(t.check(&header(7, 0, 3, 1, 0)), SeqCheck::Append);
        t.record(&header(7, 1, 0, 1, 3));
        assert_eq!(t.check(&header(7, 0, 4, 1, 0)), SeqCheck::Fenced { current: 1 });
        assert_eq!(t.check(&header(-1, -1, -1, 1, 0)), SeqCheck::Append);
    }
}
