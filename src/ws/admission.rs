//! The checks a socket passes once open, in the order the page expects their close codes:
//! user, room, `since`, the per-user and per-address limits.

use std::sync::Arc;

use crate::client::ClientInfo;
use crate::limits::{SocketLimitExceeded, SocketLimits, SocketPermit};
use crate::metrics::Rejection;
use crate::protocol::{Dialect, InvalidRoomName, RoomName, close};
use crate::user::Identity;

use super::SocketParams;

/// What the upgrade learned about a socket, checked again once it is open (where a refusal
/// can be a close code the page understands rather than an HTTP status).
pub struct Opening {
    /// The user named by a validly signed cookie, if any.
    pub user: Option<Identity>,
    /// The room asked for.
    pub room: Result<RoomName, InvalidRoomName>,
    /// The `since` asked for: absent, a number, or garbage.
    pub since: Result<Option<u64>, ()>,
    /// How the socket's text frames are to be read (`v=2`: commands).
    pub dialect: Dialect,
    /// The socket's place under the per-user and per-address limits (`None` without a user).
    pub permit: Option<Result<SocketPermit, SocketLimitExceeded>>,
}

impl Opening {
    /// Reads the query parameters, and counts the socket against its user's and address's
    /// limits.
    pub fn new(
        user: Option<Identity>,
        params: SocketParams,
        limits: &Arc<SocketLimits>,
        client: &ClientInfo,
    ) -> Self {
        let room = params
            .room
            .as_deref()
            .map_or_else(|| Ok(RoomName::lobby()), RoomName::parse);
        let since = match params.since.as_deref() {
            None | Some("") => Ok(None),
            Some(raw) => raw.parse::<u64>().map(Some).map_err(drop),
        };
        let dialect = match params.v.as_deref() {
            Some("2") => Dialect::Commands,
            _ => Dialect::Text,
        };
        let permit = user
            .as_ref()
            .map(|user| limits.acquire(user.id(), client.ip));
        Self {
            user,
            room,
            since,
            dialect,
            permit,
        }
    }
}

/// Why a socket was refused once open, and how it is told.
pub(super) struct Refusal {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) rejection: Rejection,
}

/// A socket that passed every check after the upgrade.
pub(super) struct Accepted {
    pub(super) user: Identity,
    pub(super) room: RoomName,
    pub(super) since: Option<u64>,
    pub(super) dialect: Dialect,
    pub(super) permit: Option<SocketPermit>,
}

impl Opening {
    /// The checks after the upgrade, in the order the page expects their codes.
    pub(super) fn check(self) -> Result<Accepted, Refusal> {
        let refuse = |code, rejection| Refusal {
            code,
            reason: close::reason(code),
            rejection,
        };
        let user = self
            .user
            .ok_or_else(|| refuse(close::INVALID_USER, Rejection::InvalidUser))?;
        let room = self
            .room
            .map_err(|_| refuse(close::INVALID_ROOM, Rejection::InvalidRoom))?;
        let since = self
            .since
            .map_err(|()| refuse(close::INVALID_SINCE, Rejection::InvalidSince))?;
        let permit = match self.permit {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(SocketLimitExceeded::PerUser)) => {
                return Err(Refusal {
                    code: close::POLICY_VIOLATION,
                    reason: "Too many connections for this user",
                    rejection: Rejection::TooManySocketsForUser,
                });
            }
            Some(Err(SocketLimitExceeded::PerAddress)) => {
                return Err(Refusal {
                    code: close::POLICY_VIOLATION,
                    reason: "Too many connections from this address",
                    rejection: Rejection::TooManySocketsFromAddress,
                });
            }
        };
        Ok(Accepted {
            user,
            room,
            since,
            dialect: self.dialect,
            permit,
        })
    }
}
