//! Progress lines on stderr, only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Prints `label: done/total` at most every 500 ms when stderr is a terminal.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    last: Instant,
    enabled: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: Option<u64>) -> Self {
        Progress { label, total, last: Instant::now(), enabled: std::io::stderr().is_terminal() }
    }

    pub fn update(&mut self, done: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last = Instant::now();
        let mut e = std::io::stderr();
        let _ = match self.total {
            Some(t) => write!(e, "\r{}: {done}/{t} ({:.0}%)   ", self.label, done as f64 * 100.0 / t.max(1) as f64),
            None => write!(e, "\r{}: {done}   ", self.label),
        };
    }

    pub fn finish(&mut self) {
        if self.enabled {
            eprint!("\r\x1b[2K");
        }
    }
}
