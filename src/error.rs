//! `AppError`: how a failed HTTP handler answers. User mistakes become short 4xx answers;
//! everything else is a plain 500 whose cause is logged once, here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A handler failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The page does not exist (e.g. an invalid room name in the path).
    #[error("not found")]
    NotFound,
    /// A template failed to render.
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "Not found.\n").into_response(),
            Self::Template(error) => {
                tracing::error!(%error, "page rendering failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error.\n",
                )
                    .into_response()
            }
        }
    }
}

/// The fallback for every unknown route.
pub async fn not_found() -> AppError {
    AppError::NotFound
}
