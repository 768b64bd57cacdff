//! The live view of the click-analytics application: throughput, lag per partition, the
//! watermark, and the latest closed windows, redrawn in the terminal while the app runs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use garam_core::backend::Backend;
use garam_core::runtime::{AppMonitor, MetricsSnapshot};

use super::{CampaignViews, TopPages, CAMPAIGN_VIEWS, CLICKS, TOP_PAGES};

/// A thread that redraws the view until stopped or the app stops.
pub struct LiveView {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Follows an output topic from the start, committed records only.
struct Follower {
    topic: &'static str,
    offsets: HashMap<u32, u64>,
}

impl Follower {
    fn poll<T: serde::de::DeserializeOwned>(&mut self, backend: &dyn Backend) -> Vec<T> {
        let mut out = Vec::new();
        let partitions = backend.partition_count(self.topic).ok().flatten().unwrap_or(0);
        for p in 0..partitions {
            // Start near the end: the view is about what happens now, not the topic's history.
            let offset = self
                .offsets
                .entry(p)
                .or_insert_with(|| backend.end_offset(self.topic, p, true).unwrap_or(0).saturating_sub(200));
            let Ok(f) = backend.fetch(self.topic, p, *offset, 4 << 20, true) else { continue };
            for r in &f.records {
                if let Some(v) = r.value.as_deref().and_then(|v| serde_json::from_slice(v).ok()) {
                    out.push(v);
                }
            }
            *offset = (*offset).max(f.next_offset);
        }
        out
    }
}

/// What the view shows.
#[derive(Default)]
struct State {
    last: Option<(Instant, u64)>,
    rate: f64,
    latest_campaigns: Option<(i64, Vec<CampaignViews>)>,
    latest_top: Option<TopPages>,
    windows_closed: u64,
}

impl LiveView {
    /// Starts redrawing every `every`.
    pub fn start(monitor: AppMonitor, backend: Arc<dyn Backend>, every: Duration) -> LiveView {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("garam-live-view".into())
            .spawn(move || {
                let mut views = Follower { topic: CAMPAIGN_VIEWS, offsets: HashMap::new() };
                let mut top = Follower { topic: TOP_PAGES, offsets: HashMap::new() };
                let mut state = State::default();
                while !flag.load(Ordering::Acquire) && !monitor.is_shutting_down() {
                    let m = monitor.metrics();
                    let (new_views, tops) = (views.poll(&*backend), top.poll(&*backend));
                    state.update(&m, new_views, tops, Instant::now());
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(state.render(&m, garam_core::time::now_ms()).as_bytes());
                    let _ = out.flush();
                    drop(out);
                    let until = Instant::now() + every;
                    while Instant::now() < until && !flag.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
            .ok();
        LiveView { stop, thread }
    }

    /// Stops the view.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn update(&mut self, m: &MetricsSnapshot, new: Vec<CampaignViews>, tops: Vec<TopPages>, now: Instant) {
        if let Some((at, n)) = self.last {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                self.rate = m.records_in.saturating_sub(n) as f64 / secs;
            }
        }
        self.last = Some((now, m.records_in));
        self.windows_closed += new.len() as u64;
        for v in new {
            match &mut self.latest_campaigns {
                Some((start, rows)) if *start == v.window_start => rows.push(v),
                Some((start, _)) if *start > v.window_start => {}
                _ => self.latest_campaigns = Some((v.window_start, vec![v])),
            }
        }
        if let Some(t) = tops.into_iter().max_by_key(|t| t.window_start) {
            if self.latest_top.as_ref().is_none_or(|l| l.window_start <= t.window_start) {
                self.latest_top = Some(t);
            }
        }
    }

    fn render(&self, m: &MetricsSnapshot, now_ms: i64) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("\x1b[H\x1b[2J");
        let _ = writeln!(s, "garam · click analytics   (Ctrl-C stops after a final commit)\n");
        let _ = writeln!(
            s,
            "throughput {:>10.0} records/s   in {}   out {}   late {}   commits {}",
            self.rate, m.records_in, m.records_out, m.late_records, m.commits
        );
        let watermark = m.watermarks.values().copied().filter(|w| *w > i64::MIN).min();
        match watermark {
            Some(w) => {
                let behind = (now_ms - w) as f64 / 1000.0;
                let _ = writeln!(s, "watermark  {} ({behind:.1} s behind the wall clock)", utc(w));
            }
            None => {
                let _ = writeln!(s, "watermark  - (waiting for every partition)");
            }
        }
        let lag: BTreeMap<u32, u64> = m
            .lag
            .iter()
            .filter_map(|(tp, l)| {
                let p = tp.strip_prefix(CLICKS)?.strip_prefix('-')?.parse().ok()?;
                Some((p, *l))
            })
            .collect();
        let _ = write!(s, "lag        ");
        for (p, l) in &lag {
            let _ = write!(s, "{CLICKS}-{p}: {l}  ");
        }
        let _ = writeln!(s, "\n");
        match &self.latest_campaigns {
            Some((start, rows)) => {
                let mut rows = rows.clone();
                rows.sort_by(|a, b| b.views.cmp(&a.views).then_with(|| a.campaign_id.cmp(&b.campaign_id)));
                let _ = writeln!(s, "top campaigns, 10 s window from {}:", utc(*start));
                for r in rows.iter().take(5) {
                    let _ = writeln!(s, "  {:<14} {:>8} views", r.campaign_id, r.views);
                }
            }
            None => {
                let _ = writeln!(s, "top campaigns: no 10 s window has closed yet");
            }
        }
        if let Some(t) = &self.latest_top {
            let _ = writeln!(s, "\ntop pages, minute from {}:", utc(t.window_start));
            for p in t.pages.iter().take(5) {
                let _ = writeln!(s, "  {:<14} {:>8} views", p.page_id, p.views);
            }
        }
        let _ = writeln!(s, "\ncampaign windows closed so far: {}", self.windows_closed);
        s
    }
}

/// `HH:MM:SS` UTC of an epoch-ms time.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::PageCount;

    fn views(campaign: &str, start: i64, views: u64) -> CampaignViews {
        CampaignViews { campaign_id: campaign.into(), window_start: start, window_end: start + 10_000, views }
    }

    #[test]
    fn the_view_shows_throughput_lag_watermark_and_the_latest_closed_windows() {
        let mut state = State::default();
        let t0 = Instant::now();
        let mut m = MetricsSnapshot { records_in: 1_000, ..Default::default() };
        state.update(&m, vec![views("campaign-1", 0, 5)], vec![], t0);
        m.records_in = 6_000;
        m.lag = [("clicks-0", 7), ("clicks-1", 0), ("click-analytics-campaign-events-repartition-0", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        m.watermarks = [("0_0".to_string(), 3_723_000i64), ("0_1".to_string(), i64::MIN)].into_iter().collect();
        let top = TopPages {
            window_start: 0,
            window_end: 60_000,
            pages: vec![PageCount { page_id: "page-0".into(), views: 40 }],
        };
        let newer = vec![views("campaign-2", 10_000, 3), views("campaign-3", 10_000, 8), views("campaign-1", 0, 1)];
        state.update(&m, newer, vec![top], t0 + Duration::from_secs(2));
        let text = state.render(&m, 3_725_000);
        assert!(text.contains("throughput       2500 records/s"), "{text}");
        assert!(text.contains("clicks-0: 7  clicks-1: 0"), "{text}");
        assert!(!text.contains("repartition"), "only the input's partitions: {text}");
        assert!(text.contains("watermark  01:02:03 UTC (2.0 s behind the wall clock)"), "{text}");
        let (c3, c2) = (text.find("campaign-3").unwrap(), text.find("campaign-2").unwrap());
        assert!(c3 < c2, "the newest window, most views first: {text}");
        assert!(!text.contains("campaign-1 "), "an older window is not the latest: {text}");
        assert!(text.contains("page-0") && text.contains("campaign windows closed so far: 4"), "{text}");
    }
}
