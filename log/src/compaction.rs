//! Log compaction: keep the latest value of every key, drop tombstones after `delete.retention.ms`.
//!
//! Cleaning never blocks appends or reads: it works on closed segments, writes the result to
//! `<base>.log.cleaned`, fsyncs it, renames it to `<base>.<end>.swap` (the commit point), and only
//! then, under the partition lock for a moment, swaps it in for the segments with base offsets in
//! `[base, end)`. On open, [`recover_swaps`] deletes unfinished `.cleaned` files and completes any
//! `.swap`, so a crash at any point leaves either the old segments or the new one, never both or
//! neither.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::batch::{BatchBuilder, BatchIter, Compression};
use crate::error::{LogError, Result};
use crate::partition::Partition;
use crate::segment::{file_name, Segment};

/// What a cleaning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments rewritten.
    pub segments: usize,
    /// Records read.
    pub records_read: u64,
    /// Records kept.
    pub records_kept: u64,
}

/// Completes or discards an interrupted swap in a partition directory.
pub(crate) fn recover_swaps(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut swaps = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        } else if let Some(stem) = name.strip_suffix(".swap") {
            if let Some((a, b)) = stem.split_once('.') {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                    swaps.push((a, b, e.path()));
                }
            }
        }
    }
    for (from, to, swap) in swaps {
        for e in fs::read_dir(dir).map_err(LogError::io("list partition dir", dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let base = name.split('.').next().and_then(|b| b.parse::<u64>().ok());
            let is_segment_file = name.ends_with(".log") || name.ends_with(".index") || name.ends_with(".timeindex");
            if is_segment_file && base.is_some_and(|b| b >= from && b < to) {
                fs::remove_file(e.path()).map_err(LogError::io("remove replaced segment", e.path()))?;
            }
        }
        let target = dir.join(file_name(from, "log"));
        fs::rename(&swap, &target).map_err(LogError::io("complete swap", &target))?;
        tracing::info!(dir = %dir.display(), from, to, "completed an interrupted compaction swap");
    }
    Ok(())
}

/// One cleaning pass over a partition's closed segments.
pub fn compact(p: &Partition, now_ms: i64) -> Result<CompactionStats> {
    let config = p.config();
    let mut stats = CompactionStats::default();
    if !config.cleanup_policy.compact {
        return Ok(stats);
    }
    let _cleaning = p.cleaner.lock().unwrap_or_else(|e| e.into_inner());
    let (segments, _hw) = p.segments_snapshot();
    if segments.len() < 2 {
        return Ok(stats);
    }
    // Transactions: only stable offsets (below the last stable offset) are compacted, and records
    // of aborted transactions never count as a key's latest value — they are dropped instead.
    let lso = p.last_stable_offset();
    let aborted = p.aborted_transactions();
    let is_aborted = |b: &crate::batch::Batch| {
        let h = b.header();
        h.is_transactional() && aborted.iter().any(|a| a.covers(h.producer_id, h.base_offset as u64))
    };
    // Latest offset of every key, over the whole log including the active segment.
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for seg in &segments {
        for_each_record(seg, |b, r| {
            if r.offset < lso && !is_aborted(b) {
                if let Some(k) = &r.key {
                    match latest.get_mut(k.as_ref()) {
                        Some(o) => *o = (*o).max(r.offset),
                        None => {
                            latest.insert(k.to_vec(), r.offset);
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
    // Closed segments old enough to clean, from the start.
    let lag = config.min_compaction_lag_ms as i64;
    let closed = &segments[..segments.len() - 1];
    let cleanable = closed
        .iter()
        .take_while(|s| {
            now_ms - s.max_timestamp.load(Ordering::Acquire) >= lag && s.next_offset.load(Ordering::Acquire) <= lso
        })
        .count();
    let mut i = 0;
    while i < cleanable {
        // Group consecutive segments that fit one segment.
        let mut j = i + 1;
        let mut size = segments[i].len();
        while j < cleanable && size + segments[j].len() <= config.segment_bytes {
            size += segments[j].len();
            j += 1;
        }
        let from = segments[i].base_offset;
        let to = segments[j].base_offset;
        clean_group(p, &segments[i..j], from, to, &latest, &aborted, now_ms, config.delete_retention_ms, &mut stats)?;
        i = j;
    }
    Ok(stats)
}

fn for_each_record(
    seg: &Segment,
    mut f: impl FnMut(&crate::batch::Batch, crate::batch::ConsumedRecord) -> Result<()>,
) -> Result<()> {
    let len = seg.len();
    let mut pos = 0;
    while pos < len {
        let data = seg.read(pos, 1 << 20, len)?;
        if data.is_empty() {
            break;
        }
        pos += data.len() as u64;
        for b in BatchIter::new(data) {
            let b = b?;
            if b.header().is_control() {
                continue;
            }
            for r in b.records()? {
                f(&b, r?)?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn clean_group(
    p: &Partition,
    group: &[std::sync::Arc<Segment>],
    from: u64,
    to: u64,
    latest: &HashMap<Vec<u8>, u64>,
    aborted: &[crate::txn_state::AbortedTxn],
    now_ms: i64,
    delete_retention_ms: u64,
    stats: &mut CompactionStats,
) -> Result<()> {
    let dir = p.dir().to_path_buf();
    let cleaned = dir.join(format!("{}.cleaned", file_name(from, "log")));
    let mut out: Vec<u8> = Vec::new();
    // Just past the last tombstone this cleaning removes (0: none).
    let mut deletes_dropped_before = 0u64;
    for seg in group {
        let len = seg.len();
        let mut pos = 0;
        while pos < len {
            let data = seg.read(pos, 1 << 20, len)?;
            if data.is_empty() {
                break;
            }
            pos += data.len() as u64;
            for b in BatchIter::new(data) {
                let b = b?;
                if aborted.iter().any(|a| {
                    b.header().is_transactional() && a.covers(b.header().producer_id, b.header().base_offset as u64)
                }) {
                    continue; // an aborted transaction's records: never readable, dropped
                }
                let h = *b.header();
                let horizon =
                    (h.attributes & crate::batch::attributes::DELETE_HORIZON != 0).then_some(h.base_timestamp);
                if h.is_control() {
                    out.extend_from_slice(b.bytes());
                    continue;
                }
                let mut kept = Vec::new();
                let mut all = true;
                for r in b.records()? {
                    let r = r?;
                    stats.records_read += 1;
                    let is_latest = r.key.as_ref().is_none_or(|k| latest.get(k.as_ref()) == Some(&r.offset));
                    // Kafka's delete horizon (KIP-534): a tombstone survives the first cleaning,
                    // which stamps its batch with "cleaned at + delete.retention.ms"; a later
                    // cleaning past that horizon removes it. Readers get that long to see it.
                    let expired_tombstone = r.value.is_none() && horizon.is_some_and(|h| now_ms >= h);
                    if is_latest && !expired_tombstone {
                        kept.push(r);
                    } else {
                        if is_latest {
                            deletes_dropped_before = deletes_dropped_before.max(r.offset + 1);
                        }
                        all = false;
                    }
                }
                stats.records_kept += kept.len() as u64;
                let needs_horizon = horizon.is_none() && kept.iter().any(|r| r.value.is_none());
                if all && !needs_horizon {
                    out.extend_from_slice(b.bytes());
                } else if !kept.is_empty() {
                    let codec = Compression::from_attributes(h.attributes)?;
                    let mut builder = BatchBuilder::new(codec);
                    builder.producer(h.producer_id, h.producer_epoch, h.base_sequence);
                    builder.transactional(h.is_transactional());
                    let stamped = horizon.or(needs_horizon.then(|| now_ms + delete_retention_ms as i64));
                    builder.delete_horizon(stamped);
                    for r in &kept {
                        let delta = (r.offset - h.base_offset as u64) as i32;
                        builder.push_with_offset_delta(
                            delta,
                            r.timestamp,
                            r.key.as_deref(),
                            r.value.as_deref(),
                            &r.headers,
                        );
                    }
                    let start = out.len();
                    builder.finish_with_last_delta(&mut out, h.last_offset_delta)?;
                    out[start..start + 8].copy_from_slice(&h.base_offset.to_be_bytes());
                }
            }
        }
    }
    crate::index::write_atomically(&cleaned, &out)?;
    p.dropping_deletes_before(deletes_dropped_before)?;
    let swap = dir.join(format!("{from:020}.{to:020}.swap"));
    fs::rename(&cleaned, &swap).map_err(LogError::io("commit compaction", &swap))?;
    crate::index::sync_parent(&swap)?;
    // The swap is committed: replace the old segments on disk and in memory.
    for seg in group {
        seg.delete_files()?;
    }
    let target = dir.join(file_name(from, "log"));
    fs::rename(&swap, &target).map_err(LogError::io("install compacted segment", &target))?;
    crate::index::sync_parent(&target)?;
    let config = p.config();
    let (seg, _) = Segment::open(&dir, from, &format!("{}-{}", p.topic(), p.id()), true, config.index_interval_bytes)?;
    seg.write_indexes()?;
    p.swap_segments(from, to, seg)?;
    stats.segments += group.len();
    tracing::info!(partition = %format!("{}-{}", p.topic(), p.id()), from, to, "compacted segments");
    Ok(())
}
