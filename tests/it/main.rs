//! confab's integration tests: real nodes on `127.0.0.1:0`, real HTTP and WebSocket clients,
//! and, for start-up, drain and crash behaviour, the real binary with real signals.

// Helpers are `pub` so that every test module can use them; the crate is never a library.
#![allow(unreachable_pub)]

mod acl;
mod api;
mod cluster;
mod conversations;
mod drain;
mod failover;
mod heartbeat;
mod helpers;
mod limits;
mod pages;
mod partitions;
mod presence;
mod redis_cluster;
mod redis_server;
mod security;
mod soak;
mod sockets;
mod startup;
mod tokens;
mod topology;
mod upgrade;
