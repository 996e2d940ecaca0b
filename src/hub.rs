//! The node's local fan-out: which of this node's sockets are in which room, and the one place
//! a frame is handed to each of them.
//!
//! The broker delivers every frame to [`Hub::dispatch`] exactly once per node, in id order;
//! the hub gives each socket of the frame's room a shared clone of it (a reference-count bump,
//! no copy) with a non-blocking `try_send` into the socket's bounded outbound queue. A socket
//! whose queue is full is a slow consumer: it is dropped from the room and told to close with
//! 1013, and nobody else waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::protocol::{Frame, RoomName, close};

/// Shared between a socket's task and the hub: lets either side ask the socket to close with a
/// code. The first code asked for wins. Lives as long as the socket.
#[derive(Debug, Default)]
pub struct SocketControl {
    close_code: AtomicU16,
    closed: CancellationToken,
}

impl SocketControl {
    /// Asks the socket to close with `code`. Returns whether this call decided the code.
    pub fn close(&self, code: u16) -> bool {
        let decided = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.closed.cancel();
        decided
    }

    /// The peer closed (or vanished): stop the socket without sending a close of our own.
    pub fn peer_closed(&self) {
        self.closed.cancel();
    }

    /// The code the socket was asked to close with, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// Completes once a close was asked for, by either side.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Whether a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// One socket's entry in a room.
struct Subscriber {
    key: u64,
    outbound_tx: mpsc::Sender<Frame>,
    control: Arc<SocketControl>,
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
    /// `outbound_tx`. The socket leaves the room when the returned [`Registration`] drops.
    pub fn register(
        self: &Arc<Self>,
        room: &RoomName,
        outbound_tx: mpsc::Sender<Frame>,
        control: Arc<SocketControl>,
    ) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(room.clone())
            .or_default()
            .push(Subscriber {
                key,
                outbound_tx,
                control,
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
        let mut rooms = self.lock();
        let Some(subscribers) = rooms.get_mut(room) else {
            return;
        };
        subscribers.retain(
            |subscriber| match subscriber.outbound_tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    if subscriber.control.close(close::TRY_AGAIN_LATER) {
                        self.metrics.slow_consumers.inc();
                    }
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            },
        );
        if subscribers.is_empty() {
            rooms.remove(room);
        }
    }

    /// How many rooms have at least one socket on this node.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Vec<Subscriber>>> {
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

    #[test]
    fn a_frame_reaches_every_socket_of_its_room_and_no_other() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let other = RoomName::parse("other").unwrap();
        let (a_tx, mut a_rx) = mpsc::channel(4);
        let (b_tx, mut b_rx) = mpsc::channel(4);
        let (c_tx, mut c_rx) = mpsc::channel(4);
        let _a = hub.register(&lobby, a_tx, Arc::default());
        let _b = hub.register(&lobby, b_tx, Arc::default());
        let _c = hub.register(&other, c_tx, Arc::default());
        hub.dispatch("lobby", &Frame::new(1, "one"));
        assert_eq!(a_rx.try_recv().unwrap().id(), 1);
        assert_eq!(b_rx.try_recv().unwrap().id(), 1);
        assert!(c_rx.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_closes_only_that_socket_with_1013() {
        let hub = hub();
        let lobby = RoomName::lobby();
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        let slow_control = Arc::new(SocketControl::default());
        let _slow = hub.register(&lobby, slow_tx, slow_control.clone());
        let _fast = hub.register(&lobby, fast_tx, Arc::default());
        for id in 1..=3 {
            hub.dispatch("lobby", &Frame::new(id, "x"));
        }
        assert_eq!(slow_control.close_code(), Some(close::TRY_AGAIN_LATER));
        assert_eq!(hub.metrics.slow_consumers.get(), 1);
        let received: Vec<u64> = std::iter::from_fn(|| fast_rx.try_recv().ok())
            .map(|f| f.id())
            .collect();
        assert_eq!(received, [1, 2, 3]);
    }

    #[test]
    fn rooms_are_forgotten_when_their_last_socket_goes() {
        let hub = hub();
        let (tx, _rx) = mpsc::channel(1);
        let registration = hub.register(&RoomName::lobby(), tx, Arc::default());
        assert_eq!(hub.room_count(), 1);
        drop(registration);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn the_first_close_code_wins() {
        let control = SocketControl::default();
        assert!(control.close(close::SERVICE_RESTART));
        assert!(!control.close(close::TRY_AGAIN_LATER));
        assert_eq!(control.close_code(), Some(close::SERVICE_RESTART));
        assert!(control.is_closed());
    }
}
