//! Tables: a topic read as a table (tombstones delete), filters that retract rows, and re-grouped
//! tables aggregated with an adder and a subtractor — checked against a model.

use std::collections::BTreeMap;

use garam_core::serdes::{OptionSerde, StringSerde, U64Serde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, Grouped, Materialized, Produced, StreamBuilder};
use proptest::prelude::*;

fn s(x: &str) -> String {
    x.to_string()
}

/// users: user → region. Outputs: the table itself (with tombstones), the users outside "eu"
/// (a filter), and the number of users per region (a re-grouped count).
fn topology() -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    let users = b.table::<String, String>(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("users-by-id").in_memory(),
    );
    users.to_stream_with_deletes().to("users-copy", Produced::with(StringSerde, OptionSerde(StringSerde)));
    users
        .filter(|_, region| region != "eu")
        .to_stream_with_deletes()
        .to("non-eu", Produced::with(StringSerde, OptionSerde(StringSerde)));
    users
        .group_by(
            |_, region| (region.clone(), ()),
            Grouped::named("by-region").with(StringSerde, garam_core::serdes::UnitSerde),
        )
        .count(Materialized::named("users-per-region"))
        .to_stream()
        .to("region-counts", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}

#[test]
fn tables_delete_on_tombstones_retract_filtered_rows_and_regroup() {
    let d = TopologyTestDriver::new(topology()).unwrap();
    let input = d.input_topic("users", StringSerde, OptionSerde(StringSerde));
    input.pipe(s("ann"), Some(s("eu"))).unwrap();
    input.pipe(s("bob"), Some(s("us"))).unwrap();
    input.pipe(s("ann"), Some(s("us"))).unwrap(); // ann moves: eu loses one, us gains one
    input.pipe(s("bob"), None).unwrap(); // bob leaves
    input.pipe(s("cat"), None).unwrap(); // deleting an absent row changes nothing
    let copy = d.output_topic("users-copy", StringSerde, OptionSerde(StringSerde)).read_key_values().unwrap();
    assert_eq!(
        copy,
        vec![(s("ann"), Some(s("eu"))), (s("bob"), Some(s("us"))), (s("ann"), Some(s("us"))), (s("bob"), None)]
    );
    assert_eq!(d.store("users-by-id", StringSerde, StringSerde).unwrap(), vec![(s("ann"), s("us"))]);
    // ann was filtered out while in eu; bob's deletion retracts him.
    let non_eu = d.output_topic("non-eu", StringSerde, OptionSerde(StringSerde)).read_key_values().unwrap();
    assert_eq!(non_eu, vec![(s("bob"), Some(s("us"))), (s("ann"), Some(s("us"))), (s("bob"), None)]);
    let counts = d.output_topic("region-counts", StringSerde, U64Serde).read_key_values().unwrap();
    assert_eq!(
        counts,
        vec![(s("eu"), 1), (s("us"), 1), (s("eu"), 0), (s("us"), 2), (s("us"), 1)],
        "every change: subtract from the old group, add to the new"
    );
    // The aggregate survives losing local state.
    d.restart().unwrap();
    input.pipe(s("dan"), Some(s("eu"))).unwrap();
    assert_eq!(d.store("users-per-region", StringSerde, U64Serde).unwrap(), vec![(s("eu"), 1), (s("us"), 1)]);
}

/// `Table::map_values` maps old and new values alike: its updates and deletes flow downstream
/// mapped, and a re-grouped count over the mapped values moves rows between mapped groups.
#[test]
fn mapped_tables_map_old_and_new_values_alike() {
    let b = StreamBuilder::new();
    let users = b.table::<String, String>(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("users-by-id").in_memory(),
    );
    let upper = users.map_values(|region| region.to_uppercase()).with_value_serde(StringSerde);
    upper.to_stream_with_deletes().to("upper", Produced::with(StringSerde, OptionSerde(StringSerde)));
    upper
        .group_by(
            |_, region| (region.clone(), ()),
            Grouped::named("by-upper").with(StringSerde, garam_core::serdes::UnitSerde),
        )
        .count(Materialized::named("users-per-upper"))
        .to_stream()
        .to("upper-counts", Produced::with(StringSerde, U64Serde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("users", StringSerde, OptionSerde(StringSerde));
    input.pipe(s("ann"), Some(s("eu"))).unwrap();
    input.pipe(s("bob"), Some(s("eu"))).unwrap();
    input.pipe(s("ann"), Some(s("us"))).unwrap();
    input.pipe(s("bob"), None).unwrap();
    let upper = d.output_topic("upper", StringSerde, OptionSerde(StringSerde)).read_key_values().unwrap();
    assert_eq!(
        upper,
        vec![(s("ann"), Some(s("EU"))), (s("bob"), Some(s("EU"))), (s("ann"), Some(s("US"))), (s("bob"), None)]
    );
    let counts = d.output_topic("upper-counts", StringSerde, U64Serde).read_key_values().unwrap();
    assert_eq!(
        counts,
        vec![(s("EU"), 1), (s("EU"), 2), (s("EU"), 1), (s("US"), 1), (s("EU"), 0)],
        "the old mapped value leaves its group, the new one joins its own"
    );
}

/// A re-grouped aggregate's non-zero values: in its store, and the last emitted per key.
fn nonzero_aggregates(
    d: &TopologyTestDriver,
    store: &str,
    topic: &str,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let stored = d.store(store, StringSerde, U64Serde).unwrap().into_iter().filter(|(_, n)| *n > 0).collect();
    // Collected in order: each key keeps the last value emitted for it.
    let mut last: BTreeMap<String, u64> =
        d.output_topic(topic, StringSerde, U64Serde).read_key_values().unwrap().into_iter().collect();
    last.retain(|_, n| *n > 0);
    (stored, last)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// After any sequence of upserts and deletes, the per-region counts equal a recount of the
    /// latest table, and the last emitted count of each region is its count.
    #[test]
    fn regrouped_counts_equal_a_recount_of_the_table(
        updates in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 0..60)
    ) {
        let d = TopologyTestDriver::new(topology()).unwrap();
        let input = d.input_topic("users", StringSerde, OptionSerde(StringSerde));
        let mut table: BTreeMap<String, String> = BTreeMap::new();
        for (user, region) in &updates {
            let (user, region) = (format!("u{user}"), region.map(|r| format!("r{r}")));
            input.pipe(user.clone(), region.clone()).unwrap();
            match region {
                Some(r) => table.insert(user, r),
                None => table.remove(&user),
            };
        }
        let mut recount: BTreeMap<String, u64> = BTreeMap::new();
        for r in table.values() {
            *recount.entry(r.clone()).or_default() += 1;
        }
        let (store, last) = nonzero_aggregates(&d, "users-per-region", "region-counts");
        prop_assert_eq!(&store, &recount);
        prop_assert_eq!(last, recount);
        let expected: Vec<_> = table.into_iter().collect();
        prop_assert_eq!(d.store("users-by-id", StringSerde, StringSerde).unwrap(), expected);
    }
}

#[test]
fn table_table_joins_propagate_every_update_of_either_side() {
    let b = StreamBuilder::new();
    let users = b.table::<String, String>(
        "users",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("u").in_memory(),
    );
    let plans = b.table::<String, String>(
        "plans",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("p").in_memory(),
    );
    let show = |a: Option<&String>, b: Option<&String>| {
        format!("{}/{}", a.map_or("-", String::as_str), b.map_or("-", String::as_str))
    };
    let out = |t: garam_operators::Table<String, String>, topic: &str| {
        t.to_change_stream()
            .map_values(|c| format!("{:?}->{:?}", c.old, c.new))
            .to(topic, Produced::with(StringSerde, StringSerde))
    };
    out(users.join(&plans, move |a, b| show(Some(a), Some(b))), "inner");
    out(users.left_join(&plans, move |a, b| show(Some(a), b)), "left");
    out(users.outer_join(&plans, show), "outer");
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let (u, p) = (
        d.input_topic("users", StringSerde, OptionSerde(StringSerde)),
        d.input_topic("plans", StringSerde, OptionSerde(StringSerde)),
    );
    u.pipe(s("ann"), Some(s("eu"))).unwrap();
    p.pipe(s("ann"), Some(s("pro"))).unwrap();
    p.pipe(s("ann"), Some(s("free"))).unwrap();
    u.pipe(s("ann"), None).unwrap();
    let read = |t: &str| d.output_topic(t, StringSerde, StringSerde).read_values().unwrap();
    assert_eq!(
        read("inner"),
        vec![s("None->Some(\"eu/pro\")"), s("Some(\"eu/pro\")->Some(\"eu/free\")"), s("Some(\"eu/free\")->None"),]
    );
    assert_eq!(
        read("left"),
        vec![
            s("None->Some(\"eu/-\")"),
            s("Some(\"eu/-\")->Some(\"eu/pro\")"),
            s("Some(\"eu/pro\")->Some(\"eu/free\")"),
            s("Some(\"eu/free\")->None"),
        ]
    );
    assert_eq!(
        read("outer"),
        vec![
            s("None->Some(\"eu/-\")"),
            s("Some(\"eu/-\")->Some(\"eu/pro\")"),
            s("Some(\"eu/pro\")->Some(\"eu/free\")"),
            s("Some(\"eu/free\")->Some(\"-/free\")"),
        ]
    );
}

/// accounts: id → "region:balance". Output: the sum of the balances per region, through a
/// re-grouped table's `aggregate` with an adder and a subtractor.
fn sums_topology() -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    b.table::<String, String>(
        "accounts",
        Consumed::with(StringSerde, StringSerde),
        Materialized::named("accounts-by-id").in_memory(),
    )
    .group_by(
        |_, account| {
            let (region, balance) = account.split_once(':').expect("the test writes region:balance");
            (region.to_string(), balance.parse::<u64>().expect("the test writes a number"))
        },
        Grouped::named("by-region").with(StringSerde, U64Serde),
    )
    .aggregate(
        || 0u64,
        |_, balance, sum| sum + balance,
        |_, balance, sum| sum.checked_sub(balance).expect("subtracts only what it added"),
        Materialized::named("balance-per-region").with_value_serde(U64Serde),
    )
    .to_stream()
    .to("region-sums", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// After any sequence of balance changes, moves between regions and deletes, with a restart
    /// from the changelogs somewhere in between, each region's sum equals a recomputation over
    /// the latest table, in the store and as the last value emitted for it.
    #[test]
    fn regrouped_sums_equal_a_recomputation_of_the_table(
        updates in proptest::collection::vec((0u8..6, proptest::option::of((0u8..3, 0u64..1000))), 0..60),
        restart in any::<proptest::sample::Index>(),
    ) {
        let d = TopologyTestDriver::new(sums_topology()).unwrap();
        let input = d.input_topic("accounts", StringSerde, OptionSerde(StringSerde));
        let mut table: BTreeMap<String, (String, u64)> = BTreeMap::new();
        // Before any update, between two, or after the last.
        let restart_at = restart.index(updates.len() + 1);
        for (i, (id, account)) in updates.iter().enumerate() {
            if i == restart_at {
                d.restart().unwrap();
            }
            let id = format!("a{id}");
            let account = account.map(|(r, b)| (format!("r{r}"), b));
            input.pipe(id.clone(), account.as_ref().map(|(r, b)| format!("{r}:{b}"))).unwrap();
            match account {
                Some(a) => table.insert(id, a),
                None => table.remove(&id),
            };
        }
        if restart_at == updates.len() {
            d.restart().unwrap();
        }
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        for (region, balance) in table.values() {
            *sums.entry(region.clone()).or_default() += balance;
        }
        sums.retain(|_, s| *s > 0);
        let (store, last) = nonzero_aggregates(&d, "balance-per-region", "region-sums");
        prop_assert_eq!(&store, &sums);
        prop_assert_eq!(last, sums);
    }
}
