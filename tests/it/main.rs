//! confab's integration tests: real nodes on `127.0.0.1:0`, real HTTP and WebSocket clients,
//! and, for start-up, drain and crash behaviour, the real binary with real signals.

// Helpers are `pub` so that every test module can use them; the crate is never a library.
#![allow(unreachable_pub)]

/// Runs the test function `$name` three times, with each node's configuration changed by
/// `$configure`: `embedded` (one node on the embedded broker, playing both nodes),
/// `on_one_redis` and `on_a_redis_cluster` (two nodes each). The function takes
/// `[&TestApp; 2]`.
macro_rules! on_every_broker {
    ($name:ident, $configure:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let app = crate::helpers::spawn_app_with($configure).await;
                super::$name([&app, &app]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_one_redis() {
                let redis = crate::redis_server::RedisServer::start().await;
                let a = crate::redis_server::spawn_node_with(&redis, "node-a", $configure).await;
                let b = crate::redis_server::spawn_node_with(&redis, "node-b", $configure).await;
                super::$name([&a, &b]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_redis_cluster() {
                let redis = crate::redis_cluster::RedisCluster::start().await;
                let a = crate::redis_server::spawn_node_with(&redis, "node-a", $configure).await;
                let b = crate::redis_server::spawn_node_with(&redis, "node-b", $configure).await;
                super::$name([&a, &b]).await;
            }
        }
    };
}

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
