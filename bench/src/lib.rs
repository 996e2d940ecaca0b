//! confab-bench: confab's load generator (issue 7).
//!
//! It speaks the real protocol — `POST /signin` for a cookie, then a WebSocket upgrade with
//! that cookie and an `Origin` — spreads clients over several nodes and local addresses, and
//! measures what a chat server is for: every message reaching every socket of its room, in
//! order, once, quickly, and at what CPU cost.
//!
//! - [`cli`]: the command line;
//! - [`coord`]: the coordinator, which runs a scenario through its workers and adds up;
//! - [`worker`]: a generator process's sockets, receive path and send schedule;
//! - [`wire`]: the WebSocket client side (upgrade, frame parser, masked frames);
//! - [`scan`]: the per-frame payload scan and the message tag;
//! - [`http`]: the raw HTTP/1.1 sign-in;
//! - [`layout`]: which client goes where, and the send schedule;
//! - [`histogram`]: latency histograms;
//! - [`msg`]: what the coordinator and workers say to each other;
//! - [`report`]: the JSON report and the human table;
//! - [`sys`]: CPU time, memory and the open-file limit;
//! - [`redis_info`]: what a Redis server spent during a step (`--redis`).

pub mod cli;
pub mod coord;
pub mod histogram;
pub mod http;
pub mod layout;
pub mod msg;
pub mod redis_info;
pub mod report;
pub mod scan;
pub mod sys;
pub mod wire;
pub mod worker;
