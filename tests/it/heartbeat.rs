//! Pings, the idle timeout and the write stall, driven through channels with tokio's paused
//! clock: the socket task is generic over `Sink`/`Stream`, so no real network is needed to wait
//! 60 seconds.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use confab::Config;
use confab::app::AppState;
use confab::protocol::{Dialect, RoomName};
use confab::user::{Identity, User};
use confab::ws::{
    FrameSink, IDLE_TIMEOUT, Opening, PING_INTERVAL, WRITE_STALL_TIMEOUT, run_connection,
};
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tungstenite::Message;

/// The error of a channel socket: the other end went away.
#[derive(Debug, thiserror::Error)]
#[error("the channel closed")]
struct Disconnected;

/// The server's end of an in-memory WebSocket.
struct ChannelSocket {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
    /// Cleared, the socket takes no more writes (and never says when it will): a client that
    /// stopped reading, its TCP window full.
    writable: Arc<AtomicBool>,
    /// Cleared, a flush waits until it is set again and `flushed` is woken.
    flushable: Arc<AtomicBool>,
    flushed: Arc<AtomicWaker>,
}

impl Stream for ChannelSocket {
    type Item = Result<Message, Disconnected>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|message| message.map(Ok))
    }
}

impl Sink<Message> for ChannelSocket {
    type Error = Disconnected;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Disconnected>> {
        if self.writable.load(Ordering::Relaxed) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Disconnected> {
        self.outgoing.send(message).map_err(|_| Disconnected)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Disconnected>> {
        self.flushed.register(cx.waker());
        if self.flushable.load(Ordering::Relaxed) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Disconnected>> {
        Poll::Ready(Ok(()))
    }
}

/// Event frames go as text messages (the trait's default).
impl FrameSink for ChannelSocket {}

/// The client's end: what it sends, and what it receives.
struct Client {
    to_server: mpsc::UnboundedSender<Message>,
    from_server: mpsc::UnboundedReceiver<Message>,
    writable: Arc<AtomicBool>,
    flushable: Arc<AtomicBool>,
    flushed: Arc<AtomicWaker>,
}

impl Client {
    /// The next message from the server.
    async fn next(&mut self) -> Message {
        self.from_server
            .recv()
            .await
            .expect("the server end is open")
    }

    /// The next text frame of type `kind` (`list`, `chat`…).
    async fn next_of_type(&mut self, kind: &str) -> String {
        let wanted = format!(r#""type":"{kind}""#);
        loop {
            if let Message::Text(text) = self.next().await
                && text.contains(&wanted)
            {
                return text.to_string();
            }
        }
    }

    /// The next message that is not a text frame (text frames are the opening and are skipped).
    async fn next_control(&mut self) -> Message {
        loop {
            let message = self.next().await;
            if !matches!(message, Message::Text(_)) {
                return message;
            }
        }
    }
}

/// Waits for the socket's task to end, and checks that its close was counted with `code`.
async fn assert_ended_with(task: tokio::task::JoinHandle<()>, state: &AppState, code: u16) {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the socket's task ends")
        .expect("the socket's task does not panic");
    let counted = format!(r#"confab_disconnects_total{{code="{code}"}} 1"#);
    assert!(
        state.metrics.render().contains(&counted),
        "no close {code} counted"
    );
}

/// What the upgrade learned of ann's socket in the lobby.
fn opening(dialect: Dialect) -> Opening {
    Opening {
        user: Some(Identity::new(User {
            id: "u1".into(),
            name: "ann".into(),
            image: "/static/avatars/0.svg".into(),
            role: None,
            bot: false,
        })),
        room: Ok(RoomName::lobby()),
        since: Ok(None),
        dialect,
        permit: None,
    }
}

async fn open_socket() -> (Client, tokio::task::JoinHandle<()>, AppState) {
    let state = AppState::new(Config::for_tests()).await.unwrap();
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_server) = mpsc::unbounded_channel();
    let opening = opening(Dialect::Text);
    let slot = state.connection_slot().unwrap();
    let writable = Arc::new(AtomicBool::new(true));
    let flushable = Arc::new(AtomicBool::new(true));
    let flushed = Arc::new(AtomicWaker::new());
    let task = tokio::spawn(run_connection(
        ChannelSocket {
            incoming,
            outgoing,
            writable: writable.clone(),
            flushable: flushable.clone(),
            flushed: flushed.clone(),
        },
        state.clone(),
        opening,
        slot,
    ));
    (
        Client {
            to_server,
            from_server,
            writable,
            flushable,
            flushed,
        },
        task,
        state,
    )
}

#[tokio::test(start_paused = true)]
async fn the_server_pings_every_25_seconds() {
    let (mut client, _task, _state) = open_socket().await;
    let opened = Instant::now();
    for n in 1..=3 {
        let message = client.next_control().await;
        assert!(matches!(message, Message::Ping(_)), "{message:?}");
        assert_eq!(opened.elapsed(), PING_INTERVAL * n, "ping {n}");
        client
            .to_server
            .send(Message::Pong(Default::default()))
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_silent_for_60_seconds_is_closed_with_1001() {
    let (mut client, task, state) = open_socket().await;
    let opened = Instant::now();
    // Two pings go unanswered; the close follows 60 s after the last sign of life.
    assert!(matches!(client.next_control().await, Message::Ping(_)));
    assert!(matches!(client.next_control().await, Message::Ping(_)));
    match client.next_control().await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert_eq!(opened.elapsed(), IDLE_TIMEOUT);
    drop(client);
    assert_ended_with(task, &state, 1001).await;
}

#[tokio::test(start_paused = true)]
async fn any_frame_from_the_peer_keeps_it_alive() {
    let (mut client, _task, _state) = open_socket().await;
    let opened = Instant::now();
    assert!(matches!(client.next_control().await, Message::Ping(_)));
    // At 25 s the client speaks (a chat message, no pong): the deadline moves to 85 s.
    client.to_server.send(Message::text("still here")).unwrap();
    assert!(matches!(client.next_control().await, Message::Ping(_)));
    assert!(matches!(client.next_control().await, Message::Ping(_)));
    match client.next_control().await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert_eq!(opened.elapsed(), PING_INTERVAL + IDLE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_write_stalled_for_60_seconds_closes_the_socket_as_a_slow_consumer() {
    let (mut client, task, state) = open_socket().await;
    let opened = Instant::now();
    // The opening arrives; then the client stops reading, though it keeps talking (so it is
    // not idle). The ping at 25 s is the first write that waits.
    let opening = client.from_server.recv().await.expect("the opening");
    assert!(matches!(opening, Message::Text(_)), "{opening:?}");
    client.writable.store(false, Ordering::Relaxed);
    let stalled_at = opened + PING_INTERVAL;
    for at in [30, 60, 84] {
        tokio::time::sleep_until(opened + Duration::from_secs(at)).await;
        client
            .to_server
            .send(Message::Pong(Default::default()))
            .unwrap();
    }
    assert_eq!(
        state.metrics.slow_consumers.get(),
        0,
        "closed before the stall timeout"
    );
    tokio::time::sleep_until(stalled_at + WRITE_STALL_TIMEOUT).await;
    tokio::task::yield_now().await;
    assert_eq!(
        state.metrics.slow_consumers.get(),
        1,
        "not closed at the stall timeout"
    );
    // The close frame cannot be written either: the task gives up on it, and ends.
    assert_ended_with(task, &state, 1013).await;
}

#[tokio::test(start_paused = true)]
async fn a_frame_queued_while_a_flush_waits_is_written_after_it() {
    let (mut client, _task, _state) = open_socket().await;
    client.next_of_type("list").await;
    // The socket's task hands "one" to the sink and then waits for its flush.
    client.flushable.store(false, Ordering::Relaxed);
    client.to_server.send(Message::text("one")).unwrap();
    let one = client.next_of_type("chat").await;
    assert!(one.contains(r#""data":"one""#), "{one}");
    // "two" is queued while that flush waits; then the flush completes.
    client.to_server.send(Message::text("two")).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    client.flushable.store(true, Ordering::Relaxed);
    client.flushed.wake();
    let two = tokio::time::timeout(Duration::from_secs(5), client.next_of_type("chat"))
        .await
        .expect("the frame queued during the flush was never written");
    assert!(two.contains(r#""data":"two""#), "{two}");
}

#[tokio::test]
async fn an_idle_socket_task_stays_small() {
    let state = AppState::new(Config::for_tests()).await.unwrap();
    let (_to_server, incoming) = mpsc::unbounded_channel();
    let (outgoing, _from_server) = mpsc::unbounded_channel();
    let opening = opening(Dialect::Commands);
    let slot = state.connection_slot().unwrap();
    let socket = ChannelSocket {
        incoming,
        outgoing,
        writable: Arc::new(AtomicBool::new(true)),
        flushable: Arc::new(AtomicBool::new(true)),
        flushed: Arc::new(AtomicWaker::new()),
    };
    let task = run_connection(socket, state.clone(), opening, slot);
    let size = std::mem::size_of_val(&task);
    println!("socket task: {size} bytes");
    // The whole idle socket (task, link, buffers) must stay within 4 KiB (BENCHMARKS.md,
    // "Idle sockets"); the task's own state is the part commands could grow, and a command
    // waiting on the broker is a boxed future, not inline state.
    assert!(size <= 1024, "the socket task is {size} bytes");
}
