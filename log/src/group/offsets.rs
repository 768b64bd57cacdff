//! Committed offsets, persisted crash-safely.
//!
//! `offsets.log` is an append-only file of records `len u32 | crc32c u32 | payload`, payload =
//! `version u8 (1) | group | topic | partition u32 | offset u64 | timestamp i64 | metadata`
//! (strings as `u16` length + UTF-8). Every commit is one write and one fsync before it is
//! acknowledged. On open the file is replayed and a torn tail is cut off; when it grows past a
//! few times its live size it is rewritten (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{LogError, Result};

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: u64,
    /// Free-form metadata stored with the commit.
    pub metadata: String,
    /// Wall time of the commit (epoch ms).
    pub timestamp: i64,
}

/// (group, topic, partition).
pub type OffsetKey = (String, String, u32);

pub(crate) struct OffsetStore {
    path: PathBuf,
    file: File,
    /// Bytes of whole, acknowledged records: a failed write is cut back to here.
    valid_len: u64,
    map: BTreeMap<OffsetKey, CommittedOffset>,
    records: usize,
}

const VERSION: u8 = 1;

impl OffsetStore {
    pub fn open(dir: &Path) -> Result<OffsetStore> {
        fs::create_dir_all(dir).map_err(LogError::io("create groups dir", dir))?;
        let path = dir.join("offsets.log");
        let mut raw = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut raw).map_err(LogError::io("read offsets", &path))?;
        }
        let mut map = BTreeMap::new();
        let mut pos = 0;
        let mut records = 0;
        while pos + 8 <= raw.len() {
            let len = u32::from_be_bytes([raw[pos], raw[pos + 1], raw[pos + 2], raw[pos + 3]]) as usize;
            let crc = u32::from_be_bytes([raw[pos + 4], raw[pos + 5], raw[pos + 6], raw[pos + 7]]);
            let Some(payload) = raw.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if crc32c::crc32c(payload) != crc {
                break;
            }
            let Some((key, value)) = decode(payload) else {
                break;
            };
            map.insert(key, value);
            records += 1;
            pos += 8 + len;
        }
        let existed = path.exists();
        let file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(LogError::io("open offsets", &path))?;
        if !existed {
            // A new file and directory: their entries must survive a power cut like the first
            // commit written into them.
            crate::index::sync_parent(&path)?;
            crate::index::sync_parent(dir)?;
        }
        if pos < raw.len() {
            tracing::warn!(file = %path.display(), valid = pos, len = raw.len(), "cutting a torn tail off the offsets file");
            file.set_len(pos as u64).map_err(LogError::io("truncate offsets", &path))?;
        }
        let mut store = OffsetStore { path, file, valid_len: pos as u64, map, records };
        if store.records > 1024 && store.records > 4 * store.map.len() {
            store.rewrite()?;
        }
        Ok(store)
    }

    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<&CommittedOffset> {
        self.map.get(&(group.to_string(), topic.to_string(), partition))
    }

    pub fn all(&self) -> &BTreeMap<OffsetKey, CommittedOffset> {
        &self.map
    }

    /// Persists commits with one write and one fsync.
    pub fn commit(&mut self, entries: Vec<(OffsetKey, CommittedOffset)>) -> Result<()> {
        self.commit_with(entries, true)
    }

    /// Writes commits; `sync`: and fsyncs them (else a later [`Self::sync`] does).
    pub fn commit_with(&mut self, entries: Vec<(OffsetKey, CommittedOffset)>, sync: bool) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (k, v) in &entries {
            encode_record(&mut buf, k, v);
        }
        let written = self.file.write_all(&buf).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Never leave a torn record in front of later commits: replay would stop there.
            let _ = self.file.set_len(self.valid_len);
            return Err(LogError::Io { context: "write offsets", path: self.path.clone(), source: e });
        }
        self.valid_len += buf.len() as u64;
        self.records += entries.len();
        for (k, v) in entries {
            self.map.insert(k, v);
        }
        if self.records > 4096 && self.records > 4 * self.map.len() {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Forgets a group's offsets (the group was deleted).
    pub fn delete_group(&mut self, group: &str) -> Result<()> {
        self.map.retain(|k, _| k.0 != group);
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<()> {
        let mut buf = Vec::new();
        for (k, v) in &self.map {
            encode_record(&mut buf, k, v);
        }
        crate::index::write_atomically(&self.path, &buf)?;
        self.file =
            OpenOptions::new().append(true).open(&self.path).map_err(LogError::io("open offsets", &self.path))?;
        // A failed write later cuts the file back to here: the rewritten length, not the old one
        // (which would pad the file with zeros that stop the next replay).
        self.valid_len = buf.len() as u64;
        self.records = self.map.len();
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(LogError::io("fsync offsets", &self.path))
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Cut at a character boundary so the stored string stays valid UTF-8.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s.as_bytes()[..end];
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

fn encode_record(buf: &mut Vec<u8>, k: &OffsetKey, v: &CommittedOffset) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    buf.push(VERSION);
    put_str(buf, &k.0);
    put_str(buf, &k.1);
    buf.extend_from_slice(&k.2.to_be_bytes());
    buf.extend_from_slice(&v.offset.to_be_bytes());
    buf.extend_from_slice(&v.timestamp.to_be_bytes());
    put_str(buf, &v.metadata);
    let len = (buf.len() - start - 8) as u32;
    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

fn decode(p: &[u8]) -> Option<(OffsetKey, CommittedOffset)> {
    let mut pos = 0;
    let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
        let s = p.get(*pos..*pos + n)?;
        *pos += n;
        Some(s)
    };
    if *take(&mut pos, 1)?.first()? != VERSION {
        return None;
    }
    let get_str = |pos: &mut usize| -> Option<String> {
        let l = u16::from_be_bytes(take(pos, 2)?.try_into().ok()?) as usize;
        String::from_utf8(take(pos, l)?.to_vec()).ok()
    };
    let group = get_str(&mut pos)?;
    let topic = get_str(&mut pos)?;
    let partition = u32::from_be_bytes(take(&mut pos, 4)?.try_into().ok()?);
    let offset = u64::from_be_bytes(take(&mut pos, 8)?.try_into().ok()?);
    let timestamp = i64::from_be_bytes(take(&mut pos, 8)?.try_into().ok()?);
    let metadata = get_str(&mut pos)?;
    Some(((group, topic, partition), CommittedOffset { offset, metadata, timestamp }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let key = |p| ("g".to_string(), "t".to_string(), p);
        let val = |o| CommittedOffset { offset: o, metadata: "m".into(), timestamp: 1 };
        {
            let mut s = OffsetStore::open(dir.path()).unwrap();
            s.commit(vec![(key(0), val(5)), (key(1), val(7))]).unwrap();
            s.commit(vec![(key(0), val(9))]).unwrap();
        }
        // Tear the last record.
        let p = dir.path().join("offsets.log");
        let mut raw = fs::read(&p).unwrap();
        raw.truncate(raw.len() - 3);
        fs::write(&p, &raw).unwrap();
        let s = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(s.get("g", "t", 0).unwrap().offset, 5);
        assert_eq!(s.get("g", "t", 1).unwrap().offset, 7);
    }
}
