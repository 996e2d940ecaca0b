//! The broker: what turns one socket's message into a frame with a global id, keeps it in
//! history and gets it to every node, and what keeps room presence.
//!
//! Two implementations sit behind the [`Broker`] trait: [`MemoryBroker`] for one node with no
//! Redis (`cargo run`), and [`RedisBroker`] for any number of nodes. The socket code only sees
//! the trait, through [`NodeBroker`]. Each node hands its broker the node's [`Hub`](crate::hub::Hub)
//! (`crate::hub::Hub`); the broker calls `Hub::dispatch` once per frame, in id order, and the
//! hub fans the frame out to the node's sockets. That is the node's one subscription.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::protocol::{Frame, RoomName};
pub use crate::retained::ScrollbackPage;
use crate::user::Identity;

pub mod memory;
pub mod redis;

pub use memory::MemoryBroker;
pub use redis::RedisBroker;

/// What a joining socket needs, taken in one atomic step (contract guarantee 2): the room's
/// history after `since`, who is online, and the newest id given out when it was taken. Every
/// live frame with an id at or below `seen_up_to` is already covered by the history, or older
/// than it, so the socket drops it; every newer one reaches the socket through the hub.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// At most `CONFAB_HISTORY` frames, oldest first, only those with an id above `since`.
    pub history: Vec<Frame>,
    /// The users online in the room, each once (the joining user included).
    pub members: Vec<Arc<RawValue>>,
    /// The newest id given out when the snapshot was taken: in the room's partition on Redis,
    /// in any room on the embedded broker.
    pub seen_up_to: u64,
}

/// The shortest time between two `typing` frames of one user in one room.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(2);

/// An edit or delete of a retained chat message, as a broker applies it (see
/// [`Broker::amend`]); made by [`crate::moderation`].
#[derive(Debug)]
pub struct Amendment<'a> {
    /// The chat message changed.
    pub target: u64,
    /// Its retained frame as read: the change applies only if it is still this.
    pub expected: &'a str,
    /// Its retained frame from now on.
    pub replacement: &'a str,
    /// The `edit` or `delete` frame announcing it, without its id ([`crate::protocol::event_body`]).
    pub event: &'a str,
}

/// Why the broker could not do what was asked. Only the Redis broker fails; the socket answers
/// `error` `unavailable` (or closes with 1013 at join) and the message reaches nobody.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Redis answered with an error, or the connection broke.
    #[error("Redis command failed: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with something the scripts never return.
    #[error("unexpected reply from Redis: {0}")]
    Reply(&'static str),
    /// The node has not subscribed to the room's partition yet, so it cannot promise a
    /// socket every frame.
    #[error("the node's subscription to the room's partition has not started yet")]
    Starting,
    /// A join of a user banned from the room: the socket closes with 4003.
    #[error("the user is banned from the room")]
    Banned,
    /// The node stopped while a chat waited for its partition's publish call.
    #[error("the node stopped while the chat waited for Redis")]
    Stopped,
}

/// What the rest of confab needs from a broker.
pub trait Broker: Send + Sync {
    /// Publishes `text` from `user` to `room` as a `chat` frame and returns its id. When this
    /// returns `Ok`, the frame has its place in the global order and in history, and every
    /// node (this one included) will dispatch it.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable: the frame was given to nobody.
    fn publish(
        &self,
        room: &RoomName,
        user: &Identity,
        text: &str,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;

    /// Tells the room's other sockets, on every node, that `user` is typing: a `typing` frame
    /// with id 0, never stored. At most one per user and room per [`TYPING_INTERVAL`] goes
    /// out; the rest are dropped without an error (the user is typing either way).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable.
    fn typing(
        &self,
        room: &RoomName,
        user: &Identity,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// The retained chat frame with this id, in its latest state; `None` when the room does
    /// not retain it (never sent, or past `CONFAB_RETAIN_MESSAGES`/`CONFAB_RETAIN_DAYS`).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable.
    fn retained(
        &self,
        room: &RoomName,
        id: u64,
    ) -> impl Future<Output = Result<Option<String>, BrokerError>> + Send;

    /// Applies an edit or delete: if the retained frame of `change.target` is still exactly
    /// `change.expected`, puts `change.replacement` in its place (in retained messages and
    /// history) and publishes `change.event` as a new frame, all in one atomic step. Returns
    /// the new frame's id, or `None` when the message changed meanwhile (read it again).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable; nothing changed.
    fn amend(
        &self,
        room: &RoomName,
        change: &Amendment<'_>,
    ) -> impl Future<Output = Result<Option<u64>, BrokerError>> + Send;

    /// Up to `limit` retained chat frames of `room` with ids below `before` (the newest when
    /// `None`), oldest first, each in its latest state.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable.
    fn scrollback(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<ScrollbackPage, BrokerError>> + Send;

    /// The users online in `room` (each once, as in a `list` frame).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable.
    fn members(
        &self,
        room: &RoomName,
    ) -> impl Future<Output = Result<Vec<Arc<RawValue>>, BrokerError>> + Send;

    /// Closes every socket of user `user_id` in `room`, on every node, with 4003; with a
    /// `ban` above zero, the user's new sockets in the room are closed with 4003 until it ends.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable; nobody was kicked.
    fn kick(
        &self,
        room: &RoomName,
        user_id: &str,
        ban: Duration,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Counts one more socket of `user` in `room`, announcing `join` if it is the user's first
    /// anywhere, and returns the [`Snapshot`] for the new socket. The caller must already be
    /// registered in the node's hub, so no frame falls between snapshot and live.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is unreachable; the socket was not counted.
    fn join(
        &self,
        room: &RoomName,
        user: &Identity,
        since: Option<u64>,
    ) -> impl Future<Output = Result<Snapshot, BrokerError>> + Send;

    /// Counts one socket of `user` in `room` fewer; when it was the user's last anywhere,
    /// `left` follows after the leave grace unless the user comes back. Failures are handled
    /// by the broker itself (it re-synchronises when it reconnects).
    fn leave(&self, room: &RoomName, user: &Identity) -> impl Future<Output = ()> + Send;

    /// Whether the broker can serve now (`/readyz`).
    fn is_ready(&self) -> bool;

    /// Stops background work and, in cluster mode, removes this node from Redis.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The broker this node runs, chosen by `CONFAB_REDIS_URL`.
pub enum NodeBroker {
    /// One node, no Redis.
    Memory(MemoryBroker),
    /// Cluster mode.
    Redis(RedisBroker),
}

// The Redis broker's futures hold a pooled connection, a script call and timeouts: several
// KiB. Every socket task embeds these futures' state, so they are boxed for the Redis arm —
// one allocation per Redis round trip, which costs far more anyway — and the embedded
// broker's small futures stay inline. This keeps an idle socket's task small (BENCHMARKS.md).
impl Broker for NodeBroker {
    async fn publish(
        &self,
        room: &RoomName,
        user: &Identity,
        text: &str,
    ) -> Result<u64, BrokerError> {
        match self {
            Self::Memory(broker) => broker.publish(room, user, text).await,
            Self::Redis(broker) => Box::pin(broker.publish(room, user, text)).await,
        }
    }

    async fn typing(&self, room: &RoomName, user: &Identity) -> Result<(), BrokerError> {
        match self {
            Self::Memory(broker) => broker.typing(room, user).await,
            Self::Redis(broker) => Box::pin(broker.typing(room, user)).await,
        }
    }

    async fn retained(&self, room: &RoomName, id: u64) -> Result<Option<String>, BrokerError> {
        match self {
            Self::Memory(broker) => broker.retained(room, id).await,
            Self::Redis(broker) => Box::pin(broker.retained(room, id)).await,
        }
    }

    async fn amend(
        &self,
        room: &RoomName,
        change: &Amendment<'_>,
    ) -> Result<Option<u64>, BrokerError> {
        match self {
            Self::Memory(broker) => broker.amend(room, change).await,
            Self::Redis(broker) => Box::pin(broker.amend(room, change)).await,
        }
    }

    async fn scrollback(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<ScrollbackPage, BrokerError> {
        match self {
            Self::Memory(broker) => broker.scrollback(room, before, limit).await,
            Self::Redis(broker) => Box::pin(broker.scrollback(room, before, limit)).await,
        }
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<Arc<RawValue>>, BrokerError> {
        match self {
            Self::Memory(broker) => broker.members(room).await,
            Self::Redis(broker) => Box::pin(broker.members(room)).await,
        }
    }

    async fn kick(&self, room: &RoomName, user_id: &str, ban: Duration) -> Result<(), BrokerError> {
        match self {
            Self::Memory(broker) => broker.kick(room, user_id, ban).await,
            Self::Redis(broker) => Box::pin(broker.kick(room, user_id, ban)).await,
        }
    }

    async fn join(
        &self,
        room: &RoomName,
        user: &Identity,
        since: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        match self {
            Self::Memory(broker) => broker.join(room, user, since).await,
            Self::Redis(broker) => Box::pin(broker.join(room, user, since)).await,
        }
    }

    async fn leave(&self, room: &RoomName, user: &Identity) {
        match self {
            Self::Memory(broker) => broker.leave(room, user).await,
            Self::Redis(broker) => Box::pin(broker.leave(room, user)).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Self::Memory(broker) => broker.is_ready(),
            Self::Redis(broker) => broker.is_ready(),
        }
    }

    async fn shutdown(&self) {
        match self {
            Self::Memory(broker) => broker.shutdown().await,
            Self::Redis(broker) => broker.shutdown().await,
        }
    }
}
