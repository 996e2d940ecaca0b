//! `/api`: JSON over HTTP, beside the page and the socket.
//!
//! - [`rooms`]: scrollback, `GET /api/rooms/{room}/messages` (user cookie).
//! - [`error`]: [`ApiError`], every refusal under `/api` as `{"error", "message"}` JSON.
//!
//! Every route here answers JSON, its errors and unknown paths included, so a client never
//! has to tell an HTML page from a JSON body.

pub mod error;
pub mod rooms;

use axum::Router;
use axum::routing::get;

pub use error::ApiError;

use crate::app::AppState;

/// The routes under `/api`, to be nested there.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms/{room}/messages", get(rooms::get_messages))
        .fallback(async || ApiError::not_found("No such API route."))
}
