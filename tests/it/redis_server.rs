//! A real `redis-server` per test, on a free port, owned by the test: it can be killed and
//! started again (empty) on the same port. The machine's own Redis on 6379 is never touched.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{EVENT_TIMEOUT, TestApp, spawn_app_with};

/// A `redis-server` process started for one test. Killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts an empty `redis-server` on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` is not installed: `scripts/test` installs it, and a cluster test
    /// must never pass by not running.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    /// The URL nodes connect with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL: no goodbye to its clients, all data gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while self.ping().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server answers in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut connection).await
    }

    /// Runs one command, e.g. `["CLIENT", "KILL", "TYPE", "pubsub"]`.
    pub async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The secret every node of a test cluster shares.
pub const CLUSTER_SECRET: &str = "cluster-secret-shared-by-every-node-of-the-test";

/// Starts an in-process node on `redis`, named `node_id`, and waits until it is ready.
pub async fn spawn_node(redis: &RedisServer, node_id: &str) -> TestApp {
    spawn_node_with(redis, node_id, |_| {}).await
}

/// As [`spawn_node`], with the configuration changed by `configure`.
pub async fn spawn_node_with(
    redis: &RedisServer,
    node_id: &str,
    configure: impl FnOnce(&mut confab::Config),
) -> TestApp {
    let url = redis.url();
    let node_id = node_id.to_owned();
    let app = spawn_app_with(move |config| {
        config.broker = confab::config::BrokerConfig::Redis { url: url.into() };
        config.secret = Some(CLUSTER_SECRET.to_owned().into());
        config.node_id = node_id;
        configure(config);
    })
    .await;
    app.wait_ready().await;
    app
}
