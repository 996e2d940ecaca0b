//! A real six-node Redis Cluster per test (three primaries, one replica each), owned by the
//! test like [`RedisServer`](crate::redis_server::RedisServer): any node can be killed and
//! started again, slots can be moved, and the fixture waits until the nodes agree again, so a
//! test sees the failovers and resharding a deployment sees instead of a mock of them.
//!
//! Each node is a `redis-server` on a port from [`reserved_port`](crate::helpers::reserved_port)
//! whose cluster bus port (port + 10000) is free and below the ephemeral range too. Node
//! timeout is 2 s, so a killed primary is failed over in a few seconds. Configuration and logs
//! live in a temporary directory, removed on drop unless the test panicked (then its path is
//! printed, for the nodes' logs).
//!
//! The `redis` dev-dependency has no cluster client, so cluster-aware commands go through
//! `redis-cli -c` ([`RedisCluster::cli`]); [`RedisCluster::command_on`] talks to one node.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

/// Number of hash slots in every Redis Cluster.
const SLOTS: u32 = 16_384;
/// How far above a node's port its cluster bus listens (fixed by Redis unless `cluster-port`).
const BUS_OFFSET: u16 = 10_000;
/// Nodes per cluster: three primaries and a replica for each.
const NODES: usize = 6;
/// How long the cluster may take to form, or to agree again after a kill, restart or reshard.
/// Generous for shared CI machines; a passing test never waits this long.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one query to one node may take before that node counts as not answering.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a wait asks the nodes again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Six `redis-server`s in cluster mode on loopback. Every process is killed and the
/// temporary directory removed when this is dropped.
pub struct RedisCluster {
    /// Holds each node's `nodes-<port>.conf` and `redis-<port>.log`.
    dir: PathBuf,
    /// In start order; a killed node keeps its entry (and port) so it can be restarted.
    nodes: Vec<Node>,
}

/// One node: its port, and its process while it runs.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// One contiguous run of slots as one node reports it (`CLUSTER SLOTS`): replicas sorted,
/// failed replicas left out by Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    primary: u16,
    replicas: Vec<u16>,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create … --cluster-replicas 1`
    /// (the first three own slots 0-5460, 5461-10922 and 10923-16383, the others replicate
    /// them) and waits until every node reports `cluster_state:ok` and the same three slot
    /// ranges, each with a replica.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is not installed (a cluster test must never pass by
    /// not running), when no suitable ports are free, or when the cluster does not form within
    /// 30 s.
    pub async fn start() -> Self {
        let mut ports = Vec::with_capacity(NODES);
        let mut taken = BTreeSet::new();
        for _ in 0..NODES {
            let port = cluster_port(&taken);
            taken.extend([port, port + BUS_OFFSET]);
            ports.push(port);
        }
        let dir = std::env::temp_dir().join(format!(
            "confab-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the cluster's temporary directory is created");
        // Built before any process starts, so that a panic below still kills them all.
        let mut cluster = Self {
            dir,
            nodes: ports
                .iter()
                .map(|&port| Node { port, child: None })
                .collect(),
        };
        for port in ports.clone() {
            cluster.spawn(port);
        }
        for &port in &ports {
            cluster.wait_until_answering(port).await;
        }

        let addresses: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        run_redis_cli(&create).await;

        cluster
            .wait_until_agreed(
                "the cluster forms: 3 slot ranges, each with a replica",
                |view| {
                    let formed = view.len() == 3
                        && view.iter().all(|range| range.replicas.len() == 1)
                        && ports.iter().all(|&port| serves(view, port));
                    if formed {
                        Ok(())
                    } else {
                        Err(format!("not yet formed: {view:?}"))
                    }
                },
            )
            .await;
        cluster
    }

    /// Seed URLs of all six nodes, comma-separated: `redis://127.0.0.1:p1,redis://…`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, live or killed, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// The port of the primary owning `slot`, as the first live node that answers sees it.
    ///
    /// # Panics
    /// When no live node answers, or none owns the slot.
    pub async fn primary_for_slot(&self, slot: u16) -> u16 {
        let view = self.any_view().await;
        range_of(&view, slot)
            .unwrap_or_else(|| panic!("slot {slot} has no primary: {view:?}"))
            .primary
    }

    /// The ports of the live replicas of the primary owning `slot`, as the first live node
    /// that answers sees them.
    ///
    /// # Panics
    /// When no live node answers, or none owns the slot.
    pub async fn replicas_for_slot(&self, slot: u16) -> Vec<u16> {
        let view = self.any_view().await;
        range_of(&view, slot)
            .unwrap_or_else(|| panic!("slot {slot} has no primary: {view:?}"))
            .replicas
            .clone()
    }

    /// The ports of the primaries owning slots, sorted, as the first live node that answers
    /// sees them.
    ///
    /// # Panics
    /// When no live node answers.
    pub async fn primaries(&self) -> Vec<u16> {
        let primaries: BTreeSet<u16> = self.any_view().await.iter().map(|r| r.primary).collect();
        primaries.into_iter().collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`), `{hash tags}` included.
    ///
    /// # Panics
    /// When no node is running.
    pub async fn key_slot(&self, key: &str) -> u16 {
        self.command_on(self.any_live_port(), &["CLUSTER", "KEYSLOT", key])
            .await
    }

    /// Kills the node on `port` with SIGKILL: no goodbye to clients or to the other nodes,
    /// its data gone. Its port stays the node's, for [`restart`](Self::restart).
    ///
    /// # Panics
    /// When `port` is not a node of this cluster.
    pub fn kill(&mut self, port: u16) {
        let node = self.node_mut(port);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node on `port` again with its own `nodes-<port>.conf`, so it rejoins as the
    /// same node (a replica of its successor, if it was a failed-over primary), and waits
    /// until every live node, this one included, agrees on the slots and reports it serving.
    ///
    /// # Panics
    /// When `port` is not a node of this cluster, or it has not rejoined within 30 s.
    pub async fn restart(&mut self, port: u16) {
        self.kill(port);
        self.spawn(port);
        self.wait_until_answering(port).await;
        self.wait_until_agreed(&format!("node {port} rejoins"), |view| {
            if serves(view, port) {
                Ok(())
            } else {
                Err(format!("{port} not serving yet: {view:?}"))
            }
        })
        .await;
    }

    /// Waits until a live node is the primary for `slot` and every live node reports
    /// `cluster_state:ok` and the same slots; returns that primary's port. After killing the
    /// slot's primary this takes a few seconds (node timeout 2 s, then the replicas' election).
    ///
    /// # Panics
    /// When that has not happened within 30 s.
    pub async fn wait_for_failover(&self, slot: u16) -> u16 {
        let live = self.live_ports();
        self.wait_until_agreed(
            &format!("a live primary for slot {slot}"),
            |view| match range_of(view, slot) {
                Some(range) if live.contains(&range.primary) => Ok(range.primary),
                other => Err(format!("slot {slot} owned by {other:?}")),
            },
        )
        .await
    }

    /// Runs one command on the node on `port` over a plain connection (no redirects followed),
    /// e.g. `["CLUSTER", "MYID"]`.
    ///
    /// # Panics
    /// When the node does not answer, answers with an error, or the reply is not a `T`.
    pub async fn command_on<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        query(port, args)
            .await
            .unwrap_or_else(|error| panic!("{args:?} on node {port}: {error}"))
    }

    /// Runs `redis-cli -c -p <port> <args…>`, which follows `MOVED` and `ASK` like a cluster
    /// client, and returns its output, trimmed (`OK`, a value, or an error's text).
    ///
    /// # Panics
    /// When `redis-cli` cannot connect or exits unsuccessfully.
    pub async fn cli(&self, port: u16, args: &[&str]) -> String {
        let port = port.to_string();
        let mut all = vec!["-c", "-p", &port];
        all.extend(args);
        run_redis_cli(&all).await.trim().to_owned()
    }

    /// Moves `slots` slots (their keys included) from the primary on `from_port` to the
    /// primary on `to_port` with `redis-cli --cluster reshard`, then waits until every live
    /// node agrees on the new owners.
    ///
    /// # Panics
    /// When `redis-cli` fails (its output is in the message), or the nodes do not agree
    /// within 30 s.
    pub async fn reshard(&self, from_port: u16, to_port: u16, slots: u16) {
        let from: String = self.command_on(from_port, &["CLUSTER", "MYID"]).await;
        let to: String = self.command_on(to_port, &["CLUSTER", "MYID"]).await;
        let entry = format!("127.0.0.1:{}", self.any_live_port());
        let slots = slots.to_string();
        run_redis_cli(&[
            "--cluster",
            "reshard",
            &entry,
            "--cluster-from",
            &from,
            "--cluster-to",
            &to,
            "--cluster-slots",
            &slots,
            "--cluster-yes",
        ])
        .await;
        self.wait_until_agreed("the nodes agree after resharding", |_| Ok(()))
            .await;
    }

    /// How many times the node on `port` has run `command` (lower case, e.g. `"evalsha"`),
    /// from `INFO commandstats`; 0 if never.
    pub async fn info_commandstats_calls(&self, port: u16, command: &str) -> u64 {
        let info: String = self.command_on(port, &["INFO", "commandstats"]).await;
        commandstats_calls(&info, command)
    }

    /// Starts `redis-server` for the node on `port`, logging to `redis-<port>.log`.
    fn spawn(&mut self, port: u16) {
        let path = |name: String| self.dir.join(name).to_string_lossy().into_owned();
        let config_file = path(format!("nodes-{port}.conf"));
        let log_file = path(format!("redis-{port}.log"));
        let dir = self.dir.to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &config_file])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--dir", &dir])
            .args(["--logfile", &log_file])
            .args(["--save", "", "--appendonly", "no"])
            // A replica is listed in CLUSTER SLOTS only once its replication offset is not 0,
            // which the primary's first replication ping makes it: by default 5 s of waiting
            // for other replicas before the first sync, then 10 s between pings.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--repl-ping-replica-period", "1"])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.node_mut(port).child = Some(child);
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("{port} is not a node of this cluster"))
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .collect()
    }

    fn any_live_port(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .expect("at least one node of the cluster is running")
    }

    async fn wait_until_answering(&self, port: u16) {
        poll_until(
            &format!("node {port} answers PING"),
            SETTLE_TIMEOUT,
            async || query::<String>(port, &["PING"]).await,
        )
        .await;
    }

    /// The slots as the first live node that answers reports them.
    async fn any_view(&self) -> Vec<SlotRange> {
        let mut errors = Vec::new();
        for port in self.live_ports() {
            match slots_seen_by(port).await {
                Ok(view) => return view,
                Err(error) => errors.push(format!("{port}: {error}")),
            }
        }
        panic!("no live node answers CLUSTER SLOTS: {errors:?}");
    }

    /// Waits until every live node reports `cluster_state:ok` and the same slots, covering all
    /// 16384, and `check` accepts them; returns what `check` returned.
    async fn wait_until_agreed<T>(
        &self,
        what: &str,
        check: impl Fn(&[SlotRange]) -> Result<T, String>,
    ) -> T {
        let live = self.live_ports();
        poll_until(what, SETTLE_TIMEOUT, async || {
            let view = agreed_view(&live).await?;
            check(&view)
        })
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "redis cluster configuration and logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port from [`reserved_port`](crate::helpers::reserved_port) whose bus port (port + 10000)
/// is also below the ephemeral range and free, and neither of which is in `taken` (a port one
/// node listens on may be another's bus port otherwise).
fn cluster_port(taken: &BTreeSet<u16>) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    // reserved_port hands out each port below the ephemeral range once, so twice that many
    // tries see every one of them.
    for _ in 0..2 * ephemeral_low {
        let port = crate::helpers::reserved_port();
        let bus = u32::from(port) + u32::from(BUS_OFFSET);
        if bus < ephemeral_low
            && !taken.contains(&port)
            && !taken.contains(&(port + BUS_OFFSET))
            && std::net::TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port p with p + {BUS_OFFSET} free below the ephemeral range");
}

/// Runs `redis-cli` with `args`; returns its standard output.
///
/// # Panics
/// When it cannot be started or exits unsuccessfully; the message holds its output.
async fn run_redis_cli(args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli is installed (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "redis-cli {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One command on one node, on a fresh connection, within [`QUERY_TIMEOUT`].
async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async::<T>(&mut connection).await
    };
    match tokio::time::timeout(QUERY_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {QUERY_TIMEOUT:?}")),
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Ok`, panicking with `what` and the
/// last error after `timeout`.
async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// The slots, if every node on `ports` reports `cluster_state:ok` and the same slots covering
/// all 16384.
async fn agreed_view(ports: &[u16]) -> Result<Vec<SlotRange>, String> {
    let mut agreed: Option<(u16, Vec<SlotRange>)> = None;
    for &port in ports {
        let info: String = query(port, &["CLUSTER", "INFO"]).await?;
        if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
            return Err(format!("node {port}: cluster_state is not ok"));
        }
        let view = slots_seen_by(port).await?;
        match &agreed {
            None => agreed = Some((port, view)),
            Some((first, first_view)) if *first_view != view => {
                return Err(format!(
                    "nodes disagree: {first} sees {first_view:?}, {port} sees {view:?}"
                ));
            }
            Some(_) => {}
        }
    }
    let (_, view) = agreed.ok_or("no live node")?;
    let covered: u32 = view
        .iter()
        .map(|range| u32::from(range.end) - u32::from(range.start) + 1)
        .sum();
    if covered == SLOTS {
        Ok(view)
    } else {
        Err(format!("{covered} of {SLOTS} slots covered: {view:?}"))
    }
}

/// `CLUSTER SLOTS` from the node on `port`, sorted by first slot.
async fn slots_seen_by(port: u16) -> Result<Vec<SlotRange>, String> {
    let reply: Value = query(port, &["CLUSTER", "SLOTS"]).await?;
    let malformed = || format!("node {port}: unexpected CLUSTER SLOTS reply {reply:?}");
    let Value::Array(entries) = &reply else {
        return Err(malformed());
    };
    let mut view = Vec::with_capacity(entries.len());
    for entry in entries {
        // [start, end, [ip, port, id, …] of the primary, then one such array per replica]
        let Value::Array(fields) = entry else {
            return Err(malformed());
        };
        let number = |value: &Value| match value {
            Value::Int(n) => u16::try_from(*n).ok(),
            _ => None,
        };
        let node_port = |value: &Value| match value {
            Value::Array(node) => node.get(1).and_then(number),
            _ => None,
        };
        let (Some(start), Some(end), Some(primary)) = (
            fields.first().and_then(number),
            fields.get(1).and_then(number),
            fields.get(2).and_then(node_port),
        ) else {
            return Err(malformed());
        };
        let mut replicas = fields[3..]
            .iter()
            .map(node_port)
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(malformed)?;
        replicas.sort_unstable();
        view.push(SlotRange {
            start,
            end,
            primary,
            replicas,
        });
    }
    view.sort_by_key(|range| range.start);
    Ok(view)
}

fn range_of(view: &[SlotRange], slot: u16) -> Option<&SlotRange> {
    view.iter()
        .find(|range| (range.start..=range.end).contains(&slot))
}

/// Whether `port` is a primary or a live replica in `view`.
fn serves(view: &[SlotRange], port: u16) -> bool {
    view.iter()
        .any(|range| range.primary == port || range.replicas.contains(&port))
}

/// The `calls=` of `cmdstat_<command>:calls=…,usec=…` in `INFO commandstats`, or 0.
fn commandstats_calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{}:", command.to_lowercase());
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
        })
        .map_or(0, |calls| {
            calls
                .parse()
                .unwrap_or_else(|_| panic!("a number of calls in {info:?}"))
        })
}

#[tokio::test]
async fn a_test_cluster_has_three_primaries_and_survives_a_primary_kill() {
    let mut cluster = RedisCluster::start().await;
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "three primaries: {primaries:?}");
    assert_eq!(cluster.url().split(',').count(), 6, "six seeds in the URL");

    let slot = cluster.key_slot("{a}x").await;
    let primary = cluster.primary_for_slot(slot).await;
    let replica = cluster.replicas_for_slot(slot).await[0];
    // Through a node that does not own the slot, so the write follows a redirect.
    let elsewhere = *primaries.iter().find(|&&port| port != primary).unwrap();
    assert_eq!(cluster.cli(elsewhere, &["SET", "{a}x", "1"]).await, "OK");
    // Replication is asynchronous: kill the primary only once its replica has the key.
    poll_until(
        "the replica has the key",
        SETTLE_TIMEOUT,
        async || match cluster.command_on::<u64>(replica, &["DBSIZE"]).await {
            1 => Ok(()),
            keys => Err(format!("{keys} keys")),
        },
    )
    .await;

    cluster.kill(primary);
    let new_primary = cluster.wait_for_failover(slot).await;
    assert_eq!(new_primary, replica, "the slot's replica took over");
    assert_eq!(cluster.cli(elsewhere, &["GET", "{a}x"]).await, "1");

    cluster.restart(primary).await;
    assert_eq!(
        cluster.replicas_for_slot(slot).await,
        [primary],
        "the old primary rejoined as its successor's replica"
    );
}

#[tokio::test]
async fn a_test_cluster_reshards_and_counts_commands_per_node() {
    let cluster = RedisCluster::start().await;
    let (first, last) = (
        cluster.primary_for_slot(0).await,
        cluster.primary_for_slot(16_383).await,
    );
    cluster.reshard(first, last, 100).await;
    // redis-cli moves a source's lowest slots first.
    assert_eq!(cluster.primary_for_slot(0).await, last);
    assert_eq!(cluster.primary_for_slot(99).await, last);
    assert_eq!(cluster.primary_for_slot(100).await, first);

    assert_eq!(cluster.info_commandstats_calls(first, "eval").await, 0);
    for _ in 0..3 {
        let one: i64 = cluster.command_on(first, &["EVAL", "return 1", "0"]).await;
        assert_eq!(one, 1);
    }
    assert_eq!(cluster.info_commandstats_calls(first, "eval").await, 3);
    assert_eq!(cluster.ports().len(), 6);
}
