//! `chat` (or, without `v=2`, any text frame): publish a message to the room.

use tracing::debug;

use super::{Origin, Outcome, checked_text};
use crate::app::AppState;
use crate::broker::Broker;
use crate::protocol::{ErrorCode, RoomName};
use crate::user::Identity;

/// Checks the text and starts its publish; an empty text is ignored (as in the tutorial).
pub(super) fn apply(text: &str, origin: &Origin<'_>) -> Outcome {
    match checked_text(text, origin) {
        Err(code) => Outcome::Refused(code),
        Ok(None) => Outcome::Done,
        // Boxed, and owning what it needs: a publish is once per message a user sends, and
        // the live loop polls it beside the socket.
        Ok(Some(text)) => Outcome::Pending(Box::pin(publish(
            origin.state.clone(),
            origin.room.clone(),
            origin.user.clone(),
            text.to_owned(),
        ))),
    }
}

/// Publishes one chat message through the broker. Returns the error to send back, if it was
/// refused.
async fn publish(
    state: AppState,
    room: RoomName,
    user: Identity,
    text: String,
) -> Option<ErrorCode> {
    let timer = state.metrics.broker_publish_seconds.start_timer();
    match state.broker.publish(&room, &user, &text).await {
        Ok(_) => {
            timer.observe_duration();
            state.metrics.messages_received.inc();
            None
        }
        Err(error) => {
            timer.stop_and_discard();
            debug!(%error, "cannot publish: broker unavailable");
            Some(ErrorCode::Unavailable)
        }
    }
}
