//! Joins: stream-stream windowed (inner, left, outer) against a batch model over random,
//! out-of-order input; stream-table and stream-global-table lookups.

use std::collections::BTreeMap;
use std::time::Duration;

use garam_core::runtime::AppConfig;
use garam_core::serdes::{OptionSerde, StringSerde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, JoinWindows, Materialized, Produced, StreamBuilder, StreamJoined};
use proptest::prelude::*;

fn s(x: &str) -> String {
    x.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inner,
    Left,
    Outer,
}

fn join_topology(kind: Kind, windows: JoinWindows) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    let l = b.stream::<String, String>("left", Consumed::with(StringSerde, StringSerde));
    let r = b.stream::<String, String>("right", Consumed::with(StringSerde, StringSerde));
    let named = StreamJoined::named("lr");
    let fmt = |a: Option<&String>, b: Option<&String>| {
        format!("{}+{}", a.map_or("null", String::as_str), b.map_or("null", String::as_str))
    };
    let out = match kind {
        Kind::Inner => l.join(&r, move |a, b| fmt(Some(a), Some(b)), windows, named),
        Kind::Left => l.left_join(&r, move |a, b| fmt(Some(a), b), windows, named),
        Kind::Outer => l.outer_join(&r, fmt, windows, named),
    };
    out.to("joined", Produced::with(StringSerde, StringSerde));
    b.build().unwrap()
}

fn driver(t: garam_core::topology::Topology, ooo: i64) -> TopologyTestDriver {
    let mut config = AppConfig::new("joins-test");
    config.set("max.out.of.orderness.ms", &ooo.to_string()).unwrap();
    TopologyTestDriver::with_config(t, config).unwrap()
}

/// A 10 ms left join after `k: a@100`, `j: b@100` on the left and `k: x@105` on the right, with
/// `a+x` emitted (and no early null for `j`).
fn left_join_with_k_matched_and_j_waiting() -> TopologyTestDriver {
    let d = driver(join_topology(Kind::Left, JoinWindows::of(Duration::from_millis(10))), 0);
    let (left, right) =
        (d.input_topic("left", StringSerde, StringSerde), d.input_topic("right", StringSerde, StringSerde));
    left.pipe_at(s("k"), s("a"), 100).unwrap();
    left.pipe_at(s("j"), s("b"), 100).unwrap();
    right.pipe_at(s("k"), s("x"), 105).unwrap();
    let out = d.output_topic("joined", StringSerde, StringSerde);
    assert_eq!(out.read_key_values().unwrap(), vec![(s("k"), s("a+x"))], "no early null for j");
    d
}

#[test]
fn left_join_emits_unmatched_records_once_after_the_window_closes() {
    let d = left_join_with_k_matched_and_j_waiting();
    let (left, right) =
        (d.input_topic("left", StringSerde, StringSerde), d.input_topic("right", StringSerde, StringSerde));
    let out = d.output_topic("joined", StringSerde, StringSerde);
    right.pipe_at(s("k"), s("y"), 110).unwrap(); // watermark 100
    left.pipe_at(s("z"), s("c"), 200).unwrap(); // watermark min(200, 110) = 110: j's window [90, 110] closes at 111
    assert_eq!(out.read_key_values().unwrap(), vec![(s("k"), s("a+y"))]);
    right.pipe_at(s("q"), s("w"), 300).unwrap(); // watermark 200
    assert_eq!(out.read_key_values().unwrap(), vec![(s("j"), s("b+null"))]);
    d.end_input().unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(s("z"), s("c+null"))]);
}

/// The join buffer comes back from the changelog: a record buffered before the restart still
/// joins, one that matched is not emitted as unmatched, and one that never matched is, once.
#[test]
fn a_restarted_join_rebuilds_its_buffer_and_matched_flags_from_the_changelog() {
    let d = left_join_with_k_matched_and_j_waiting();
    let (left, right) =
        (d.input_topic("left", StringSerde, StringSerde), d.input_topic("right", StringSerde, StringSerde));
    let out = d.output_topic("joined", StringSerde, StringSerde);
    d.restart().unwrap();
    right.pipe_at(s("k"), s("y"), 108).unwrap();
    right.pipe_at(s("j"), s("z"), 109).unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(s("k"), s("a+y")), (s("j"), s("b+z"))]);
    left.pipe_at(s("n"), s("c"), 110).unwrap();
    d.restart().unwrap();
    d.end_input().unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(s("n"), s("c+null"))], "a, b matched before the restart");
}

/// The model: pairs of non-late records with equal keys and `before`/`after` bounds; unmatched
/// records for the outer sides. Lateness as the operator sees it: the watermark is the smaller of
/// the two inputs' largest times minus the bound, as of the record before.
#[allow(clippy::type_complexity)]
fn model(
    records: &[(bool, String, String, i64)],
    kind: Kind,
    before: i64,
    after: i64,
    ooo: i64,
    grace: i64,
) -> (BTreeMap<(String, String), usize>, u64) {
    let (mut max_l, mut max_r) = (i64::MIN, i64::MIN);
    let mut kept = Vec::new();
    let mut late = 0;
    for (is_left, k, v, t) in records {
        let w = if max_l == i64::MIN || max_r == i64::MIN { i64::MIN } else { max_l.min(max_r) - ooo };
        if t + grace < w {
            late += 1;
        } else {
            kept.push((*is_left, k.clone(), v.clone(), *t));
        }
        if *is_left {
            max_l = max_l.max(*t);
        } else {
            max_r = max_r.max(*t);
        }
    }
    let mut out = BTreeMap::new();
    let (lefts, rights): (Vec<_>, Vec<_>) = kept.iter().partition(|r| r.0);
    let mut right_matched = vec![false; rights.len()];
    for l in &lefts {
        let mut matched = false;
        for (i, r) in rights.iter().enumerate() {
            if l.1 == r.1 && r.3 >= l.3 - before && r.3 <= l.3 + after {
                matched = true;
                right_matched[i] = true;
                *out.entry((l.1.clone(), format!("{}+{}", l.2, r.2))).or_insert(0) += 1;
            }
        }
        if !matched && kind != Kind::Inner {
            *out.entry((l.1.clone(), format!("{}+null", l.2))).or_insert(0) += 1;
        }
    }
    if kind == Kind::Outer {
        for (i, r) in rights.iter().enumerate() {
            if !right_matched[i] {
                *out.entry((r.1.clone(), format!("null+{}", r.2))).or_insert(0) += 1;
            }
        }
    }
    (out, late)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn windowed_joins_equal_a_batch_computation(
        records in prop::collection::vec((any::<bool>(), 0u8..3, 0i64..200), 1..60),
        before in 0i64..20,
        after in 0i64..20,
        ooo in 0i64..30,
        grace in 0i64..10,
        kind in prop_oneof![Just(Kind::Inner), Just(Kind::Left), Just(Kind::Outer)],
    ) {
        let records: Vec<(bool, String, String, i64)> = records
            .into_iter()
            .enumerate()
            .map(|(i, (l, k, t))| (l, format!("k{k}"), format!("{}{i}", if l { "l" } else { "r" }), t))
            .collect();
        let windows = JoinWindows::of(Duration::ZERO)
            .before(Duration::from_millis(before as u64))
            .after(Duration::from_millis(after as u64))
            .grace(Duration::from_millis(grace as u64));
        let d = driver(join_topology(kind, windows), ooo);
        let (left, right) =
            (d.input_topic("left", StringSerde, StringSerde), d.input_topic("right", StringSerde, StringSerde));
        for (is_left, k, v, t) in &records {
            let topic = if *is_left { &left } else { &right };
            topic.pipe_at(k.clone(), v.clone(), *t).unwrap();
        }
        d.end_input().unwrap();
        let mut got = BTreeMap::new();
        for kv in d.output_topic("joined", StringSerde, StringSerde).read_key_values().unwrap() {
            *got.entry(kv).or_insert(0) += 1;
        }
        let (expected, late) = model(&records, kind, before, after, ooo, grace);
        prop_assert_eq!(d.counters().late, late);
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn stream_table_joins_see_the_table_as_of_each_record() {
    let b = StreamBuilder::new();
    let users = b.table::<String, String>(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("users").in_memory(),
    );
    let clicks = b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde));
    clicks
        .join_table(&users, |page, region| format!("{page}@{region}"))
        .to("inner", Produced::with(StringSerde, StringSerde));
    clicks
        .left_join_table(&users, |page, region| format!("{page}@{}", region.map_or("?", String::as_str)))
        .to("left", Produced::with(StringSerde, StringSerde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let (u, c) = (d.input_topic("users", StringSerde, StringSerde), d.input_topic("clicks", StringSerde, StringSerde));
    c.pipe(s("ann"), s("home")).unwrap();
    u.pipe(s("ann"), s("eu")).unwrap();
    c.pipe(s("ann"), s("cart")).unwrap();
    u.pipe(s("ann"), s("us")).unwrap();
    c.pipe(s("ann"), s("pay")).unwrap();
    assert_eq!(
        d.output_topic("inner", StringSerde, StringSerde).read_values().unwrap(),
        vec![s("cart@eu"), s("pay@us")]
    );
    assert_eq!(
        d.output_topic("left", StringSerde, StringSerde).read_values().unwrap(),
        vec![s("home@?"), s("cart@eu"), s("pay@us")]
    );
}

#[test]
fn global_table_joins_look_up_a_key_from_the_value_and_follow_updates() {
    let b = StreamBuilder::new();
    let campaigns = b.global_table::<String, String>("ads", Consumed::with(StringSerde, StringSerde), "ad-campaigns");
    let views = b.stream::<String, String>("views", Consumed::with(StringSerde, StringSerde));
    views
        .join_global(&campaigns, |_user, ad| ad.clone(), |ad, campaign| format!("{ad}:{campaign}"))
        .to("inner", Produced::with(StringSerde, StringSerde));
    views
        .left_join_global(
            &campaigns,
            |_user, ad| ad.clone(),
            |ad, c| format!("{ad}:{}", c.map_or("none", String::as_str)),
        )
        .to("left", Produced::with(StringSerde, StringSerde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let ads = d.input_topic("ads", StringSerde, OptionSerde(StringSerde));
    let v = d.input_topic("views", StringSerde, StringSerde);
    ads.pipe(s("ad1"), Some(s("c1"))).unwrap();
    v.pipe(s("u1"), s("ad1")).unwrap();
    v.pipe(s("u2"), s("ad2")).unwrap();
    ads.pipe(s("ad2"), Some(s("c2"))).unwrap();
    ads.pipe(s("ad1"), None).unwrap();
    v.pipe(s("u1"), s("ad1")).unwrap();
    v.pipe(s("u2"), s("ad2")).unwrap();
    assert_eq!(
        d.output_topic("inner", StringSerde, StringSerde).read_values().unwrap(),
        vec![s("ad1:c1"), s("ad2:c2")]
    );
    assert_eq!(
        d.output_topic("left", StringSerde, StringSerde).read_values().unwrap(),
        vec![s("ad1:c1"), s("ad2:none"), s("ad1:none"), s("ad2:c2")]
    );
}

#[test]
fn joins_repartition_a_stream_whose_key_changed() {
    let b = StreamBuilder::new();
    let users = b.table::<String, String>(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("users").in_memory(),
    );
    // Clicks keyed by page, re-keyed by the user in the value: the join repartitions by it.
    b.stream::<String, String>("clicks-by-page", Consumed::with(StringSerde, StringSerde))
        .select_key(|_page, user| user.clone())
        .join_table(&users, |user, region| format!("{user}@{region}"))
        .to("joined", Produced::with(StringSerde, StringSerde));
    let t = b.build().unwrap();
    assert!(t.describe().contains("users-join-repartition"), "{}", t.describe());
    let d = TopologyTestDriver::new(t).unwrap();
    d.input_topic("users", StringSerde, StringSerde).pipe(s("ann"), s("eu")).unwrap();
    d.input_topic("clicks-by-page", StringSerde, StringSerde).pipe(s("home"), s("ann")).unwrap();
    assert_eq!(d.output_topic("joined", StringSerde, StringSerde).read_values().unwrap(), vec![s("ann@eu")]);
}
