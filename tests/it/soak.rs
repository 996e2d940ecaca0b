//! The soak test: three node processes on Redis under mixed traffic for a long time (30
//! minutes by default; `SOAK_MINUTES`). Not part of the default run — `scripts/soak` runs it:
//!
//! - well-behaved chatters on every node send numbered messages and must receive every one of
//!   everyone's, in order;
//! - churners join and leave rooms on random nodes, some closing cleanly, some just vanishing;
//! - slow readers connect and never read.
//!
//! It fails if any node's memory grows more than 5 % after the warm-up, if tasks or file
//! descriptors are not back to their warm-up level once the churn stops, or if a chatter lost
//! anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::helpers::{TestSocket, connect_at, join_at, metric_value, sign_in_at};
use crate::redis_server::{CLUSTER_SECRET, RedisServer};
use crate::startup::ConfabProcess;

const CHATTERS_PER_NODE: usize = 2;
const CHURNERS: usize = 12;
const SLOW_READERS: usize = 6;

/// One node's resource use at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    tasks: u64,
}

fn sample(process: &ConfabProcess, exposition: &str) -> Sample {
    let pid = process.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let tasks = metric_value(exposition, "confab_runtime_tasks") as u64;
    Sample {
        rss_kib,
        fds,
        tasks,
    }
}

async fn sample_all(nodes: &[ConfabProcess]) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for node in nodes {
        let exposition = client
            .get(format!("http://{}/metrics", node.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        samples.push(sample(node, &exposition));
    }
    samples
}

/// Sends `<name> <n>` every 400 ms (under the rate limit) until `stop`; returns how many.
async fn chatter_send(
    mut tx: crate::helpers::TestSender,
    name: String,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        tx.send(&format!("{name} {n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tx.send(&format!("{name} done")).await;
    n
}

/// Reads until every chatter said "done"; returns, per chatter, the numbers received in order.
async fn chatter_receive(
    mut rx: crate::helpers::TestReceiver,
    chatters: usize,
) -> HashMap<String, Vec<u64>> {
    let mut received: HashMap<String, Vec<u64>> = HashMap::new();
    let mut done = 0;
    while done < chatters {
        let frame = rx.recv_within(Duration::from_secs(60)).await;
        if frame["type"] != "chat" {
            continue;
        }
        let text = frame["data"].as_str().unwrap();
        let Some((name, n)) = text.split_once(' ') else {
            continue;
        };
        if n == "done" {
            done += 1;
        } else if let Ok(n) = n.parse() {
            received.entry(name.to_owned()).or_default().push(n);
        }
    }
    received
}

async fn churn(nodes: Vec<std::net::SocketAddr>, stop: Arc<AtomicBool>, cycles: Arc<AtomicU64>) {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let user = sign_in_at(nodes[0], &format!("churner{}", rng.random::<u16>())).await;
    while !stop.load(Ordering::Relaxed) {
        let node = nodes[rng.random_range(0..nodes.len())];
        let room = format!("churn-{}", rng.random_range(0..10));
        let (socket, _) = join_at(node, &user, &room).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3000))).await;
        if rng.random_bool(0.5) {
            socket.close().await;
        } else {
            drop(socket); // vanishes without a close frame
        }
        cycles.fetch_add(1, Ordering::Relaxed);
    }
}

async fn slow_reader(node: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    let user = sign_in_at(node, "slow").await;
    while !stop.load(Ordering::Relaxed) {
        let socket: TestSocket = connect_at(node, &user, "?room=soak").await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(socket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with scripts/soak"]
async fn soak_three_nodes_under_mixed_traffic() {
    let minutes: f64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let total = Duration::from_secs_f64(minutes * 60.0);
    let warm_up = total / 10;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for n in 0..3 {
        let id = format!("soak-{n}");
        let node = ConfabProcess::start(&[
            ("CONFAB_REDIS_URL", &url),
            ("CONFAB_SECRET", CLUSTER_SECRET),
            ("CONFAB_NODE_ID", &id),
            ("CONFAB_LEAVE_GRACE_MS", "1000"),
            ("RUST_LOG", "warn,confab::app=info"),
        ])
        .await;
        nodes.push(node);
    }
    let addrs: Vec<_> = nodes.iter().map(|node| node.addr).collect();
    let http = reqwest::Client::new();
    for addr in &addrs {
        crate::helpers::eventually("the node to be ready", || async {
            http.get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    // Chatters first, so every one of them hears every message.
    let stop_chat = Arc::new(AtomicBool::new(false));
    let chatters = addrs.len() * CHATTERS_PER_NODE;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, addr) in addrs.iter().cycle().take(chatters).enumerate() {
        let name = format!("chatter{i}");
        let user = sign_in_at(*addr, &name).await;
        let (socket, _) = join_at(*addr, &user, "soak").await;
        let (tx, rx) = socket.split();
        receivers.push(tokio::spawn(chatter_receive(rx, chatters)));
        senders.push((name, tx));
    }
    let senders: Vec<_> = senders
        .into_iter()
        .map(|(name, tx)| tokio::spawn(chatter_send(tx, name, stop_chat.clone())))
        .collect();

    let stop_churn = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let mut churners = Vec::new();
    for _ in 0..CHURNERS {
        churners.push(tokio::spawn(churn(
            addrs.clone(),
            stop_churn.clone(),
            cycles.clone(),
        )));
    }
    for i in 0..SLOW_READERS {
        churners.push(tokio::spawn(slow_reader(
            addrs[i % addrs.len()],
            stop_churn.clone(),
        )));
    }

    let started = Instant::now();
    tokio::time::sleep(warm_up).await;
    let baseline = sample_all(&nodes).await;
    eprintln!("soak: warm-up done: {baseline:?}");
    let mut peak = baseline.clone();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(30).min(total.saturating_sub(started.elapsed())))
            .await;
        let now = sample_all(&nodes).await;
        eprintln!(
            "soak: {:>5.1} min, {} churn cycles: {now:?}",
            started.elapsed().as_secs_f64() / 60.0,
            cycles.load(Ordering::Relaxed)
        );
        for (peak, now) in peak.iter_mut().zip(&now) {
            peak.rss_kib = peak.rss_kib.max(now.rss_kib);
        }
    }

    stop_churn.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.await.unwrap();
    }
    stop_chat.store(true, Ordering::Relaxed);
    let mut sent = HashMap::new();
    for (i, sender) in senders.into_iter().enumerate() {
        sent.insert(format!("chatter{i}"), sender.await.unwrap());
    }
    for (r, receiver) in receivers.into_iter().enumerate() {
        let received = receiver.await.unwrap();
        for (name, &count) in &sent {
            let expected: Vec<u64> = (0..count).collect();
            assert_eq!(
                received.get(name).cloned().unwrap_or_default(),
                expected,
                "chatter{r} lost or reordered {name}'s messages"
            );
        }
    }

    // With the churn over, sockets closed and left announced, tasks and descriptors are back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = sample_all(&nodes).await;
    eprintln!(
        "soak: end: {end:?}; peak RSS {:?}",
        peak.iter().map(|s| s.rss_kib).collect::<Vec<_>>()
    );
    for (n, (baseline, end)) in baseline.iter().zip(&end).enumerate() {
        let allowed = baseline.rss_kib + baseline.rss_kib / 20;
        assert!(
            end.rss_kib <= allowed,
            "node {n}: RSS grew from {} KiB to {} KiB",
            baseline.rss_kib,
            end.rss_kib
        );
        assert!(
            end.fds <= baseline.fds,
            "node {n}: file descriptors grew from {} to {}",
            baseline.fds,
            end.fds
        );
        assert!(
            end.tasks <= baseline.tasks,
            "node {n}: tasks grew from {} to {}",
            baseline.tasks,
            end.tasks
        );
    }
}
