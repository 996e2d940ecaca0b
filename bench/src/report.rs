//! What a run found: the [`Report`] written as JSON (`--json`), and its human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::histogram::Quantiles;
use crate::layout::Layout;
use crate::msg::{Counters, Protocol, RuntimeKind};
use crate::sys::ProcSample;

/// Every figure of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `fanout`, `ramp`, `connections`, `rooms` or `join`.
    pub scenario: String,
    /// The run's id (in room names, user names and tags), hex.
    pub run: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Server nodes.
    pub urls: Vec<String>,
    /// Local addresses clients connected from (empty: the kernel's choice).
    pub sources: Vec<String>,
    /// Generator processes.
    pub processes: u32,
    /// Generator runtime.
    pub runtime: RuntimeKind,
    /// Chat message size, bytes.
    pub message_bytes: usize,
    /// Who was where.
    pub layout: Layout,
    /// Sign-in phase.
    pub signin: Phase,
    /// Connect phase (upgrade until `list`).
    pub connect: Phase,
    /// Sending steps (one for `fanout` and `rooms`; every step for `ramp`).
    pub steps: Vec<Step>,
    /// `ramp` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampSummary>,
    /// `connections` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsSummary>,
    /// `join` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSummary>,
    /// Counters over the whole run (all frames, order, errors, closes).
    pub counters: Counters,
    /// The generator's CPU time over the whole run, all processes, seconds.
    pub generator_cpu_secs: f64,
    /// Watched server processes: first and last look.
    pub servers: Vec<ServerWatch>,
    /// Things that make the figures suspect (rate-limited sends, failed sockets, …).
    pub warnings: Vec<String>,
}

/// A sign-in or connect phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Done.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Failures by reason.
    pub errors: BTreeMap<String, u64>,
    /// Wall time, seconds.
    pub secs: f64,
    /// `ok` per second.
    pub per_sec: f64,
    /// Per-socket time from TCP connect to `list` (connect phase only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Quantiles>,
}

/// One sending step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    /// Its number.
    pub step: u32,
    /// Total messages a second asked for.
    pub rate: f64,
    /// Messages a second per sender.
    pub rate_per_sender: f64,
    /// Seconds of sending.
    pub secs: f64,
    /// Messages the schedule called for.
    pub planned: u64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected: each message × the sockets of its room.
    pub expected: u64,
    /// Deliveries received (duplicates not counted).
    pub received: u64,
    /// `expected − received`.
    pub lost: u64,
    /// `lost / expected`.
    pub loss: f64,
    /// `received / secs`.
    pub deliveries_per_sec: f64,
    /// End-to-end latency, send to receipt.
    pub latency_ms: Quantiles,
    /// With typists (`--typing-fraction`): the latency of chats sent by typists' sockets
    /// (`v=2`, their chat queued beside their `typing`)…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typists_latency_ms: Option<Quantiles>,
    /// …and of chats from every other socket, in the same step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_latency_ms: Option<Quantiles>,
    /// How late sends left against the schedule (the generator's own lag).
    pub send_lag_ms: Quantiles,
    /// Frames whose id went backwards on a socket.
    pub out_of_order: u64,
    /// Frames that repeated a socket's last id.
    pub duplicates: u64,
    /// `error rate_limited` frames (a correct run has none).
    pub rate_limited: u64,
    /// Counters grown during the step (all workers).
    pub counters: Counters,
    /// Generator CPU over the step, all processes, seconds.
    pub generator_cpu_secs: f64,
    /// Generator CPU per delivery, microseconds.
    pub generator_cpu_us_per_delivery: f64,
    /// Watched servers' CPU over the step, seconds (when `--server-pid` is given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    /// Watched servers' CPU per delivery, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Watched servers' RSS after the step, bytes (summed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
    /// `ramp`: whether the step stayed within the loss and p99 limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Each `--redis` server's script calls and CPU over the step.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<crate::redis_info::RedisStep>,
}

/// What `ramp` concluded.
#[derive(Debug, Clone, Serialize)]
pub struct RampSummary {
    /// The highest deliveries/s of a step within the limits.
    pub sustained_deliveries_per_sec: f64,
    /// That step's number.
    pub best_step: Option<u32>,
    /// Why the ramp stopped.
    pub stop_reason: String,
    /// The limits.
    pub max_loss: f64,
    /// The p99 limit, milliseconds.
    pub max_p99_ms: f64,
}

/// What `connections` found.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsSummary {
    /// Sockets asked for.
    pub requested: u32,
    /// Sockets that got their `list`.
    pub connected: u64,
    /// Still open after the hold.
    pub still_open: u64,
    /// Seconds held.
    pub hold_secs: f64,
    /// Sockets per room.
    pub room_size: u32,
    /// Watched servers' RSS before sign-in, after connecting, after the hold (bytes, summed).
    pub server_rss_before: Option<u64>,
    /// After connecting.
    pub server_rss_connected: Option<u64>,
    /// After the hold.
    pub server_rss_after_hold: Option<u64>,
    /// `(RSS after the hold − RSS before) / still open`, bytes.
    pub server_rss_per_connection: Option<f64>,
    /// The generator's own RSS per connection is not measured here; see `generator_cpu_secs`.
    pub server_cpu_secs: Option<f64>,
}

/// What `join` found.
#[derive(Debug, Clone, Serialize)]
pub struct JoinSummary {
    /// Users.
    pub users: u32,
    /// Joining at once per process.
    pub concurrency: u32,
    /// From the first connect to the last socket's `list`, seconds.
    pub all_connected_secs: f64,
    /// From the first connect until every socket had seen every user, seconds.
    pub all_joins_seen_secs: Option<f64>,
    /// Sockets that saw every user.
    pub complete: u64,
    /// Connected sockets that did not, before the timeout.
    pub incomplete: u64,
}

/// One watched server process.
#[derive(Debug, Clone, Serialize)]
pub struct ServerWatch {
    /// Before the run.
    pub first: ProcSample,
    /// After it.
    pub last: ProcSample,
    /// CPU over the run, seconds.
    pub cpu_secs: f64,
}

/// A value's name as it appears on the command line and in the JSON.
fn name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn ms(q: &Quantiles) -> String {
    format!("{:.1}/{:.1}/{:.1}/{:.1}", q.p50, q.p90, q.p99, q.max)
}

fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn reasons(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{v}× {k}")).collect();
        format!(" ({})", list.join(", "))
    }
}

impl Report {
    /// The report as a human-readable table.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let l = &self.layout;
        let _ = writeln!(
            out,
            "confab-bench {} — run {}, protocol {}, {} node(s), {} process(es), {} runtime, {} B messages",
            self.scenario,
            self.run,
            name(&self.protocol),
            self.urls.len(),
            self.processes,
            name(&self.runtime),
            self.message_bytes
        );
        let _ = writeln!(
            out,
            "clients {} in {} room(s) of {}, senders {}{}",
            l.clients,
            l.rooms(),
            l.room_size.min(l.clients),
            l.senders,
            if l.typists > 0 {
                format!(", typists {} (v=2)", l.typists)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "sign-in   {} ok, {} failed in {:.3} s ({:.0}/s){}",
            self.signin.ok,
            self.signin.failed,
            self.signin.secs,
            self.signin.per_sec,
            reasons(&self.signin.errors)
        );
        let latency = self
            .connect
            .latency_ms
            .as_ref()
            .map(|q| {
                format!(
                    "; connect→list p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    q.p50, q.p99, q.max
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "connect   {} ok, {} failed in {:.3} s ({:.0}/s){latency}{}",
            self.connect.ok,
            self.connect.failed,
            self.connect.secs,
            self.connect.per_sec,
            reasons(&self.connect.errors)
        );
        if !self.steps.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:>4} {:>9} {:>7} {:>8} {:>10} {:>10} {:>8} {:>9} {:>25} {:>5} {:>5} {:>6} {:>8} {:>8} {:>4}",
                "step",
                "msg/s",
                "/sender",
                "sent",
                "expected",
                "received",
                "loss%",
                "deliv/s",
                "latency ms p50/p90/p99/max",
                "ooo",
                "dup",
                "rlim",
                "gen µs/d",
                "srv µs/d",
                "ok"
            );
            for s in &self.steps {
                let srv = s
                    .server_cpu_us_per_delivery
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
                let ok = match s.passed {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "{:>4} {:>9.1} {:>7.2} {:>8} {:>10} {:>10} {:>8.3} {:>9} {:>25} {:>5} {:>5} {:>6} {:>8.2} {:>8} {:>4}",
                    s.step,
                    s.rate,
                    s.rate_per_sender,
                    s.sent,
                    s.expected,
                    s.received,
                    s.loss * 100.0,
                    si(s.deliveries_per_sec),
                    ms(&s.latency_ms),
                    s.out_of_order,
                    s.duplicates,
                    s.rate_limited,
                    s.generator_cpu_us_per_delivery,
                    srv,
                    ok
                );
            }
            for s in self.steps.iter().filter(|s| !s.redis.is_empty()) {
                let per_message = |usec: f64| {
                    if s.sent == 0 {
                        0.0
                    } else {
                        usec / s.sent as f64
                    }
                };
                let servers: Vec<String> = s
                    .redis
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} scripts ({:.1} %), {:.2} µs each, {:.2} µs/msg in scripts, CPU {:.2} µs/msg",
                            r.address,
                            r.evalsha_calls,
                            r.evalsha_share * 100.0,
                            r.evalsha_us_per_call,
                            per_message(r.evalsha_usec as f64),
                            per_message(r.cpu_secs * 1e6)
                        )
                    })
                    .collect();
                let _ = writeln!(out, "step {} redis: {}", s.step, servers.join("; "));
            }
            for s in self
                .steps
                .iter()
                .filter(|s| s.counters.typing_sent + s.counters.typing_received > 0)
            {
                let c = &s.counters;
                let _ = writeln!(
                    out,
                    "step {} typing: {} typists sent {} typing commands; typing frames received {} ({:.2} per command; not deliveries)",
                    s.step,
                    l.typists,
                    c.typing_sent,
                    c.typing_received,
                    if c.typing_sent == 0 {
                        0.0
                    } else {
                        c.typing_received as f64 / c.typing_sent as f64
                    }
                );
                if let (Some(t), Some(o)) = (&s.typists_latency_ms, &s.others_latency_ms) {
                    let _ = writeln!(
                        out,
                        "step {} chat latency ms p50/p90/p99/max: from typists {} ({} deliveries), from the others {} ({})",
                        s.step,
                        ms(t),
                        t.count,
                        ms(o),
                        o.count
                    );
                }
            }
            if let Some(last) = self.steps.last() {
                let _ = writeln!(
                    out,
                    "last step: send lag p99 {:.1} ms, max {:.1} ms; generator CPU {:.2} s{}",
                    last.send_lag_ms.p99,
                    last.send_lag_ms.max,
                    last.generator_cpu_secs,
                    last.server_cpu_secs
                        .map(|s| format!("; server CPU {s:.2} s"))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(
                out,
                "\nramp: highest sustained {} deliveries/s (step {}), stopped: {}",
                si(ramp.sustained_deliveries_per_sec),
                ramp.best_step
                    .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                ramp.stop_reason
            );
        }
        if let Some(c) = &self.connections {
            let mib = |b: Option<u64>| {
                b.map_or_else(
                    || "-".to_owned(),
                    |b| format!("{:.1} MiB", b as f64 / 1048576.0),
                )
            };
            let _ = writeln!(
                out,
                "\nconnections: {} of {} up, {} still open after {:.0} s (rooms of {})",
                c.connected, c.requested, c.still_open, c.hold_secs, c.room_size
            );
            let _ = writeln!(
                out,
                "server RSS: before {}, connected {}, after hold {}; per connection {}",
                mib(c.server_rss_before),
                mib(c.server_rss_connected),
                mib(c.server_rss_after_hold),
                c.server_rss_per_connection.map_or_else(
                    || "- (give --server-pid)".to_owned(),
                    |b| format!("{:.1} KiB", b / 1024.0)
                )
            );
        }
        if let Some(j) = &self.join {
            let _ = writeln!(
                out,
                "\njoin: {} users ({} at a time): all connected in {:.3} s, every join seen by every socket in {} ({} complete, {} incomplete)",
                j.users,
                j.concurrency,
                j.all_connected_secs,
                j.all_joins_seen_secs
                    .map_or_else(|| "- (timed out)".to_owned(), |s| format!("{s:.3} s")),
                j.complete,
                j.incomplete
            );
        }
        let c = &self.counters;
        let _ = writeln!(
            out,
            "\nwhole run: {} frames, {:.1} MiB received; out-of-order {}, duplicates {}, late {}, foreign {}; errors {:?}; closes {:?}",
            c.frames,
            c.bytes as f64 / 1048576.0,
            c.out_of_order,
            c.duplicates,
            c.late,
            c.foreign,
            c.errors,
            c.closes
        );
        if l.typists > 0 || c.typing_sent + c.typing_received > 0 {
            let _ = writeln!(
                out,
                "typing: {} typists (v=2), {} typing commands sent, typing frames received {}",
                l.typists, c.typing_sent, c.typing_received
            );
        }
        let _ = writeln!(
            out,
            "generator CPU {:.2} s (all processes)",
            self.generator_cpu_secs
        );
        for s in &self.servers {
            let _ = writeln!(
                out,
                "server pid {}: CPU {:.2} s, RSS {:.1} → {:.1} MiB (peak {:.1} MiB)",
                s.first.pid,
                s.cpu_secs,
                s.first.rss_bytes as f64 / 1048576.0,
                s.last.rss_bytes as f64 / 1048576.0,
                s.last.hwm_bytes as f64 / 1048576.0
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "WARNING: {warning}");
        }
        out
    }
}
