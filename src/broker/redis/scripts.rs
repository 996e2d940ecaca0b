//! The Lua scripts of the Redis broker, and how they are called.
//!
//! A script that makes frames runs on one partition's slot: it is `lua/emit.lua` (the
//! partition's id counter, log and channel, and `emit`), for presence scripts followed by
//! `lua/presence.lua` (room keys, departures, releases), for those that read or change
//! retained messages by `lua/chats.lua` (the room's `chats` list), then its own body. The
//! publish script, the hot path, is the exception: it is written out flat and brings in
//! `emit.lua` and `chats.lua` only on the rare paths that need them, since Redis runs a
//! script's whole text on every call. Every key it touches carries the partition's hash tag. The registry scripts (`heartbeat`, `reap`) run
//! on the `{nodes}` slot. `redis::Script` calls them with `EVALSHA` and loads them on
//! `NOSCRIPT`, so a Redis that restarted empty (or a new cluster primary) needs no special care.
//!
//! What is the same for every call — the node's settings, the publish command — is written
//! into the scripts' text when the broker starts ([`ScriptSettings`]), so a call carries only
//! what changes and the script parses no more than it must: a chat costs one `EVALSHA` of
//! four keys and four arguments, and n chats that waited for their partition's call go in
//! one of 3 + n keys and 3 + n arguments (`publisher.rs`), one more when a chat renews its
//! room's expiry (once an hour per room and node). Each argument costs Redis a string and a
//! slot of the script's `ARGV` table on every call, and the fifth a resize of that table, so
//! none is passed that a script can work out: the partition number is the node's newest id
//! of the partition modulo 128, milliseconds are microseconds over 1,000.

use std::time::Duration;

use redis::{FromRedisValue, Script, ScriptInvocation};
use serde_json::value::RawValue;

use super::keys::{ID_STEP, Partition, registry};
use crate::protocol::now_us;

const EMIT: &str = include_str!("lua/emit.lua");
const PRESENCE: &str = include_str!("lua/presence.lua");
const CHATS: &str = include_str!("lua/chats.lua");

/// The compiled scripts. One set per broker.
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) amend: Script,
    pub(super) scrollback: Script,
    pub(super) retained: Script,
    pub(super) typing: Script,
    pub(super) kick: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) sweep: Script,
    pub(super) release_node: Script,
    pub(super) resync: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
}

/// The settings written into the scripts' text.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScriptSettings {
    /// `CONFAB_HISTORY`.
    pub(super) history_len: usize,
    /// Frames kept in each partition's log.
    pub(super) log_len: usize,
    /// How long an idle room keeps its lists of frames.
    pub(super) retention: Duration,
    /// How often a node renews a room's expiry while it sends chats there (`expiry.rs`).
    pub(super) renew_every: Duration,
    /// `CONFAB_RETAIN_MESSAGES`.
    pub(super) retain_len: usize,
    /// `CONFAB_RETAIN_DAYS`, as a duration.
    pub(super) retain_for: Duration,
    /// `CONFAB_LEAVE_GRACE_MS`.
    pub(super) grace: Duration,
    /// `PUBLISH` on one Redis, `SPUBLISH` on a Redis Cluster.
    pub(super) publish_command: &'static str,
}

impl ScriptSettings {
    /// `template` with its `{{setting}}` placeholders filled in.
    fn fill(&self, template: &str) -> String {
        template
            .replace("{{history_len}}", &self.history_len.to_string())
            .replace("{{log_len}}", &self.log_len.to_string())
            .replace("{{retention_ms}}", &self.retention.as_millis().to_string())
            .replace(
                "{{renew_every_ms}}",
                &self.renew_every.as_millis().to_string(),
            )
            .replace("{{grace_ms}}", &self.grace.as_millis().to_string())
            .replace("{{retain_len}}", &self.retain_len.to_string())
            .replace("{{retain_ms}}", &self.retain_for.as_millis().to_string())
            .replace("{{publish}}", self.publish_command)
    }
}

impl Scripts {
    /// Puts each script together from its parts, with `settings` written in.
    pub(super) fn new(settings: &ScriptSettings) -> Self {
        let script = |parts: &[&str]| Script::new(&settings.fill(&parts.join("\n")));
        let presence = |body: &str| script(&[EMIT, PRESENCE, body]);
        Self {
            // The hot path, flat: its rare paths bring in the parts they need (publish.lua).
            publish: script(&[&include_str!("lua/publish.lua")
                .replace("{{emit}}", EMIT)
                .replace("{{chats}}", CHATS)]),
            amend: script(&[EMIT, CHATS, include_str!("lua/amend.lua")]),
            scrollback: script(&[CHATS, include_str!("lua/scrollback.lua")]),
            retained: script(&[CHATS, include_str!("lua/retained.lua")]),
            typing: Script::new(&settings.fill(include_str!("lua/typing.lua"))),
            kick: script(&[EMIT, include_str!("lua/kick.lua")]),
            join: script(&[EMIT, PRESENCE, CHATS, include_str!("lua/join.lua")]),
            leave: presence(include_str!("lua/leave.lua")),
            sweep: presence(include_str!("lua/sweep.lua")),
            release_node: presence(include_str!("lua/release_node.lua")),
            resync: presence(include_str!("lua/resync.lua")),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
        }
    }
}

/// One partition's fixed keys and channel, built once per broker rather than per call.
#[derive(Debug)]
pub(super) struct PartitionKeys {
    pub(super) partition: Partition,
    pub(super) prefix: String,
    pub(super) seq: String,
    pub(super) seq_start: String,
    pub(super) log: String,
    pub(super) leaving: String,
    pub(super) channel: String,
}

impl PartitionKeys {
    /// The keys of every partition, indexed by partition number.
    pub(super) fn all() -> Vec<Self> {
        Partition::all()
            .map(|partition| Self {
                partition,
                prefix: partition.prefix(),
                seq: partition.seq_key(),
                seq_start: partition.seq_start_key(),
                log: partition.log_key(),
                leaving: partition.leaving_key(),
                channel: partition.channel(),
            })
            .collect()
    }
}

/// What every partition script takes first (`KEYS[1..3]`, `ARGV[1..3]` in `emit.lua`;
/// `KEYS[4]`, `ARGV[4]` in `presence.lua`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Common<'a> {
    /// The partition's keys.
    pub(super) keys: &'a PartitionKeys,
    /// The highest id this node has seen in the partition: no new id is given out at or
    /// below it.
    pub(super) floor: u64,
}

impl Common<'_> {
    /// Starts a call of a partition `script` with the common keys and arguments, stamped
    /// with this node's clock.
    pub(super) fn invoke<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let keys = self.keys;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&keys.seq)
            .key(&keys.seq_start)
            .key(&keys.log)
            .arg(keys.partition.id(self.floor / ID_STEP))
            .arg(now_us())
            .arg(&keys.channel);
        invocation
    }

    /// Like [`Common::invoke`], for a presence script: `KEYS[4]` is the partition's
    /// departures, `ARGV[4]` its key prefix.
    pub(super) fn invoke_presence<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let mut invocation = self.invoke(script);
        invocation.key(&self.keys.leaving).arg(&self.keys.prefix);
        invocation
    }
}

/// Starts a call of the `heartbeat` script for `node`.
pub(super) fn heartbeat<'s>(scripts: &'s Scripts, node: &str) -> ScriptInvocation<'s> {
    let mut invocation = scripts.heartbeat.prepare_invoke();
    invocation
        .key(registry::NODES)
        .key(registry::alive(node))
        .key(registry::reaped(node))
        .key(registry::EPOCH)
        .key(registry::REAPING)
        .arg(node);
    invocation
}

/// Starts a call of the `reap` script by `node`.
pub(super) fn reap<'s>(scripts: &'s Scripts, node: &str) -> ScriptInvocation<'s> {
    let mut invocation = scripts.reap.prepare_invoke();
    invocation
        .key(registry::NODES)
        .key(registry::REAPING)
        .arg(node)
        .arg(registry::PREFIX);
    invocation
}

/// What the join script returns: the newest id, the room's history, the users online.
pub(super) struct JoinReply {
    /// The newest id given out in the room's partition when the snapshot was taken.
    pub(super) seen_up_to: u64,
    /// The room's history frames, oldest first.
    pub(super) history: Vec<String>,
    /// The online users' JSON.
    pub(super) members: Vec<Box<RawValue>>,
}

/// What the join script answers: the snapshot, or a refusal.
pub(super) enum JoinOutcome {
    /// The socket is counted; its snapshot.
    Joined(JoinReply),
    /// The user is banned from the room; nothing changed.
    Banned,
}

impl FromRedisValue for JoinOutcome {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        if let redis::Value::Array(items) = &value
            && let [redis::Value::BulkString(word)] = items.as_slice()
            && word.as_slice() == b"banned"
        {
            return Ok(Self::Banned);
        }
        JoinReply::from_redis_value(value).map(Self::Joined)
    }
}

impl FromRedisValue for JoinReply {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let (seen_up_to, history, members): (String, Vec<String>, Vec<String>) =
            FromRedisValue::from_redis_value(value)?;
        Ok(Self {
            seen_up_to: seen_up_to.parse().unwrap_or(0),
            history,
            // Members were written by confab from valid JSON; anything else is skipped.
            members: members
                .into_iter()
                .filter_map(|json| RawValue::from_string(json).ok())
                .collect(),
        })
    }
}
