//! Prometheus metrics: one [`Metrics`] struct with its own registry, held by `AppState` (so
//! each test app counts for itself), and the `GET /metrics` handler.
//!
//! Names carry the `confab_` prefix, counters end in `_total`, histograms in `_seconds`;
//! labels are low-cardinality (close codes, refusal reasons), never rooms or users.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::app::AppState;
use crate::protocol::close;

/// Every metric a node exports. Created once per node by [`Metrics::new`]; cheap to update
/// from any task (the metrics are atomics).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections on this node.
    pub connections: IntGauge,
    /// Chat messages accepted from clients (published).
    pub messages_received: IntCounter,
    /// Frames written to sockets, of every type.
    pub messages_delivered: IntCounter,
    /// Sockets closed with 1013 because their outbound queue overflowed or a write stalled.
    pub slow_consumers: IntCounter,
    /// Socket closes by WebSocket close code.
    disconnects: IntCounterVec,
    /// Requests, sockets and messages refused, by reason.
    rejected: IntCounterVec,
    /// `confab_token_signins_total{result}`: sign-ins with the host application's token.
    pub token_signins: IntCounterVec,
    /// `confab_api_requests_total{route,status}`: requests to `/api` routes.
    pub api_requests: IntCounterVec,
    /// Time to publish one chat message through the broker (see its help text).
    pub broker_publish_seconds: Histogram,
    /// 1 when the broker is reachable.
    pub broker_up: IntGauge,
    /// From a frame's `ts` (made on the publishing node) to its arrival on this node's
    /// subscription; cluster mode only. Includes clock skew between nodes.
    pub broker_delivery_lag_seconds: Histogram,
    /// Times the broker connection was re-established after a loss.
    pub broker_reconnects: IntCounter,
    /// Frames a node fetched from the Redis log to fill a gap in its subscription.
    pub broker_frames_recovered: IntCounter,
    /// Frames that were lost for good because the log no longer held them.
    pub broker_frames_lost: IntCounter,
    /// Frames this node received from Redis pub/sub: only those of the partitions its
    /// sockets are in.
    pub broker_frames_received: IntCounter,
    /// Partitions whose channel this node is subscribed to.
    pub broker_partitions_subscribed: IntGauge,
    /// Calls of the Redis publish script: chats that waited for their partition's call
    /// before go several to a call, so chats per call tells how much the batching saves.
    pub broker_publish_calls: IntCounter,
    /// Chats waiting on this node for their partition's next publish call.
    pub broker_publish_queued: IntGauge,
    /// Users announced as `left` because the node that held them died.
    pub presence_reaped: IntCounter,
    /// Tasks alive in the tokio runtime, read at each scrape: a leak shows as growth.
    runtime_tasks: IntGauge,
}

/// Why something was refused: the `reason` label of `confab_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A chat message over `CONFAB_MAX_MESSAGE_CHARS`.
    TooLong,
    /// A chat message that found the socket's token bucket empty.
    RateLimited,
    /// A chat message the broker could not publish.
    Unavailable,
    /// A socket without a valid user cookie.
    InvalidUser,
    /// A socket with an invalid room.
    InvalidRoom,
    /// A socket with an unparsable `since`.
    InvalidSince,
    /// An upgrade from a foreign `Origin`.
    BadOrigin,
    /// A refused sign-in name.
    InvalidName,
    /// An upgrade refused because the node is at `CONFAB_MAX_CONNECTIONS`.
    TooManyConnections,
    /// An upgrade refused because the node is draining.
    Draining,
    /// A binary frame.
    BinaryFrame,
    /// A message over 64 KiB.
    MessageTooBig,
    /// A socket beyond `CONFAB_MAX_SOCKETS_PER_USER`.
    TooManySocketsForUser,
    /// A socket beyond `CONFAB_MAX_SOCKETS_PER_ADDRESS`.
    TooManySocketsFromAddress,
    /// A sign-in beyond `CONFAB_SIGNINS_PER_MINUTE`.
    SigninRateLimited,
    /// A cross-site sign-in or sign-out (CSRF).
    CrossSite,
    /// A `v=2` text frame that is no command.
    BadCommand,
    /// An edit or delete of someone else's message.
    Forbidden,
    /// An edit or delete of a message the room does not retain.
    NotFound,
    /// A socket of a user banned from the room.
    Banned,
}

impl Rejection {
    /// Every reason, so that each is exported (as 0) from the start.
    pub const ALL: [Self; 20] = [
        Self::TooLong,
        Self::RateLimited,
        Self::Unavailable,
        Self::InvalidUser,
        Self::InvalidRoom,
        Self::InvalidSince,
        Self::BadOrigin,
        Self::InvalidName,
        Self::TooManyConnections,
        Self::Draining,
        Self::BinaryFrame,
        Self::MessageTooBig,
        Self::TooManySocketsForUser,
        Self::TooManySocketsFromAddress,
        Self::SigninRateLimited,
        Self::CrossSite,
        Self::BadCommand,
        Self::Forbidden,
        Self::NotFound,
        Self::Banned,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::InvalidUser => "invalid_user",
            Self::InvalidRoom => "invalid_room",
            Self::InvalidSince => "invalid_since",
            Self::BadOrigin => "bad_origin",
            Self::InvalidName => "invalid_name",
            Self::TooManyConnections => "too_many_connections",
            Self::Draining => "draining",
            Self::BinaryFrame => "binary_frame",
            Self::MessageTooBig => "message_too_big",
            Self::TooManySocketsForUser => "too_many_sockets_for_user",
            Self::TooManySocketsFromAddress => "too_many_sockets_from_address",
            Self::SigninRateLimited => "signin_rate_limited",
            Self::CrossSite => "cross_site",
            Self::BadCommand => "bad_command",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Banned => "banned",
        }
    }
}

impl Metrics {
    /// Creates and registers every metric, with `node` as the `confab_node_info` label.
    ///
    /// # Panics
    /// Never in practice: the names below are valid and registered once into a fresh registry.
    pub fn new(node: &str) -> Self {
        let registry = Registry::new();
        let connections = IntGauge::new(
            "confab_connections",
            "Open WebSocket connections on this node.",
        )
        .unwrap();
        let messages_received = IntCounter::new(
            "confab_messages_received_total",
            "Chat messages accepted from clients and published.",
        )
        .unwrap();
        let messages_delivered = IntCounter::new(
            "confab_messages_delivered_total",
            "Frames written to sockets, of every type.",
        )
        .unwrap();
        let slow_consumers = IntCounter::new(
            "confab_slow_consumers_total",
            "Sockets closed with 1013 because their outbound queue overflowed or a write to them stalled.",
        )
        .unwrap();
        let disconnects = IntCounterVec::new(
            Opts::new(
                "confab_disconnects_total",
                "Socket closes by WebSocket close code.",
            ),
            &["code"],
        )
        .unwrap();
        let rejected = IntCounterVec::new(
            Opts::new(
                "confab_rejected_total",
                "Requests, sockets and messages refused, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        let token_signins = IntCounterVec::new(
            Opts::new(
                "confab_token_signins_total",
                "Sign-ins with the host application's token, by result (ok, or why it was refused).",
            ),
            &["result"],
        )
        .unwrap();
        let api_requests = IntCounterVec::new(
            Opts::new(
                "confab_api_requests_total",
                "Requests to /api routes, by route (method and path pattern) and HTTP status.",
            ),
            &["route", "status"],
        )
        .unwrap();
        let broker_publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "confab_broker_publish_seconds",
                "Time to publish one chat message through the broker (embedded: id, history and local fan-out; Redis: the publish script's round trip).",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .unwrap();
        let broker_up = IntGauge::new(
            "confab_broker_up",
            "1 when the broker is reachable, else 0.",
        )
        .unwrap();
        let broker_delivery_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "confab_broker_delivery_lag_seconds",
                "From a frame's creation on the publishing node to its arrival on this node's Redis subscription (cluster mode).",
            )
            .buckets(vec![0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .unwrap();
        let broker_reconnects = IntCounter::new(
            "confab_broker_reconnects_total",
            "Times the broker connection was re-established after a loss.",
        )
        .unwrap();
        let broker_frames_recovered = IntCounter::new(
            "confab_broker_frames_recovered_total",
            "Frames fetched from the Redis log to fill a gap in this node's subscription.",
        )
        .unwrap();
        let broker_frames_lost = IntCounter::new(
            "confab_broker_frames_lost_total",
            "Frames missing from this node's subscription that the Redis log no longer held.",
        )
        .unwrap();
        let broker_frames_received = IntCounter::new(
            "confab_broker_frames_received_total",
            "Frames this node received from Redis pub/sub, for the partitions its sockets are in.",
        )
        .unwrap();
        let broker_partitions_subscribed = IntGauge::new(
            "confab_broker_partitions_subscribed",
            "Partitions of rooms whose Redis channel this node is subscribed to.",
        )
        .unwrap();
        let broker_publish_calls = IntCounter::new(
            "confab_broker_publish_calls_total",
            "Calls of the Redis publish script; one carries a chat, or several that waited for their partition's previous call.",
        )
        .unwrap();
        let broker_publish_queued = IntGauge::new(
            "confab_broker_publish_queued",
            "Chats waiting on this node for their partition's next Redis publish call.",
        )
        .unwrap();
        let presence_reaped = IntCounter::new(
            "confab_presence_reaped_total",
            "Users removed from rooms because the node holding their sockets died.",
        )
        .unwrap();
        let runtime_tasks = IntGauge::new(
            "confab_runtime_tasks",
            "Tasks alive in this node's tokio runtime (two per open socket, plus a few).",
        )
        .unwrap();
        let node_info = IntGaugeVec::new(
            Opts::new(
                "confab_node_info",
                "Always 1; the label names this node (CONFAB_NODE_ID).",
            ),
            &["node"],
        )
        .unwrap();
        node_info.with_label_values(&[node]).set(1);

        let collectors: [Box<dyn prometheus::core::Collector>; 21] = [
            Box::new(connections.clone()),
            Box::new(messages_received.clone()),
            Box::new(messages_delivered.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(disconnects.clone()),
            Box::new(rejected.clone()),
            Box::new(token_signins.clone()),
            Box::new(api_requests.clone()),
            Box::new(broker_publish_seconds.clone()),
            Box::new(broker_up.clone()),
            Box::new(broker_delivery_lag_seconds.clone()),
            Box::new(broker_reconnects.clone()),
            Box::new(broker_frames_recovered.clone()),
            Box::new(broker_frames_lost.clone()),
            Box::new(broker_frames_received.clone()),
            Box::new(broker_partitions_subscribed.clone()),
            Box::new(broker_publish_calls.clone()),
            Box::new(broker_publish_queued.clone()),
            Box::new(presence_reaped.clone()),
            Box::new(node_info),
            Box::new(runtime_tasks.clone()),
        ];
        for collector in collectors {
            registry.register(collector).unwrap();
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap();

        for reason in Rejection::ALL {
            rejected.with_label_values(&[reason.as_str()]);
        }
        for (route, status) in crate::api::ROUTES {
            api_requests.with_label_values(&[route, status]);
        }
        for result in crate::auth::jwt::TokenRefused::LABELS {
            token_signins.with_label_values(&[result]);
        }
        for code in close::ALL {
            disconnects.with_label_values(&[close::metric_label(code)]);
        }

        Self {
            registry,
            connections,
            messages_received,
            messages_delivered,
            slow_consumers,
            disconnects,
            rejected,
            token_signins,
            api_requests,
            broker_publish_seconds,
            broker_up,
            broker_delivery_lag_seconds,
            broker_reconnects,
            broker_frames_recovered,
            broker_frames_lost,
            broker_frames_received,
            broker_partitions_subscribed,
            broker_publish_calls,
            broker_publish_queued,
            presence_reaped,
            runtime_tasks,
        }
    }

    /// Counts one refusal.
    pub fn reject(&self, reason: Rejection) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one socket close with `code`.
    pub fn disconnect(&self, code: u16) {
        self.disconnects
            .with_label_values(&[close::metric_label(code)])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for metrics that registered successfully.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("metrics encode");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn show_metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
        .into_response()
}
