//! `GET /ws/chat`: the upgrade checks, and the task that runs one socket from its first frame
//! to its close.
//!
//! After the upgrade the socket is split. A writer task owns the sending half: it writes the
//! opening (history, then `list`), then drains the socket's bounded outbound queue, writing
//! every queued frame before one flush, and sends pings. The connection task itself reads:
//! each text frame is checked, rate-limited and published through the broker. Whichever half
//! ends first stops the other through the socket's [`SocketControl`], and the leave/cleanup
//! runs in one place at the end of [`run_connection`].
//!
//! The loop is generic over `Sink`/`Stream`, so tests drive it through channels with tokio's
//! paused clock (heartbeats, idle timeout) as well as through real sockets.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use crate::app::{AppState, ConnectionSlot};
use crate::broker::Broker;
use crate::client::ClientInfo;
use crate::hub::SocketControl;
use crate::limits::{SocketLimitExceeded, SocketLimits, SocketPermit};
use crate::metrics::{Metrics, Rejection};
use crate::protocol::{
    ChatText, ErrorCode, Frame, Incoming, InvalidRoomName, MAX_CLIENT_MESSAGE_BYTES, RoomName,
    classify, close, close_message, list_frame, now_ms,
};
use crate::ratelimit::TokenBucket;
use crate::user::Identity;

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
const READ_BUFFER_BYTES: usize = 1024;
/// How much the writer buffers before it writes without being asked to flush.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The query of `GET /ws/chat?room=R&since=N`; both optional.
#[derive(Debug, Deserialize)]
pub struct SocketParams {
    room: Option<String>,
    since: Option<String>,
}

/// What the upgrade learned about a socket, checked again once it is open (where a refusal
/// can be a close code the page understands rather than an HTTP status).
pub struct Opening {
    /// The user named by a validly signed cookie, if any.
    pub user: Option<Identity>,
    /// The room asked for.
    pub room: Result<RoomName, InvalidRoomName>,
    /// The `since` asked for: absent, a number, or garbage.
    pub since: Result<Option<u64>, ()>,
    /// The socket's place under the per-user and per-address limits (`None` without a user).
    pub permit: Option<Result<SocketPermit, SocketLimitExceeded>>,
}

impl Opening {
    /// Reads the query parameters, and counts the socket against its user's and address's
    /// limits.
    pub fn new(
        user: Option<Identity>,
        params: SocketParams,
        limits: &Arc<SocketLimits>,
        client: &ClientInfo,
    ) -> Self {
        let room = params
            .room
            .as_deref()
            .map_or_else(|| Ok(RoomName::lobby()), RoomName::parse);
        let since = match params.since.as_deref() {
            None | Some("") => Ok(None),
            Some(raw) => raw.parse::<u64>().map(Some).map_err(drop),
        };
        let permit = user
            .as_ref()
            .map(|user| limits.acquire(user.id(), client.ip));
        Self {
            user,
            room,
            since,
            permit,
        }
    }
}

/// `GET /ws/chat`: refuses a foreign `Origin` (403) and upgrades when the node has room for
/// another socket (else 503), then runs the socket in a task tracked for graceful drain.
pub async fn upgrade_socket(
    State(state): State<AppState>,
    Query(params): Query<SocketParams>,
    client: ClientInfo,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
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
    let opening = Opening::new(
        state.cookies.identify(&headers),
        params,
        &state.socket_limits,
        &client,
    );
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .max_frame_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(run_connection(socket, state, opening, slot))
        })
}

/// When the last frame came from the peer, in milliseconds since the socket opened; written by
/// the reader, read by the writer's idle check.
struct Liveness {
    opened: Instant,
    last_seen_ms: AtomicU64,
}

impl Liveness {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_seen_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_until(&self) -> Instant {
        self.opened
            + Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed))
            + IDLE_TIMEOUT
    }
}

/// Runs one socket: the checks after the upgrade, the join, the reader loop, and cleanup.
///
/// Every way out counts the close in `confab_disconnects_total` and, once the socket joined,
/// leaves the room through the broker.
pub async fn run_connection<S, E>(
    socket: S,
    state: AppState,
    opening: Opening,
    slot: ConnectionSlot,
) where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let refusal = match (
        &opening.user,
        &opening.room,
        &opening.since,
        &opening.permit,
    ) {
        (None, ..) => Some((
            close::INVALID_USER,
            close::reason(close::INVALID_USER),
            Rejection::InvalidUser,
        )),
        (_, Err(_), ..) => Some((
            close::INVALID_ROOM,
            close::reason(close::INVALID_ROOM),
            Rejection::InvalidRoom,
        )),
        (_, _, Err(()), _) => Some((
            close::INVALID_SINCE,
            close::reason(close::INVALID_SINCE),
            Rejection::InvalidSince,
        )),
        (.., Some(Err(SocketLimitExceeded::PerUser))) => Some((
            close::POLICY_VIOLATION,
            "Too many connections for this user",
            Rejection::TooManySocketsForUser,
        )),
        (.., Some(Err(SocketLimitExceeded::PerAddress))) => Some((
            close::POLICY_VIOLATION,
            "Too many connections from this address",
            Rejection::TooManySocketsFromAddress,
        )),
        _ => None,
    };
    if let Some((code, reason, rejection)) = refusal {
        state.metrics.reject(rejection);
        state.metrics.disconnect(code);
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close)).await;
        drop(slot);
        return;
    }
    let (Some(user), Ok(room), Ok(since), permit) =
        (opening.user, opening.room, opening.since, opening.permit)
    else {
        unreachable!("refusals were handled above");
    };

    let span = info_span!("socket", room.id = %room, user.id = %user.id(), conn.id = slot.id());
    async move {
        let connection = Connection {
            state: &state,
            room: &room,
            user: &user,
            control: Arc::new(SocketControl::default()),
            liveness: Arc::new(Liveness::new()),
        };
        let code = connection.run(sink, &mut stream, since).await;
        state.metrics.disconnect(code);
        debug!(close.code = code, "socket closed");
        drop((slot, permit));
    }
    .instrument(span)
    .await;
}

/// The parts of one open socket that its reader and cleanup share.
struct Connection<'a> {
    state: &'a AppState,
    room: &'a RoomName,
    user: &'a Identity,
    control: Arc<SocketControl>,
    liveness: Arc<Liveness>,
}

impl Connection<'_> {
    /// Joins, reads until either side closes, and leaves. Returns the close code to count.
    async fn run<W, R, E>(&self, mut sink: W, stream: &mut R, since: Option<u64>) -> u16
    where
        W: Sink<Message, Error = E> + Send + Unpin + 'static,
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: StdError + Send + Sync + 'static,
    {
        let state = self.state;
        // Registered before the snapshot is taken: every frame after the snapshot reaches the
        // queue, and the writer drops the ones the snapshot already covers.
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_FRAMES);
        let registration = state
            .hub
            .register(self.room, outbound_tx.clone(), self.control.clone());
        let snapshot = match state.broker.join(self.room, self.user, since).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // Redis outages are logged once by the broker; per-socket detail is debug.
                debug!(%error, "cannot join: broker unavailable");
                drop(registration);
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    sink.send(close_message(close::TRY_AGAIN_LATER)),
                )
                .await;
                return close::TRY_AGAIN_LATER;
            }
        };

        let list_id = snapshot
            .history
            .last()
            .map(Frame::id)
            .or(since)
            .unwrap_or(0);
        let list = list_frame(
            list_id,
            self.room,
            self.user.json(),
            &snapshot.members,
            now_ms(),
        );
        let mut opening = snapshot.history;
        opening.push(list);
        let writer = Writer {
            outbound_rx,
            cutoff: snapshot.seen_up_to.max(since.unwrap_or(0)),
            control: self.control.clone(),
            liveness: self.liveness.clone(),
            state: state.clone(),
        };
        let writer = tokio::spawn(writer.run(sink, opening));

        let peer_code = self.read(stream, &outbound_tx).await;
        if peer_code.is_some() {
            // The peer went first: the writer flushes the close reply the WebSocket layer
            // queued, and stops.
            self.control.peer_closed();
        }
        let _ = writer.await;
        if peer_code.is_none() {
            // We sent a close frame: give the peer a moment to answer it, so it ends cleanly.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        drop(registration);
        state.broker.leave(self.room, self.user).await;
        match peer_code {
            Some(code) => code,
            None => self.control.close_code().unwrap_or(close::NORMAL),
        }
    }

    /// Reads until the peer goes or the server closes. Returns the peer's close code when the
    /// peer ended the socket (1006 when it just vanished), `None` when the server did.
    async fn read<R, E>(&self, stream: &mut R, outbound_tx: &mpsc::Sender<Frame>) -> Option<u16>
    where
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: StdError + Send + Sync + 'static,
    {
        let metrics = &self.state.metrics;
        let mut bucket = TokenBucket::new(Instant::now());
        loop {
            let next = tokio::select! {
                biased;
                () = self.control.closed() => return None,
                next = stream.next() => next,
            };
            self.liveness.touch();
            match next {
                None => return Some(close::ABNORMAL),
                Some(Err(error)) if is_too_big(&error) => {
                    metrics.reject(Rejection::MessageTooBig);
                    self.control.close(close::MESSAGE_TOO_BIG);
                    return None;
                }
                Some(Err(error)) => {
                    debug!(%error, "socket read failed");
                    return Some(close::ABNORMAL);
                }
                Some(Ok(message)) => {
                    match classify(&message, self.state.config.chat.max_message_chars) {
                        Incoming::Chat(ChatText::Empty) | Incoming::Control => {}
                        Incoming::Chat(checked) => {
                            if let Some(code) = self.take_chat(checked, &mut bucket).await {
                                self.send_error(outbound_tx, code);
                            }
                        }
                        Incoming::Binary => {
                            metrics.reject(Rejection::BinaryFrame);
                            self.control.close(close::UNSUPPORTED_DATA);
                            return None;
                        }
                        Incoming::Close(code) => return Some(code),
                    }
                }
            }
        }
    }

    /// Checks, rate-limits and publishes one chat message. Returns the error to send back, if
    /// the message was refused.
    async fn take_chat(
        &self,
        checked: ChatText<'_>,
        bucket: &mut TokenBucket,
    ) -> Option<ErrorCode> {
        let state = self.state;
        if !bucket.try_take(Instant::now()) {
            state.metrics.reject(Rejection::RateLimited);
            return Some(ErrorCode::RateLimited);
        }
        let ChatText::Valid(text) = checked else {
            // Empty texts never get here; anything else not valid is too long.
            state.metrics.reject(Rejection::TooLong);
            return Some(ErrorCode::TooLong);
        };
        let timer = state.metrics.broker_publish_seconds.start_timer();
        match state.broker.publish(self.room, self.user, text).await {
            Ok(_) => {
                timer.observe_duration();
                state.metrics.messages_received.inc();
                None
            }
            Err(error) => {
                timer.stop_and_discard();
                debug!(%error, "cannot publish: broker unavailable");
                state.metrics.reject(Rejection::Unavailable);
                Some(ErrorCode::Unavailable)
            }
        }
    }

    /// Queues an `error` frame for this socket only; a full queue makes it a slow consumer.
    fn send_error(&self, outbound_tx: &mpsc::Sender<Frame>, code: ErrorCode) {
        if outbound_tx.try_send(code.frame()).is_err() && self.control.close(close::TRY_AGAIN_LATER)
        {
            self.state.metrics.slow_consumers.inc();
        }
    }
}

/// Whether a read error is a message over the size limit (which gets close 1009).
fn is_too_big(error: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(tungstenite::Error::Capacity(_)) = error.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Runs the write `work` unless the socket is asked to close first, or the write stalls for
/// [`WRITE_STALL_TIMEOUT`] (the client stopped reading: a slow consumer). Abandoning a write
/// half-way is safe: the WebSocket layer keeps what it buffered, and the socket is closing.
async fn until_closed<T>(
    control: &SocketControl,
    metrics: &Metrics,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = control.closed() => None,
        output = tokio::time::timeout(WRITE_STALL_TIMEOUT, work) => match output {
            Ok(output) => Some(output),
            Err(_) => {
                if control.close(close::TRY_AGAIN_LATER) {
                    metrics.slow_consumers.inc();
                }
                None
            }
        },
    }
}

/// The sending half of one socket, run as its own task.
struct Writer {
    outbound_rx: mpsc::Receiver<Frame>,
    /// Live frames at or below this id are covered by the opening history (or `since`).
    cutoff: u64,
    control: Arc<SocketControl>,
    liveness: Arc<Liveness>,
    /// For the drain signal and its spread (read when the drain starts), and the metrics.
    state: AppState,
}

impl Writer {
    async fn run<W, E>(mut self, mut sink: W, opening: Vec<Frame>)
    where
        W: Sink<Message, Error = E> + Unpin,
    {
        let written = opening.len() as u64;
        let metrics = self.state.metrics.clone();
        let wrote = until_closed(&self.control, &metrics, async {
            for frame in &opening {
                sink.feed(frame.to_message()).await?;
            }
            sink.flush().await
        })
        .await;
        match wrote {
            Some(Ok(())) => metrics.messages_delivered.inc_by(written),
            Some(Err(_)) => {
                self.control.close(close::ABNORMAL);
                return;
            }
            None => return self.close(&mut sink).await,
        }
        drop(opening);

        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let idle_check = tokio::time::sleep_until(self.liveness.silent_until());
        tokio::pin!(idle_check);
        let drain = tokio::time::sleep(Duration::MAX);
        tokio::pin!(drain);
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                () = self.control.closed() => break,
                () = self.state.shutdown.cancelled(), if !draining => {
                    draining = true;
                    let delay = self.state.drain_spread().mul_f64(rand::random::<f64>());
                    drain.as_mut().reset(Instant::now() + delay);
                }
                () = &mut drain, if draining => {
                    self.control.close(close::SERVICE_RESTART);
                    break;
                }
                () = &mut idle_check => {
                    let silent_until = self.liveness.silent_until();
                    if Instant::now() >= silent_until {
                        self.control.close(close::GOING_AWAY);
                        break;
                    }
                    idle_check.as_mut().reset(silent_until);
                }
                _ = ping.tick() => {
                    let pinged = until_closed(&self.control, &metrics, sink.send(Message::Ping(Default::default()))).await;
                    if pinged.is_none_or(|sent| sent.is_err()) {
                        break;
                    }
                }
                frame = self.outbound_rx.recv() => {
                    let Some(frame) = frame else { break };
                    let control = self.control.clone();
                    match until_closed(&control, &metrics, self.write_batch(&mut sink, frame)).await {
                        Some(Ok(())) => {}
                        Some(Err(_)) => {
                            self.control.close(close::ABNORMAL);
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        self.close(&mut sink).await;
    }

    /// Writes `first` and everything else already queued (up to [`WRITE_BATCH`]), then flushes
    /// once: a burst of frames becomes one write to the network.
    async fn write_batch<W, E>(&mut self, sink: &mut W, first: Frame) -> Result<(), E>
    where
        W: Sink<Message, Error = E> + Unpin,
    {
        let mut written = 0;
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            if frame.id() == 0 || frame.id() > self.cutoff {
                sink.feed(frame.to_message()).await?;
                written += 1;
            }
            if written < WRITE_BATCH {
                next = self.outbound_rx.try_recv().ok();
            }
        }
        sink.flush().await?;
        self.state.metrics.messages_delivered.inc_by(written as u64);
        Ok(())
    }

    /// Sends the close frame the server decided on, if it decided one. A draining socket first
    /// gets the frames already queued for it.
    async fn close<W, E>(&mut self, sink: &mut W)
    where
        W: Sink<Message, Error = E> + Unpin,
    {
        let code = match self.control.close_code() {
            // A write failed: the connection is gone.
            Some(close::ABNORMAL | close::NO_STATUS) => return,
            // The peer closed first: flush the close reply the WebSocket layer queued.
            None => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                return;
            }
            Some(code) => code,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if code == close::SERVICE_RESTART {
                let mut written = 0;
                while let Ok(frame) = self.outbound_rx.try_recv() {
                    if frame.id() == 0 || frame.id() > self.cutoff {
                        sink.feed(frame.to_message()).await?;
                        written += 1;
                    }
                }
                self.state.metrics.messages_delivered.inc_by(written);
            }
            sink.send(close_message(code)).await
        })
        .await;
    }
}
