//! Test harness: a latchkey daemon on port 0 in the test's runtime, built from config
//! text so that every test also goes through the real config parser.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use latchkey::daemon::{self, DaemonError};
use latchkey_auth::session::{BoxFuture, Browser, Redirect};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct DaemonBuilder {
    listen: String,
    top: Vec<String>,
    servers: Vec<String>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            top: Vec::new(),
            servers: Vec::new(),
        }
    }
}

impl DaemonBuilder {
    pub fn listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.listen);
        self
    }

    /// A top-level config line, such as `allowed_origins = ["https://app.example"]`.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.to_owned());
        self
    }

    /// A `[servers.NAME]` table with `url` and any extra lines.
    pub fn server(mut self, name: &str, url: &str, extra: &[&str]) -> Self {
        let mut table = format!("[servers.{name}]\nurl = {url:?}\n");
        for line in extra {
            table.push_str(line);
            table.push('\n');
        }
        self.servers.push(table);
        self
    }

    pub fn toml(&self) -> String {
        // Credentials stay in memory unless a test chooses a store.
        let store = if self.top.iter().any(|l| l.starts_with("store")) {
            ""
        } else {
            "store = \"memory\"\n"
        };
        format!(
            "listen = {:?}\nshutdown_timeout_secs = 5\n{store}{}\n{}",
            self.listen,
            self.top.join("\n"),
            self.servers.join("\n")
        )
    }

    pub async fn start(self) -> Daemon {
        self.start_with_browser(std::sync::Arc::new(NoBrowser))
            .await
    }

    pub async fn start_with_browser(self, browser: std::sync::Arc<dyn Browser>) -> Daemon {
        let text = self.toml();
        let config = latchkey::config::parse(Path::new("test.toml"), &text, |name| {
            (name == "TEST_API_KEY").then(|| "static-key-123".to_owned())
        })
        .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"));
        let listener = TcpListener::bind(config.listen).await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(daemon::run_with_browser(
            listener,
            config,
            stop.clone().cancelled_owned(),
            browser,
        ));
        Daemon { addr, stop, handle }
    }
}

#[derive(Debug)]
pub struct Daemon {
    pub addr: SocketAddr,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), DaemonError>>,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the shutdown and waits for `run` to return.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("daemon stops within its drain timeout")
            .expect("daemon task did not panic")
    }
}

/// Runs a client script (an official SDK client) to its end, within `limit`, and
/// returns the JSON summary it prints as its last line. A failed run fails the test
/// with the script's output.
pub async fn client_summary(
    mut command: tokio::process::Command,
    limit: Duration,
) -> serde_json::Value {
    let output = tokio::time::timeout(limit, command.kill_on_drop(true).output())
        .await
        .expect("the client finished in time")
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}"))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A streaming client for SSE tests: no overall timeout.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

pub fn initialize() -> serde_json::Value {
    serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "latchkey-tests", "version": "0"}}
    })
}

/// Reads a streaming response until `needle` has arrived, or fails after 5 s.
pub async fn read_until(response: &mut reqwest::Response, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {seen:?}"))
            .expect("stream chunk")
            .unwrap_or_else(|| panic!("stream ended before {needle:?}; got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Polls `check` every 20 ms for up to 5 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a check that must await (an HTTP request, say).
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For tests that must never open a browser: any login attempt fails.
#[derive(Debug)]
pub struct NoBrowser;

impl Browser for NoBrowser {
    fn bind(&self, _port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>> {
        Box::pin(async { Err("this test opens no browser".to_owned()) })
    }
}

/// Says that a test is skipped and why, where the suite's summary shows it: a
/// passing test's output is captured, so the line goes to the file that
/// `$LATCHKEY_TEST_SKIPS` names (scripts/test sets it and prints it at the end) too.
pub fn skipped(why: &str) {
    eprintln!("SKIPPED: {why}");
    if let Some(path) = std::env::var_os("LATCHKEY_TEST_SKIPS") {
        let line = format!("{}: {why}\n", std::thread::current().name().unwrap_or("?"));
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
        appended.expect("write to $LATCHKEY_TEST_SKIPS");
    }
}

/// A directory under the temp dir for one test's files, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("latchkey-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
