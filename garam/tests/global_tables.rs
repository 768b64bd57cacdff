//! Global tables on the embedded log: read in full before any task runs, then followed.

use std::sync::Arc;
use std::time::Duration;

use garam::log::consumer::{ConsumerConfig, OffsetReset};
use garam::log::{Log, TopicConfig};
use garam::prelude::*;

fn send(log: &Log, topic: &str, records: &[(&str, &str)]) {
    let mut p = log.producer(Default::default()).unwrap();
    for (k, v) in records {
        p.send(topic, garam::core::Record::new(Some(k.to_string()), Some(v.to_string()))).unwrap();
    }
    p.flush().unwrap();
}

fn read_values(log: &Log, topic: &str) -> Vec<String> {
    let mut c = log
        .consumer(ConsumerConfig {
            topics: vec![topic.into()],
            auto_offset_reset: OffsetReset::Earliest,
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
                out.push(String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_global_table_is_bootstrapped_before_processing_and_followed_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("ads", 3, TopicConfig::default()).unwrap(); // not co-partitioned with views
    log.create_topic("views", 4, TopicConfig::default()).unwrap();
    log.create_topic("views-by-campaign", 4, TopicConfig::default()).unwrap();
    let ads: Vec<(String, String)> = (0..300).map(|i| (format!("ad{i}"), format!("c{}", i % 7))).collect();
    let ads_ref: Vec<(&str, &str)> = ads.iter().map(|(a, c)| (a.as_str(), c.as_str())).collect();
    send(&log, "ads", &ads_ref);
    // Views are in the log before the app starts: every one must find its ad.
    let views: Vec<(String, String)> = (0..1000).map(|i| (format!("u{i}"), format!("ad{}", i % 300))).collect();
    let views_ref: Vec<(&str, &str)> = views.iter().map(|(u, a)| (u.as_str(), a.as_str())).collect();
    send(&log, "views", &views_ref);

    let b = StreamBuilder::new();
    let campaigns = b.global_table::<String, String>("ads", Consumed::with(StringSerde, StringSerde), "ad-campaigns");
    b.stream::<String, String>("views", Consumed::with(StringSerde, StringSerde))
        .left_join_global(&campaigns, |_u, ad| ad.clone(), |ad, c| format!("{ad}:{}", c.map_or("none", String::as_str)))
        .to("views-by-campaign", Produced::with(StringSerde, StringSerde));
    let mut config = AppConfig::new("global");
    config.num_threads = 2;
    let mut app = App::new(b.build().unwrap(), config, Arc::new(log.clone())).unwrap();
    app.start().unwrap();
    // A new ad while running, then a view of it: the global thread follows the topic.
    send(&log, "ads", &[("ad-new", "c-new")]);
    std::thread::sleep(Duration::from_millis(500));
    send(&log, "views", &[("u-late", "ad-new")]);
    app.run_until_idle(Duration::from_millis(300)).unwrap();

    let got = read_values(&log, "views-by-campaign");
    let mut expected: Vec<String> = (0..1000).map(|i| format!("ad{}:c{}", i % 300, (i % 300) % 7)).collect();
    expected.push("ad-new:c-new".to_string());
    expected.sort();
    assert_eq!(got, expected);
}
