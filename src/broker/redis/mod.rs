//! The Redis broker: cluster mode, any number of nodes sharing one Redis.
//!
//! - Commands go through a deadpool pool; every frame is made by one Lua script that takes the
//!   next id (`INCR`), appends the frame to the log stream and the room's history, and
//!   publishes it on the one events channel, atomically ([`scripts`]).
//! - Each node holds **one** pub/sub subscription, whatever its number of sockets
//!   ([`subscriber`]); it hands every frame to the hub in id order and repairs gaps from the
//!   log, so a dropped subscription loses nothing.
//! - Presence lives in Redis (a set of online users per room, socket counts per room and per
//!   node) and changes only inside scripts. Each node keeps its own sockets' counts too, so it
//!   can put Redis right after any failure ([`RedisBroker`]'s re-synchronisation), and renews
//!   a liveness key; the nodes reap a node whose key expired.
//!
//! `docs/redis.md` lists every key, its type and lifetime.

mod scripts;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use deadpool_redis::redis::{self, FromRedisValue, ScriptInvocation};
use deadpool_redis::{Manager, Pool, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use self::scripts::{Common, JoinReply, Scripts};
pub use self::scripts::{EVENTS_CHANNEL, KEY_PREFIX, LOG_KEY, SEQ_KEY, SEQ_START_KEY};
use super::{Broker, BrokerError, Snapshot};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{EventKind, Frame, RoomName, event_body, frame_id, now_ms};
use crate::user::Identity;

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
/// How often each node announces the `left`s whose grace has passed.
pub const SWEEP_PERIOD: Duration = Duration::from_millis(250);
/// Frames kept in the log stream for gap repair (a few seconds of heavy traffic).
pub const LOG_LEN: usize = 20_000;
/// How long a room nobody writes to keeps its history.
pub const HISTORY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the marker saying a node was reaped is kept, so that node learns it on return.
const REAPED_MARKER_TTL: Duration = Duration::from_secs(600);
/// Most departures one sweep announces.
const SWEEP_BATCH: usize = 500;
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
    /// For the pub/sub connection, which cannot come from the pool.
    client: redis::Client,
    pool: Pool,
    scripts: Scripts,
    hub: Arc<Hub>,
    metrics: Metrics,
    history_len: usize,
    leave_grace: Duration,
    /// The highest id this node has seen, published or received: the floor of new ids.
    highest_seen: AtomicU64,
    /// The subscription is up and caught up.
    subscribed: AtomicBool,
    /// The subscription has had its first start: sockets may join from now on.
    baseline: AtomicBool,
    /// Heartbeats that succeeded; the first one may take over an earlier process's key.
    heartbeats: AtomicU64,
    /// The last command succeeded.
    commands_ok: AtomicBool,
    /// What `broker_up` and the logs last said, to log changes rather than every retry.
    reported_up: AtomicBool,
    local: Mutex<LocalPresence>,
    /// Redis may not match `local`: re-synchronise at the next chance.
    resync_needed: AtomicBool,
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
    /// Bumped on every change, so a re-synchronisation can tell it raced one.
    version: u64,
}

#[derive(Clone)]
struct LocalEntry {
    sockets: u32,
    identity: Identity,
}

impl RedisBroker {
    /// Connects to Redis at `url` and starts the subscription and maintenance tasks. Redis
    /// need not be up yet: the node starts unready and keeps trying.
    ///
    /// # Errors
    /// When the URL cannot be used or the pool cannot be built.
    pub async fn start(
        url: &SecretString,
        hub: Arc<Hub>,
        config: &Config,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.expose_secret())?;
        let connection_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let manager = Manager::new_with_config(url.expose_secret(), connection_config)?;
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(COMMAND_TIMEOUT))
            .create_timeout(Some(COMMAND_TIMEOUT))
            .recycle_timeout(Some(COMMAND_TIMEOUT))
            .build()?;
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            session: format!("{:032x}", rand::random::<u128>()),
            client,
            pool,
            scripts: Scripts::new(),
            hub,
            metrics,
            history_len: config.chat.history,
            leave_grace: config.chat.leave_grace,
            highest_seen: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            baseline: AtomicBool::new(false),
            heartbeats: AtomicU64::new(0),
            commands_ok: AtomicBool::new(false),
            reported_up: AtomicBool::new(false),
            local: Mutex::new(LocalPresence::default()),
            resync_needed: AtomicBool::new(true),
            announce_returns: AtomicBool::new(false),
            restore_pending: AtomicBool::new(false),
            epoch: Mutex::new(None),
            healthy_since: Mutex::new(None),
        });
        shared.metrics.broker_up.set(0);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(subscriber::run(shared.clone(), stop.clone()));
        tasks.spawn(run_maintenance(shared.clone(), stop.clone()));
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
        let body = event_body(EventKind::Chat, room, user.json(), text, now_ms());
        let shared = &self.shared;
        let mut call = shared.common().invoke(&shared.scripts.publish);
        call.arg(room.as_str()).arg(body);
        let id: u64 = shared.run(call).await?;
        shared.saw(id);
        Ok(id)
    }

    async fn join(
        &self,
        room: &RoomName,
        user: &Identity,
        since: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        let shared = &self.shared;
        if !shared.baseline.load(Ordering::Acquire) {
            // Until the subscription has started, frames after the snapshot could be missed.
            return Err(BrokerError::Starting);
        }
        // Counted here first: a re-synchronisation racing this join then keeps the socket.
        shared.local().add(room, user);
        let mut call = shared.common().invoke(&shared.scripts.join);
        call.arg(&shared.node_id)
            .arg(room.as_str())
            .arg(user.id())
            .arg(user.json().get())
            .arg(farewell(user))
            .arg(join_body(room, user));
        let reply: JoinReply = match shared.run(call).await {
            Ok(reply) => reply,
            Err(error) => {
                shared.local().remove(room, user);
                shared.resync_needed.store(true, Ordering::Release);
                return Err(error);
            }
        };
        shared.saw(reply.seen_up_to);
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
        shared.local().remove(room, user);
        let mut call = shared.common().invoke(&shared.scripts.leave);
        call.arg(&shared.node_id).arg(room.as_str()).arg(user.id());
        match shared.run::<i64>(call).await {
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

    fn is_ready(&self) -> bool {
        self.shared.is_up()
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
        let shared = &self.shared;
        let mut call = shared.common().invoke(&shared.scripts.deregister);
        call.arg(&shared.node_id);
        match shared.run::<i64>(call).await {
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

    fn common(&self) -> Common {
        Common {
            floor: self.highest_seen.load(Ordering::Acquire),
            history_len: self.history_len,
            log_len: LOG_LEN,
            retention_ms: HISTORY_RETENTION.as_millis() as u64,
            grace_ms: self.leave_grace.as_millis() as u64,
        }
    }

    /// Records that `id` exists, raising the floor of new ids.
    fn saw(&self, id: u64) {
        self.highest_seen.fetch_max(id, Ordering::AcqRel);
    }

    /// Runs a script on a pooled connection within [`COMMAND_TIMEOUT`], and notes whether
    /// Redis answered.
    async fn run<T: FromRedisValue>(&self, call: ScriptInvocation<'_>) -> Result<T, BrokerError> {
        let result = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut connection = self.pool.get().await?;
            Ok::<T, BrokerError>(call.invoke_async(&mut *connection).await?)
        })
        .await
        .unwrap_or(Err(BrokerError::Timeout(COMMAND_TIMEOUT)));
        self.note_commands(result.is_ok());
        result
    }

    /// Runs one command on a pooled connection, like [`Shared::run`].
    async fn query<T: FromRedisValue>(&self, command: redis::Cmd) -> Result<T, BrokerError> {
        let result = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut connection = self.pool.get().await?;
            Ok::<T, BrokerError>(command.query_async(&mut *connection).await?)
        })
        .await
        .unwrap_or(Err(BrokerError::Timeout(COMMAND_TIMEOUT)));
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

    /// The subscription started for the first time: sockets may join.
    fn note_baseline(&self) {
        self.baseline.store(true, Ordering::Release);
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

    fn healthy_for(&self) -> Duration {
        self.healthy_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Renews the liveness key, and re-synchronises when Redis lost this node's state.
    async fn heartbeat(&self) -> Result<(), BrokerError> {
        let fresh_epoch = format!("{:032x}", rand::random::<u128>());
        let mut call = self.common().invoke(&self.scripts.heartbeat);
        call.arg(&self.node_id)
            .arg(&self.session)
            .arg(NODE_TTL.as_millis() as u64)
            .arg(&fresh_epoch);
        let (state, epoch): (String, String) = self.run(call).await?;
        let data_lost = {
            let mut known = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
            let lost = known.as_ref().is_some_and(|known| *known != epoch);
            *known = Some(epoch);
            lost
        };
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

    /// Replaces what Redis holds for this node with what it really has.
    async fn resync(&self) -> Result<(), BrokerError> {
        let announce = self.announce_returns.load(Ordering::Acquire);
        let (version, entries) = {
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
            (local.version, entries)
        };
        let mut call = self.common().invoke(&self.scripts.resync);
        call.arg(&self.node_id)
            .arg(if announce { "1" } else { "0" });
        for (room, entry) in &entries {
            call.arg(room.as_str())
                .arg(entry.identity.id())
                .arg(entry.sockets)
                .arg(entry.identity.json().get())
                .arg(farewell(&entry.identity))
                .arg(join_body(room, &entry.identity));
        }
        self.run::<i64>(call).await?;
        let mut local = self.local();
        if local.version == version {
            local.departed.clear();
            self.restore_pending.store(false, Ordering::Release);
            self.resync_needed.store(false, Ordering::Release);
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

    /// Announces the `left`s whose grace has passed.
    async fn sweep(&self) -> Result<(), BrokerError> {
        let mut call = self.common().invoke(&self.scripts.sweep);
        call.arg(SWEEP_BATCH);
        self.run::<i64>(call).await.map(drop)
    }

    /// Reaps nodes whose liveness key expired. Their users have been gone at least
    /// [`NODE_TTL`], which counts against their leave grace.
    async fn reap(&self) -> Result<(), BrokerError> {
        let remaining_grace = self.leave_grace.saturating_sub(NODE_TTL);
        let mut call = self.common().invoke(&self.scripts.reap);
        call.arg(&self.node_id)
            .arg(remaining_grace.as_millis() as u64)
            .arg(REAPED_MARKER_TTL.as_millis() as u64);
        let released: i64 = self.run(call).await?;
        if released > 0 {
            warn!(released, "reaped the sockets of dead nodes");
            self.metrics.presence_reaped.inc_by(released as u64);
        }
        Ok(())
    }
}

impl LocalPresence {
    fn add(&mut self, room: &RoomName, user: &Identity) {
        let key = (room.clone(), user.id().to_owned());
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

    /// A sweep that began at `swept_at` succeeded: every departure due by then has been
    /// announced (or its user came back), so it need not be remembered. What is left is
    /// bounded by the users who left within one grace period (or during an outage).
    fn forget_swept(&mut self, swept_at: Instant) {
        self.pending_leaves.retain(|_, (_, due)| *due > swept_at);
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

/// Heartbeats, sweeps and reaps, until `stop`.
async fn run_maintenance(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_heartbeat = Instant::now();
    let mut next_reap = Instant::now() + REAP_PERIOD;
    loop {
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
        if shared.sweep().await.is_ok() {
            shared.local().forget_swept(swept_at);
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
