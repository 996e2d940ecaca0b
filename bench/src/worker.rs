//! A generator process's sockets: sign-in, connect, the receive path, and the send schedule.
//!
//! Each socket is one small tokio task (on the current-thread runtime by default: every socket
//! of the process on one thread). The receive path is the point of the design:
//!
//! - one 64 KiB read buffer per thread, shared by every socket on it; a read takes whatever
//!   the kernel has (many frames at once when the server batches its writes);
//! - [`Frames`] walks every complete frame in that buffer in place; only the bytes of a frame
//!   cut by the end of the read are copied to the socket's own (usually empty) tail;
//! - [`scan_event`] reads `id`, `type` and the tag from each payload without a JSON parser;
//! - the thread's tally is locked once per read, not per frame, and latencies go into a
//!   log-linear histogram.
//!
//! Senders wake on one pinned timer at the times [`send_time_ns`] gives (typists, with
//! `--typing-fraction`, also at their `typing` times: the timer points at the earlier of the
//! two). Control frames
//! (ping → pong, close → close) and Socket.IO's handshake (`0…` → `40`, `2` → `3`) are
//! answered after each read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::histogram::Histogram;
use crate::http::{self, Client};
use crate::layout::send_time_ns;
use crate::msg::{Command, Counters, Protocol, Reply, RuntimeKind, Setup};
use crate::scan::{self, Kind, Sio, Tag};
use crate::sys::{now_ns, self_cpu_ns};
use crate::wire::{self, FrameError, Frames};

/// Bytes asked of the kernel per read.
pub const READ_CHUNK: usize = 64 * 1024;
/// The largest server frame accepted (a `list` of many users can be large).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// The largest HTTP answer head accepted at the upgrade.
const MAX_UPGRADE_HEAD: usize = 16 * 1024;
/// How often a typist sends `{"type":"typing"}` while a step sends: once a second, twice what
/// a page throttled to confab's 2 s would send, so that confab's own throttle has work to do.
pub const TYPING_INTERVAL_NS: u64 = 1_000_000_000;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    static TALLY: Arc<Mutex<Tally>> = {
        let tally = Arc::new(Mutex::new(Tally::default()));
        lock(&TALLIES).push(tally.clone());
        tally
    };
}

/// Every thread's tally, for the worker to add up.
static TALLIES: Mutex<Vec<Arc<Mutex<Tally>>>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on this thread's tally.
fn with_tally<R>(f: impl FnOnce(&mut Tally) -> R) -> R {
    TALLY.with(|tally| f(&mut lock(tally)))
}

/// Runs `f` on every thread's tally.
fn each_tally(mut f: impl FnMut(&mut Tally)) {
    let tallies = lock(&TALLIES).clone();
    for tally in tallies {
        f(&mut lock(&tally));
    }
}

/// What one thread's sockets counted.
#[derive(Debug, Default)]
struct Tally {
    counters: Counters,
    steps: Vec<Option<Box<StepTally>>>,
}

impl Tally {
    fn step(&mut self, step: u32) -> &mut StepTally {
        let i = step as usize;
        if self.steps.len() <= i {
            self.steps.resize_with(i + 1, || None);
        }
        self.steps[i].get_or_insert_with(Box::default)
    }
}

/// One step's figures on one thread.
#[derive(Debug, Default)]
struct StepTally {
    received: u64,
    latency: Histogram,
    /// With typists: latency of chats from typists' sockets, and from the others.
    latency_typists: Histogram,
    latency_others: Histogram,
    sent: u64,
    sent_by_room: HashMap<u32, u64>,
    lag: Histogram,
}

/// What senders do now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    /// Nothing to send.
    Idle,
    /// Send at the schedule of [`send_time_ns`].
    Send {
        step: u32,
        rate: f64,
        start_ns: u64,
        end_ns: u64,
    },
    /// Close the socket.
    Close,
}

/// What a socket tells the connect phase.
enum SocketEvent {
    Ready { room: u32, latency_us: u64 },
    Failed(String),
}

/// The worker's state shared by its sockets.
struct Ctx {
    setup: Setup,
    plan: watch::Sender<Plan>,
    /// The step whose deliveries are being counted, or -1.
    accepting: AtomicI64,
    open: AtomicU32,
    join_complete: AtomicU32,
    join_done_ns: AtomicU64,
}

/// Runs a worker until [`Command::Quit`] or the end of `commands`: builds the runtime the
/// setup asks for and answers every command through `reply`.
pub fn run(setup: Setup, commands: mpsc::UnboundedReceiver<Command>, reply: impl Fn(Reply)) {
    let runtime = match setup.runtime {
        RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(setup, commands, &reply)),
        Err(error) => reply(Reply::Failed {
            error: format!("cannot start the runtime: {error}"),
        }),
    }
}

async fn serve(
    setup: Setup,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reply: &impl Fn(Reply),
) {
    let (plan, _) = watch::channel(Plan::Idle);
    let ctx = Arc::new(Ctx {
        setup,
        plan,
        accepting: AtomicI64::new(-1),
        open: AtomicU32::new(0),
        join_complete: AtomicU32::new(0),
        join_done_ns: AtomicU64::new(0),
    });
    let mine: Vec<u32> = ctx
        .setup
        .layout
        .clients_of(ctx.setup.index)
        .collect::<Vec<_>>();
    let mut cookies: Vec<Option<String>> = vec![None; mine.len()];
    let mut step_start = (0u64, Counters::default());
    while let Some(command) = commands.recv().await {
        match command {
            Command::SignIn => reply(signin_all(&ctx, &mine, &mut cookies).await),
            Command::Connect {
                concurrency,
                start_ns,
            } => reply(connect_all(&ctx, &mine, &cookies, concurrency, start_ns).await),
            Command::WaitJoins { timeout_ms } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                loop {
                    let open = ctx.open.load(Ordering::Relaxed);
                    let complete = ctx.join_complete.load(Ordering::Relaxed);
                    if complete >= open || Instant::now() >= deadline {
                        reply(Reply::Joins {
                            complete,
                            incomplete: open.saturating_sub(complete),
                            done_ns: ctx.join_done_ns.load(Ordering::Relaxed),
                        });
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Command::Step {
                step,
                rate,
                start_ns,
                end_ns,
            } => {
                step_start = (self_cpu_ns(), total_counters());
                ctx.accepting.store(i64::from(step), Ordering::SeqCst);
                ctx.plan.send_replace(Plan::Send {
                    step,
                    rate,
                    start_ns,
                    end_ns,
                });
                sleep_until_ns(end_ns + 100_000_000).await;
                ctx.plan.send_replace(Plan::Idle);
                let mut sent = 0;
                let mut by_room: BTreeMap<u32, u64> = BTreeMap::new();
                let mut lag = Histogram::new();
                each_tally(|tally| {
                    let st = tally.step(step);
                    sent += st.sent;
                    for (room, n) in &st.sent_by_room {
                        *by_room.entry(*room).or_default() += n;
                    }
                    lag.merge(&st.lag);
                });
                reply(Reply::Sent {
                    sent,
                    by_room: by_room.into_iter().collect(),
                    lag: lag.to_sparse(),
                });
            }
            Command::Drain {
                step,
                expected,
                deadline_ns,
            } => {
                loop {
                    let mut received = 0;
                    each_tally(|tally| received += tally.step(step).received);
                    if received >= expected || now_ns() >= deadline_ns {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                ctx.accepting.store(-1, Ordering::SeqCst);
                let mut received = 0;
                let mut latency = Histogram::new();
                let (mut typists, mut others) = (Histogram::new(), Histogram::new());
                each_tally(|tally| {
                    let st = tally.step(step);
                    received += st.received;
                    latency.merge(&st.latency);
                    typists.merge(&st.latency_typists);
                    others.merge(&st.latency_others);
                });
                reply(Reply::Drained {
                    received,
                    latency: latency.to_sparse(),
                    latency_by_typing: (ctx.setup.layout.typists > 0)
                        .then(|| (typists.to_sparse(), others.to_sparse())),
                    counters: total_counters().since(&step_start.1),
                    cpu_ns: self_cpu_ns().saturating_sub(step_start.0),
                });
            }
            Command::Status => reply(Reply::Status {
                open: ctx.open.load(Ordering::Relaxed),
                counters: total_counters(),
                cpu_ns: self_cpu_ns(),
            }),
            Command::Quit => {
                ctx.plan.send_replace(Plan::Close);
                let deadline = Instant::now() + Duration::from_millis(500);
                while ctx.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                reply(Reply::Bye {
                    cpu_ns: self_cpu_ns(),
                });
                break;
            }
        }
    }
}

fn total_counters() -> Counters {
    let mut total = Counters::default();
    each_tally(|tally| total.add(&tally.counters));
    total
}

async fn sleep_until_ns(unix_ns: u64) {
    let now = now_ns();
    if unix_ns > now {
        tokio::time::sleep(Duration::from_nanos(unix_ns - now)).await;
    }
}

/// The tokio instant of a Unix-nanosecond time.
fn instant_of(unix_ns: u64) -> Instant {
    Instant::now() + Duration::from_nanos(unix_ns.saturating_sub(now_ns()))
}

/// Prints `label done/total` on stderr every second until dropped.
struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(ctx: &Ctx, label: &'static str, done: Arc<AtomicU32>, total: usize) -> Self {
        if !ctx.setup.progress {
            return Self { task: None };
        }
        let index = ctx.setup.index;
        Self {
            task: Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let n = done.load(Ordering::Relaxed);
                    eprintln!("[worker {index}] {label} {n}/{total}");
                }
            })),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn user_name(run: u32, g: u32) -> String {
    format!("cb{run:08x}-u{g}")
}

/// The room's name on the server.
pub fn room_name(run: u32, room: u32) -> String {
    format!("cb{run:08x}-{room}")
}

async fn signin_all(ctx: &Arc<Ctx>, mine: &[u32], cookies: &mut [Option<String>]) -> Reply {
    let setup = &ctx.setup;
    let next = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let mine: Arc<[u32]> = mine.into();
    let _progress = Progress::start(ctx, "signin", done.clone(), mine.len());
    let timeout = Duration::from_millis(setup.connect_timeout_ms);
    let mut tasks = Vec::new();
    for k in 0..setup.signin_concurrency.max(1) {
        let (ctx, next, done, mine) = (ctx.clone(), next.clone(), done.clone(), mine.clone());
        tasks.push(tokio::spawn(async move {
            let setup = &ctx.setup;
            let source = source_ip(setup, k);
            let mut clients: Vec<Client> = setup
                .nodes
                .iter()
                .map(|node| Client::new(node.clone(), source, timeout))
                .collect();
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&g) = mine.get(i) else { break };
                let node = setup.layout.node_of(g) as usize;
                let result = clients[node].signin(&user_name(setup.run, g)).await;
                results.push((i, result));
                done.fetch_add(1, Ordering::Relaxed);
            }
            results
        }));
    }
    let mut ok = 0;
    let mut errors = BTreeMap::new();
    for task in tasks {
        let results = task.await.unwrap_or_default();
        for (i, result) in results {
            match result {
                Ok(cookie) => {
                    cookies[i] = Some(cookie);
                    ok += 1;
                }
                Err(error) => *errors.entry(error.0).or_default() += 1,
            }
        }
    }
    Reply::SignedIn { ok, errors }
}

fn source_ip(setup: &Setup, k: u32) -> Option<std::net::IpAddr> {
    if setup.sources.is_empty() {
        None
    } else {
        Some(setup.sources[k as usize % setup.sources.len()])
    }
}

async fn connect_all(
    ctx: &Arc<Ctx>,
    mine: &[u32],
    cookies: &[Option<String>],
    concurrency: u32,
    start_ns: u64,
) -> Reply {
    sleep_until_ns(start_ns).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1) as usize));
    let done = Arc::new(AtomicU32::new(0));
    let _progress = Progress::start(ctx, "connect", done.clone(), mine.len());
    let mut expected = 0;
    for (&g, cookie) in mine.iter().zip(cookies) {
        let Some(cookie) = cookie.clone() else {
            continue;
        };
        expected += 1;
        let (ctx, events_tx, semaphore) = (ctx.clone(), events_tx.clone(), semaphore.clone());
        tokio::spawn(async move {
            let Ok(permit) = semaphore.acquire_owned().await else {
                return;
            };
            socket_task(ctx, g, cookie, permit, events_tx).await;
        });
    }
    drop(events_tx);
    let mut connected = 0;
    let mut errors = BTreeMap::new();
    let mut rooms: BTreeMap<u32, u32> = BTreeMap::new();
    let mut latency = Histogram::new();
    let mut last_ready_ns = 0;
    for _ in 0..expected {
        match events.recv().await {
            Some(SocketEvent::Ready { room, latency_us }) => {
                connected += 1;
                *rooms.entry(room).or_default() += 1;
                latency.record(latency_us);
                last_ready_ns = now_ns();
            }
            Some(SocketEvent::Failed(reason)) => *errors.entry(reason).or_default() += 1,
            None => break,
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Reply::Connected {
        connected,
        errors,
        rooms: rooms.into_iter().collect(),
        latency: latency.to_sparse(),
        last_ready_ns,
    }
}

/// A small, fast, non-cryptographic generator for masks and keys (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
}

/// Opens client `g`'s socket: TCP connect (from its local address), the upgrade, `101`.
/// Returns the stream and whatever arrived after the answer's head.
async fn open(
    ctx: &Ctx,
    g: u32,
    cookie: &str,
    rng: &mut Rng,
) -> Result<(TcpStream, Vec<u8>), String> {
    let setup = &ctx.setup;
    let layout = &setup.layout;
    let node = &setup.nodes[layout.node_of(g) as usize];
    let source = if setup.sources.is_empty() {
        None
    } else {
        Some(setup.sources[layout.source_of(g) as usize])
    };
    let mut stream = http::connect(node.addr, source)
        .await
        .map_err(|error| format!("connect: {}", io_reason(&error)))?;
    let room = room_name(setup.run, layout.room_of(g));
    let path = match setup.protocol {
        Protocol::Confab if layout.typist_of(g).is_some() => format!("/ws/chat?room={room}&v=2"),
        Protocol::Confab => format!("/ws/chat?room={room}"),
        Protocol::Socketio => format!("/socket.io/?EIO=4&transport=websocket&room={room}"),
    };
    let key = wire::websocket_key(u128::from(rng.next()) << 64 | u128::from(rng.next()));
    let mut request = Vec::with_capacity(512);
    wire::upgrade_request(
        &mut request,
        &wire::Upgrade {
            path: &path,
            host: &node.host,
            origin: node.origin.as_deref(),
            cookie: Some(cookie),
            key: &key,
        },
    );
    stream
        .write_all(&request)
        .await
        .map_err(|error| format!("upgrade: {}", io_reason(&error)))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some((status, head_len)) = wire::parse_response_head(&buf) {
            if status != 101 {
                return Err(format!("upgrade: HTTP {status}"));
            }
            buf.drain(..head_len);
            return Ok((stream, buf));
        }
        if buf.len() > MAX_UPGRADE_HEAD {
            return Err("upgrade: answer head too long".to_owned());
        }
        let mut chunk = [0u8; 2048];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk)
            .await
            .map_err(|error| format!("upgrade: {}", io_reason(&error)))?;
        if n == 0 {
            return Err("upgrade: connection closed".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A short, countable reason for an I/O error.
fn io_reason(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => {
            "no free local port (EADDRNOTAVAIL): add --source addresses".to_owned()
        }
        Some(libc::EMFILE | libc::ENFILE) => "too many open files".to_owned(),
        _ => format!("{:?}", error.kind()),
    }
}

/// Reads what the socket has into `buf`: `Ok(None)` when nothing was there.
///
/// A read that leaves room in `buf` has drained the kernel's buffer, so the socket's
/// readiness is cleared at once (`try_io` clears it when its closure says `WouldBlock`):
/// the next wait goes straight to the poller instead of spending a `recv` on `EAGAIN` first.
/// Data arriving after the read raises a new edge, which tokio does not lose.
fn read_draining(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let room = buf.len();
    let mut got = None;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = stream.try_read(buf)?;
        got = Some(n);
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (result, got) {
        (_, Some(n)) => Ok(Some(n)),
        (Err(error), None) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
        (Err(error), None) => Err(error),
        (Ok(()), None) => Ok(None),
    }
}

/// One open socket.
struct Sock {
    room: u32,
    sender: Option<u32>,
    /// Senders in the run (the schedule's stride).
    senders: u32,
    /// This socket's typist number (`--typing-fraction`): opened with `v=2`, it sends its
    /// chat as JSON commands and a `typing` command every second of a step.
    typist: Option<u32>,
    /// Typists in the run (the spread of their first `typing` over a second).
    typists: u32,
    protocol: Protocol,
    run: u32,
    stream: TcpStream,
    /// The start of a frame cut by the end of the last read.
    tail: Vec<u8>,
    /// The full size of that frame, when its header was there.
    need: usize,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
    /// Skipping the continuations of a fragmented binary message.
    skipping: bool,
    /// Control replies and sends waiting to be written.
    out: Vec<u8>,
    scratch: Vec<u8>,
    rng: Rng,
    last_id: u64,
    ready: bool,
    became_ready: bool,
    /// Users this socket knows of: its `list`, then each `join`.
    known: u32,
    join_done: bool,
    /// Set when the server closed (its code) or the socket must end.
    closed: Option<u16>,
    /// The send schedule.
    plan: Plan,
    seq: u64,
    j: u64,
    next_send_ns: Option<u64>,
    /// `typing` commands sent this step, and when the next is due.
    typed: u64,
    next_typing_ns: Option<u64>,
}

/// How a socket's life ends.
enum End {
    Closed(u16),
    Failed(String),
}

async fn socket_task(
    ctx: Arc<Ctx>,
    g: u32,
    cookie: String,
    permit: OwnedSemaphorePermit,
    events: mpsc::UnboundedSender<SocketEvent>,
) {
    let started = Instant::now();
    let timeout = Duration::from_millis(ctx.setup.connect_timeout_ms);
    let mut rng = Rng::new(now_ns() ^ (u64::from(g) << 32));
    let opened = tokio::time::timeout(timeout, open(&ctx, g, &cookie, &mut rng)).await;
    let (stream, leftover) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => {
            let _ = events.send(SocketEvent::Failed(reason));
            return;
        }
        Err(_) => {
            let _ = events.send(SocketEvent::Failed("connect: timeout".to_owned()));
            return;
        }
    };
    drop(cookie);
    let layout = ctx.setup.layout;
    let mut sock = Sock {
        room: layout.room_of(g),
        sender: layout.sender_of(g),
        senders: layout.senders,
        typist: layout.typist_of(g),
        typists: layout.typists,
        protocol: ctx.setup.protocol,
        run: ctx.setup.run,
        stream,
        tail: Vec::new(),
        need: 0,
        fragments: None,
        skipping: false,
        out: Vec::new(),
        scratch: Vec::new(),
        rng,
        last_id: 0,
        ready: false,
        became_ready: false,
        known: 0,
        join_done: false,
        closed: None,
        plan: Plan::Idle,
        seq: 0,
        j: 0,
        next_send_ns: None,
        typed: 0,
        next_typing_ns: None,
    };
    let end = sock
        .run(
            &ctx,
            leftover,
            started + timeout,
            Some(permit),
            &events,
            started,
        )
        .await;
    if sock.ready {
        ctx.open.fetch_sub(1, Ordering::Relaxed);
        let code = match end {
            End::Closed(code) => code,
            End::Failed(_) => wire::CLOSE_ABNORMAL,
        };
        with_tally(|tally| *tally.counters.closes.entry(code).or_default() += 1);
    } else {
        let reason = match end {
            End::Closed(code) => format!("closed {code} before its list"),
            End::Failed(reason) => reason,
        };
        let _ = events.send(SocketEvent::Failed(reason));
    }
}

impl Sock {
    async fn run(
        &mut self,
        ctx: &Ctx,
        leftover: Vec<u8>,
        ready_deadline: Instant,
        mut permit: Option<OwnedSemaphorePermit>,
        events: &mpsc::UnboundedSender<SocketEvent>,
        started: Instant,
    ) -> End {
        let mut plan_rx = ctx.plan.subscribe();
        let timer = tokio::time::sleep_until(ready_deadline);
        tokio::pin!(timer);
        let mut timer_armed = true;

        if !leftover.is_empty() {
            match self.process(ctx, &leftover) {
                Ok(consumed) => self.tail.extend_from_slice(&leftover[consumed..]),
                Err(error) => return End::Failed(format!("bad frame: {error}")),
            }
        }
        loop {
            if self.became_ready {
                self.became_ready = false;
                let _ = events.send(SocketEvent::Ready {
                    room: self.room,
                    latency_us: started.elapsed().as_micros() as u64,
                });
                ctx.open.fetch_add(1, Ordering::Relaxed);
                drop(permit.take());
                self.set_plan(*plan_rx.borrow_and_update());
                timer_armed = self.arm(timer.as_mut());
            }
            if !self.out.is_empty() {
                if let Err(error) = self.stream.write_all(&self.out).await {
                    return End::Failed(format!("write: {}", io_reason(&error)));
                }
                self.out.clear();
            }
            if let Some(code) = self.closed {
                return End::Closed(code);
            }
            tokio::select! {
                biased;
                () = &mut timer, if timer_armed => {
                    if !self.ready {
                        return End::Failed("connect: timeout waiting for the list".to_owned());
                    }
                    self.on_timer(ctx);
                    timer_armed = self.arm(timer.as_mut());
                }
                changed = plan_rx.changed(), if self.ready => {
                    if changed.is_err() {
                        return End::Closed(wire::CLOSE_NORMAL);
                    }
                    let plan = *plan_rx.borrow_and_update();
                    if plan == Plan::Close {
                        wire::encode_masked(&mut self.out, wire::OP_CLOSE, &wire::CLOSE_NORMAL.to_be_bytes(), self.rng.mask());
                        let _ = self.stream.write_all(&self.out).await;
                        return End::Closed(wire::CLOSE_NORMAL);
                    }
                    self.set_plan(plan);
                    timer_armed = self.arm(timer.as_mut());
                }
                readable = self.stream.readable() => {
                    if let Err(error) = readable {
                        return End::Failed(format!("read: {}", io_reason(&error)));
                    }
                    match self.on_readable(ctx) {
                        Ok(true) => {}
                        Ok(false) => return End::Closed(wire::CLOSE_ABNORMAL),
                        Err(error) => return End::Failed(error),
                    }
                }
            }
        }
    }

    /// Adopts a new plan: a sender starts its schedule from message 0 of the step.
    fn set_plan(&mut self, plan: Plan) {
        self.plan = plan;
        self.j = 0;
        self.next_send_ns = None;
        self.typed = 0;
        self.next_typing_ns = None;
        if let Plan::Send {
            start_ns, end_ns, ..
        } = plan
        {
            self.schedule_typing(start_ns, end_ns);
        }
        if let (
            Plan::Send {
                rate,
                start_ns,
                end_ns,
                ..
            },
            Some(_),
        ) = (plan, self.sender)
        {
            self.schedule(rate, start_ns, end_ns);
        }
    }

    fn schedule(&mut self, rate: f64, start_ns: u64, end_ns: u64) {
        let Some(sender) = self.sender else { return };
        let senders = self.senders;
        let at = send_time_ns(start_ns, rate, senders, sender, self.j);
        self.next_send_ns = (at < end_ns).then_some(at);
    }

    /// A typist's `typing` number `typed` of the step: typist `t` of `T` starts `t / T` of a
    /// second into the step (so the typists' commands are spread evenly), then one a second.
    fn schedule_typing(&mut self, start_ns: u64, end_ns: u64) {
        let Some(typist) = self.typist else { return };
        let offset = u64::from(typist) * TYPING_INTERVAL_NS / u64::from(self.typists.max(1));
        let at = start_ns + offset + self.typed * TYPING_INTERVAL_NS;
        self.next_typing_ns = (at < end_ns).then_some(at);
    }

    /// Points the timer at the next send or `typing`; returns whether it is armed.
    fn arm(&self, timer: std::pin::Pin<&mut tokio::time::Sleep>) -> bool {
        let next = match (self.next_send_ns, self.next_typing_ns) {
            (Some(send), Some(typing)) => Some(send.min(typing)),
            (send, typing) => send.or(typing),
        };
        match next {
            Some(at) => {
                timer.reset(instant_of(at));
                true
            }
            None => false,
        }
    }

    /// The timer fired: sends the chat or the `typing` due first (when both are due, the timer
    /// fires again at once for the other).
    fn on_timer(&mut self, ctx: &Ctx) {
        match (self.next_send_ns, self.next_typing_ns) {
            (Some(send), Some(typing)) if typing < send => self.send_typing(),
            (None, Some(_)) => self.send_typing(),
            _ => self.send(ctx),
        }
    }

    /// Queues a `{"type":"typing"}` command and schedules the next.
    fn send_typing(&mut self) {
        let Plan::Send {
            start_ns, end_ns, ..
        } = self.plan
        else {
            self.next_typing_ns = None;
            return;
        };
        let mask = self.rng.mask();
        wire::encode_masked(&mut self.out, wire::OP_TEXT, scan::TYPING_COMMAND, mask);
        with_tally(|tally| tally.counters.typing_sent += 1);
        self.typed += 1;
        self.schedule_typing(start_ns, end_ns);
    }

    /// Sends the message due now, queues its frame, and schedules the next.
    fn send(&mut self, ctx: &Ctx) {
        let (
            Plan::Send {
                step,
                rate,
                start_ns,
                end_ns,
            },
            Some(sender),
            Some(due),
        ) = (self.plan, self.sender, self.next_send_ns)
        else {
            return;
        };
        let now = now_ns();
        let tag = Tag {
            run: self.run,
            step,
            sender,
            seq: self.seq,
            sent_ns: now,
        };
        self.scratch.clear();
        match self.protocol {
            Protocol::Confab if self.typist.is_some() => {
                scan::write_chat_command(&mut self.scratch, &tag, ctx.setup.size);
            }
            Protocol::Confab => scan::write_tag(&mut self.scratch, &tag, ctx.setup.size),
            Protocol::Socketio => {
                let mut text = Vec::with_capacity(ctx.setup.size);
                scan::write_tag(&mut text, &tag, ctx.setup.size);
                scan::write_socketio_chat(&mut self.scratch, &text);
            }
        }
        let mask = self.rng.mask();
        wire::encode_masked(&mut self.out, wire::OP_TEXT, &self.scratch, mask);
        self.seq += 1;
        self.j += 1;
        let room = self.room;
        with_tally(|tally| {
            let st = tally.step(step);
            st.sent += 1;
            *st.sent_by_room.entry(room).or_default() += 1;
            st.lag.record(now.saturating_sub(due) / 1000);
        });
        self.schedule(rate, start_ns, end_ns);
    }

    /// Reads what the kernel has and handles every complete frame. `Ok(false)`: end of stream.
    fn on_readable(&mut self, ctx: &Ctx) -> Result<bool, String> {
        READ_BUF.with_borrow_mut(|buf| {
            let t = self.tail.len();
            let want = t + READ_CHUNK.max(self.need.saturating_sub(t));
            if buf.len() < want {
                buf.resize(want, 0);
            }
            buf[..t].copy_from_slice(&self.tail);
            let n = match read_draining(&self.stream, &mut buf[t..want]) {
                Ok(Some(0)) => return Ok(false),
                Ok(Some(n)) => n,
                Ok(None) => return Ok(true),
                Err(error) => return Err(format!("read: {}", io_reason(&error))),
            };
            let end = t + n;
            let consumed = self
                .process(ctx, &buf[..end])
                .map_err(|error| format!("bad frame: {error}"))?;
            self.tail.clear();
            self.tail.extend_from_slice(&buf[consumed..end]);
            Ok(true)
        })
    }

    /// Handles every complete frame at the front of `data`; returns the bytes they took.
    fn process(&mut self, ctx: &Ctx, data: &[u8]) -> Result<usize, FrameError> {
        let now = now_ns();
        let accepting = ctx.accepting.load(Ordering::Relaxed);
        with_tally(|tally| {
            let mut frames = Frames::new(data, MAX_PAYLOAD);
            let mut count = 0;
            for frame in &mut frames {
                let frame = frame?;
                count += 1;
                self.on_frame(ctx, frame.head, frame.payload, now, accepting, tally);
            }
            self.need = frames.needed().unwrap_or(0);
            tally.counters.frames += count;
            tally.counters.bytes += frames.consumed() as u64;
            Ok(frames.consumed())
        })
    }

    fn on_frame(
        &mut self,
        ctx: &Ctx,
        head: wire::FrameHead,
        payload: &[u8],
        now: u64,
        accepting: i64,
        tally: &mut Tally,
    ) {
        match head.opcode {
            wire::OP_TEXT if head.fin => self.on_text(ctx, payload, now, accepting, tally),
            wire::OP_TEXT => self.fragments = Some(payload.to_vec()),
            wire::OP_BINARY => self.skipping = !head.fin,
            wire::OP_CONTINUATION => {
                if self.skipping {
                    self.skipping = !head.fin;
                } else if let Some(mut message) = self.fragments.take() {
                    message.extend_from_slice(payload);
                    if head.fin {
                        self.on_text(ctx, &message, now, accepting, tally);
                    } else {
                        self.fragments = Some(message);
                    }
                }
            }
            wire::OP_PING => {
                let mask = self.rng.mask();
                wire::encode_masked(&mut self.out, wire::OP_PONG, payload, mask);
            }
            wire::OP_CLOSE if self.closed.is_none() => {
                let code = wire::close_code(payload);
                let mask = self.rng.mask();
                let echo = if code == wire::CLOSE_NO_STATUS {
                    Vec::new()
                } else {
                    code.to_be_bytes().to_vec()
                };
                wire::encode_masked(&mut self.out, wire::OP_CLOSE, &echo, mask);
                self.closed = Some(code);
            }
            _ => {}
        }
    }

    fn on_text(&mut self, ctx: &Ctx, payload: &[u8], now: u64, accepting: i64, tally: &mut Tally) {
        match self.protocol {
            Protocol::Confab => {
                self.on_event(ctx, scan::scan_event(payload), now, accepting, tally)
            }
            Protocol::Socketio => match scan::scan_socketio(payload) {
                Sio::Message(object) => {
                    self.on_event(ctx, scan::scan_event(object), now, accepting, tally);
                }
                Sio::Open => self.queue_text(b"40"),
                Sio::Ping => self.queue_text(b"3"),
                Sio::Disconnect => {
                    if self.closed.is_none() {
                        self.closed = Some(wire::CLOSE_NORMAL);
                    }
                }
                Sio::Connected | Sio::Other => {}
            },
        }
    }

    fn queue_text(&mut self, text: &[u8]) {
        let mask = self.rng.mask();
        wire::encode_masked(&mut self.out, wire::OP_TEXT, text, mask);
    }

    fn on_event(
        &mut self,
        ctx: &Ctx,
        event: scan::Event<'_>,
        now: u64,
        accepting: i64,
        tally: &mut Tally,
    ) {
        match event.kind {
            Kind::List => {
                if !self.ready {
                    self.ready = true;
                    self.became_ready = true;
                    self.known = event.users;
                    self.check_joins(ctx, now);
                }
            }
            Kind::Chat | Kind::Join | Kind::Left => {
                if let Some(id) = event.id {
                    if id > self.last_id {
                        self.last_id = id;
                    } else if id == self.last_id {
                        tally.counters.duplicates += 1;
                        return;
                    } else {
                        tally.counters.out_of_order += 1;
                    }
                }
                match event.kind {
                    Kind::Chat => match scan::parse_tag(event.text) {
                        Some(tag) if tag.run == self.run => {
                            if i64::from(tag.step) == accepting {
                                let st = tally.step(tag.step);
                                st.received += 1;
                                let us = now.saturating_sub(tag.sent_ns) / 1000;
                                st.latency.record(us);
                                let layout = &ctx.setup.layout;
                                if layout.typists > 0 {
                                    let g = layout.client_of_sender(tag.sender);
                                    if layout.typist_of(g).is_some() {
                                        st.latency_typists.record(us);
                                    } else {
                                        st.latency_others.record(us);
                                    }
                                }
                            } else {
                                tally.counters.late += 1;
                            }
                        }
                        _ => tally.counters.foreign += 1,
                    },
                    Kind::Join if self.ready => {
                        self.known += 1;
                        self.check_joins(ctx, now);
                    }
                    _ => {}
                }
            }
            Kind::Typing => tally.counters.typing_received += 1,
            Kind::Error => {
                let code = std::str::from_utf8(event.text).unwrap_or("?");
                let code = match code {
                    "rate_limited" | "too_long" | "unavailable" | "bad_command" => code,
                    _ => "other",
                };
                *tally.counters.errors.entry(code.to_owned()).or_default() += 1;
            }
            Kind::Other => {}
        }
    }

    fn check_joins(&mut self, ctx: &Ctx, now: u64) {
        if let Some(target) = ctx.setup.join_target
            && !self.join_done
            && self.known >= target
        {
            self.join_done = true;
            ctx.join_complete.fetch_add(1, Ordering::Relaxed);
            ctx.join_done_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
}
