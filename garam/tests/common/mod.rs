//! Helpers shared by the click-analytics tests.
#![allow(dead_code)]

use std::time::Duration;

use garam::analytics;
use garam::clicks::{ads, ClickConfig, ClickEvent, ClickGenerator};
use garam::core::Record;
use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::Log;
use serde::de::DeserializeOwned;

pub const PARTITIONS: u32 = 4;
pub const OUT_OF_ORDER_MS: i64 = 2_000;

/// Few users (so they have several sessions) at `per_second` events per second of event time.
pub fn events(n: usize, per_second: u64) -> Vec<ClickEvent> {
    let config = ClickConfig {
        seed: 11,
        users: 500,
        pages: 40,
        events_per_second: per_second,
        out_of_order_ms: OUT_OF_ORDER_MS,
        ..ClickConfig::default()
    };
    ClickGenerator::new(config).take(n).collect()
}

/// Creates the topics and produces the ad table and `events`.
pub fn produce(log: &Log, events: &[ClickEvent]) {
    analytics::create_topics(log, PARTITIONS).unwrap();
    let mut p = log.producer(Default::default()).unwrap();
    for ad in ads() {
        p.send("ads", Record::new(Some(ad.ad_id.clone()), Some(serde_json::to_vec(&ad).unwrap()))).unwrap();
    }
    for e in events {
        let r = Record::new(Some(e.user_id.clone()), Some(serde_json::to_vec(e).unwrap())).with_timestamp(e.event_time);
        p.send("clicks", r).unwrap();
    }
    p.flush().unwrap();
}

/// The committed values of `topic`, decoded from JSON.
pub fn read<T: DeserializeOwned>(log: &Log, topic: &str) -> Vec<T> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
            read_committed: true,
            ..Default::default()
        })
        .unwrap();
    let mut out = Vec::new();
    loop {
        let polled = c.poll(Duration::from_millis(50)).unwrap();
        if polled.is_empty() {
            break;
        }
        for part in polled {
            for r in part.records() {
                out.push(serde_json::from_slice(&r.unwrap().value.unwrap()).unwrap());
            }
        }
    }
    out
}
