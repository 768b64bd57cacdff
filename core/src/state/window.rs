//! Window and session stores: key layouts over a key-value [`StoreHandle`], so they inherit its
//! cache, changelog, restore, query view and both backends.
//!
//! A window store keys each value by `(key, window start)`; a session store by `(key, session end,
//! session start)`. Keys are length-prefixed (`u32`, big-endian) so that one key is never a prefix
//! of another's entries, and times are big-endian with the sign bit flipped, so byte order is time
//! order — a key's windows are one contiguous, time-ordered range.

use super::StoreHandle;
use crate::error::{Result, StreamsError};

fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

fn key_prefix(key: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let len = u32::try_from(key.len())
        .map_err(|_| StreamsError::Topology(format!("a store key of {} bytes is too long", key.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    Ok(())
}

/// Splits a stored key into the record key and the `n` times after it.
fn split<const N: usize>(raw: &[u8]) -> Option<(&[u8], [i64; N])> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = raw.get(4..4 + len)?;
    let rest = &raw[4 + len..];
    if rest.len() != 8 * N {
        return None;
    }
    let mut times = [0i64; N];
    for (i, t) in times.iter_mut().enumerate() {
        *t = time_of(&rest[8 * i..8 * i + 8]);
    }
    Some((key, times))
}

fn corrupt(store: &str) -> StreamsError {
    StreamsError::Topology(format!("store {store}: an entry does not have the window/session key layout"))
}

/// The stored key of a window: `(key, window start)`.
pub fn window_key(key: &[u8], start: i64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(key.len() + 12);
    write_window_key(key, start, &mut out)?;
    Ok(out)
}

/// Writes the stored key of a window into `out` (cleared first), reusing its allocation.
pub fn write_window_key(key: &[u8], start: i64, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    key_prefix(key, out)?;
    out.extend_from_slice(&time_bytes(start));
    Ok(())
}

/// Splits a stored window key into the record key and the window start.
pub fn split_window_key(raw: &[u8]) -> Option<(&[u8], i64)> {
    split::<1>(raw).map(|(key, [start])| (key, start))
}

/// A key no window entry can have (its length prefix claims more bytes than follow): windowed
/// operators keep their watermark under it, in the same store and changelog as their windows, so
/// a window emitted on close is never emitted again after a restart.
pub const WINDOW_META_KEY: &[u8] = &[0xff, 0xff, 0xff, 0xff];

/// A window as [`WindowStore::all`] lists it: the record key, the window start, the value.
pub type WindowEntry = (Vec<u8>, i64, Vec<u8>);

/// A window store over a store handle.
pub struct WindowStore<'a> {
    handle: &'a mut StoreHandle,
}

impl<'a> WindowStore<'a> {
    /// Views `handle` as a window store.
    pub fn new(handle: &'a mut StoreHandle) -> Self {
        WindowStore { handle }
    }

    /// The handle underneath (to flush its cache, say).
    pub fn handle(&mut self) -> &mut StoreHandle {
        self.handle
    }

    /// The value of `key`'s window starting at `start`.
    pub fn get(&mut self, key: &[u8], start: i64) -> Result<Option<Vec<u8>>> {
        self.handle.get(&window_key(key, start)?)
    }

    /// Sets `key`'s window starting at `start`.
    pub fn put(&mut self, key: &[u8], start: i64, value: &[u8]) -> Result<()> {
        self.handle.put(&window_key(key, start)?, value)
    }

    /// Removes `key`'s window starting at `start`.
    pub fn delete(&mut self, key: &[u8], start: i64) -> Result<()> {
        self.handle.delete(&window_key(key, start)?)
    }

    /// `key`'s windows with `from <= start <= to`, in start order.
    pub fn fetch(&mut self, key: &[u8], from: i64, to: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        if from > to {
            return Ok(Vec::new());
        }
        let lo = window_key(key, from)?;
        let mut hi = Vec::new();
        key_prefix(key, &mut hi)?;
        match to.checked_add(1) {
            Some(t) => hi.extend_from_slice(&time_bytes(t)),
            None => hi.extend_from_slice(&[0xff; 9]),
        }
        let name = self.handle.name().to_string();
        self.handle
            .range(&lo, &hi)?
            .into_iter()
            .map(|(k, v)| split::<1>(&k).map(|(_, [start])| (start, v)).ok_or_else(|| corrupt(&name)))
            .collect()
    }

    /// Every window: `(key, start, value)`, in key then start order.
    pub fn all(&mut self) -> Result<Vec<WindowEntry>> {
        let name = self.handle.name().to_string();
        self.handle
            .all()?
            .into_iter()
            .filter(|(k, _)| k != WINDOW_META_KEY)
            .map(|(k, v)| split::<1>(&k).map(|(key, [start])| (key.to_vec(), start, v)).ok_or_else(|| corrupt(&name)))
            .collect()
    }

    /// Deletes every window that started before `time` (retention); returns how many.
    pub fn purge_before(&mut self, time: i64) -> Result<usize> {
        let old: Vec<(Vec<u8>, i64)> =
            self.all()?.into_iter().filter(|(_, start, _)| *start < time).map(|(k, s, _)| (k, s)).collect();
        for (k, s) in &old {
            self.delete(k, *s)?;
        }
        Ok(old.len())
    }
}

/// The stored key of a session: `(key, end, start)` — end first, so a key's sessions that end at or
/// after a time are one range.
pub fn session_key(key: &[u8], start: i64, end: i64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(key.len() + 20);
    key_prefix(key, &mut out)?;
    out.extend_from_slice(&time_bytes(end));
    out.extend_from_slice(&time_bytes(start));
    Ok(out)
}

/// Splits a stored session key into the record key, the session start and its end.
pub fn split_session_key(raw: &[u8]) -> Option<(&[u8], i64, i64)> {
    split::<2>(raw).map(|(key, [end, start])| (key, start, end))
}

/// A session: the record key, its first and last event times, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The record key.
    pub key: Vec<u8>,
    /// First event time.
    pub start: i64,
    /// Last event time.
    pub end: i64,
    /// The aggregate.
    pub value: Vec<u8>,
}

/// A session store over a store handle.
pub struct SessionStore<'a> {
    handle: &'a mut StoreHandle,
}

impl<'a> SessionStore<'a> {
    /// Views `handle` as a session store.
    pub fn new(handle: &'a mut StoreHandle) -> Self {
        SessionStore { handle }
    }

    /// The handle underneath (to flush its cache, say).
    pub fn handle(&mut self) -> &mut StoreHandle {
        self.handle
    }

    /// Stores a session.
    pub fn put(&mut self, key: &[u8], start: i64, end: i64, value: &[u8]) -> Result<()> {
        self.handle.put(&session_key(key, start, end)?, value)
    }

    /// Removes a session.
    pub fn remove(&mut self, key: &[u8], start: i64, end: i64) -> Result<()> {
        self.handle.delete(&session_key(key, start, end)?)
    }

    /// `key`'s sessions that end at or after `earliest_end` and start at or before
    /// `latest_start` — the ones a record at `t` with inactivity gap `g` merges with, for
    /// `earliest_end = t - g` and `latest_start = t + g`. In end order.
    pub fn find(&mut self, key: &[u8], earliest_end: i64, latest_start: i64) -> Result<Vec<Session>> {
        let mut lo = Vec::new();
        key_prefix(key, &mut lo)?;
        lo.extend_from_slice(&time_bytes(earliest_end));
        let mut hi = Vec::new();
        key_prefix(key, &mut hi)?;
        hi.extend_from_slice(&[0xff; 17]);
        let name = self.handle.name().to_string();
        let mut out = Vec::new();
        for (k, v) in self.handle.range(&lo, &hi)? {
            let (key, [end, start]) = split::<2>(&k).ok_or_else(|| corrupt(&name))?;
            if start <= latest_start {
                out.push(Session { key: key.to_vec(), start, end, value: v });
            }
        }
        Ok(out)
    }

    /// Every session, in key then end order.
    pub fn all(&mut self) -> Result<Vec<Session>> {
        let name = self.handle.name().to_string();
        self.handle
            .all()?
            .into_iter()
            .filter(|(k, _)| k != WINDOW_META_KEY)
            .map(|(k, v)| {
                split::<2>(&k)
                    .map(|(key, [end, start])| Session { key: key.to_vec(), start, end, value: v })
                    .ok_or_else(|| corrupt(&name))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_time_order_and_keys_never_prefix_each_other() {
        let times = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in times.windows(2) {
            assert!(time_bytes(w[0]) < time_bytes(w[1]));
            assert_eq!(time_of(&time_bytes(w[0])), w[0]);
        }
        // "a" at the latest time still sorts before every window of "ab".
        assert!(window_key(b"a", i64::MAX).unwrap() < window_key(b"ab", i64::MIN).unwrap());
        assert_eq!(split::<1>(&window_key(b"k", -3).unwrap()), Some((&b"k"[..], [-3])));
        assert_eq!(split::<2>(&session_key(b"k", 1, 9).unwrap()), Some((&b"k"[..], [9, 1])));
        assert_eq!(split::<1>(b"\x00\x00\x00\x09short"), None);
    }
}
