//! The one way tests start confab and talk to it: [`spawn_app`] binds a real node on
//! `127.0.0.1:0` through `Application::bind`, exactly as `main` does, and [`TestApp`] offers one
//! method per endpoint plus real WebSocket clients ([`TestSocket`]) carrying the signed cookie.

use std::net::SocketAddr;
use std::time::Duration;

use confab::app::AppState;
use confab::{Application, Config, telemetry};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long a test waits for any one expected event before failing. Generous, because CI
/// machines are slow and shared; a passing test never waits this long.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A node running inside the test process.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state, for looking inside (metrics, hub, drain).
    pub state: AppState,
    client: reqwest::Client,
    stop: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A signed-in user: the user object the server made and the cookie that names it.
#[derive(Debug, Clone)]
pub struct TestUser {
    /// `{id, name, image}` as the server issued it.
    pub user: confab::user::User,
    /// `name=<signed value>`, ready for a `Cookie` header.
    pub cookie: String,
}

/// Starts a node with [`Config::for_tests`].
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a node with [`Config::for_tests`] changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    telemetry::init_for_tests();
    let mut config = Config::for_tests();
    configure(&mut config);
    let application = Application::bind(config).await.expect("the test app binds");
    let addr = application.local_addr();
    let state = application.state().clone();
    let stop = CancellationToken::new();
    let server = tokio::spawn(application.run_until(stop.clone().cancelled_owned()));
    TestApp {
        addr,
        state,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds"),
        stop,
        server: Some(server),
    }
}

impl TestApp {
    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` without a cookie.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET succeeds")
    }

    /// `GET path` with `cookie` (`name=value`).
    pub async fn get_with_cookie(&self, path: &str, cookie: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("GET succeeds")
    }

    /// `POST /signin` with the form field `name`.
    pub async fn post_signin(&self, name: &str) -> reqwest::Response {
        self.client
            .post(self.url("/signin"))
            .form(&[("name", name)])
            .send()
            .await
            .expect("POST /signin succeeds")
    }

    /// Signs `name` in and returns the user and cookie; fails the test if sign-in fails.
    pub async fn sign_in(&self, name: &str) -> TestUser {
        sign_in_at(self.addr, name).await
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics are text")
    }

    /// The value of one sample of `/metrics`, e.g. `confab_rejected_total{reason="too_long"}`;
    /// 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// `ws://ADDR/ws/chat?QUERY`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/chat{query}", self.addr)
    }

    /// Opens a socket as `user` with the query `query` (e.g. `?room=lobby`), with the page's
    /// own `Origin`; fails the test if the upgrade is refused.
    pub async fn connect(&self, user: &TestUser, query: &str) -> TestSocket {
        connect_at(self.addr, user, query).await
    }

    /// Opens a socket as `user` in `room` and reads its opening: history, then `list`.
    pub async fn join(&self, user: &TestUser, room: &str) -> (TestSocket, Opening) {
        join_at(self.addr, user, room).await
    }

    /// Opens a socket with full control of cookie, query and `Origin`.
    pub async fn try_connect(
        &self,
        user: Option<&TestUser>,
        query: &str,
        origin: Option<&str>,
    ) -> Result<TestSocket, tungstenite::Error> {
        try_connect_at(self.addr, user, query, origin).await
    }

    /// Opens a socket whose client side has the smallest receive buffer the kernel allows, so
    /// that a client that stops reading fills up quickly.
    pub async fn connect_slow_reader(&self, user: &TestUser, query: &str) -> TestSocket {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let mut request = self.ws_url(query).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("cookie", HeaderValue::from_str(&user.cookie).unwrap());
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .expect("the upgrade succeeds");
        TestSocket { ws }
    }

    /// Waits until `/readyz` answers 200 and `confab_broker_up` is 1 (in cluster mode: talking
    /// to Redis and holding its presence there, after a start or an outage).
    pub async fn wait_ready(&self) {
        eventually("the node to be ready and its broker up", || async {
            self.get("/readyz").await.status() == 200
                && self.metric("confab_broker_up").await == 1.0
        })
        .await;
    }

    /// Starts the node's drain, as SIGTERM would, without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Drains the node and waits until it has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let server = self.server.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the node stops within 30 s")
            .expect("the server task does not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Signs `name` in at the node at `addr`; fails the test if sign-in fails.
pub async fn sign_in_at(addr: SocketAddr, name: &str) -> TestUser {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds");
    let response = client
        .post(format!("http://{addr}/signin"))
        .form(&[("name", name)])
        .send()
        .await
        .expect("POST /signin succeeds");
    assert_eq!(response.status(), 302, "sign-in of {name:?} redirects");
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("sign-in sets a cookie")
        .to_str()
        .unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let user = decode_cookie_user(&cookie);
    TestUser { user, cookie }
}

/// Opens a socket at the node at `addr` with the page's own `Origin`.
pub async fn connect_at(addr: SocketAddr, user: &TestUser, query: &str) -> TestSocket {
    try_connect_at(addr, Some(user), query, Some(&format!("http://{addr}")))
        .await
        .expect("the upgrade succeeds")
}

/// Opens a socket at `addr` in `room` and reads its opening.
pub async fn join_at(addr: SocketAddr, user: &TestUser, room: &str) -> (TestSocket, Opening) {
    let mut socket = connect_at(addr, user, &format!("?room={room}")).await;
    let opening = socket.recv_opening().await;
    (socket, opening)
}

/// Ann and Bob in one room on two nodes, as most two-user tests begin.
pub struct TwoInARoom {
    pub ann: TestUser,
    pub ann_socket: TestSocket,
    pub bob: TestUser,
    pub bob_socket: TestSocket,
}

/// Signs Ann in on node `a` and Bob on node `b` and opens a socket for each in `room`
/// (`extra` is added to the query, e.g. `&v=2`), Ann's first; reads both openings and Bob's
/// `join` on Ann's socket.
pub async fn two_in_a_room(a: &TestApp, b: &TestApp, room: &str, extra: &str) -> TwoInARoom {
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let query = format!("?room={room}{extra}");
    let mut ann_socket = a.connect(&ann, &query).await;
    ann_socket.recv_opening().await;
    let mut bob_socket = b.connect(&bob, &query).await;
    bob_socket.recv_opening().await;
    let join = ann_socket.recv().await;
    assert_eq!(
        (join["type"].as_str(), join["user"]["id"].as_str()),
        (Some("join"), Some(bob.user.id.as_str())),
        "Ann's socket hears Bob join"
    );
    TwoInARoom {
        ann,
        ann_socket,
        bob,
        bob_socket,
    }
}

/// Opens a socket at `addr` with full control of cookie, query and `Origin`.
pub async fn try_connect_at(
    addr: SocketAddr,
    user: Option<&TestUser>,
    query: &str,
    origin: Option<&str>,
) -> Result<TestSocket, tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws/chat{query}").into_client_request()?;
    if let Some(user) = user {
        request
            .headers_mut()
            .insert("cookie", HeaderValue::from_str(&user.cookie).unwrap());
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(TestSocket { ws })
}

/// The user a `name=` cookie carries (skipping its 44-character signature).
pub fn decode_cookie_user(cookie: &str) -> confab::user::User {
    use base64::Engine;
    let value = cookie
        .strip_prefix("name=")
        .expect("the cookie is named name");
    let json = base64::engine::general_purpose::STANDARD
        .decode(&value[44..])
        .expect("the cookie carries base64");
    serde_json::from_slice(&json).expect("the cookie carries the user JSON")
}

/// `cookie` with the first character of its signature changed: a forgery that must name nobody.
pub fn tampered(cookie: &str) -> String {
    let value = cookie
        .strip_prefix("name=")
        .expect("the cookie is named name");
    let replacement = if value.starts_with('A') { 'B' } else { 'A' };
    format!("name={replacement}{}", &value[1..])
}

/// The value of `sample` in a metrics exposition; 0 when absent.
pub fn metric_value(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The frames a socket gets before live ones: its history, then its `list`.
#[derive(Debug)]
pub struct Opening {
    /// The history frames, in order.
    pub history: Vec<Value>,
    /// The `list` frame.
    pub list: Value,
}

impl Opening {
    /// The names in the `list`, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.list["data"]
            .as_array()
            .expect("list data is an array")
            .iter()
            .map(|user| user["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }
}

/// A real WebSocket client.
pub struct TestSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a socket got when it was waiting for a frame.
#[derive(Debug)]
pub enum Received {
    /// A text frame, parsed.
    Frame(Value),
    /// A close frame.
    Close(Option<CloseFrame>),
    /// The connection ended without a close frame.
    Ended,
}

/// The next text frame or close from `stream`, skipping pings and pongs; fails after
/// [`EVENT_TIMEOUT`].
async fn next_event_of<S>(stream: &mut S) -> Received
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    next_event_within(stream, EVENT_TIMEOUT).await
}

/// As [`next_event_of`], waiting up to `within`.
async fn next_event_within<S>(stream: &mut S, within: Duration) -> Received
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(within, stream.next())
            .await
            .expect("an event arrives in time");
        match next {
            Some(Ok(Message::Text(text))) => {
                return Received::Frame(serde_json::from_str(&text).expect("frames are JSON"));
            }
            Some(Ok(Message::Close(frame))) => return Received::Close(frame),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Binary(_))) => panic!("the server never sends binary frames"),
            Some(Err(_)) | None => return Received::Ended,
        }
    }
}

/// The receiving half of a split [`TestSocket`].
pub struct TestReceiver {
    stream: futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
}

impl TestReceiver {
    /// The next text frame; fails the test on a close or timeout.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(EVENT_TIMEOUT).await
    }

    /// The next text frame, waiting up to `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        match next_event_within(&mut self.stream, within).await {
            Received::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// The sending half of a split [`TestSocket`].
pub struct TestSender {
    sink: futures_util::stream::SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>,
}

impl TestSender {
    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.sink
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }
}

impl TestSocket {
    /// Splits the socket so one task can send while another reads.
    pub fn split(self) -> (TestSender, TestReceiver) {
        let (sink, stream) = self.ws.split();
        (TestSender { sink }, TestReceiver { stream })
    }

    /// The next text frame or close, skipping pings and pongs; fails after [`EVENT_TIMEOUT`].
    pub async fn next_event(&mut self) -> Received {
        next_event_of(&mut self.ws).await
    }

    /// The next text frame; fails the test on a close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Received::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next text frame, waiting up to `within` (for events slower than [`EVENT_TIMEOUT`]
    /// by design, such as a dead node being noticed).
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        match next_event_within(&mut self.ws, within).await {
            Received::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads the opening: frames up to and including the `list`.
    pub async fn recv_opening(&mut self) -> Opening {
        let mut history = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["type"] == "list" {
                return Opening {
                    history,
                    list: frame,
                };
            }
            history.push(frame);
        }
    }

    /// Reads frames until one of type `chat` with `data` equal to `text`; returns every frame
    /// read, that one last.
    pub async fn recv_until_chat(&mut self, text: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["type"] == "chat" && frame["data"] == text;
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Reads frames until `count` of them were `chat`s; returns every frame read.
    pub async fn recv_chats(&mut self, count: usize) -> Vec<Value> {
        let mut frames = Vec::new();
        let mut chats = 0;
        while chats < count {
            let frame = self.recv().await;
            chats += usize::from(frame["type"] == "chat");
            frames.push(frame);
        }
        frames
    }

    /// Reads until the server's close frame and returns its code and reason, with the frames
    /// that came before it. Fails if the connection ends without a close frame.
    pub async fn recv_close(&mut self) -> (u16, String, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            match self.next_event().await {
                Received::Frame(frame) => frames.push(frame),
                Received::Close(Some(frame)) => {
                    return (frame.code.into(), frame.reason.to_string(), frames);
                }
                other => panic!("expected a close frame, got {other:?} after {frames:?}"),
            }
        }
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    /// Sends any message.
    pub async fn send_message(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(message).await
    }

    /// Closes the socket from the client side, with a normal closure.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Read until the server's reply, so the server sees a clean close.
        let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }
}

/// Retries `check` every 20 ms until it returns `true`, failing after [`EVENT_TIMEOUT`]. For
/// state the test cannot be told about directly (a metric, a count), never instead of waiting
/// on an event.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `type`s of `frames`.
pub fn types(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|frame| frame["type"].as_str().unwrap())
        .collect()
}

/// The `data` of the `chat` frames among `frames`.
pub fn chat_texts(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "chat")
        .map(|frame| frame["data"].as_str().unwrap())
        .collect()
}

/// The `id`s of `frames`.
pub fn ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|frame| frame["id"].as_u64().unwrap())
        .collect()
}

/// A loopback port for a process that must listen on a port known in advance (a node that
/// restarts in place, nginx's upstreams, a Redis that is killed and started again).
///
/// A port from `bind(…:0)` comes from the kernel's ephemeral range, where every outgoing
/// connection of every test also takes its local port: between giving it back and the process
/// binding it, another connection may take it and the process fails with "address in use".
/// These ports come from below that range instead, handed out once per test run, starting at
/// a place that depends on the process id so that two runs side by side rarely meet; each is
/// checked to be free when handed out.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST;
    let start = (std::process::id() * 97) % span;
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (start + offset) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// A fresh directory under the system's temporary directory, removed (with its contents) when
/// dropped: a working directory with nothing in it, or a stand-in `CONFAB_STATIC_DIR`.
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Creates `confab-<what>-<pid>-<n>`, empty.
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "confab-{what}-{}-{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        ));
        // Left over from an earlier run whose process had the same id.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temporary directory is created");
        Self { path }
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Writes `contents` to `name` inside it.
    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path.join(name), contents).expect("the file is written");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An API request with `token`: the status, the headers and the JSON body (`Null` when empty).
pub async fn api_call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), app.url(path));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        assert_eq!(
            headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "{method} {path}: JSON"
        );
        serde_json::from_str(&text).expect("the body is JSON")
    };
    (status, headers, json)
}
