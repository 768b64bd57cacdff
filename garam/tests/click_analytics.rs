//! The click-analytics application on generated events: all five outputs equal a batch
//! computation of the same windows, sessions and joins over the same events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use garam::analytics::{self, CampaignCtr, CampaignViews, PageCount, PageViews, TopPages, UserSession};
use garam::clicks::{ads, ClickEvent};
use garam::log::Log;
use garam::prelude::*;

mod common;

use common::{events, produce, read, OUT_OF_ORDER_MS};

fn window(t: i64, size: i64) -> (i64, i64) {
    let start = t.div_euclid(size) * size;
    (start, start + size)
}

struct Expected {
    campaign_views: Vec<CampaignViews>,
    page_views: Vec<PageViews>,
    ctr: Vec<CampaignCtr>,
    sessions: Vec<UserSession>,
    top: Vec<TopPages>,
}

/// The same results, computed in one pass over all events.
fn batch(events: &[ClickEvent]) -> Expected {
    let campaign: HashMap<String, String> = ads().into_iter().map(|a| (a.ad_id, a.campaign_id)).collect();
    let mut cv: BTreeMap<(String, (i64, i64)), u64> = BTreeMap::new();
    let mut pv: BTreeMap<(String, (i64, i64)), u64> = BTreeMap::new();
    let mut ctr: BTreeMap<(String, (i64, i64)), (u64, u64)> = BTreeMap::new();
    let mut by_user: BTreeMap<&str, Vec<&ClickEvent>> = BTreeMap::new();
    for e in events {
        let c = campaign[&e.ad_id].clone();
        match e.event_type.as_str() {
            "view" => {
                *cv.entry((c.clone(), window(e.event_time, 10_000))).or_default() += 1;
                *pv.entry((e.page_id.clone(), window(e.event_time, 60_000))).or_default() += 1;
                ctr.entry((c, window(e.event_time, 60_000))).or_default().0 += 1;
            }
            "click" => ctr.entry((c, window(e.event_time, 60_000))).or_default().1 += 1,
            _ => {}
        }
        by_user.entry(&e.user_id).or_default().push(e);
    }
    let gap = analytics::SESSION_GAP.as_millis() as i64;
    let mut sessions = Vec::new();
    for (user, mut es) in by_user {
        es.sort_by_key(|e| e.event_time);
        let mut current: Option<UserSession> = None;
        for e in es {
            match &mut current {
                Some(s) if e.event_time - s.session_end <= gap => {
                    s.session_end = e.event_time;
                    s.events += 1;
                    s.clicks += u64::from(e.event_type == "click");
                }
                _ => {
                    sessions.extend(current.take());
                    current = Some(UserSession {
                        user_id: user.to_string(),
                        session_start: e.event_time,
                        session_end: e.event_time,
                        events: 1,
                        clicks: u64::from(e.event_type == "click"),
                    });
                }
            }
        }
        sessions.extend(current);
    }
    let mut top: BTreeMap<(i64, i64), Vec<PageCount>> = BTreeMap::new();
    for ((page, w), views) in &pv {
        top.entry(*w).or_default().push(PageCount { page_id: page.clone(), views: *views });
    }
    Expected {
        campaign_views: cv
            .into_iter()
            .map(|((campaign_id, (s, e)), views)| CampaignViews { campaign_id, window_start: s, window_end: e, views })
            .collect(),
        page_views: pv
            .into_iter()
            .map(|((page_id, (s, e)), views)| PageViews { page_id, window_start: s, window_end: e, views })
            .collect(),
        ctr: ctr
            .into_iter()
            .map(|((campaign_id, (s, e)), (views, clicks))| CampaignCtr {
                campaign_id,
                window_start: s,
                window_end: e,
                views,
                clicks,
                ctr: (views > 0).then(|| clicks as f64 / views as f64),
            })
            .collect(),
        sessions,
        top: top
            .into_iter()
            .map(|((s, e), mut pages)| {
                pages.sort_by(|a, b| b.views.cmp(&a.views).then_with(|| a.page_id.cmp(&b.page_id)));
                pages.truncate(analytics::TOP_N);
                TopPages { window_start: s, window_end: e, pages }
            })
            .collect(),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn all_five_outputs_equal_a_batch_computation() {
    let events = events(12_000, 1);
    let expected = batch(&events);
    assert!(expected.sessions.len() > 600, "some users should have several sessions: {}", expected.sessions.len());
    assert!(expected.ctr.iter().any(|c| c.ctr.is_none()) || expected.ctr.len() > 100);

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    produce(&log, &events);
    let mut config = AppConfig::new("click-analytics");
    config.num_threads = 2;
    config.set("processing.guarantee", "exactly_once_v2").unwrap();
    config.set("max.out.of.orderness.ms", &OUT_OF_ORDER_MS.to_string()).unwrap();
    config.set("max.poll.records", "700").unwrap();
    let topology = analytics::topology(&Default::default()).unwrap();
    let mut app = App::new(topology, config, Arc::new(log.clone())).unwrap();
    app.run_to_end(Duration::from_millis(300)).unwrap();
    assert_eq!(app.metrics().late_records, 0);

    let campaign_views: Vec<CampaignViews> = read(&log, analytics::CAMPAIGN_VIEWS);
    assert_eq!(sorted(campaign_views), expected.campaign_views);
    let page_views: Vec<PageViews> = read(&log, analytics::PAGE_VIEWS);
    assert_eq!(sorted(page_views), expected.page_views);
    let mut ctr: Vec<CampaignCtr> = read(&log, analytics::CAMPAIGN_CTR);
    ctr.sort_by(|a, b| (&a.campaign_id, a.window_start).cmp(&(&b.campaign_id, b.window_start)));
    assert_eq!(ctr, expected.ctr);
    let sessions: Vec<UserSession> = read(&log, analytics::USER_SESSIONS);
    assert_eq!(sorted(sessions), expected.sessions);
    let mut top: Vec<TopPages> = read(&log, analytics::TOP_PAGES);
    top.sort_by_key(|t| t.window_start);
    assert_eq!(top, expected.top);
}
