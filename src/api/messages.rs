//! Backends and bots: post a message as a named bot, read who is in a room.
//!
//! `POST /api/rooms/{room}/messages` publishes a `chat` frame whose user carries `"bot": true`,
//! through the same broker call as a socket's chat (so it takes its place in the room's order
//! and reaches every node); the text rules and `unavailable` apply as for sockets.
//! `GET /api/rooms/{room}/members` lists the users online, as a `list` frame would.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{debug, info};
use utoipa::ToSchema;

use super::client::ApiClient;
use super::{ApiError, ErrorBody, json_body, path_of, room_of};
use crate::app::AppState;
use crate::broker::Broker;
use crate::protocol::{ChatText, check_chat_text};
use crate::user::{Identity, User, UserName};

/// The longest bot id, in bytes.
pub const MAX_BOT_ID_BYTES: usize = 128;

/// `POST /api/rooms/{room}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PostMessage {
    /// The message, as a socket would send it: trimmed, 1 to `CONFAB_MAX_MESSAGE_CHARS`
    /// characters.
    text: String,
    /// The bot it is from.
    user: BotUser,
}

/// A bot, as the poster names it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BotUser {
    /// Its id: 1 to 128 bytes, no control characters. Ids share one space with people's.
    id: String,
    /// Its display name: 1 to 32 characters, no control characters.
    name: String,
}

/// The id a posted message got.
#[derive(Debug, Serialize, ToSchema)]
pub struct Posted {
    /// The message id: the room's order, as on the socket.
    id: u64,
}

/// Who is online in a room.
#[derive(Debug, Serialize, ToSchema)]
pub struct Members {
    /// Each online user once: `{"id", "name", "image"}`, plus `"role"` or `"bot"` when set.
    #[schema(value_type = Vec<Object>)]
    members: Vec<Arc<RawValue>>,
}

/// Posts a message as a bot.
#[utoipa::path(
    post,
    path = "/api/rooms/{room}/messages",
    params(("room" = String, Path, description = "A room name: [a-z0-9][a-z0-9_-]{0,31}", pattern = "^[a-z0-9][a-z0-9_-]{0,31}$")),
    request_body = PostMessage,
    responses(
        (status = 201, description = "Published; delivered to every socket of the room", body = Posted),
        (status = 400, description = "Not JSON, a field missing, an empty text, a bad bot id or name", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 404, description = "Not a room name (or the API is off)", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 422, description = "A text over CONFAB_MAX_MESSAGE_CHARS", body = ErrorBody),
        (status = 429, description = "Over the token's rate", body = ErrorBody),
        (status = 503, description = "The broker is unavailable: delivered to nobody", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn post_message(
    client: ApiClient,
    State(state): State<AppState>,
    room: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let room = room_of(&path_of(room)?)?;
    let post: PostMessage = json_body(body)?;
    let text = match check_chat_text(&post.text, state.config.chat.max_message_chars) {
        ChatText::Valid(text) => text,
        ChatText::Empty => return Err(ApiError::bad_request("`text` is empty.")),
        ChatText::TooLong => {
            return Err(ApiError::too_long(format!(
                "`text` is over {} characters.",
                state.config.chat.max_message_chars
            )));
        }
    };
    let bot = bot_identity(post.user)?;
    let id = state
        .broker
        .publish(&room, &bot, text)
        .await
        .map_err(|error| {
            debug!(%error, "cannot publish a bot message: broker unavailable");
            ApiError::unavailable("The chat service is unavailable; the message was not delivered.")
        })?;
    state.metrics.messages_received.inc();
    info!(room.id = %room, api.token = client.token, message.id = id, "bot message posted");
    let body = serde_json::to_string(&Posted { id }).expect("a number serializes");
    Ok((
        StatusCode::CREATED,
        [(CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// The bot a post names, checked.
fn bot_identity(bot: BotUser) -> Result<Identity, ApiError> {
    let id = bot.id;
    if id.is_empty() || id.len() > MAX_BOT_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "`user.id` must be 1 to 128 bytes, no control characters.",
        ));
    }
    let name = UserName::parse(&bot.name)
        .map_err(|reason| ApiError::bad_request(format!("`user.name`: {reason}")))?;
    Ok(Identity::new(User {
        image: User::default_image(&id),
        id,
        name: name.as_str().to_owned(),
        role: None,
        bot: true,
    }))
}

/// Lists the users online in a room.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/members",
    params(("room" = String, Path, description = "A room name", pattern = "^[a-z0-9][a-z0-9_-]{0,31}$")),
    responses(
        (status = 200, description = "Who is online", body = Members),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 404, description = "Not a room name (or the API is off)", body = ErrorBody),
        (status = 429, description = "Over the token's rate", body = ErrorBody),
        (status = 503, description = "The broker is unavailable", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn get_members(
    _client: ApiClient,
    State(state): State<AppState>,
    room: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let room = room_of(&path_of(room)?)?;
    let members = state.broker.members(&room).await.map_err(|error| {
        debug!(%error, "cannot list members: broker unavailable");
        ApiError::unavailable("The chat service is unavailable; try again shortly.")
    })?;
    let body = serde_json::to_string(&Members { members }).expect("valid JSON serializes");
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
