//! Sparse offset and time indexes of a segment.
//!
//! The active segment's indexes live in memory and are written out when the segment rolls or the log
//! closes cleanly; after a crash they are rebuilt while the active segment is validated. Files start
//! with a 4-byte magic and a big-endian `u32` format version, then fixed-size big-endian entries.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{LogError, Result};

const OFFSET_MAGIC: &[u8; 4] = b"GOIX";
const TIME_MAGIC: &[u8; 4] = b"GTIX";
const VERSION: u32 = 1;
const HEADER: usize = 8;

/// Offset index: (offset relative to the segment base, byte position) every `index.interval.bytes`.
#[derive(Debug, Default, Clone)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

/// Time index: (largest timestamp so far, relative offset of the batch that raised it).
#[derive(Debug, Default, Clone)]
pub struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl OffsetIndex {
    /// Adds an entry; entries must grow in both offset and position.
    pub fn push(&mut self, rel_offset: u32, position: u32) {
        if self.entries.last().is_none_or(|&(o, p)| rel_offset > o && position > p) {
            self.entries.push((rel_offset, position));
        }
    }

    /// The entry with the largest offset ≤ `rel_offset`, or the segment start.
    pub fn lookup(&self, rel_offset: u32) -> (u32, u32) {
        match self.entries.partition_point(|&(o, _)| o <= rel_offset) {
            0 => (0, 0),
            i => self.entries[i - 1],
        }
    }

    /// Position of the last entry (where a tail scan can start).
    pub fn last_position(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.1)
    }

    /// Number of entries.
    #[allow(dead_code)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the index atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::with_capacity(HEADER + self.entries.len() * 8);
        buf.extend_from_slice(OFFSET_MAGIC);
        buf.extend_from_slice(&VERSION.to_be_bytes());
        for (o, p) in &self.entries {
            buf.extend_from_slice(&o.to_be_bytes());
            buf.extend_from_slice(&p.to_be_bytes());
        }
        write_atomically(path, &buf)
    }

    /// Reads an index file; `None` when missing or damaged (then the caller rebuilds it).
    /// Entries must be strictly increasing and point inside a segment of `segment_len` bytes.
    pub fn read(path: &Path, segment_len: u64) -> Option<OffsetIndex> {
        let raw = read_checked(path, OFFSET_MAGIC, 8)?;
        let mut idx = OffsetIndex { entries: Vec::with_capacity(raw.len() / 8) };
        for c in raw.chunks_exact(8) {
            let o = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let p = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            if p as u64 >= segment_len || idx.entries.last().is_some_and(|&(lo, lp)| o <= lo || p <= lp) {
                return None;
            }
            idx.entries.push((o, p));
        }
        Some(idx)
    }
}

impl TimeIndex {
    /// Records that the batch at `rel_offset` raised the largest timestamp to `ts`.
    pub fn push(&mut self, ts: i64, rel_offset: u32) {
        if self.entries.last().is_none_or(|&(t, o)| ts > t && rel_offset > o) || self.entries.is_empty() {
            self.entries.push((ts, rel_offset));
        }
    }

    /// The relative offset of the last entry whose timestamp is `< ts`: every record up to that
    /// batch is older than `ts`, so a search for the first record at or after `ts` starts there.
    pub fn lookup(&self, ts: i64) -> u32 {
        match self.entries.partition_point(|&(t, _)| t < ts) {
            0 => 0,
            i => self.entries[i - 1].1,
        }
    }

    /// The largest timestamp recorded, if any.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|e| e.0)
    }

    /// Writes the index atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::with_capacity(HEADER + self.entries.len() * 12);
        buf.extend_from_slice(TIME_MAGIC);
        buf.extend_from_slice(&VERSION.to_be_bytes());
        for (t, o) in &self.entries {
            buf.extend_from_slice(&t.to_be_bytes());
            buf.extend_from_slice(&o.to_be_bytes());
        }
        write_atomically(path, &buf)
    }

    /// Reads a time index; `None` when missing or damaged.
    pub fn read(path: &Path) -> Option<TimeIndex> {
        let raw = read_checked(path, TIME_MAGIC, 12)?;
        let mut idx = TimeIndex { entries: Vec::with_capacity(raw.len() / 12) };
        for c in raw.chunks_exact(12) {
            let mut t = [0u8; 8];
            t.copy_from_slice(&c[..8]);
            let t = i64::from_be_bytes(t);
            let o = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
            if idx.entries.last().is_some_and(|&(lt, lo)| t <= lt || o <= lo) {
                return None;
            }
            idx.entries.push((t, o));
        }
        Some(idx)
    }
}

fn read_checked(path: &Path, magic: &[u8; 4], entry: usize) -> Option<Vec<u8>> {
    let raw = fs::read(path).ok()?;
    if raw.len() < HEADER
        || &raw[..4] != magic
        || raw[4..8] != VERSION.to_be_bytes()
        || (raw.len() - HEADER) % entry != 0
    {
        return None;
    }
    Some(raw[HEADER..].to_vec())
}

/// Writes `data` to `path` via a temporary file and a rename, so readers see old or new, never half.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(LogError::io("create", &tmp))?;
    f.write_all(data).map_err(LogError::io("write", &tmp))?;
    f.sync_data().map_err(LogError::io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(LogError::io("rename", path))?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, so a rename or a new file survives power loss.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(LogError::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut oi = OffsetIndex::default();
        oi.push(10, 4096);
        oi.push(20, 8192);
        oi.push(15, 9000); // not increasing in offset: ignored
        assert_eq!(oi.lookup(5), (0, 0));
        assert_eq!(oi.lookup(10), (10, 4096));
        assert_eq!(oi.lookup(25), (20, 8192));
        let p = dir.path().join("a.index");
        oi.write(&p).unwrap();
        assert_eq!(OffsetIndex::read(&p, 10_000).unwrap().len(), 2);
        assert!(OffsetIndex::read(&p, 8000).is_none(), "entry past the segment end");
        let mut raw = fs::read(&p).unwrap();
        raw.pop();
        fs::write(&p, &raw).unwrap();
        assert!(OffsetIndex::read(&p, 10_000).is_none(), "torn file");
        assert!(OffsetIndex::read(&dir.path().join("missing"), 1).is_none());

        let mut ti = TimeIndex::default();
        ti.push(100, 0);
        ti.push(200, 5);
        ti.push(150, 7); // not a new max: ignored
        assert_eq!(ti.lookup(100), 0);
        assert_eq!(ti.lookup(150), 0);
        assert_eq!(ti.lookup(201), 5);
        let p = dir.path().join("a.timeindex");
        ti.write(&p).unwrap();
        assert_eq!(TimeIndex::read(&p).unwrap().max_timestamp(), Some(200));
    }
}
