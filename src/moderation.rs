//! Who may change a chat message after it was sent, and how: `edit` and `delete`, one
//! function each, called by the socket commands (and by anything else that changes messages).
//!
//! A change reads the message's retained frame, checks it (still there, not deleted, the
//! user's own), rewrites it ([`RetainedChat`]) and hands the broker the old frame, the new one
//! and the announcing `edit`/`delete` frame. The broker applies all three in one atomic step
//! only if the retained frame is still the one read; otherwise the change is read and checked
//! again, so two edits racing on two nodes both land, one after the other, and neither is lost.

use tracing::debug;

use crate::broker::{Amendment, Broker, BrokerError};
use crate::protocol::{
    DeleteData, EditData, ErrorCode, EventKind, RetainedChat, RoomName, event_body, now_ms,
};
use crate::user::Identity;

/// How many times a change is read and tried again when the message changed under it.
const ATTEMPTS: usize = 5;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeRefused {
    /// The message is someone else's.
    #[error("the message is not the user's own")]
    Forbidden,
    /// The room does not retain the message (never sent, deleted, or too old).
    #[error("the room does not retain that message")]
    NotFound,
    /// The broker could not be reached; nothing changed.
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
}

impl ChangeRefused {
    /// The `error` frame code the socket answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden => ErrorCode::Forbidden,
            Self::NotFound => ErrorCode::NotFound,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Changes the text of `user`'s chat message `id` in `room` to `text` (already checked).
/// Returns the id of the `edit` frame.
///
/// # Errors
/// [`ChangeRefused`]: not the user's, not retained, or the broker unreachable.
pub async fn edit<B: Broker>(
    broker: &B,
    room: &RoomName,
    user: &Identity,
    id: u64,
    text: &str,
) -> Result<u64, ChangeRefused> {
    let event = event_body(
        EventKind::Edit,
        room,
        user.json(),
        &EditData { id, text },
        now_ms(),
    );
    change(broker, room, user, id, &event, |chat| chat.edited_to(text)).await
}

/// Takes back `user`'s chat message `id` in `room`. Returns the id of the `delete` frame.
///
/// # Errors
/// [`ChangeRefused`]: not the user's, not retained, or the broker unreachable.
pub async fn delete<B: Broker>(
    broker: &B,
    room: &RoomName,
    user: &Identity,
    id: u64,
) -> Result<u64, ChangeRefused> {
    let event = event_body(
        EventKind::Delete,
        room,
        user.json(),
        &DeleteData { id },
        now_ms(),
    );
    change(broker, room, user, id, &event, |chat| chat.deleted()).await
}

/// Reads, checks and rewrites message `id`, and has the broker swap it in and publish
/// `event`, again if the message changed meanwhile.
async fn change<B: Broker>(
    broker: &B,
    room: &RoomName,
    user: &Identity,
    id: u64,
    event: &str,
    rewrite: impl Fn(&RetainedChat<'_>) -> String,
) -> Result<u64, ChangeRefused> {
    for _ in 0..ATTEMPTS {
        let Some(expected) = broker.retained(room, id).await? else {
            return Err(ChangeRefused::NotFound);
        };
        let Some(chat) = RetainedChat::parse(&expected).filter(|chat| !chat.deleted) else {
            return Err(ChangeRefused::NotFound);
        };
        if !chat.is_by(user.id()) {
            return Err(ChangeRefused::Forbidden);
        }
        let replacement = rewrite(&chat);
        let amendment = Amendment {
            target: id,
            expected: &expected,
            replacement: &replacement,
            event,
        };
        if let Some(event_id) = broker.amend(room, &amendment).await? {
            return Ok(event_id);
        }
        debug!(
            message.id = id,
            "message changed while being changed; reading it again"
        );
    }
    // Changed under us every time: someone is changing it as fast as we can read it.
    Err(ChangeRefused::Unavailable(BrokerError::Reply(
        "the message kept changing",
    )))
}
