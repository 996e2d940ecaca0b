//! `GET /ws/chat`: the upgrade checks, and the task that runs one socket from its first frame
//! to its close.
//!
//! After the upgrade the socket is split. A writer task owns the sending half: it writes the
//! opening (history, then `list`), then drains the socket's bounded outbound queue, writing
//! every queued frame before one flush, and sends pings. The connection task itself reads:
//! each text frame is checked, rate-limited and published through the broker. Whichever half
//! ends first stops the other through the socket's [`SocketLink`], and the leave/cleanup
//! runs in one place at the end of [`run_connection`].
//!
//! The loop is generic over `Sink`/`Stream`, so tests drive it through channels with tokio's
//! paused clock (heartbeats, idle timeout) as well as through real sockets.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};
use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::app::{AppState, ConnectionSlot};
use crate::broker::Broker;
use crate::client::ClientInfo;
use crate::hub::SocketLink;
use crate::limits::{SocketLimitExceeded, SocketLimits, SocketPermit};
use crate::metrics::{Metrics, Rejection};
use crate::protocol::{
    ChatText, ErrorCode, Frame, Incoming, InvalidRoomName, MAX_CLIENT_MESSAGE_BYTES, RoomName,
    classify, close, close_message, list_frame, now_ms,
};
use crate::ratelimit::TokenBucket;
use crate::upgrade::SocketUpgrade;
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

/// Why a socket was refused once open, and how it is told.
struct Refusal {
    code: u16,
    reason: &'static str,
    rejection: Rejection,
}

/// A socket that passed every check after the upgrade.
struct Accepted {
    user: Identity,
    room: RoomName,
    since: Option<u64>,
    permit: Option<SocketPermit>,
}

impl Opening {
    /// The checks after the upgrade, in the order the page expects their codes.
    fn check(self) -> Result<Accepted, Refusal> {
        let refuse = |code, rejection| Refusal {
            code,
            reason: close::reason(code),
            rejection,
        };
        let user = self
            .user
            .ok_or_else(|| refuse(close::INVALID_USER, Rejection::InvalidUser))?;
        let room = self
            .room
            .map_err(|_| refuse(close::INVALID_ROOM, Rejection::InvalidRoom))?;
        let since = self
            .since
            .map_err(|()| refuse(close::INVALID_SINCE, Rejection::InvalidSince))?;
        let permit = match self.permit {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(SocketLimitExceeded::PerUser)) => {
                return Err(Refusal {
                    code: close::POLICY_VIOLATION,
                    reason: "Too many connections for this user",
                    rejection: Rejection::TooManySocketsForUser,
                });
            }
            Some(Err(SocketLimitExceeded::PerAddress)) => {
                return Err(Refusal {
                    code: close::POLICY_VIOLATION,
                    reason: "Too many connections from this address",
                    rejection: Rejection::TooManySocketsFromAddress,
                });
            }
        };
        Ok(Accepted {
            user,
            room,
            since,
            permit,
        })
    }
}

/// Runs one socket: the checks after the upgrade, the join, the reader loop, and cleanup.
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
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    let (sink, stream) = socket.split();
    match opening.check() {
        Err(refusal) => Either::Left(refuse(sink, state, refusal, slot)),
        Ok(accepted) => {
            let span = info_span!("socket", room.id = %accepted.room, user.id = %accepted.user.id(), conn.id = slot.id());
            // Boxed until the writer takes it: the socket's task would otherwise keep room for
            // it (at every level it passes through) for the socket's whole life.
            Either::Right(serve(Box::new(sink), stream, state, accepted, slot).instrument(span))
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

/// An accepted socket, from its join to its leave. (Not an `async fn`, which would keep a
/// second copy of its arguments in the socket's task.)
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice"
)]
fn serve<W, R, E>(
    sink: Box<W>,
    mut stream: R,
    state: AppState,
    accepted: Accepted,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send
where
    W: Sink<Message, Error = E> + Send + Unpin + 'static,
    R: Stream<Item = Result<Message, E>> + Send + Unpin,
    E: StdError + Send + Sync + 'static,
{
    async move {
        let connection = Connection {
            state: &state,
            room: &accepted.room,
            user: &accepted.user,
            link: Arc::new(SocketLink::new(OUTBOUND_QUEUE_FRAMES)),
        };
        let code = connection.run(sink, &mut stream, accepted.since).await;
        state.metrics.disconnect(code);
        debug!(close.code = code, "socket closed");
        drop((slot, accepted.permit));
    }
}

/// The parts of one open socket that its reader and cleanup share.
struct Connection<'a> {
    state: &'a AppState,
    room: &'a RoomName,
    user: &'a Identity,
    link: Arc<SocketLink>,
}

impl Connection<'_> {
    /// Joins, reads until either side closes, and leaves. Returns the close code to count.
    async fn run<W, R, E>(&self, sink: Box<W>, stream: &mut R, since: Option<u64>) -> u16
    where
        W: Sink<Message, Error = E> + Send + Unpin + 'static,
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: StdError + Send + Sync + 'static,
    {
        let state = self.state;
        // Registered before the snapshot is taken: every frame after the snapshot reaches the
        // queue, and the writer drops the ones the snapshot already covers.
        let registration = state.hub.register(self.room, self.link.clone());
        // Boxed: joining happens once, and its future should not weigh on the socket's task
        // for the rest of the socket's life.
        let writer = match Box::pin(self.join(sink, since)).await {
            Ok(writer) => writer,
            Err(code) => return code,
        };
        let peer_code = self.read(stream).await;
        if peer_code.is_some() {
            // The peer went first: the writer flushes the close reply the WebSocket layer
            // queued, and stops.
            self.link.peer_closed();
        }
        let _ = writer.await;
        drop(registration);
        // Once, at the end: boxed for the same reason as the join.
        Box::pin(self.finish(stream, peer_code)).await
    }

    /// Joins the room through the broker and starts the writer with the opening (history,
    /// then `list`). Returns the close code when the broker is unavailable.
    async fn join<W, E>(
        &self,
        sink: Box<W>,
        since: Option<u64>,
    ) -> Result<tokio::task::JoinHandle<()>, u16>
    where
        W: Sink<Message, Error = E> + Send + Unpin + 'static,
        E: StdError + Send + Sync + 'static,
    {
        let state = self.state;
        let mut sink = *sink;
        let snapshot = match state.broker.join(self.room, self.user, since).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // Redis outages are logged once by the broker; per-socket detail is debug.
                debug!(%error, "cannot join: broker unavailable");
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    sink.send(close_message(close::TRY_AGAIN_LATER)),
                )
                .await;
                return Err(close::TRY_AGAIN_LATER);
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
            sink,
            link: self.link.clone(),
            cutoff: snapshot.seen_up_to.max(since.unwrap_or(0)),
            state: state.clone(),
            batch: VecDeque::new(),
            front_at: 0,
            written: 0,
            ping_due: false,
            flushing: false,
        };
        Ok(tokio::spawn(writer.run(opening)))
    }

    /// After both halves stopped: waits for the peer's answer to our close frame (if we sent
    /// one), leaves the room, and returns the close code to count.
    async fn finish<R, E>(&self, stream: &mut R, peer_code: Option<u16>) -> u16
    where
        R: Stream<Item = Result<Message, E>> + Unpin,
    {
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
        self.state.broker.leave(self.room, self.user).await;
        match peer_code {
            Some(code) => code,
            None => self.link.close_code().unwrap_or(close::NORMAL),
        }
    }

    /// Reads until the peer goes or the server closes. Returns the peer's close code when the
    /// peer ended the socket (1006 when it just vanished), `None` when the server did.
    async fn read<R, E>(&self, stream: &mut R) -> Option<u16>
    where
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: StdError + Send + Sync + 'static,
    {
        let metrics = &self.state.metrics;
        let mut bucket = TokenBucket::new(Instant::now());
        loop {
            let next = tokio::select! {
                biased;
                () = self.link.closed() => return None,
                next = stream.next() => next,
            };
            self.link.touch();
            match next {
                None => return Some(close::ABNORMAL),
                Some(Err(error)) if is_too_big(&error) => {
                    metrics.reject(Rejection::MessageTooBig);
                    self.link.close(close::MESSAGE_TOO_BIG);
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
                            // Boxed: a publish is once per message a user sends, and its
                            // future would otherwise weigh on every idle socket's task.
                            let taken = Box::pin(self.take_chat(checked, &mut bucket)).await;
                            if let Some(code) = taken {
                                self.send_error(code);
                            }
                        }
                        Incoming::Binary => {
                            metrics.reject(Rejection::BinaryFrame);
                            self.link.close(close::UNSUPPORTED_DATA);
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
    fn send_error(&self, code: ErrorCode) {
        if self.link.push(code.frame()).is_err() && self.link.close(close::TRY_AGAIN_LATER) {
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
    link: &SocketLink,
    metrics: &Metrics,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = link.closed() => None,
        output = tokio::time::timeout(WRITE_STALL_TIMEOUT, work) => match output {
            Ok(output) => Some(output),
            Err(_) => {
                if link.close(close::TRY_AGAIN_LATER) {
                    metrics.slow_consumers.inc();
                }
                None
            }
        },
    }
}

/// The sending half of one socket, run as its own task.
///
/// A write in progress lives in these fields rather than in a future (see
/// [`Writer::poll_write`]): a future holding the sink's `feed` and `flush` futures would sit in
/// the task of every socket, idle or not, for its whole life.
struct Writer<W> {
    sink: W,
    link: Arc<SocketLink>,
    /// Live frames at or below this id are covered by the opening history (or `since`).
    cutoff: u64,
    /// For the drain signal and its spread (read when the drain starts), and the metrics.
    state: AppState,
    /// Frames taken from the queue, being written; swapped with the queue's buffer, so in
    /// steady state nothing is allocated.
    batch: VecDeque<Frame>,
    /// How much of the batch's first frame is already handed to the sink: a frame sent in
    /// fragments may be cut by a write that has to wait.
    front_at: usize,
    /// Frames written since the last flush.
    written: usize,
    /// A ping is due and not yet handed to the sink.
    ping_due: bool,
    /// Everything taken is handed to the sink; only the flush remains.
    flushing: bool,
}

impl<W, E> Writer<W>
where
    W: Sink<Message, Error = E> + Unpin + Send,
{
    /// Writes the opening, then queued frames and pings until the socket closes, then the
    /// close frame. Not an `async fn`, which would keep a second copy of `self` in the task;
    /// the one-time steps are boxed, so the task is sized by the live loop alone.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would store `self` twice"
    )]
    fn run(mut self, opening: Vec<Frame>) -> impl Future<Output = ()> + Send {
        async move {
            if Box::pin(self.write_opening(opening)).await {
                self.live().await;
            }
            Box::pin(self.close()).await;
        }
    }

    /// Writes history and `list`. Returns whether the socket is still open.
    async fn write_opening(&mut self, opening: Vec<Frame>) -> bool {
        let written = opening.len() as u64;
        let sink = &mut self.sink;
        let wrote = until_closed(&self.link, &self.state.metrics, async {
            for frame in &opening {
                for piece in frame.pieces(0) {
                    sink.feed(piece).await?;
                }
            }
            sink.flush().await
        })
        .await;
        match wrote {
            Some(Ok(())) => {
                self.state.metrics.messages_delivered.inc_by(written);
                true
            }
            Some(Err(_)) => {
                self.link.close(close::ABNORMAL);
                false
            }
            None => false,
        }
    }

    /// The live loop: queued frames, pings, the idle check, write stalls and the drain, all on
    /// one timer.
    ///
    /// It waits on the queue and the timer, and on the sink only while a write waits for the
    /// peer: a close and the node's drain [wake](SocketLink::wake) the queue, and are read from
    /// flags. Every wake-up of a busy socket costs one registration, and the timer is moved
    /// only when its deadline changes.
    async fn live(&mut self) {
        let link = Arc::clone(&self.link);
        let mut next_ping = Instant::now() + PING_INTERVAL;
        let mut drain_at: Option<Instant> = None;
        // Set while a write waits for the peer: past it, the client stopped reading.
        let mut stall_at: Option<Instant> = None;
        // Whether something may have been queued, or a ping fell due, since the last write
        // pass started: the frames queued while the opening was written come first.
        let mut due = true;
        let timer = tokio::time::sleep_until(next_ping.min(link.silent_until(IDLE_TIMEOUT)));
        tokio::pin!(timer);
        loop {
            if link.is_closed() {
                return;
            }
            if drain_at.is_none() && self.state.shutdown.is_cancelled() {
                let delay = self.state.drain_spread().mul_f64(rand::random::<f64>());
                drain_at = Some(Instant::now() + delay);
            }
            // A pass in progress (one that had to wait) goes on; a new one starts when
            // something is due. A pass takes the queue before it flushes, so `due` is cleared
            // as it starts: whatever is signalled after that needs a pass of its own, even if
            // the signal comes while this one is still flushing.
            let writing = stall_at.is_some();
            if due || writing {
                if !writing {
                    due = false;
                }
                // Most writes complete at once, into the kernel's socket buffer; only one that
                // has to wait arms the stall deadline.
                match std::future::poll_fn(|cx| Poll::Ready(self.poll_write(cx))).await {
                    Poll::Ready(Ok(())) => {
                        stall_at = None;
                        if due {
                            continue;
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        link.close(close::ABNORMAL);
                        return;
                    }
                    Poll::Pending => {
                        stall_at.get_or_insert_with(|| Instant::now() + WRITE_STALL_TIMEOUT);
                    }
                }
            }
            let mut deadline = next_ping.min(link.silent_until(IDLE_TIMEOUT));
            for at in [drain_at, stall_at].into_iter().flatten() {
                deadline = deadline.min(at);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = &mut timer => {
                    let now = Instant::now();
                    if drain_at.is_some_and(|at| now >= at) {
                        link.close(close::SERVICE_RESTART);
                        return;
                    }
                    if stall_at.is_some_and(|at| now >= at) {
                        if link.close(close::TRY_AGAIN_LATER) {
                            self.state.metrics.slow_consumers.inc();
                        }
                        return;
                    }
                    if now >= link.silent_until(IDLE_TIMEOUT) {
                        link.close(close::GOING_AWAY);
                        return;
                    }
                    if now >= next_ping {
                        next_ping = now + PING_INTERVAL;
                        self.ping_due = true;
                        due = true;
                        self.trim();
                    }
                }
                () = link.queued() => due = true,
                () = std::future::poll_fn(|cx| self.poll_sink(cx)), if stall_at.is_some() => {}
            }
        }
    }

    /// Whether a live frame is still to be written: id-less frames always are; numbered ones
    /// at or below the cutoff were in the opening already.
    fn is_after_opening(&self, frame: &Frame) -> bool {
        frame.id() == 0 || frame.id() > self.cutoff
    }

    /// Gives back the memory a burst grew and the socket kept for the next one: the batch and
    /// the queue's buffer. Run at every ping, so a socket that went quiet holds burst-sized
    /// buffers for at most one [`PING_INTERVAL`]; a busy one reallocates them once per interval.
    fn trim(&mut self) {
        if self.batch.is_empty() {
            self.batch.shrink_to_fit();
        }
        self.link.trim_queue();
    }

    /// Wakes when the sink may take more: the write waiting for the peer can go on.
    fn poll_sink(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flushing {
            self.sink.poll_flush_unpin(cx).map(drop)
        } else {
            self.sink.poll_ready_unpin(cx).map(drop)
        }
    }

    /// Writes a due ping, then everything queued (and whatever arrives meanwhile, up to
    /// [`WRITE_BATCH`] frames), then flushes once: a burst of frames becomes one write to the
    /// network. Frames at or below the cutoff are covered by the opening and skipped.
    ///
    /// Resumable: when the peer is slow, it returns `Pending` and picks up where it stopped.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        if !self.flushing {
            if self.ping_due {
                ready!(self.sink.poll_ready_unpin(cx))?;
                self.sink
                    .start_send_unpin(Message::Ping(Default::default()))?;
                self.ping_due = false;
            }
            loop {
                let Some(frame) = self.batch.front() else {
                    if self.written < WRITE_BATCH {
                        self.link.take_queued(&mut self.batch);
                    }
                    if self.batch.is_empty() {
                        break;
                    }
                    continue;
                };
                if !self.is_after_opening(frame) {
                    self.batch.pop_front();
                    continue;
                }
                ready!(self.sink.poll_ready_unpin(cx))?;
                let (piece, next) = frame.piece(self.front_at);
                self.sink.start_send_unpin(piece)?;
                match next {
                    Some(at) => self.front_at = at,
                    None => {
                        self.front_at = 0;
                        self.batch.pop_front();
                        self.written += 1;
                    }
                }
            }
            self.flushing = true;
        }
        ready!(self.sink.poll_flush_unpin(cx))?;
        self.flushing = false;
        let written = std::mem::take(&mut self.written);
        self.state.metrics.messages_delivered.inc_by(written as u64);
        // A burst grew the buffers; an idle socket should not keep them.
        if self.batch.capacity() > 64 && written < 16 {
            self.batch.shrink_to(16);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends the close frame the server decided on, if it decided one. A draining socket first
    /// gets the frames already queued for it.
    async fn close(&mut self) {
        let code = match self.link.close_code() {
            // A write failed: the connection is gone.
            Some(close::ABNORMAL | close::NO_STATUS) => return,
            // The peer closed first: flush the close reply the WebSocket layer queued.
            None => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
                return;
            }
            Some(code) => code,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if code == close::SERVICE_RESTART {
                // What a pass left unwritten comes first, then whatever is queued.
                let mut queued = VecDeque::new();
                self.link.take_queued(&mut queued);
                self.batch.append(&mut queued);
                let mut written = 0;
                let mut at = std::mem::take(&mut self.front_at);
                while let Some(frame) = self.batch.pop_front() {
                    if self.is_after_opening(&frame) {
                        for piece in frame.pieces(at) {
                            self.sink.feed(piece).await?;
                        }
                        written += 1;
                    }
                    at = 0;
                }
                self.state.metrics.messages_delivered.inc_by(written);
            }
            self.sink.send(close_message(code)).await
        })
        .await;
    }
}
