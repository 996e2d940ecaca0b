//! Smoke tests against a real confab: start the `confab` binary on `127.0.0.1:0` with the
//! benchmark settings, run `confab-bench` scenarios at a tiny size, and check the JSON report.
//!
//! The `confab` binary is another crate's, so Cargo does not build it for these tests: they use
//! `target/debug/confab` (or `$CONFAB_BIN`) and run `cargo build -p confab --bin confab` first
//! when it is missing. `cargo build` before `cargo test -p confab-bench` avoids that wait.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A confab node that is killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn confab_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CONFAB_BIN") {
        return path.into();
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("debug").join("confab");
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "confab", "--bin", "confab"])
            .current_dir(&workspace)
            .status()
            .expect("cargo runs");
        assert!(
            status.success() && binary.exists(),
            "confab is not built at {} and `cargo build -p confab` failed: run `cargo build` in the workspace first",
            binary.display()
        );
    }
    binary
}

/// Starts confab with the benchmark settings (README: abuse limits lifted, no history).
fn start_confab() -> Node {
    let mut child = Command::new(confab_binary())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("CONFAB_BIND", "127.0.0.1:0")
        .env("CONFAB_MAX_SOCKETS_PER_USER", "100000")
        .env("CONFAB_MAX_SOCKETS_PER_ADDRESS", "1000000")
        .env("CONFAB_SIGNINS_PER_MINUTE", "1000000")
        .env("CONFAB_MAX_CONNECTIONS", "1000000")
        .env("CONFAB_HISTORY", "0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("CONFAB_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("confab starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Some(at) = line.find("listening on http://") {
                let addr = line[at + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("confab logs `listening on http://ADDR` within 30 s");
    Node {
        child,
        url: format!("http://{addr}"),
    }
}

fn bench(node: &Node, args: &[&str]) -> Value {
    static N: AtomicU32 = AtomicU32::new(0);
    let json = std::env::temp_dir().join(format!(
        "confab-bench-smoke-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let pid = node.child.id().to_string();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_confab-bench"))
        .args([
            "--url",
            &node.url,
            "--server-pid",
            &pid,
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .args(args)
        .output()
        .expect("confab-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "confab-bench {args:?} failed after {:?}: {}\n{stdout}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(&json).expect("the JSON report is written");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&report).expect("the JSON report parses")
}

fn u(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is a count"))
}

#[test]
fn fanout_delivers_everything_in_order() {
    let node = start_confab();
    let report = bench(
        &node,
        &[
            "fanout",
            "--clients",
            "20",
            "--rate",
            "2",
            "--duration",
            "2",
            "--drain",
            "5",
        ],
    );
    assert_eq!(u(&report["connect"]["ok"]), 20, "{report:#}");
    let step = &report["steps"][0];
    assert_eq!(u(&step["sent"]), 80, "2 msg/s × 20 senders × 2 s: {step:#}");
    assert_eq!(u(&step["expected"]), 80 * 20);
    assert_eq!(
        u(&step["received"]),
        u(&step["expected"]),
        "no loss: {step:#}"
    );
    assert_eq!(u(&step["lost"]), 0);
    assert_eq!(u(&step["out_of_order"]), 0);
    assert_eq!(u(&step["duplicates"]), 0);
    assert_eq!(u(&step["rate_limited"]), 0);
    assert!(step["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(step["server_cpu_secs"].is_number(), "--server-pid is read");
    assert_eq!(u(&report["counters"]["out_of_order"]), 0);
    assert_eq!(u(&report["counters"]["foreign"]), 0);
    assert_eq!(report["warnings"], serde_json::json!([]));
}

#[test]
fn two_processes_join_and_hold_connections() {
    let node = start_confab();
    let report = bench(
        &node,
        &[
            "--processes",
            "2",
            "rooms",
            "--rooms",
            "6",
            "--room-size",
            "3",
            "--rate",
            "2",
            "--duration",
            "1",
        ],
    );
    let step = &report["steps"][0];
    assert_eq!(u(&step["expected"]), u(&step["sent"]) * 3, "{step:#}");
    assert_eq!(u(&step["received"]), u(&step["expected"]), "{step:#}");
    assert_eq!(u(&report["counters"]["out_of_order"]), 0);

    let report = bench(&node, &["join", "--users", "40", "--timeout", "20"]);
    let join = &report["join"];
    assert_eq!(u(&join["complete"]), 40, "{join:#}");
    assert!(join["all_joins_seen_secs"].as_f64().unwrap() > 0.0);

    let report = bench(
        &node,
        &[
            "connections",
            "--clients",
            "30",
            "--hold",
            "1",
            "--settle",
            "0",
        ],
    );
    let connections = &report["connections"];
    assert_eq!(u(&connections["still_open"]), 30, "{connections:#}");
    assert!(connections["server_rss_per_connection"].is_number());
}

#[test]
fn typists_send_typing_beside_chat_and_it_is_counted_apart() {
    let node = start_confab();
    // 6 rooms of 5, one typist (`v=2`) in each: its chat goes as a JSON command, its `typing`
    // once a second; confab passes one per user per room per 2 s to the room's 4 others.
    let report = bench(
        &node,
        &[
            "--processes",
            "2",
            "rooms",
            "--rooms",
            "6",
            "--room-size",
            "5",
            "--rate",
            "2",
            "--duration",
            "3",
            "--typing-fraction",
            "0.2",
        ],
    );
    assert_eq!(u(&report["layout"]["typists"]), 6, "{:#}", report["layout"]);
    let step = &report["steps"][0];
    assert_eq!(u(&step["expected"]), u(&step["sent"]) * 5, "{step:#}");
    assert_eq!(
        u(&step["received"]),
        u(&step["expected"]),
        "the typists' JSON chat arrives like everyone's: {step:#}"
    );
    assert_eq!(u(&step["out_of_order"]), 0);
    assert_eq!(u(&step["duplicates"]), 0);
    assert_eq!(u(&step["rate_limited"]), 0);
    // Chat latency split by sender: the typists' chats (a fifth of the senders) and the others'.
    let (typists, others) = (
        u(&step["typists_latency_ms"]["count"]),
        u(&step["others_latency_ms"]["count"]),
    );
    assert_eq!(typists + others, u(&step["received"]), "{step:#}");
    assert_eq!(typists * 4, others, "6 of 30 senders type: {step:#}");
    let counters = &step["counters"];
    assert_eq!(
        u(&counters["typing_sent"]),
        6 * 3,
        "one a second per typist: {counters:#}"
    );
    let typing = u(&counters["typing_received"]);
    // At least the first of each typist's three passes (to 4 sockets), at most all of them.
    assert!((6 * 4..=6 * 3 * 4).contains(&typing), "{counters:#}");
    assert_eq!(counters["errors"], serde_json::json!({}), "no bad_command");
    assert_eq!(
        u(&report["counters"]["foreign"]),
        0,
        "every chat had its tag"
    );
    assert_eq!(u(&report["counters"]["out_of_order"]), 0);
    assert_eq!(report["warnings"], serde_json::json!([]));

    // Without --typing-fraction nothing of it shows: no typists, no typing counters.
    let report = bench(
        &node,
        &[
            "rooms",
            "--rooms",
            "2",
            "--room-size",
            "3",
            "--duration",
            "1",
        ],
    );
    assert!(report["layout"].get("typists").is_none(), "{report:#}");
    assert!(report["steps"][0].get("typists_latency_ms").is_none());
    assert!(report["counters"].get("typing_sent").is_none());
    assert!(report["counters"].get("typing_received").is_none());
}
