//! `delete`: take back one of the user's retained chat messages.

use tracing::debug;

use super::{Origin, Outcome};
use crate::moderation;

/// Starts the delete.
pub(super) fn apply(id: u64, origin: &Origin<'_>) -> Outcome {
    let (state, room, user) = (
        origin.state.clone(),
        origin.room.clone(),
        origin.user.clone(),
    );
    Outcome::Pending(Box::pin(async move {
        match moderation::delete(&state.broker, &room, &user, id).await {
            Ok(_) => None,
            Err(refused) => {
                debug!(message.id = id, %refused, "delete refused");
                Some(refused.code())
            }
        }
    }))
}
