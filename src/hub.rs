//! The node's local fan-out: which of this node's sockets are in which room, and the one place
//! a frame is handed to each of them.
//!
//! The broker delivers every frame to [`Hub::dispatch`] exactly once per node, in id order;
//! the hub pushes a shared clone of it (a reference-count bump, no copy) onto the bounded
//! outbound queue of each socket in the frame's room, without ever waiting. A socket whose
//! queue is full is a slow consumer: it is dropped from the room and told to close with 1013,
//! and nobody else waits for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::protocol::{Frame, RoomName, close};
use crate::user::Identity;

/// The link between one socket's task and everything that talks to it: its bounded outbound
/// queue (filled by the hub and by the socket's own `error` frames, drained by its write
/// passes), its close request, and when the peer was last heard from. Shared through an `Arc`
/// by the socket's task and its hub entry; dropped with the socket.
///
/// The queue is a `VecDeque` under a mutex rather than a channel: it takes no memory while
/// empty (an idle socket is cheap), and the socket takes everything queued in one swap. A push
/// to an empty queue, a close and the node's drain all wake the socket's task through one
/// [`AtomicWaker`], which the task registers each time it polls. The link is also the waker
/// the task reads its socket with ([`Wake`]): a wake-up says which side it is for, so a task
/// woken to write does not try to read too.
#[derive(Debug)]
pub struct SocketLink {
    queue: Mutex<VecDeque<Frame>>,
    capacity: usize,
    /// The socket's task, as it last waited.
    waker: AtomicWaker,
    /// Set by every wake-up but the socket's read side, cleared as the task takes it.
    signalled: AtomicBool,
    /// Set when the socket's read side woke the task, cleared as the task reads.
    readable: AtomicBool,
    close_code: AtomicU16,
    closing: AtomicBool,
    opened: Instant,
    last_seen_ms: AtomicU64,
}

/// The socket's outbound queue is full: it is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl SocketLink {
    /// A link whose queue holds at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            waker: AtomicWaker::new(),
            signalled: AtomicBool::new(false),
            // The first poll reads, and registers the read side.
            readable: AtomicBool::new(true),
            close_code: AtomicU16::new(0),
            closing: AtomicBool::new(false),
            opened: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Frame>> {
        // Held for a push or a swap only; nothing in them panics.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `frame` for the socket, without waiting.
    ///
    /// # Errors
    /// [`QueueFull`] when the queue holds its capacity already; the frame is dropped.
    pub fn push(&self, frame: Frame) -> Result<(), QueueFull> {
        let mut queue = self.lock();
        if queue.len() >= self.capacity {
            return Err(QueueFull);
        }
        let was_empty = queue.is_empty();
        queue.push_back(frame);
        drop(queue);
        // A non-empty queue means the task was told already and has not taken it yet.
        if was_empty {
            self.signal();
        }
        Ok(())
    }

    /// Swaps everything queued into `batch` (which must be empty), leaving `batch`'s spare
    /// capacity to the queue: no allocation in steady state.
    pub fn take_queued(&self, batch: &mut VecDeque<Frame>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut *self.lock(), batch);
    }

    /// Gives back the queue's spare capacity, grown by a burst and kept for reuse since.
    pub fn trim_queue(&self) {
        self.lock().shrink_to_fit();
    }

    /// Makes the task's current waker the one every signal wakes. Called at each step before
    /// the flags are taken, so a signal in between is never missed.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Whether something may have been queued, or the socket's state changed (a close, the
    /// node's drain), since the last call.
    pub fn take_signal(&self) -> bool {
        self.signalled.swap(false, Ordering::AcqRel)
    }

    /// Whether the socket's read side woke the task since the last call (or the task never
    /// read yet). Taken before each read; a read that finds something sets it again with
    /// [`SocketLink::keep_reading`].
    pub fn take_readable(&self) -> bool {
        self.readable.swap(false, Ordering::AcqRel)
    }

    /// The read found a frame: there may be more, read again at the next step.
    pub fn keep_reading(&self) {
        self.readable.store(true, Ordering::Release);
    }

    /// Asks the socket to close with `code`. Returns whether this call decided the code.
    pub fn close(&self, code: u16) -> bool {
        let decided = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.closing.store(true, Ordering::Release);
        self.signal();
        decided
    }

    /// Wakes the socket's task so that it looks at its queue and state (closed, node
    /// draining).
    pub fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The code the socket was asked to close with, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Completes once a close was asked for. Takes the task's signals meanwhile: for a step
    /// (the opening) after which the task looks at its queue anyway.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            self.register(cx.waker());
            self.take_signal();
            if self.is_closed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Whether a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Records that something (any frame, a pong included) came from the peer now.
    pub fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    /// When the peer will have been silent for `timeout`.
    pub fn silent_until(&self, timeout: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed)) + timeout
    }
}

impl Wake for SocketLink {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// The socket's read side is ready: wake the task to read.
    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// One socket's entry in a room.
struct Subscriber {
    key: u64,
    /// Its user: a `typing` frame skips its typist's own sockets.
    user: Identity,
    link: Arc<SocketLink>,
}

/// The rooms of this node and their sockets. One per node, shared by the broker (which calls
/// [`Hub::dispatch`]) and the socket tasks (which hold [`Registration`]s).
pub struct Hub {
    rooms: Mutex<HashMap<RoomName, Vec<Subscriber>>>,
    next_key: AtomicU64,
    metrics: Metrics,
}

impl Hub {
    /// An empty hub that counts slow consumers in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            metrics,
        }
    }

    /// Adds a socket to `room`: from now on every frame dispatched to the room is queued on
    /// its `link`. The socket leaves the room when the returned [`Registration`] drops.
    pub fn register(
        self: &Arc<Self>,
        room: &RoomName,
        user: &Identity,
        link: Arc<SocketLink>,
    ) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(room.clone())
            .or_default()
            .push(Subscriber {
                key,
                user: user.clone(),
                link,
            });
        Registration {
            hub: Arc::clone(self),
            room: room.clone(),
            key,
        }
    }

    /// Queues `frame` on every socket in `room`. Never waits: a full queue closes that socket
    /// with 1013 instead.
    pub fn dispatch(&self, room: &str, frame: &Frame) {
        self.dispatch_to(room, frame, None);
    }

    /// Queues a `typing` frame on every socket in `room` but the typist's own (`typist` is
    /// the user id).
    pub fn dispatch_typing(&self, room: &str, frame: &Frame, typist: &str) {
        self.dispatch_to(room, frame, Some(typist));
    }

    fn dispatch_to(&self, room: &str, frame: &Frame, skip_user: Option<&str>) {
        let mut rooms = self.lock();
        let Some(subscribers) = rooms.get_mut(room) else {
            return;
        };
        subscribers.retain(|subscriber| {
            let link = &subscriber.link;
            if skip_user.is_some_and(|user| user == subscriber.user.id()) {
                return !link.is_closed();
            }
            if link.is_closed() {
                // Closing: it takes no more frames, and its task will unregister it.
                return false;
            }
            match link.push(frame.clone()) {
                Ok(()) => true,
                Err(QueueFull) => {
                    if link.close(close::TRY_AGAIN_LATER) {
                        self.metrics.slow_consumers.inc();
                    }
                    false
                }
            }
        });
        if subscribers.is_empty() {
            rooms.remove(room);
        }
    }

    /// Closes every socket of user `user_id` in `room` on this node with 4003 (a moderator's
    /// kick). Returns how many.
    pub fn kick(&self, room: &str, user_id: &str) -> usize {
        let mut rooms = self.lock();
        let Some(subscribers) = rooms.get_mut(room) else {
            return 0;
        };
        let mut kicked = 0;
        subscribers.retain(|subscriber| {
            if subscriber.user.id() != user_id {
                return true;
            }
            subscriber.link.close(close::KICKED);
            kicked += 1;
            false
        });
        if subscribers.is_empty() {
            rooms.remove(room);
        }
        kicked
    }

    /// Wakes the task of every socket on this node (the node began draining).
    pub fn wake_all(&self) {
        for subscribers in self.lock().values() {
            for subscriber in subscribers {
                subscriber.link.signal();
            }
        }
    }

    /// How many rooms have at least one socket on this node.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomName, Vec<Subscriber>>> {
        // The lock is never held across an await or a call that can panic, so it cannot be
        // poisoned; if it somehow were, the map is still consistent and usable.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unregister(&self, room: &RoomName, key: u64) {
        let mut rooms = self.lock();
        if let Some(subscribers) = rooms.get_mut(room) {
            subscribers.retain(|subscriber| subscriber.key != key);
            if subscribers.is_empty() {
                rooms.remove(room);
            }
        }
    }
}

/// A socket's place in a room of the [`Hub`]; dropping it takes the socket out of the room.
pub struct Registration {
    hub: Arc<Hub>,
    room: RoomName,
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.room, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(Metrics::new("test")))
    }

    fn link(capacity: usize) -> Arc<SocketLink> {
        Arc::new(SocketLink::new(capacity))
    }

    fn user(id: &str) -> Identity {
        Identity::new(crate::user::User {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            role: None,
            bot: false,
        })
    }

    fn queued_ids(link: &SocketLink) -> Vec<u64> {
        let mut batch = VecDeque::new();
        link.take_queued(&mut batch);
        batch.iter().map(Frame::id).collect()
    }

    #[test]
    fn a_frame_reaches_every_socket_of_its_room_and_no_other() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let other = RoomName::parse("other").unwrap();
        let (a, b, c) = (link(4), link(4), link(4));
        let _a = hub.register(&lobby, &user("u"), a.clone());
        let _b = hub.register(&lobby, &user("u"), b.clone());
        let _c = hub.register(&other, &user("u"), c.clone());
        hub.dispatch("lobby", &Frame::new(1, "one"));
        assert_eq!(queued_ids(&a), [1]);
        assert_eq!(queued_ids(&b), [1]);
        assert!(queued_ids(&c).is_empty());
    }

    #[test]
    fn typing_reaches_everyone_in_the_room_but_the_typist() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let (ann_tab1, ann_tab2, bob) = (link(4), link(4), link(4));
        let _a = hub.register(&lobby, &user("ann"), ann_tab1.clone());
        let _b = hub.register(&lobby, &user("ann"), ann_tab2.clone());
        let _c = hub.register(&lobby, &user("bob"), bob.clone());
        hub.dispatch_typing("lobby", &Frame::new(0, "typing"), "ann");
        assert!(queued_ids(&ann_tab1).is_empty());
        assert!(queued_ids(&ann_tab2).is_empty());
        assert_eq!(queued_ids(&bob), [0]);
    }

    #[test]
    fn a_full_queue_closes_only_that_socket_with_1013() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let (slow, fast) = (link(1), link(8));
        let _slow = hub.register(&lobby, &user("u"), slow.clone());
        let _fast = hub.register(&lobby, &user("u"), fast.clone());
        for id in 1..=3 {
            hub.dispatch("lobby", &Frame::new(id, "x"));
        }
        assert_eq!(slow.close_code(), Some(close::TRY_AGAIN_LATER));
        assert_eq!(hub.metrics.slow_consumers.get(), 1);
        assert_eq!(queued_ids(&fast), [1, 2, 3]);
        assert_eq!(
            queued_ids(&slow),
            [1],
            "what fitted is still there for the close"
        );
    }

    #[test]
    fn rooms_are_forgotten_when_their_last_socket_goes() {
        let hub = hub();
        let registration = hub.register(&RoomName::lobby(), &user("u"), link(1));
        assert_eq!(hub.room_count(), 1);
        drop(registration);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn the_first_close_code_wins() {
        let link = SocketLink::new(1);
        assert!(link.close(close::SERVICE_RESTART));
        assert!(!link.close(close::TRY_AGAIN_LATER));
        assert_eq!(link.close_code(), Some(close::SERVICE_RESTART));
        assert!(link.is_closed());
    }

    #[test]
    fn an_idle_link_holds_no_queue_memory_and_reuses_its_buffers() {
        let link = SocketLink::new(8);
        assert_eq!(
            link.lock().capacity(),
            0,
            "nothing allocated while nothing was queued"
        );
        let mut batch = VecDeque::new();
        link.push(Frame::new(1, "x")).unwrap();
        link.take_queued(&mut batch);
        assert_eq!(batch.len(), 1);
        batch.clear();
        link.push(Frame::new(2, "y")).unwrap();
        link.take_queued(&mut batch);
        assert_eq!(batch.iter().map(Frame::id).collect::<Vec<_>>(), [2]);
        assert!(
            link.lock().capacity() >= 1,
            "the socket's emptied batch went back to the queue"
        );
        batch.clear();
        link.trim_queue();
        assert_eq!(
            link.lock().capacity(),
            0,
            "trimmed, the empty queue holds nothing"
        );
        link.push(Frame::new(3, "z")).unwrap();
        link.trim_queue();
        assert_eq!(link.lock().len(), 1, "trimming keeps what is queued");
    }

    #[tokio::test]
    async fn closed_completes_for_a_close_before_or_during_the_wait() {
        let link = Arc::new(SocketLink::new(1));
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.closed().await }
        });
        tokio::task::yield_now().await;
        link.close(close::GOING_AWAY);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        link.closed().await;
    }
}
