//! When a chat must renew the expiry of its room's retained messages.
//!
//! A room's `chats` list expires when nobody has written to the room for the retention
//! (`CONFAB_RETAIN_DAYS`, at least a day), so an abandoned room's messages leave Redis.
//! Renewing that expiry on every chat was a `PEXPIRE` per publish, a tenth of the script's
//! cost (BENCHMARKS.md, "What a publish costs Redis"). Instead the publish script sets the
//! expiry to the retention plus [`RENEW_EVERY`] when it creates the list, and when the
//! publishing node asks; a node asks on its first chat in a room, then once per
//! [`RENEW_EVERY`]. So a chat sent at `t` follows a renewal by its own node at some
//! `r >= t - RENEW_EVERY`, and its list lives until at least
//! `r + retention + RENEW_EVERY >= t + retention`: every message is kept its full retention,
//! and an abandoned room's list goes at most an hour later than it would have.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::room::RoomName;

/// How often a node renews a room's expiry while it sends chats there; the expiry runs that
/// much past the retention.
pub const RENEW_EVERY: Duration = Duration::from_secs(3600);

/// The rooms this node renewed in the last [`RENEW_EVERY`], and when.
#[derive(Default)]
pub(super) struct ExpiryRenewals {
    rooms: Mutex<HashMap<RoomName, Instant>>,
}

impl ExpiryRenewals {
    /// Whether a chat this node sends to `room` at `now` must renew the room's expiry.
    pub(super) fn due(&self, room: &RoomName, now: Instant) -> bool {
        self.rooms()
            .get(room)
            .is_none_or(|renewed| now.duration_since(*renewed) >= RENEW_EVERY)
    }

    /// Records that a chat sent at `at` renewed `room`'s expiry (call it once the chat is in:
    /// a publish that failed renewed nothing).
    pub(super) fn renewed(&self, room: &RoomName, at: Instant) {
        let mut rooms = self.rooms();
        let entry = rooms.entry(room.clone()).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Forgets the renewals that are due again at `now`, so the map holds only the rooms this
    /// node sent chats to in the last [`RENEW_EVERY`].
    pub(super) fn forget_due(&self, now: Instant) {
        self.rooms()
            .retain(|_, renewed| now.duration_since(*renewed) < RENEW_EVERY);
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, Instant>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_is_renewed_on_its_first_chat_then_once_per_period_and_then_forgotten() {
        let renewals = ExpiryRenewals::default();
        let (lobby, other) = (RoomName::lobby(), RoomName::parse("other").unwrap());
        let start = Instant::now();
        assert!(renewals.due(&lobby, start), "the first chat renews");
        renewals.renewed(&lobby, start);
        assert!(!renewals.due(&lobby, start + RENEW_EVERY / 2));
        assert!(renewals.due(&other, start), "rooms are apart");
        assert!(renewals.due(&lobby, start + RENEW_EVERY), "due again");
        // An older renewal finishing late does not move the last one back.
        renewals.renewed(&lobby, start + RENEW_EVERY);
        renewals.renewed(&lobby, start);
        assert!(!renewals.due(&lobby, start + RENEW_EVERY * 3 / 2));

        renewals.renewed(&other, start + RENEW_EVERY / 2);
        renewals.forget_due(start + RENEW_EVERY * 3 / 2);
        assert_eq!(
            renewals.rooms().len(),
            1,
            "other is due again, so forgotten"
        );
        renewals.forget_due(start + RENEW_EVERY * 2);
        assert!(renewals.rooms().is_empty(), "the map shrinks back");
    }
}
