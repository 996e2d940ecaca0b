//! Who is in a room, per user rather than per socket, as the embedded broker tracks it.
//!
//! Contract guarantee 4: a user with several tabs is listed once; `join` is announced when the
//! user's first socket opens, `left` when the last one has been closed for the leave grace, and
//! a reconnect inside that window announces nothing. This module is that state machine, with
//! no clock and no I/O: the broker owns the timers and passes back the [`LeaveTicket`] it was
//! given, so a timer that fires after the user came back is recognised as stale. The Redis
//! broker runs the same rules inside Lua scripts (see `docs/redis.md`).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::user::Identity;

/// Identifies one pending departure, so a late timer cannot announce a user who came back.
pub type LeaveTicket = u64;

/// What a socket's arrival means for the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The user was not present: announce `join`.
    Joined,
    /// The user already had a socket here, or came back within the grace: stay quiet.
    Quiet,
}

/// What a socket's departure means for the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The user still has another socket here.
    Stays,
    /// That was the user's last socket: announce `left` unless they return before the timer
    /// carrying this ticket fires.
    Leaving(LeaveTicket),
    /// That was the last socket and there is no grace: announce `left` now.
    Gone,
}

#[derive(Debug)]
struct Member {
    identity: Identity,
    sockets: u32,
    leaving: Option<LeaveTicket>,
}

/// The members of one room. Owned by the room's entry in the embedded broker.
#[derive(Debug, Default)]
pub struct RoomPresence {
    members: HashMap<String, Member>,
}

impl RoomPresence {
    /// Records one more socket of `identity` in the room.
    pub fn arrive(&mut self, identity: &Identity) -> Arrival {
        match self.members.get_mut(identity.id()) {
            Some(member) => {
                member.sockets += 1;
                member.leaving = None;
                Arrival::Quiet
            }
            None => {
                self.members.insert(
                    identity.id().to_owned(),
                    Member {
                        identity: identity.clone(),
                        sockets: 1,
                        leaving: None,
                    },
                );
                Arrival::Joined
            }
        }
    }

    /// Records that one socket of `user_id` closed. With `grace` false the user is removed at
    /// once when this was their last socket; otherwise they stay listed under `ticket`.
    pub fn depart(&mut self, user_id: &str, grace: bool, ticket: LeaveTicket) -> Departure {
        let Some(member) = self.members.get_mut(user_id) else {
            return Departure::Stays;
        };
        member.sockets = member.sockets.saturating_sub(1);
        if member.sockets > 0 {
            Departure::Stays
        } else if grace {
            member.leaving = Some(ticket);
            Departure::Leaving(ticket)
        } else {
            self.members.remove(user_id);
            Departure::Gone
        }
    }

    /// The grace of `ticket` is over: removes the user if they did not come back meanwhile and
    /// returns them, to be announced as `left`.
    pub fn expire(&mut self, user_id: &str, ticket: LeaveTicket) -> Option<Identity> {
        let member = self.members.get(user_id)?;
        if member.sockets == 0 && member.leaving == Some(ticket) {
            self.members.remove(user_id).map(|member| member.identity)
        } else {
            None
        }
    }

    /// The users listed in the room, each once.
    pub fn members(&self) -> Vec<Arc<RawValue>> {
        self.members
            .values()
            .map(|member| member.identity.json().clone())
            .collect()
    }

    /// Whether nobody is listed (nor about to leave).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user::User;

    fn identity(id: &str) -> Identity {
        Identity::new(User {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            role: None,
            bot: false,
        })
    }

    #[test]
    fn a_user_with_three_tabs_is_listed_once_and_announced_once() {
        let ann = identity("ann");
        let mut room = RoomPresence::default();
        assert_eq!(room.arrive(&ann), Arrival::Joined);
        assert_eq!(room.arrive(&ann), Arrival::Quiet);
        assert_eq!(room.arrive(&ann), Arrival::Quiet);
        assert_eq!(room.members().len(), 1);
        assert_eq!(room.depart("ann", true, 1), Departure::Stays);
        assert_eq!(room.depart("ann", true, 2), Departure::Stays);
        assert_eq!(room.depart("ann", true, 3), Departure::Leaving(3));
        assert_eq!(room.members().len(), 1, "still listed during the grace");
        assert!(room.expire("ann", 3).is_some());
        assert!(room.is_empty());
    }

    #[test]
    fn a_return_within_the_grace_cancels_the_leave() {
        let ann = identity("ann");
        let mut room = RoomPresence::default();
        room.arrive(&ann);
        assert_eq!(room.depart("ann", true, 7), Departure::Leaving(7));
        assert_eq!(room.arrive(&ann), Arrival::Quiet);
        assert!(
            room.expire("ann", 7).is_none(),
            "the stale timer announces nothing"
        );
        assert_eq!(room.depart("ann", true, 8), Departure::Leaving(8));
        assert!(
            room.expire("ann", 7).is_none(),
            "an older ticket stays stale"
        );
        assert!(room.expire("ann", 8).is_some());
    }

    #[test]
    fn without_grace_the_last_socket_leaves_at_once() {
        let ann = identity("ann");
        let mut room = RoomPresence::default();
        room.arrive(&ann);
        assert_eq!(room.depart("ann", false, 1), Departure::Gone);
        assert!(room.is_empty());
        assert_eq!(room.arrive(&ann), Arrival::Joined);
    }

    #[test]
    fn an_unknown_departure_changes_nothing() {
        let mut room = RoomPresence::default();
        assert_eq!(room.depart("nobody", true, 1), Departure::Stays);
        assert!(room.is_empty());
    }
}
