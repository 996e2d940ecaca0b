//! `kick`: a moderator removes a user from the room (their sockets close with 4003 on every
//! node), with an optional ban. Anyone else gets `forbidden`.

use std::time::Duration;

use tracing::debug;

use super::{Origin, Outcome};
use crate::moderation;

/// Starts the kick.
pub(super) fn apply(user_id: &str, ban_seconds: u64, origin: &Origin<'_>) -> Outcome {
    let (state, room, user) = (
        origin.state.clone(),
        origin.room.clone(),
        origin.user.clone(),
    );
    let user_id = user_id.to_owned();
    Outcome::Pending(Box::pin(async move {
        let ban = Duration::from_secs(ban_seconds);
        match moderation::kick(&state.broker, &room, Some(&user), &user_id, ban).await {
            Ok(()) => None,
            Err(refused) => {
                debug!(%refused, "kick refused");
                Some(refused.code())
            }
        }
    }))
}
