//! `garam apps describe APP`: members, their tasks, and lag.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AppsCommand {
    /// Members, their tasks, and lag of an application (from its status files, or its committed
    /// offsets when it is not running).
    Describe { application_id: String },
}

pub fn run(dir: &Path, cmd: AppsCommand) -> Result<()> {
    match cmd {
        AppsCommand::Describe { application_id } => describe(dir, &application_id),
    }
}

fn describe(dir: &Path, app: &str) -> Result<()> {
    let status_dir = dir.join("apps").join(app);
    let mut shown = false;
    if let Ok(entries) = std::fs::read_dir(&status_dir) {
        let now = garam_core::time::now_ms();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))?;
            let updated = v["updated_ms"].as_i64().unwrap_or(0);
            let age_s = (now - updated) as f64 / 1000.0;
            println!(
                "Application: {app}\tProcess: {}\tStatus: {}\tUpdated: {age_s:.1} s ago",
                v["pid"],
                v["status"].as_str().unwrap_or("?")
            );
            if let Some(f) = v["failure"].as_str() {
                println!("  Failure: {f}");
            }
            let m = &v["metrics"];
            println!(
                "  Records in: {}\tout: {}\tskipped: {}\tdead-lettered: {}\tcommits: {}",
                m["records_in"], m["records_out"], m["skipped"], m["dead_lettered"], m["commits"]
            );
            if let Some(tasks) = m["tasks"].as_object() {
                for (member, ts) in tasks {
                    let list: Vec<String> =
                        ts.as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_string)).collect();
                    println!("  Member: {member}\tTasks: {}", list.join(", "));
                }
            }
            if let Some(lag) = m["lag"].as_object() {
                println!("  {:<40} {:>10}", "PARTITION", "LAG");
                for (tp, l) in lag {
                    println!("  {tp:<40} {:>10}", l);
                }
            }
            shown = true;
        }
    }
    if shown {
        return Ok(());
    }
    // Not running here: show committed offsets and lag from the log.
    let log = crate::open_log(dir)?;
    let d = log.groups().describe(app);
    if d.offsets.is_empty() && d.members.is_empty() {
        bail!("unknown application '{app}': no status file in {} and no committed offsets", status_dir.display());
    }
    println!("Application: {app}\tStatus: not running (no status file)");
    println!("  {:<30} {:>9} {:>16} {:>16} {:>10}", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG");
    for (tp, c) in &d.offsets {
        let Ok(p) = log.partition(&tp.topic, tp.partition) else { continue };
        let end = p.high_watermark();
        println!(
            "  {:<30} {:>9} {:>16} {:>16} {:>10}",
            tp.topic,
            tp.partition,
            c.offset,
            end,
            end.saturating_sub(c.offset)
        );
    }
    log.close()?;
    Ok(())
}
