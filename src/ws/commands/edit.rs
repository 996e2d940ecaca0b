//! `edit`: change the text of one of the user's retained chat messages.

use tracing::debug;

use super::{Origin, Outcome, checked_text};
use crate::moderation;
use crate::protocol::ErrorCode;

/// Checks the new text and starts the edit.
pub(super) fn apply(id: u64, text: &str, origin: &Origin<'_>) -> Outcome {
    let text = match checked_text(text, origin) {
        Err(code) => return Outcome::Refused(code),
        // An edit to nothing is no edit: deleting is its own command.
        Ok(None) => return Outcome::Refused(ErrorCode::BadCommand),
        Ok(Some(text)) => text.to_owned(),
    };
    let (state, room, user) = (
        origin.state.clone(),
        origin.room.clone(),
        origin.user.clone(),
    );
    Outcome::Pending(Box::pin(async move {
        match moderation::edit(&state.broker, &room, &user, id, &text).await {
            Ok(_) => None,
            Err(refused) => {
                debug!(message.id = id, %refused, "edit refused");
                Some(refused.code())
            }
        }
    }))
}
