//! The application: shared state, the router, and [`Application`], which `main` and the tests
//! both use to bind, serve and drain a node.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::{info, warn};

use crate::api::{self, ApiClients};
use crate::assets;
use crate::auth::{self, CookieCodec, OriginPolicy, TokenVerifier};
use crate::broker::{Broker, MemoryBroker, NodeBroker, RedisBroker};
use crate::client::TrustedProxies;
use crate::config::{BrokerConfig, Config};
use crate::error::not_found;
use crate::hub::Hub;
use crate::limits::{SigninLimiter, SocketLimits};
use crate::metrics::{self, Metrics};
use crate::pages::{self, Templates};
use crate::ws;

/// Largest request body accepted on any route (the sign-in form is the only one with a body).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The longest a draining node spreads its sockets' closes over.
pub const MAX_DRAIN_SPREAD: Duration = Duration::from_secs(5);
/// How much of the spread each open socket adds: 10,000 sockets use the whole window.
const DRAIN_SPREAD_PER_SOCKET: Duration = Duration::from_micros(500);
/// How long a draining node waits for its sockets before it exits anyway.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// How long it then waits for plain HTTP requests still in flight. Both deadlines together
/// stay well inside a Kubernetes `terminationGracePeriodSeconds` of 30.
pub const HTTP_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Everything a handler or socket task needs, shared. Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`]; lives as long as the node.
pub struct Shared {
    /// The node's configuration.
    pub config: Config,
    /// The node's metrics.
    pub metrics: Metrics,
    /// Signs and checks the user cookie.
    pub cookies: CookieCodec,
    /// Which `Origin`s may open sockets.
    pub origins: OriginPolicy,
    /// The HTTP API's tokens and their rate limits.
    pub api_clients: ApiClients,
    /// Checks the host application's sign-in tokens; `None` when none are configured.
    pub tokens: Option<TokenVerifier>,
    /// Whose forwarding headers are believed.
    pub proxies: TrustedProxies,
    /// Sockets per user and per address.
    pub socket_limits: Arc<SocketLimits>,
    /// Sign-ins per address per minute.
    pub signins: SigninLimiter,
    /// The page templates.
    pub templates: Templates,
    /// This node's sockets by room.
    pub hub: Arc<Hub>,
    /// Where frames get their ids and go to every node.
    pub broker: NodeBroker,
    /// Cancelled when the node starts draining; every socket's task watches it.
    pub shutdown: CancellationToken,
    /// Tracks every socket task, so a drain can wait for them.
    pub sockets: TaskTracker,
    draining: AtomicBool,
    open_sockets: Arc<AtomicUsize>,
    next_socket_id: AtomicU64,
    drain_spread_us: AtomicU64,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Builds the state of a node: metrics, cookie key, hub and broker. In cluster mode this
    /// starts the broker's connection to Redis (in the background: a node starts, unready,
    /// even while Redis is down).
    ///
    /// # Errors
    /// When the broker cannot be set up.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new(&config.node_id);
        let hub = Arc::new(Hub::new(metrics.clone()));
        let broker = match &config.broker {
            BrokerConfig::Memory => {
                // The embedded broker lives in this process: it is up whenever the node is.
                metrics.broker_up.set(1);
                NodeBroker::Memory(MemoryBroker::new(hub.clone(), &config.chat))
            }
            BrokerConfig::Redis { url } => NodeBroker::Redis(
                RedisBroker::start(url, hub.clone(), &config, metrics.clone())
                    .await
                    .context("cannot set up the Redis broker (CONFAB_REDIS_URL)")?,
            ),
        };
        if config.secret.is_none() {
            warn!(
                "CONFAB_SECRET is unset: cookies are signed with a random key, so sign-ins end when this process does"
            );
        }
        let tokens = config
            .tokens
            .as_ref()
            .map(TokenVerifier::new)
            .transpose()
            .context(
                "cannot use the sign-in token key (CONFAB_JWT_KEY, CONFAB_JWT_PUBLIC_KEY_FILE)",
            )?;
        Ok(Self(Arc::new(Shared {
            cookies: CookieCodec::new(config.secret_bytes()),
            api_clients: ApiClients::new(config.api_tokens.clone()),
            tokens,
            origins: OriginPolicy::new(config.allowed_origins.clone()),
            proxies: TrustedProxies::new(config.abuse.trusted_proxies.clone()),
            socket_limits: Arc::new(SocketLimits::new(
                config.abuse.max_sockets_per_user,
                config.abuse.max_sockets_per_address,
            )),
            signins: SigninLimiter::new(config.abuse.signins_per_minute),
            templates: Templates::new(),
            metrics,
            hub,
            broker,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            draining: AtomicBool::new(false),
            open_sockets: Arc::new(AtomicUsize::new(0)),
            next_socket_id: AtomicU64::new(1),
            drain_spread_us: AtomicU64::new(0),
            config,
        })))
    }

    /// Whether the node is draining: `/readyz` answers 503 and new sockets are refused.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the graceful drain: readiness turns 503, no new sockets, and every open socket
    /// closes with 1012 at a random moment within a window that grows with the number of
    /// sockets (up to [`MAX_DRAIN_SPREAD`]), so clients do not all reconnect at once.
    pub fn begin_drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let open = self.open_sockets.load(Ordering::Acquire) as u32;
        let spread = DRAIN_SPREAD_PER_SOCKET
            .saturating_mul(open)
            .min(MAX_DRAIN_SPREAD);
        self.drain_spread_us
            .store(spread.as_micros() as u64, Ordering::Release);
        info!(
            sockets = open,
            spread_ms = spread.as_millis() as u64,
            "draining"
        );
        self.shutdown.cancel();
        // Writers wait on their queues only; they see the drain once woken.
        self.hub.wake_all();
    }

    /// The window over which a draining node spreads its sockets' closes.
    pub fn drain_spread(&self) -> Duration {
        Duration::from_micros(self.drain_spread_us.load(Ordering::Acquire))
    }

    /// Reserves room for one more socket, or `None` at `CONFAB_MAX_CONNECTIONS`.
    pub fn connection_slot(&self) -> Option<ConnectionSlot> {
        let open = self.open_sockets.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.chat.max_connections {
            self.open_sockets.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        Some(ConnectionSlot {
            id: self.next_socket_id.fetch_add(1, Ordering::Relaxed),
            open_sockets: self.open_sockets.clone(),
            gauge: self.metrics.connections.clone(),
        })
    }
}

/// One socket's place under `CONFAB_MAX_CONNECTIONS`, counted in `confab_connections`; given
/// back when dropped, however the socket ends.
///
/// Kept small (it lives in every socket's task): the gauge alone, not the whole [`Metrics`].
pub struct ConnectionSlot {
    id: u64,
    open_sockets: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl ConnectionSlot {
    /// A number naming the socket in logs, unique within the process.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open_sockets.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Every route of a node, assembled in one place.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(pages::show_lobby))
        .route("/rooms/{room}", get(pages::show_room))
        .route("/signin", get(auth::show_signin).post(auth::post_signin))
        .route("/signin/token", get(auth::get_token_signin))
        .route("/signout", get(auth::get_signout).post(auth::post_signout))
        .route("/ws/chat", get(ws::upgrade_socket))
        .route("/healthz", get(pages::show_health))
        .route("/readyz", get(pages::show_readiness))
        .route("/metrics", get(metrics::show_metrics))
        .nest("/api", api::router(state.clone()));
    let routes = match &state.config.static_dir {
        // The files built into the binary: found whatever the working directory.
        None => routes.route("/static/{*path}", get(assets::get_asset)),
        // A restyled page (`CONFAB_STATIC_DIR`), read from disk on each request.
        Some(dir) => routes.nest_service(
            "/static",
            tower::ServiceBuilder::new()
                .map_response(assets::cache_when_found)
                .service(ServeDir::new(dir)),
        ),
    };
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(security_header(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::REFERRER_POLICY, "same-origin"))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .with_state(state)
}

/// The page's Content-Security-Policy: scripts, styles, images, fonts and connections (the
/// WebSocket included: `'self'` covers `ws:`/`wss:` to the same host) only from confab itself;
/// no inline script, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Connections the kernel queues for `accept` while the node is busy. The default (128) is
/// overrun when thousands of clients reconnect at once (after a drain elsewhere) and the
/// overflow costs each of them a one-second SYN retry; the kernel caps it at `somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, so a restarted node can take its
/// port back at once.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A header set on every response that does not set its own.
fn security_header(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

/// A bound, not yet serving node. `main` and the tests start nodes the same way:
/// [`Application::bind`], then [`Application::run_until`].
pub struct Application {
    listener: TcpListener,
    state: AppState,
    local_addr: SocketAddr,
}

impl Application {
    /// Builds the node's state and binds its listener. Logs `listening on http://ADDR` with
    /// the real address, so `CONFAB_BIND=127.0.0.1:0` works.
    ///
    /// # Errors
    /// When the address cannot be bound or the broker cannot be set up; the message names the
    /// setting at fault.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let bind = config.bind;
        crate::file_limit::raise_open_file_limit(config.chat.max_connections);
        let state = AppState::new(config).await?;
        let listener =
            listen(bind).with_context(|| format!("cannot listen on {bind} (CONFAB_BIND)"))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        info!(node.id = %state.config.node_id, "listening on http://{local_addr}");
        Ok(Self {
            listener,
            state,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: readiness turns 503 and new sockets are
    /// refused while every open socket gets its queued frames and close 1012 (spread out);
    /// once they are gone (or [`DRAIN_DEADLINE`] passes) the listener closes and the broker
    /// shuts down. Plain HTTP keeps being served during the drain, so load balancers see the
    /// 503 from `/readyz` rather than refused connections.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let stop_serving = CancellationToken::new();
        let mut server = tokio::spawn(crate::server::serve(
            self.listener,
            router(state.clone()),
            stop_serving.clone(),
        ));
        tokio::select! {
            () = shutdown => {}
            result = &mut server => {
                // The server only stops by itself if it fails.
                result.context("the server task failed")?.context("serving failed")?;
                return Ok(());
            }
        }
        state.begin_drain();
        state.sockets.close();
        if tokio::time::timeout(DRAIN_DEADLINE, state.sockets.wait())
            .await
            .is_err()
        {
            warn!(
                sockets = state.sockets.len(),
                "drain deadline passed with sockets still open"
            );
        }
        stop_serving.cancel();
        match tokio::time::timeout(HTTP_STOP_DEADLINE, server).await {
            Ok(result) => result
                .context("the server task failed")?
                .context("serving failed")?,
            Err(_) => warn!("HTTP connections still open after the drain deadline"),
        }
        state.broker.shutdown().await;
        info!("stopped");
        Ok(())
    }
}
