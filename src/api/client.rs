//! Who is calling the HTTP API: a backend or bot holding one of the bearer tokens of
//! `CONFAB_API_TOKENS_FILE`, each with its own rate limit.
//!
//! Tokens are compared in constant time (`subtle`), and are never logged: a caller is known in
//! logs and metrics by its token's line number only.

use std::sync::{Mutex, PoisonError};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::ApiError;
use crate::app::AppState;
use crate::ratelimit::TokenBucket;

/// Requests a token may make at once.
pub const BURST: u32 = 60;
/// Requests a token may make per second, once its burst is spent.
pub const PER_SECOND: u32 = 30;

/// The API's tokens and each one's rate limit. Empty when the API is off.
pub struct ApiClients {
    tokens: Vec<SecretString>,
    buckets: Mutex<Vec<TokenBucket>>,
}

impl ApiClients {
    /// The clients holding `tokens`.
    pub fn new(tokens: Vec<SecretString>) -> Self {
        let now = Instant::now();
        let buckets = tokens
            .iter()
            .map(|_| TokenBucket::with_rate(BURST, PER_SECOND, now))
            .collect();
        Self {
            tokens,
            buckets: Mutex::new(buckets),
        }
    }

    /// Whether the API is on (`CONFAB_API_TOKENS_FILE` is set).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The index of the token equal to `presented`, comparing every token in constant time.
    fn find(&self, presented: &[u8]) -> Option<usize> {
        let mut found = None;
        for (index, token) in self.tokens.iter().enumerate() {
            if bool::from(token.expose_secret().as_bytes().ct_eq(presented)) {
                found = Some(index);
            }
        }
        found
    }

    /// Takes one request from token `index`'s bucket; `Err` the seconds until the next.
    fn take(&self, index: usize) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut buckets[index];
        if bucket.try_take(Instant::now()) {
            Ok(())
        } else {
            Err(bucket.time_to_next_token().as_secs_f64().ceil().max(1.0) as u64)
        }
    }
}

/// A request carrying a valid API token, within its rate limit. As an extractor it answers
/// `404` when the API is off, `401` without a valid `Authorization: Bearer` token, `429` over
/// the token's rate.
#[derive(Debug, Clone, Copy)]
pub struct ApiClient {
    /// The token's place in the file (0-based): how logs name the caller.
    pub token: usize,
}

impl FromRequestParts<AppState> for ApiClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let clients = &state.api_clients;
        if !clients.enabled() {
            return Err(ApiError::not_found(
                "The HTTP API is not enabled on this service.",
            ));
        }
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("Send `Authorization: Bearer <API token>`."))?;
        let token = clients
            .find(presented.as_bytes())
            .ok_or_else(|| ApiError::unauthorized("The API token is not valid."))?;
        clients.take(token).map_err(ApiError::rate_limited)?;
        Ok(Self { token })
    }
}
