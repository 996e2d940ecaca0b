//! A real `redis-server` per test, on a free port, owned by the test: it can be killed and
//! started again (empty) on the same port. The machine's own Redis on 6379 is never touched.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{EVENT_TIMEOUT, TestApp, spawn_app_with};

/// A `redis-server` process started for one test. Killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (a password, TLS), kept for restarts.
    extra: Vec<String>,
    /// `rediss` when the server speaks TLS only.
    scheme: &'static str,
    /// `:password@` when the server requires one.
    auth: String,
}

impl RedisServer {
    /// Starts an empty `redis-server` on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` is not installed: `scripts/test` installs it, and a cluster test
    /// must never pass by not running.
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), "redis", String::new()).await
    }

    /// Starts a server that requires `password` (`requirepass`).
    pub async fn start_with_password(password: &str) -> Self {
        let extra = vec!["--requirepass".to_owned(), password.to_owned()];
        Self::start_with(extra, "redis", format!(":{password}@")).await
    }

    /// Starts a server that speaks TLS only, with the certificate and key in `tls`, and that
    /// requires `password`.
    pub async fn start_with_tls(tls: &TestCertificates, password: &str) -> Self {
        let extra = [
            "--tls-cert-file",
            &tls.server_cert,
            "--tls-key-file",
            &tls.server_key,
            "--tls-ca-cert-file",
            &tls.ca_cert,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ]
        .map(str::to_owned)
        .to_vec();
        Self::start_with(extra, "rediss", format!(":{password}@")).await
    }

    async fn start_with(extra: Vec<String>, scheme: &'static str, auth: String) -> Self {
        let port = crate::helpers::reserved_port();
        let mut server = Self {
            port,
            child: None,
            extra,
            scheme,
            auth,
        };
        server.restart().await;
        server
    }

    /// The URL nodes connect with.
    pub fn url(&self) -> String {
        format!("{}://{}127.0.0.1:{}", self.scheme, self.auth, self.port)
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
        let port = self.port.to_string();
        let ports: [&str; 4] = if self.scheme == "rediss" {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--tcp-backlog", "511"]
        };
        let child = Command::new("redis-server")
            .args(ports)
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
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        while !self.answers().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server answers in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server accepts connections (and, without TLS, answers PING).
    async fn answers(&self) -> bool {
        if self.scheme == "rediss" {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        } else {
            self.ping().await.is_ok()
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

/// A throwaway certificate authority and a server certificate for 127.0.0.1, made with the
/// `openssl` command in a temporary directory.
pub struct TestCertificates {
    dir: std::path::PathBuf,
    /// The CA certificate (PEM): what clients must trust.
    pub ca_cert: String,
    /// The server certificate (PEM), for IP 127.0.0.1 and localhost.
    pub server_cert: String,
    /// The server key (PEM).
    pub server_key: String,
}

impl TestCertificates {
    /// Makes a CA and a server certificate.
    pub fn create() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "confab-tls-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=confab test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ]);
        Self {
            ca_cert: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            dir,
        }
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The secret every node of a test cluster shares.
pub const CLUSTER_SECRET: &str = "cluster-secret-shared-by-every-node-of-the-test";

/// What nodes are pointed at: one Redis server or a Redis Cluster. A cluster-mode test
/// written against this runs on both (`on_one_redis_and_a_cluster!` in `cluster.rs`).
pub trait RedisUnderTest {
    /// `CONFAB_REDIS_URL` for it.
    fn url(&self) -> String;

    /// Cuts every subscribed connection (`CLIENT KILL TYPE pubsub` on every server).
    fn kill_subscriptions(&self) -> impl Future<Output = ()>;
}

impl RedisUnderTest for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    async fn kill_subscriptions(&self) {
        let _: i64 = self.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    }
}

impl RedisUnderTest for crate::redis_cluster::RedisCluster {
    fn url(&self) -> String {
        crate::redis_cluster::RedisCluster::url(self)
    }

    async fn kill_subscriptions(&self) {
        for port in self.ports() {
            let _: i64 = self
                .command_on(port, &["CLIENT", "KILL", "TYPE", "pubsub"])
                .await;
        }
    }
}

/// Starts an in-process node on `redis`, named `node_id`, and waits until it is ready.
pub async fn spawn_node(redis: &impl RedisUnderTest, node_id: &str) -> TestApp {
    spawn_node_with(redis, node_id, |_| {}).await
}

/// As [`spawn_node`], with the configuration changed by `configure`.
pub async fn spawn_node_with(
    redis: &impl RedisUnderTest,
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
