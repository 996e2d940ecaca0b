//! The production topology, for real: nginx running the shipped `nginx/nginx.conf` as it is and
//! `nginx/confab.conf` with only its three `deploy:` places filled in (the node addresses, the
//! listen address, the static root), in front of three `confab` processes and a
//! `redis-server`. The test adds nothing to the shipped files but `pid` and `user` on nginx's
//! command line and its temporary-file paths in a file of its own. Browsers' traffic goes
//! through nginx only; the nodes' own ports serve just to read metrics and readiness, and to
//! hold a node in its drain.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use confab::broker::redis::keys::Partition;
use confab::protocol::RoomName;

use crate::helpers::{
    EVENT_TIMEOUT, TestUser, connect_at, eventually, join_at, metric_value, reserved_port,
    sign_in_at, try_connect_at,
};
use crate::redis_server::{CLUSTER_SECRET, RedisServer};
use crate::startup::ConfabProcess;

/// The repository, where `nginx/` and `static/` are.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A real nginx running the shipped configuration, in a directory of its own. Stopped (with
/// SIGTERM, so its workers go too) when dropped.
pub struct NginxProcess {
    child: Child,
    /// Where browsers reach it.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl NginxProcess {
    /// Starts nginx in front of `nodes` on a free port and waits until it serves.
    ///
    /// # Panics
    /// When nginx is not installed (`scripts/test` installs it), or when the shipped files no
    /// longer have exactly the places this fills in.
    pub async fn start(nodes: &[SocketAddr]) -> Self {
        let port = reserved_port();
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "confab-nginx-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let shipped = |name: &str| {
            std::fs::read_to_string(Path::new(REPO).join("nginx").join(name))
                .unwrap_or_else(|error| panic!("nginx/{name}: {error}"))
        };
        // The main file runs as shipped; its relative includes find the site and the MIME
        // types in this directory.
        std::fs::write(dir.join("nginx.conf"), shipped("nginx.conf")).unwrap();
        std::fs::copy("/etc/nginx/mime.types", dir.join("mime.types"))
            .expect("nginx is installed (scripts/test installs it): /etc/nginx/mime.types");
        std::fs::write(
            dir.join("conf.d/confab.conf"),
            site_config(&shipped("confab.conf"), port, nodes),
        )
        .unwrap();
        // Test-only: nginx's temporary files in this directory rather than the system's.
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|kind| format!("{kind}_temp_path {};\n", dir.join(kind).display()))
            .collect();
        std::fs::write(dir.join("conf.d/00-test-temp-paths.conf"), temp_paths).unwrap();

        let running_as_root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").expect("/proc is mounted"),
        ) == 0;
        // As root, nginx's workers would switch to its default user, who may not be able to
        // read this checkout; stay root in the test.
        let globals = format!(
            "daemon off; pid {}; {}",
            dir.join("nginx.pid").display(),
            if running_as_root { "user root;" } else { "" }
        );
        let log = std::fs::File::create(dir.join("output.log")).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr", "-g", &globals])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nginx starts");
        let nginx = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        // Static files come from nginx itself, so this answers once nginx serves, whatever
        // the nodes are doing.
        let client = http_client();
        let url = nginx.url("/static/favicon.svg");
        eventually("nginx to serve", || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|response| response.status() == 200)
        })
        .await;
        nginx
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What nginx logged: errors, and the access log.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default()
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("nginx output:\n{}", self.output());
        }
        // SIGTERM: the master stops its workers, then exits (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nginx` from `PATH`, else Debian's `/usr/sbin/nginx` (not on a non-root `PATH`).
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

/// The shipped site with its three deployment-specific places filled in: one upstream
/// `server` line per node (with the shipped parameters), the listen address, and the static
/// root (this checkout, whose `static/` nginx then serves).
fn site_config(shipped: &str, port: u16, nodes: &[SocketAddr]) -> String {
    let mut out = String::new();
    let mut node_lines = 0;
    let (mut listens, mut roots) = (0, 0);
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(rest) = trimmed.strip_prefix("server confab-") {
            // `server confab-N:3000 PARAMS;` → one line per node, with the same PARAMS.
            node_lines += 1;
            if node_lines == 1 {
                let params = rest.split_once(' ').map_or(";", |(_, params)| params);
                for node in nodes {
                    out.push_str(&format!("{indent}server {node} {params}\n"));
                }
            }
        } else if trimmed.starts_with("listen ") {
            listens += 1;
            out.push_str(&format!("{indent}listen 127.0.0.1:{port};\n"));
        } else if trimmed.starts_with("root ") {
            roots += 1;
            out.push_str(&format!("{indent}root {REPO};\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        node_lines > 0,
        "nginx/confab.conf lists its nodes as `server confab-N:3000 …;`"
    );
    assert_eq!(
        (listens, roots),
        (1, 1),
        "nginx/confab.conf has one listen and one root"
    );
    out
}

/// An HTTP client that does not follow redirects.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// How long a user may be gone before `left`: a hundred times a reconnect through nginx, yet
/// short enough that the rolling-restart test outlasts it after the last restart.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// The settings of node `id` of a cluster on `redis`, listening on `port`, behind nginx;
/// `trusting` nginx's forwarded headers (`CONFAB_TRUSTED_PROXIES`) or not.
fn node_env(redis: &RedisServer, port: u16, id: &str, trusting: bool) -> Vec<(String, String)> {
    let trusted = if trusting { "127.0.0.1/32" } else { "" };
    [
        ("CONFAB_BIND", format!("127.0.0.1:{port}")),
        ("CONFAB_REDIS_URL", redis.url()),
        ("CONFAB_SECRET", CLUSTER_SECRET.to_owned()),
        ("CONFAB_NODE_ID", id.to_owned()),
        ("CONFAB_TRUSTED_PROXIES", trusted.to_owned()),
        ("CONFAB_LEAVE_GRACE_MS", LEAVE_GRACE.as_millis().to_string()),
        ("CONFAB_HISTORY", "1000".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// Starts a node with `env` and waits until it is ready.
async fn start_node(env: &[(String, String)]) -> ConfabProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = ConfabProcess::start(&env).await;
    let client = http_client();
    let url = format!("http://{}/readyz", node.addr);
    eventually("the node to be ready", || async {
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    node
}

/// Redis, and three ready nodes on fixed ports (so that they can restart in place), trusting
/// nginx's forwarded headers or not.
async fn start_cluster(
    trusting: bool,
) -> (RedisServer, Vec<Vec<(String, String)>>, Vec<ConfabProcess>) {
    let redis = RedisServer::start().await;
    let envs: Vec<_> = (1..=3)
        .map(|n| node_env(&redis, reserved_port(), &format!("node-{n}"), trusting))
        .collect();
    let mut nodes = Vec::new();
    for env in &envs {
        nodes.push(start_node(env).await);
    }
    (redis, envs, nodes)
}

/// A node's `/metrics`, read on its own port.
async fn node_metric(node: SocketAddr, sample: &str) -> f64 {
    let text = http_client()
        .get(format!("http://{node}/metrics"))
        .send()
        .await
        .expect("the node answers")
        .text()
        .await
        .unwrap();
    metric_value(&text, sample)
}

#[tokio::test]
async fn nginx_with_the_shipped_config_fronts_three_nodes_and_browsers_chat_across_them() {
    let (_redis, _envs, nodes) = start_cluster(true).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = NginxProcess::start(&addrs).await;
    let client = http_client();

    // Pages, sign-in and sockets, all through nginx.
    let signin = client.get(nginx.url("/signin")).send().await.unwrap();
    assert_eq!(signin.status(), 200);
    assert_eq!(
        client
            .get(nginx.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut users = Vec::new();
    for n in 0..6 {
        users.push(sign_in_at(nginx.addr, &format!("user-{n}")).await);
    }
    let page = client
        .get(nginx.url("/rooms/lobby"))
        .header("cookie", &users[0].cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "a cookie signed on one node works on any"
    );

    let mut sockets = Vec::new();
    for user in &users {
        // `join_at` sends the page's own Origin: http://<nginx address>.
        sockets.push(join_at(nginx.addr, user, "lobby").await.0);
    }
    // Round robin spread the six sockets over the three nodes: each node holds some.
    for node in &addrs {
        eventually("every node to hold a socket", || async {
            node_metric(*node, "confab_connections").await >= 1.0
        })
        .await;
    }
    let mut total = 0.0;
    for node in &addrs {
        total += node_metric(*node, "confab_connections").await;
    }
    assert_eq!(total, 6.0, "six sockets in all");

    // A message from one socket reaches every socket, whichever node it is on.
    sockets[0].send("hello through nginx").await;
    let mut seen = Vec::new();
    for socket in &mut sockets {
        let frames = socket.recv_until_chat("hello through nginx").await;
        seen.push(frames.last().unwrap().clone());
    }
    assert!(
        seen.windows(2).all(|pair| pair[0] == pair[1]),
        "the same frame everywhere"
    );
    assert_eq!(seen[0]["user"]["name"], "user-0");

    // The Origin check uses the host the browser used (nginx's), not the node's.
    let node_origin = format!("http://{}", addrs[0]);
    for origin in [node_origin.as_str(), "http://evil.example"] {
        match try_connect_at(nginx.addr, Some(&users[0]), "?room=lobby", Some(origin)).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "Origin {origin}")
            }
            other => panic!(
                "Origin {origin}: expected 403, got {:?}",
                other.map(|_| "a socket")
            ),
        }
    }

    // nginx overwrites the forwarded headers a client sends: a page elsewhere cannot pass for
    // this host, and plain HTTP cannot pass for HTTPS.
    let mut request = format!("ws://{}/ws/chat?room=lobby", nginx.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in [
        ("cookie", users[0].cookie.as_str()),
        ("origin", "http://evil.example"),
        ("x-forwarded-host", "evil.example"),
    ] {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!(
            "a client's own X-Forwarded-Host must not pass: got {:?}",
            other.map(|_| "a socket")
        ),
    }
    let signin = client
        .post(nginx.url("/signin"))
        .header("x-forwarded-proto", "https")
        .form(&[("name", "mallory")])
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 302);
    let set_cookie = signin.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        !set_cookie.to_ascii_lowercase().contains("secure"),
        "the browser used plain HTTP, whatever it claims: {set_cookie}"
    );

    // /metrics is refused from outside, in every spelling nginx normalises; each node still
    // serves it on its own port.
    for path in [
        "/metrics",
        "//metrics",
        "/metrics/",
        "/%6detrics",
        "/metrics?x=1",
    ] {
        let response = client.get(nginx.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path} through nginx");
        let body = response.text().await.unwrap();
        assert!(!body.contains("confab_"), "{path} leaks metrics: {body}");
    }
    assert!(node_metric(addrs[0], "confab_node_info{node=\"node-1\"}").await == 1.0);
    check_metrics_and_their_docs(addrs[0]).await;

    // Static files come from nginx, with long caching for versioned URLs.
    let versioned = client
        .get(nginx.url("/static/app.js?v=0.1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(versioned.status(), 200);
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        header(&versioned, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(header(&versioned, "content-type").contains("javascript"));
    // confab's own static responses carry no ETag; nginx's do.
    assert!(!header(&versioned, "etag").is_empty(), "served by nginx");
    assert_eq!(header(&versioned, "x-content-type-options"), "nosniff");
    let shipped = std::fs::read(Path::new(REPO).join("static/app.js")).unwrap();
    assert_eq!(
        versioned.bytes().await.unwrap().as_ref(),
        shipped.as_slice()
    );
    let avatar = client
        .get(nginx.url("/static/avatars/0.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(avatar.status(), 200);
    assert_eq!(header(&avatar, "cache-control"), "public, max-age=3600");
    assert!(header(&avatar, "content-type").contains("image/svg+xml"));
    let missing = client
        .get(nginx.url("/static/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        header(&missing, "cache-control").is_empty(),
        "a 404 is not cached"
    );
}

/// The metrics contract, checked on a live node: every metric the contract names is exported
/// with HELP text; every metric docs/deploy.md and the alerts use exists; and every confab
/// metric the node exports is documented in docs/deploy.md.
async fn check_metrics_and_their_docs(node: SocketAddr) {
    let exposition = http_client()
        .get(format!("http://{node}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut exported = BTreeSet::new();
    for help in exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
    {
        let (name, text) = help.split_once(' ').unwrap_or((help, ""));
        assert!(!text.trim().is_empty(), "{name} has HELP text");
        exported.insert(name.to_owned());
    }
    let contract = [
        "confab_connections",
        "confab_messages_received_total",
        "confab_messages_delivered_total",
        "confab_slow_consumers_total",
        "confab_disconnects_total",
        "confab_rejected_total",
        "confab_broker_publish_seconds",
        "confab_broker_up",
        "confab_node_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ];
    for name in contract {
        assert!(exported.contains(name), "{name} is exported with HELP text");
    }
    let docs = std::fs::read_to_string(Path::new(REPO).join("docs/deploy.md")).unwrap();
    let alerts =
        std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/alerts.yml")).unwrap();
    for (file, text) in [("docs/deploy.md", &docs), ("alerts.yml", &alerts)] {
        for (start, _) in text.match_indices("confab_") {
            if text[..start].ends_with('#') {
                continue; // a link to a heading, such as #confab_trusted_proxies
            }
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| exported.contains(*base))
                .unwrap_or(&name);
            assert!(
                exported.contains(base),
                "{file} names {name}, which no node exports"
            );
        }
    }
    for name in exported.iter().filter(|name| name.starts_with("confab_")) {
        assert!(
            docs.contains(name.as_str()),
            "docs/deploy.md does not describe {name}"
        );
    }
}

/// The page opens its socket with its room's partition; with that hint the shipped config
/// keeps each partition's sockets on one node, so each node subscribes to its share of the
/// partitions only, not to all of them.
#[tokio::test]
async fn nginx_keeps_each_partitions_sockets_on_one_node() {
    let (_redis, _envs, nodes) = start_cluster(true).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = NginxProcess::start(&addrs).await;
    let ann = sign_in_at(nginx.addr, "ann").await;

    // The page carries the hint for its socket.
    let room = RoomName::parse("general").unwrap();
    let partition = Partition::of(&room).index();
    let page = http_client()
        .get(nginx.url("/rooms/general"))
        .header("cookie", &ann.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("data-partition=\"{partition}\"")),
        "the page names its room's partition"
    );

    // Three users' sockets in each of 9 rooms, as pages open them.
    let users = [
        ann,
        sign_in_at(nginx.addr, "bob").await,
        sign_in_at(nginx.addr, "cid").await,
    ];
    let mut sockets = Vec::new();
    let mut partitions = std::collections::BTreeSet::new();
    for n in 0..9 {
        let room = RoomName::parse(&format!("room-{n}")).unwrap();
        let partition = Partition::of(&room).index();
        partitions.insert(partition);
        for user in &users {
            let query = format!("?room={room}&v=2&partition={partition}");
            let mut socket = connect_at(nginx.addr, user, &query).await;
            socket.recv_opening().await;
            sockets.push(socket);
        }
    }
    let mut subscribed = Vec::new();
    for node in &addrs {
        subscribed.push(node_metric(*node, "confab_broker_partitions_subscribed").await as usize);
    }
    assert_eq!(
        subscribed.iter().sum::<usize>(),
        partitions.len(),
        "each partition on exactly one node: {subscribed:?}"
    );
    assert!(
        subscribed.iter().filter(|&&n| n > 0).count() >= 2,
        "partitions spread over the nodes: {subscribed:?}"
    );
}

#[tokio::test]
async fn nginx_retries_an_upgrade_that_a_draining_node_refuses_on_another_node() {
    // These nodes trust no proxy: the Origin check runs on the `Host` nginx passes on, which
    // must be the browser's, port included.
    let (_redis, _envs, mut nodes) = start_cluster(false).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = NginxProcess::start(&addrs).await;

    // A socket straight to node 1 that reads its 1012 and never answers it: node 1 waits for
    // the answer, so it stays draining (answering 503 to upgrades) while we look.
    let holder = sign_in_at(addrs[0], "holder").await;
    let (mut held, _) = join_at(addrs[0], &holder, "lobby").await;
    nodes[0].signal("TERM");
    assert_eq!(held.recv_close().await.0, 1012);
    let readiness = http_client()
        .get(format!("http://{}/readyz", addrs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(readiness.status(), 503, "node 1 is draining");

    // Through nginx every upgrade succeeds, on the two live nodes...
    let ann = sign_in_at(nginx.addr, "ann").await;
    let mut sockets = Vec::new();
    for _ in 0..6 {
        sockets.push(join_at(nginx.addr, &ann, "lobby").await.0);
    }
    let mut on_live_nodes = 0.0;
    for node in &addrs[1..] {
        on_live_nodes += node_metric(*node, "confab_connections").await;
    }
    assert_eq!(on_live_nodes, 6.0);
    // ...although nginx did offer node 1 some of them: it answered 503, and nginx went on to
    // another node instead of passing the 503 to the browser.
    let refused = node_metric(addrs[0], r#"confab_rejected_total{reason="draining"}"#).await;
    assert!(refused >= 1.0, "nginx never tried the draining node");

    drop(held);
    assert_eq!(nodes[0].wait().await.code(), Some(0));
}

#[test]
fn the_shipped_deploy_files_outlast_confab_s_own_timeouts() {
    let read = |path: &str| std::fs::read_to_string(Path::new(REPO).join(path)).unwrap();
    let seconds = |text: &str, directive: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|line| line.trim().strip_prefix(directive))
            .map(|value| {
                let value = value.trim().trim_end_matches(';').trim_matches('"');
                value
                    .trim_end_matches('s')
                    .parse()
                    .unwrap_or_else(|_| panic!("{directive} {value:?} is a number of seconds"))
            })
            .collect()
    };
    // nginx must not cut an idle socket before confab's own ping/idle timeout does.
    let site = read("nginx/confab.conf");
    let websocket = &site[site.find("location /ws/").expect("a /ws/ location")..];
    let websocket = &websocket[..websocket.find('}').unwrap()];
    let idle = confab::ws::IDLE_TIMEOUT.as_secs();
    for directive in ["proxy_read_timeout", "proxy_send_timeout", "send_timeout"] {
        let values = seconds(websocket, directive);
        assert_eq!(values.len(), 1, "/ws/ sets {directive}");
        assert!(
            values[0] > idle,
            "{directive} {}s must exceed confab's {idle}s",
            values[0]
        );
    }
    // Kubernetes must let a pod finish its drain: the preStop sleep, then at most the socket
    // drain and the HTTP stop, inside the grace period.
    let drain = (confab::app::DRAIN_DEADLINE + confab::app::HTTP_STOP_DEADLINE).as_secs();
    let deployment = read("k8s/deployment.yaml");
    let grace = seconds(&deployment, "terminationGracePeriodSeconds:");
    let pre_stop = seconds(&deployment, "seconds:");
    assert_eq!((grace.len(), pre_stop.len()), (1, 1), "k8s/deployment.yaml");
    assert!(
        pre_stop[0] + drain < grace[0],
        "preStop {}s + drain {drain}s must fit in terminationGracePeriodSeconds {}s",
        pre_stop[0],
        grace[0]
    );
    // docker compose waits as long before it kills a replica.
    let compose = read("docker-compose.yml");
    let stop_grace = seconds(&compose, "stop_grace_period:");
    assert!(
        !stop_grace.is_empty(),
        "docker-compose.yml sets stop_grace_period"
    );
    assert!(
        stop_grace.iter().all(|grace| drain < *grace),
        "{stop_grace:?}"
    );
}

/// Messages per second each chatting client sends, well under the rate limit (a burst of 20,
/// then 10 a second).
const SEND_INTERVAL: Duration = Duration::from_millis(150);
/// Chat messages, all clients together, between two steps of the rolling restart.
const MESSAGES_BETWEEN_STEPS: usize = 30;

/// Everything one chatting client saw and did, over all its sockets.
#[derive(Debug, Default)]
struct ChatRecord {
    /// The id of the client's user.
    user_id: String,
    /// Every `chat`, `join` and `left` frame it received, history and live, in arrival order.
    frames: Vec<Value>,
    /// Its `list` frames, one per socket.
    lists: Vec<Value>,
    /// `error` frames (none expected).
    errors: Vec<Value>,
    /// The close code of each socket the server closed.
    closes: Vec<u16>,
    /// Messages it sent and saw come back.
    confirmed: Vec<String>,
    /// Messages it sent on a socket that closed before they came back: the node may or may
    /// not have published them.
    unconfirmed: Vec<String>,
    /// Upgrades through nginx that failed before one succeeded.
    failed_upgrades: usize,
}

/// What every client shares with the test.
struct Chatroom {
    nginx: SocketAddr,
    clients: usize,
    /// Messages confirmed so far, all clients together.
    confirmed: AtomicUsize,
    /// Set when the clients are to finish: each then sends `done N` and reads until it saw
    /// every client's.
    stop: AtomicBool,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a socket through nginx as a page would (its own Origin, the cookie, `since` = the
/// last id it saw), retrying as the page does while the upgrade fails.
async fn open_socket(room: &Chatroom, user: &TestUser, since: Option<u64>) -> (Socket, usize) {
    let query = since.map_or_else(
        || "?room=lobby".to_owned(),
        |id| format!("?room=lobby&since={id}"),
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut failures = 0;
    loop {
        let mut request = format!("ws://{}/ws/chat{query}", room.nginx)
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("cookie", HeaderValue::from_str(&user.cookie).unwrap());
        headers.insert(
            "origin",
            HeaderValue::from_str(&format!("http://{}", room.nginx)).unwrap(),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => return (socket, failures),
            Err(error) => {
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "cannot reconnect through nginx: {error}"
                );
                // The page's back-off, shortened.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The next text frame or close of `socket`, skipping pings; fails after [`EVENT_TIMEOUT`]
/// or if the connection ends without a close frame.
async fn next_event(socket: &mut Socket) -> Result<Value, u16> {
    loop {
        let message = tokio::time::timeout(EVENT_TIMEOUT, socket.next())
            .await
            .expect("a frame arrives in time");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |frame| frame.code.into()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

impl ChatRecord {
    /// The id of the last chat/join/left frame seen, for `since`.
    fn last_id(&self) -> Option<u64> {
        self.frames
            .last()
            .map(|frame| frame["id"].as_u64().unwrap())
    }

    /// Records one received frame.
    fn take(&mut self, frame: Value) {
        match frame["type"].as_str().unwrap() {
            "list" => self.lists.push(frame),
            "error" => self.errors.push(frame),
            _ => self.frames.push(frame),
        }
    }

    /// Reads a socket's opening (history, then `list`).
    async fn read_opening(&mut self, socket: &mut Socket) {
        loop {
            let frame = next_event(socket)
                .await
                .expect("no close during the opening");
            let is_list = frame["type"] == "list";
            self.take(frame);
            if is_list {
                return;
            }
        }
    }
}

/// One client chatting through nginx until told to stop: a message every [`SEND_INTERVAL`],
/// each only after the previous one came back; on a close (1012 from a draining node) it
/// reconnects with `since` at once. Returns what it saw.
async fn chat(
    room: Arc<Chatroom>,
    index: usize,
    user: TestUser,
    mut socket: Socket,
    mut record: ChatRecord,
) -> ChatRecord {
    let mut sent = 0;
    let mut in_flight: Option<String> = None;
    let mut done_sent = false;
    let mut dones = HashSet::new();
    let mut next_send = Instant::now();
    while dones.len() < room.clients {
        let may_send = in_flight.is_none() && !done_sent;
        let event = tokio::select! {
            event = next_event(&mut socket) => Some(event),
            () = tokio::time::sleep_until(next_send), if may_send => None,
        };
        match event {
            None => {
                let text = if room.stop.load(Ordering::Acquire) {
                    done_sent = true;
                    format!("done {index}")
                } else {
                    sent += 1;
                    format!("{} {sent:04}", user.user.name)
                };
                // A failed send means the socket is closing: the close comes next.
                let _ = socket.send(Message::text(text.clone())).await;
                in_flight = Some(text);
                next_send = Instant::now() + SEND_INTERVAL;
            }
            Some(Ok(frame)) => {
                if frame["type"] == "chat" {
                    let text = frame["data"].as_str().unwrap().to_owned();
                    if let Some(done) = text.strip_prefix("done ") {
                        dones.insert(done.to_owned());
                    }
                    if frame["user"]["id"] == user.user.id.as_str()
                        && in_flight.as_deref() == Some(text.as_str())
                    {
                        in_flight = None;
                        record.confirmed.push(text);
                        room.confirmed.fetch_add(1, Ordering::AcqRel);
                    }
                }
                record.take(frame);
            }
            Some(Err(code)) => {
                assert!(
                    !done_sent,
                    "{}: no socket closes once the restarts are over (got {code})",
                    user.user.name
                );
                record.closes.push(code);
                record.unconfirmed.extend(in_flight.take());
                let (new, failures) = open_socket(&room, &user, record.last_id()).await;
                record.failed_upgrades += failures;
                // Answer the old socket's close in the background (the node waits for it).
                let mut old = std::mem::replace(&mut socket, new);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EVENT_TIMEOUT, async {
                        while old.next().await.is_some() {}
                    })
                    .await;
                });
                record.read_opening(&mut socket).await;
            }
        }
    }
    let _ = socket.close(None).await;
    record
}

fn strictly_increasing(ids: &[u64]) -> bool {
    ids.windows(2).all(|pair| pair[0] < pair[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_through_nginx_loses_nothing_and_makes_no_noise() {
    const CLIENTS: usize = 6;
    let (_redis, envs, mut nodes) = start_cluster(true).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = NginxProcess::start(&addrs).await;
    let room = Arc::new(Chatroom {
        nginx: nginx.addr,
        clients: CLIENTS,
        confirmed: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });

    // Everyone joins first; after the last join, no join or left may appear again.
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let user = sign_in_at(nginx.addr, &format!("chatter-{n}")).await;
        let (mut socket, failures) = open_socket(&room, &user, None).await;
        assert_eq!(failures, 0);
        let mut record = ChatRecord {
            user_id: user.user.id.clone(),
            ..ChatRecord::default()
        };
        record.read_opening(&mut socket).await;
        clients.push((user, socket, record));
    }
    let baseline = clients.last().unwrap().2.last_id().unwrap();
    let names: BTreeSet<String> = clients
        .iter()
        .map(|(user, ..)| user.user.name.clone())
        .collect();

    let mut chatting = Vec::new();
    for (index, (user, socket, record)) in clients.into_iter().enumerate() {
        chatting.push(tokio::spawn(chat(
            room.clone(),
            index,
            user,
            socket,
            record,
        )));
    }
    let wait_for_messages = |at_least: usize| {
        let room = room.clone();
        async move {
            eventually("the clients to chat on", || async {
                room.confirmed.load(Ordering::Acquire) >= at_least
            })
            .await;
        }
    };
    wait_for_messages(MESSAGES_BETWEEN_STEPS).await;

    // The rolling restart: each node in turn drains, exits 0, and comes back on the same port
    // with the same name, while the clients chat on.
    for (n, env) in envs.iter().enumerate() {
        nodes[n].signal("TERM");
        let status = nodes[n].wait().await;
        assert_eq!(
            status.code(),
            Some(0),
            "node {n} drains and exits 0:\n{}",
            nodes[n].output()
        );
        // The chat goes on with the node gone...
        let so_far = room.confirmed.load(Ordering::Acquire);
        wait_for_messages(so_far + MESSAGES_BETWEEN_STEPS).await;
        // ...and after it is back.
        nodes[n] = start_node(env).await;
        let so_far = room.confirmed.load(Ordering::Acquire);
        wait_for_messages(so_far + MESSAGES_BETWEEN_STEPS).await;
    }
    // Chat on for longer than the leave grace, so that a `left` wrongly announced for anyone
    // who reconnected would be seen: at most CLIENTS messages per SEND_INTERVAL, so this many
    // take at least 1.5 × the grace.
    let last_restart = Instant::now();
    let tail = (1.5 * LEAVE_GRACE.as_secs_f64() * CLIENTS as f64 / SEND_INTERVAL.as_secs_f64())
        .ceil() as usize;
    let so_far = room.confirmed.load(Ordering::Acquire);
    wait_for_messages(so_far + tail).await;
    assert!(last_restart.elapsed() > LEAVE_GRACE);
    room.stop.store(true, Ordering::Release);
    let mut records = Vec::new();
    for client in chatting {
        records.push(
            tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .expect("every client sees every `done` in time")
                .expect("a client failed"),
        );
    }

    // Every client saw the same chat, frame for frame: every message exactly once, in order,
    // across its reconnects.
    let chats = |record: &ChatRecord| -> Vec<Value> {
        record
            .frames
            .iter()
            .filter(|frame| frame["type"] == "chat")
            .cloned()
            .collect()
    };
    let reference = chats(&records[0]);
    assert!(
        reference.len() > 7 * MESSAGES_BETWEEN_STEPS,
        "{} messages",
        reference.len()
    );
    for (n, record) in records.iter().enumerate() {
        let ids: Vec<u64> = record
            .frames
            .iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect();
        assert!(
            strictly_increasing(&ids),
            "client {n}: ids strictly increase: {ids:?}"
        );
        assert_eq!(
            chats(record),
            reference,
            "client {n} saw the same messages as client 0"
        );
        assert!(record.errors.is_empty(), "client {n}: {:?}", record.errors);
        // Its own messages that were published are there in the order it sent them (the
        // texts carry a zero-padded sequence number), its confirmed ones all of them.
        let own: Vec<&str> = reference
            .iter()
            .filter(|frame| frame["user"]["id"] == record.user_id.as_str())
            .map(|frame| frame["data"].as_str().unwrap())
            .filter(|text| !text.starts_with("done "))
            .collect();
        assert!(
            own.windows(2).all(|pair| pair[0] < pair[1]),
            "client {n}: {own:?}"
        );
        let own_confirmed: Vec<&str> = own
            .iter()
            .copied()
            .filter(|text| record.confirmed.iter().any(|c| c == text))
            .collect();
        let confirmed: Vec<&str> = record.confirmed.iter().map(String::as_str).collect();
        assert_eq!(
            own_confirmed,
            confirmed
                .iter()
                .copied()
                .filter(|text| !text.starts_with("done "))
                .collect::<Vec<_>>(),
            "client {n}: every confirmed message is there"
        );
        // No noise: nobody joined or left after everyone was in, and the list of every socket
        // opened since named everyone.
        let noise: Vec<&Value> = record
            .frames
            .iter()
            .filter(|f| f["type"] != "chat" && f["id"].as_u64().unwrap() > baseline)
            .collect();
        assert!(noise.is_empty(), "client {n}: join/left noise {noise:?}");
        for list in &record.lists[1..] {
            let listed: BTreeSet<String> = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|user| user["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(listed, names, "client {n}: a reconnected socket's list");
        }
        // The rolling restart reached every client, and only as 1012 (Service Restart).
        assert!(
            !record.closes.is_empty(),
            "client {n} was on a restarted node"
        );
        assert!(
            record.closes.iter().all(|code| *code == 1012),
            "client {n}: {:?}",
            record.closes
        );
        assert!(record.unconfirmed.len() <= record.closes.len());
    }
    let reconnects: usize = records.iter().map(|record| record.closes.len()).sum();
    let failed: usize = records.iter().map(|record| record.failed_upgrades).sum();
    let unconfirmed: usize = records.iter().map(|record| record.unconfirmed.len()).sum();
    eprintln!(
        "{} messages; {reconnects} reconnects; {failed} failed upgrades; {unconfirmed} unconfirmed",
        reference.len()
    );
}
