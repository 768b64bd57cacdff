//! Real-time click analytics: the topology of `examples/click_analytics.rs`, `garam demo clicks`
//! and `garam bench clicks`, and the record types of its outputs — a contract other programs
//! read.
//!
//! Inputs: `clicks` (key `user_id`, value a [`ClickEvent`](crate::clicks::ClickEvent) as JSON,
//! event time `event_time`) and `ads` (key `ad_id`, value `{"ad_id","campaign_id"}`), read as a
//! global table. Every window has zero grace beyond the watermark's out-of-orderness and emits
//! once, on close.
//!
//! | topic | key | value |
//! |---|---|---|
//! | `campaign-views-10s` | campaign_id | [`CampaignViews`]: views per campaign per 10 s (the Yahoo Streaming Benchmark query) |
//! | `page-views-1m` | page_id | [`PageViews`]: views per page per minute |
//! | `campaign-ctr-1m` | campaign_id | [`CampaignCtr`]: views, clicks and clicks / views per campaign per minute |
//! | `user-sessions` | user_id | [`UserSession`]: events and clicks per session (30 min inactivity gap) |
//! | `top-pages-1m` | window_start | [`TopPages`]: the 10 most viewed pages per minute |
//!
//! ```
//! let topology = garam::analytics::topology(&garam::analytics::AnalyticsOptions::default()).unwrap();
//! assert!(topology.describe().contains("campaign-views-10s"));
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use garam_connectors::{hourly_partition, FileSink, FileSinkExt, RollPolicy};

use garam_core::backend::Backend;
use garam_core::serdes::{I64Serde, JsonSerde, StringSerde, U64Serde};
use garam_core::topology::Topology;
use garam_operators::{
    Consumed, EmitStrategy, Grouped, Materialized, Produced, SessionWindows, Stream, StreamBuilder, TimeWindows,
    Windowed,
};
use serde::{Deserialize, Serialize};

use crate::clicks::Ad;

mod live;
mod run;

pub use live::LiveView;
pub use run::{run, RunOptions};

/// Views per campaign per 10 s tumbling window.
pub const CAMPAIGN_VIEWS: &str = "campaign-views-10s";
/// Views per page per 1 min tumbling window.
pub const PAGE_VIEWS: &str = "page-views-1m";
/// Views, clicks and click-through rate per campaign per 1 min window.
pub const CAMPAIGN_CTR: &str = "campaign-ctr-1m";
/// Per-user sessions (30 min inactivity gap).
pub const USER_SESSIONS: &str = "user-sessions";
/// The 10 most viewed pages per 1 min window.
pub const TOP_PAGES: &str = "top-pages-1m";
/// The five output topics.
pub const OUTPUTS: [&str; 5] = [CAMPAIGN_VIEWS, PAGE_VIEWS, CAMPAIGN_CTR, USER_SESSIONS, TOP_PAGES];
/// The click topic.
pub const CLICKS: &str = "clicks";
/// The ad → campaign topic.
pub const ADS: &str = "ads";

/// The session inactivity gap.
pub const SESSION_GAP: Duration = Duration::from_secs(30 * 60);
/// Pages in a `top-pages-1m` result.
pub const TOP_N: usize = 10;

/// What the application does with the parts a caller may vary.
#[derive(Debug, Clone)]
pub struct AnalyticsOptions {
    /// Which outputs to compute (all by default; `garam bench clicks` runs only
    /// [`CAMPAIGN_VIEWS`]).
    pub outputs: Vec<&'static str>,
    /// Also write `campaign-views-10s` and `page-views-1m` as Parquet under
    /// `<dir>/<output>/dt=YYYY-MM-DD/hr=HH/` (by window start), committed with the app.
    pub parquet_dir: Option<PathBuf>,
    /// When Parquet files roll.
    pub roll: RollPolicy,
}

impl Default for AnalyticsOptions {
    fn default() -> Self {
        AnalyticsOptions { outputs: OUTPUTS.to_vec(), parquet_dir: None, roll: RollPolicy::default() }
    }
}

/// The Parquet schema of `campaign-views-10s` (`key` = `campaign_id`) or `page-views-1m`
/// (`key` = `page_id`).
pub fn views_schema(key: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(key, DataType::Utf8, false),
        Field::new("window_start", DataType::Int64, false),
        Field::new("window_end", DataType::Int64, false),
        Field::new("views", DataType::UInt64, false),
    ]))
}

/// `view`, `click` or `purchase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The ad was shown.
    View,
    /// The ad was clicked.
    Click,
    /// The user bought.
    Purchase,
}

/// The fields of a click event the application reads (the others are skipped while decoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// The page the ad was on.
    pub page_id: String,
    /// The ad.
    pub ad_id: String,
    /// What happened.
    pub event_type: EventType,
    /// Event time, epoch ms.
    pub event_time: i64,
}

/// `campaign-views-10s`: `{"campaign_id","window_start","window_end","views"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CampaignViews {
    /// The campaign.
    pub campaign_id: String,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Views of the campaign's ads in the window.
    pub views: u64,
}

/// `page-views-1m`: `{"page_id","window_start","window_end","views"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageViews {
    /// The page.
    pub page_id: String,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Views of ads on the page in the window.
    pub views: u64,
}

/// `campaign-ctr-1m`: `{"campaign_id","window_start","window_end","views","clicks","ctr"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignCtr {
    /// The campaign.
    pub campaign_id: String,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// Views in the window.
    pub views: u64,
    /// Clicks in the window.
    pub clicks: u64,
    /// `clicks / views`; `null` when there were no views.
    pub ctr: Option<f64>,
}

/// `user-sessions`: `{"user_id","session_start","session_end","events","clicks"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserSession {
    /// The user.
    pub user_id: String,
    /// Time of the session's first event, epoch ms.
    pub session_start: i64,
    /// Time of the session's last event, epoch ms.
    pub session_end: i64,
    /// Events in the session.
    pub events: u64,
    /// Clicks in the session.
    pub clicks: u64,
}

/// One entry of [`TopPages`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageCount {
    /// The page.
    pub page_id: String,
    /// Its views in the window.
    pub views: u64,
}

/// `top-pages-1m`: `{"window_start","window_end","pages":[{"page_id","views"}…]}`, pages ordered by
/// views descending, then page_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopPages {
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// At most [`TOP_N`] pages.
    pub pages: Vec<PageCount>,
}

/// Views and clicks of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ViewsClicks {
    views: u64,
    clicks: u64,
}

impl ViewsClicks {
    fn add(&mut self, kind: EventType) {
        match kind {
            EventType::View => self.views += 1,
            EventType::Click => self.clicks += 1,
            EventType::Purchase => {}
        }
    }
}

/// Adds `entry` to a top list kept in order (views descending, then page_id), at most [`TOP_N`].
pub fn insert_top(pages: &mut Vec<PageCount>, entry: PageCount) {
    let at = pages.partition_point(|p| {
        (std::cmp::Reverse(p.views), &p.page_id) < (std::cmp::Reverse(entry.views), &entry.page_id)
    });
    if at < TOP_N {
        pages.insert(at, entry);
        pages.truncate(TOP_N);
    }
}

/// The click stream, timestamped by `event_time`.
pub fn clicks(b: &StreamBuilder) -> Stream<String, Click> {
    b.stream::<String, Click>(
        CLICKS,
        Consumed::with(StringSerde, JsonSerde::<Click>::new()).with_timestamp_extractor(|_, c, _| c.event_time),
    )
}

/// The application's topology: the outputs named in `options`.
pub fn topology(options: &AnalyticsOptions) -> garam_core::Result<Topology> {
    let b = StreamBuilder::new();
    let wants = |o: &str| options.outputs.contains(&o);
    let clicks = clicks(&b);

    if wants(CAMPAIGN_VIEWS) || wants(CAMPAIGN_CTR) {
        let ads = b.global_table::<String, Ad>(ADS, Consumed::with(StringSerde, JsonSerde::<Ad>::new()), "ads");
        // Views and clicks by campaign, folded per batch and 10 s window before the one
        // repartition topic both outputs read (one record per campaign and window per batch
        // instead of one per event).
        let by_campaign = clicks
            .filter(|_, c| c.event_type != EventType::Purchase)
            .join_global(&ads, |_, c| c.ad_id.clone(), |c, ad| (ad.campaign_id.clone(), c.event_type))
            .pre_aggregate(
                Duration::from_secs(10),
                |_user, campaign_event| campaign_event,
                ViewsClicks::default,
                |mut a, kind| {
                    a.add(kind);
                    a
                },
            )
            .group_by_key_with(Grouped::named("campaign-events").with(StringSerde, JsonSerde::<ViewsClicks>::new()));
        if wants(CAMPAIGN_VIEWS) {
            let views = by_campaign
                .stream()
                .filter(|_, partial| partial.views > 0)
                .group_by_key()
                .windowed_by(TimeWindows::of(Duration::from_secs(10)), EmitStrategy::OnWindowClose)
                .aggregate(
                    || 0u64,
                    |_, partial, views| views + partial.views,
                    Materialized::named("campaign-views-10s").with(StringSerde, U64Serde),
                )
                .to_stream()
                .map(|w, views| {
                    let out = CampaignViews {
                        campaign_id: w.key.clone(),
                        window_start: w.window.start,
                        window_end: w.window.end,
                        views,
                    };
                    (w.key, out)
                });
            views.to(CAMPAIGN_VIEWS, Produced::with(StringSerde, JsonSerde::<CampaignViews>::new()));
            if let Some(dir) = &options.parquet_dir {
                let sink = FileSink::parquet(dir.join(CAMPAIGN_VIEWS), views_schema("campaign_id"))
                    .partition_by(|v: &CampaignViews| hourly_partition(v.window_start))
                    .roll(options.roll);
                views.to_files("campaign-views-10s-parquet", sink);
            }
        }
        if wants(CAMPAIGN_CTR) {
            by_campaign
                .windowed_by(TimeWindows::of(Duration::from_secs(60)), EmitStrategy::OnWindowClose)
                .aggregate(
                    ViewsClicks::default,
                    |_, partial, a: ViewsClicks| ViewsClicks {
                        views: a.views + partial.views,
                        clicks: a.clicks + partial.clicks,
                    },
                    Materialized::named("campaign-ctr-1m").with(StringSerde, JsonSerde::<ViewsClicks>::new()),
                )
                .to_stream()
                .map(|w, a| {
                    let out = CampaignCtr {
                        campaign_id: w.key.clone(),
                        window_start: w.window.start,
                        window_end: w.window.end,
                        views: a.views,
                        clicks: a.clicks,
                        ctr: (a.views > 0).then(|| a.clicks as f64 / a.views as f64),
                    };
                    (w.key, out)
                })
                .to(CAMPAIGN_CTR, Produced::with(StringSerde, JsonSerde::<CampaignCtr>::new()));
        }
    }

    if wants(PAGE_VIEWS) || wants(TOP_PAGES) {
        let page_views = clicks
            .filter(|_, c| c.event_type == EventType::View)
            .pre_aggregate(Duration::from_secs(60), |_, c| (c.page_id, ()), || 0u64, |n, ()| n + 1)
            .group_by_key_with(Grouped::named("page-events").with(StringSerde, U64Serde))
            .windowed_by(TimeWindows::of(Duration::from_secs(60)), EmitStrategy::OnWindowClose)
            .aggregate(
                || 0u64,
                |_, partial, views| views + partial,
                Materialized::named("page-views-1m").with(StringSerde, U64Serde),
            )
            .to_stream();
        if wants(PAGE_VIEWS) {
            let views = page_views.map(|w: Windowed<String>, views| {
                let out =
                    PageViews { page_id: w.key.clone(), window_start: w.window.start, window_end: w.window.end, views };
                (w.key, out)
            });
            views.to(PAGE_VIEWS, Produced::with(StringSerde, JsonSerde::<PageViews>::new()));
            if let Some(dir) = &options.parquet_dir {
                let sink = FileSink::parquet(dir.join(PAGE_VIEWS), views_schema("page_id"))
                    .partition_by(|v: &PageViews| hourly_partition(v.window_start))
                    .roll(options.roll);
                views.to_files("page-views-1m-parquet", sink);
            }
        }
        if wants(TOP_PAGES) {
            // Each page's final count of a window is timestamped inside that window, so the same
            // minute windows, keyed by their start, gather every page of one window.
            page_views
                .map(|w: Windowed<String>, views| (w.window.start, PageCount { page_id: w.key, views }))
                .group_by_key_with(Grouped::named("top-pages").with(I64Serde, JsonSerde::<PageCount>::new()))
                .windowed_by(TimeWindows::of(Duration::from_secs(60)), EmitStrategy::OnWindowClose)
                .aggregate(
                    Vec::new,
                    |_, entry, mut top: Vec<PageCount>| {
                        insert_top(&mut top, entry);
                        top
                    },
                    Materialized::named("top-pages-1m").with(I64Serde, JsonSerde::<Vec<PageCount>>::new()),
                )
                .to_stream()
                .map(|w, pages| {
                    let out = TopPages { window_start: w.window.start, window_end: w.window.end, pages };
                    (w.window.start.to_string(), out)
                })
                .to(TOP_PAGES, Produced::with(StringSerde, JsonSerde::<TopPages>::new()));
        }
    }

    if wants(USER_SESSIONS) {
        clicks
            .group_by_key()
            .windowed_by_session(SessionWindows::with_inactivity_gap(SESSION_GAP), EmitStrategy::OnWindowClose)
            .aggregate(
                ViewsClicks::default,
                |_, c, mut a: ViewsClicks| {
                    // `views` counts every event here.
                    a.views += 1;
                    a.clicks += u64::from(c.event_type == EventType::Click);
                    a
                },
                |_, a, b| ViewsClicks { views: a.views + b.views, clicks: a.clicks + b.clicks },
                Materialized::named("user-sessions").with(StringSerde, JsonSerde::<ViewsClicks>::new()),
            )
            .to_stream()
            .map(|w, a| {
                let out = UserSession {
                    user_id: w.key.clone(),
                    session_start: w.window.start,
                    session_end: w.window.end,
                    events: a.views,
                    clicks: a.clicks,
                };
                (w.key, out)
            })
            .to(USER_SESSIONS, Produced::with(StringSerde, JsonSerde::<UserSession>::new()));
    }
    b.build()
}

/// Creates the input and output topics that do not exist: `clicks` and the outputs with
/// `partitions` partitions, `ads` (compacted: it is a table) with one.
pub fn create_topics(backend: &dyn Backend, partitions: u32) -> garam_core::Result<()> {
    let none = BTreeMap::new();
    backend.ensure_topic(CLICKS, partitions, &none)?;
    let compacted = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    backend.ensure_topic(ADS, 1, &compacted)?;
    for t in OUTPUTS {
        backend.ensure_topic(t, partitions, &none)?;
    }
    Ok(())
}
