//! `garam bench count --guarantee both`: what exactly-once costs against at-least-once.
//!
//! One count under each guarantee says little on a machine whose speed drifts from run to run by
//! more than the difference being measured. So the counts alternate, round after round, each in a
//! process of its own (fresh allocators, the same starting point for both), and the cost is the
//! median of the rounds' own ratios: a slow stretch of the machine slows both counts of a round,
//! and a single odd run moves the median little.

use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::count_bench::CountBench;

/// The two counts of a round; odd rounds run them in this order, even rounds the other way round,
/// so that a machine speeding up or slowing down within the rounds favours neither.
const GUARANTEES: [&str; 2] = ["exactly-once", "at-least-once"];

/// One count's speed, as its `count:` line gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CountRate {
    /// Records per second of wall time.
    wall: f64,
    /// Records per CPU-second (the whole process's CPU time while it counted).
    cpu: f64,
}

impl CountRate {
    /// Reads the two rates from a `count:` line.
    fn parse(line: &str) -> Option<CountRate> {
        Some(CountRate {
            wall: number_before(line, " records/s")?,
            cpu: number_before(line, " records per CPU-second")?,
        })
    }
}

/// The number between the last `= ` before `suffix` and `suffix`.
fn number_before(line: &str, suffix: &str) -> Option<f64> {
    let end = line.find(suffix)?;
    let start = line[..end].rfind("= ")? + 2;
    line[start..end].trim().parse().ok()
}

/// The median; `xs` must not be empty.
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs the rounds and prints each count, then the medians and exactly-once's cost.
pub fn run(b: &CountBench) -> Result<()> {
    if b.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut rounds = Vec::with_capacity(b.rounds);
    for round in 1..=b.rounds {
        let mut pair = [CountRate::default(); 2];
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let line = count_in_child(b, GUARANTEES[i])?;
            pair[i] = CountRate::parse(&line).ok_or_else(|| anyhow!("no rates in the count's line: {line}"))?;
            println!("round {round}/{}: {line}", b.rounds);
        }
        rounds.push(pair);
    }
    println!("{}", Summary::of(&rounds));
    Ok(())
}

/// Runs one count, without the restore, in a process of its own; returns its `count:` line.
fn count_in_child(b: &CountBench, guarantee: &str) -> Result<String> {
    let mut cmd = Command::new(std::env::current_exe().context("locating the garam binary")?);
    cmd.args(["bench", "count", "--count-only", "--guarantee", guarantee]);
    cmd.arg("--records").arg(b.records.to_string()).arg("--keys").arg(b.keys.to_string());
    cmd.arg("--threads").arg(b.threads.to_string()).arg("--partitions").arg(b.partitions.to_string());
    cmd.arg("--stores").arg(b.stores.to_string()).arg("--dir").arg(&b.dir);
    for c in &b.config {
        cmd.arg("--config").arg(c);
    }
    if b.keep {
        cmd.arg("--keep");
    }
    if b.memory_timeline {
        cmd.arg("--memory-timeline");
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("starting a count")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the {guarantee} count failed ({}): {stdout}", out.status);
    }
    stdout
        .lines()
        .find(|l| l.starts_with("count: "))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the {guarantee} count printed no count line: {stdout}"))
}

/// Medians over the rounds, and exactly-once's cost: one minus each round's ratio of
/// exactly-once's rate to at-least-once's.
#[derive(Debug, PartialEq)]
struct Summary {
    rounds: usize,
    exactly_once: CountRate,
    at_least_once: CountRate,
    /// Median cost by wall time, and the smallest and largest of the rounds'.
    cost: (f64, f64, f64),
    /// Median cost by CPU time.
    cpu_cost: f64,
}

impl Summary {
    fn of(rounds: &[[CountRate; 2]]) -> Summary {
        let column = |f: fn(&[CountRate; 2]) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
        let mut costs = column(|r| 1.0 - r[0].wall / r[1].wall);
        // Sorts `costs` too: the smallest and largest are then at the ends.
        let cost = median(&mut costs);
        Summary {
            rounds: rounds.len(),
            exactly_once: CountRate {
                wall: median(&mut column(|r| r[0].wall)),
                cpu: median(&mut column(|r| r[0].cpu)),
            },
            at_least_once: CountRate {
                wall: median(&mut column(|r| r[1].wall)),
                cpu: median(&mut column(|r| r[1].cpu)),
            },
            cost: (cost, costs[0], costs[costs.len() - 1]),
            cpu_cost: median(&mut column(|r| 1.0 - r[0].cpu / r[1].cpu)),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const M: f64 = 1e6;
        write!(
            f,
            "exactly-once against at-least-once, {} alternating round(s): {:.2} M against {:.2} M records/s (medians); \
             exactly-once costs {:.1} % (median of the rounds; {:.1} to {:.1} %); per CPU-second {:.2} M against {:.2} M: {:.1} %",
            self.rounds,
            self.exactly_once.wall / M,
            self.at_least_once.wall / M,
            self.cost.0 * 100.0,
            self.cost.1 * 100.0,
            self.cost.2 * 100.0,
            self.exactly_once.cpu / M,
            self.at_least_once.cpu / M,
            self.cpu_cost * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "count: 10000000 records, 1000000 keys, 8 partitions × 1 store(s), 2 thread(s), exactly-once: \
        2.05 s = 4881278 records/s (RocksDB + changelog; 40 commits, avg 9622 µs); CPU 3.91 s = 2556689 records per CPU-second";

    #[test]
    fn rates_are_read_from_the_count_line() {
        assert_eq!(CountRate::parse(LINE), Some(CountRate { wall: 4881278.0, cpu: 2556689.0 }));
        assert_eq!(CountRate::parse("count: nothing to see"), None);
    }

    #[test]
    fn the_cost_is_the_median_of_the_rounds_ratios() {
        let r = |e: f64, a: f64| [CountRate { wall: e, cpu: e / 2.0 }, CountRate { wall: a, cpu: a / 2.0 }];
        // Costs 10 %, 50 % (an odd round) and 20 %: the median is 20 %, whatever the means say.
        let s = Summary::of(&[r(90.0, 100.0), r(50.0, 100.0), r(160.0, 200.0)]);
        assert!((s.cost.0 - 0.2).abs() < 1e-9, "{s:?}");
        assert!((s.cost.1 - 0.1).abs() < 1e-9 && (s.cost.2 - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.cpu_cost - 0.2).abs() < 1e-9, "{s:?}");
        assert_eq!(s.exactly_once.wall, 90.0);
        assert_eq!(s.at_least_once.wall, 100.0);
        let text = s.to_string();
        assert!(text.contains("exactly-once costs 20.0 % (median of the rounds; 10.0 to 50.0 %)"), "{text}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }
}
