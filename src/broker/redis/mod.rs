//! The Redis broker: cluster mode, any number of nodes sharing one Redis.
//!
//! - Rooms are spread over partitions ([`keys`]); every key of a room and its partition's
//!   channel share the partition's hash tag. Each partition has its own id counter, log and
//!   channel, and every frame is made by one Lua script on that partition's slot that takes
//!   the next id (`INCR`, the partition folded into the id), appends the frame to the
//!   partition's log and the room's history, and publishes it, atomically ([`scripts`]).
//! - Commands share one multiplexed connection: concurrent publishes are pipelined, one
//!   round trip each, with no pool checkout.
//! - Each node holds **one** pub/sub connection, subscribed only to the partitions its
//!   sockets are in ([`partition`], [`subscriber`]); it hands every frame to the hub in id
//!   order and repairs gaps from the partition's log, so a dropped subscription loses nothing.
//! - Presence lives in Redis (a set of online users per room, socket counts per room and per
//!   node and partition) and changes only inside scripts. Each node keeps its own sockets'
//!   counts too, so it can put Redis right after any failure ([`RedisBroker`]'s
//!   re-synchronisation), and renews a liveness key; the nodes reap a node whose key expired.
//!
//! `docs/redis.md` lists every key, its type and lifetime.

mod connection;
mod expiry;
pub mod keys;
mod partition;
mod publisher;
mod scripts;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::{FromRedisValue, PushInfo, ScriptInvocation};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use self::connection::{Commands, Target};
use self::expiry::ExpiryRenewals;
pub use self::expiry::RENEW_EVERY;
use self::keys::{Partition, registry};
pub use self::partition::LINGER;
use self::partition::PartitionTable;
use self::publisher::{Chat, Publisher};
use self::scripts::{Common, JoinOutcome, PartitionKeys, ScriptSettings, Scripts};
use super::{Amendment, Broker, BrokerError, ScrollbackPage, Snapshot, TYPING_INTERVAL};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{
    EventKind, Frame, RetainedChat, RoomName, event_body, frame_id, now_ms, typing_frame,
};
use crate::user::Identity;
use serde_json::value::RawValue;

/// How long any one Redis command may take before the node treats Redis as unreachable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node renews its liveness key.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(2);
/// How long a liveness key lives: a node silent this long is dead.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How often each node looks for dead nodes.
pub const REAP_PERIOD: Duration = Duration::from_secs(3);
/// How long a node must have been connected before it may declare others dead: after an
/// outage every live node needs a moment to renew its key.
pub const REAP_HOLDOFF: Duration = Duration::from_secs(12);
/// How often the maintenance task runs: departures this node made pending are announced at
/// the first tick after they fall due.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(250);
/// Every subscribed partition is swept once per this many ticks (once a second), for the
/// departures other nodes made pending and could not announce (they stopped or died).
const SWEEP_ROUNDS: usize = 4;
/// How often the maintenance task forgets the expiry renewals that are due again.
const RENEWALS_FORGOTTEN_EVERY: Duration = Duration::from_secs(60);
/// Frames kept in each partition's log for gap repair (a few seconds of a busy partition).
pub const LOG_LEN: usize = 1_000;
/// How long a room nobody writes to keeps its history, at least (`CONFAB_RETAIN_DAYS` when
/// longer).
pub const HISTORY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Sharded messages that may wait for the relay on a Redis Cluster; past that they are
/// dropped, and the relay repairs the gap from the partition's log.
const PUSH_QUEUE: usize = 16_384;
/// How long the marker saying a node was reaped is kept, so that node learns it on return.
const REAPED_MARKER_TTL: Duration = Duration::from_secs(600);
/// Most departures one sweep announces.
const SWEEP_BATCH: usize = 500;
/// Most due departures a join announces first.
const JOIN_SWEEP_BATCH: usize = 50;
/// What the leave script returns when the user's `left` is now pending.
const LEFT_PENDING: i64 = 2;

/// The cluster-mode broker. Dropping it stops its background tasks; [`Broker::shutdown`]
/// also takes the node out of Redis.
pub struct RedisBroker {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What the broker's tasks share.
struct Shared {
    node_id: String,
    /// Tells this process's liveness key from a previous one with the same node id.
    session: String,
    /// The Redis named by `CONFAB_REDIS_URL`.
    target: Target,
    /// Every command and script, multiplexed on one connection that reconnects by itself;
    /// set once Redis first answered.
    commands: OnceLock<Commands>,
    /// The scripts, with this node's settings written in; set once Redis first answered (one
    /// server or a cluster decides the publish command).
    scripts: OnceLock<Scripts>,
    /// Each partition's keys, by partition number.
    keys: Vec<PartitionKeys>,
    /// The partitions this node's sockets are in, and the ids seen in each.
    partitions: PartitionTable,
    /// When this node last renewed each room's expiry ([`expiry`]).
    renewals: ExpiryRenewals,
    /// Chats waiting for their partition's publish call ([`publisher`]).
    publisher: Publisher,
    hub: Arc<Hub>,
    metrics: Metrics,
    history_len: usize,
    /// `CONFAB_RETAIN_MESSAGES`.
    retain_messages: usize,
    /// `CONFAB_RETAIN_DAYS`, as a duration.
    retain_for: Duration,
    leave_grace: Duration,
    /// The pub/sub connection is up.
    subscribed: AtomicBool,
    /// Heartbeats that succeeded; the first one may take over an earlier process's key.
    heartbeats: AtomicU64,
    /// The last command succeeded.
    commands_ok: AtomicBool,
    /// What `broker_up` and the logs last said, to log changes rather than every retry.
    reported_up: AtomicBool,
    /// The node has been up once (connected, subscribed, presence registered): from then on
    /// it is ready, through Redis outages too (see [`Broker::is_ready`]).
    started: AtomicBool,
    local: Mutex<LocalPresence>,
    /// Redis may not match `local`: re-synchronise at the next chance.
    resync_needed: AtomicBool,
    /// The next re-synchronisation covers every partition, not only those this process
    /// touched: an earlier process with this node id may have left sockets anywhere.
    resync_everywhere: AtomicBool,
    /// When the next re-synchronisation must give Redis back the departures it held pending,
    /// because it lost its data.
    restore_pending: AtomicBool,
    /// When the next re-synchronisation must announce `join` for users Redis lost, because
    /// other nodes declared this one dead and announced them `left`.
    announce_returns: AtomicBool,
    /// The Redis data set this node last synchronised with; a new one means Redis lost its data.
    epoch: Mutex<Option<String>>,
    /// Since when commands have kept succeeding.
    healthy_since: Mutex<Option<Instant>>,
}

/// This node's own sockets by room and user: the truth Redis is re-synchronised to.
#[derive(Default)]
struct LocalPresence {
    entries: HashMap<(RoomName, String), LocalEntry>,
    /// Users whose last socket here closed while Redis could not be told.
    departed: HashMap<(RoomName, String), LocalEntry>,
    /// Users whose `left` Redis holds pending (their grace running), until it is due: if Redis
    /// loses its data meanwhile, the re-synchronisation puts them back so `left` still comes.
    pending_leaves: HashMap<(RoomName, String), (Identity, Instant)>,
    /// The partitions this process has written presence to (bit per partition).
    touched: u128,
    /// Bumped on every change, so a re-synchronisation can tell it raced one.
    version: u64,
}

#[derive(Clone)]
struct LocalEntry {
    sockets: u32,
    identity: Identity,
}

impl RedisBroker {
    /// Starts connecting to the Redis at `url` (one server, or a comma-separated list of
    /// cluster seeds), then the subscription and maintenance tasks. Redis need not be up yet:
    /// the node starts unready and keeps trying.
    ///
    /// # Errors
    /// When a URL cannot be used.
    pub async fn start(
        url: &SecretString,
        hub: Arc<Hub>,
        config: &Config,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let target = Target::parse(url)?;
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            session: format!("{:032x}", rand::random::<u128>()),
            target,
            commands: OnceLock::new(),
            scripts: OnceLock::new(),
            keys: PartitionKeys::all(),
            partitions: PartitionTable::new(),
            renewals: ExpiryRenewals::default(),
            publisher: Publisher::new(),
            hub,
            metrics,
            history_len: config.chat.history,
            retain_messages: config.chat.retain_messages,
            retain_for: config.chat.retain_for,
            leave_grace: config.chat.leave_grace,
            subscribed: AtomicBool::new(false),
            heartbeats: AtomicU64::new(0),
            commands_ok: AtomicBool::new(false),
            reported_up: AtomicBool::new(false),
            started: AtomicBool::new(false),
            local: Mutex::new(LocalPresence::default()),
            resync_needed: AtomicBool::new(true),
            resync_everywhere: AtomicBool::new(true),
            announce_returns: AtomicBool::new(false),
            restore_pending: AtomicBool::new(false),
            epoch: Mutex::new(None),
            healthy_since: Mutex::new(None),
        });
        shared.metrics.broker_up.set(0);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(run(shared.clone(), stop.clone()));
        tasks.close();
        Ok(Self {
            shared,
            stop,
            tasks,
        })
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Broker for RedisBroker {
    async fn publish(
        &self,
        room: &RoomName,
        user: &Identity,
        text: &str,
    ) -> Result<u64, BrokerError> {
        let partition = Partition::of(room);
        let shared = &self.shared;
        let now = Instant::now();
        // With nothing retained there is no `chats` list to keep alive.
        let renew = shared.retain_messages > 0 && shared.renewals.due(room, now);
        let chat = Chat {
            chats_key: partition.chats_key(room),
            body: event_body(EventKind::Chat, room, user.json(), text, now_ms()),
            renew,
        };
        let id = publisher::publish(shared, partition, chat).await?;
        if renew {
            shared.renewals.renewed(room, now);
        }
        Ok(id)
    }

    async fn typing(&self, room: &RoomName, user: &Identity) -> Result<(), BrokerError> {
        let partition = Partition::of(room);
        let shared = &self.shared;
        let frame = typing_frame(room, user.json(), now_ms());
        let mut call = shared.scripts()?.typing.prepare_invoke();
        call.key(partition.typing_key(room, user.id()))
            .arg(&shared.keys[partition.index()].channel)
            .arg(frame.text().as_str())
            .arg(TYPING_INTERVAL.as_millis() as u64);
        let _sent: i64 = shared.run(call).await?;
        Ok(())
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<Arc<RawValue>>, BrokerError> {
        let users = Partition::of(room).users_key(room);
        let members: Vec<String> = self
            .shared
            .query(redis::cmd("HVALS").arg(users).clone())
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|json| RawValue::from_string(json).ok())
            .map(Arc::from)
            .collect())
    }

    async fn kick(&self, room: &RoomName, user_id: &str, ban: Duration) -> Result<(), BrokerError> {
        let partition = Partition::of(room);
        let shared = &self.shared;
        let mut call = shared.common(partition).invoke(&shared.scripts()?.kick);
        call.key(partition.ban_key(room, user_id))
            .arg(kick_notice(room, user_id))
            .arg(ban.as_millis() as u64);
        let id: u64 = shared.run(call).await?;
        shared.partitions.saw(id);
        Ok(())
    }

    async fn retained(&self, room: &RoomName, id: u64) -> Result<Option<String>, BrokerError> {
        let shared = &self.shared;
        let mut call = shared.scripts()?.retained.prepare_invoke();
        call.key(Partition::of(room).chats_key(room)).arg(id);
        let found: Option<String> = shared.run(call).await?;
        let oldest_kept = shared.oldest_kept();
        Ok(found.filter(|frame| {
            RetainedChat::parse(frame).is_some_and(|chat| chat.ts() >= oldest_kept)
        }))
    }

    async fn amend(
        &self,
        room: &RoomName,
        change: &Amendment<'_>,
    ) -> Result<Option<u64>, BrokerError> {
        let partition = Partition::of(room);
        let shared = &self.shared;
        let mut call = shared.common(partition).invoke(&shared.scripts()?.amend);
        call.key(partition.chats_key(room))
            .key(partition.events_key(room))
            .arg(change.target)
            .arg(change.expected)
            .arg(change.replacement)
            .arg(change.event);
        let id: u64 = shared.run(call).await?;
        if id == 0 {
            return Ok(None);
        }
        shared.partitions.saw(id);
        Ok(Some(id))
    }

    async fn scrollback(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<ScrollbackPage, BrokerError> {
        let shared = &self.shared;
        let mut call = shared.scripts()?.scrollback.prepare_invoke();
        // One more than asked: whether it exists says if there is more.
        call.key(Partition::of(room).chats_key(room))
            .arg(before.map_or_else(String::new, |before| before.to_string()))
            .arg(limit + 1);
        let oldest_first: Vec<String> = shared.run(call).await?;
        let oldest_kept = shared.oldest_kept();
        // Those past their age are the oldest: what follows the last of them is fresh.
        let aged = oldest_first
            .iter()
            .rposition(|text| RetainedChat::parse(text).is_none_or(|chat| chat.ts() < oldest_kept))
            .map_or(0, |last| last + 1);
        let mut fresh: Vec<Frame> = oldest_first
            .into_iter()
            .skip(aged)
            .filter_map(|text| frame_id(&text).map(|id| Frame::new(id, text)))
            .collect();
        let more = fresh.len() > limit;
        fresh.drain(..fresh.len().saturating_sub(limit));
        Ok(ScrollbackPage {
            messages: fresh,
            more,
        })
    }

    async fn join(
        &self,
        room: &RoomName,
        user: &Identity,
        since: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        let shared = &self.shared;
        let partition = Partition::of(room);
        shared.partitions.acquire(partition);
        // Until the partition is subscribed, frames after the snapshot could be missed.
        if !shared
            .partitions
            .wait_ready(partition, COMMAND_TIMEOUT)
            .await
        {
            shared.partitions.release(partition);
            return Err(BrokerError::Starting);
        }
        // Counted here first: a re-synchronisation racing this join then keeps the socket.
        shared.local().add(room, user);
        let mut call = shared
            .common(partition)
            .invoke_presence(&shared.scripts()?.join);
        declare_room_keys(&mut call, partition, room, &shared.node_id);
        call.key(partition.ban_key(room, user.id()));
        call.arg(&shared.node_id)
            .arg(room.as_str())
            .arg(user.id())
            .arg(user.json().get())
            .arg(farewell(user))
            .arg(join_body(room, user))
            .arg(JOIN_SWEEP_BATCH);
        let outcome = shared.run(call).await;
        if let Ok(JoinOutcome::Banned) = outcome {
            shared.local().remove(room, user);
            shared.partitions.release(partition);
            return Err(BrokerError::Banned);
        }
        let reply = match outcome {
            Ok(JoinOutcome::Joined(reply)) => reply,
            Ok(JoinOutcome::Banned) => unreachable!("handled above"),
            Err(error) => {
                shared.local().remove(room, user);
                shared.partitions.release(partition);
                shared.resync_needed.store(true, Ordering::Release);
                return Err(error);
            }
        };
        shared.partitions.saw(reply.seen_up_to);
        let history = reply
            .history
            .into_iter()
            .filter_map(|text| frame_id(&text).map(|id| Frame::new(id, text)))
            .filter(|frame| frame.id() > since.unwrap_or(0))
            .collect();
        Ok(Snapshot {
            history,
            members: reply.members.into_iter().map(Arc::from).collect(),
            seen_up_to: reply.seen_up_to,
        })
    }

    async fn leave(&self, room: &RoomName, user: &Identity) {
        let shared = &self.shared;
        let partition = Partition::of(room);
        shared.local().remove(room, user);
        shared.partitions.release(partition);
        let outcome = match shared.scripts() {
            Ok(scripts) => {
                let mut call = shared.common(partition).invoke_presence(&scripts.leave);
                declare_room_keys(&mut call, partition, room, &shared.node_id);
                call.arg(&shared.node_id).arg(room.as_str()).arg(user.id());
                shared.run::<i64>(call).await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(LEFT_PENDING) => {
                shared
                    .local()
                    .note_pending_leave(room, user, Instant::now() + shared.leave_grace)
            }
            Ok(_) => {}
            Err(error) => {
                // Redis will be put right from `local` when it answers again; meanwhile
                // remember that this user may need a `left` nobody could announce.
                shared.local().mark_departed(room, user);
                shared.resync_needed.store(true, Ordering::Release);
                debug!(%error, room.id = %room, "cannot record a socket's leave; will re-synchronise");
            }
        }
    }

    /// Ready once the node first connected, subscribed and registered its presence. A Redis
    /// outage after that does not make it unready: every node shares the Redis, and taking
    /// them all out of the load balancer at once would turn "no new joins" into "no pages, no
    /// reconnects". The outage shows in `confab_broker_up` and the logs.
    fn is_ready(&self) -> bool {
        self.shared.started.load(Ordering::Acquire)
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
        match self.shared.deregister().await {
            Ok(released) => info!(released, "left the cluster"),
            Err(error) => {
                warn!(%error, "cannot deregister from Redis; other nodes will reap this node")
            }
        }
    }
}

impl Shared {
    fn local(&self) -> MutexGuard<'_, LocalPresence> {
        // Never held across an await, nor while anything can panic.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The common arguments of a script on `partition`'s slot.
    fn common(&self, partition: Partition) -> Common<'_> {
        Common {
            keys: &self.keys[partition.index()],
            floor: self.partitions.floor(partition),
        }
    }

    /// The scripts, once Redis first answered (which decides the publish command).
    fn scripts(&self) -> Result<&Scripts, BrokerError> {
        self.scripts.get().ok_or(BrokerError::Starting)
    }

    /// The command connection, once Redis first answered.
    fn commands(&self) -> Option<&Commands> {
        self.commands.get()
    }

    /// Runs a script within [`COMMAND_TIMEOUT`], and notes whether Redis answered.
    async fn run<T: FromRedisValue>(&self, call: ScriptInvocation<'_>) -> Result<T, BrokerError> {
        self.on_connection(async |mut connection| call.invoke_async(&mut connection).await)
            .await
    }

    /// Runs one command, like [`Shared::run`].
    async fn query<T: FromRedisValue>(&self, command: redis::Cmd) -> Result<T, BrokerError> {
        self.on_connection(async |mut connection| command.query_async(&mut connection).await)
            .await
    }

    /// Runs `request` on the command connection within [`COMMAND_TIMEOUT`], and notes whether
    /// Redis answered.
    async fn on_connection<T>(
        &self,
        request: impl AsyncFnOnce(Commands) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let Some(connection) = self.commands() else {
            return Err(BrokerError::Starting);
        };
        let result = tokio::time::timeout(COMMAND_TIMEOUT, request(connection.clone()))
            .await
            .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))
            .and_then(|result| result.map_err(BrokerError::from));
        self.note_commands(result.is_ok());
        result
    }

    fn note_commands(&self, ok: bool) {
        self.commands_ok.store(ok, Ordering::Release);
        if !ok {
            // Whatever failed may have left this node's presence in Redis half-written, or
            // Redis may be restarting empty: put it right as soon as Redis answers.
            self.resync_needed.store(true, Ordering::Release);
        }
        let mut healthy_since = self
            .healthy_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match (ok, healthy_since.is_some()) {
            (true, false) => *healthy_since = Some(Instant::now()),
            (false, true) => *healthy_since = None,
            _ => {}
        }
        drop(healthy_since);
        self.report_up();
    }

    fn note_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Release);
        if !subscribed {
            // A lost subscription may be Redis restarting empty; the next heartbeat tells,
            // and until this node's presence is known to be there it does not claim ready.
            self.resync_needed.store(true, Ordering::Release);
        }
        self.report_up();
    }

    /// Subscribed, answering, and holding this node's presence: ready to serve.
    fn is_up(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && self.commands_ok.load(Ordering::Acquire)
            && !self.resync_needed.load(Ordering::Acquire)
    }

    /// Updates `confab_broker_up` and logs when it changes.
    fn report_up(&self) {
        let up = self.is_up();
        if up {
            self.started.store(true, Ordering::Release);
        }
        if self.reported_up.swap(up, Ordering::AcqRel) != up {
            self.metrics.broker_up.set(i64::from(up));
            let reachable =
                self.subscribed.load(Ordering::Acquire) && self.commands_ok.load(Ordering::Acquire);
            if up {
                info!("Redis is reachable; chat is available");
            } else if reachable {
                // Only this node's presence is being put right; Redis itself answers.
                info!("re-synchronising this node's presence with Redis; not ready until done");
            } else {
                warn!("Redis is unreachable; sends are refused until it answers");
            }
        }
    }

    /// The `ts` of the oldest retained message still kept now: readers skip older ones that
    /// the publish script has not trimmed yet.
    fn oldest_kept(&self) -> u64 {
        now_ms().saturating_sub(self.retain_for.as_millis() as u64)
    }

    fn healthy_for(&self) -> Duration {
        self.healthy_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Renews the liveness key, and re-synchronises when Redis lost this node's state.
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let fresh_epoch = format!("{:032x}", rand::random::<u128>());
        let mut call = scripts::heartbeat(self.scripts()?, &self.node_id);
        call.arg(&self.session)
            .arg(NODE_TTL.as_millis() as u64)
            .arg(&fresh_epoch);
        let (state, epoch): (String, String) = self.run(call).await?;
        let data_lost = {
            let mut known = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            let lost = known.as_ref().is_some_and(|known| *known != epoch);
            *known = Some(epoch);
            lost
        };
        if state == "reaping" {
            // Other nodes are still releasing this node's sockets: re-registering them now
            // would have them released again. Wait for the next heartbeat.
            self.resync_needed.store(true, Ordering::Release);
            return Ok(());
        }
        let first = self.heartbeats.fetch_add(1, Ordering::AcqRel) == 0;
        match state.as_str() {
            _ if data_lost => {
                warn!("Redis lost its data; re-registering this node's users");
                self.restore_pending.store(true, Ordering::Release);
                self.resync_needed.store(true, Ordering::Release);
            }
            "intact" => {}
            // At start-up these are an earlier process with this node id: take over.
            "foreign" | "reaped" if first => self.resync_needed.store(true, Ordering::Release),
            "reaped" => {
                warn!("other nodes declared this node dead; announcing its users again");
                self.announce_returns.store(true, Ordering::Release);
                self.resync_needed.store(true, Ordering::Release);
            }
            "foreign" => {
                error!(
                    node.id = %self.node_id,
                    "another live process uses this CONFAB_NODE_ID; presence in Redis is wrong until one stops"
                );
                self.resync_needed.store(true, Ordering::Release);
            }
            _ => self.resync_needed.store(true, Ordering::Release),
        }
        if self.resync_needed.load(Ordering::Acquire) {
            self.resync().await?;
        }
        Ok(())
    }

    /// Replaces what Redis holds for this node with what it really has, partition by
    /// partition.
    async fn resync(&self) -> Result<(), BrokerError> {
        let scripts = self.scripts()?;
        let announce = self.announce_returns.load(Ordering::Acquire);
        let everywhere = self.resync_everywhere.load(Ordering::Acquire);
        let (version, touched, entries) = {
            let local = self.local();
            // Users with sockets here, then those gone without Redis hearing it, and — when
            // Redis lost its data — those whose `left` it held pending: the latter two go in
            // with no sockets, so that Redis lists them again and announces their `left`.
            let restore = self.restore_pending.load(Ordering::Acquire);
            let pending = local
                .pending_leaves
                .iter()
                .filter(|_| restore)
                .map(|(key, (identity, _))| (key, identity));
            let gone = local
                .departed
                .iter()
                .map(|(key, entry)| (key, &entry.identity))
                .chain(pending)
                .filter(|(key, _)| !local.entries.contains_key(*key))
                .map(|((room, _), identity)| {
                    let entry = LocalEntry {
                        sockets: 0,
                        identity: identity.clone(),
                    };
                    (room.clone(), entry)
                });
            let entries: Vec<(RoomName, LocalEntry)> = local
                .entries
                .iter()
                .map(|((room, _), entry)| (room.clone(), entry.clone()))
                .chain(gone)
                .collect();
            (local.version, local.touched, entries)
        };
        let mut by_partition: HashMap<Partition, Vec<&(RoomName, LocalEntry)>> = HashMap::new();
        for entry in &entries {
            by_partition
                .entry(Partition::of(&entry.0))
                .or_default()
                .push(entry);
        }
        let scope = Partition::all().filter(|partition| {
            everywhere || touched & partition.bit() != 0 || by_partition.contains_key(partition)
        });
        try_join_all(scope.map(|partition| {
            let mut call = self.common(partition).invoke_presence(&scripts.resync);
            call.arg(&self.node_id)
                .arg(if announce { "1" } else { "0" });
            for (room, entry) in by_partition.get(&partition).into_iter().flatten() {
                call.arg(room.as_str())
                    .arg(entry.identity.id())
                    .arg(entry.sockets)
                    .arg(entry.identity.json().get())
                    .arg(farewell(&entry.identity))
                    .arg(join_body(room, &entry.identity));
            }
            async move { self.run::<i64>(call).await }
        }))
        .await?;
        let mut local = self.local();
        if local.version == version {
            local.departed.clear();
            self.restore_pending.store(false, Ordering::Release);
            self.resync_needed.store(false, Ordering::Release);
            self.resync_everywhere.store(false, Ordering::Release);
            self.announce_returns.store(false, Ordering::Release);
        }
        drop(local);
        self.report_up();
        info!(
            entries = entries.len(),
            "re-synchronised this node's presence with Redis"
        );
        Ok(())
    }

    /// Announces the `left`s whose grace has passed in `partitions`.
    async fn sweep(&self, partitions: &[Partition]) -> Result<(), BrokerError> {
        let scripts = self.scripts()?;
        try_join_all(partitions.iter().map(|&partition| {
            let mut call = self.common(partition).invoke_presence(&scripts.sweep);
            call.arg(SWEEP_BATCH);
            async move { self.run::<i64>(call).await }
        }))
        .await
        .map(drop)
    }

    /// Releases `node`'s sockets in every partition, with `grace` before their `left`.
    /// Returns how many (room, user) entries were released.
    async fn release_node(
        &self,
        node: &str,
        grace: Duration,
        partitions: impl Iterator<Item = Partition>,
    ) -> Result<i64, BrokerError> {
        let scripts = self.scripts()?;
        let released = try_join_all(partitions.map(|partition| {
            let mut call = self
                .common(partition)
                .invoke_presence(&scripts.release_node);
            call.arg(node).arg(grace.as_millis() as u64);
            async move { self.run::<i64>(call).await }
        }))
        .await?;
        Ok(released.into_iter().sum())
    }

    /// Reaps nodes whose liveness key expired. Their users have been gone at least
    /// [`NODE_TTL`], which counts against their leave grace.
    async fn reap(&self) -> Result<(), BrokerError> {
        let remaining_grace = self.leave_grace.saturating_sub(NODE_TTL);
        let mut call = scripts::reap(self.scripts()?, &self.node_id);
        call.arg(REAPED_MARKER_TTL.as_millis() as u64);
        let dead: Vec<String> = self.run(call).await?;
        for node in dead {
            let released = self
                .release_node(&node, remaining_grace, Partition::all())
                .await?;
            self.query::<i64>(redis::cmd("SREM").arg(registry::REAPING).arg(&node).clone())
                .await?;
            if released > 0 {
                warn!(released, node.id = %node, "reaped the sockets of a dead node");
                self.metrics.presence_reaped.inc_by(released as u64);
            }
        }
        Ok(())
    }

    /// Takes this node out of Redis at the end of a graceful stop: its remaining sockets are
    /// released with the full grace (users who reconnect elsewhere announce nothing).
    async fn deregister(&self) -> Result<i64, BrokerError> {
        let touched = self.local().touched;
        let partitions = Partition::all().filter(|partition| touched & partition.bit() != 0);
        let released = self
            .release_node(&self.node_id, self.leave_grace, partitions)
            .await?;
        self.query::<i64>(
            redis::cmd("DEL")
                .arg(registry::alive(&self.node_id))
                .clone(),
        )
        .await?;
        self.query::<i64>(
            redis::cmd("SREM")
                .arg(registry::NODES)
                .arg(&self.node_id)
                .clone(),
        )
        .await?;
        Ok(released)
    }

    /// The partitions to sweep at tick `tick`: a round of the subscribed ones, and those
    /// where a departure this node made pending has fallen due.
    fn partitions_to_sweep(&self, tick: usize, now: Instant) -> Vec<Partition> {
        let mut partitions: Vec<Partition> = self
            .partitions
            .subscribed()
            .into_iter()
            .filter(|partition| partition.index() % SWEEP_ROUNDS == tick % SWEEP_ROUNDS)
            .collect();
        for ((room, _), (_, due)) in &self.local().pending_leaves {
            let partition = Partition::of(room);
            if *due <= now && !partitions.contains(&partition) {
                partitions.push(partition);
            }
        }
        partitions
    }
}

impl LocalPresence {
    fn touch(&mut self, room: &RoomName) {
        self.touched |= Partition::of(room).bit();
    }

    fn add(&mut self, room: &RoomName, user: &Identity) {
        let key = (room.clone(), user.id().to_owned());
        self.touch(room);
        self.departed.remove(&key);
        self.pending_leaves.remove(&key);
        self.entries
            .entry(key)
            .or_insert_with(|| LocalEntry {
                sockets: 0,
                identity: user.clone(),
            })
            .sockets += 1;
        self.version += 1;
    }

    /// One socket fewer.
    fn remove(&mut self, room: &RoomName, user: &Identity) {
        let key = (room.clone(), user.id().to_owned());
        self.version += 1;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.sockets -= 1;
            if entry.sockets == 0 {
                self.entries.remove(&key);
            }
        }
    }

    /// Redis now holds `left` pending for `user` in `room`, due at `due`.
    fn note_pending_leave(&mut self, room: &RoomName, user: &Identity, due: Instant) {
        let key = (room.clone(), user.id().to_owned());
        if !self.entries.contains_key(&key) {
            self.pending_leaves.insert(key, (user.clone(), due));
        }
    }

    /// A sweep of `partitions` that began at `swept_at` succeeded: every departure there due
    /// by then has been announced (or its user came back), so it need not be remembered. What
    /// is left is bounded by the users who left within one grace period (or during an outage).
    fn forget_swept(&mut self, partitions: &[Partition], swept_at: Instant) {
        self.pending_leaves.retain(|(room, _), (_, due)| {
            *due > swept_at || !partitions.contains(&Partition::of(room))
        });
    }

    /// Redis could not be told that a socket of `user` closed: if it was the user's last one
    /// here, remember them, so a re-synchronisation makes sure their `left` is announced.
    fn mark_departed(&mut self, room: &RoomName, user: &Identity) {
        let key = (room.clone(), user.id().to_owned());
        self.version += 1;
        if !self.entries.contains_key(&key) {
            self.departed.insert(
                key,
                LocalEntry {
                    sockets: 0,
                    identity: user.clone(),
                },
            );
        }
    }
}

/// Declares the keys a `join` or `leave` of `node` in `room` touches, so that Redis Cluster
/// redirects the call before it runs while the partition's slot is being migrated.
fn declare_room_keys(
    call: &mut ScriptInvocation<'_>,
    partition: Partition,
    room: &RoomName,
    node: &str,
) {
    call.key(partition.node_sockets_key(node));
    for key in partition.room_keys(room) {
        call.key(key);
    }
}

/// The body of the notice a `kick` publishes on the room's partition (the script gives it its
/// id): never passed to a socket; each node closes the user's sockets in the room when it
/// hears it, or finds it in the partition's log.
fn kick_notice(room: &RoomName, user_id: &str) -> String {
    let json = |text: &str| serde_json::to_string(text).expect("a string serializes");
    format!(
        "\"type\":\"kick\",\"room\":{},\"user\":{{\"id\":{}}},\"ts\":{}}}",
        json(room.as_str()),
        json(user_id),
        now_ms()
    )
}

/// The `"user":…,"data":"<name> left."` part of a `left` frame, stored at join so that any
/// node can announce the departure.
fn farewell(user: &Identity) -> String {
    let data =
        serde_json::to_string(&format!("{} left.", user.user().name)).expect("a string serializes");
    format!("\"user\":{},\"data\":{data}", user.json().get())
}

fn join_body(room: &RoomName, user: &Identity) -> String {
    event_body(
        EventKind::Join,
        room,
        user.json(),
        &format!("{} joined.", user.user().name),
        now_ms(),
    )
}

/// Connects (finding out whether Redis is one server or a cluster), then runs the
/// subscription and the maintenance until `stop`.
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let (push_tx, pushes) = mpsc::channel(PUSH_QUEUE);
    // Full: dropped, and repaired from the partition's log by the relay.
    let push_sender = move |push: PushInfo| push_tx.try_send(push);
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let connected = async {
            let mode = shared.target.probe().await?;
            let commands = shared.target.connect(mode, push_sender.clone()).await?;
            Ok::<_, BrokerError>((mode, commands))
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = connected => outcome,
        };
        match outcome {
            Ok((mode, commands)) => {
                info!(?mode, "connected to Redis");
                let _ = shared.scripts.set(Scripts::new(&ScriptSettings {
                    history_len: shared.history_len,
                    log_len: LOG_LEN,
                    retention: HISTORY_RETENTION.max(shared.retain_for),
                    renew_every: RENEW_EVERY,
                    retain_len: shared.retain_messages,
                    retain_for: shared.retain_for,
                    grace: shared.leave_grace,
                    publish_command: mode.publish_command(),
                }));
                let _ = shared.commands.set(commands);
                break;
            }
            Err(error) if !warned => {
                warn!(%error, "Redis is unreachable at start-up; retrying");
                warned = true;
            }
            Err(error) => debug!(%error, "Redis is still unreachable"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tokio::join!(
        subscriber::run(shared.clone(), stop.clone(), pushes),
        run_maintenance(shared.clone(), stop),
    );
}

/// Heartbeats, sweeps and reaps, until `stop`.
async fn run_maintenance(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_heartbeat = Instant::now();
    let mut next_reap = Instant::now() + REAP_PERIOD;
    let mut next_forget = Instant::now() + RENEWALS_FORGOTTEN_EVERY;
    for tick in 0.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        if now >= next_heartbeat || shared.resync_needed.load(Ordering::Acquire) {
            next_heartbeat = now + HEARTBEAT_PERIOD;
            if shared.heartbeat().await.is_err() {
                continue;
            }
        }
        if now >= next_reap && shared.healthy_for() >= REAP_HOLDOFF {
            next_reap = now + REAP_PERIOD;
            let _ = shared.reap().await;
        }
        let swept_at = Instant::now();
        if swept_at >= next_forget {
            next_forget = swept_at + RENEWALS_FORGOTTEN_EVERY;
            shared.renewals.forget_due(swept_at);
        }
        let partitions = shared.partitions_to_sweep(tick, swept_at);
        if shared.sweep(&partitions).await.is_ok() {
            shared.local().forget_swept(&partitions, swept_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::User;

    #[test]
    fn the_farewell_is_the_middle_of_a_left_frame() {
        let user = Identity::new(User {
            id: "u1".into(),
            name: "a \"quoted\" 名前".into(),
            image: "/i.svg".into(),
            role: None,
            bot: false,
        });
        let frame = format!(
            r#"{{"id":7,"type":"left","room":"lobby",{},"ts":5}}"#,
            farewell(&user)
        );
        let expected = crate::protocol::splice_id(
            7,
            &event_body(
                EventKind::Left,
                &RoomName::lobby(),
                user.json(),
                "a \"quoted\" 名前 left.",
                5,
            ),
        );
        assert_eq!(
            frame,
            expected.text().as_str(),
            "Lua assembles the same bytes as Rust"
        );
    }

    #[test]
    fn local_presence_counts_sockets_and_remembers_unheard_departures() {
        let user = Identity::new(User {
            id: "u1".into(),
            name: "ann".into(),
            image: String::new(),
            role: None,
            bot: false,
        });
        let lobby = RoomName::lobby();
        let mut local = LocalPresence::default();
        local.add(&lobby, &user);
        local.add(&lobby, &user);
        local.remove(&lobby, &user);
        assert_eq!(local.entries[&(lobby.clone(), "u1".to_owned())].sockets, 1);
        local.remove(&lobby, &user);
        assert!(local.entries.is_empty());
        local.mark_departed(&lobby, &user);
        assert_eq!(
            local.departed.len(),
            1,
            "a leave Redis did not hear is remembered"
        );
        local.add(&lobby, &user);
        assert!(
            local.departed.is_empty(),
            "and forgotten when the user is back"
        );
        assert!(local.version >= 5);
    }
}
