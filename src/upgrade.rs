//! The WebSocket handshake of `GET /ws/chat`, done here so that confab owns the socket's
//! stream.
//!
//! axum's extractor hides the WebSocket stream and its frames; confab needs both: to put
//! [`WriteBuffer`] under the WebSocket layer, and to write event frames that are encoded once
//! for every socket straight into it ([`FrameSink`]), so that no socket frames them again or
//! keeps a buffer the size of the largest one for the rest of its life. The checks follow
//! RFC 6455 §4.2: a request that is no WebSocket handshake gets `426`, a malformed one `400`,
//! an unknown protocol version `426` naming version 13.

use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::protocol::Frame;
use crate::write_buffer::WriteBuffer;
use crate::ws::FrameSink;

/// An open server socket: the WebSocket protocol over the write buffer over the upgraded
/// connection.
pub type ServerSocket = WebSocketStream<WriteBuffer<TokioIo<Upgraded>>>;

impl FrameSink for ServerSocket {
    /// Puts the frame's wire bytes into the write buffer, past the WebSocket layer: the layer
    /// writes its own frames through to the same buffer at once, so the two never interleave
    /// inside a frame.
    fn poll_send_frame(
        &mut self,
        cx: &mut Context<'_>,
        frame: &Frame,
    ) -> Poll<Result<(), tungstenite::Error>> {
        self.get_mut()
            .poll_put(cx, frame.wire())
            .map_err(tungstenite::Error::Io)
    }
}

/// A checked WebSocket handshake, ready to be answered with `101 Switching Protocols`.
pub struct SocketUpgrade {
    accept_key: String,
    on_upgrade: OnUpgrade,
}

/// Why a request to a WebSocket route cannot be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRejection {
    /// No `Connection: upgrade` and `Upgrade: websocket`: a plain HTTP request.
    #[error("This is a WebSocket endpoint: connect with a WebSocket client.")]
    NotWebSocket,
    /// A handshake without `Sec-WebSocket-Key`.
    #[error("The WebSocket handshake has no Sec-WebSocket-Key.")]
    MissingKey,
    /// A handshake for a protocol version other than 13.
    #[error("Only WebSocket version 13 is supported.")]
    UnsupportedVersion,
    /// The connection cannot be taken over (the server did not offer an upgrade on it).
    #[error("This connection cannot be upgraded.")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        tracing::debug!(rejection = %self, "WebSocket handshake refused");
        let body = format!("{self}\n");
        match self {
            Self::NotWebSocket => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                body,
            )
                .into_response(),
            Self::UnsupportedVersion => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                body,
            )
                .into_response(),
            Self::MissingKey => (StatusCode::BAD_REQUEST, body).into_response(),
            Self::NotUpgradable => (StatusCode::UPGRADE_REQUIRED, body).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        if !has_token(headers, &header::CONNECTION, "upgrade")
            || !has_token(headers, &header::UPGRADE, "websocket")
        {
            return Err(UpgradeRejection::NotWebSocket);
        }
        if !has_token(headers, &header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(UpgradeRejection::UnsupportedVersion);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRejection::MissingKey)?;
        let accept_key = derive_accept_key(key.as_bytes());
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self {
            accept_key,
            on_upgrade,
        })
    }
}

impl SocketUpgrade {
    /// Answers `101 Switching Protocols`, and runs `serve` on the socket once the connection
    /// is handed over, in a task of its own.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(ServerSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Boxed: the handover is needed once, and the task should not keep room for it.
        let on_upgrade = self.on_upgrade;
        let handover = Box::pin(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "the connection closed during the upgrade");
                    return None;
                }
            };
            let stream = WriteBuffer::new(TokioIo::new(upgraded));
            Some(WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await)
        });
        // A combinator rather than a block: the socket moves from the handover's output into
        // `serve` without a second copy kept beside it.
        tokio::spawn(handover.then(|socket| match socket {
            Some(socket) => Either::Left(serve(socket)),
            None => Either::Right(std::future::ready(())),
        }));
        let accept = HeaderValue::from_str(&self.accept_key).expect("base64 is a header value");
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

/// Whether a comma-separated header holds `token`, in any case.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}
