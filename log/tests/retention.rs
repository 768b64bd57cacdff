//! Retention against a model: after a pass, exactly the oldest closed segments that break
//! `retention.ms` or `retention.bytes` are gone, the log start moves to the first kept segment, and
//! every kept record reads back unchanged.

use std::time::Duration;

use garam_log::batch::{BatchBuilder, Compression};
use garam_log::consumer::{ConsumerConfig, OffsetReset};
use garam_log::{Log, LogOptions, TopicConfig};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 30, ..ProptestConfig::default() })]

    #[test]
    fn retention_matches_the_model(
        ages in proptest::collection::vec(0i64..100, 1..60),
        retention_ms in proptest::option::of(1i64..100),
        retention_bytes in proptest::option::of(200u64..3000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open_with(dir.path(), LogOptions { background: false, ..Default::default() }).unwrap();
        let mut c = TopicConfig::default();
        c.set("retention.ms", &retention_ms.unwrap_or(-1).to_string()).unwrap();
        c.set("retention.bytes", &retention_bytes.map_or(-1, |b| b as i64).to_string()).unwrap();
        log.create_topic("t", 1, c).unwrap();
        let p = log.partition("t", 0).unwrap();
        let now = 1_000_000i64;
        // One batch per segment: ages[i] is how old segment i's records are.
        let mut segments = Vec::new(); // (base offset, bytes, max timestamp)
        for (i, age) in ages.iter().enumerate() {
            let mut b = BatchBuilder::new(Compression::None);
            b.push(now - age, Some(format!("k{i}").as_bytes()), Some(b"v"), &[]);
            let mut bytes = b.finish().unwrap().to_vec();
            let len = bytes.len() as u64;
            let info = p.append(&mut bytes).unwrap();
            segments.push((info.base_offset, len, now - age));
            p.roll().unwrap();
        }
        // Model: walk closed segments from the oldest, deleting while either limit is broken.
        let mut total: u64 = segments.iter().map(|s| s.1).sum();
        let mut expect_start = 0;
        for (base, len, max_ts) in &segments {
            let by_time = retention_ms.is_some_and(|ms| now - max_ts > ms);
            let by_size = retention_bytes.is_some_and(|limit| total - len >= limit);
            if !(by_time || by_size) {
                break;
            }
            total -= len;
            expect_start = base + 1;
        }
        log.run_cleaner(now).unwrap();
        prop_assert_eq!(p.offsets().log_start_offset, expect_start);
        let mut c = log.consumer(ConsumerConfig { topics: vec!["t".into()], auto_offset_reset: OffsetReset::Earliest, ..Default::default() }).unwrap();
        let mut got = Vec::new();
        loop {
            let polled = c.poll(Duration::from_millis(5)).unwrap();
            if polled.is_empty() { break; }
            for part in polled { for r in part.records() { got.push(r.unwrap().offset); } }
        }
        let expected: Vec<u64> = (expect_start..segments.len() as u64).collect();
        prop_assert_eq!(got, expected);
    }
}
