//! Third-party MCP parts through latchkey: the official TypeScript SDK client talks to
//! the official `server-everything` via the local endpoint. The npm packages are pinned
//! in `tests/interop/package-lock.json` and installed by `scripts/test`; if they are
//! missing these tests fail, they never skip.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{Daemon, interop, interop_dir};

/// `server-everything` in one of its HTTP modes, on a free loopback port.
pub(crate) struct Everything {
    _child: Child,
    pub(crate) port: u16,
}

impl Everything {
    /// Starts it on a free port and waits for its "listening on port N" line, so a
    /// port taken by another test in between shows up as an exit, and another port
    /// is tried, rather than as a client talking to the wrong server.
    pub(crate) async fn start(mode: &str) -> Self {
        let entry = interop("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut child = Command::new("node")
                .arg(&entry)
                .arg(mode)
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("node is installed (scripts/test installs it)");
            // It announces itself on stderr.
            let stderr = child.stderr.take().expect("piped stderr");
            let mut lines = BufReader::new(stderr).lines();
            let listening = format!("port {port}");
            let ready = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains(&listening) {
                        return true;
                    }
                }
                false
            })
            .await
            .expect("server-everything started in time");
            if ready {
                // Keep reading so the child never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Self {
                    _child: child,
                    port,
                };
            }
        }
        panic!("server-everything {mode} exited before listening, five times");
    }
}

/// Runs the SDK client script against `url` and returns its JSON summary.
async fn sdk_client(url: &str) -> Value {
    let output = Command::new("node")
        .arg(interop_dir().join("client.mjs"))
        .arg(url)
        .current_dir(interop_dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("SDK client finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "SDK client failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("summary line");
    serde_json::from_str(summary).expect("summary is JSON")
}

/// The SDK client's whole session with server-everything in `mode`, through the
/// daemon's server `name`, which is server-everything's `path`.
async fn full_session(mode: &str, name: &str, path: &str) {
    let everything = Everything::start(mode).await;
    let url = format!("http://127.0.0.1:{}{path}", everything.port);
    let daemon = Daemon::builder().server(name, &url, &[]).start().await;
    let summary = sdk_client(&daemon.url(&format!("/{name}"))).await;
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["tools"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(summary["resourceRead"], true, "{summary}");
    assert!(
        summary["notifications"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_client_to_server_everything_streamable_http() {
    full_session("streamableHttp", "everything", "/mcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_streamable_client_bridged_to_server_everything_sse() {
    full_session("sse", "legacy", "/sse").await;
}
