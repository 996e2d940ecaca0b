//! confab: a horizontally scalable real-time chat service.
//!
//! Browsers sign in with a name, get a signed cookie, and open a WebSocket on the same port as
//! the page; JSON frames `{id, type, room, user, data, ts}` keep a message list and a user list
//! live. Any number of stateless nodes share one Redis (pub/sub for delivery, `INCR` inside a
//! script for one global order, sets for presence); with no Redis configured, one node runs on
//! an embedded broker. The contract is `docs/protocol.md`; the design is `docs/ARCHITECTURE.md`.
//!
//! # Layout
//! - [`config`]: `CONFAB_*` settings and their checks.
//! - [`telemetry`]: logging setup.
//! - [`api`]: `/api`, JSON over HTTP: scrollback; posting and moderation for backends.
//! - [`app`]: shared state, the router, and `Application` (bind, serve, drain).
//! - [`server`]: the HTTP/1 accept loop, with header timeouts and size caps.
//! - [`file_limit`]: the open-file limit, raised at start-up.
//! - [`error`]: how failed HTTP handlers answer.
//! - [`client`]: the client's address, host and scheme, through trusted proxies.
//! - [`auth`]: sign-in/out, the signed user cookie, the `Origin` check.
//! - [`user`]: user names, the user object, its shared JSON.
//! - [`pages`]: HTML pages from templates, health and readiness.
//! - [`assets`]: the page's static files, built in or from `CONFAB_STATIC_DIR`.
//! - [`room`]: room names.
//! - [`protocol`]: server frames, what clients send, close codes.
//! - [`ws`]: the WebSocket upgrade and the per-socket task.
//! - [`ratelimit`]: the token bucket (per socket, per address).
//! - [`limits`]: sockets per user and address, sign-ins per address.
//! - [`hub`]: this node's sockets by room, and fan-out to them.
//! - [`broker`]: ids, history, presence and delivery between nodes; memory and Redis.
//! - [`presence`]: the per-user presence rules, as the embedded broker keeps them.
//! - [`history`]: a room's recent frames, as the embedded broker keeps them.
//! - [`retained`]: a room's retained chat messages for scrollback, as the embedded broker
//!   keeps them.
//! - [`moderation`]: who may edit or delete a chat message, and how it is done.
//! - [`metrics`]: Prometheus metrics and `/metrics`.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod error;
pub mod file_limit;
pub mod history;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod moderation;
pub mod pages;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod retained;
pub mod room;
pub mod server;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod upgrade;
pub mod user;
pub mod write_buffer;
pub mod ws;

pub use app::{AppState, Application};
pub use config::Config;
