//! `/api`: JSON over HTTP, beside the page and the socket.
//!
//! - [`rooms`]: scrollback, `GET /api/rooms/{room}/messages` (user cookie).
//! - [`messages`]: bots post messages; who is online (API token).
//! - [`moderation`]: delete a message, kick and ban (API token).
//! - [`client`]: the API token of `Authorization: Bearer`, and each token's rate limit.
//! - [`error`]: [`ApiError`], every refusal under `/api` as `{"error", "message"}` JSON.
//!
//! Every route here answers JSON, its errors and unknown paths included. Without
//! `CONFAB_API_TOKENS_FILE` every route but scrollback answers `404`. The OpenAPI document,
//! `GET /api/openapi.json`, is generated from the handlers' annotations ([`ApiDoc`]), so it
//! cannot drift from the code; every request is counted in
//! `confab_api_requests_total{route,status}`.

pub mod client;
pub mod error;
pub mod messages;
pub mod moderation;
pub mod rooms;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use client::{ApiClient, ApiClients};
pub use error::ApiError;

use crate::app::AppState;
use crate::protocol::RoomName;

/// Every route of `/api` as `confab_api_requests_total` labels it, with its success status:
/// exported as 0 from the start, so rates and alerts have a series before the first request.
pub const ROUTES: [(&str, &str); 6] = [
    ("GET /api/rooms/{room}/messages", "200"),
    ("POST /api/rooms/{room}/messages", "201"),
    ("DELETE /api/rooms/{room}/messages/{id}", "204"),
    ("GET /api/rooms/{room}/members", "200"),
    ("POST /api/rooms/{room}/kicks", "204"),
    ("GET /api/openapi.json", "200"),
];

/// The routes under `/api`, to be nested there.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/rooms/{room}/messages",
            get(rooms::get_messages).post(messages::post_message),
        )
        .route(
            "/rooms/{room}/messages/{id}",
            delete(moderation::delete_message),
        )
        .route("/rooms/{room}/members", get(messages::get_members))
        .route("/rooms/{room}/kicks", post(moderation::post_kick))
        .route("/openapi.json", get(get_openapi))
        .route_layer(middleware::from_fn_with_state(state, count_request))
        .fallback(async || ApiError::not_found("No such API route."))
}

/// The `{"error", "message"}` body of every refusal, for the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A short code: `bad_request`, `unauthorized`, `not_found`, `too_large`, `too_long`,
    /// `rate_limited`, `unavailable`.
    error: String,
    /// A sentence for people.
    message: String,
}

/// The OpenAPI 3 document of `/api`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "confab HTTP API",
        description = "Scrollback for pages, and posting and moderation for backends and bots. Errors are {\"error\", \"message\"} JSON.",
    ),
    paths(
        rooms::get_messages,
        messages::post_message,
        messages::get_members,
        moderation::delete_message,
        moderation::post_kick,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// Declares the two ways in: the API token (bearer) and the page's signed cookie.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A token of CONFAB_API_TOKENS_FILE"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "user_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("name"))),
        );
    }
}

/// `GET /api/openapi.json` (API token not needed: the document is no secret, but it exists
/// only when the API is on).
async fn get_openapi(State(state): State<AppState>) -> Response {
    if !state.api_clients.enabled() {
        return ApiError::not_found("The HTTP API is not enabled on this service.").into_response();
    }
    let json = ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes");
    ([(CONTENT_TYPE, "application/json")], json).into_response()
}

/// Counts every request to a matched route in `confab_api_requests_total{route,status}`.
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |path| path.as_str().to_owned());
    let route = format!("{} {route}", request.method());
    let response = next.run(request).await;
    state
        .metrics
        .api_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// The path's parameters, or `400` JSON (axum's own answer would be plain text).
fn path_of<T>(path: Result<axum::extract::Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|axum::extract::Path(value)| value)
        .map_err(|rejection| ApiError::bad_request(format!("Bad path: {}", rejection.body_text())))
}

/// The query's parameters, or `400` JSON.
fn query_of<T>(query: Result<axum::extract::Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(value)| value)
        .map_err(|rejection| ApiError::bad_request(format!("Bad query: {}", rejection.body_text())))
}

/// A room name from the path, or `404` JSON.
fn room_of(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room)
        .map_err(|_| ApiError::not_found("No such room: a room name is [a-z0-9][a-z0-9_-]{0,31}."))
}

/// A JSON request body, or the refusal that says what is wrong with it.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("The body is over 16 KiB.")
        } else {
            ApiError::bad_request("The body could not be read.")
        }
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!("The body is not the JSON expected: {error}."))
    })
}
