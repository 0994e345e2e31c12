//! `latchkey stdio` through the real binary: newline-delimited JSON-RPC on its stdin
//! and stdout against the testkit upstream (whose request log shows what reached the
//! server), and the official TypeScript SDK's `StdioClientTransport` against
//! server-everything.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use latchkey_testkit::McpUpstream;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use crate::harness::{TempDir, client_summary, interop_dir, protected};
use crate::interop::Everything;

fn latchkey(scratch: &TempDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env("XDG_CONFIG_HOME", scratch.0.join("config"))
        .env("XDG_STATE_HOME", scratch.0.join("state"))
        .env("XDG_RUNTIME_DIR", scratch.0.join("run"))
        .env("BROWSER", "/bin/false")
        .kill_on_drop(true);
    command
}

/// `latchkey stdio` with pipes on both ends.
pub(crate) struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Bridge {
    pub(crate) fn start(command: Command) -> Self {
        Self::spawn(command, Stdio::inherit())
    }

    /// The same, with its stderr in the file `log`.
    fn start_logging(command: Command, log: &std::path::Path) -> Self {
        Self::spawn(
            command,
            std::fs::File::create(log).expect("log file").into(),
        )
    }

    fn spawn(mut command: Command, stderr: Stdio) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn latchkey stdio");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub(crate) async fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
    }

    pub(crate) async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), self.stdout.next_line())
            .await
            .expect("an answer in time")
            .expect("read")
            .expect("a line before EOF");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next message that answers `id`, skipping server notifications.
    pub(crate) async fn answer(&mut self, id: i64) -> Value {
        loop {
            let message = self.recv().await;
            if message["id"] == id && message.get("method").is_none() {
                return message;
            }
        }
    }

    /// Sends a request and gathers what comes back until its answer, the answer last.
    async fn exchange(&mut self, id: i64, method: &str, params: Value) -> Vec<Value> {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let mut seen = Vec::new();
        loop {
            let message = self.recv().await;
            let done = message["id"] == id && message.get("method").is_none();
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    pub(crate) async fn call(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.answer(id).await
    }

    pub(crate) async fn initialize(&mut self) -> Value {
        let answer = self
            .call(
                1,
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "stdio-test", "version": "1"}}),
            )
            .await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        answer
    }

    /// Closes stdin and waits for the exit status.
    pub(crate) async fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exited in time")
            .expect("wait")
    }
}

pub(crate) fn by_name(scratch: &TempDir, url: &str) -> Command {
    let config = scratch.0.join("latchkey.toml");
    std::fs::write(
        &config,
        format!("store = \"memory\"\n[servers.notes]\nurl = {url:?}\n"),
    )
    .expect("config");
    let mut command = latchkey(scratch);
    command
        .arg("stdio")
        .arg("notes")
        .arg("--config")
        .arg(config);
    command
}

pub(crate) fn header<'a>(
    request: &'a latchkey_testkit::RecordedRequest,
    name: &str,
) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_its_headers_big_messages_and_a_clean_end() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-session");
    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    let init = bridge.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "latchkey-testkit");
    let tools = bridge.call(2, "tools/list", json!({})).await;
    assert!(
        tools["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
    let echoed = bridge
        .call(
            3,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "grüße"}}),
        )
        .await;
    assert_eq!(echoed["result"]["content"][0]["text"], "grüße");

    let requests = upstream.requests();
    let call = requests
        .iter()
        .rev()
        .find(|r| header(r, "mcp-method") == Some("tools/call"))
        .expect("the call reached the upstream");
    assert_eq!(header(call, "mcp-session-id"), Some("s1"));
    assert_eq!(header(call, "mcp-protocol-version"), Some("2025-06-18"));
    assert_eq!(header(call, "mcp-name"), Some("echo"));
    assert_eq!(
        header(call, "mcp-param-text"),
        Some("=?base64?Z3LDvMOfZQ==?="),
        "the x-mcp-header argument, Base64 because it is not ASCII"
    );

    // Several megabytes each way, on one line.
    let big = "x".repeat(6 * 1024 * 1024);
    let echoed = bridge
        .call(
            4,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": big}}),
        )
        .await;
    assert_eq!(
        echoed["result"]["content"][0]["text"]
            .as_str()
            .map(str::len),
        Some(big.len())
    );

    // A line that is not JSON gets a parse error, and the session goes on.
    bridge
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"{oops\n")
        .await
        .expect("write");
    let parse_error = bridge.recv().await;
    assert_eq!(parse_error["error"]["code"], -32700);
    assert_eq!(bridge.call(5, "ping", json!({})).await["result"], json!({}));

    assert!(bridge.finish().await.success());
    let last = upstream.requests().pop().expect("requests");
    assert_eq!(last.method, "DELETE", "the session is ended on EOF");
    assert_eq!(header(&last, "mcp-session-id"), Some("s1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_become_answers_never_hangs() {
    let stop = CancellationToken::new();
    let upstream = McpUpstream::start_on("127.0.0.1:0".parse().expect("addr"), stop.clone())
        .await
        .expect("upstream");
    let addr = upstream.addr();
    let scratch = TempDir::new("stdio-faults");
    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    bridge.initialize().await;

    // Malformed JSON from the server: an error for that request, not a broken line.
    let malformed = bridge
        .call(
            2,
            "tools/call",
            json!({"name": "malformed", "arguments": {}}),
        )
        .await;
    assert!(
        malformed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")),
        "{malformed}"
    );

    // The server forgets the session (404): a new one is started and the call retried.
    // First the `initialized` notification must have arrived: the bridge sends each
    // message on its own, and one that lands after the forgetting would start a
    // session of its own.
    for _ in 0..500 {
        let notified = upstream
            .requests()
            .iter()
            .any(|r| header(r, "mcp-method") == Some("notifications/initialized"));
        if notified {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upstream.forget_sessions();
    let echoed = bridge
        .call(
            3,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "again"}}),
        )
        .await;
    assert_eq!(echoed["result"]["content"][0]["text"], "again", "{echoed}");
    let replayed = upstream
        .requests()
        .iter()
        .filter(|r| header(r, "mcp-method") == Some("initialize"))
        .count();
    assert_eq!(replayed, 2, "the client's initialize was replayed once");

    // The server goes away: an error answer, promptly.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let down = bridge
        .call(
            4,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "down"}}),
        )
        .await;
    assert!(down["error"]["message"].as_str().is_some(), "{down}");

    // It comes back on the same port, knowing no sessions: the bridge starts over.
    let restarted = McpUpstream::start_on(addr, CancellationToken::new())
        .await
        .expect("restart on the same port");
    let echoed = bridge
        .call(
            5,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "back"}}),
        )
        .await;
    assert_eq!(echoed["result"]["content"][0]["text"], "back", "{echoed}");
    assert!(bridge.finish().await.success());
    assert_eq!(
        restarted.requests().pop().map(|r| r.method),
        Some(http::Method::DELETE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_closed_mid_request_lets_it_finish_then_ends_the_session() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-eof");
    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    bridge.initialize().await;
    bridge
        .send(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "gated", "arguments": {}}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(bridge.stdin.take());
    upstream.open_gate();
    let answer = bridge.answer(7).await;
    assert!(answer.get("result").is_some(), "{answer}");
    assert!(bridge.finish().await.success());
    assert_eq!(
        upstream.requests().pop().map(|r| r.method),
        Some(http::Method::DELETE)
    );
}

/// The official SDK client launches `latchkey stdio --url` as its server, as an
/// editor would, against server-everything over Streamable HTTP: tools, resources,
/// progress notifications, a sampling request from the server, and a subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_stdio_client_to_server_everything() {
    let everything = Everything::start("streamableHttp").await;
    let scratch = TempDir::new("stdio-sdk");
    let interop = interop_dir();
    let mut command = Command::new("node");
    command
        .arg(interop.join("client.mjs"))
        .args([
            "--server-requests",
            "--stdio",
            env!("CARGO_BIN_EXE_latchkey"),
            "stdio",
            "--url",
        ])
        .arg(format!("http://127.0.0.1:{}/mcp", everything.port))
        .env("XDG_CONFIG_HOME", scratch.0.join("config"))
        .env("XDG_STATE_HOME", scratch.0.join("state"))
        .env("XDG_RUNTIME_DIR", scratch.0.join("run"))
        .current_dir(&interop);
    let summary = client_summary(command, Duration::from_secs(60)).await;
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(
        summary["notifications"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert_eq!(summary["sampling"], true, "{summary}");
    assert!(summary["subscription"].as_str().is_some(), "{summary}");
}

/// The same through the official Python SDK's stdio client (`mcp`, pinned in
/// tests/interop/requirements.txt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_stdio_client_to_server_everything() {
    let everything = Everything::start("streamableHttp").await;
    let scratch = TempDir::new("stdio-python");
    let interop = interop_dir();
    let python = interop.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test (it installs tests/interop/requirements.txt)",
        python.display()
    );
    let mut command = Command::new(&python);
    command
        .arg(interop.join("client.py"))
        .args([env!("CARGO_BIN_EXE_latchkey"), "stdio", "--url"])
        .arg(format!("http://127.0.0.1:{}/mcp", everything.port))
        .env("XDG_CONFIG_HOME", scratch.0.join("config"))
        .env("XDG_STATE_HOME", scratch.0.join("state"))
        .env("XDG_RUNTIME_DIR", scratch.0.join("run"));
    let summary = client_summary(command, Duration::from_secs(60)).await;
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["sampling"], true, "{summary}");
    assert!(summary["subscription"].as_str().is_some(), "{summary}");
}

/// Every editor config in the README is a file under config/clients/, shown
/// verbatim, and each server entry launches a command line latchkey accepts.
#[test]
fn every_client_config_in_the_readme_is_a_checked_file() {
    use clap::Parser as _;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let dir = root.join("config/clients");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("config/clients")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        5,
        "Claude Desktop, Cursor, VS Code, Zed, Claude Code: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            readme.contains(&format!("```json\n{}```", text)),
            "the README shows {name} verbatim"
        );
        let config: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let servers = ["mcpServers", "servers", "context_servers"]
            .iter()
            .find_map(|key| config[key].as_object())
            .unwrap_or_else(|| panic!("{name}: no servers table"));
        assert_eq!(servers.len(), 2, "{name}: the by-name and the --url form");
        for (server, entry) in servers {
            assert_eq!(entry["command"], "latchkey", "{name}: {server}");
            let args: Vec<&str> = entry["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let parsed = latchkey::cli::Cli::try_parse_from(
                std::iter::once("latchkey").chain(args.iter().copied()),
            )
            .unwrap_or_else(|e| panic!("{name}: {server}: {e}"));
            assert!(
                matches!(parsed.command, latchkey::cli::Command::Stdio { .. }),
                "{name}: {server}"
            );
        }
    }
}

/// The TypeScript SDK's stdio client against the testkit upstream, by name from the
/// config; then SIGTERM ends a bridge cleanly too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_by_name_and_sigterm_ends_the_session() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-sdk-name");
    let config = scratch.0.join("latchkey.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"memory\"\n[servers.notes]\nurl = {:?}\n",
            upstream.mcp_url()
        ),
    )
    .expect("config");
    let interop = interop_dir();
    let mut command = Command::new("node");
    command
        .arg(interop.join("sdk-call.mjs"))
        .args([
            "--stdio",
            "echo",
            r#"{"text":"by name"}"#,
            env!("CARGO_BIN_EXE_latchkey"),
            "stdio",
            "notes",
            "--config",
        ])
        .arg(&config)
        .current_dir(&interop);
    let summary = client_summary(command, Duration::from_secs(40)).await;
    assert_eq!(summary["text"], "by name", "{summary}");

    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    bridge.initialize().await;
    let pid = bridge.child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), bridge.child.wait())
        .await
        .expect("exited in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(
        upstream.requests().pop().map(|r| r.method),
        Some(http::Method::DELETE)
    );
}

/// A 2024-11-05 HTTP+SSE server behind `--transport auto`: the bridge's POSTs become
/// legacy messages and the answers come back on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_sse_server_through_stdio_auto() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-legacy");
    let mut command = latchkey(&scratch);
    command.args(["stdio", "--url", &upstream.sse_url()]);
    let mut bridge = Bridge::start(command);
    let init = bridge.initialize().await;
    assert_eq!(
        init["result"]["serverInfo"]["name"], "latchkey-testkit",
        "{init}"
    );
    let echoed = bridge
        .call(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "legacy"}}),
        )
        .await;
    assert_eq!(echoed["result"]["content"][0]["text"], "legacy", "{echoed}");
    assert!(bridge.finish().await.success());
}

/// A login that cannot succeed (the server offers no way to register a client)
/// answers the request with a JSON-RPC error that says what to run, and that
/// command is one latchkey accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_failure_says_what_to_run() {
    use clap::Parser as _;
    let setup = protected().dcr(false).start().await;
    let scratch = TempDir::new("stdio-auth-error");
    let mut command = latchkey(&scratch);
    command.args(["stdio", "--url", &setup.upstream.mcp_url()]);
    let mut bridge = Bridge::start(command);
    let answer = bridge
        .call(
            1,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "stdio-test", "version": "1"}}),
        )
        .await;
    let message = answer["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("client_id"),
        "names the config key: {message}"
    );
    let suggested = message
        .split('`')
        .find(|part| part.starts_with("latchkey login"))
        .unwrap_or_else(|| panic!("names the command: {message}"));
    assert_eq!(
        suggested,
        format!("latchkey login --url {}", setup.upstream.mcp_url())
    );
    latchkey::cli::Cli::try_parse_from(suggested.split(' ')).expect("a command latchkey accepts");
    assert!(bridge.finish().await.success());
}

/// What a `polled` call delivered, in order: its progress notifications and its
/// answer's text (or error message).
fn delivered(seen: &[Value]) -> Vec<String> {
    seen.iter()
        .map(|m| match m["method"].as_str() {
            Some("notifications/progress") => format!("progress {}", m["params"]["progress"]),
            Some(other) => other.to_owned(),
            None => m["result"]["content"][0]["text"]
                .as_str()
                .or(m["error"]["message"].as_str())
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

/// The `Last-Event-ID` of every resuming GET the upstream saw.
fn resumptions(upstream: &McpUpstream) -> Vec<latchkey_testkit::RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::GET && header(r, "last-event-id").is_some())
        .collect()
}

/// A POST's SSE stream that the server closes before the response (SEP-1699
/// polling) is resumed with a GET carrying `Last-Event-ID` after the server's
/// `retry`, from the newest id each time, however often it ends; every event reaches
/// the client once, in order, even from a server that repeats the event named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_stream_closed_before_its_response_is_resumed() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-resume");
    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    bridge.initialize().await;

    // Closed right after the priming event, and again after the second progress.
    let started = Instant::now();
    let seen = bridge
        .exchange(
            2,
            "tools/call",
            json!({"name": "polled", "_meta": {"progressToken": "t"},
                   "arguments": {"breaks": [0, 2], "retry": 300, "text": "resumed"}}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        delivered(&seen),
        ["progress 1", "progress 2", "resumed"],
        "{seen:?}"
    );
    let resumed = resumptions(&upstream);
    let ids: Vec<_> = resumed.iter().map(|r| header(r, "last-event-id")).collect();
    assert_eq!(ids, [Some("p1-0"), Some("p1-2")], "from the newest id");
    for request in &resumed {
        assert_eq!(header(request, "mcp-session-id"), Some("s1"));
        assert_eq!(header(request, "mcp-protocol-version"), Some("2025-06-18"));
        assert_eq!(header(request, "mcp-method"), None, "no POST headers");
    }
    assert!(
        elapsed >= Duration::from_millis(600),
        "the retry (300 ms) was waited each time: {elapsed:?}"
    );

    // A server that resumes with the event Last-Event-ID names: not delivered twice.
    let seen = bridge
        .exchange(
            3,
            "tools/call",
            json!({"name": "polled", "_meta": {"progressToken": "u"},
                   "arguments": {"breaks": [1], "repeat": true, "retry": 20}}),
        )
        .await;
    assert_eq!(
        delivered(&seen),
        ["progress 1", "progress 2", "done"],
        "{seen:?}"
    );
    assert_eq!(resumptions(&upstream).len(), 3);
    assert!(bridge.finish().await.success());
}

/// A stream that cannot be resumed (the server lost it: every resumption finds
/// nothing) is given up on after three tries, with a JSON-RPC error for the request,
/// and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_resumed_is_given_up_after_three_tries() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-resume-lost");
    let mut bridge = Bridge::start(by_name(&scratch, &upstream.mcp_url()));
    bridge.initialize().await;
    let seen = bridge
        .exchange(
            2,
            "tools/call",
            json!({"name": "polled", "_meta": {"progressToken": "t"},
                   "arguments": {"breaks": [1], "lost": true, "retry": 50}}),
        )
        .await;
    let answer = seen.last().expect("an answer");
    assert_eq!(answer["error"]["code"], -32603, "{answer}");
    assert_eq!(
        delivered(&seen),
        [
            "progress 1",
            "server \"notes\" ended its answer without a response to this request, and 3 attempts to resume its stream brought none"
        ]
    );
    let resumed = resumptions(&upstream);
    let ids: Vec<_> = resumed.iter().map(|r| header(r, "last-event-id")).collect();
    assert_eq!(ids, [Some("p1-1"); 3], "three tries from the newest id");
    assert_eq!(bridge.call(3, "ping", json!({})).await["result"], json!({}));
    assert!(bridge.finish().await.success());
}

/// Tools whose x-mcp-header annotations are invalid (2026-07-28, SEP-2243; one of
/// each kind in the testkit's list) are left out of tools/list, logged once each
/// with the reason (escaped), and a call of one is refused without reaching the
/// server; the valid tool's arguments are mirrored by type, only where annotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_with_invalid_header_annotations_are_left_out_and_refused() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("stdio-tool-headers");
    let log = scratch.0.join("stderr.log");
    let mut command = by_name(&scratch, &upstream.mcp_url());
    command.args(["--log-level", "debug"]);
    let mut bridge = Bridge::start_logging(command, &log);
    bridge.initialize().await;
    for id in [2, 3] {
        let list = bridge.call(id, "tools/list", json!({})).await;
        let names: Vec<_> = list["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["echo", "malformed", "gated", "polled", "annotated"],
            "{list}"
        );
    }

    let refused = bridge
        .call(
            4,
            "tools/call",
            json!({"name": "invalid_number", "arguments": {"v": 1.5}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("invalid_number") && m.contains("number")),
        "{refused}"
    );

    let answered = bridge
        .call(
            5,
            "tools/call",
            json!({"name": "annotated", "arguments": {"region": "eu-west-1", "priority": 42,
                   "verbose": false, "opts": {"tier": 3}, "score": 3.5}}),
        )
        .await;
    assert!(answered.get("result").is_some(), "{answered}");
    assert!(bridge.finish().await.success());

    let calls: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| header(r, "mcp-method") == Some("tools/call"))
        .collect();
    assert_eq!(calls.len(), 1, "the refused call never reached the server");
    let mut mirrored: Vec<_> = calls[0]
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mcp-param-"))
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
        .collect();
    mirrored.sort();
    assert_eq!(
        mirrored,
        [
            "mcp-param-priority: 42",
            "mcp-param-region: eu-west-1",
            "mcp-param-tier: 3",
            "mcp-param-verbose: false"
        ],
        "by type, and none for the unannotated number"
    );

    let log = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("leaving a tool out of tools/list"))
        .collect();
    assert_eq!(
        lines.len(),
        8,
        "each invalid tool once, though listed twice: {log}"
    );
    assert!(
        lines.iter().any(|l| l.contains(r"Region\t1")) && !log.contains("Region\t1"),
        "the server's text escaped: {log}"
    );
}
