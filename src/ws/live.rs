//! One open socket's task: the opening (history, then `list`), the live loop (the peer's
//! frames, the outbound queue, pings and deadlines in one hand-written poll) and the close.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use futures_util::{SinkExt, Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tracing::debug;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;

use super::commands::{self, Origin, Outcome, Pending};
use crate::app::{AppState, ConnectionSlot};
use crate::broker::Broker;
use crate::broker::{BrokerError, TYPING_INTERVAL};
use crate::hub::SocketLink;
use crate::metrics::{Metrics, Rejection};
use crate::protocol::{
    Command, Dialect, ErrorCode, Frame, Incoming, RoomName, classify, close, close_message,
    list_frame, now_ms,
};
use crate::ratelimit::TokenBucket;
use crate::user::Identity;

use super::admission::Accepted;
use super::{
    CLOSE_TIMEOUT, FrameSink, IDLE_TIMEOUT, OUTBOUND_QUEUE_FRAMES, PING_INTERVAL, WRITE_BATCH,
    WRITE_STALL_TIMEOUT,
};

/// An accepted socket, from its join to its leave.
///
/// Not an `async fn`: the [`Socket`] is built before the `async` block. A block keeps room for
/// what it captures for its whole life, so it captures the socket whole, once, rather than the
/// parts the socket is made of beside the socket itself.
pub(super) fn serve<S, E>(
    ws: S,
    state: AppState,
    accepted: Accepted,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, E>> + FrameSink<Error = E> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    let Accepted {
        user,
        room,
        since,
        dialect,
        permit,
    } = accepted;
    let mut socket = Socket {
        ws,
        state,
        room,
        user,
        link: Arc::new(SocketLink::new(OUTBOUND_QUEUE_FRAMES)),
        cutoff: 0,
        batch: VecDeque::new(),
        written: 0,
        ping_due: false,
        flushing: false,
        dialect,
        bucket: TokenBucket::new(Instant::now()),
        last_typing: None,
        pending: None,
    };
    async move {
        let code = socket.run(since).await;
        socket.state.metrics.disconnect(code);
        debug!(close.code = code, "socket closed");
        drop((slot, permit));
    }
}

/// How the live loop ended.
enum Ended {
    /// The peer closed with this code, or vanished (1006).
    Peer(u16),
    /// The server decided to close; the code is the link's.
    Server,
}

/// One open socket, run by one task from its join to its leave: it reads the peer's frames
/// and publishes their chats, and writes what the hub queues for it, pings and the close.
///
/// A write in progress lives in these fields rather than in a future (see
/// [`Socket::poll_write`]), and the live loop is one hand-written poll over all of it: the
/// task of an idle socket holds its state and nothing else.
struct Socket<S> {
    ws: S,
    state: AppState,
    room: RoomName,
    user: Identity,
    link: Arc<SocketLink>,
    /// Live frames at or below this id are covered by the opening history (or `since`).
    cutoff: u64,
    /// Frames taken from the queue, being written; swapped with the queue's buffer, so in
    /// steady state nothing is allocated.
    batch: VecDeque<Frame>,
    /// Frames written since the last flush.
    written: usize,
    /// A ping is due and not yet handed to the socket.
    ping_due: bool,
    /// Everything taken is handed to the socket; only the flush remains.
    flushing: bool,
    /// How the peer's text frames are read (`v=2` or not).
    dialect: Dialect,
    /// The peer's rate limit for commands (all but `typing`).
    bucket: TokenBucket,
    /// When the peer's last `typing` went further.
    last_typing: Option<Instant>,
    /// The command waiting on the broker (a chat being published, an edit…); the next frame
    /// is read once it is through, so the peer's commands take effect in the order it sent
    /// them.
    pending: Option<Pending>,
}

/// The live loop's deadlines, and whether a write pass is due.
struct LiveClock {
    next_ping: Instant,
    /// When a draining node closes this socket.
    drain_at: Option<Instant>,
    /// Set while a write waits for the peer: past it, the client stopped reading.
    stall_at: Option<Instant>,
    /// Something may have been queued, or a ping fell due, since the last write pass started.
    due: bool,
}

impl LiveClock {
    /// The earliest of the deadlines, the peer's silence limit included: when the timer fires.
    fn deadline(&self, silent_until: Instant) -> Instant {
        let mut deadline = self.next_ping.min(silent_until);
        for at in [self.drain_at, self.stall_at].into_iter().flatten() {
            deadline = deadline.min(at);
        }
        deadline
    }
}

/// How many steps (a frame read, a write pass, a wake-up) the live loop takes in one poll
/// before it lets the other sockets of its thread run.
const LIVE_STEPS_PER_POLL: usize = 64;

impl<S, E> Socket<S>
where
    S: Stream<Item = Result<Message, E>> + FrameSink<Error = E> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    /// Joins, runs until either side closes, and leaves. Returns the close code to count.
    async fn run(&mut self, since: Option<u64>) -> u16 {
        // Registered before the snapshot is taken: every frame after the snapshot reaches the
        // queue, and the write passes drop the ones the snapshot already covers.
        let registration = self
            .state
            .hub
            .register(&self.room, &self.user, self.link.clone());
        // Boxed: joining happens once, and its future should not weigh on the socket's task
        // for the rest of the socket's life.
        if let Err(code) = Box::pin(self.open(since)).await {
            return code;
        }
        let ended = self.live().await;
        drop(registration);
        // Once, at the end: boxed for the same reason as the join.
        Box::pin(self.finish(ended)).await
    }

    /// Joins the room through the broker and writes the opening (history, then `list`).
    /// Returns the close code when the broker is unavailable.
    async fn open(&mut self, since: Option<u64>) -> Result<(), u16> {
        let state = &self.state;
        let snapshot = match state.broker.join(&self.room, &self.user, since).await {
            Ok(snapshot) => snapshot,
            Err(BrokerError::Banned) => {
                state.metrics.reject(Rejection::Banned);
                let banned = Message::Close(Some(CloseFrame {
                    code: close::KICKED.into(),
                    reason: Utf8Bytes::from_static("Banned"),
                }));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.send(banned)).await;
                return Err(close::KICKED);
            }
            Err(error) => {
                // Redis outages are logged once by the broker; per-socket detail is debug.
                debug!(%error, "cannot join: broker unavailable");
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    self.ws.send(close_message(close::TRY_AGAIN_LATER)),
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
            &self.room,
            self.user.json(),
            &snapshot.members,
            now_ms(),
        );
        self.cutoff = snapshot.seen_up_to.max(since.unwrap_or(0));
        let mut opening = snapshot.history;
        opening.push(list);
        let written = opening.len() as u64;
        let ws = &mut self.ws;
        let wrote = until_closed(&self.link, &state.metrics, async {
            for frame in &opening {
                std::future::poll_fn(|cx| ws.poll_send_frame(cx, frame)).await?;
            }
            ws.flush().await
        })
        .await;
        match wrote {
            Some(Ok(())) => state.metrics.messages_delivered.inc_by(written),
            Some(Err(_)) => {
                self.link.close(close::ABNORMAL);
            }
            None => {}
        }
        Ok(())
    }

    /// The live loop: the peer's frames, queued frames, pings, the idle check, write stalls and
    /// the drain, in one task on one timer.
    async fn live(&mut self) -> Ended {
        let mut clock = LiveClock {
            next_ping: Instant::now() + PING_INTERVAL,
            drain_at: None,
            stall_at: None,
            // The frames queued while the opening was written come first.
            due: true,
        };
        let timer = tokio::time::sleep_until(clock.deadline(self.link.silent_until(IDLE_TIMEOUT)));
        tokio::pin!(timer);
        std::future::poll_fn(|cx| self.poll_live(cx, &mut clock, timer.as_mut())).await
    }

    /// One poll of the live loop: takes every step that can be taken now, then waits on the
    /// socket (read, and write while one waits for the peer), the link's wake-ups and the
    /// timer, all registered by the steps themselves.
    fn poll_live(
        &mut self,
        cx: &mut Context<'_>,
        clock: &mut LiveClock,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<Ended> {
        for _ in 0..LIVE_STEPS_PER_POLL {
            if self.link.is_closed() {
                return Poll::Ready(Ended::Server);
            }
            if clock.drain_at.is_none() && self.state.shutdown.is_cancelled() {
                let delay = self.state.drain_spread().mul_f64(rand::random::<f64>());
                clock.drain_at = Some(Instant::now() + delay);
            }
            self.link.register(cx.waker());
            let mut stepped = false;
            // A command is through before the next frame is read: the peer's messages go out
            // in the order it sent them.
            if let Some(pending) = self.pending.as_mut()
                && let Poll::Ready(refused) = pending.as_mut().poll(cx)
            {
                self.pending = None;
                if let Some(code) = refused {
                    self.refuse(code);
                }
                stepped = true;
            }
            // Read only when the read side woke the task (through the link, the waker it reads
            // with): a wake-up to write does not pay for a read that finds nothing.
            if self.pending.is_none() && self.link.take_readable() {
                let read_waker = Waker::from(Arc::clone(&self.link));
                if let Poll::Ready(next) = self
                    .ws
                    .poll_next_unpin(&mut Context::from_waker(&read_waker))
                {
                    self.link.keep_reading();
                    if let Some(ended) = self.take_incoming(next) {
                        return Poll::Ready(ended);
                    }
                    stepped = true;
                }
            }
            if self.link.take_signal() {
                clock.due = true;
            }
            // A pass in progress (one that had to wait) goes on; a new one starts when
            // something is due. A pass takes the queue before it flushes, so `due` is cleared
            // as it starts: whatever is signalled after that needs a pass of its own.
            let writing = clock.stall_at.is_some();
            if clock.due || writing {
                if !writing {
                    clock.due = false;
                }
                // Most writes complete at once, into the kernel's socket buffer; only one that
                // has to wait arms the stall deadline. A finished pass is no reason for another
                // round, unless it was a resumed one while something else fell due: whatever is
                // queued after the signal was taken above signals again.
                match self.poll_write(cx) {
                    Poll::Ready(Ok(())) => {
                        clock.stall_at = None;
                        stepped |= clock.due;
                    }
                    Poll::Ready(Err(_)) => {
                        self.link.close(close::ABNORMAL);
                        return Poll::Ready(Ended::Server);
                    }
                    Poll::Pending => {
                        clock
                            .stall_at
                            .get_or_insert_with(|| Instant::now() + WRITE_STALL_TIMEOUT);
                    }
                }
            }
            let deadline = clock.deadline(self.link.silent_until(IDLE_TIMEOUT));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                if let Some(ended) = self.on_deadline(clock) {
                    return Poll::Ready(ended);
                }
                stepped = true;
            }
            if !stepped {
                return Poll::Pending;
            }
        }
        // Busy: let the thread's other sockets run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A deadline passed: closes the socket (drain, stall, idle peer) or sends a ping.
    fn on_deadline(&mut self, clock: &mut LiveClock) -> Option<Ended> {
        let now = Instant::now();
        let link = &self.link;
        if clock.drain_at.is_some_and(|at| now >= at) {
            link.close(close::SERVICE_RESTART);
            return Some(Ended::Server);
        }
        if clock.stall_at.is_some_and(|at| now >= at) {
            if link.close(close::TRY_AGAIN_LATER) {
                self.state.metrics.slow_consumers.inc();
            }
            return Some(Ended::Server);
        }
        if now >= link.silent_until(IDLE_TIMEOUT) {
            link.close(close::GOING_AWAY);
            return Some(Ended::Server);
        }
        if now >= clock.next_ping {
            clock.next_ping = now + PING_INTERVAL;
            self.ping_due = true;
            clock.due = true;
            self.trim();
        }
        None
    }

    /// Handles what the peer sent. Returns how the socket ended, if this ended it.
    fn take_incoming(&mut self, next: Option<Result<Message, E>>) -> Option<Ended> {
        let metrics = &self.state.metrics;
        self.link.touch();
        match next {
            None => Some(Ended::Peer(close::ABNORMAL)),
            Some(Err(error)) if is_too_big(&error) => {
                metrics.reject(Rejection::MessageTooBig);
                self.link.close(close::MESSAGE_TOO_BIG);
                Some(Ended::Server)
            }
            Some(Err(error)) => {
                debug!(%error, "socket read failed");
                Some(Ended::Peer(close::ABNORMAL))
            }
            Some(Ok(message)) => match classify(&message, self.dialect) {
                Incoming::Control => None,
                Incoming::Command(command) => {
                    self.take_command(command);
                    None
                }
                Incoming::BadCommand => {
                    self.refuse(ErrorCode::BadCommand);
                    None
                }
                Incoming::Binary => {
                    metrics.reject(Rejection::BinaryFrame);
                    self.link.close(close::UNSUPPORTED_DATA);
                    Some(Ended::Server)
                }
                Incoming::Close(code) => Some(Ended::Peer(code)),
            },
        }
    }

    /// Rate-limits one command and applies it; a refused one gets its `error` frame at once,
    /// one that waits on the broker becomes the socket's pending step. An empty chat is
    /// ignored before it costs a token (as in the tutorial); `typing` costs none, and only
    /// one per [`TYPING_INTERVAL`] goes further.
    fn take_command(&mut self, command: Command<'_>) {
        let now = Instant::now();
        match &command {
            Command::Chat(text) if text.trim().is_empty() => return,
            Command::Typing => {
                if self
                    .last_typing
                    .is_some_and(|last| now.duration_since(last) < TYPING_INTERVAL)
                {
                    return;
                }
                self.last_typing = Some(now);
            }
            _ => {
                if !self.bucket.try_take(now) {
                    return self.refuse(ErrorCode::RateLimited);
                }
            }
        }
        let origin = Origin {
            state: &self.state,
            room: &self.room,
            user: &self.user,
        };
        match commands::apply(command, &origin) {
            Outcome::Done => {}
            Outcome::Refused(code) => self.refuse(code),
            Outcome::Pending(pending) => self.pending = Some(pending),
        }
    }

    /// Counts a refused command and sends its `error` frame.
    fn refuse(&self, code: ErrorCode) {
        self.state.metrics.reject(rejection_of(code));
        self.send_error(code);
    }

    /// Queues an `error` frame for this socket only; a full queue makes it a slow consumer.
    fn send_error(&self, code: ErrorCode) {
        if self.link.push(code.frame()).is_err() && self.link.close(close::TRY_AGAIN_LATER) {
            self.state.metrics.slow_consumers.inc();
        }
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

    /// Writes a due ping, then everything queued (and whatever arrives meanwhile, up to
    /// [`WRITE_BATCH`] frames), then flushes once: a burst of frames becomes one write to the
    /// network. Frames at or below the cutoff are covered by the opening and skipped.
    ///
    /// Resumable: when the peer is slow, it returns `Pending` and picks up where it stopped.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        if !self.flushing {
            if self.ping_due {
                ready!(self.ws.poll_ready_unpin(cx))?;
                self.ws
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
                if is_after_opening(self.cutoff, frame) {
                    ready!(self.ws.poll_send_frame(cx, frame))?;
                    self.written += 1;
                }
                self.batch.pop_front();
            }
            self.flushing = true;
        }
        ready!(self.ws.poll_flush_unpin(cx))?;
        self.flushing = false;
        let written = std::mem::take(&mut self.written);
        self.state.metrics.messages_delivered.inc_by(written as u64);
        // A burst grew the buffers; an idle socket should not keep them.
        if self.batch.capacity() > 64 && written < 16 {
            self.batch.shrink_to(16);
        }
        Poll::Ready(Ok(()))
    }

    /// After the live loop: closes the socket as decided, waits for the peer's answer to our
    /// close frame (if we sent one), leaves the room, and returns the close code to count.
    async fn finish(&mut self, ended: Ended) -> u16 {
        let code = match ended {
            Ended::Peer(code) => {
                // The WebSocket layer answered the peer's close: flush the answer.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close()).await;
                code
            }
            Ended::Server => {
                let code = self.link.close_code().unwrap_or(close::NORMAL);
                // 1006: a write failed, the connection is gone.
                if code != close::ABNORMAL {
                    self.send_close(code).await;
                    self.await_close_answer().await;
                }
                code
            }
        };
        self.state.broker.leave(&self.room, &self.user).await;
        code
    }

    /// Sends the close frame the server decided on. A draining socket first gets the frames
    /// already queued for it.
    async fn send_close(&mut self, code: u16) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if code == close::SERVICE_RESTART {
                // What a pass left unwritten comes first, then whatever is queued.
                let mut queued = VecDeque::new();
                self.link.take_queued(&mut queued);
                self.batch.append(&mut queued);
                let mut written = 0;
                while let Some(frame) = self.batch.pop_front() {
                    if is_after_opening(self.cutoff, &frame) {
                        std::future::poll_fn(|cx| self.ws.poll_send_frame(cx, &frame)).await?;
                        written += 1;
                    }
                }
                self.state.metrics.messages_delivered.inc_by(written);
            }
            self.ws.send(close_message(code)).await
        })
        .await;
    }

    /// Gives the peer a moment to answer our close frame, so that it ends cleanly.
    async fn await_close_answer(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(message)) = self.ws.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The `confab_rejected_total` reason of a refused command.
fn rejection_of(code: ErrorCode) -> Rejection {
    match code {
        ErrorCode::TooLong => Rejection::TooLong,
        ErrorCode::RateLimited => Rejection::RateLimited,
        ErrorCode::Unavailable => Rejection::Unavailable,
        ErrorCode::BadCommand => Rejection::BadCommand,
        ErrorCode::Forbidden => Rejection::Forbidden,
        ErrorCode::NotFound => Rejection::NotFound,
    }
}

/// Whether a live frame is still to be written: id-less frames always are; numbered ones at
/// or below the cutoff were in the opening already.
fn is_after_opening(cutoff: u64, frame: &Frame) -> bool {
    frame.id() == 0 || frame.id() > cutoff
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
/// half-way is safe: the socket is closing.
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
