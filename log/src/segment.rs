//! One segment: a file of consecutive batches named by its base offset, with its indexes.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

use crate::batch::{Batch, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::error::{BatchLocation, LogError, Result};
use crate::index::{OffsetIndex, TimeIndex};

/// File name of a segment with this base offset: 20 zero-padded digits, as Kafka names them.
pub fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// In-memory indexes of a segment.
#[derive(Debug, Default)]
pub(crate) struct Indexes {
    pub offsets: OffsetIndex,
    pub times: TimeIndex,
    /// Bytes appended since the last offset-index entry.
    pub bytes_since_entry: u64,
}

/// Bytes appended to a segment between requests to start writing them back.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// A segment file and what we know of it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: File,
    /// `topic-partition`, for error messages.
    pub partition: String,
    pub indexes: RwLock<Indexes>,
    /// Bytes of whole batches in the file.
    pub size: AtomicU64,
    /// Where the bytes not yet handed to the kernel's writeback start (see [`Self::append`]).
    written_back: AtomicU64,
    /// Offset after the last batch.
    pub next_offset: AtomicU64,
    /// Largest timestamp of any batch (-1 when empty).
    pub max_timestamp: AtomicI64,
    /// Wall time (ms) of the first append, for `segment.ms`.
    pub created_ms: AtomicI64,
}

/// What a validating scan of a segment found.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    /// Byte length of the valid prefix.
    pub valid_len: u64,
    /// Offset after the last valid batch, if any batch was found.
    pub next_offset: Option<u64>,
    pub max_timestamp: i64,
    /// Headers of the valid batches, for rebuilding producer state.
    pub headers: Vec<BatchHeader>,
    /// True when a torn tail was cut off.
    pub truncated: bool,
}

impl Segment {
    /// Creates an empty segment.
    pub fn create(dir: &Path, base_offset: u64, partition: &str, now_ms: i64) -> Result<Segment> {
        let path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(LogError::io("create segment", &path))?;
        crate::index::sync_parent(&path)?;
        Ok(Segment::with_file(base_offset, path, file, partition, 0, base_offset, -1, now_ms))
    }

    #[allow(clippy::too_many_arguments)]
    fn with_file(
        base_offset: u64,
        path: PathBuf,
        file: File,
        partition: &str,
        size: u64,
        next: u64,
        max_ts: i64,
        created: i64,
    ) -> Segment {
        Segment {
            base_offset,
            path,
            file,
            partition: partition.to_string(),
            indexes: RwLock::new(Indexes::default()),
            size: AtomicU64::new(size),
            written_back: AtomicU64::new(size),
            next_offset: AtomicU64::new(next),
            max_timestamp: AtomicI64::new(max_ts),
            created_ms: AtomicI64::new(created),
        }
    }

    /// Opens an existing segment.
    ///
    /// With `validate`, every batch is CRC-checked, a torn tail is truncated, and the indexes are
    /// rebuilt; without it, intact index files are trusted and only the bytes after the last index
    /// entry are scanned (headers only). `next_base` is the base offset of the following segment,
    /// which bounds this one's offsets.
    pub fn open(
        dir: &Path,
        base_offset: u64,
        partition: &str,
        validate: bool,
        index_interval: u64,
    ) -> Result<(Segment, ScanResult)> {
        let path = dir.join(file_name(base_offset, "log"));
        let file =
            OpenOptions::new().read(true).write(true).open(&path).map_err(LogError::io("open segment", &path))?;
        let file_len = file.metadata().map_err(LogError::io("stat segment", &path))?.len();
        let mtime = file
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let seg = Segment::with_file(base_offset, path.clone(), file, partition, 0, base_offset, -1, mtime);
        let loaded = if validate {
            None
        } else {
            OffsetIndex::read(&dir.join(file_name(base_offset, "index")), file_len)
                .zip(TimeIndex::read(&dir.join(file_name(base_offset, "timeindex"))))
        };
        let scan = match loaded {
            Some((offsets, times)) => {
                let start = offsets.last_position() as u64;
                let scan = seg.scan(start, file_len, false, None)?;
                let mut ix = seg.indexes.write().unwrap_or_else(|e| e.into_inner());
                ix.bytes_since_entry = scan.valid_len - start;
                let max_ts = times.max_timestamp().unwrap_or(-1).max(scan.max_timestamp);
                ix.offsets = offsets;
                ix.times = times;
                drop(ix);
                ScanResult { max_timestamp: max_ts, ..scan }
            }
            None => {
                let mut ix = Indexes::default();
                let scan = seg.scan(0, file_len, validate, Some((&mut ix, index_interval)))?;
                *seg.indexes.write().unwrap_or_else(|e| e.into_inner()) = ix;
                scan
            }
        };
        let mut scan = scan;
        scan.truncated = scan.valid_len < file_len;
        if scan.truncated {
            tracing::warn!(file = %path.display(), valid = scan.valid_len, len = file_len, "truncating a torn segment tail");
            seg.file.set_len(scan.valid_len).map_err(LogError::io("truncate segment", &path))?;
        }
        seg.size.store(scan.valid_len, Ordering::Release);
        seg.next_offset.store(scan.next_offset.unwrap_or(base_offset), Ordering::Release);
        seg.max_timestamp.store(scan.max_timestamp, Ordering::Release);
        Ok((seg, scan))
    }

    fn location(&self, position: u64, offset: Option<u64>) -> BatchLocation {
        BatchLocation { file: self.path.clone(), partition: self.partition.clone(), position, offset }
    }

    /// Scans batches from `start` to `end`. A torn tail (incomplete or corrupt last batch) stops the
    /// scan and is reported through `valid_len`; a corrupt batch followed by a valid one is corruption
    /// in the middle of the log, and an error.
    fn scan(&self, start: u64, end: u64, verify: bool, mut rebuild: Option<(&mut Indexes, u64)>) -> Result<ScanResult> {
        let mut res = ScanResult { valid_len: start, max_timestamp: -1, ..Default::default() };
        let mut pos = start;
        let mut buf = Vec::new();
        while pos + LOG_OVERHEAD as u64 <= end {
            let mut head = [0u8; HEADER_LEN];
            let avail = (end - pos).min(HEADER_LEN as u64) as usize;
            self.file.read_exact_at(&mut head[..avail], pos).map_err(LogError::io("read segment", &self.path))?;
            let header = match BatchHeader::parse(&head[..avail]) {
                Ok(h) if (h.base_offset as u64) < self.base_offset => {
                    // Offsets below the segment's base: damage (the base offset is not CRC'd).
                    if !verify {
                        return Err(LogError::corrupt(format!(
                            "batch offset {} below the segment base",
                            h.base_offset
                        ))
                        .at(self.location(pos, Some(h.base_offset as u64))));
                    }
                    self.check_tail(pos + h.total_len() as u64, end, pos, Some(h.base_offset as u64))?;
                    break;
                }
                Ok(h) if pos + h.total_len() as u64 <= end => h,
                Ok(h) => {
                    self.check_tail(
                        pos + h.total_len().max(LOG_OVERHEAD) as u64,
                        end,
                        pos,
                        Some(h.base_offset as u64),
                    )?;
                    break;
                }
                Err(e) => {
                    // After a clean shutdown a bad header is damage; after a crash it is a torn tail.
                    if !verify {
                        return Err(e.at(self.location(pos, None)));
                    }
                    break;
                }
            };
            let len = header.total_len();
            if verify {
                buf.resize(len, 0);
                self.file.read_exact_at(&mut buf, pos).map_err(LogError::io("read segment", &self.path))?;
                let ok = Batch::new(Bytes::copy_from_slice(&buf)).and_then(|b| b.verify()).is_ok()
                    && res.next_offset.is_none_or(|n| header.base_offset as u64 >= n);
                if !ok {
                    self.check_tail(pos + len as u64, end, pos, Some(header.base_offset as u64))?;
                    break;
                }
            }
            if let Some((ix, interval)) = rebuild.as_mut() {
                let rel = (header.base_offset as u64 - self.base_offset) as u32;
                if ix.bytes_since_entry >= *interval {
                    ix.offsets.push(rel, pos as u32);
                    ix.bytes_since_entry = 0;
                }
                if header.max_timestamp > ix.times.max_timestamp().unwrap_or(i64::MIN) {
                    ix.times.push(header.max_timestamp, rel);
                }
                ix.bytes_since_entry += len as u64;
            }
            res.max_timestamp = res.max_timestamp.max(header.max_timestamp);
            res.next_offset = Some(header.next_offset());
            res.headers.push(header);
            pos += len as u64;
            res.valid_len = pos;
        }
        Ok(res)
    }

    /// After an invalid batch at `bad_pos` whose claimed end is `next`: if a valid batch starts
    /// there, the damage is in the middle of the log.
    fn check_tail(&self, next: u64, end: u64, bad_pos: u64, bad_offset: Option<u64>) -> Result<()> {
        if next + HEADER_LEN as u64 > end {
            return Ok(());
        }
        let mut head = [0u8; HEADER_LEN];
        if self.file.read_exact_at(&mut head, next).is_err() {
            return Ok(());
        }
        if let Ok(h) = BatchHeader::parse(&head) {
            let nl = h.total_len();
            if next + nl as u64 <= end {
                let mut b = vec![0u8; nl];
                if self.file.read_exact_at(&mut b, next).is_ok()
                    && Batch::new(Bytes::from(b)).and_then(|b| b.verify()).is_ok()
                {
                    return Err(LogError::corrupt(
                        "invalid batch followed by valid data (corruption in the middle of the log)",
                    )
                    .at(self.location(bad_pos, bad_offset)));
                }
            }
        }
        Ok(())
    }

    /// Appends whole batches at the end. On failure the file is cut back so no partial batch remains.
    pub fn append(&self, data: &[u8]) -> Result<u64> {
        let pos = self.size.load(Ordering::Acquire);
        if let Err(e) = self.file.write_all_at(data, pos) {
            let _ = self.file.set_len(pos);
            return Err(LogError::Io { context: "append to segment", path: self.path.clone(), source: e });
        }
        self.size.store(pos + data.len() as u64, Ordering::Release);
        self.start_writeback(pos + data.len() as u64);
        Ok(pos)
    }

    /// Asks the kernel to start writing back the bytes appended up to `end` once there are
    /// [`WRITEBACK_BYTES`] of them, as RocksDB's `bytes_per_sync` does: an fsync (a transaction's
    /// commit) then waits for the last of them, not for everything appended since the one
    /// before. A hint only: durability still comes from the fsync.
    fn start_writeback(&self, end: u64) {
        let from = self.written_back.load(Ordering::Relaxed);
        if end.saturating_sub(from) < WRITEBACK_BYTES
            || self.written_back.compare_exchange(from, end, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for as long as `self.file` lives, and
            // sync_file_range touches no memory of this process.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    from as libc::off64_t,
                    (end - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }

    /// Records index entries for a batch appended at `pos`.
    pub fn index_batch(&self, header: &BatchHeader, pos: u64, interval: u64) {
        let rel = (header.base_offset as u64 - self.base_offset) as u32;
        let mut ix = self.indexes.write().unwrap_or_else(|e| e.into_inner());
        if ix.bytes_since_entry >= interval {
            ix.offsets.push(rel, pos as u32);
            ix.bytes_since_entry = 0;
        }
        if header.max_timestamp > ix.times.max_timestamp().unwrap_or(i64::MIN) {
            ix.times.push(header.max_timestamp, rel);
        }
        ix.bytes_since_entry += header.total_len() as u64;
        self.max_timestamp.fetch_max(header.max_timestamp, Ordering::AcqRel);
    }

    /// Byte position of the first batch whose last offset is ≥ `offset`, or `None` past the end.
    pub fn position_of(&self, offset: u64, limit: u64) -> Result<Option<u64>> {
        if offset < self.base_offset {
            return Ok(Some(0).filter(|_| limit > 0));
        }
        let rel = (offset - self.base_offset).min(u32::MAX as u64) as u32;
        let (_, start) = self.indexes.read().unwrap_or_else(|e| e.into_inner()).offsets.lookup(rel);
        self.find_from(start as u64, limit, |h| h.last_offset() as u64 >= offset)
    }

    /// Byte position of the first batch whose max timestamp is ≥ `ts`.
    pub fn position_of_time(&self, ts: i64, limit: u64) -> Result<Option<u64>> {
        let rel = self.indexes.read().unwrap_or_else(|e| e.into_inner()).times.lookup(ts);
        let start = self.position_of(self.base_offset + rel as u64, limit)?.unwrap_or(limit);
        self.find_from(start, limit, |h| h.max_timestamp >= ts)
    }

    fn find_from(&self, mut pos: u64, limit: u64, pred: impl Fn(&BatchHeader) -> bool) -> Result<Option<u64>> {
        let mut head = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= limit {
            self.file.read_exact_at(&mut head, pos).map_err(LogError::io("read segment", &self.path))?;
            let h = BatchHeader::parse(&head).map_err(|e| e.at(self.location(pos, None)))?;
            if pred(&h) {
                return Ok(Some(pos));
            }
            pos += h.total_len() as u64;
        }
        Ok(None)
    }

    /// Reads whole batches from `pos`: at least the first batch (even past `max_bytes`), then as many
    /// whole batches as fit in `max_bytes`, never past `limit`.
    pub fn read(&self, pos: u64, max_bytes: usize, limit: u64) -> Result<Bytes> {
        if pos + LOG_OVERHEAD as u64 > limit {
            return Ok(Bytes::new());
        }
        let mut head = [0u8; LOG_OVERHEAD];
        self.file.read_exact_at(&mut head, pos).map_err(LogError::io("read segment", &self.path))?;
        let first = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        if first < (HEADER_LEN - LOG_OVERHEAD) as i32 || pos + first as u64 + LOG_OVERHEAD as u64 > limit {
            return Err(LogError::corrupt(format!("batch length {first} does not fit the segment"))
                .at(self.location(pos, None)));
        }
        let want = (max_bytes as u64).max(first as u64 + LOG_OVERHEAD as u64).min(limit - pos) as usize;
        let mut buf = vec![0u8; want];
        self.file.read_exact_at(&mut buf, pos).map_err(LogError::io("read segment", &self.path))?;
        // Cut to whole batches.
        let mut end = 0usize;
        while end + LOG_OVERHEAD <= buf.len() {
            let l = i32::from_be_bytes([buf[end + 8], buf[end + 9], buf[end + 10], buf[end + 11]]);
            if l < (HEADER_LEN - LOG_OVERHEAD) as i32 {
                return Err(LogError::corrupt(format!("batch length {l} is shorter than a header"))
                    .at(self.location(pos + end as u64, None)));
            }
            let next = end + l as usize + LOG_OVERHEAD;
            if next > buf.len() {
                break;
            }
            end = next;
        }
        buf.truncate(end);
        Ok(Bytes::from(buf))
    }

    /// Writes the in-memory indexes to their files.
    pub fn write_indexes(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let ix = self.indexes.read().unwrap_or_else(|e| e.into_inner());
        ix.offsets.write(&dir.join(file_name(self.base_offset, "index")))?;
        ix.times.write(&dir.join(file_name(self.base_offset, "timeindex")))?;
        Ok(())
    }

    /// fsyncs the segment's data.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(LogError::io("fsync segment", &self.path))
    }

    /// Removes the segment's files (open handles keep working until dropped).
    pub fn delete_files(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        for ext in ["log", "index", "timeindex"] {
            let p = dir.join(file_name(self.base_offset, ext));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::Io { context: "delete segment", path: p, source: e }),
            }
        }
        Ok(())
    }

    /// Bytes in the segment.
    pub fn len(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
}
