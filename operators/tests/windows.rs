//! Windowed aggregation on event time: tumbling and hopping windows, both emit strategies, grace,
//! late records, restarts — checked against a model that computes the same windows in one batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use garam_core::runtime::AppConfig;
use garam_core::serdes::{SharedSerde, StringSerde, U64Serde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{
    Consumed, EmitStrategy, Materialized, Produced, StreamBuilder, TimeWindows, Window, Windowed, WindowedSerde,
};
use proptest::prelude::*;

fn s(x: &str) -> String {
    x.to_string()
}

fn windowed() -> WindowedSerde<String> {
    WindowedSerde(Arc::new(StringSerde) as SharedSerde<String>)
}

fn w(key: &str, start: i64, end: i64) -> Windowed<String> {
    Windowed { key: s(key), window: Window { start, end } }
}

/// Counts "clicks" per key in `windows`, written to "counts"; late records go to "late".
fn counting(windows: TimeWindows, emit: EmitStrategy) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .windowed_by(windows, emit)
        .late_records_to("late")
        .count(Materialized::named("click-counts"))
        .to_stream()
        .to("counts", Produced::with(windowed(), U64Serde));
    b.build().unwrap()
}

fn driver(t: garam_core::topology::Topology, out_of_orderness_ms: u64) -> TopologyTestDriver {
    let mut config = AppConfig::new("windows-test");
    config.set("max.out.of.orderness.ms", &out_of_orderness_ms.to_string()).unwrap();
    TopologyTestDriver::with_config(t, config).unwrap()
}

fn eos_driver(t: garam_core::topology::Topology, exactly_once: bool) -> TopologyTestDriver {
    let mut config = AppConfig::new("windows-test");
    let guarantee = if exactly_once { "exactly_once_v2" } else { "at_least_once" };
    config.set("processing.guarantee", guarantee).unwrap();
    TopologyTestDriver::with_config(t, config).unwrap()
}

#[test]
fn tumbling_windows_emit_once_on_close_and_drop_late_records() {
    let d = driver(counting(TimeWindows::of(Duration::from_millis(10)), EmitStrategy::OnWindowClose), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let counts = d.output_topic("counts", windowed(), U64Serde);
    input.pipe_at(s("a"), s("x"), 1).unwrap();
    input.pipe_at(s("a"), s("x"), 9).unwrap();
    input.pipe_at(s("b"), s("x"), 5).unwrap();
    assert!(counts.is_empty(), "nothing is final before the watermark passes the window's end");
    input.pipe_at(s("a"), s("x"), 10).unwrap(); // watermark 10: [0, 10) closes
    let first = counts.read_records().unwrap();
    let kv: Vec<_> = first.iter().map(|r| (r.key.clone(), r.value)).collect();
    assert_eq!(kv, vec![(w("a", 0, 10), 2), (w("b", 0, 10), 1)]);
    assert!(first.iter().all(|r| r.timestamp == 9), "results are timestamped inside their window");
    input.pipe_at(s("a"), s("x"), 3).unwrap(); // late: [0, 10) is closed
    input.pipe_at(s("a"), s("x"), 25).unwrap(); // closes [10, 20)
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 10, 20), 1)]);
    assert_eq!(d.counters().late, 1);
    let late = d.output_topic("late", StringSerde, StringSerde).read_records().unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!((late[0].key.as_str(), late[0].timestamp), ("a", 3));
    d.end_input().unwrap();
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 20, 30), 1)], "the end of input closes the rest");
}

#[test]
fn grace_keeps_windows_open_and_out_of_orderness_holds_the_watermark_back() {
    let windows = TimeWindows::of(Duration::from_millis(10)).grace(Duration::from_millis(5));
    let d = driver(counting(windows, EmitStrategy::OnWindowClose), 3);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let counts = d.output_topic("counts", windowed(), U64Serde);
    input.pipe_at(s("a"), s("x"), 2).unwrap();
    input.pipe_at(s("a"), s("x"), 17).unwrap(); // watermark 14 < 10 + 5: still open
    input.pipe_at(s("a"), s("x"), 8).unwrap(); // in time for [0, 10)
    assert!(counts.is_empty());
    input.pipe_at(s("a"), s("x"), 18).unwrap(); // watermark 15: [0, 10) closes with 2
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 0, 10), 2)]);
    assert_eq!(d.counters().late, 0);
}

#[test]
fn hopping_windows_emit_every_update_and_purge_closed_windows() {
    let windows = TimeWindows::of(Duration::from_millis(10)).advance_by(Duration::from_millis(5));
    let d = driver(counting(windows, EmitStrategy::OnWindowUpdate), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let counts = d.output_topic("counts", windowed(), U64Serde);
    input.pipe_at(s("a"), s("x"), 7).unwrap(); // [0, 10) and [5, 15)
    input.pipe_at(s("a"), s("x"), 8).unwrap();
    assert_eq!(
        counts.read_key_values().unwrap(),
        vec![(w("a", 0, 10), 1), (w("a", 5, 15), 1), (w("a", 0, 10), 2), (w("a", 5, 15), 2)]
    );
    input.pipe_at(s("a"), s("x"), 30).unwrap(); // closes (and purges) everything before 30
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 25, 35), 1), (w("a", 30, 40), 1)]);
    let stored = d.store_entries("click-counts").unwrap();
    // Two open windows and the operator's watermark.
    assert_eq!(stored.len(), 3, "closed windows are purged: {stored:?}");
}

#[test]
fn a_closed_window_stays_closed_across_a_restart() {
    let d = driver(counting(TimeWindows::of(Duration::from_millis(10)), EmitStrategy::OnWindowClose), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let counts = d.output_topic("counts", windowed(), U64Serde);
    input.pipe_at(s("a"), s("x"), 1).unwrap();
    input.pipe_at(s("a"), s("x"), 12).unwrap();
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 0, 10), 1)]);
    d.restart().unwrap(); // stores rebuilt from the changelog; the task's watermark starts over
    input.pipe_at(s("a"), s("x"), 2).unwrap(); // still late: the operator's watermark was restored
    input.pipe_at(s("a"), s("x"), 25).unwrap();
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 10, 20), 1)], "[0, 10) is never emitted again");
    assert_eq!(d.counters().late, 1);
}

/// A closed window whose delete a store never got (its tombstone compacted away while the store
/// was stopped, on a backend that cannot tell) comes back with the store. Under exactly-once the
/// operator knows from the watermark stored with it that it was emitted, and drops it. Under
/// at-least-once it may not have been (a crash mid-commit stores the watermark without the
/// result), so it is emitted again: a duplicate, never a loss.
#[test]
fn a_closed_window_whose_delete_was_lost_is_dropped_under_exactly_once_and_repeated_otherwise() {
    for exactly_once in [true, false] {
        let windows = counting(TimeWindows::of(Duration::from_millis(10)), EmitStrategy::OnWindowClose);
        let d = eos_driver(windows, exactly_once);
        let input = d.input_topic("clicks", StringSerde, StringSerde);
        let counts = d.output_topic("counts", windowed(), U64Serde);
        input.pipe_at(s("a"), s("x"), 1).unwrap();
        input.pipe_at(s("a"), s("x"), 12).unwrap();
        assert_eq!(counts.read_key_values().unwrap(), vec![(w("a", 0, 10), 1)]);
        d.restart().unwrap(); // closing the task writes its cache to the changelog
        d.lose_tombstones("windows-test-click-counts-changelog");
        d.restart().unwrap();
        input.pipe_at(s("a"), s("x"), 2).unwrap(); // late: the task's watermark starts over, the operator's does not
        input.pipe_at(s("a"), s("x"), 25).unwrap();
        let again = if exactly_once { vec![] } else { vec![(w("a", 0, 10), 1)] };
        let expected = [again, vec![(w("a", 10, 20), 1)]].concat();
        assert_eq!(counts.read_key_values().unwrap(), expected, "exactly-once: {exactly_once}");
        let stored = d.store_entries("click-counts").unwrap();
        assert_eq!(stored.len(), 2, "[20, 30) and the watermark; [0, 10) gone: {stored:?}");
    }
}

/// The same for a session under exactly-once: closed before the stored watermark, dropped when
/// it comes back.
#[test]
fn a_closed_session_whose_delete_was_lost_is_dropped_under_exactly_once() {
    let d = eos_driver(sessions(EmitStrategy::OnWindowClose, 10, 0), true);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let out = d.output_topic("sessions", windowed(), garam_core::serdes::OptionSerde(U64Serde));
    input.pipe_at(s("a"), s("x"), 0).unwrap();
    input.pipe_at(s("b"), s("x"), 30).unwrap(); // closes a's [0, 0]
    assert_eq!(out.read_key_values().unwrap(), vec![(w("a", 0, 0), Some(1))]);
    d.restart().unwrap(); // closing the task writes its cache to the changelog
    d.lose_tombstones("windows-test-sessions-changelog");
    d.restart().unwrap();
    input.pipe_at(s("c"), s("x"), 59).unwrap(); // the task's watermark starts over here,
    input.pipe_at(s("c"), s("x"), 60).unwrap(); // and moves on: b's [30, 30] closes
    assert_eq!(out.read_key_values().unwrap(), vec![(w("b", 30, 30), Some(1))], "a's session is not emitted again");
    let stored = d.store_entries("sessions").unwrap();
    assert_eq!(stored.len(), 2, "c's session and the watermark; a's dropped: {stored:?}");
}

#[test]
fn windowed_results_cross_a_repartition_with_the_watermark() {
    // Re-keyed by page: the window operator runs downstream of a repartition topic, where its
    // watermark comes from the upstream task's control records.
    let b = StreamBuilder::new();
    b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde))
        .group_by(|_user, page| page.clone(), garam_operators::Grouped::named("by-page").with(StringSerde, StringSerde))
        .windowed_by(TimeWindows::of(Duration::from_millis(10)), EmitStrategy::OnWindowClose)
        .count(Materialized::named("page-counts"))
        .to_stream()
        .to("counts", Produced::with(windowed(), U64Serde));
    let d = driver(b.build().unwrap(), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let counts = d.output_topic("counts", windowed(), U64Serde);
    input.pipe_at(s("u1"), s("home"), 1).unwrap();
    input.pipe_at(s("u2"), s("home"), 4).unwrap();
    input.pipe_at(s("u3"), s("cart"), 6).unwrap();
    assert!(counts.is_empty());
    input.pipe_at(s("u1"), s("home"), 11).unwrap();
    assert_eq!(counts.read_key_values().unwrap(), vec![(w("cart", 0, 10), 1), (w("home", 0, 10), 2)]);
    assert!(
        d.written("windows-test-by-page-repartition").iter().any(garam_core::runtime::watermark::is_control),
        "the upstream task publishes its watermark into the repartition topic"
    );
}

/// The model: windows computed in one batch over the records that were not late when they came
/// (a record is late for a window once the watermark — the largest earlier timestamp minus the
/// out-of-orderness bound — has reached the window's end plus grace).
fn model(
    records: &[(String, i64)],
    windows: TimeWindows,
    ooo: i64,
    grace: i64,
) -> (BTreeMap<Windowed<String>, u64>, u64) {
    let mut counts = BTreeMap::new();
    let mut late = 0;
    let mut max = i64::MIN;
    for (k, t) in records {
        let watermark = if max == i64::MIN { i64::MIN } else { max - ooo };
        let open: Vec<Window> = windows.windows_for(*t).into_iter().filter(|w| w.end + grace > watermark).collect();
        if open.is_empty() {
            late += 1;
        }
        for window in open {
            *counts.entry(Windowed { key: k.clone(), window }).or_insert(0) += 1;
        }
        max = max.max(*t);
    }
    (counts, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn windowed_counts_equal_a_batch_computation(
        records in prop::collection::vec((0u8..4, 0i64..200), 1..120),
        size in 1i64..30,
        hops in 1i64..4,
        ooo in 0i64..20,
        grace in 0i64..10,
        on_close in any::<bool>(),
    ) {
        let records: Vec<(String, i64)> = records.into_iter().map(|(k, t)| (format!("k{k}"), t)).collect();
        let advance = (size / hops).max(1);
        let windows = TimeWindows::of(Duration::from_millis(size as u64))
            .advance_by(Duration::from_millis(advance as u64))
            .grace(Duration::from_millis(grace as u64));
        let emit = if on_close { EmitStrategy::OnWindowClose } else { EmitStrategy::OnWindowUpdate };
        let d = driver(counting(windows, emit), ooo as u64);
        let input = d.input_topic("clicks", StringSerde, StringSerde);
        for (k, t) in &records {
            input.pipe_at(k.clone(), s("x"), *t).unwrap();
        }
        d.end_input().unwrap();
        let out = d.output_topic("counts", windowed(), U64Serde).read_key_values().unwrap();
        let (expected, late) = model(&records, windows, ooo, grace);
        prop_assert_eq!(d.counters().late, late);
        let mut last = BTreeMap::new();
        for (k, n) in &out {
            last.insert(k.clone(), *n);
        }
        prop_assert_eq!(&last, &expected);
        if on_close {
            prop_assert_eq!(out.len(), expected.len(), "each window is emitted exactly once");
        } else {
            prop_assert_eq!(out.len() as u64, expected.values().sum::<u64>(), "one update per counted record");
        }
    }
}

fn sessions(emit: EmitStrategy, gap: u64, grace: u64) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .windowed_by_session(
            garam_operators::SessionWindows::with_inactivity_gap(Duration::from_millis(gap))
                .grace(Duration::from_millis(grace)),
            emit,
        )
        .count(Materialized::named("sessions"))
        .to_stream_with_deletes()
        .to("sessions", Produced::with(windowed(), garam_core::serdes::OptionSerde(U64Serde)));
    b.build().unwrap()
}

#[test]
fn a_record_bridging_two_sessions_merges_them() {
    let d = driver(sessions(EmitStrategy::OnWindowUpdate, 10, 100), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let out = d.output_topic("sessions", windowed(), garam_core::serdes::OptionSerde(U64Serde));
    input.pipe_at(s("a"), s("x"), 0).unwrap();
    input.pipe_at(s("a"), s("x"), 20).unwrap(); // 20 > 0 + 10: a second session
    input.pipe_at(s("a"), s("x"), 10).unwrap(); // within 10 of both: one session [0, 20]
    assert_eq!(
        out.read_key_values().unwrap(),
        vec![
            (w("a", 0, 0), Some(1)),
            (w("a", 20, 20), Some(1)),
            (w("a", 0, 0), None),
            (w("a", 20, 20), None),
            (w("a", 0, 20), Some(3)),
        ]
    );
}

#[test]
fn sessions_close_after_the_gap_and_grace() {
    let d = driver(sessions(EmitStrategy::OnWindowClose, 10, 5), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let out = d.output_topic("sessions", windowed(), garam_core::serdes::OptionSerde(U64Serde));
    input.pipe_at(s("a"), s("x"), 0).unwrap();
    input.pipe_at(s("a"), s("x"), 4).unwrap();
    input.pipe_at(s("b"), s("x"), 15).unwrap(); // watermark 15: a's session [0, 4] may still grow until 14 + 5
    assert!(out.is_empty());
    input.pipe_at(s("b"), s("x"), 20).unwrap(); // watermark 20 > 4 + 10 + 5: closes
    assert_eq!(out.read_key_values().unwrap(), vec![(w("a", 0, 4), Some(2))]);
    input.pipe_at(s("a"), s("x"), 14).unwrap(); // 14 + 5 < 20: late (it would have joined a closed session)
    assert_eq!(d.counters().late, 1);
    d.end_input().unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(w("b", 15, 20), Some(2))]);
}

/// Sessions computed in one batch: each key's non-late records, sorted, split where two records
/// are more than `gap` apart.
fn session_model(records: &[(String, i64)], gap: i64, ooo: i64, grace: i64) -> (BTreeMap<Windowed<String>, u64>, u64) {
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut late = 0;
    let mut max = i64::MIN;
    for (k, t) in records {
        let watermark = if max == i64::MIN { i64::MIN } else { max - ooo };
        if t + grace < watermark {
            late += 1;
        } else {
            times.entry(k.clone()).or_default().push(*t);
        }
        max = max.max(*t);
    }
    let mut out = BTreeMap::new();
    for (k, mut ts) in times {
        ts.sort();
        let (mut start, mut end, mut n) = (ts[0], ts[0], 0u64);
        for t in ts {
            if t > end + gap {
                out.insert(Windowed { key: k.clone(), window: Window { start, end } }, n);
                (start, n) = (t, 0);
            }
            end = t;
            n += 1;
        }
        out.insert(Windowed { key: k, window: Window { start, end } }, n);
    }
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sessions_equal_a_batch_computation(
        records in prop::collection::vec((0u8..3, 0i64..300), 1..100),
        gap in 1i64..40,
        ooo in 0i64..30,
        grace in 0i64..10,
    ) {
        let records: Vec<(String, i64)> = records.into_iter().map(|(k, t)| (format!("k{k}"), t)).collect();
        let d = driver(sessions(EmitStrategy::OnWindowClose, gap as u64, grace as u64), ooo as u64);
        let input = d.input_topic("clicks", StringSerde, StringSerde);
        for (k, t) in &records {
            input.pipe_at(k.clone(), s("x"), *t).unwrap();
        }
        d.end_input().unwrap();
        let out = d.output_topic("sessions", windowed(), garam_core::serdes::OptionSerde(U64Serde))
            .read_key_values()
            .unwrap();
        let (expected, late) = session_model(&records, gap, ooo, grace);
        prop_assert_eq!(d.counters().late, late);
        let got: BTreeMap<Windowed<String>, u64> = out.iter().map(|(k, v)| (k.clone(), v.unwrap_or(0))).collect();
        prop_assert_eq!(got.len(), out.len(), "each session is emitted exactly once");
        prop_assert_eq!(got, expected);
    }
}

fn sliding(emit: EmitStrategy, d: u64, grace: u64) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde))
        .group_by_key()
        .windowed_by_sliding(
            garam_operators::SlidingWindows::with_time_difference(Duration::from_millis(d))
                .grace(Duration::from_millis(grace)),
            emit,
        )
        .count(Materialized::named("sliding"))
        .to_stream()
        .to("sliding", Produced::with(windowed(), U64Serde));
    b.build().unwrap()
}

#[test]
fn sliding_windows_end_at_each_record_and_start_after_it() {
    let d = driver(sliding(EmitStrategy::OnWindowClose, 10, 0), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    for t in [0, 5, 20] {
        input.pipe_at(s("a"), s("x"), t).unwrap();
    }
    d.end_input().unwrap();
    // Ending at 0: {0}; at 5: {0, 5}; after 0, [1, 11]: {5}; after 5, [6, 16]: none;
    // ending at 20: {20}; after 20: none. Windows are reported as [start, end + 1).
    assert_eq!(
        d.output_topic("sliding", windowed(), U64Serde).read_key_values().unwrap(),
        vec![(w("a", -10, 1), 1), (w("a", -5, 6), 2), (w("a", 1, 12), 1), (w("a", 10, 21), 1)]
    );
}

fn sliding_model(records: &[(String, i64)], diff: i64, ooo: i64, grace: i64) -> (BTreeMap<Windowed<String>, u64>, u64) {
    let mut times: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut late = 0;
    let mut max = i64::MIN;
    for (k, t) in records {
        let watermark = if max == i64::MIN { i64::MIN } else { max - ooo };
        if t + grace < watermark {
            late += 1;
        } else {
            times.entry(k.clone()).or_default().push(*t);
        }
        max = max.max(*t);
    }
    let mut out = BTreeMap::new();
    for (k, ts) in times {
        let ends: std::collections::BTreeSet<i64> = ts.iter().flat_map(|t| [*t, t + 1 + diff]).collect();
        for e in ends {
            let n = ts.iter().filter(|t| **t >= e - diff && **t <= e).count() as u64;
            if n > 0 {
                out.insert(Windowed { key: k.clone(), window: Window { start: e - diff, end: e + 1 } }, n);
            }
        }
    }
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sliding_windows_equal_a_batch_computation(
        records in prop::collection::vec((0u8..3, 0i64..200), 1..80),
        diff in 0i64..30,
        ooo in 0i64..20,
        grace in 0i64..10,
        on_close in any::<bool>(),
    ) {
        let records: Vec<(String, i64)> = records.into_iter().map(|(k, t)| (format!("k{k}"), t)).collect();
        let emit = if on_close { EmitStrategy::OnWindowClose } else { EmitStrategy::OnWindowUpdate };
        let d = driver(sliding(emit, diff as u64, grace as u64), ooo as u64);
        let input = d.input_topic("clicks", StringSerde, StringSerde);
        for (k, t) in &records {
            input.pipe_at(k.clone(), s("x"), *t).unwrap();
        }
        d.end_input().unwrap();
        let out = d.output_topic("sliding", windowed(), U64Serde).read_key_values().unwrap();
        let (expected, late) = sliding_model(&records, diff, ooo, grace);
        prop_assert_eq!(d.counters().late, late);
        let last: BTreeMap<Windowed<String>, u64> = out.iter().cloned().collect();
        if on_close {
            prop_assert_eq!(last.len(), out.len(), "each window is emitted exactly once");
        }
        prop_assert_eq!(last, expected);
    }
}

#[test]
fn sliding_windows_survive_a_restart_without_repeats() {
    let d = driver(sliding(EmitStrategy::OnWindowClose, 10, 0), 0);
    let input = d.input_topic("clicks", StringSerde, StringSerde);
    let out = d.output_topic("sliding", windowed(), U64Serde);
    input.pipe_at(s("a"), s("x"), 0).unwrap();
    input.pipe_at(s("a"), s("x"), 5).unwrap(); // closes the window ending at 0
    assert_eq!(out.read_key_values().unwrap(), vec![(w("a", -10, 1), 1)]);
    d.restart().unwrap(); // the buffer and the pending windows come back from the changelog
    input.pipe_at(s("a"), s("x"), 20).unwrap();
    d.end_input().unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(w("a", -5, 6), 2), (w("a", 1, 12), 1), (w("a", 10, 21), 1)]);
}
