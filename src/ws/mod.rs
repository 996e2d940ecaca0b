//! `GET /ws/chat`: the upgrade checks, and the task that runs one socket from its first frame
//! to its close.
//!
//! After the upgrade one task runs the socket. It writes the opening (history, then `list`),
//! then polls everything at once in one loop: the peer's frames (each text frame is checked,
//! rate-limited and published through the broker), the socket's bounded outbound queue (every
//! queued frame written before one flush), pings, and the idle, stall and drain deadlines on
//! one timer. Whatever ends it, the close and the leave run in one place at the end. One task
//! and no lock between a reading and a writing half keep an idle socket small.
//!
//! The task is generic over `Stream` and [`FrameSink`], so tests drive it through channels with
//! tokio's paused clock (heartbeats, idle timeout) as well as through real sockets.
//!
//! - [`admission`]: the checks after the upgrade: [`Opening`] becomes an accepted socket or a
//!   refusal with its close code.
//! - [`live`]: the socket task ([`live::Socket`]): opening, live loop, close.
//! - [`commands`]: what a client's message asks for, applied (chat; with `v=2` also typing,
//!   edit and delete); one file per command.

mod admission;
pub mod commands;
mod live;

use std::error::Error as StdError;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use futures_util::{Sink, SinkExt, Stream};
use serde::Deserialize;
use tracing::{Instrument, info_span};
use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::app::{AppState, ConnectionSlot};
use crate::client::ClientInfo;
use crate::metrics::Rejection;
use crate::protocol::{Frame, MAX_CLIENT_MESSAGE_BYTES};
use crate::upgrade::SocketUpgrade;

pub use admission::Opening;
use admission::Refusal;

/// Frames a socket's outbound queue holds before the socket counts as a slow consumer and is
/// closed with 1013. At a typical chat frame of 150–300 bytes that is 150–300 KiB; the
/// reference-counted frames themselves are shared, so the queue costs 40 bytes a slot.
pub const OUTBOUND_QUEUE_FRAMES: usize = 1024;
/// How often the server pings every socket: under nginx's default 60 s `proxy_read_timeout`.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A socket from which nothing (not even a pong) has come for this long is closed with 1001.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing socket may take to take its close frame, and to answer it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long means the client stopped reading: the socket
/// is closed as a slow consumer even if nothing more is queued for it.
pub const WRITE_STALL_TIMEOUT: Duration = IDLE_TIMEOUT;
/// The most frames written between two flushes.
const WRITE_BATCH: usize = 512;
/// The read buffer each socket starts with. Chat frames are small; a larger message grows
/// it as needed, up to [`MAX_CLIENT_MESSAGE_BYTES`].
const READ_BUFFER_BYTES: usize = 256;

/// The WebSocket layer's settings for every socket: a small read buffer, client messages up
/// to [`MAX_CLIENT_MESSAGE_BYTES`], and no write buffer of its own: every frame goes straight
/// down to the [`WriteBuffer`](crate::write_buffer::WriteBuffer), which gathers a burst until
/// the writer flushes and then lets its memory go.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES))
}

/// The query of `GET /ws/chat?room=R&since=N&v=2`; all optional. Other parameters are
/// ignored, such as the page's `partition`, a routing hint for nginx.
#[derive(Debug, Deserialize)]
pub struct SocketParams {
    room: Option<String>,
    since: Option<String>,
    /// `2`: the socket sends JSON commands; anything else (or nothing): plain chat text.
    v: Option<String>,
}

/// `GET /ws/chat`: refuses a foreign `Origin` (403) and upgrades when the node has room for
/// another socket (else 503), then runs the socket in a task tracked for graceful drain.
pub async fn upgrade_socket(
    State(state): State<AppState>,
    Query(params): Query<SocketParams>,
    client: ClientInfo,
    headers: HeaderMap,
    upgrade: SocketUpgrade,
) -> Response {
    if state.is_draining() {
        state.metrics.reject(Rejection::Draining);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "This node is shutting down.\n",
        )
            .into_response();
    }
    if !state.origins.allows(&headers, client.host.as_deref()) {
        state.metrics.reject(Rejection::BadOrigin);
        return (StatusCode::FORBIDDEN, "Origin not allowed.\n").into_response();
    }
    let Some(slot) = state.connection_slot() else {
        state.metrics.reject(Rejection::TooManyConnections);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many connections on this node.\n",
        )
            .into_response();
    };
    // Boxed: the upgrade task keeps its captures for the socket's whole life.
    let opening = Box::new(Opening::new(
        state.cookies.identify(&headers),
        params,
        &state.socket_limits,
        &client,
    ));
    upgrade.on_upgrade(socket_config(), move |socket| {
        let sockets = state.sockets.clone();
        sockets.track_future(run_connection(socket, state, *opening, slot))
    })
}

/// A WebSocket's sending side as the socket task uses it: tungstenite's messages for pings and
/// closes, and event frames handed down already encoded ([`Frame::wire`]).
pub trait FrameSink: Sink<Message> + Unpin {
    /// Hands `frame` down whole, or not at all (`Pending`): nothing may come between its
    /// bytes. The default sends its text as one text message; the server's own socket puts
    /// the encoded bytes into its write buffer (see [`crate::upgrade`]).
    fn poll_send_frame(
        &mut self,
        cx: &mut Context<'_>,
        frame: &Frame,
    ) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_ready_unpin(cx))?;
        Poll::Ready(self.start_send_unpin(Message::Text(frame.text())))
    }
}

/// Runs one socket: the checks after the upgrade, the join, the live loop, and cleanup.
///
/// Every way out counts the close in `confab_disconnects_total` and, once the socket joined,
/// leaves the room through the broker. Not an `async fn`: the checks run here, before any
/// future exists, so the returned future carries only what the socket's life needs — an idle
/// socket's task stays small (see BENCHMARKS.md).
pub fn run_connection<S, E>(
    socket: S,
    state: AppState,
    opening: Opening,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send + 'static
where
    S: Stream<Item = Result<Message, E>> + FrameSink<Error = E> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    match opening.check() {
        Err(refusal) => Either::Left(refuse(socket, state, refusal, slot)),
        Ok(accepted) => {
            let span = info_span!("socket", room.id = %accepted.room, user.id = %accepted.user.id(), conn.id = slot.id());
            Either::Right(live::serve(socket, state, accepted, slot).instrument(span))
        }
    }
}

/// Closes a refused socket with its code and reason, and counts it.
async fn refuse<W, E>(mut sink: W, state: AppState, refusal: Refusal, slot: ConnectionSlot)
where
    W: Sink<Message, Error = E> + Unpin,
{
    state.metrics.reject(refusal.rejection);
    state.metrics.disconnect(refusal.code);
    let close = Message::Close(Some(CloseFrame {
        code: refusal.code.into(),
        reason: Utf8Bytes::from_static(refusal.reason),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close)).await;
    drop(slot);
}
