//! Aggregations through the test driver: results, store inspection, and restart from changelogs.

use garam_core::serdes::{StringSerde, U64Serde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, Grouped, Materialized, Produced, StreamBuilder};

fn s(x: &str) -> String {
    x.to_string()
}

fn topology(in_memory: bool) -> garam_core::topology::Topology {
    let b = StreamBuilder::new();
    let clicks = b.stream::<String, String>("clicks", Consumed::with(StringSerde, StringSerde));
    let m = Materialized::named("clicks-per-user").with(StringSerde, U64Serde);
    let m = if in_memory { m.in_memory() } else { m };
    clicks.group_by_key().count(m).to_stream().to("counts", Produced::with(StringSerde, U64Serde));
    clicks
        .map(|user, page| (page, user))
        .group_by_key_with(Grouped::named("by-page").with(StringSerde, StringSerde))
        .aggregate(
            String::new,
            |_page, user, acc: String| if acc.is_empty() { user } else { format!("{acc},{user}") },
            Materialized::named("users-per-page").with(StringSerde, StringSerde),
        )
        .to_stream()
        .to("page-users", Produced::with(StringSerde, StringSerde));
    clicks
        .map_values(|p| p.len() as u64)
        .group_by_key()
        .reduce(|a, b| a.max(b), Materialized::named("longest-page").with(StringSerde, U64Serde))
        .to_stream()
        .to("longest", Produced::with(StringSerde, U64Serde));
    b.build().unwrap()
}

#[test]
fn count_aggregate_reduce_and_stores() {
    for in_memory in [false, true] {
        let d = TopologyTestDriver::new(topology(in_memory)).unwrap();
        let input = d.input_topic("clicks", StringSerde, StringSerde);
        for (u, p) in [("ann", "home"), ("bob", "home"), ("ann", "shop"), ("ann", "home")] {
            input.pipe(s(u), s(p)).unwrap();
        }
        let counts = d.output_topic("counts", StringSerde, U64Serde).read_key_values().unwrap();
        assert_eq!(counts, vec![(s("ann"), 1), (s("bob"), 1), (s("ann"), 2), (s("ann"), 3)]);
        assert_eq!(d.store("clicks-per-user", StringSerde, U64Serde).unwrap(), vec![(s("ann"), 3), (s("bob"), 1)]);
        assert_eq!(
            d.store("users-per-page", StringSerde, StringSerde).unwrap(),
            vec![(s("home"), s("ann,bob,ann")), (s("shop"), s("ann"))]
        );
        assert_eq!(d.store("longest-page", StringSerde, U64Serde).unwrap(), vec![(s("ann"), 4), (s("bob"), 4)]);
        // The changelog holds every update, versioned.
        let changelog = d.written("test-driver-clicks-per-user-changelog");
        assert_eq!(changelog.len(), 4);
        assert_eq!(changelog[3].value.as_deref().unwrap()[0], 1);

        // Lose the local state: rebuilt from the changelog, and counting goes on from there.
        d.restart().unwrap();
        assert_eq!(d.store("clicks-per-user", StringSerde, U64Serde).unwrap(), vec![(s("ann"), 3), (s("bob"), 1)]);
        input.pipe(s("bob"), s("x")).unwrap();
        assert_eq!(d.output_topic("counts", StringSerde, U64Serde).read_key_values().unwrap(), vec![(s("bob"), 2)]);
    }
}

#[test]
fn stateful_operators_need_named_stores_with_serdes() {
    let b = StreamBuilder::new();
    let st = b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde));
    st.group_by_key().count(Materialized::named("c"));
    st.group_by_key().count(Materialized::named("c"));
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("two stores are named 'c'"), "{e}");
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", Consumed::with(StringSerde, StringSerde))
        .map(|k, v| (k, v))
        .group_by_key_with(Grouped::named("g"))
        .count(Materialized::named("c2"));
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("needs serdes"), "{e}");
}
