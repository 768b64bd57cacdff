//! Watermarks: how far event time has progressed in a task, as Flink defines it.
//!
//! Each input partition of a task tracks the largest event time it has delivered; the task's
//! watermark is the minimum over its inputs minus `max.out.of.orderness.ms`, and it never moves
//! back. Taking the minimum (rather than Kafka Streams' per-task maximum, "stream time") is what
//! makes results independent of how a backlog is interleaved across partitions: a record that is
//! at most `max.out.of.orderness.ms` behind the records before it *in its own partition* is never
//! behind the watermark, however far ahead the other partitions have been read.
//!
//! A repartition topic mixes the records of every upstream task, so its records say nothing
//! about progress. Instead each upstream task publishes its watermark as a control record (header
//! [`WATERMARK_HEADER`]) to every partition of the topics it writes, after the records it
//! produced; the downstream input's watermark is the minimum over all upstream tasks, unknown
//! until each has been heard from.
//!
//! An input that is caught up and has delivered nothing for `watermark.idle.timeout.ms` is idle
//! and left out of the minimum, as Flink does with idle sources; a task whose inputs are all idle
//! tells downstream tasks so, and they leave it out in turn. When input ends (`App::run_to_end`,
//! the test driver's `end_input`), caught-up inputs jump to the end of time so every window closes.

use std::collections::BTreeMap;

use crate::record::ConsumedRecord;

/// The header that marks a watermark control record in a repartition topic.
pub const WATERMARK_HEADER: &str = "garam.watermark";

/// The watermark before any input has been seen.
pub const NO_WATERMARK: i64 = i64::MIN;

/// The watermark after input has ended: every window closes.
pub const END_OF_TIME: i64 = i64::MAX;

const MARK_FORMAT: u8 = 1;
const MARK_LEN: usize = 18;

/// What one upstream task reports in a control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkMark {
    /// How many upstream tasks there are (the upstream sub-topology's partition count).
    pub tasks: u32,
    /// Which one this is (its partition).
    pub task: u32,
    /// Its watermark.
    pub watermark: i64,
    /// True when all of its inputs are idle: leave it out of the minimum.
    pub idle: bool,
}

impl WatermarkMark {
    /// `[format 1][tasks u32][task u32][watermark i64][idle u8]`, big-endian.
    pub fn encode(&self) -> [u8; MARK_LEN] {
        let mut b = [0u8; MARK_LEN];
        b[0] = MARK_FORMAT;
        b[1..5].copy_from_slice(&self.tasks.to_be_bytes());
        b[5..9].copy_from_slice(&self.task.to_be_bytes());
        b[9..17].copy_from_slice(&self.watermark.to_be_bytes());
        b[17] = self.idle as u8;
        b
    }

    /// Decodes a control record's value; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MARK_LEN || b[0] != MARK_FORMAT {
            return None;
        }
        let tasks = u32::from_be_bytes(b[1..5].try_into().ok()?);
        let task = u32::from_be_bytes(b[5..9].try_into().ok()?);
        let watermark = i64::from_be_bytes(b[9..17].try_into().ok()?);
        (task < tasks && b[17] <= 1).then_some(WatermarkMark { tasks, task, watermark, idle: b[17] == 1 })
    }
}

/// True for a watermark control record.
pub fn is_control(r: &ConsumedRecord) -> bool {
    r.headers.first().is_some_and(|h| h.key == WATERMARK_HEADER)
}

/// The watermark settings of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// `max.out.of.orderness.ms`: how far behind its partition's largest event time a record may
    /// be without being behind the watermark (default 0).
    pub max_out_of_orderness_ms: i64,
    /// `watermark.idle.timeout.ms`: a caught-up input with no records for this long is idle
    /// (`None`: inputs never go idle).
    pub idle_timeout_ms: Option<i64>,
    /// `watermark.publish.interval.ms`: how often at most a task sends a changed watermark to the
    /// tasks downstream of its repartition topics (default 20; each send is one control record per
    /// downstream partition). Idleness changes and the end of input go out at once.
    pub publish_interval_ms: i64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig { max_out_of_orderness_ms: 0, idle_timeout_ms: Some(5_000), publish_interval_ms: 20 }
    }
}

#[derive(Debug)]
enum Input {
    /// A topic read directly: progress is the largest event time delivered.
    Direct { max: i64, last_record_ms: Option<i64> },
    /// A repartition topic: progress is what the upstream tasks report.
    Upstream { marks: Vec<Option<(i64, bool)>> },
}

/// What an input contributes to the task's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    At(i64),
    /// Idle, having reached this watermark before it went quiet.
    Idle(i64),
}

/// Tracks the inputs of one task and computes its watermark.
#[derive(Debug)]
pub struct WatermarkTracker {
    inputs: BTreeMap<String, Input>,
    config: WatermarkConfig,
    current: i64,
    idle: bool,
}

impl WatermarkTracker {
    /// A tracker for a task reading `direct` topics and `upstream` repartition topics. An input's
    /// quiet time counts from the first [`advance`](Self::advance).
    pub fn new(
        direct: impl IntoIterator<Item = String>,
        upstream: impl IntoIterator<Item = String>,
        config: WatermarkConfig,
    ) -> Self {
        let mut inputs = BTreeMap::new();
        for t in direct {
            inputs.insert(t, Input::Direct { max: NO_WATERMARK, last_record_ms: None });
        }
        for t in upstream {
            inputs.insert(t, Input::Upstream { marks: Vec::new() });
        }
        WatermarkTracker { inputs, config, current: NO_WATERMARK, idle: false }
    }

    /// The task's watermark.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// True when every input was idle at the last [`advance`](Self::advance).
    pub fn idle(&self) -> bool {
        self.idle
    }

    /// True when `topic` is a repartition topic whose progress comes from control records.
    pub fn is_upstream(&self, topic: &str) -> bool {
        matches!(self.inputs.get(topic), Some(Input::Upstream { .. }))
    }

    /// Records that `topic` delivered records up to event time `max_event_time`.
    pub fn observe(&mut self, topic: &str, max_event_time: i64, now_ms: i64) {
        if let Some(Input::Direct { max, last_record_ms }) = self.inputs.get_mut(topic) {
            *max = (*max).max(max_event_time);
            *last_record_ms = Some(now_ms);
        }
    }

    /// Records an upstream task's control record read from `topic`.
    pub fn mark(&mut self, topic: &str, mark: WatermarkMark) {
        if let Some(Input::Upstream { marks }) = self.inputs.get_mut(topic) {
            if marks.len() != mark.tasks as usize {
                // The first mark, or the upstream topic was repartitioned: start over.
                *marks = vec![None; mark.tasks as usize];
            }
            let slot = &mut marks[mark.task as usize];
            // A restarted upstream task may report less than before; never move back.
            let at = slot.map_or(mark.watermark, |(w, _)| w.max(mark.watermark));
            *slot = Some((at, mark.idle));
        }
    }

    /// Recomputes the watermark; returns it when it moved forward.
    ///
    /// `caught_up(topic)` says whether the consumer has read everything in the task's partition of
    /// `topic`; only a caught-up input can be idle or ended. With `end_of_input`, caught-up direct
    /// inputs are at [`END_OF_TIME`]. The watermark is the minimum over the active inputs; when all
    /// are idle, the largest watermark any of them reached (as Flink's watermark valve does), so a
    /// quiet pipeline still closes the windows its last records completed.
    pub fn advance(&mut self, now_ms: i64, caught_up: &dyn Fn(&str) -> bool, end_of_input: bool) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut idle_max: Option<i64> = None;
        for (topic, input) in &mut self.inputs {
            let p = match input {
                Input::Direct { max, last_record_ms } => {
                    let done = caught_up(topic);
                    let quiet = now_ms - *last_record_ms.get_or_insert(now_ms);
                    let reached = if *max == NO_WATERMARK {
                        NO_WATERMARK
                    } else {
                        max.saturating_sub(self.config.max_out_of_orderness_ms)
                    };
                    if end_of_input && done {
                        Progress::At(END_OF_TIME)
                    } else if done && self.config.idle_timeout_ms.is_some_and(|t| quiet >= t) {
                        Progress::Idle(reached)
                    } else {
                        Progress::At(reached)
                    }
                }
                Input::Upstream { marks } => {
                    if marks.is_empty() || marks.iter().any(Option::is_none) {
                        Progress::At(NO_WATERMARK)
                    } else {
                        let active = marks.iter().flatten().filter(|(_, idle)| !idle).map(|(w, _)| *w).min();
                        match active {
                            Some(w) => Progress::At(w),
                            None => {
                                Progress::Idle(marks.iter().flatten().map(|(w, _)| *w).max().unwrap_or(NO_WATERMARK))
                            }
                        }
                    }
                }
            };
            match p {
                Progress::At(w) => min = Some(min.map_or(w, |m| m.min(w))),
                Progress::Idle(w) => idle_max = Some(idle_max.map_or(w, |m| m.max(w))),
            }
        }
        self.idle = min.is_none() && !self.inputs.is_empty();
        let min = min.or(idle_max);
        match min {
            Some(w) if w > self.current => {
                self.current = w;
                Some(w)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ooo: i64, idle: Option<i64>) -> WatermarkConfig {
        WatermarkConfig { max_out_of_orderness_ms: ooo, idle_timeout_ms: idle, publish_interval_ms: 0 }
    }

    #[test]
    fn the_slowest_input_holds_the_watermark_minus_the_disorder_bound() {
        let mut t = WatermarkTracker::new(["a".to_string(), "b".to_string()], [], cfg(10, None));
        let behind = |_: &str| false;
        t.observe("a", 1_000, 0);
        assert_eq!(t.advance(0, &behind, false), None, "b has delivered nothing yet");
        t.observe("b", 500, 0);
        assert_eq!(t.advance(0, &behind, false), Some(490));
        t.observe("b", 2_000, 0);
        assert_eq!(t.advance(0, &behind, false), Some(990));
        assert_eq!(t.advance(0, &behind, false), None, "no progress, no advance");
    }

    #[test]
    fn only_a_caught_up_quiet_input_goes_idle() {
        let mut t = WatermarkTracker::new(["a".to_string(), "b".to_string()], [], cfg(0, Some(100)));
        assert_eq!(t.advance(0, &|_| false, false), None);
        t.observe("a", 1_000, 0);
        assert_eq!(t.advance(500, &|_| false, false), None, "b may still have a backlog");
        let b_done = |t: &str| t == "b";
        assert_eq!(t.advance(50, &b_done, false), None, "b is not quiet for long enough");
        assert_eq!(t.advance(500, &b_done, false), Some(1_000), "b is idle");
        assert!(!t.idle());
        t.observe("b", 10, 500);
        assert_eq!(t.advance(510, &b_done, false), None, "the watermark never moves back");
        assert_eq!(t.current(), 1_000);
    }

    #[test]
    fn upstream_tasks_must_all_report_and_idle_ones_are_left_out() {
        let mut t = WatermarkTracker::new([], ["r".to_string()], cfg(0, None));
        let m = |task, watermark, idle| WatermarkMark { tasks: 3, task, watermark, idle };
        t.mark("r", m(0, 100, false));
        t.mark("r", m(1, 200, false));
        assert_eq!(t.advance(0, &|_| true, true), None, "task 2 has not reported; end of input does not apply");
        t.mark("r", m(2, 0, true));
        assert_eq!(t.advance(0, &|_| true, false), Some(100));
        t.mark("r", m(0, 50, false));
        assert_eq!(t.advance(0, &|_| true, false), None, "a restarted task's lower mark is ignored");
        t.mark("r", m(0, 300, false));
        assert_eq!(t.advance(0, &|_| true, false), Some(200));
        t.mark("r", m(0, 300, true));
        t.mark("r", m(1, 300, true));
        assert_eq!(t.advance(0, &|_| true, false), Some(300), "all idle: the largest watermark reached");
        assert!(t.idle(), "all upstream tasks idle: this task is idle");
    }

    #[test]
    fn end_of_input_closes_everything_once_caught_up() {
        let mut t = WatermarkTracker::new(["a".to_string()], [], cfg(0, None));
        t.observe("a", 5, 0);
        assert_eq!(t.advance(0, &|_| false, true), Some(5));
        assert_eq!(t.advance(0, &|_| true, true), Some(END_OF_TIME));
    }

    #[test]
    fn marks_round_trip_and_malformed_ones_are_rejected() {
        let m = WatermarkMark { tasks: 8, task: 7, watermark: -3, idle: true };
        assert_eq!(WatermarkMark::decode(&m.encode()), Some(m));
        let mut bad = m.encode();
        bad[5..9].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(WatermarkMark::decode(&bad), None, "task out of range");
        assert_eq!(WatermarkMark::decode(&m.encode()[..10]), None, "truncated");
    }
}
