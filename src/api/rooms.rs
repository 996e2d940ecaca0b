//! `GET /api/rooms/{room}/messages?before=ID&limit=N`: scrollback through a room's retained
//! chat messages, oldest first, each in its latest state (edited or deleted).
//!
//! The page asks for the page before the oldest message it shows, so pages and the live
//! history meet at one id: nothing twice, nothing out of order.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::debug;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, path_of, query_of};
use crate::app::AppState;
use crate::broker::Broker;
use crate::protocol::RoomName;

/// Messages per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 100;

/// The query: both optional, both whole numbers when given.
#[derive(Debug, Deserialize)]
pub struct ScrollbackQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// One page of scrollback, for the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Scrollback {
    /// `chat` frames as on the socket, oldest first, each in its latest state
    /// (`"edited": true`, or `"deleted": true` with `"data": ""`).
    #[schema(value_type = Vec<Object>)]
    messages: Vec<serde_json::Value>,
    /// Whether the room retains older messages.
    more: bool,
}

/// Answers one page of scrollback: `{"messages": [frames], "more": bool}`.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/messages",
    params(
        ("room" = String, Path, description = "A room name: [a-z0-9][a-z0-9_-]{0,31}", pattern = "^[a-z0-9][a-z0-9_-]{0,31}$"),
        ("before" = Option<u64>, Query, description = "Only messages with smaller ids; absent: the newest"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 50"),
    ),
    responses(
        (status = 200, description = "A page of retained chat messages, oldest first", body = Scrollback),
        (status = 400, description = "`before` or `limit` out of range", body = ErrorBody),
        (status = 401, description = "No valid user cookie", body = ErrorBody),
        (status = 404, description = "Not a room name", body = ErrorBody),
        (status = 503, description = "The broker is unavailable", body = ErrorBody),
    ),
    security(("user_cookie" = []))
)]
pub async fn get_messages(
    State(state): State<AppState>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<ScrollbackQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = path_of(room)?;
    let query = query_of(query)?;
    if state.cookies.identify(&headers).is_none() {
        return Err(ApiError::unauthorized("Sign in first."));
    }
    let room = RoomName::parse(&room).map_err(|_| ApiError::not_found("No such room."))?;
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| ApiError::bad_request("`before` must be a message id."))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}."
                ))
            })?,
    };
    let page = state
        .broker
        .scrollback(&room, before, limit)
        .await
        .map_err(|error| {
            debug!(%error, room.id = %room, "cannot read scrollback: broker unavailable");
            ApiError::unavailable("The chat service is unavailable; try again shortly.")
        })?;
    // The frames are JSON already, as they went on the wire: they are joined, not re-encoded.
    let mut body = String::with_capacity(
        32 + page
            .messages
            .iter()
            .map(|frame| frame.wire().len() + 1)
            .sum::<usize>(),
    );
    body.push_str("{\"messages\":[");
    for (index, frame) in page.messages.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(frame.text().as_str());
    }
    body.push_str("],\"more\":");
    body.push_str(if page.more { "true" } else { "false" });
    body.push('}');
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            // Edits and deletes change old pages: never cached.
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}
