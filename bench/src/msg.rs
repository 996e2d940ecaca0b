//! What the coordinator and its workers say to each other: one JSON object a line, over a
//! child's stdin/stdout (`--processes N`) or over in-process channels (one process).
//!
//! The coordinator sends a [`Setup`], then [`Command`]s one at a time to every worker and
//! waits for each worker's [`Reply`] before the next; every figure a worker reports is summed
//! (or merged) by the coordinator.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::histogram::Sparse;
use crate::http::Node;
use crate::layout::Layout;

/// Which wire protocol the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// confab's (and the koa peer's): JSON text frames on `/ws/chat?room=R`.
    Confab,
    /// Socket.IO 4 over a WebSocket (`/socket.io/?EIO=4&transport=websocket&room=R`).
    Socketio,
}

/// Which tokio runtime a generator process runs its sockets on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// Every socket on one thread (the lean default: one core per process).
    CurrentThread,
    /// tokio's work-stealing pool, one thread per core.
    MultiThread,
}

/// Everything a worker needs to know, sent once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    /// This worker's process number (0-based).
    pub index: u32,
    /// The run's random id, in room names, user names and tags.
    pub run: u32,
    /// The wire protocol.
    pub protocol: Protocol,
    /// The server nodes.
    pub nodes: Vec<Node>,
    /// Local addresses to connect from (empty: the kernel picks).
    pub sources: Vec<IpAddr>,
    /// Who is where.
    pub layout: Layout,
    /// Chat message size in bytes.
    pub size: usize,
    /// Sign-ins in flight at once.
    pub signin_concurrency: u32,
    /// Longest a socket may take from connect to its `list`, milliseconds.
    pub connect_timeout_ms: u64,
    /// The runtime to run on.
    pub runtime: RuntimeKind,
    /// Print progress on stderr.
    pub progress: bool,
    /// `join` scenario: how many users every socket must come to know.
    pub join_target: Option<u32>,
}

/// One instruction from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Sign every client of this worker in.
    SignIn,
    /// Open every client's socket, at most `concurrency` handshakes (up to the `list`) at a
    /// time, starting at `start_ns` (Unix ns).
    Connect {
        /// Sockets opening at once (1: one after another).
        concurrency: u32,
        /// When to start.
        start_ns: u64,
    },
    /// `join` scenario: wait until every socket knows every user, or `timeout_ms`.
    WaitJoins {
        /// How long to wait at most.
        timeout_ms: u64,
    },
    /// Send step `step` at `rate` messages a second in total (all workers together), from
    /// `start_ns` to `end_ns`.
    Step {
        /// The step number, carried in every message's tag.
        step: u32,
        /// Total messages a second.
        rate: f64,
        /// Start, Unix ns.
        start_ns: u64,
        /// End, Unix ns.
        end_ns: u64,
    },
    /// Wait until this worker's sockets received `expected` deliveries of `step`, or
    /// `deadline_ns`; then report the step.
    Drain {
        /// The step.
        step: u32,
        /// Deliveries this worker's sockets should receive.
        expected: u64,
        /// When to stop waiting, Unix ns.
        deadline_ns: u64,
    },
    /// Report open sockets and counters.
    Status,
    /// Close every socket and end.
    Quit,
}

/// Counters over the life of a worker; a step's figures are the difference of two snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// WebSocket frames received (all kinds).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// `chat`/`join`/`left` frames whose id was below the socket's last id.
    pub out_of_order: u64,
    /// `chat`/`join`/`left` frames whose id equalled the socket's last id.
    pub duplicates: u64,
    /// Chat of this run that arrived after its step was reported.
    pub late: u64,
    /// Chat without this run's tag.
    pub foreign: u64,
    /// `error` frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Sockets that ended after their `list`, by close code (1006: no close frame).
    pub closes: BTreeMap<u16, u64>,
    /// `{"type":"typing"}` commands sent (`--typing-fraction`; left out of the JSON when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub typing_sent: u64,
    /// `typing` frames received (id 0, never stored): not deliveries, not in the id order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub typing_received: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counters {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Self) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.out_of_order += other.out_of_order;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.foreign += other.foreign;
        self.typing_sent += other.typing_sent;
        self.typing_received += other.typing_received;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        for (code, n) in &other.closes {
            *self.closes.entry(*code).or_default() += n;
        }
    }

    /// What grew from `before` to `self`.
    pub fn since(&self, before: &Self) -> Self {
        let mut errors = self.errors.clone();
        for (code, n) in &before.errors {
            if let Some(now) = errors.get_mut(code) {
                *now -= (*n).min(*now);
            }
        }
        errors.retain(|_, n| *n > 0);
        let mut closes = self.closes.clone();
        for (code, n) in &before.closes {
            if let Some(now) = closes.get_mut(code) {
                *now -= (*n).min(*now);
            }
        }
        closes.retain(|_, n| *n > 0);
        Self {
            frames: self.frames.saturating_sub(before.frames),
            bytes: self.bytes.saturating_sub(before.bytes),
            out_of_order: self.out_of_order.saturating_sub(before.out_of_order),
            duplicates: self.duplicates.saturating_sub(before.duplicates),
            late: self.late.saturating_sub(before.late),
            foreign: self.foreign.saturating_sub(before.foreign),
            typing_sent: self.typing_sent.saturating_sub(before.typing_sent),
            typing_received: self.typing_received.saturating_sub(before.typing_received),
            errors,
            closes,
        }
    }

    /// `error` frames with code `code`.
    pub fn error(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

/// A worker's answer to one [`Command`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// After [`Command::SignIn`].
    SignedIn {
        /// Users signed in.
        ok: u32,
        /// Failures by reason.
        errors: BTreeMap<String, u32>,
    },
    /// After [`Command::Connect`].
    Connected {
        /// Sockets that got their `list`.
        connected: u32,
        /// Failures by reason.
        errors: BTreeMap<String, u32>,
        /// `(room, sockets of this worker in it)`.
        rooms: Vec<(u32, u32)>,
        /// Connect → `list`, microseconds.
        latency: Sparse,
        /// When the last socket got its `list`, Unix ns.
        last_ready_ns: u64,
    },
    /// After [`Command::WaitJoins`].
    Joins {
        /// Sockets that saw every user.
        complete: u32,
        /// Connected sockets that did not.
        incomplete: u32,
        /// When the last of them saw the last user, Unix ns.
        done_ns: u64,
    },
    /// After [`Command::Step`], once its sending is over.
    Sent {
        /// Messages sent.
        sent: u64,
        /// `(room, messages sent to it)`.
        by_room: Vec<(u32, u64)>,
        /// How late sends left against the schedule, microseconds.
        lag: Sparse,
    },
    /// After [`Command::Drain`].
    Drained {
        /// Deliveries of the step received (duplicates not counted).
        received: u64,
        /// End-to-end latency of each, microseconds.
        latency: Sparse,
        /// With typists: the same latency split by sender, chats from typists' sockets and
        /// from the others.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latency_by_typing: Option<(Sparse, Sparse)>,
        /// Counters grown since the step started.
        counters: Counters,
        /// This process's CPU time over the step (send + drain), ns.
        cpu_ns: u64,
    },
    /// After [`Command::Status`].
    Status {
        /// Sockets open now.
        open: u32,
        /// Counters since the start.
        counters: Counters,
        /// This process's CPU time so far, ns.
        cpu_ns: u64,
    },
    /// After [`Command::Quit`].
    Bye {
        /// This process's CPU time over its life, ns.
        cpu_ns: u64,
    },
    /// The worker cannot go on.
    Failed {
        /// Why.
        error: String,
    },
}
