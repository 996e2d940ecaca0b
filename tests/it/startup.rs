//! The real binary: start-up errors name the setting at fault; the listening line; the page it
//! carries, whatever its working directory.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{EVENT_TIMEOUT, TempDir, TestUser};

/// A `confab` process started from the built binary, with its output captured.
pub struct ConfabProcess {
    child: Child,
    /// The address from its `listening on http://ADDR` line.
    pub addr: std::net::SocketAddr,
    output: Arc<Mutex<String>>,
    /// The tasks copying stdout and stderr into `output`; they end at the process's exit.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl ConfabProcess {
    /// Starts `confab` on `127.0.0.1:0` with `env` added, and waits for its listening line.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_in(Path::new(env!("CARGO_MANIFEST_DIR")), env).await
    }

    /// Starts `confab` as [`ConfabProcess::start`] does, in the working directory `dir`.
    pub async fn start_in(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(dir, &[], env).await
    }

    /// Starts `confab` as [`ConfabProcess::start_in`] does, through `wrapper` (a command that
    /// runs the one it is given, e.g. `prlimit --nofile=512:4096 --`), when not empty.
    pub async fn start_wrapped(dir: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> Self {
        let confab = env!("CARGO_BIN_EXE_confab");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(confab);
                command
            }
            None => Command::new(confab),
        };
        command
            .current_dir(dir)
            .env_clear()
            .env("CONFAB_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("confab starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut addr_tx = Some(addr_tx);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = output.clone();
        let stdout_reader = tokio::spawn(async move {
            let mut lines = stdout.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let address = line
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next());
                if let Some(address) = address
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(address.parse().expect("the listening line has an address"));
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let sink = output.clone();
        let stderr_reader = tokio::spawn(async move {
            let mut lines = stderr.lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match tokio::time::timeout(EVENT_TIMEOUT, addr_rx).await {
            Ok(Ok(addr)) => addr,
            outcome => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "confab logged no listening line ({}; {status:?}); it printed:\n{}",
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "its output ended"
                    },
                    output.lock().unwrap()
                );
            }
        };
        Self {
            child,
            addr,
            output,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// A client for this process, with the same helpers as an in-process app.
    pub fn client(&self) -> RemoteApp {
        RemoteApp { addr: self.addr }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit, and for the last of its output to be read.
    pub async fn wait(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("confab exits within 30 s")
            .expect("waiting works");
        for reader in self.readers.drain(..) {
            tokio::time::timeout(EVENT_TIMEOUT, reader)
                .await
                .expect("the output ends with the process")
                .expect("the output reader does not panic");
        }
        status
    }

    /// Everything the process printed so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

/// Talks to a node in another process.
pub struct RemoteApp {
    addr: std::net::SocketAddr,
}

impl RemoteApp {
    /// Signs `name` in.
    pub async fn sign_in(&self, name: &str) -> TestUser {
        crate::helpers::sign_in_at(self.addr, name).await
    }

    /// Opens a socket in `room` and reads its opening.
    pub async fn join(
        &self,
        user: &TestUser,
        room: &str,
    ) -> (crate::helpers::TestSocket, crate::helpers::Opening) {
        crate::helpers::join_at(self.addr, user, room).await
    }
}

/// Runs the binary with `args` and `env` to completion and returns its exit status and stderr.
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_confab"))
        .env_clear()
        .args(args)
        .envs(env.iter().copied())
        .output();
    let output = tokio::time::timeout(EVENT_TIMEOUT, output)
        .await
        .expect("exits in time")
        .unwrap();
    (output.status, String::from_utf8(output.stderr).unwrap())
}

#[tokio::test]
async fn bad_settings_stop_start_up_with_one_line_naming_the_variable() {
    let cases: [(&str, &str); 9] = [
        ("CONFAB_BIND", "not-an-address"),
        ("CONFAB_HISTORY", "lots"),
        ("CONFAB_HISTORY", "-5"),
        ("CONFAB_MAX_MESSAGE_CHARS", "0"),
        ("CONFAB_LEAVE_GRACE_MS", "5s"),
        ("CONFAB_SECRET", "too-short"),
        ("CONFAB_REDIS_URL", "http://example.com"),
        ("CONFAB_ALLOWED_ORIGINS", "not an origin"),
        ("CONFAB_NODE_ID", "spaces are bad"),
    ];
    for (variable, value) in cases {
        let (status, stderr) = run_to_exit(&[], &[(variable, value)]).await;
        assert!(!status.success(), "{variable}={value} must stop start-up");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{variable}: one line, got {stderr:?}"
        );
        assert!(stderr.contains(variable), "{variable}: {stderr:?}");
        assert!(
            !stderr.contains("too-short"),
            "secrets are never echoed: {stderr:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_flag_is_named_as_the_flag() {
    let (status, stderr) = run_to_exit(&["--history", "lots"], &[]).await;
    assert!(!status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("--history") && !stderr.contains("CONFAB_HISTORY"),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn cluster_mode_without_a_secret_stops_start_up() {
    let (status, stderr) = run_to_exit(&[], &[("CONFAB_REDIS_URL", "redis://127.0.0.1:1")]).await;
    assert!(!status.success());
    assert!(stderr.contains("CONFAB_SECRET"), "{stderr:?}");
}

#[tokio::test]
async fn an_address_in_use_names_the_bind_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_exit(&[], &[("CONFAB_BIND", &addr)]).await;
    assert!(!status.success());
    assert!(stderr.contains("CONFAB_BIND"), "{stderr:?}");
}

#[tokio::test]
async fn the_listening_line_reports_the_real_port_and_the_random_key_is_warned_about() {
    let process = ConfabProcess::start(&[]).await;
    assert_ne!(process.addr.port(), 0);
    let output = process.output();
    assert!(
        output.contains(&format!("listening on http://{}", process.addr)),
        "{output}"
    );
    assert!(output.contains("CONFAB_SECRET is unset"), "{output}");
}

/// The attribute values of `page` that name a file under `/static/`.
fn static_urls(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|piece| piece.starts_with("/static/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_binary_serves_its_page_from_an_empty_working_directory() {
    let empty = TempDir::new("cwd");
    let process = ConfabProcess::start_in(empty.path(), &[]).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", process.addr);

    for (path, content_type) in [
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let shipped = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(&path[1..]))
            .expect("the checkout has the file");
        assert_eq!(
            response.bytes().await.unwrap(),
            shipped,
            "{path} is the checkout's"
        );
    }

    let user = process.client().sign_in("ann").await;
    let signin = client.get(url("/signin")).send().await.unwrap();
    let room = client
        .get(url("/"))
        .header("cookie", &user.cookie)
        .send()
        .await
        .unwrap();
    let mut assets = static_urls(&signin.text().await.unwrap());
    assets.extend(static_urls(&room.text().await.unwrap()));
    for named in [
        "/static/app.js?v=",
        "/static/style.css?v=",
        "/static/favicon.svg",
    ] {
        assert!(
            assets.iter().any(|asset| asset.starts_with(named)),
            "the pages name {named}: {assets:?}"
        );
    }
    for asset in &assets {
        let response = client.get(url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.headers().contains_key("etag"), "{asset}");
    }
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "the node writes nothing to its working directory"
    );
}

#[tokio::test]
async fn a_static_dir_that_is_missing_or_lacks_app_js_stops_start_up() {
    let without_script = TempDir::new("restyled");
    without_script.write("style.css", "body { color: teal; }\n");
    let without_script = without_script.path().to_str().unwrap();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cases = [
        ("/nonexistent/static", "No such file"),
        (file, "not a directory"),
        (without_script, "app.js"),
    ];
    for (dir, reason) in cases {
        let (status, stderr) = run_to_exit(&[], &[("CONFAB_STATIC_DIR", dir)]).await;
        assert!(!status.success(), "{dir} must stop start-up");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{dir}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains("CONFAB_STATIC_DIR") && stderr.contains(dir) && stderr.contains(reason),
            "{dir}: {stderr:?}"
        );
    }
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit_and_a_short_one_is_reported() {
    let process = ConfabProcess::start_wrapped(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["prlimit", "--nofile=512:4096", "--"],
        &[("CONFAB_MAX_CONNECTIONS", "20000")],
    )
    .await;
    let output = process.output();
    assert!(
        output.contains("raised the open-file limit limit=4096 previous=512"),
        "{output}"
    );
    assert!(
        output.contains("the open-file limit is below CONFAB_MAX_CONNECTIONS"),
        "4,096 files cannot hold 20,000 sockets: {output}"
    );
    let roomy = ConfabProcess::start_wrapped(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["prlimit", "--nofile=512:4096", "--"],
        &[("CONFAB_MAX_CONNECTIONS", "1000")],
    )
    .await;
    assert!(
        !roomy.output().contains("is below CONFAB_MAX_CONNECTIONS"),
        "{}",
        roomy.output()
    );
}
