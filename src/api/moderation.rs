//! Moderation for backends: delete a message, kick a user (with an optional ban). Both call
//! the same functions as a moderator's socket commands ([`crate::moderation`]).

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::info;
use utoipa::ToSchema;

use super::client::ApiClient;
use super::{ApiError, ErrorBody, json_body, path_of, room_of};
use crate::app::AppState;
use crate::auth::Role;
use crate::moderation::{self, ChangeRefused, MAX_BAN};
use crate::user::{Identity, User};

/// The user a `delete` frame made through the API names.
static API_MODERATOR: LazyLock<Identity> = LazyLock::new(|| {
    Identity::new(User {
        id: "confab-api".into(),
        name: "Moderator".into(),
        image: User::default_image("confab-api"),
        role: Some(Role::Admin),
        bot: true,
    })
});

/// `POST /api/rooms/{room}/kicks`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Kick {
    /// The user to remove from the room.
    user_id: String,
    /// How long the user's new sockets in the room are refused (at most a year); 0 or absent:
    /// no ban.
    #[serde(default)]
    ban_seconds: u64,
}

/// Deletes a retained chat message: broadcast as a `delete` frame.
#[utoipa::path(
    delete,
    path = "/api/rooms/{room}/messages/{id}",
    params(
        ("room" = String, Path, description = "A room name", pattern = "^[a-z0-9][a-z0-9_-]{0,31}$"),
        ("id" = u64, Path, description = "The message id"),
    ),
    responses(
        (status = 204, description = "Deleted; every socket of the room gets the delete frame"),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 404, description = "Not a room name, or the room does not retain that message", body = ErrorBody),
        (status = 429, description = "Over the token's rate", body = ErrorBody),
        (status = 503, description = "The broker is unavailable; nothing changed", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn delete_message(
    client: ApiClient,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (room, id) = path_of(path)?;
    let room = room_of(&room)?;
    let id: u64 =
        id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            ApiError::bad_request("The message id must be a whole number above 0.")
        })?;
    match moderation::delete(&state.broker, &room, &API_MODERATOR, id).await {
        Ok(_) => {
            info!(room.id = %room, api.token = client.token, message.id = id, "message deleted through the API");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(ChangeRefused::NotFound | ChangeRefused::Forbidden) => Err(ApiError::not_found(
            "The room does not retain that message (never sent, deleted, or too old).",
        )),
        Err(ChangeRefused::Unavailable(_)) => Err(ApiError::unavailable(
            "The chat service is unavailable; nothing changed.",
        )),
    }
}

/// Removes a user from a room, on every node, with an optional ban.
#[utoipa::path(
    post,
    path = "/api/rooms/{room}/kicks",
    params(("room" = String, Path, description = "A room name", pattern = "^[a-z0-9][a-z0-9_-]{0,31}$")),
    request_body = Kick,
    responses(
        (status = 204, description = "The user's sockets in the room close with 4003 on every node"),
        (status = 400, description = "Not JSON, no user_id, or a ban over a year", body = ErrorBody),
        (status = 401, description = "No valid API token", body = ErrorBody),
        (status = 404, description = "Not a room name (or the API is off)", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 429, description = "Over the token's rate", body = ErrorBody),
        (status = 503, description = "The broker is unavailable; nobody was kicked", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn post_kick(
    client: ApiClient,
    State(state): State<AppState>,
    room: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let room = room_of(&path_of(room)?)?;
    let kick: Kick = json_body(body)?;
    if kick.user_id.is_empty() || kick.user_id.len() > 128 {
        return Err(ApiError::bad_request("`user_id` must be 1 to 128 bytes."));
    }
    let ban = Duration::from_secs(kick.ban_seconds);
    if ban > MAX_BAN {
        return Err(ApiError::bad_request(
            "`ban_seconds` is at most a year (31536000).",
        ));
    }
    moderation::kick(&state.broker, &room, None, &kick.user_id, ban)
        .await
        .map_err(|_| {
            ApiError::unavailable("The chat service is unavailable; nobody was kicked.")
        })?;
    info!(room.id = %room, api.token = client.token, "kick through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}
