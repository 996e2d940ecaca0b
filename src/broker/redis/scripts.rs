//! The Lua scripts of the Redis broker, and how they are called.
//!
//! Every script is the shared prelude (`lua/prelude.lua`: key names, id allocation, `emit`,
//! presence release) followed by its own body. `redis::Script` calls them with `EVALSHA` and
//! reloads them on `NOSCRIPT`, so a Redis that restarted empty needs no special care.

use deadpool_redis::redis::{FromRedisValue, Script, ScriptInvocation};
use serde_json::value::RawValue;

use crate::protocol::{now_ms, now_us};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// The key prefix of everything confab keeps in Redis (also spelled out in the prelude).
pub const KEY_PREFIX: &str = "confab:";
/// The pub/sub channel every frame of every room is published on.
pub const EVENTS_CHANNEL: &str = "confab:events";
/// The stream that keeps recent frames for gap repair, keyed `<id>-0`.
pub const LOG_KEY: &str = "confab:log";
/// The newest id given out.
pub const SEQ_KEY: &str = "confab:seq";
/// The first id of the current sequence (ids below it were never given out by this Redis).
pub const SEQ_START_KEY: &str = "confab:seq_start";

/// The compiled scripts. One set per broker.
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) sweep: Script,
    pub(super) heartbeat: Script,
    pub(super) reap: Script,
    pub(super) deregister: Script,
    pub(super) resync: Script,
}

impl Scripts {
    /// Prepends the prelude to each script body.
    pub(super) fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Self {
            publish: script(include_str!("lua/publish.lua")),
            join: script(include_str!("lua/join.lua")),
            leave: script(include_str!("lua/leave.lua")),
            sweep: script(include_str!("lua/sweep.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            reap: script(include_str!("lua/reap.lua")),
            deregister: script(include_str!("lua/deregister.lua")),
            resync: script(include_str!("lua/resync.lua")),
        }
    }
}

/// The arguments every script takes first (`ARGV[1..7]` in the prelude).
#[derive(Debug, Clone, Copy)]
pub(super) struct Common {
    /// The highest id this node has seen: no new id is given out at or below it.
    pub(super) floor: u64,
    /// `CONFAB_HISTORY`.
    pub(super) history_len: usize,
    /// Frames kept in the log.
    pub(super) log_len: usize,
    /// How long an idle room keeps its history, in ms.
    pub(super) retention_ms: u64,
    /// `CONFAB_LEAVE_GRACE_MS`.
    pub(super) grace_ms: u64,
}

impl Common {
    /// Starts a call of `script` with the common arguments, stamped with this node's clock.
    pub(super) fn invoke<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .arg(self.floor)
            .arg(now_us())
            .arg(now_ms())
            .arg(self.history_len)
            .arg(self.log_len)
            .arg(self.retention_ms)
            .arg(self.grace_ms);
        invocation
    }
}

/// What the join script returns: the newest id, the room's history, the users online.
pub(super) struct JoinReply {
    /// The newest id given out when the snapshot was taken.
    pub(super) seen_up_to: u64,
    /// The room's history frames, oldest first.
    pub(super) history: Vec<String>,
    /// The online users' JSON.
    pub(super) members: Vec<Box<RawValue>>,
}

impl FromRedisValue for JoinReply {
    fn from_redis_value(
        value: deadpool_redis::redis::Value,
    ) -> Result<Self, deadpool_redis::redis::ParsingError> {
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
