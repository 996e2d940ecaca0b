//! The coordinator: starts the workers (a thread, or `--processes` child processes), drives
//! each scenario through them one [`Command`] at a time, watches the server processes, and
//! adds every worker's figures into one [`Report`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::ToSocketAddrs;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cli::{self, Common, Scenario, Sending};
use crate::histogram::Histogram;
use crate::http::Node;
use crate::layout::Layout;
use crate::msg::{Command, Counters, Reply, Setup};
use crate::redis_info;
use crate::report::{
    ConnectionsSummary, JoinSummary, Phase, RampSummary, Report, ServerWatch, Step,
};
use crate::sys::{ProcSample, now_ns, self_cpu_ns};
use crate::worker;

/// One worker, in this process or a child.
enum Handle {
    Local {
        commands: mpsc::UnboundedSender<Command>,
        replies: std_mpsc::Receiver<Reply>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Child {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
}

/// The workers of a run.
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// Starts one worker per setup: in a thread of this process when there is one, else as
    /// child processes (`confab-bench worker`, fed the setup on stdin).
    pub fn start(setups: Vec<Setup>) -> Result<Self, String> {
        let mut handles = Vec::new();
        if setups.len() == 1 {
            let setup = setups.into_iter().next().expect("one setup");
            let (commands, rx) = mpsc::unbounded_channel();
            let (reply_tx, replies) = std_mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("worker".to_owned())
                .spawn(move || {
                    worker::run(setup, rx, |reply| {
                        let _ = reply_tx.send(reply);
                    });
                })
                .map_err(|error| format!("cannot start the worker thread: {error}"))?;
            handles.push(Handle::Local {
                commands,
                replies,
                thread: Some(thread),
            });
        } else {
            let exe = std::env::current_exe()
                .map_err(|error| format!("cannot find this program to re-execute: {error}"))?;
            for setup in setups {
                let mut child = std::process::Command::new(&exe)
                    .arg("worker")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|error| format!("cannot start a worker process: {error}"))?;
                let mut stdin = child.stdin.take().expect("piped");
                let stdout = BufReader::new(child.stdout.take().expect("piped"));
                let line = serde_json::to_string(&setup).expect("setups serialize");
                writeln!(stdin, "{line}")
                    .and_then(|()| stdin.flush())
                    .map_err(|error| format!("cannot talk to a worker: {error}"))?;
                handles.push(Handle::Child {
                    child,
                    stdin,
                    stdout,
                });
            }
        }
        Ok(Self { handles })
    }

    /// How many workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Sends `command(i)` to worker `i`, every worker, then waits for every answer.
    pub fn ask(&mut self, command: impl Fn(usize) -> Command) -> Result<Vec<Reply>, String> {
        for (i, handle) in self.handles.iter_mut().enumerate() {
            let command = command(i);
            match handle {
                Handle::Local { commands, .. } => commands
                    .send(command)
                    .map_err(|_| "the worker thread ended".to_owned())?,
                Handle::Child { stdin, .. } => {
                    let line = serde_json::to_string(&command).expect("commands serialize");
                    writeln!(stdin, "{line}")
                        .and_then(|()| stdin.flush())
                        .map_err(|error| format!("worker {i} is gone: {error}"))?;
                }
            }
        }
        let mut replies = Vec::with_capacity(self.handles.len());
        for (i, handle) in self.handles.iter_mut().enumerate() {
            let reply = match handle {
                Handle::Local { replies, .. } => replies
                    .recv()
                    .map_err(|_| "the worker thread ended".to_owned())?,
                Handle::Child { stdout, .. } => {
                    let mut line = String::new();
                    match stdout.read_line(&mut line) {
                        Ok(0) | Err(_) => return Err(format!("worker {i} ended early")),
                        Ok(_) => serde_json::from_str(&line)
                            .map_err(|error| format!("worker {i} said {line:?}: {error}"))?,
                    }
                }
            };
            if let Reply::Failed { error } = reply {
                return Err(format!("worker {i}: {error}"));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Closes every socket, ends the workers, and returns their CPU time in all, ns.
    pub fn quit(mut self) -> u64 {
        let cpu = match self.ask(|_| Command::Quit) {
            Ok(replies) => replies
                .iter()
                .map(|reply| match reply {
                    Reply::Bye { cpu_ns } => *cpu_ns,
                    _ => 0,
                })
                .sum(),
            Err(_) => 0,
        };
        for handle in &mut self.handles {
            match handle {
                Handle::Local {
                    commands, thread, ..
                } => {
                    drop(std::mem::replace(commands, mpsc::unbounded_channel().0));
                    if let Some(thread) = thread.take() {
                        let _ = thread.join();
                    }
                }
                Handle::Child { child, .. } => {
                    let _ = child.wait();
                }
            }
        }
        cpu
    }
}

/// Looks at the `--server-pid` processes.
struct Probe {
    pids: Vec<u32>,
}

impl Probe {
    fn sample(&self) -> Vec<ProcSample> {
        self.pids
            .iter()
            .map(|&pid| {
                ProcSample::read(pid).unwrap_or(ProcSample {
                    pid,
                    ..Default::default()
                })
            })
            .collect()
    }
}

fn cpu_between(before: &[ProcSample], after: &[ProcSample]) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| b.cpu_ns.saturating_sub(a.cpu_ns))
        .sum()
}

fn rss(samples: &[ProcSample]) -> u64 {
    samples.iter().map(|s| s.rss_bytes).sum()
}

fn progress(common: &Common, line: impl FnOnce() -> String) {
    if !common.quiet {
        eprintln!("{}", line());
    }
}

/// Reads `--url` values into nodes.
fn nodes(common: &Common) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    for url in common
        .urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("--url {url}: only http:// URLs are supported"));
        };
        let host = rest.trim_end_matches('/');
        if host.contains('/') {
            return Err(format!("--url {url}: give only http://HOST:PORT"));
        }
        let with_port = if host.contains(':') && !host.ends_with(']') {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|error| format!("--url {url}: {error}"))?
            .find(|a| a.is_ipv4())
            .or_else(|| with_port.to_socket_addrs().ok()?.next())
            .ok_or_else(|| format!("--url {url}: no address"))?;
        let origin = match common.origin.as_str() {
            "auto" => Some(format!("http://{host}")),
            "none" => None,
            literal => Some(literal.to_owned()),
        };
        nodes.push(Node {
            url: url.to_owned(),
            addr,
            host: host.to_owned(),
            origin,
        });
    }
    if nodes.is_empty() {
        return Err("give at least one --url".to_owned());
    }
    Ok(nodes)
}

/// A run in progress: its workers and what every phase found so far.
struct Run {
    common: Common,
    layout: Layout,
    workers: Workers,
    probe: Probe,
    first: Vec<ProcSample>,
    report: Report,
    /// Per worker: `(room, sockets)`.
    rooms: Vec<BTreeMap<u32, u32>>,
    cpu_start: u64,
}

impl Run {
    fn start(
        common: &Common,
        scenario: &str,
        layout: Layout,
        join_target: Option<u32>,
    ) -> Result<Self, String> {
        let nodes = nodes(common)?;
        let sources = cli::parse_sources(&common.sources)?;
        let run = (now_ns() as u32) ^ (std::process::id().rotate_left(16));
        let layout = Layout {
            nodes: nodes.len() as u32,
            processes: common.processes,
            sources: sources.len().max(1) as u32,
            placement: common.placement,
            run,
            ..layout
        };
        if layout.clients == 0 || layout.room_size == 0 {
            return Err("need at least one client and one client per room".to_owned());
        }
        let setups = (0..common.processes)
            .map(|index| Setup {
                index,
                run,
                protocol: common.protocol,
                nodes: nodes.clone(),
                sources: sources.clone(),
                layout,
                size: common.size,
                signin_concurrency: common.signin_concurrency,
                connect_timeout_ms: (common.connect_timeout * 1000.0) as u64,
                runtime: common.runtime,
                progress: !common.quiet,
                join_target,
            })
            .collect();
        let probe = Probe {
            pids: common.server_pids.clone(),
        };
        let first = probe.sample();
        let workers = Workers::start(setups)?;
        let report = Report {
            scenario: scenario.to_owned(),
            run: format!("{run:08x}"),
            protocol: common.protocol,
            urls: nodes.iter().map(|n| n.url.clone()).collect(),
            sources: sources.iter().map(ToString::to_string).collect(),
            processes: common.processes,
            runtime: common.runtime,
            message_bytes: common.size,
            layout,
            signin: Phase::default(),
            connect: Phase::default(),
            steps: Vec::new(),
            ramp: None,
            connections: None,
            join: None,
            counters: Counters::default(),
            generator_cpu_secs: 0.0,
            servers: Vec::new(),
            warnings: Vec::new(),
        };
        Ok(Self {
            common: common.clone(),
            layout,
            workers,
            probe,
            first,
            report,
            rooms: Vec::new(),
            cpu_start: self_cpu_ns(),
        })
    }

    fn signin(&mut self) -> Result<(), String> {
        progress(&self.common, || {
            format!("signing {} users in…", self.layout.clients)
        });
        let started = Instant::now();
        let replies = self.workers.ask(|_| Command::SignIn)?;
        let phase = &mut self.report.signin;
        phase.secs = started.elapsed().as_secs_f64();
        for reply in replies {
            if let Reply::SignedIn { ok, errors } = reply {
                phase.ok += u64::from(ok);
                for (reason, n) in errors {
                    phase.failed += u64::from(n);
                    *phase.errors.entry(reason).or_default() += u64::from(n);
                }
            }
        }
        phase.per_sec = phase.ok as f64 / phase.secs.max(1e-9);
        if phase.failed > 0 {
            let reasons: Vec<_> = phase.errors.keys().cloned().collect();
            self.report.warnings.push(format!(
                "{} sign-ins failed: {}",
                phase.failed,
                reasons.join("; ")
            ));
        }
        Ok(())
    }

    /// Connects every signed-in client; returns when the connect started (Unix ns) and when
    /// the last socket got its `list`.
    fn connect(&mut self, concurrency: u32) -> Result<(u64, u64), String> {
        progress(&self.common, || {
            format!("opening {} sockets…", self.report.signin.ok)
        });
        let start_ns = now_ns() + 50_000_000;
        let replies = self.workers.ask(|_| Command::Connect {
            concurrency,
            start_ns,
        })?;
        let mut latency = Histogram::new();
        let mut last = start_ns;
        let phase = &mut self.report.connect;
        for reply in replies {
            if let Reply::Connected {
                connected,
                errors,
                rooms,
                latency: sparse,
                last_ready_ns,
            } = reply
            {
                phase.ok += u64::from(connected);
                for (reason, n) in errors {
                    phase.failed += u64::from(n);
                    *phase.errors.entry(reason).or_default() += u64::from(n);
                }
                self.rooms.push(rooms.into_iter().collect());
                latency.merge_sparse(&sparse);
                last = last.max(last_ready_ns);
            }
        }
        phase.secs = last.saturating_sub(start_ns) as f64 / 1e9;
        phase.per_sec = phase.ok as f64 / phase.secs.max(1e-9);
        phase.latency_ms = Some(latency.summary_ms());
        if phase.failed > 0 {
            let reasons: Vec<_> = phase.errors.keys().cloned().collect();
            self.report.warnings.push(format!(
                "{} sockets failed to open: {}",
                phase.failed,
                reasons.join("; ")
            ));
        }
        progress(&self.common, || {
            format!(
                "{} sockets open in {:.2} s ({} failed)",
                phase.ok, phase.secs, phase.failed
            )
        });
        Ok((start_ns, last))
    }

    /// Waits `--settle` seconds, and then on until no frame has arrived for half a second
    /// (a room of C filling up sends C²/2 `join` frames), at most 60 s more.
    fn settle(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let least = Duration::from_secs_f64(self.common.settle.max(0.0));
        let most = least + Duration::from_secs(60);
        let mut last = u64::MAX;
        let mut quiet_since = Instant::now();
        loop {
            let (_, counters) = self.status()?;
            if counters.frames != last {
                last = counters.frames;
                quiet_since = Instant::now();
            }
            let elapsed = started.elapsed();
            if (elapsed >= least && quiet_since.elapsed() >= Duration::from_millis(500))
                || elapsed >= most
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One sending step at `rate` total messages a second for `secs`, then the drain.
    fn step(&mut self, step: u32, rate: f64, secs: f64, drain: f64) -> Result<Step, String> {
        let before = self.probe.sample();
        let redis_before: Vec<_> = self
            .common
            .redis
            .iter()
            .map(|a| redis_info::sample(a))
            .collect();
        let start_ns = now_ns() + 200_000_000;
        let end_ns = start_ns + (secs * 1e9) as u64;
        let replies = self.workers.ask(|_| Command::Step {
            step,
            rate,
            start_ns,
            end_ns,
        })?;
        let mut sent = 0;
        let mut by_room: BTreeMap<u32, u64> = BTreeMap::new();
        let mut lag = Histogram::new();
        for reply in replies {
            if let Reply::Sent {
                sent: n,
                by_room: rooms,
                lag: sparse,
            } = reply
            {
                sent += n;
                for (room, n) in rooms {
                    *by_room.entry(room).or_default() += n;
                }
                lag.merge_sparse(&sparse);
            }
        }
        let expected: Vec<u64> = self
            .rooms
            .iter()
            .map(|mine| {
                by_room
                    .iter()
                    .map(|(room, n)| n * u64::from(mine.get(room).copied().unwrap_or(0)))
                    .sum()
            })
            .collect();
        let deadline_ns = end_ns + (drain * 1e9) as u64;
        let replies = self.workers.ask(|i| Command::Drain {
            step,
            expected: expected[i],
            deadline_ns,
        })?;
        let after = self.probe.sample();
        let redis_after: Vec<_> = self
            .common
            .redis
            .iter()
            .map(|a| redis_info::sample(a))
            .collect();
        let mut received = 0;
        let mut latency = Histogram::new();
        let mut by_typing: Option<(Histogram, Histogram)> = None;
        let mut counters = Counters::default();
        let mut cpu_ns = 0;
        for reply in replies {
            if let Reply::Drained {
                received: n,
                latency: sparse,
                latency_by_typing,
                counters: c,
                cpu_ns: cpu,
            } = reply
            {
                received += n;
                latency.merge_sparse(&sparse);
                if let Some((typists, others)) = latency_by_typing {
                    let (t, o) = by_typing.get_or_insert_with(Default::default);
                    t.merge_sparse(&typists);
                    o.merge_sparse(&others);
                }
                counters.add(&c);
                cpu_ns += cpu;
            }
        }
        let expected: u64 = expected.iter().sum();
        let lost = expected.saturating_sub(received);
        let per = |ns: u64| {
            if received == 0 {
                0.0
            } else {
                ns as f64 / 1000.0 / received as f64
            }
        };
        let server_cpu = cpu_between(&before, &after);
        let watching = !self.probe.pids.is_empty();
        let senders = self.layout.senders.max(1);
        let result = Step {
            step,
            rate,
            rate_per_sender: rate / f64::from(senders),
            secs,
            planned: (0..senders)
                .map(|s| planned_sends(rate, senders, s, secs))
                .sum(),
            sent,
            expected,
            received,
            lost,
            loss: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
            deliveries_per_sec: received as f64 / secs,
            latency_ms: latency.summary_ms(),
            typists_latency_ms: by_typing.as_ref().map(|(t, _)| t.summary_ms()),
            others_latency_ms: by_typing.as_ref().map(|(_, o)| o.summary_ms()),
            send_lag_ms: lag.summary_ms(),
            out_of_order: counters.out_of_order,
            duplicates: counters.duplicates,
            rate_limited: counters.error("rate_limited"),
            counters,
            generator_cpu_secs: cpu_ns as f64 / 1e9,
            generator_cpu_us_per_delivery: per(cpu_ns),
            server_cpu_secs: watching.then_some(server_cpu as f64 / 1e9),
            server_cpu_us_per_delivery: watching.then(|| per(server_cpu)),
            server_rss_bytes: watching.then(|| rss(&after)),
            passed: None,
            redis: redis_info::between(&self.common.redis, &redis_before, &redis_after),
        };
        Ok(result)
    }

    fn status(&mut self) -> Result<(u64, Counters), String> {
        let mut open = 0;
        let mut counters = Counters::default();
        for reply in self.workers.ask(|_| Command::Status)? {
            if let Reply::Status {
                open: n,
                counters: c,
                ..
            } = reply
            {
                open += u64::from(n);
                counters.add(&c);
            }
        }
        Ok((open, counters))
    }

    fn finish(mut self) -> Result<Report, String> {
        let (_, counters) = self.status()?;
        self.report.counters = counters;
        let last = self.probe.sample();
        self.report.servers = self
            .first
            .iter()
            .zip(&last)
            .map(|(first, last)| ServerWatch {
                first: *first,
                last: *last,
                cpu_secs: last.cpu_ns.saturating_sub(first.cpu_ns) as f64 / 1e9,
            })
            .collect();
        let children = self.workers.len() > 1;
        let worker_cpu = self.workers.quit();
        let own = self_cpu_ns().saturating_sub(self.cpu_start);
        self.report.generator_cpu_secs =
            (if children { worker_cpu + own } else { own }) as f64 / 1e9;
        for step in &self.report.steps {
            if step.rate_limited > 0 {
                self.report.warnings.push(format!(
                    "step {}: {} sends were refused as rate_limited (lower the per-sender rate, add senders)",
                    step.step, step.rate_limited
                ));
            }
            if step.sent + step.sent / 100 < step.planned {
                self.report.warnings.push(format!(
                    "step {}: sent {} of {} planned messages: the generator could not keep up (add --processes)",
                    step.step, step.sent, step.planned
                ));
            }
        }
        let c = &self.report.counters;
        if c.out_of_order > 0 || c.duplicates > 0 {
            self.report.warnings.push(format!(
                "ids out of order {} times, repeated {} times",
                c.out_of_order, c.duplicates
            ));
        }
        Ok(self.report)
    }
}

/// Messages sender `s` of `senders` sends in `secs` at total `rate` (the schedule of
/// [`crate::layout::send_time_ns`]).
fn planned_sends(rate: f64, senders: u32, s: u32, secs: f64) -> u64 {
    let window = secs * 1e9;
    let mut count = 0;
    // Sends at (j × S + s) / R seconds while below secs.
    let first = f64::from(s) * 1e9 / rate;
    if first < window {
        let stride = f64::from(senders) * 1e9 / rate;
        count = ((window - first) / stride).ceil() as u64;
    }
    count
}

fn sending_rate(sending: &Sending, senders: u32) -> f64 {
    sending
        .total_rate
        .unwrap_or(sending.rate * f64::from(senders))
}

fn check_rate(common: &Common, report: &mut Report, per_sender: f64) {
    if common.protocol == crate::msg::Protocol::Confab && per_sender > 10.0 {
        report.warnings.push(format!(
            "{per_sender:.1} messages a second per sender is over confab's 10/s per socket: expect rate_limited (fine for the koa peer)"
        ));
    }
}

/// Runs the scenario the command line names.
pub fn run(common: &Common, scenario: &Scenario) -> Result<Report, String> {
    match scenario {
        Scenario::Fanout(args) => {
            let clients = args.clients;
            let senders = args.sending.senders.unwrap_or(clients).min(clients);
            send_scenario(
                "fanout",
                common,
                layout(clients, clients, senders),
                &args.sending,
            )
        }
        Scenario::Rooms(args) => {
            let clients = args.rooms * args.room_size;
            let senders = args.sending.senders.unwrap_or(clients).min(clients);
            let shape = Layout {
                typists: typists(common, clients, args.typing_fraction)?,
                ..layout(clients, args.room_size, senders)
            };
            send_scenario("rooms", common, shape, &args.sending)
        }
        Scenario::Ramp(args) => ramp(common, args),
        Scenario::Connections(args) => connections(common, args),
        Scenario::Join(args) => join(common, args),
        Scenario::Worker => Err("`worker` is internal".to_owned()),
    }
}

fn layout(clients: u32, room_size: u32, senders: u32) -> Layout {
    Layout {
        clients,
        room_size,
        senders,
        nodes: 1,
        processes: 1,
        sources: 1,
        placement: crate::layout::Placement::Alternate,
        run: 0,
        typists: 0,
    }
}

/// How many typists `--typing-fraction` makes of `clients`; typing needs confab's protocol.
fn typists(common: &Common, clients: u32, fraction: f64) -> Result<u32, String> {
    if fraction > 0.0 && common.protocol != crate::msg::Protocol::Confab {
        return Err("--typing-fraction needs --protocol confab (`v=2` commands)".to_owned());
    }
    Ok(crate::layout::typists_of(clients, fraction))
}

fn send_scenario(
    name: &str,
    common: &Common,
    shape: Layout,
    sending: &Sending,
) -> Result<Report, String> {
    let senders = shape.senders;
    let mut run = Run::start(common, name, shape, None)?;
    run.signin()?;
    run.connect(common.connect_concurrency)?;
    run.settle()?;
    let rate = sending_rate(sending, senders.max(1));
    check_rate(common, &mut run.report, rate / f64::from(senders.max(1)));
    progress(common, || {
        format!(
            "sending {rate:.1} msg/s ({:.2} per sender) for {} s…",
            rate / f64::from(senders.max(1)),
            sending.duration
        )
    });
    let step = run.step(0, rate, sending.duration, sending.drain)?;
    run.report.steps.push(step);
    run.finish()
}

fn ramp(common: &Common, args: &cli::Ramp) -> Result<Report, String> {
    let senders = args
        .senders
        .unwrap_or(args.clients)
        .min(args.clients)
        .max(1);
    let shape = Layout {
        typists: typists(common, args.clients, args.typing_fraction)?,
        ..layout(
            args.clients,
            args.room_size
                .unwrap_or(args.clients)
                .clamp(1, args.clients.max(1)),
            senders,
        )
    };
    let mut run = Run::start(common, "ramp", shape, None)?;
    run.signin()?;
    run.connect(common.connect_concurrency)?;
    run.settle()?;
    let mut rate = args.start_rate;
    let mut best: Option<(u32, f64)> = None;
    let stop_reason;
    let mut step = 0;
    loop {
        let per_sender = rate / f64::from(senders);
        if args.max_rate_per_sender > 0.0 && per_sender > args.max_rate_per_sender {
            stop_reason = format!(
                "the next step needs {per_sender:.2} msg/s per sender, over --max-rate-per-sender {} (add senders)",
                args.max_rate_per_sender
            );
            break;
        }
        if step >= args.max_steps {
            stop_reason = format!("--max-steps {} reached", args.max_steps);
            break;
        }
        let mut result = run.step(step, rate, args.step_secs, args.drain)?;
        let passed = result.loss <= args.max_loss && result.latency_ms.p99 <= args.max_p99_ms;
        result.passed = Some(passed);
        progress(common, || {
            format!(
                "step {step}: {rate:.1} msg/s → {:.0} deliveries/s, loss {:.3}%, p50 {:.1} ms, p99 {:.1} ms{}",
                result.deliveries_per_sec,
                result.loss * 100.0,
                result.latency_ms.p50,
                result.latency_ms.p99,
                if passed { "" } else { "  ← over the limit" }
            )
        });
        let deliveries = result.deliveries_per_sec;
        run.report.steps.push(result);
        if !passed {
            stop_reason = format!(
                "step {step} went over the limits (loss > {} or p99 > {} ms)",
                args.max_loss, args.max_p99_ms
            );
            break;
        }
        if best.is_none_or(|(_, d)| deliveries > d) {
            best = Some((step, deliveries));
        }
        rate *= args.factor;
        step += 1;
    }
    run.report.ramp = Some(RampSummary {
        sustained_deliveries_per_sec: best.map_or(0.0, |(_, d)| d),
        best_step: best.map(|(s, _)| s),
        stop_reason,
        max_loss: args.max_loss,
        max_p99_ms: args.max_p99_ms,
    });
    run.finish()
}

fn connections(common: &Common, args: &cli::Connections) -> Result<Report, String> {
    let mut run = Run::start(
        common,
        "connections",
        layout(args.clients, args.room_size.max(1), 0),
        None,
    )?;
    let watching = !run.probe.pids.is_empty();
    let before = run.probe.sample();
    run.signin()?;
    run.connect(common.connect_concurrency)?;
    run.settle()?;
    let connected_sample = run.probe.sample();
    progress(common, || {
        format!(
            "holding {} sockets for {} s…",
            run.report.connect.ok, args.hold
        )
    });
    let held = Instant::now();
    let hold = Duration::from_secs_f64(args.hold);
    while held.elapsed() < hold {
        std::thread::sleep((hold - held.elapsed()).min(Duration::from_secs(5)));
        let (open, _) = run.status()?;
        progress(common, || {
            format!(
                "{open} sockets open after {:.0} s",
                held.elapsed().as_secs_f64()
            )
        });
    }
    let (still_open, _) = run.status()?;
    let after = run.probe.sample();
    for sample in &before {
        if sample.hwm_bytes > sample.rss_bytes + sample.rss_bytes / 5 + (4 << 20) {
            run.report.warnings.push(format!(
                "server pid {} had used {:.0} MiB before this run (now {:.0} MiB): freed memory is reused, so RSS per connection understates; use a freshly started server",
                sample.pid,
                sample.hwm_bytes as f64 / 1048576.0,
                sample.rss_bytes as f64 / 1048576.0
            ));
        }
    }
    let per_connection = (watching && still_open > 0)
        .then(|| rss(&after).saturating_sub(rss(&before)) as f64 / still_open as f64);
    if still_open < run.report.connect.ok {
        run.report.warnings.push(format!(
            "{} sockets closed during the hold",
            run.report.connect.ok - still_open
        ));
    }
    run.report.connections = Some(ConnectionsSummary {
        requested: args.clients,
        connected: run.report.connect.ok,
        still_open,
        hold_secs: args.hold,
        room_size: args.room_size,
        server_rss_before: watching.then(|| rss(&before)),
        server_rss_connected: watching.then(|| rss(&connected_sample)),
        server_rss_after_hold: watching.then(|| rss(&after)),
        server_rss_per_connection: per_connection,
        server_cpu_secs: watching.then(|| cpu_between(&before, &after) as f64 / 1e9),
    });
    run.finish()
}

fn join(common: &Common, args: &cli::Join) -> Result<Report, String> {
    let users = args.users.max(1);
    let mut run = Run::start(common, "join", layout(users, users, 0), Some(users))?;
    run.signin()?;
    let (start_ns, last_ready) = run.connect(args.concurrency.max(1))?;
    let replies = run.workers.ask(|_| Command::WaitJoins {
        timeout_ms: (args.timeout * 1000.0) as u64,
    })?;
    let (mut complete, mut incomplete, mut done_ns) = (0u64, 0u64, 0u64);
    for reply in replies {
        if let Reply::Joins {
            complete: c,
            incomplete: i,
            done_ns: d,
        } = reply
        {
            complete += u64::from(c);
            incomplete += u64::from(i);
            done_ns = done_ns.max(d);
        }
    }
    let all_seen =
        (incomplete == 0 && complete > 0).then(|| done_ns.saturating_sub(start_ns) as f64 / 1e9);
    if incomplete > 0 {
        run.report.warnings.push(format!(
            "{incomplete} sockets had not seen every user after {} s",
            args.timeout
        ));
    }
    run.report.join = Some(JoinSummary {
        users,
        concurrency: args.concurrency.max(1),
        all_connected_secs: last_ready.saturating_sub(start_ns) as f64 / 1e9,
        all_joins_seen_secs: all_seen,
        complete,
        incomplete,
    });
    run.finish()
}

/// The worker side of `--processes`: reads the [`Setup`] and then commands from stdin, one
/// JSON line each, and answers on stdout.
pub fn worker_main() -> Result<(), String> {
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin
        .lock()
        .read_line(&mut first)
        .map_err(|error| format!("reading the setup: {error}"))?;
    let setup: Setup =
        serde_json::from_str(&first).map_err(|error| format!("reading the setup: {error}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if tx.send(command).is_err() {
                        break;
                    }
                }
                Err(error) => eprintln!("confab-bench worker: bad command {line:?}: {error}"),
            }
        }
    });
    worker::run(setup, rx, |reply| {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &reply);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_sends_match_the_schedule() {
        for (rate, senders, secs) in [
            (100.0, 4, 1.0),
            (10.0, 7, 3.0),
            (1000.0, 1000, 2.5),
            (3.0, 10, 2.0),
        ] {
            let want = (0..senders)
                .flat_map(|s| (0..10_000u64).map(move |j| (s, j)))
                .filter(|&(s, j)| {
                    crate::layout::send_time_ns(0, rate, senders, s, j) < (secs * 1e9) as u64
                })
                .count() as u64;
            let got: u64 = (0..senders)
                .map(|s| planned_sends(rate, senders, s, secs))
                .sum();
            assert!(
                got.abs_diff(want) <= u64::from(senders) / 100 + 1,
                "{rate} {senders} {secs}: {got} vs {want}"
            );
        }
    }
}
