//! Every DSL operator through the test driver, `describe()` snapshots, and `build()` errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garam_core::processor::{DeserializationPolicy, Processor, ProcessorContext, PunctuationType};
use garam_core::record::{Header, StreamRecord};
use garam_core::runtime::AppConfig;
use garam_core::serdes::{I64Serde, JsonSerde, OptionSerde, StringSerde, U64Serde, UnitSerde};
use garam_core::testing::TopologyTestDriver;
use garam_operators::{Consumed, Grouped, Produced, Repartitioned, StreamBuilder};

fn strings() -> Consumed<String, String> {
    Consumed::with(StringSerde, StringSerde)
}

fn out_strings() -> Produced<String, String> {
    Produced::with(StringSerde, StringSerde)
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn filter_filter_not_map_values() {
    let b = StreamBuilder::new();
    let nums = b.stream::<String, i64>("in", Consumed::with(StringSerde, I64Serde));
    nums.filter(|_, v| v % 2 == 0).map_values(|v| v * 10).to("even", Produced::with(StringSerde, I64Serde));
    nums.filter_not(|_, v| v % 2 == 0).to("odd", Produced::with(StringSerde, I64Serde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", StringSerde, I64Serde);
    for i in 0..6 {
        input.pipe(format!("k{i}"), i).unwrap();
    }
    let even = d.output_topic("even", StringSerde, I64Serde).read_values().unwrap();
    let odd = d.output_topic("odd", StringSerde, I64Serde).read_values().unwrap();
    assert_eq!(even, vec![0, 20, 40]);
    assert_eq!(odd, vec![1, 3, 5]);
}

#[test]
fn map_flat_map_and_flat_map_values() {
    let b = StreamBuilder::new();
    let lines = b.stream::<String, String>("lines", strings());
    lines
        .flat_map_values(|line: String| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .to("words", out_strings());
    lines.map(|k, v| (v, k)).to("swapped", out_strings());
    lines
        .flat_map(|k, v: String| {
            v.chars().take(2).map(move |c| (format!("{k}-{c}"), c.to_string())).collect::<Vec<_>>()
        })
        .to("chars", out_strings());
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    d.input_topic("lines", StringSerde, StringSerde).pipe(s("a"), s("hello big world")).unwrap();
    let words = d.output_topic("words", StringSerde, StringSerde).read_key_values().unwrap();
    assert_eq!(words, vec![(s("a"), s("hello")), (s("a"), s("big")), (s("a"), s("world"))]);
    assert_eq!(
        d.output_topic("swapped", StringSerde, StringSerde).read_key_values().unwrap(),
        vec![(s("hello big world"), s("a"))]
    );
    assert_eq!(
        d.output_topic("chars", StringSerde, StringSerde).read_key_values().unwrap(),
        vec![(s("a-h"), s("h")), (s("a-e"), s("e"))]
    );
}

#[test]
fn select_key_peek_for_each_keep_timestamps_and_headers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let counted = Arc::new(Mutex::new(0));
    let counted2 = counted.clone();
    let b = StreamBuilder::new();
    let st = b.stream::<String, String>("in", strings());
    st.select_key(|_, v| v.len() as u64)
        .peek(move |k, _| seen2.lock().unwrap().push(*k))
        .to("by-len", Produced::with(U64Serde, StringSerde));
    st.for_each(move |_, _| *counted2.lock().unwrap() += 1);
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    let mut r = StreamRecord::new(s("x"), s("abc"), 1234);
    r.headers.push(Header::new("trace", "t1"));
    input.pipe_record(r).unwrap();
    input.pipe_at(s("y"), s("hello"), 99).unwrap();
    let out = d.output_topic("by-len", U64Serde, StringSerde).read_records().unwrap();
    assert_eq!(out.iter().map(|r| (r.key, r.timestamp)).collect::<Vec<_>>(), vec![(3, 1234), (5, 99)]);
    assert_eq!(out[0].headers, vec![Header::new("trace", "t1")]);
    assert_eq!(*seen.lock().unwrap(), vec![3, 5]);
    assert_eq!(*counted.lock().unwrap(), 2);
}

#[test]
fn split_routes_to_the_first_matching_branch() {
    let b = StreamBuilder::new();
    let branches = b
        .stream::<String, i64>("in", Consumed::with(StringSerde, I64Serde))
        .split("route-")
        .branch("small", |_, v| *v < 10)
        .branch("medium", |_, v| *v < 100)
        .default_branch("large");
    assert_eq!(branches.keys().cloned().collect::<Vec<_>>(), vec!["route-large", "route-medium", "route-small"]);
    for (name, st) in &branches {
        st.to(name, Produced::with(StringSerde, I64Serde));
    }
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", StringSerde, I64Serde);
    for v in [1, 50, 500, 9, 99, 100] {
        input.pipe(s("k"), v).unwrap();
    }
    let read = |t: &str| d.output_topic(t, StringSerde, I64Serde).read_values().unwrap();
    assert_eq!(read("route-small"), vec![1, 9]);
    assert_eq!(read("route-medium"), vec![50, 99]);
    assert_eq!(read("route-large"), vec![500, 100]);
}

#[test]
fn merge_and_dynamic_topics() {
    let b = StreamBuilder::new();
    let a = b.stream::<String, String>("a", strings());
    let c = b.stream::<String, String>("c", strings());
    a.merge(&c).to_dynamic(|k, _| format!("out-{k}"), out_strings());
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    d.input_topic("a", StringSerde, StringSerde).pipe(s("x"), s("1")).unwrap();
    d.input_topic("c", StringSerde, StringSerde).pipe(s("y"), s("2")).unwrap();
    d.input_topic("a", StringSerde, StringSerde).pipe(s("x"), s("3")).unwrap();
    assert_eq!(d.output_topic("out-x", StringSerde, StringSerde).read_values().unwrap(), vec![s("1"), s("3")]);
    assert_eq!(d.output_topic("out-y", StringSerde, StringSerde).read_values().unwrap(), vec![s("2")]);
}

#[test]
fn repartition_and_group_by_go_through_named_internal_topics() {
    let b = StreamBuilder::new();
    let st = b.stream::<String, String>("clicks", strings());
    let by_page = st.group_by(|_, v| v.clone(), Grouped::named("by-page").with(StringSerde, StringSerde));
    by_page.stream().to("pages", out_strings());
    st.select_key(|k, _| k.to_uppercase())
        .repartition(Repartitioned::named("upper").with(StringSerde, StringSerde).partitions(3))
        .to("upper", out_strings());
    let t = b.build().unwrap();
    assert_eq!(t.subtopologies().len(), 3);
    let names: Vec<String> = t.internal_topics().iter().map(|i| i.full_name("app")).collect();
    assert_eq!(names, vec!["app-by-page-repartition", "app-upper-repartition"]);
    let d = TopologyTestDriver::with_config(t, AppConfig::new("app")).unwrap();
    d.input_topic("clicks", StringSerde, StringSerde).pipe(s("ann"), s("home")).unwrap();
    // Data records only: the upstream task's watermark control records go there too.
    let data: Vec<_> = d
        .written("app-by-page-repartition")
        .into_iter()
        .filter(|r| !garam_core::runtime::watermark::is_control(r))
        .collect();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0].key.as_deref(), Some(&b"home"[..]));
    assert_eq!(
        d.output_topic("pages", StringSerde, StringSerde).read_key_values().unwrap(),
        vec![(s("home"), s("home"))]
    );
    assert_eq!(
        d.output_topic("upper", StringSerde, StringSerde).read_key_values().unwrap(),
        vec![(s("ANN"), s("home"))]
    );
}

/// Counts records per key and emits the counts on stream-time punctuation.
struct CountEvery {
    counts: BTreeMap<String, u64>,
}

impl Processor<String, String, String, u64> for CountEvery {
    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, u64>) -> garam_core::Result<()> {
        ctx.schedule(Duration::from_millis(100), PunctuationType::StreamTime);
        ctx.schedule(Duration::from_secs(60), PunctuationType::WallClockTime);
        Ok(())
    }
    fn process(
        &mut self,
        r: StreamRecord<String, String>,
        _ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> garam_core::Result<()> {
        *self.counts.entry(r.key).or_default() += 1;
        Ok(())
    }
    fn punctuate(
        &mut self,
        kind: PunctuationType,
        ts: i64,
        ctx: &mut ProcessorContext<'_, String, u64>,
    ) -> garam_core::Result<()> {
        let tag = if kind == PunctuationType::StreamTime { "stream" } else { "wall" };
        for (k, n) in std::mem::take(&mut self.counts) {
            ctx.forward(StreamRecord::new(format!("{tag}:{k}"), n, ts));
        }
        Ok(())
    }
}

#[test]
fn process_with_stream_and_wall_clock_punctuation() {
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", strings())
        .process("counter", || CountEvery { counts: BTreeMap::new() })
        .to("counts", Produced::with(StringSerde, U64Serde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    let out = d.output_topic("counts", StringSerde, U64Serde);
    input.pipe_at(s("a"), s("x"), 1000).unwrap(); // stream-time punctuation fires with the first record
    assert_eq!(out.read_key_values().unwrap(), vec![(s("stream:a"), 1)]);
    input.pipe_at(s("a"), s("x"), 1050).unwrap();
    assert!(out.is_empty());
    input.pipe_at(s("b"), s("x"), 1100).unwrap(); // next grid point: 1100
    assert_eq!(out.read_key_values().unwrap(), vec![(s("stream:a"), 1), (s("stream:b"), 1)]);
    input.pipe_at(s("a"), s("x"), 1450).unwrap(); // skips 1200 and 1300; fires at 1450, next 1500
    assert_eq!(out.read_key_values().unwrap(), vec![(s("stream:a"), 1)]);
    input.pipe_at(s("a"), s("x"), 1499).unwrap();
    assert!(out.is_empty());
    input.pipe_at(s("c"), s("x"), 1500).unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(s("stream:a"), 1), (s("stream:c"), 1)]);
    input.pipe_at(s("c"), s("x"), 1501).unwrap();
    d.advance_wall_clock(Duration::from_secs(1)).unwrap(); // schedules the wall clock at 61 s
    assert!(out.is_empty());
    d.advance_wall_clock(Duration::from_secs(60)).unwrap();
    assert_eq!(out.read_key_values().unwrap(), vec![(s("wall:c"), 1)]);
}

#[test]
fn deserialization_policies() {
    let build = || {
        let b = StreamBuilder::new();
        b.stream::<String, u64>("in", Consumed::with(StringSerde, JsonSerde::new()))
            .to("out", Produced::with(StringSerde, JsonSerde::new()));
        b.build().unwrap()
    };
    // fail: the error names topic, partition and offset.
    let d = TopologyTestDriver::new(build()).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    input.pipe(s("k"), s("1")).unwrap();
    let err = input.pipe(s("k"), s("not json")).unwrap_err().to_string();
    assert!(err.contains("in-0 at offset 1") && err.contains("value"), "{err}");

    // log-and-continue: skipped and counted.
    let mut cfg = AppConfig::new("t");
    cfg.deserialization_policy = DeserializationPolicy::LogAndContinue;
    let d = TopologyTestDriver::with_config(build(), cfg).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    input.pipe(s("k"), s("1")).unwrap();
    input.pipe(s("k"), s("oops")).unwrap();
    input.pipe(s("k"), s("2")).unwrap();
    assert_eq!(d.output_topic("out", StringSerde, JsonSerde::<u64>::new()).read_values().unwrap(), vec![1, 2]);
    assert_eq!(d.counters().skipped, 1);

    // dead-letter: the original bytes, with the error and the source as headers.
    let mut cfg = AppConfig::new("t");
    cfg.set("deserialization.error.handler", "dead-letter").unwrap();
    let d = TopologyTestDriver::with_config(build(), cfg).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    input.pipe_raw(Some(b"key-bytes"), Some(b"\xffnot json"), 77, vec![Header::new("h", "v")]).unwrap();
    input.pipe(s("k"), s("3")).unwrap();
    let dlq = d.written("t-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].key.as_deref(), Some(&b"key-bytes"[..]));
    assert_eq!(dlq[0].value.as_deref(), Some(&b"\xffnot json"[..]));
    assert_eq!(dlq[0].timestamp, 77);
    let h: BTreeMap<&str, String> = dlq[0]
        .headers
        .iter()
        .map(|h| (h.key.as_str(), String::from_utf8_lossy(h.value.as_deref().unwrap()).to_string()))
        .collect();
    assert_eq!(h["garam.error.topic"], "in");
    assert_eq!(h["garam.error.partition"], "0");
    assert_eq!(h["garam.error.offset"], "0");
    assert!(h["garam.error.message"].contains("value"));
    assert_eq!(h["h"], "v");
    assert_eq!(d.counters().dead_lettered, 1);
    assert_eq!(d.output_topic("out", StringSerde, JsonSerde::<u64>::new()).read_values().unwrap(), vec![3]);
}

#[test]
fn keyless_and_tombstone_streams() {
    let b = StreamBuilder::new();
    b.stream::<(), Option<String>>("in", Consumed::with(UnitSerde, OptionSerde(StringSerde)))
        .filter(|_, v| v.is_some())
        .to("out", Produced::with(UnitSerde, OptionSerde(StringSerde)));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", UnitSerde, OptionSerde(StringSerde));
    input.pipe((), Some(s("a"))).unwrap();
    input.pipe((), None).unwrap();
    let out = d.written("out");
    assert_eq!(out.len(), 1);
    assert!(out[0].key.is_none(), "unit keys are written as null");
}

#[test]
fn describe_snapshot() {
    let b = StreamBuilder::new();
    let st = b.stream::<String, String>("clicks", strings());
    st.filter(|_, v| !v.is_empty()).to("non-empty", out_strings());
    st.group_by(|_, v| v.clone(), Grouped::named("by-page").with(StringSerde, StringSerde))
        .stream()
        .to("pages", out_strings());
    let t = b.build().unwrap();
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [clicks])
      --> KSTREAM-FILTER-0000000001, KSTREAM-KEY-SELECT-0000000003
    Processor: KSTREAM-FILTER-0000000001 (stores: [])
      --> KSTREAM-SINK-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Sink: KSTREAM-SINK-0000000002 (topic: non-empty)
      <-- KSTREAM-FILTER-0000000001
    Processor: KSTREAM-KEY-SELECT-0000000003 (stores: [])
      --> by-page-repartition-sink
      <-- KSTREAM-SOURCE-0000000000
    Sink: by-page-repartition-sink (topic: by-page-repartition)
      <-- KSTREAM-KEY-SELECT-0000000003

   Sub-topology: 1
    Source: by-page-repartition-source (topics: [by-page-repartition])
      --> KSTREAM-SINK-0000000004
    Sink: KSTREAM-SINK-0000000004 (topic: pages)
      <-- by-page-repartition-source

Internal topics:
    <application.id>-by-page-repartition (written by sub-topology 0, partitions: as many as its input)
";
    assert_eq!(t.describe(), expected);
    let dot = t.to_dot();
    assert!(dot.starts_with("digraph topology {"));
    assert!(dot.contains("\"clicks\" -> \"KSTREAM-SOURCE-0000000000\""));
    assert!(dot.contains("subgraph cluster_1"));
}

#[test]
fn build_errors_name_the_problem() {
    // No source.
    assert!(StreamBuilder::new().build().unwrap_err().to_string().contains("no source"));
    // group_by_key after a key change needs a name.
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", strings()).select_key(|_, v| v.clone()).group_by_key();
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("group_by_key_with"), "{e}");
    // Repartition without serdes after a type change.
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", strings())
        .map(|k, v| (k, v.len() as u64))
        .repartition(Repartitioned::named("lens"));
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("repartition 'lens' needs serdes"), "{e}");
    // The same repartition name twice.
    let b = StreamBuilder::new();
    let st = b.stream::<String, String>("in", strings());
    st.repartition(Repartitioned::named("r")).to("o1", out_strings());
    st.repartition(Repartitioned::named("r")).to("o2", out_strings());
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("'r' is declared twice") || e.contains("named"), "{e}");
    // Co-partitioning: one source reading topics with different partition counts.
    let b = StreamBuilder::new();
    b.stream_from_topics::<String, String>(&["left", "right"], strings()).to("out", out_strings());
    let t = b.build().unwrap();
    let counts = |t: &str| Some(if t == "left" { 4 } else { 6 });
    let e = t.check_partitions("app", &counts).unwrap_err().to_string();
    assert!(e.contains("left (4 partitions)") && e.contains("right (6 partitions)"), "{e}");
    let missing = |_: &str| None;
    assert!(t.check_partitions("app", &missing).unwrap_err().to_string().contains("does not exist"));
    // One topic read by two sources.
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", strings()).to("o1", out_strings());
    b.stream::<String, String>("in", strings()).to("o2", out_strings());
    let e = b.build().unwrap_err().to_string();
    assert!(e.contains("topic 'in' is read by two sources"), "{e}");
}

#[test]
fn subtopologies_are_numbered_writers_first() {
    // The reader of the repartition topic holds the smallest node id; it must still come second.
    let b = StreamBuilder::new();
    let first = b.stream::<String, String>("b", strings());
    let second = b.stream::<String, String>("a", strings());
    second.repartition(Repartitioned::named("r")).merge(&first).to("out", out_strings());
    let t = b.build().unwrap();
    assert_eq!(t.internal_topics()[0].writer, 0);
    assert_eq!(t.source_topics(1, "app"), vec!["app-r-repartition".to_string(), "b".to_string()]);
    let counts = |_: &str| Some(2);
    let internal = t.check_partitions("app", &counts).unwrap();
    assert_eq!(internal["app-r-repartition"], 2);
}

#[test]
fn processors_see_stream_time_per_record_and_extracted_timestamps() {
    struct Times;
    impl Processor<String, String, String, i64> for Times {
        fn process(
            &mut self,
            r: StreamRecord<String, String>,
            ctx: &mut ProcessorContext<'_, String, i64>,
        ) -> garam_core::Result<()> {
            ctx.forward(StreamRecord::new(r.key, ctx.stream_time, r.timestamp));
            Ok(())
        }
    }
    let b = StreamBuilder::new();
    b.stream::<String, String>("in", strings().with_timestamp_extractor(|_, v: &String, _| v.parse().unwrap()))
        .process("times", || Times)
        .to("out", Produced::with(StringSerde, I64Serde));
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    let input = d.input_topic("in", StringSerde, StringSerde);
    input.pipe_at(s("a"), s("500"), 999_999).unwrap();
    input.pipe_at(s("b"), s("300"), 999_999).unwrap();
    input.pipe_at(s("c"), s("700"), 0).unwrap();
    let seen = d.output_topic("out", StringSerde, I64Serde).read_values().unwrap();
    assert_eq!(seen, vec![500, 500, 700], "stream time is the largest extracted timestamp so far");
}

#[test]
fn timestamp_extractor_and_default_serdes() {
    let b = StreamBuilder::new();
    b.stream::<String, String>(
        "in",
        Consumed::default().with_timestamp_extractor(|_k, v: &String, _record_ts| v.parse().unwrap_or(-1)),
    )
    .to("out", Produced::default());
    let d = TopologyTestDriver::new(b.build().unwrap()).unwrap();
    d.input_topic("in", StringSerde, StringSerde).pipe_at(s("k"), s("4242"), 1).unwrap();
    let out = d.output_topic("out", StringSerde, StringSerde).read_records().unwrap();
    assert_eq!(out[0].timestamp, 4242, "event time comes from the value");
}

#[test]
fn group_by_key_without_a_key_change_does_not_repartition() {
    let b = StreamBuilder::new();
    let g = b.stream::<String, String>("in", strings()).filter(|_, _| true).group_by_key();
    assert_eq!(g.name(), None);
    g.stream().to("out", out_strings());
    let t = b.build().unwrap();
    assert!(t.internal_topics().is_empty());
    assert_eq!(t.subtopologies().len(), 1);
}

#[test]
fn describe_snapshot_with_split_and_merge() {
    let b = StreamBuilder::new();
    let a = b.stream::<String, String>("a", Consumed::with(StringSerde, StringSerde).named("read-a"));
    let c = b.stream::<String, String>("c", strings());
    let branches = a.merge(&c).split("s-").branch("x", |k, _| k == "x").default_branch("rest");
    branches["s-x"].to("xs", out_strings().named("write-xs"));
    let t = b.build().unwrap();
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: read-a (topics: [a])
      --> KSTREAM-MERGE-0000000001
    Source: KSTREAM-SOURCE-0000000000 (topics: [c])
      --> KSTREAM-MERGE-0000000001
    Processor: KSTREAM-MERGE-0000000001 (stores: [])
      --> s-split
      <-- read-a, KSTREAM-SOURCE-0000000000
    Processor: s-split (stores: [])
      --> s-x, s-rest
      <-- KSTREAM-MERGE-0000000001
    Processor: s-x (stores: [])
      --> write-xs
      <-- s-split
    Processor: s-rest (stores: [])
      --> none
      <-- s-split
    Sink: write-xs (topic: xs)
      <-- s-x

";
    assert_eq!(t.describe(), expected);
}
