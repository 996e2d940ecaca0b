//! What a client's message asks of its socket, applied: one file per command.
//!
//! [`crate::protocol::client`] reads a message into a [`Command`]; [`apply`] hands it to its
//! file, which checks it and either answers at once or returns the one boxed future the live
//! loop polls until the broker has answered (see `ws/live.rs`): an idle socket carries no
//! command state. Rate limiting and the per-socket `typing` throttle are the live loop's.

mod chat;
mod delete;
mod edit;
mod kick;
mod typing;

use std::pin::Pin;

use crate::app::AppState;
use crate::protocol::{ChatText, Command, ErrorCode, RoomName, check_chat_text};
use crate::user::Identity;

/// A command waiting on the broker: `Some` error to send back once it is refused.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Option<ErrorCode>> + Send>>;

/// What applying a command came to.
pub(crate) enum Outcome {
    /// Nothing to wait for, nothing to say (an empty chat, a throttled `typing`).
    Done,
    /// Refused at once: send this `error` frame.
    Refused(ErrorCode),
    /// Poll this until the broker has answered; read nothing else meanwhile.
    Pending(Pending),
}

/// The socket a command came from.
pub(crate) struct Origin<'a> {
    /// The node's state: broker, settings, metrics.
    pub(crate) state: &'a AppState,
    /// The socket's room.
    pub(crate) room: &'a RoomName,
    /// The socket's user.
    pub(crate) user: &'a Identity,
}

/// Applies `command` from `origin`.
pub(crate) fn apply(command: Command<'_>, origin: &Origin<'_>) -> Outcome {
    match command {
        Command::Chat(text) => chat::apply(&text, origin),
        Command::Typing => typing::apply(origin),
        Command::Edit { id, text } => edit::apply(id, &text, origin),
        Command::Delete { id } => delete::apply(id, origin),
        Command::Kick {
            user_id,
            ban_seconds,
        } => kick::apply(&user_id, ban_seconds, origin),
    }
}

/// Trims and measures a text for a chat or an edit: `Ok` the text to publish, `Err` the
/// refusal; `Ok(None)` for an empty one.
fn checked_text<'t>(text: &'t str, origin: &Origin<'_>) -> Result<Option<&'t str>, ErrorCode> {
    match check_chat_text(text, origin.state.config.chat.max_message_chars) {
        ChatText::Empty => Ok(None),
        ChatText::TooLong => Err(ErrorCode::TooLong),
        ChatText::Valid(text) => Ok(Some(text)),
    }
}
