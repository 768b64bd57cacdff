//! Synthetic click events shaped like the Yahoo Streaming Benchmark's, and its ad → campaign
//! table: the input of the click-analytics application, its tests and `garam bench clicks`.
//!
//! Deterministic for a seed. Users and pages are Zipf-skewed (a few hot ones), event types are
//! mostly views, and event times rise with the event index at a given event-time rate, each up to
//! `out_of_order_ms` early — so in any subsequence (a partition, say) no event is more than that
//! behind an earlier one.
//!
//! ```
//! use garam::clicks::{ClickGenerator, ClickConfig};
//! let a: Vec<_> = ClickGenerator::new(ClickConfig { seed: 7, ..ClickConfig::default() }).take(100).collect();
//! let b: Vec<_> = ClickGenerator::new(ClickConfig { seed: 7, ..ClickConfig::default() }).take(100).collect();
//! assert_eq!(a, b);
//! assert!(a.iter().all(|e| ["view", "click", "purchase"].contains(&e.event_type.as_str())));
//! ```

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One event, as JSON: `{"user_id","page_id","ad_id","ad_type","event_type","event_time","ip_address"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickEvent {
    /// The user (the record key).
    pub user_id: String,
    /// The page the ad was on.
    pub page_id: String,
    /// The ad.
    pub ad_id: String,
    /// The ad's format.
    pub ad_type: String,
    /// `view`, `click` or `purchase`.
    pub event_type: String,
    /// Event time, epoch ms.
    pub event_time: i64,
    /// The user's address.
    pub ip_address: String,
}

/// An ad and its campaign, as JSON: `{"ad_id","campaign_id"}`, keyed by `ad_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ad {
    /// The ad.
    pub ad_id: String,
    /// Its campaign.
    pub campaign_id: String,
}

/// The ad formats of the Yahoo Streaming Benchmark.
pub const AD_TYPES: [&str; 5] = ["banner", "modal", "sponsored-search", "mail", "mobile"];

/// Ads in the ad table.
pub const ADS: u32 = 1000;
/// Campaigns the ads belong to.
pub const CAMPAIGNS: u32 = 100;

/// The ad table: `ADS` ads, ten per campaign.
pub fn ads() -> Vec<Ad> {
    ads_with(IdFormat::Short)
}

/// The ad table with ad ids in `format` (matching events generated with that format).
pub fn ads_with(format: IdFormat) -> Vec<Ad> {
    (0..ADS).map(|i| Ad { ad_id: format.id("ad", i), campaign_id: format!("campaign-{}", i % CAMPAIGNS) }).collect()
}

/// How users, pages and ads are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdFormat {
    /// `user-17`, `page-3`, `ad-295`: events of ~155 bytes.
    #[default]
    Short,
    /// UUIDs, as the Yahoo Streaming Benchmark's generator writes them: events of ~245 bytes,
    /// the size the benchmark anchors were measured with.
    Uuid,
}

impl IdFormat {
    /// The id of entity `n` of `kind` (`user`, `page`, `ad`).
    pub fn id(self, kind: &str, n: u32) -> String {
        match self {
            IdFormat::Short => format!("{kind}-{n}"),
            IdFormat::Uuid => {
                let salt = kind.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                let a = splitmix64(u64::from(n) ^ salt.rotate_left(32));
                let b = splitmix64(a);
                format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    0x8000 | ((b >> 48) & 0x3fff),
                    b & 0xffff_ffff_ffff
                )
            }
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How events are generated.
#[derive(Debug, Clone, Copy)]
pub struct ClickConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Distinct users.
    pub users: u32,
    /// Distinct pages.
    pub pages: u32,
    /// Event time of the first event, epoch ms.
    pub start_ms: i64,
    /// Events per second of event time.
    pub events_per_second: u64,
    /// How far before its slot an event's time may be.
    pub out_of_order_ms: i64,
    /// How ids are written.
    pub ids: IdFormat,
}

impl Default for ClickConfig {
    fn default() -> Self {
        ClickConfig {
            seed: 42,
            users: 10_000,
            pages: 1_000,
            start_ms: 1_700_000_000_000,
            events_per_second: 10_000,
            out_of_order_ms: 0,
            ids: IdFormat::Short,
        }
    }
}

/// A Zipf-like distribution over `0..n` (exponent 1): rank `i` has weight `1 / (i + 1)`.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u32) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n.max(1))
            .map(|i| {
                total += 1.0 / f64::from(i + 1);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut SmallRng) -> u32 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.gen_range(0.0..total);
        self.cumulative.partition_point(|c| *c <= x).min(self.cumulative.len() - 1) as u32
    }
}

/// An endless, deterministic stream of click events.
pub struct ClickGenerator {
    config: ClickConfig,
    rng: SmallRng,
    users: Zipf,
    pages: Zipf,
    index: u64,
}

impl ClickGenerator {
    /// A generator.
    pub fn new(config: ClickConfig) -> Self {
        ClickGenerator {
            rng: SmallRng::seed_from_u64(config.seed),
            users: Zipf::new(config.users),
            pages: Zipf::new(config.pages),
            config,
            index: 0,
        }
    }

    /// The next event, with its event time taken from `slot_ms` (minus the disorder) instead of
    /// the generator's event-time rate: for real-time production.
    pub fn next_at(&mut self, slot_ms: i64) -> ClickEvent {
        let c = self.config;
        let user = self.users.sample(&mut self.rng);
        let page = self.pages.sample(&mut self.rng);
        let ad = self.rng.gen_range(0..ADS);
        let roll = self.rng.gen_range(0..100);
        let event_type = match roll {
            0..=84 => "view",
            85..=96 => "click",
            _ => "purchase",
        };
        let early = if c.out_of_order_ms > 0 { self.rng.gen_range(0..=c.out_of_order_ms) } else { 0 };
        self.index += 1;
        // The address is the user's: one per user, stable across runs.
        let ip = (u64::from(user).wrapping_mul(2_654_435_761) ^ c.seed) as u32;
        ClickEvent {
            user_id: c.ids.id("user", user),
            page_id: c.ids.id("page", page),
            ad_id: c.ids.id("ad", ad),
            ad_type: AD_TYPES[(ad as usize) % AD_TYPES.len()].to_string(),
            event_type: event_type.to_string(),
            event_time: slot_ms - early,
            ip_address: format!("10.{}.{}.{}", (ip >> 16) & 255, (ip >> 8) & 255, ip & 255),
        }
    }
}

impl Iterator for ClickGenerator {
    type Item = ClickEvent;

    fn next(&mut self) -> Option<ClickEvent> {
        let c = self.config;
        let slot = c.start_ms + (self.index * 1000 / c.events_per_second.max(1)) as i64;
        Some(self.next_at(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disorder_is_bounded_in_every_subsequence() {
        let config = ClickConfig { out_of_order_ms: 50, events_per_second: 100_000, ..ClickConfig::default() };
        let events: Vec<ClickEvent> = ClickGenerator::new(config).take(20_000).collect();
        let mut max_per_user: std::collections::HashMap<&str, i64> = Default::default();
        for e in &events {
            let max = max_per_user.entry(&e.user_id).or_insert(i64::MIN);
            assert!(e.event_time >= max.saturating_sub(50), "{e:?} is more than 50 ms behind {max}");
            *max = (*max).max(e.event_time);
        }
    }

    #[test]
    fn users_and_pages_are_skewed_and_ads_cover_the_table() {
        let events: Vec<ClickEvent> = ClickGenerator::new(ClickConfig::default()).take(50_000).collect();
        let hot = events.iter().filter(|e| e.page_id == "page-0").count();
        let cold = events.iter().filter(|e| e.page_id == "page-999").count();
        assert!(hot > 20 * cold.max(1), "page-0: {hot}, page-999: {cold}");
        let views = events.iter().filter(|e| e.event_type == "view").count();
        assert!(views > events.len() * 8 / 10);
        let table = ads();
        assert_eq!(table.len(), 1000);
        let uuid = IdFormat::Uuid.id("ad", 7);
        assert_eq!((uuid.len(), &uuid[14..15]), (36, "4"));
        assert_ne!(IdFormat::Uuid.id("user", 7), uuid);
        let e = ClickGenerator::new(ClickConfig { ids: IdFormat::Uuid, ..ClickConfig::default() }).next().unwrap();
        assert!(ads_with(IdFormat::Uuid).iter().any(|a| a.ad_id == e.ad_id));
        let bytes = serde_json::to_vec(&e).unwrap().len();
        assert!((235..=255).contains(&bytes), "a YSB-sized event: {bytes} bytes");
        let ids: std::collections::HashSet<&str> = table.iter().map(|a| a.ad_id.as_str()).collect();
        assert!(events.iter().all(|e| ids.contains(e.ad_id.as_str())));
        assert_eq!(table.iter().map(|a| &a.campaign_id).collect::<std::collections::BTreeSet<_>>().len(), 100);
    }
}
