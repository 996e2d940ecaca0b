//! Configuration: every `CONFAB_*` environment variable, each also a command-line flag
//! (`CONFAB_REDIS_URL` ⇔ `--redis-url`), checked once at start-up.
//!
//! clap collects the raw strings and remembers where each came from; [`Config::from_matches`]
//! parses them so that an error names the variable, or the flag when it came as a flag, in
//! one line. The full list with defaults is in `.env.sample` and the README.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use secrecy::{ExposeSecret, SecretString};

use crate::protocol::MAX_CLIENT_MESSAGE_BYTES;

/// The raw command line and environment, before checking.
#[derive(Debug, Parser)]
#[command(
    name = "confab",
    version,
    about = "A horizontally scalable real-time chat service."
)]
struct Cli {
    /// Address to listen on, HTTP and WebSocket on the same port.
    #[arg(long, env = "CONFAB_BIND", default_value = "127.0.0.1:3000")]
    bind: String,
    /// Unset: embedded in-memory broker, one node. Set (redis://…): cluster mode, on one
    /// Redis or a Redis Cluster (one URL of it, or comma-separated seed URLs).
    #[arg(long, env = "CONFAB_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Key that signs the user cookie, at least 32 bytes; required in cluster mode.
    #[arg(long, env = "CONFAB_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A file holding the cookie key instead (a mounted Kubernetes or Docker secret).
    #[arg(long, env = "CONFAB_SECRET_FILE")]
    secret_file: Option<String>,
    /// This node's name in Redis, logs and metrics (default: host name + pid).
    #[arg(long, env = "CONFAB_NODE_ID")]
    node_id: Option<String>,
    /// Extra Origins allowed to open a socket, comma-separated.
    #[arg(long, env = "CONFAB_ALLOWED_ORIGINS")]
    allowed_origins: Option<String>,
    /// chat/join/left frames kept per room and replayed to a joining socket.
    #[arg(long, env = "CONFAB_HISTORY", default_value = "50")]
    history: String,
    /// Chat messages each room retains for scrollback (at least CONFAB_HISTORY).
    #[arg(long, env = "CONFAB_RETAIN_MESSAGES", default_value = "1000")]
    retain_messages: String,
    /// Days a chat message is retained for scrollback; older ones are dropped.
    #[arg(long, env = "CONFAB_RETAIN_DAYS", default_value = "30")]
    retain_days: String,
    /// Longest chat message accepted, in Unicode scalar values after trimming.
    #[arg(long, env = "CONFAB_MAX_MESSAGE_CHARS", default_value = "2000")]
    max_message_chars: String,
    /// How long a user may be gone before `left` is announced; 0 announces at once.
    #[arg(long, env = "CONFAB_LEAVE_GRACE_MS", default_value = "5000")]
    leave_grace_ms: String,
    /// Unset: the page's files built into the binary. Set: a directory served under /static
    /// instead (a restyled page); it must hold app.js.
    #[arg(long, env = "CONFAB_STATIC_DIR")]
    static_dir: Option<String>,
    /// Most open sockets on this node; upgrades beyond it get 503.
    #[arg(long, env = "CONFAB_MAX_CONNECTIONS", default_value = "20000")]
    max_connections: String,
    /// Proxies whose X-Forwarded-* headers are believed: IPs or CIDRs, comma-separated.
    #[arg(long, env = "CONFAB_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// Most open sockets per user on this node; more are closed with 1008.
    #[arg(long, env = "CONFAB_MAX_SOCKETS_PER_USER", default_value = "10")]
    max_sockets_per_user: String,
    /// Most open sockets per client address on this node; more are closed with 1008.
    #[arg(long, env = "CONFAB_MAX_SOCKETS_PER_ADDRESS", default_value = "100")]
    max_sockets_per_address: String,
    /// Sign-ins allowed per client address per minute; more get 429.
    #[arg(long, env = "CONFAB_SIGNINS_PER_MINUTE", default_value = "20")]
    signins_per_minute: String,
    /// HS256 key of the host application's sign-in tokens, at least 32 bytes.
    #[arg(long, env = "CONFAB_JWT_KEY", hide_env_values = true)]
    jwt_key: Option<String>,
    /// PEM public key (RSA: RS256; EC P-256: ES256) of the host application's sign-in tokens.
    #[arg(long, env = "CONFAB_JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<String>,
    /// The `iss` every sign-in token must carry (unset: not checked).
    #[arg(long, env = "CONFAB_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// An `aud` every sign-in token must carry (unset: not checked).
    #[arg(long, env = "CONFAB_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// A file of HTTP API bearer tokens, one per line, each at least 32 bytes; unset: no API.
    #[arg(long, env = "CONFAB_API_TOKENS_FILE")]
    api_tokens_file: Option<String>,
    /// `on`: the name form signs users in; `off`: only tokens do.
    #[arg(long, env = "CONFAB_NAME_SIGNIN", default_value = "on")]
    name_signin: String,
    /// `multi-thread` (default) or `current-thread` tokio runtime.
    #[arg(long, env = "CONFAB_RUNTIME", default_value = "multi-thread")]
    runtime: String,
}

/// Which tokio runtime runs the node. On a machine with few cores shared with other work, one
/// thread can beat several (see BENCHMARKS.md), so it is a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// One worker thread per core.
    MultiThread,
    /// Everything on the main thread.
    CurrentThread,
}

/// Where messages go between sockets and nodes.
#[derive(Clone)]
pub enum BrokerConfig {
    /// One node, everything in this process (`CONFAB_REDIS_URL` unset).
    Memory,
    /// Cluster mode: the Redis at this URL (which may hold a password, hence secret).
    Redis {
        /// `redis://…` or `rediss://…`; for a Redis Cluster, one or several seed URLs,
        /// comma-separated.
        url: SecretString,
    },
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis { .. } => f.write_str("Redis { url: [REDACTED] }"),
        }
    }
}

/// Limits and timings of chat itself.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// `CONFAB_HISTORY`: frames kept per room and replayed on connect.
    pub history: usize,
    /// `CONFAB_RETAIN_MESSAGES`: chat messages each room retains for scrollback.
    pub retain_messages: usize,
    /// `CONFAB_RETAIN_DAYS`, as a duration: how long a chat message is retained.
    pub retain_for: Duration,
    /// `CONFAB_MAX_MESSAGE_CHARS`: longest chat message, in Unicode scalar values.
    pub max_message_chars: usize,
    /// `CONFAB_LEAVE_GRACE_MS`: how long a user may be gone before `left`.
    pub leave_grace: Duration,
    /// `CONFAB_MAX_CONNECTIONS`: most open sockets on this node.
    pub max_connections: usize,
}

/// Limits against abuse from one user or one address.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// `CONFAB_TRUSTED_PROXIES`: peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CONFAB_MAX_SOCKETS_PER_USER`.
    pub max_sockets_per_user: usize,
    /// `CONFAB_MAX_SOCKETS_PER_ADDRESS`.
    pub max_sockets_per_address: usize,
    /// `CONFAB_SIGNINS_PER_MINUTE`.
    pub signins_per_minute: u32,
}

/// The whole configuration of a node. Built once by [`Config::from_env`] (or
/// [`Config::for_tests`]) and then read-only.
#[derive(Debug, Clone)]
pub struct Config {
    /// `CONFAB_BIND`: where HTTP and WebSocket listen.
    pub bind: SocketAddr,
    /// `CONFAB_REDIS_URL`: embedded broker or Redis.
    pub broker: BrokerConfig,
    /// `CONFAB_SECRET`: the cookie-signing key; `None` means a random one per process.
    pub secret: Option<SecretString>,
    /// `CONFAB_NODE_ID`: this node's name.
    pub node_id: String,
    /// `CONFAB_ALLOWED_ORIGINS`: extra origins (`scheme://host[:port]`, lower case).
    pub allowed_origins: Vec<String>,
    /// Chat limits and timings.
    pub chat: ChatConfig,
    /// Limits against abuse, and the trusted proxies.
    pub abuse: AbuseConfig,
    /// `CONFAB_STATIC_DIR`: `None` serves the files built into the binary under `/static`;
    /// `Some` serves this directory instead (checked at start-up to hold `app.js`).
    pub static_dir: Option<PathBuf>,
    /// `CONFAB_RUNTIME`: the tokio runtime flavour.
    pub runtime: RuntimeFlavor,
    /// `CONFAB_JWT_*`: sign-in with the host application's token; `None` when not set up.
    pub tokens: Option<TokenConfig>,
    /// `CONFAB_NAME_SIGNIN`: whether the name form signs users in.
    pub name_signin: bool,
    /// `CONFAB_API_TOKENS_FILE`: the HTTP API's bearer tokens; empty when the API is off.
    pub api_tokens: Vec<SecretString>,
}

/// How the host application's sign-in tokens are checked.
#[derive(Clone)]
pub struct TokenConfig {
    /// The key, which also fixes the one algorithm accepted.
    pub key: TokenKey,
    /// `CONFAB_JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `CONFAB_JWT_AUDIENCE`.
    pub audience: Option<String>,
}

/// A sign-in token key.
#[derive(Clone)]
pub enum TokenKey {
    /// `CONFAB_JWT_KEY`: a shared secret.
    Hs256(Vec<u8>),
    /// `CONFAB_JWT_PUBLIC_KEY_FILE` holding an RSA public key (PEM).
    Rs256(Vec<u8>),
    /// `CONFAB_JWT_PUBLIC_KEY_FILE` holding an EC P-256 public key (PEM).
    Es256(Vec<u8>),
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithm = match self.key {
            TokenKey::Hs256(_) => "HS256",
            TokenKey::Rs256(_) => "RS256",
            TokenKey::Es256(_) => "ES256",
        };
        f.debug_struct("TokenConfig")
            .field("algorithm", &algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A setting that could not be used; the message names it and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    /// The variable or flag at fault, e.g. `CONFAB_HISTORY` or `--history`.
    pub setting: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The shortest cookie-signing key accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Reads the process's command line and environment.
    ///
    /// # Errors
    /// A clap error for unknown flags (printed by clap itself), or a [`ConfigError`] naming
    /// the first bad setting.
    pub fn from_env() -> Result<Self, StartupError> {
        Self::from_args(std::env::args_os())
    }

    /// Reads `args` (program name first) and the environment.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_args<I, T>(args: I) -> Result<Self, StartupError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .map_err(StartupError::Usage)?;
        Self::from_matches(&matches).map_err(StartupError::Config)
    }

    /// Checks the values clap collected, naming each by where it came from.
    ///
    /// # Errors
    /// The first bad setting.
    pub fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        // The derive parser only copies strings and options; it cannot fail on matches that
        // clap itself produced from the same command.
        let cli = Cli::from_arg_matches(matches).expect("matches come from Cli::command");
        let name = |id: &str, env: &str| setting_name(matches, id, env);

        let bind = cli.bind.parse::<SocketAddr>().map_err(|_| ConfigError {
            setting: name("bind", "CONFAB_BIND"),
            problem: format!("{:?} is not an address such as 127.0.0.1:3000", cli.bind),
        })?;

        let broker = match cli.redis_url.filter(|url| !url.is_empty()) {
            None => BrokerConfig::Memory,
            Some(url) => {
                check_redis_url(&url).map_err(|problem| ConfigError {
                    setting: name("redis_url", "CONFAB_REDIS_URL"),
                    problem,
                })?;
                BrokerConfig::Redis { url: url.into() }
            }
        };

        let from_file = match cli.secret_file.filter(|path| !path.is_empty()) {
            None => None,
            Some(_)
                if cli
                    .secret
                    .as_deref()
                    .is_some_and(|secret| !secret.is_empty()) =>
            {
                return Err(ConfigError {
                    setting: name("secret_file", "CONFAB_SECRET_FILE"),
                    problem: "cannot be used together with CONFAB_SECRET; set one of them".into(),
                });
            }
            Some(path) => Some(read_secret_file(&path).map_err(|problem| ConfigError {
                setting: name("secret_file", "CONFAB_SECRET_FILE"),
                problem,
            })?),
        };
        let secret_setting = if from_file.is_some() {
            name("secret_file", "CONFAB_SECRET_FILE")
        } else {
            name("secret", "CONFAB_SECRET")
        };
        let secret = match from_file.or(cli.secret).filter(|secret| !secret.is_empty()) {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                return Err(ConfigError {
                    setting: secret_setting,
                    problem: format!(
                        "must be at least {MIN_SECRET_BYTES} bytes, got {}",
                        secret.len()
                    ),
                });
            }
            Some(secret) => Some(SecretString::from(secret)),
            None if matches!(broker, BrokerConfig::Redis { .. }) => {
                return Err(ConfigError {
                    setting: name("secret", "CONFAB_SECRET"),
                    problem: "is required in cluster mode (CONFAB_REDIS_URL is set): every node must sign cookies with the same key".into(),
                });
            }
            None => None,
        };

        let node_id = match cli.node_id.filter(|id| !id.is_empty()) {
            Some(id) => check_node_id(&id)
                .map(|()| id)
                .map_err(|problem| ConfigError {
                    setting: name("node_id", "CONFAB_NODE_ID"),
                    problem,
                })?,
            None => default_node_id(),
        };

        let allowed_origins = match cli.allowed_origins {
            None => Vec::new(),
            Some(list) => parse_origins(&list).map_err(|problem| ConfigError {
                setting: name("allowed_origins", "CONFAB_ALLOWED_ORIGINS"),
                problem,
            })?,
        };

        let history = parse_number(&cli.history, 0, 10_000).map_err(|problem| ConfigError {
            setting: name("history", "CONFAB_HISTORY"),
            problem,
        })?;
        let retain_messages =
            parse_number(&cli.retain_messages, 0, 100_000).map_err(|problem| ConfigError {
                setting: name("retain_messages", "CONFAB_RETAIN_MESSAGES"),
                problem,
            })?;
        if retain_messages < history {
            return Err(ConfigError {
                setting: name("retain_messages", "CONFAB_RETAIN_MESSAGES"),
                problem: format!(
                    "{retain_messages} is below CONFAB_HISTORY ({history}): a room must retain at least what it replays"
                ),
            });
        }
        let retain_days =
            parse_number(&cli.retain_days, 1, 3650).map_err(|problem| ConfigError {
                setting: name("retain_days", "CONFAB_RETAIN_DAYS"),
                problem,
            })?;
        let max_message_chars =
            parse_number(&cli.max_message_chars, 1, MAX_CLIENT_MESSAGE_BYTES as u64).map_err(
                |problem| ConfigError {
                    setting: name("max_message_chars", "CONFAB_MAX_MESSAGE_CHARS"),
                    problem,
                },
            )?;
        let leave_grace_ms =
            parse_number(&cli.leave_grace_ms, 0, 3_600_000).map_err(|problem| ConfigError {
                setting: name("leave_grace_ms", "CONFAB_LEAVE_GRACE_MS"),
                problem,
            })?;
        let max_connections =
            parse_number(&cli.max_connections, 1, 10_000_000).map_err(|problem| ConfigError {
                setting: name("max_connections", "CONFAB_MAX_CONNECTIONS"),
                problem,
            })?;

        let trusted_proxies = match cli.trusted_proxies {
            None => Vec::new(),
            Some(list) => parse_networks(&list).map_err(|problem| ConfigError {
                setting: name("trusted_proxies", "CONFAB_TRUSTED_PROXIES"),
                problem,
            })?,
        };
        let max_sockets_per_user =
            parse_number(&cli.max_sockets_per_user, 1, 100_000).map_err(|problem| ConfigError {
                setting: name("max_sockets_per_user", "CONFAB_MAX_SOCKETS_PER_USER"),
                problem,
            })?;
        let max_sockets_per_address = parse_number(&cli.max_sockets_per_address, 1, 10_000_000)
            .map_err(|problem| ConfigError {
                setting: name("max_sockets_per_address", "CONFAB_MAX_SOCKETS_PER_ADDRESS"),
                problem,
            })?;
        let signins_per_minute =
            parse_number(&cli.signins_per_minute, 1, 1_000_000).map_err(|problem| ConfigError {
                setting: name("signins_per_minute", "CONFAB_SIGNINS_PER_MINUTE"),
                problem,
            })?;

        let static_dir = match cli.static_dir.filter(|dir| !dir.is_empty()) {
            None => None,
            Some(dir) => Some(check_static_dir(&dir).map_err(|problem| ConfigError {
                setting: name("static_dir", "CONFAB_STATIC_DIR"),
                problem,
            })?),
        };

        let runtime = match cli.runtime.as_str() {
            "multi-thread" => RuntimeFlavor::MultiThread,
            "current-thread" => RuntimeFlavor::CurrentThread,
            other => {
                return Err(ConfigError {
                    setting: name("runtime", "CONFAB_RUNTIME"),
                    problem: format!(
                        "{other:?} is neither \"multi-thread\" nor \"current-thread\""
                    ),
                });
            }
        };

        let tokens = read_token_config(
            cli.jwt_key.filter(|key| !key.is_empty()),
            cli.jwt_public_key_file.filter(|path| !path.is_empty()),
            cli.jwt_issuer.filter(|issuer| !issuer.is_empty()),
            cli.jwt_audience.filter(|audience| !audience.is_empty()),
        )
        .map_err(|(id, env, problem)| ConfigError {
            setting: name(id, env),
            problem,
        })?;
        let name_signin = match cli.name_signin.as_str() {
            "on" => true,
            "off" if tokens.is_some() => false,
            "off" => {
                return Err(ConfigError {
                    setting: name("name_signin", "CONFAB_NAME_SIGNIN"),
                    problem: "\"off\" leaves no way to sign in: set CONFAB_JWT_KEY or CONFAB_JWT_PUBLIC_KEY_FILE too".into(),
                });
            }
            other => {
                return Err(ConfigError {
                    setting: name("name_signin", "CONFAB_NAME_SIGNIN"),
                    problem: format!("{other:?} is neither \"on\" nor \"off\""),
                });
            }
        };

        let api_tokens = match cli.api_tokens_file.filter(|path| !path.is_empty()) {
            None => Vec::new(),
            Some(path) => read_api_tokens(&path).map_err(|problem| ConfigError {
                setting: name("api_tokens_file", "CONFAB_API_TOKENS_FILE"),
                problem,
            })?,
        };

        Ok(Self {
            bind,
            broker,
            secret,
            node_id,
            allowed_origins,
            chat: ChatConfig {
                history: history as usize,
                retain_messages: retain_messages as usize,
                retain_for: Duration::from_secs(retain_days * 24 * 3600),
                max_message_chars: max_message_chars as usize,
                leave_grace: Duration::from_millis(leave_grace_ms),
                max_connections: max_connections as usize,
            },
            abuse: AbuseConfig {
                trusted_proxies,
                max_sockets_per_user: max_sockets_per_user as usize,
                max_sockets_per_address: max_sockets_per_address as usize,
                signins_per_minute: signins_per_minute as u32,
            },
            static_dir,
            runtime,
            tokens,
            name_signin,
            api_tokens,
        })
    }

    /// A configuration for tests that reads no environment: port 0 on loopback, the embedded
    /// broker, a fixed secret, no leave grace, and the static files built into the binary.
    pub fn for_tests() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            broker: BrokerConfig::Memory,
            secret: Some(SecretString::from(
                "test-secret-that-is-at-least-32-bytes-long",
            )),
            node_id: "test-node".into(),
            allowed_origins: Vec::new(),
            chat: ChatConfig {
                history: 50,
                retain_messages: 1000,
                retain_for: Duration::from_secs(30 * 24 * 3600),
                max_message_chars: 2000,
                leave_grace: Duration::ZERO,
                max_connections: 20_000,
            },
            abuse: AbuseConfig {
                trusted_proxies: Vec::new(),
                max_sockets_per_user: 100,
                max_sockets_per_address: 10_000,
                signins_per_minute: 10_000,
            },
            static_dir: None,
            runtime: RuntimeFlavor::MultiThread,
            tokens: None,
            name_signin: true,
            api_tokens: Vec::new(),
        }
    }

    /// The secret's bytes, if one was configured.
    pub fn secret_bytes(&self) -> Option<&[u8]> {
        self.secret
            .as_ref()
            .map(|secret| secret.expose_secret().as_bytes())
    }
}

/// Why the process could not start from its command line and environment.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Unknown flag, `--help`, `--version`: clap prints and exits with its own status.
    #[error(transparent)]
    Usage(clap::Error),
    /// A setting with a bad value.
    #[error(transparent)]
    Config(ConfigError),
}

/// The flag when the value came from the command line, else the variable.
fn setting_name(matches: &ArgMatches, id: &str, env: &str) -> String {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => format!("--{}", id.replace('_', "-")),
        _ => env.to_owned(),
    }
}

fn parse_number(raw: &str, min: u64, max: u64) -> Result<u64, String> {
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range ({min} to {max})")),
        Err(_) => Err(format!("{raw:?} is not a whole number")),
    }
}

/// One URL, or a comma-separated list of Redis Cluster seed URLs.
fn check_redis_url(setting: &str) -> Result<(), String> {
    // The URLs may carry a password, so the problem never repeats them.
    let urls: Vec<&str> = setting.split(',').map(str::trim).collect();
    if urls.iter().any(|url| url.is_empty()) {
        return Err("has an empty entry in its comma-separated list".to_owned());
    }
    for (n, url) in urls.iter().enumerate() {
        redis::Client::open(*url).map_err(|_| match urls.len() {
            1 => "is not a valid redis:// or rediss:// URL".to_owned(),
            _ => format!("entry {} is not a valid redis:// or rediss:// URL", n + 1),
        })?;
    }
    Ok(())
}

fn check_node_id(id: &str) -> Result<(), String> {
    let valid = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
        ))
    }
}

/// Host name and process id: unique among live nodes, readable in logs.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| {
            host.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(48)
                .collect::<String>()
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "confab".into());
    format!("{host}-{}", std::process::id())
}

/// A directory that can stand in for the built-in static files: it exists and holds the
/// page's script. Checked once here, so that a typo fails start-up rather than every page
/// load.
/// The shortest HS256 token key accepted, in bytes.
pub const MIN_JWT_KEY_BYTES: usize = 32;

/// The token settings: `None` when neither key is set. An error names the setting (flag id,
/// variable) and the problem.
fn read_token_config(
    key: Option<String>,
    public_key_file: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
) -> Result<Option<TokenConfig>, (&'static str, &'static str, String)> {
    let key = match (key, public_key_file) {
        (None, None) => {
            if issuer.is_some() || audience.is_some() {
                let (id, env) = if issuer.is_some() {
                    ("jwt_issuer", "CONFAB_JWT_ISSUER")
                } else {
                    ("jwt_audience", "CONFAB_JWT_AUDIENCE")
                };
                return Err((
                    id,
                    env,
                    "is set but no token key is: set CONFAB_JWT_KEY or CONFAB_JWT_PUBLIC_KEY_FILE"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err((
                "jwt_public_key_file",
                "CONFAB_JWT_PUBLIC_KEY_FILE",
                "set either CONFAB_JWT_KEY or CONFAB_JWT_PUBLIC_KEY_FILE, not both".into(),
            ));
        }
        (Some(secret), None) if secret.len() < MIN_JWT_KEY_BYTES => {
            return Err((
                "jwt_key",
                "CONFAB_JWT_KEY",
                format!(
                    "{} bytes; an HS256 key must be at least {MIN_JWT_KEY_BYTES}",
                    secret.len()
                ),
            ));
        }
        (Some(secret), None) => TokenKey::Hs256(secret.into_bytes()),
        (None, Some(path)) => {
            let fail =
                |problem: String| ("jwt_public_key_file", "CONFAB_JWT_PUBLIC_KEY_FILE", problem);
            let pem = std::fs::read(&path)
                .map_err(|error| fail(format!("cannot read {path}: {error}")))?;
            if jsonwebtoken::DecodingKey::from_rsa_pem(&pem).is_ok() {
                TokenKey::Rs256(pem)
            } else if jsonwebtoken::DecodingKey::from_ec_pem(&pem).is_ok() {
                TokenKey::Es256(pem)
            } else {
                return Err(fail(format!(
                    "{path} holds neither an RSA nor an EC public key in PEM"
                )));
            }
        }
    };
    Ok(Some(TokenConfig {
        key,
        issuer,
        audience,
    }))
}

fn check_static_dir(dir: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(dir);
    match std::fs::metadata(&path) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(format!("{dir:?} is not a directory")),
        Err(error) => return Err(format!("cannot read {dir:?}: {error}")),
    }
    if !path.join("app.js").is_file() {
        return Err(format!(
            "{dir:?} has no app.js, which the page needs; unset it to serve the built-in files"
        ));
    }
    Ok(path)
}

/// The cookie key from a file, without the line break editors and `echo` leave at its end.
fn read_secret_file(path: &str) -> Result<String, String> {
    let content =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path:?}: {error}"))?;
    let secret = content.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{path:?} is empty"));
    }
    Ok(secret.to_owned())
}

/// The shortest HTTP API token accepted, in bytes.
pub const MIN_API_TOKEN_BYTES: usize = 32;

/// The API tokens in `path`: one per line; blank lines and lines starting with `#` skipped.
fn read_api_tokens(path: &str) -> Result<Vec<SecretString>, String> {
    let content =
        std::fs::read_to_string(path).map_err(|error| format!("cannot read {path:?}: {error}"))?;
    let mut tokens = Vec::new();
    for (number, line) in content.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if token.len() < MIN_API_TOKEN_BYTES {
            // The token itself is never echoed: only where it is.
            return Err(format!(
                "the token on line {} of {path:?} is {} bytes; each must be at least {MIN_API_TOKEN_BYTES}",
                number + 1,
                token.len()
            ));
        }
        tokens.push(SecretString::from(token.to_owned()));
    }
    if tokens.is_empty() {
        return Err(format!("{path:?} holds no token"));
    }
    Ok(tokens)
}

/// IPs and CIDRs, comma-separated; a bare IP is a network of one.
fn parse_networks(list: &str) -> Result<Vec<ipnet::IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{entry:?} is not an IP address or CIDR such as 10.0.0.0/8"))
        })
        .collect()
}

/// `scheme://host[:port]`, lower-cased, each checked.
fn parse_origins(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            let normalized = origin.trim_end_matches('/').to_ascii_lowercase();
            let uri: axum::http::Uri = normalized.parse().map_err(|_| {
                format!("{origin:?} is not an origin such as https://chat.example.com")
            })?;
            let has_only_origin_parts = uri.scheme().is_some()
                && uri.host().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|pq| pq.as_str() == "/" || pq.as_str().is_empty());
            if has_only_origin_parts {
                Ok(normalized)
            } else {
                Err(format!(
                    "{origin:?} is not an origin such as https://chat.example.com"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("confab").chain(args.iter().copied()))
            .unwrap();
        Config::from_matches(&matches)
    }

    fn failing_setting(args: &[&str]) -> String {
        config(args).unwrap_err().setting
    }

    #[test]
    fn bad_flags_are_named_as_flags() {
        let cases = [
            (&["--bind", "nowhere"][..], "--bind"),
            (&["--history", "abc"], "--history"),
            (&["--history=-1"], "--history"),
            (
                &["--retain-messages", "10", "--history", "50"],
                "--retain-messages",
            ),
            (&["--retain-days", "0"], "--retain-days"),
            (&["--jwt-key", "short"], "--jwt-key"),
            (
                &[
                    "--jwt-key",
                    "a-host-application-key-of-32-bytes-or-more",
                    "--jwt-public-key-file",
                    "/etc/hostname",
                ],
                "--jwt-public-key-file",
            ),
            (
                &["--jwt-public-key-file", "/nonexistent/key.pem"],
                "--jwt-public-key-file",
            ),
            (
                &["--jwt-public-key-file", "/etc/hostname"],
                "--jwt-public-key-file",
            ),
            (&["--jwt-issuer", "https://host.example"], "--jwt-issuer"),
            (&["--name-signin", "off"], "--name-signin"),
            (&["--name-signin", "maybe"], "--name-signin"),
            (&["--max-message-chars", "0"], "--max-message-chars"),
            (&["--leave-grace-ms", "soon"], "--leave-grace-ms"),
            (&["--secret", "short"], "--secret"),
            (&["--redis-url", "http://example.com"], "--redis-url"),
            (
                &["--allowed-origins", "example.com/path"],
                "--allowed-origins",
            ),
            (&["--node-id", "has space"], "--node-id"),
            (&["--runtime", "fast"], "--runtime"),
            (&["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies"),
            (&["--trusted-proxies", "proxy.local"], "--trusted-proxies"),
            (&["--max-sockets-per-user", "0"], "--max-sockets-per-user"),
            (
                &["--max-sockets-per-address", "x"],
                "--max-sockets-per-address",
            ),
            (&["--signins-per-minute", "0"], "--signins-per-minute"),
            (&["--static-dir", "/nonexistent/static"], "--static-dir"),
            (&["--static-dir", "Cargo.toml"], "--static-dir"),
            (&["--static-dir", "templates"], "--static-dir"),
        ];
        for (args, setting) in cases {
            assert_eq!(failing_setting(args), setting, "args {args:?}");
        }
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("confab-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "a-secret-from-a-file-of-at-least-32-bytes\n").unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "short\n").unwrap();
        let config = config(&["--secret-file", good.to_str().unwrap()]).unwrap();
        assert_eq!(
            config.secret_bytes(),
            Some(&b"a-secret-from-a-file-of-at-least-32-bytes"[..])
        );
        assert_eq!(
            failing_setting(&["--secret-file", short.to_str().unwrap()]),
            "--secret-file"
        );
        assert_eq!(
            failing_setting(&["--secret-file", "/nonexistent/secret"]),
            "--secret-file"
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(
            failing_setting(&["--secret-file", empty.to_str().unwrap()]),
            "--secret-file"
        );
        let both = [
            "--secret-file",
            good.to_str().unwrap(),
            "--secret",
            "x".repeat(40).leak(),
        ];
        assert_eq!(failing_setting(&both), "--secret-file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cluster_mode_requires_a_shared_secret() {
        let error = config(&["--redis-url", "redis://127.0.0.1:6379"]).unwrap_err();
        assert_eq!(error.setting, "CONFAB_SECRET");
        assert!(error.to_string().contains("cluster mode"), "{error}");
    }

    #[test]
    fn redis_url_problems_never_repeat_the_password() {
        let error = config(&["--redis-url", "http://user:hunter2hunter2@host"]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error =
            config(&["--redis-url", "redis://a:1,http://user:hunter2hunter2@host"]).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(error.to_string().contains("entry 2"), "{error}");
    }

    #[test]
    fn a_list_of_cluster_seeds_is_a_redis_url() {
        let with_secret = |url: &str| {
            config(&["--redis-url", url, "--secret", &"s".repeat(32)]).map(|config| config.broker)
        };
        assert!(matches!(
            with_secret("redis://127.0.0.1:7001, redis://127.0.0.1:7002"),
            Ok(BrokerConfig::Redis { .. })
        ));
        assert!(with_secret("redis://127.0.0.1:7001,,redis://127.0.0.1:7002").is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = config(&[]).unwrap();
        assert_eq!(config.bind, "127.0.0.1:3000".parse().unwrap());
        assert!(matches!(config.broker, BrokerConfig::Memory));
        assert!(config.secret.is_none());
        assert_eq!(config.chat.history, 50);
        assert_eq!(config.chat.max_message_chars, 2000);
        assert_eq!(config.chat.leave_grace, Duration::from_millis(5000));
        assert_eq!(config.chat.retain_messages, 1000);
        assert_eq!(config.chat.retain_for, Duration::from_secs(30 * 24 * 3600));
        assert!(
            config
                .node_id
                .ends_with(&format!("-{}", std::process::id()))
        );
        assert_eq!(config.runtime, RuntimeFlavor::MultiThread);
        assert!(
            config.abuse.trusted_proxies.is_empty(),
            "nobody is trusted by default"
        );
        assert_eq!(config.abuse.max_sockets_per_user, 10);
        assert_eq!(config.abuse.max_sockets_per_address, 100);
        assert_eq!(config.abuse.signins_per_minute, 20);
        assert!(
            config.static_dir.is_none(),
            "the built-in static files by default"
        );
    }

    #[test]
    fn a_static_dir_holding_app_js_is_taken() {
        let restyled = config(&["--static-dir", "static"]).unwrap();
        assert_eq!(restyled.static_dir, Some(PathBuf::from("static")));
        let empty = config(&["--static-dir", ""]).unwrap();
        assert!(empty.static_dir.is_none(), "empty means unset");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let config = config(&["--trusted-proxies", "127.0.0.1, 10.0.0.0/8,::1"]).unwrap();
        let networks: Vec<String> = config
            .abuse
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(networks, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn origins_are_normalised() {
        let config = config(&[
            "--allowed-origins",
            "https://Chat.Example.com/, http://localhost:8080",
        ])
        .unwrap();
        assert_eq!(
            config.allowed_origins,
            ["https://chat.example.com", "http://localhost:8080"]
        );
    }
}
