//! Graceful shutdown: SIGTERM makes a running application finish, flush, commit and leave.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use garam::core::backend::Backend;
use garam::log::{Log, TopicConfig};

fn example(name: &str) -> PathBuf {
    // target/debug/deps/<test> → target/debug/examples/<name>
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(name);
    p
}

#[test]
fn sigterm_stops_the_app_after_a_final_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("words", 4, TopicConfig::default()).unwrap();
        log.create_topic("shouts", 4, TopicConfig::default()).unwrap();
        let mut p = log.producer(Default::default()).unwrap();
        for i in 0..1000 {
            p.send("words", garam::core::Record::new(Some(format!("k{i}")), Some(format!("word{i}")))).unwrap();
        }
        p.flush().unwrap();
        drop(p);
        log.close().unwrap();
    }
    let child = Command::new(example("uppercase"))
        .args(["--input", "words", "--output", "shouts", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the uppercase example is built by `cargo test -p garam` (or --workspace); a lone --test run does not build examples");
    // Wait for the status file to report everything processed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done =
            std::fs::read_dir(dir.path().join("apps/uppercase")).ok().and_then(|mut it| it.next()).is_some_and(|e| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap_or_default()).unwrap_or_default();
                v["metrics"]["records_in"] == 1000
            });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the app did not process its input");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    // Everything it read was committed, and everything it wrote is there.
    let log = Log::open(dir.path()).unwrap();
    for (p, committed, end) in log.group_offsets("uppercase", "words").unwrap() {
        assert_eq!(committed, Some(end), "partition {p}");
    }
    let total: u64 = (0..4).map(|p| log.offsets("shouts", p).unwrap().log_end_offset).sum();
    assert_eq!(total, 1000);
}
