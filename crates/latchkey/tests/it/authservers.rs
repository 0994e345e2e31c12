//! The token life cycle against third-party authorization servers, through the real
//! binary, in both forms (`latchkey serve` and `latchkey stdio`).
//!
//! The servers are the ones users meet, pinned by the project and started as they are
//! meant to be used, with only a control API added for the test:
//! - `tests/interop/oidc/server.mjs`: panva's `oidc-provider` as a strict OpenID
//!   provider (dynamic registration, PKCE S256 required, resource indicators with JWT
//!   access tokens for the MCP server's audience, refresh token rotation with reuse
//!   detection, revocation, RFC 9207 `iss`, an auto-consent interaction) in front of
//!   the official TypeScript SDK's MCP server with its bearer-auth middleware.
//! - `tests/interop/fastmcp/server.py`: FastMCP 4 with its built-in OAuth provider.
//!
//! The person at the browser is scripted (`$BROWSER` is the fixture's own
//! `browser.*`). Logins, grants and reuse are counted at the servers, never read from
//! latchkey's log. Each run: a first login; a token the server refuses before its
//! `expires_in` (a server-side expiry) costs exactly one refresh and no browser; every
//! grant revoked costs exactly one new login; a restart costs nothing; a refresh after
//! the restart works; and no rotated refresh token is ever presented twice.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::binary::{Serve, Served};
use crate::harness::{interop, interop_dir};

/// A third-party MCP server with its authorization server, and its control API.
struct Fixture {
    _child: Child,
    mcp: String,
    control: String,
    /// `$BROWSER` for latchkey: the scripted person for this server.
    browser: String,
    http: reqwest::Client,
}

impl Fixture {
    async fn oidc_provider() -> Self {
        Self::oidc_provider_with("").await
    }

    /// With `OIDC_FIXTURE_DPOP` = `dpop` (`1` or `nonce`): DPoP at both ends.
    async fn oidc_provider_with(dpop: &str) -> Self {
        let dir = interop_dir();
        let script = interop("oidc/server.mjs");
        let browser = interop("oidc/browser.mjs");
        let mut command = Command::new("node");
        command
            .arg(script)
            .current_dir(&dir)
            .env("OIDC_FIXTURE_DPOP", dpop);
        Self::start(command, format!("node {}", browser.display())).await
    }

    async fn fastmcp() -> Self {
        let dir = interop_dir().join("fastmcp");
        let python = interop("fastmcp/.venv/bin/python");
        let browser = interop("fastmcp/browser.py");
        let mut command = Command::new(&python);
        command.arg(dir.join("server.py")).current_dir(&dir);
        Self::start(
            command,
            format!("{} {}", python.display(), browser.display()),
        )
        .await
    }

    /// Starts the server and reads the one JSON line it prints when it listens.
    async fn start(mut command: Command, browser: String) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the fixture's interpreter is installed (scripts/test installs it)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the fixture announced itself within 60 s")
            .expect("read")
            .expect("the fixture printed its addresses");
        let announced: Value = serde_json::from_str(&line).expect("one JSON line");
        drop(tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {}
        }));
        let text = |key: &str| announced[key].as_str().expect(key).to_owned();
        Self {
            mcp: text("mcp"),
            control: text("control"),
            _child: child,
            browser,
            http: reqwest::Client::new(),
        }
    }

    async fn stats(&self) -> Stats {
        let stats: Value = self
            .http
            .get(format!("{}/stats", self.control))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON");
        let count = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a count: {stats}"));
        Stats {
            logins: count(&stats["authorize"]),
            codes: count(&stats["grants"]["authorization_code"]),
            refreshes: count(&stats["grants"]["refresh_token"]),
            reuse: count(&stats["refresh_reuse"]),
            raw: stats,
        }
    }

    /// `expire` (the server refuses every token issued so far) or `revoke-all`.
    async fn switch(&self, what: &str) {
        let response = self
            .http
            .post(format!("{}/{what}", self.control))
            .send()
            .await
            .expect("control request");
        assert!(
            response.status().is_success(),
            "{what}: {}",
            response.status()
        );
    }
}

/// What the servers counted.
#[derive(Debug)]
struct Stats {
    /// Authorization requests: browser opens.
    logins: u64,
    codes: u64,
    refreshes: u64,
    /// A rotated refresh token presented again.
    reuse: u64,
    raw: Value,
}

#[derive(Debug, Clone, Copy)]
enum Form {
    Daemon,
    Stdio,
}

/// latchkey in one form, on a file store in a scratch directory that outlives its
/// restarts.
struct Latchkey {
    form: Form,
    dir: PathBuf,
    browser: String,
    running: Option<Running>,
}

enum Running {
    Daemon(Served),
    Stdio {
        child: Child,
        stdin: ChildStdin,
        stdout: Lines<BufReader<ChildStdout>>,
        next_id: u64,
    },
}

impl Latchkey {
    fn new(form: Form, fixture: &Fixture, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-it-as-{name}-{form:?}-{}",
            std::process::id()
        ));
        drop(std::fs::remove_dir_all(&dir));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "store = \"file\"\nstate_dir = {:?}\n[servers.remote]\nurl = {:?}\n[servers.remote.oauth]\nauth_timeout_secs = 30\n",
                dir.join("state"),
                fixture.mcp
            ),
        )
        .expect("config");
        Self {
            form,
            dir,
            browser: fixture.browser.clone(),
            running: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        command
            .args(["--log-level", "debug"])
            .args(args)
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("RUST_LOG")
            .env("BROWSER", &self.browser)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn start(&mut self) {
        self.running = Some(match self.form {
            Form::Daemon => {
                let command = self.command(&["serve", "--listen", "127.0.0.1:0"]);
                let mut daemon = Serve::new(command).start().await;
                echo(BufReader::new(daemon.child.stderr.take().expect("stderr")).lines());
                Running::Daemon(daemon)
            }
            Form::Stdio => {
                let mut child = self
                    .command(&["stdio", "remote"])
                    .spawn()
                    .expect("spawn latchkey stdio");
                echo(BufReader::new(child.stderr.take().expect("stderr")).lines());
                let stdin = child.stdin.take().expect("stdin");
                let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
                let mut running = Running::Stdio {
                    child,
                    stdin,
                    stdout,
                    next_id: 1,
                };
                running
                    .rpc("initialize", initialize_params())
                    .await
                    .expect("initialize through latchkey stdio");
                running.notify("notifications/initialized").await;
                running
            }
        });
    }

    async fn stop(&mut self) {
        match self.running.take() {
            Some(Running::Daemon(daemon)) => daemon.kill().await,
            Some(Running::Stdio { mut child, .. }) => {
                child.start_kill().expect("kill");
                drop(child.wait().await);
            }
            None => {}
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// `tools/call whoami`: the tool's text, or why the call failed.
    async fn whoami(&mut self) -> Result<String, String> {
        let running = self.running.as_mut().expect("started");
        let result = match running {
            Running::Daemon(daemon) => daemon_call(&daemon.url("/remote")).await?,
            Running::Stdio { .. } => {
                running
                    .rpc("tools/call", json!({"name": "whoami", "arguments": {}}))
                    .await?
            }
        };
        if result["isError"] == true {
            return Err(format!("the tool failed: {result}"));
        }
        result["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no text in {result}"))
    }
}

impl Drop for Latchkey {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.dir));
    }
}

impl Running {
    /// One request over the stdio bridge; its `result`, or its error.
    async fn rpc(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let Self::Stdio {
            stdin,
            stdout,
            next_id,
            ..
        } = self
        else {
            unreachable!("rpc is for the stdio form");
        };
        let id = *next_id;
        *next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                let message: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if message["id"] == id {
                    return Some(message);
                }
            }
            None
        })
        .await
        .map_err(|_| format!("{method}: no answer in 60 s"))?
        .ok_or_else(|| format!("{method}: latchkey stdio closed its stdout"))?;
        match answer.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(format!("{method}: {answer}")),
        }
    }

    async fn notify(&mut self, method: &str) {
        if let Self::Stdio { stdin, .. } = self {
            let line = json!({"jsonrpc": "2.0", "method": method});
            stdin
                .write_all(format!("{line}\n").as_bytes())
                .await
                .expect("write");
        }
    }
}

/// Copies a child's log lines to the test's output (shown when the test fails).
fn echo<R: tokio::io::AsyncRead + Unpin + Send + 'static>(mut lines: Lines<BufReader<R>>) {
    drop(tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("latchkey: {line}");
        }
    }));
}

fn initialize_params() -> Value {
    json!({"protocolVersion": "2025-06-18", "capabilities": {},
           "clientInfo": {"name": "latchkey-it", "version": "1"}})
}

/// A whole Streamable HTTP session through the daemon, as a client without any OAuth
/// of its own: initialize, initialized, `tools/call whoami`. Returns the call's result.
async fn daemon_call(url: &str) -> Result<Value, String> {
    let http = reqwest::Client::new();
    let post = |body: Value, session: Option<String>| {
        let mut request = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let session = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = response.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {text}"));
            }
            Ok((session, text))
        }
    };
    let init =
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()});
    let (session, text) = post(init, None).await?;
    reply(&text, 1)?;
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        session.clone(),
    )
    .await?;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "whoami", "arguments": {}}});
    let (_, text) = post(call, session).await?;
    reply(&text, 2)
}

/// The JSON-RPC answer with `id` in a JSON or SSE body.
fn reply(text: &str, id: u64) -> Result<Value, String> {
    let messages: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(message) => vec![message],
        Err(_) => text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str(data.trim()).ok())
            .collect(),
    };
    let answer = messages
        .into_iter()
        .find(|m| m["id"] == id)
        .ok_or_else(|| format!("no answer to {id} in {text}"))?;
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| format!("error: {answer}"))
}

/// The whole life cycle against one server in one form, each step checked against
/// what the servers counted.
async fn life_cycle(fixture: &Fixture, form: Form, name: &str) {
    let mut latchkey = Latchkey::new(form, fixture, name);
    latchkey.start().await;
    let first = latchkey.whoami().await;
    let stats = fixture.stats().await;
    assert!(first.is_ok(), "first call: {first:?}; {}", stats.raw);
    assert_eq!(
        (stats.logins, stats.codes),
        (1, 1),
        "one login: {}",
        stats.raw
    );

    // The server stops accepting the token long before its expires_in.
    fixture.switch("expire").await;
    let call = latchkey.whoami().await;
    let stats = fixture.stats().await;
    assert!(
        call.is_ok(),
        "after a server-side expiry: {call:?}; {}",
        stats.raw
    );
    assert_eq!(
        (stats.logins, stats.refreshes),
        (1, 1),
        "a server-side expiry costs exactly one refresh and no browser: {}",
        stats.raw
    );

    // Every grant revoked: the refresh is refused, and one new login follows.
    fixture.switch("revoke-all").await;
    let call = latchkey.whoami().await;
    let stats = fixture.stats().await;
    assert!(call.is_ok(), "after revoke-all: {call:?}; {}", stats.raw);
    assert_eq!(
        (stats.logins, stats.codes),
        (2, 2),
        "all grants revoked: exactly one new login: {}",
        stats.raw
    );

    // A restart uses the stored tokens: no browser, no grant.
    latchkey.restart().await;
    let call = latchkey.whoami().await;
    let after_restart = fixture.stats().await;
    assert!(
        call.is_ok(),
        "after a restart: {call:?}; {}",
        after_restart.raw
    );
    assert_eq!(
        (after_restart.logins, after_restart.codes),
        (2, 2),
        "a restart costs no login: {}",
        after_restart.raw
    );

    // And the restarted process refreshes, with the refresh token stored last.
    fixture.switch("expire").await;
    let call = latchkey.whoami().await;
    let stats = fixture.stats().await;
    assert!(
        call.is_ok(),
        "expiry after the restart: {call:?}; {}",
        stats.raw
    );
    assert_eq!(
        (stats.logins, stats.refreshes),
        (2, after_restart.refreshes + 1),
        "one refresh after the restart, no browser: {}",
        stats.raw
    );
    assert_eq!(
        stats.reuse, 0,
        "no rotated refresh token was presented twice: {}",
        stats.raw
    );
    latchkey.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_life_cycle_through_the_daemon() {
    life_cycle(&Fixture::oidc_provider().await, Form::Daemon, "oidc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_life_cycle_through_stdio() {
    life_cycle(&Fixture::oidc_provider().await, Form::Stdio, "oidc").await;
}

/// oidc-provider with `features.dPoP` (and its nonce) in front of an MCP server that
/// takes only DPoP-bound tokens with a proof of their key (and its own nonce): the
/// whole life cycle, with every proof accepted.
async fn dpop_life_cycle(form: Form) {
    let fixture = Fixture::oidc_provider_with("nonce").await;
    life_cycle(&fixture, form, "oidc-dpop").await;
    let stats = fixture.stats().await.raw;
    assert_eq!(stats["dpop_refused"], json!([]), "{stats}");
    assert!(stats["dpop_ok"].as_u64() >= Some(5), "{stats}");
    assert!(stats["rs_nonce_challenges"].as_u64() >= Some(1), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_with_dpop_through_the_daemon() {
    dpop_life_cycle(Form::Daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_with_dpop_through_stdio() {
    dpop_life_cycle(Form::Stdio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastmcp_life_cycle_through_the_daemon() {
    life_cycle(&Fixture::fastmcp().await, Form::Daemon, "fastmcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastmcp_life_cycle_through_stdio() {
    life_cycle(&Fixture::fastmcp().await, Form::Stdio, "fastmcp").await;
}
