//! A wake-up flag a waiting consumer parks on, set by appends and rebalances.

use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// A one-bit mailbox: `notify` sets it, `wait_until` parks until it is set or the deadline passes.
#[derive(Debug, Default)]
pub struct Signal {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Sets the flag and wakes the waiter.
    pub fn notify(&self) {
        let mut s = self.set.lock().unwrap_or_else(|e| e.into_inner());
        *s = true;
        self.cv.notify_all();
    }

    /// Waits until notified or `deadline`; clears the flag. Returns whether it was notified.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut s = self.set.lock().unwrap_or_else(|e| e.into_inner());
        while !*s {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.cv.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        *s = false;
        true
    }

    /// Clears the flag without waiting.
    pub fn clear(&self) {
        *self.set.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}
