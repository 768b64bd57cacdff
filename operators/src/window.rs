//! Windows over event time: how records are assigned to windows, when windows close, and the
//! `Windowed<K>` keys of windowed results.
//!
//! A window `[start, end)` closes when the watermark reaches `end + grace`; after that, records
//! that would fall into it are late — dropped, counted (`late_records`), and optionally sent to a
//! late topic. Results are emitted on every update or once, on close, as the
//! [`EmitStrategy`] given says; there is no default, because the two differ in what downstream
//! sees (a changelog of partial results, or final results only).

use std::sync::Arc;
use std::time::Duration;

use garam_core::serdes::{Serde, SerdeError, SharedSerde};
use serde::{Deserialize, Serialize};

/// A time window `[start, end)`, in epoch ms. In JSON its fields are `window_start` and
/// `window_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First instant in the window.
    #[serde(rename = "window_start")]
    pub start: i64,
    /// First instant after the window.
    #[serde(rename = "window_end")]
    pub end: i64,
}

/// The key of a windowed result: the record key and its window. As JSON,
/// `{"key": …, "window_start": …, "window_end": …}`.
///
/// ```
/// use garam_operators::window::{Window, Windowed};
/// let w = Windowed { key: "page-1".to_string(), window: Window { start: 0, end: 10_000 } };
/// assert_eq!(
///     serde_json::to_string(&w).unwrap(),
///     r#"{"key":"page-1","window_start":0,"window_end":10000}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Windowed<K> {
    /// The record key.
    pub key: K,
    /// The window.
    #[serde(flatten)]
    pub window: Window,
}

/// Binary serde of `Windowed<K>`: the key's bytes, then start and end as big-endian `i64`s.
pub struct WindowedSerde<K>(pub SharedSerde<K>);

impl<K: 'static> Serde<Windowed<K>> for WindowedSerde<K> {
    fn name(&self) -> &'static str {
        "windowed"
    }

    fn serialize(&self, v: &Windowed<K>, out: &mut Vec<u8>) -> Result<(), SerdeError> {
        self.0.serialize(&v.key, out)?;
        out.extend_from_slice(&v.window.start.to_be_bytes());
        out.extend_from_slice(&v.window.end.to_be_bytes());
        Ok(())
    }

    fn deserialize(&self, b: &[u8]) -> Result<Windowed<K>, SerdeError> {
        let Some(split) = b.len().checked_sub(16) else {
            return Err(SerdeError::Invalid {
                serde: "windowed",
                reason: format!("a windowed key needs at least 16 bytes, got {}", b.len()),
            });
        };
        let time = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            i64::from_be_bytes(a)
        };
        let key = self.0.deserialize(&b[..split])?;
        Ok(Windowed { key, window: Window { start: time(split), end: time(split + 8) } })
    }
}

/// When windowed results go downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitStrategy {
    /// Every update of a window's aggregate, as it happens (Kafka Streams' default).
    OnWindowUpdate,
    /// Once per window, when it closes: final results only, never repeated (also across
    /// restarts: the operator's watermark is stored with its state).
    OnWindowClose,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Fixed-size windows aligned to the epoch: tumbling (`of`), or hopping (`advance_by`).
///
/// ```
/// use std::time::Duration;
/// use garam_operators::window::TimeWindows;
/// // Nexmark q5's shape: 10 s windows every 1 s, accepting records 2 s behind the watermark.
/// let w = TimeWindows::of(Duration::from_secs(10)).advance_by(Duration::from_secs(1)).grace(Duration::from_secs(2));
/// assert_eq!(w.windows_for(10_500).len(), 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindows {
    pub(crate) size: i64,
    pub(crate) advance: i64,
    pub(crate) grace: i64,
}

impl TimeWindows {
    /// Tumbling windows of `size` (at least 1 ms), with zero grace.
    pub fn of(size: Duration) -> Self {
        let size = millis(size).max(1);
        TimeWindows { size, advance: size, grace: 0 }
    }

    /// Hopping windows: a new window starts every `advance` (between 1 ms and the size).
    pub fn advance_by(mut self, advance: Duration) -> Self {
        self.advance = millis(advance).clamp(1, self.size);
        self
    }

    /// Accepts records this far behind the watermark past a window's end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }

    /// The window size, ms.
    pub fn size_ms(&self) -> i64 {
        self.size
    }

    /// The windows containing `t`, earliest first.
    pub fn windows_for(&self, t: i64) -> Vec<Window> {
        let mut out = Vec::new();
        self.windows_into(t, &mut out);
        out
    }

    /// The windows containing `t`, earliest first, into `out` (cleared first).
    pub(crate) fn windows_into(&self, t: i64, out: &mut Vec<Window>) {
        out.clear();
        let last = t - t.rem_euclid(self.advance);
        let mut start = last;
        while start > t.saturating_sub(self.size) {
            out.push(Window { start, end: start.saturating_add(self.size) });
            match start.checked_sub(self.advance) {
                Some(s) => start = s,
                None => break,
            }
        }
        out.reverse();
    }
}

/// Session windows: a key's records closer than `gap` to each other form one session
/// `[first, last]`; a record that bridges two sessions merges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    pub(crate) gap: i64,
    pub(crate) grace: i64,
}

impl SessionWindows {
    /// Sessions that end after `gap` (at least 1 ms) without a record, with zero grace.
    pub fn with_inactivity_gap(gap: Duration) -> Self {
        SessionWindows { gap: millis(gap).max(1), grace: 0 }
    }

    /// Accepts records this far behind the watermark.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }
}

/// Sliding windows (Kafka Streams' `SlidingWindows`): windows of a fixed time difference defined
/// by the records — one ending at each record, one starting just after each — so every set of
/// records at most the difference apart is aggregated once, without the overlap of hopping windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindows {
    pub(crate) difference: i64,
    pub(crate) grace: i64,
}

impl SlidingWindows {
    /// Windows spanning `difference` (inclusive at both ends), with zero grace.
    pub fn with_time_difference(difference: Duration) -> Self {
        SlidingWindows { difference: millis(difference), grace: 0 }
    }

    /// Accepts records this far behind the watermark.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }
}

/// A serde for `Windowed<K>` as the key of a windowed result, from the key's serde.
pub(crate) fn windowed_serde<K: 'static>(key: SharedSerde<K>) -> SharedSerde<Windowed<K>> {
    Arc::new(WindowedSerde(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_hold_each_instant_once() {
        let w = TimeWindows::of(Duration::from_millis(10));
        assert_eq!(w.windows_for(0), vec![Window { start: 0, end: 10 }]);
        assert_eq!(w.windows_for(9), vec![Window { start: 0, end: 10 }]);
        assert_eq!(w.windows_for(10), vec![Window { start: 10, end: 20 }]);
        assert_eq!(w.windows_for(-1), vec![Window { start: -10, end: 0 }]);
    }

    #[test]
    fn hopping_windows_overlap_by_size_over_advance() {
        let w = TimeWindows::of(Duration::from_millis(10)).advance_by(Duration::from_millis(3));
        let starts: Vec<i64> = w.windows_for(10).iter().map(|w| w.start).collect();
        assert_eq!(starts, vec![3, 6, 9]);
        for t in -50..50 {
            for win in w.windows_for(t) {
                assert!(win.start <= t && t < win.end && win.start.rem_euclid(3) == 0);
            }
        }
    }

    #[test]
    fn windowed_keys_round_trip() {
        let serde = WindowedSerde(Arc::new(garam_core::serdes::StringSerde) as SharedSerde<String>);
        let w = Windowed { key: "k".to_string(), window: Window { start: -5, end: 7 } };
        let mut b = Vec::new();
        serde.serialize(&w, &mut b).unwrap();
        assert_eq!(serde.deserialize(&b).unwrap(), w);
        assert!(serde.deserialize(&b[..3]).is_err());
    }
}
