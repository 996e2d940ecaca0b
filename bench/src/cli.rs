//! The command line: global options shared by every scenario, then one subcommand each.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::msg::{Protocol, RuntimeKind};

/// confab's load generator: signs users in, opens their sockets, and measures deliveries,
/// latency, loss, order and CPU per delivered frame.
#[derive(Debug, Parser)]
#[command(name = "confab-bench", version, about, long_about = None)]
pub struct Cli {
    /// Options every scenario shares.
    #[command(flatten)]
    pub common: Common,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options every scenario shares (they may come before or after the scenario's name).
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// A server node, `http://HOST:PORT` (repeat, or separate with commas, for several;
    /// clients alternate between them).
    #[arg(
        long = "url",
        global = true,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3000"
    )]
    pub urls: Vec<String>,
    /// Which node each client connects to: `alternate` (every room spans every node),
    /// `room` (a room's clients on one node, by a hash of its name, as nginx's
    /// `hash $arg_room consistent`), `partition` (by confab's partition of the room).
    #[arg(long, global = true, value_enum, default_value = "alternate")]
    pub placement: crate::layout::Placement,
    /// The wire protocol: `confab` (confab and the koa peer) or `socketio` (the Socket.IO peer).
    #[arg(long, global = true, value_enum, default_value = "confab")]
    pub protocol: Protocol,
    /// The `Origin` header on sign-in and upgrade: `auto` (`http://` + the URL's host:port, as
    /// a browser on that page sends), `none`, or a literal origin.
    #[arg(long, global = true, default_value = "auto")]
    pub origin: String,
    /// Local addresses to connect from, round-robin: `127.0.0.2`, a list, or a range
    /// `127.0.0.2-127.0.0.9`. Each address has its own ~28,000 ephemeral ports.
    #[arg(long = "source", global = true, value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Generator processes (the binary re-executes itself); clients are shared evenly.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: u32,
    /// The generator's tokio runtime in each process.
    #[arg(long, global = true, value_enum, default_value = "current-thread")]
    pub runtime: RuntimeKind,
    /// A server process to watch (CPU time from /proc/PID/stat, RSS from /proc/PID/status);
    /// repeat for several nodes (and Redis, if its CPU should count).
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,
    /// A Redis server (`HOST:PORT`; repeat or comma-separate for each primary of a cluster) whose
    /// script calls and CPU each step reports.
    #[arg(long = "redis", global = true, value_delimiter = ',')]
    pub redis: Vec<String>,
    /// Also write every figure as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Chat message size in bytes (the tag, padded with `x`).
    #[arg(long, global = true, default_value_t = 64)]
    pub size: usize,
    /// Sign-ins in flight at once, per process (keep-alive connections).
    #[arg(long, global = true, default_value_t = 16)]
    pub signin_concurrency: u32,
    /// Sockets opening at once, per process (upgrade until `list`). confab listens with a
    /// backlog of 128: far more connects in flight overflow its accept queue, and the dropped
    /// SYNs come back a second later.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: u32,
    /// Longest a sign-in, or a socket's connect until its `list`, may take (seconds).
    #[arg(long, global = true, default_value_t = 30.0)]
    pub connect_timeout: f64,
    /// Pause between connecting and sending (seconds); then the generator also waits until no
    /// frame has come for 0.5 s (the join storm of a big room), at most 60 s more.
    #[arg(long, global = true, default_value_t = 1.0)]
    pub settle: f64,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// C clients in one room, S of them sending at R msg/s each for T seconds: loss,
    /// deliveries/s, latency, order, CPU per delivery.
    Fanout(Fanout),
    /// Raises the send rate step by step until loss or p99 passes its limit; reports the
    /// highest sustained deliveries/s.
    Ramp(Ramp),
    /// Opens C idle sockets and holds them: how many stay up, the server's RSS per socket.
    Connections(Connections),
    /// Many small rooms (the common chat shape), everyone sending a little.
    Rooms(Rooms),
    /// N users join one room, one after another (or a few at a time): the time until every
    /// socket has seen every user.
    Join(Join),
    /// Internal: a generator process driven over stdin/stdout by `--processes`.
    #[command(hide = true)]
    Worker,
}

/// How fast to send.
#[derive(Debug, Clone, Args)]
pub struct Sending {
    /// Senders among the clients, spread evenly (default: every client). confab allows a
    /// socket a burst of 20 then 10 messages a second: keep the per-sender rate at 9 or less.
    #[arg(long)]
    pub senders: Option<u32>,
    /// Messages a second per sender.
    #[arg(long, default_value_t = 1.0, conflicts_with = "total_rate")]
    pub rate: f64,
    /// Messages a second from all senders together (instead of --rate).
    #[arg(long)]
    pub total_rate: Option<f64>,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after the last send for deliveries still in flight.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
}

/// `fanout`.
#[derive(Debug, Clone, Args)]
pub struct Fanout {
    /// Clients, all in one room.
    #[arg(long, default_value_t = 100)]
    pub clients: u32,
    /// Send rate and duration.
    #[command(flatten)]
    pub sending: Sending,
}

/// `ramp`.
#[derive(Debug, Clone, Args)]
pub struct Ramp {
    /// Clients, all in one room unless `--room-size` splits them.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,
    /// Clients per room (default: all in one room). `--room-size 5` with 10,000 clients ramps
    /// the `rooms` shape: 2,000 small rooms.
    #[arg(long)]
    pub room_size: Option<u32>,
    /// Senders among the clients (default: every client).
    #[arg(long)]
    pub senders: Option<u32>,
    /// Total messages a second of the first step.
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Each step's rate is the last one's times this.
    #[arg(long, default_value_t = 1.2)]
    pub factor: f64,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 6.0)]
    pub step_secs: f64,
    /// Seconds to wait after each step for deliveries in flight.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// A step fails when more than this fraction of deliveries is lost.
    #[arg(long, default_value_t = 0.001)]
    pub max_loss: f64,
    /// A step fails when its p99 latency exceeds this (milliseconds).
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    /// Stop before a step whose per-sender rate would exceed this (confab's limit is 10/s;
    /// 0: no cap, for the peers, which have no rate limit).
    #[arg(long, default_value_t = 9.0)]
    pub max_rate_per_sender: f64,
    /// Stop after this many steps.
    #[arg(long, default_value_t = 60)]
    pub max_steps: u32,
    /// The share of clients (0–1, spread evenly) that type: see `rooms --typing-fraction`.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub typing_fraction: f64,
}

/// `connections`.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,
    /// Sockets per room (each join is announced to the room: one big room costs C² frames).
    #[arg(long, default_value_t = 10)]
    pub room_size: u32,
    /// Seconds to hold the sockets open once all are up.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
}

/// `rooms`.
#[derive(Debug, Clone, Args)]
pub struct Rooms {
    /// Rooms.
    #[arg(long, default_value_t = 2000)]
    pub rooms: u32,
    /// Users per room.
    #[arg(long, default_value_t = 5)]
    pub room_size: u32,
    /// Send rate and duration (per sender: every user by default).
    #[command(flatten)]
    pub sending: Sending,
    /// The share of clients (0–1, spread evenly: 0.2 is the first of every room of 5) that
    /// type: they open their socket with `v=2`, send their chat as `{"type":"chat",…}` and a
    /// `{"type":"typing"}` every second while a step sends. Receivers count the `typing`
    /// frames apart from deliveries. confab only (`--protocol confab`).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub typing_fraction: f64,
}

/// `join`.
#[derive(Debug, Clone, Args)]
pub struct Join {
    /// Users joining the room.
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Users joining at once, per process (1: strictly one after another).
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// A number from 0 to 1.
fn fraction(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err(format!("{value} is not between 0 and 1")),
        Err(error) => Err(format!("{value}: {error}")),
    }
}

/// Expands `--source` values: addresses, and ranges `A-B` of IPv4 addresses.
pub fn parse_sources(values: &[String]) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        if let Some((from, to)) = value.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| format!("--source {value}: {s:?} is not an IPv4 address"))
            };
            let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
            if to < from || to - from > 1024 {
                return Err(format!("--source {value}: an empty or too long range"));
            }
            out.extend((from..=to).map(|n| IpAddr::V4(n.into())));
        } else {
            out.push(
                value
                    .parse()
                    .map_err(|_| format!("--source {value}: not an IP address"))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_expand_ranges() {
        let got = parse_sources(&["127.0.0.2-127.0.0.4".to_owned(), "::1".to_owned()]).unwrap();
        let want: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(parse_sources(&["127.0.0.9-127.0.0.2".to_owned()]).is_err());
        assert!(parse_sources(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn global_options_go_before_or_after_the_scenario() {
        let cli = Cli::try_parse_from([
            "confab-bench",
            "--url",
            "http://127.0.0.1:3001,http://127.0.0.1:3002",
            "fanout",
            "--clients",
            "20",
            "--rate",
            "2",
            "--server-pid",
            "7",
            "--server-pid",
            "8",
        ])
        .unwrap();
        assert_eq!(cli.common.urls.len(), 2);
        assert_eq!(cli.common.server_pids, [7, 8]);
        let Scenario::Fanout(fanout) = cli.scenario else {
            panic!("fanout")
        };
        assert_eq!((fanout.clients, fanout.sending.rate), (20, 2.0));
    }

    #[test]
    fn typing_fraction_is_a_share_of_the_clients() {
        let cli =
            Cli::try_parse_from(["confab-bench", "rooms", "--typing-fraction", "0.2"]).unwrap();
        let Scenario::Rooms(rooms) = cli.scenario else {
            panic!("rooms")
        };
        assert!((rooms.typing_fraction - 0.2).abs() < 1e-12);
        let cli = Cli::try_parse_from(["confab-bench", "rooms"]).unwrap();
        let Scenario::Rooms(rooms) = cli.scenario else {
            panic!("rooms")
        };
        assert!(rooms.typing_fraction == 0.0, "off by default");
        let cli = Cli::try_parse_from([
            "confab-bench",
            "ramp",
            "--room-size",
            "5",
            "--typing-fraction",
            "1",
        ])
        .unwrap();
        let Scenario::Ramp(ramp) = cli.scenario else {
            panic!("ramp")
        };
        assert!(ramp.typing_fraction == 1.0);
        for bad in ["1.5", "-0.1", "lots"] {
            assert!(
                Cli::try_parse_from(["confab-bench", "rooms", "--typing-fraction", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(
            Cli::try_parse_from(["confab-bench", "fanout", "--typing-fraction", "0.2"]).is_err(),
            "fanout has no typists"
        );
    }
}
