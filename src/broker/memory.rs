//! The embedded broker: one node, everything in this process, no Redis.
//!
//! One mutex guards the id counter and every room's history, retained messages and presence.
//! Publishing takes it, gives the frame the next id, appends it to history (and a chat to the
//! retained messages) and hands it to the hub while still holding it, so dispatch order is id
//! order and a joining socket's snapshot (taken under the same lock) is exact. An edit or
//! delete swaps the message's frame and publishes its announcement under the same lock. Nothing
//! under the lock awaits; fan-out only pushes onto bounded queues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{Amendment, Broker, BrokerError, ScrollbackPage, Snapshot, TYPING_INTERVAL};
use crate::config::ChatConfig;
use crate::history::RoomHistory;
use crate::hub::Hub;
use crate::presence::{Arrival, Departure, LeaveTicket, RoomPresence};
use crate::protocol::{
    EventKind, Frame, RoomName, event_body, now_ms, now_us, splice_id, typing_frame,
};
use crate::retained::RetainedMessages;
use crate::user::Identity;

/// How long a room nobody is in keeps its history, once it retains no message.
pub const IDLE_ROOM_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The most rooms without members kept at once; beyond it the longest-idle go first. Each may
/// retain up to `CONFAB_RETAIN_MESSAGES` messages, so this bounds the broker's memory
/// (`docs/scaling.md`).
pub const MAX_IDLE_ROOMS: usize = 1_000;
/// How often idle rooms are looked for.
const JANITOR_PERIOD: Duration = Duration::from_secs(60);

/// The embedded broker. Cheap to share: clones see the same rooms.
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    hub: Arc<Hub>,
    history_len: usize,
    retain_messages: usize,
    retain_for: Duration,
    leave_grace: Duration,
}

struct State {
    /// The newest id given out; starts at the Unix time in microseconds (guarantee 3).
    last_id: u64,
    next_ticket: LeaveTicket,
    rooms: HashMap<RoomName, Room>,
    /// When each user last had a `typing` frame sent on, per room; entries older than
    /// [`TYPING_INTERVAL`] are dropped by the janitor.
    typing: HashMap<(RoomName, String), Instant>,
    /// Users banned from rooms, until when; expired bans are dropped by the janitor.
    bans: HashMap<(RoomName, String), Instant>,
}

struct Room {
    history: RoomHistory,
    retained: RetainedMessages,
    presence: RoomPresence,
    /// When the room last became empty; `None` while anyone is listed.
    idle_since: Option<Instant>,
}

impl MemoryBroker {
    /// A broker with no rooms, dispatching to `hub`. Starts a background task that forgets
    /// rooms idle for [`IDLE_ROOM_RETENTION`]; it ends when the broker is dropped.
    pub fn new(hub: Arc<Hub>, chat: &ChatConfig) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                last_id: now_us(),
                next_ticket: 1,
                rooms: HashMap::new(),
                typing: HashMap::new(),
                bans: HashMap::new(),
            }),
            hub,
            history_len: chat.history,
            retain_messages: chat.retain_messages,
            retain_for: chat.retain_for,
            leave_grace: chat.leave_grace,
        });
        tokio::spawn(run_janitor(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// How many rooms are held, idle ones included.
    pub fn room_count(&self) -> usize {
        self.shared.lock().rooms.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn room(&mut self, name: &RoomName, shared: &Shared) -> &mut Room {
        self.rooms.entry(name.clone()).or_insert_with(|| Room {
            history: RoomHistory::new(shared.history_len),
            retained: RetainedMessages::new(shared.retain_messages, shared.retain_for),
            presence: RoomPresence::default(),
            idle_since: None,
        })
    }

    /// Gives the next id to a new frame, keeps it and hands it to the hub, all under the lock.
    fn publish(
        &mut self,
        shared: &Shared,
        room: &RoomName,
        kind: EventKind,
        user: &RawValue,
        data: &str,
    ) -> u64 {
        let ts = now_ms();
        let (id, frame) = self.emit(shared, room, &event_body(kind, room, user, data, ts));
        if kind == EventKind::Chat {
            self.room(room, shared).retained.push(frame, ts);
        }
        id
    }

    /// Gives `body` (an event frame without its id) the next id, keeps it in history and hands
    /// it to the hub.
    fn emit(&mut self, shared: &Shared, room: &RoomName, body: &str) -> (u64, Frame) {
        self.last_id += 1;
        let id = self.last_id;
        let frame = splice_id(id, body);
        self.room(room, shared).history.push(frame.clone());
        shared.hub.dispatch(room.as_str(), &frame);
        (id, frame)
    }

    /// Announces `left` for `user` and marks the room idle if it emptied.
    fn announce_left(&mut self, shared: &Shared, room: &RoomName, user: &Identity) {
        let data = format!("{} left.", user.user().name);
        self.publish(shared, room, EventKind::Left, user.json(), &data);
        let entry = self.room(room, shared);
        if entry.presence.is_empty() {
            entry.idle_since = Some(Instant::now());
        }
    }
}

impl Broker for MemoryBroker {
    async fn publish(
        &self,
        room: &RoomName,
        user: &Identity,
        text: &str,
    ) -> Result<u64, BrokerError> {
        let shared = &*self.shared;
        Ok(shared
            .lock()
            .publish(shared, room, EventKind::Chat, user.json(), text))
    }

    async fn typing(&self, room: &RoomName, user: &Identity) -> Result<(), BrokerError> {
        let shared = &*self.shared;
        let now = Instant::now();
        let mut state = shared.lock();
        let last = state
            .typing
            .entry((room.clone(), user.id().to_owned()))
            .or_insert(now - TYPING_INTERVAL);
        if now.duration_since(*last) < TYPING_INTERVAL {
            return Ok(());
        }
        *last = now;
        drop(state);
        let frame = typing_frame(room, user.json(), now_ms());
        shared.hub.dispatch_typing(room.as_str(), &frame, user.id());
        Ok(())
    }

    async fn retained(&self, room: &RoomName, id: u64) -> Result<Option<String>, BrokerError> {
        let state = self.shared.lock();
        Ok(state
            .rooms
            .get(room)
            .and_then(|entry| entry.retained.get(id, now_ms()))
            .map(|frame| frame.text().to_string()))
    }

    async fn amend(
        &self,
        room: &RoomName,
        change: &Amendment<'_>,
    ) -> Result<Option<u64>, BrokerError> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        let Some(entry) = state.rooms.get_mut(room) else {
            return Ok(None);
        };
        let unchanged = entry
            .retained
            .get(change.target, now_ms())
            .is_some_and(|frame| frame.text() == change.expected);
        if !unchanged {
            return Ok(None);
        }
        let replacement = Frame::new(change.target, change.replacement);
        entry.retained.replace(replacement.clone());
        entry.history.replace(replacement);
        let (id, _) = state.emit(shared, room, change.event);
        Ok(Some(id))
    }

    async fn scrollback(
        &self,
        room: &RoomName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<ScrollbackPage, BrokerError> {
        let state = self.shared.lock();
        Ok(state
            .rooms
            .get(room)
            .map(|entry| entry.retained.page(before, limit, now_ms()))
            .unwrap_or_default())
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<Arc<RawValue>>, BrokerError> {
        let state = self.shared.lock();
        Ok(state
            .rooms
            .get(room)
            .map(|entry| entry.presence.members())
            .unwrap_or_default())
    }

    async fn kick(&self, room: &RoomName, user_id: &str, ban: Duration) -> Result<(), BrokerError> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if !ban.is_zero() {
            state
                .bans
                .insert((room.clone(), user_id.to_owned()), Instant::now() + ban);
        }
        drop(state);
        shared.hub.kick(room.as_str(), user_id);
        Ok(())
    }

    async fn join(
        &self,
        room: &RoomName,
        user: &Identity,
        since: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        let key = (room.clone(), user.id().to_owned());
        if state
            .bans
            .get(&key)
            .is_some_and(|until| *until > Instant::now())
        {
            return Err(BrokerError::Banned);
        }
        let entry = state.room(room, shared);
        entry.idle_since = None;
        if entry.presence.arrive(user) == Arrival::Joined {
            let data = format!("{} joined.", user.user().name);
            state.publish(shared, room, EventKind::Join, user.json(), &data);
        }
        let seen_up_to = state.last_id;
        let entry = state.room(room, shared);
        Ok(Snapshot {
            history: entry.history.replay(since),
            members: entry.presence.members(),
            seen_up_to,
        })
    }

    async fn leave(&self, room: &RoomName, user: &Identity) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let grace = !shared.leave_grace.is_zero();
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        match entry.presence.depart(user.id(), grace, ticket) {
            Departure::Stays => {}
            Departure::Gone => state.announce_left(shared, room, user),
            Departure::Leaving(ticket) => {
                tokio::spawn(finish_leave(
                    Arc::downgrade(&self.shared),
                    room.clone(),
                    user.id().to_owned(),
                    ticket,
                ));
            }
        }
    }

    fn is_ready(&self) -> bool {
        true
    }

    async fn shutdown(&self) {}
}

/// Waits out the leave grace of one departure, then announces `left` unless the user came back.
async fn finish_leave(shared: Weak<Shared>, room: RoomName, user_id: String, ticket: LeaveTicket) {
    let Some(grace) = shared.upgrade().map(|shared| shared.leave_grace) else {
        return;
    };
    tokio::time::sleep(grace).await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut state = shared.lock();
    let Some(user) = state
        .rooms
        .get_mut(&room)
        .and_then(|entry| entry.presence.expire(&user_id, ticket))
    else {
        return;
    };
    state.announce_left(&shared, &room, &user);
}

/// Drops retained messages past `CONFAB_RETAIN_DAYS`; forgets rooms that have been empty for
/// [`IDLE_ROOM_RETENTION`] and retain no message, and the longest-idle ones beyond
/// [`MAX_IDLE_ROOMS`], so the room map shrinks again when people go; and forgets who typed
/// more than [`TYPING_INTERVAL`] ago.
async fn run_janitor(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(JANITOR_PERIOD);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        evict_idle_rooms(
            &mut shared.lock(),
            Instant::now(),
            IDLE_ROOM_RETENTION,
            MAX_IDLE_ROOMS,
        );
    }
}

fn evict_idle_rooms(state: &mut State, now: Instant, retention: Duration, max_idle: usize) {
    let now_ms = now_ms();
    state.rooms.retain(|_, room| {
        room.retained.expire(now_ms);
        room.idle_since
            .is_none_or(|since| now.duration_since(since) < retention || !room.retained.is_empty())
    });
    state
        .typing
        .retain(|_, last| now.duration_since(*last) < TYPING_INTERVAL);
    state.bans.retain(|_, until| *until > now);
    let mut idle: Vec<(Instant, RoomName)> = state
        .rooms
        .iter()
        .filter_map(|(name, room)| room.idle_since.map(|since| (since, name.clone())))
        .collect();
    if idle.len() > max_idle {
        idle.sort_unstable();
        for (_, name) in &idle[..idle.len() - max_idle] {
            state.rooms.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SocketLink;
    use crate::metrics::Metrics;
    use crate::protocol::Frame;
    use crate::user::User;

    fn chat_config(grace_ms: u64) -> ChatConfig {
        ChatConfig {
            history: 3,
            retain_messages: 5,
            retain_for: Duration::from_secs(3600),
            max_message_chars: 2000,
            leave_grace: Duration::from_millis(grace_ms),
            max_connections: 100,
        }
    }

    fn identity(id: &str) -> Identity {
        Identity::new(User {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            role: None,
            bot: false,
        })
    }

    fn types_of(snapshot: &Snapshot) -> Vec<String> {
        snapshot
            .history
            .iter()
            .map(|frame| {
                serde_json::from_str::<serde_json::Value>(&frame.text()).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn ids_start_at_the_current_unix_time_in_microseconds_and_increase() {
        let before = now_us();
        let broker = MemoryBroker::new(Arc::new(Hub::new(Metrics::new("t"))), &chat_config(0));
        let ann = identity("ann");
        let first = broker.publish(&RoomName::lobby(), &ann, "a").await.unwrap();
        let second = broker
            .publish(&RoomName::parse("other").unwrap(), &ann, "b")
            .await
            .unwrap();
        assert!(first > before, "{first} > {before}");
        assert_eq!(second, first + 1, "one counter across rooms");
    }

    #[tokio::test]
    async fn the_snapshot_holds_the_join_and_the_newest_history() {
        let broker = MemoryBroker::new(Arc::new(Hub::new(Metrics::new("t"))), &chat_config(0));
        let (ann, bob) = (identity("ann"), identity("bob"));
        let lobby = RoomName::lobby();
        broker.join(&lobby, &ann, None).await.unwrap();
        for text in ["1", "2", "3"] {
            broker.publish(&lobby, &ann, text).await.unwrap();
        }
        let snapshot = broker.join(&lobby, &bob, None).await.unwrap();
        assert_eq!(
            types_of(&snapshot),
            ["chat", "chat", "join"],
            "history holds the last 3 frames"
        );
        assert_eq!(snapshot.members.len(), 2);
        assert_eq!(snapshot.seen_up_to, snapshot.history.last().unwrap().id());
    }

    #[tokio::test]
    async fn frames_reach_the_hub_in_id_order() {
        let hub = Arc::new(Hub::new(Metrics::new("t")));
        let broker = MemoryBroker::new(hub.clone(), &chat_config(0));
        let link = Arc::new(SocketLink::new(16));
        let _registration = hub.register(&RoomName::lobby(), &identity("ann"), link.clone());
        let ann = identity("ann");
        broker.join(&RoomName::lobby(), &ann, None).await.unwrap();
        broker
            .publish(&RoomName::lobby(), &ann, "hi")
            .await
            .unwrap();
        broker.leave(&RoomName::lobby(), &ann).await;
        let mut queued = std::collections::VecDeque::new();
        link.take_queued(&mut queued);
        let ids: Vec<u64> = queued.iter().map(Frame::id).collect();
        assert_eq!(ids.len(), 3, "join, chat, left");
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn left_waits_for_the_grace_and_a_return_cancels_it() {
        let broker = MemoryBroker::new(Arc::new(Hub::new(Metrics::new("t"))), &chat_config(5000));
        let (ann, bob) = (identity("ann"), identity("bob"));
        let lobby = RoomName::lobby();
        broker.join(&lobby, &ann, None).await.unwrap();
        broker.leave(&lobby, &ann).await;
        tokio::time::sleep(Duration::from_millis(4000)).await;
        broker.join(&lobby, &ann, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let snapshot = broker.join(&lobby, &bob, None).await.unwrap();
        assert_eq!(
            types_of(&snapshot),
            ["join", "join"],
            "ann's return announced nothing"
        );
        broker.leave(&lobby, &ann).await;
        tokio::time::sleep(Duration::from_millis(5001)).await;
        let snapshot = broker.join(&lobby, &identity("cid"), None).await.unwrap();
        assert_eq!(types_of(&snapshot), ["join", "left", "join"]);
        assert_eq!(snapshot.members.len(), 2, "bob and cid");
    }

    #[tokio::test]
    async fn idle_rooms_are_evicted_after_retention_and_beyond_the_cap() {
        let broker = MemoryBroker::new(Arc::new(Hub::new(Metrics::new("t"))), &chat_config(0));
        let ann = identity("ann");
        for i in 0..5 {
            let room = RoomName::parse(&format!("r{i}")).unwrap();
            broker.join(&room, &ann, None).await.unwrap();
            broker.leave(&room, &ann).await;
        }
        broker.join(&RoomName::lobby(), &ann, None).await.unwrap();
        assert_eq!(broker.room_count(), 6);
        let now = Instant::now();
        evict_idle_rooms(&mut broker.shared.lock(), now, Duration::from_secs(3600), 2);
        assert_eq!(
            broker.room_count(),
            3,
            "two idle rooms and the lobby, which has a member"
        );
        evict_idle_rooms(
            &mut broker.shared.lock(),
            now + Duration::from_secs(3601),
            Duration::from_secs(3600),
            2,
        );
        assert_eq!(broker.room_count(), 1);
    }
}

#[cfg(test)]
mod ban_tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::user::User;

    #[tokio::test]
    async fn a_banned_user_cannot_join_until_the_ban_ends() {
        let mut chat = crate::config::Config::for_tests().chat;
        chat.leave_grace = Duration::ZERO;
        let broker = MemoryBroker::new(Arc::new(Hub::new(Metrics::new("t"))), &chat);
        let ann = Identity::new(User {
            id: "ann".into(),
            name: "ann".into(),
            image: String::new(),
            role: None,
            bot: false,
        });
        let room = RoomName::lobby();
        broker.join(&room, &ann, None).await.unwrap();
        broker
            .kick(&room, "ann", Duration::from_secs(60))
            .await
            .unwrap();
        broker.leave(&room, &ann).await;
        assert!(matches!(
            broker.join(&room, &ann, None).await,
            Err(BrokerError::Banned)
        ));
    }
}
