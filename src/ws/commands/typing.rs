//! `typing`: tell the room's other sockets that the user is typing. No rate-limit token; the
//! live loop lets one through per [`crate::broker::TYPING_INTERVAL`] per socket, the broker
//! one per user and room across the service; the rest are dropped without an error.

use tracing::debug;

use super::{Origin, Outcome};
use crate::broker::Broker;

/// Starts sending the `typing` frame on.
pub(super) fn apply(origin: &Origin<'_>) -> Outcome {
    let (state, room, user) = (
        origin.state.clone(),
        origin.room.clone(),
        origin.user.clone(),
    );
    Outcome::Pending(Box::pin(async move {
        if let Err(error) = state.broker.typing(&room, &user).await {
            // Typing is a hint: nobody is told it failed, as nobody would miss it.
            debug!(%error, "cannot send typing on: broker unavailable");
        }
        None
    }))
}
