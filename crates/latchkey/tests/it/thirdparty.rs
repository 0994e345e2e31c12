//! A third-party OAuth-protected MCP server behind the real `latchkey` binary.
//!
//! The server is the official TypeScript SDK's example,
//! `examples/server/simpleStreamableHttp.js --oauth --oauth-strict`: an MCP server whose
//! 401s name its protected resource metadata, and a separate in-memory authorization
//! server (dynamic registration, PKCE, `/authorize` that approves at once). With
//! `--oauth-strict` the authorization server refuses a code exchange whose RFC 8707
//! `resource` is not the MCP server's URL, and the MCP server refuses tokens issued for
//! another resource. Nothing about it is written for latchkey.
//!
//! latchkey runs as a user runs it (`latchkey serve`, debug log), with `$BROWSER` set to
//! `tests/interop/conformance/browser.mjs`, which loads the authorization URL and
//! follows the redirects back to latchkey's loopback callback. The official SDK client
//! (`tests/interop/thirdparty/client.mjs`, no auth provider of its own) then initializes,
//! lists the tools and calls `greet` through `http://ADDR/demo`.
//!
//! Proven: latchkey's discovery, registration, authorization and token exchange work
//! against the SDK's own authorization server, with the resource indicator it checks;
//! one login serves the whole session (POST, GET stream, DELETE); the client never
//! sees a 401; and the debug log holds neither the access token (read from the example
//! server's own log) nor `Bearer ` nor `code_verifier` nor an authorization code parameter.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::binary::Serve;
use crate::harness::{TempDir, interop, interop_dir};

/// Everything a child writes to one pipe, read line by line as it comes, so the pipe
/// never fills and the test can look at the whole text at the end.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn text(&self) -> String {
        self.0.lock().expect("lock").clone()
    }

    /// Reads `pipe` until it ends, appending each line.
    fn follow(&self, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let captured = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = captured.0.lock().expect("lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
    }

    /// Waits until the text contains every one of `needles`; false if `child` exits
    /// first. Fails after 30 s.
    async fn wait_for(&self, child: &mut Child, needles: &[&str]) -> bool {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let text = self.text();
                if needles.iter().all(|n| text.contains(n)) {
                    return true;
                }
                if child.try_wait().expect("try_wait").is_some() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {needles:?}:\n{}", self.text()))
    }
}

/// The SDK's example server with OAuth, and its authorization server.
struct Example {
    _child: Child,
    mcp_port: u16,
    stdout: Captured,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Example {
    /// The example's ports default to 3000 and 3001, but `MCP_PORT` and
    /// `MCP_AUTH_PORT` choose them, so it gets two free ones. It cannot be given port 0
    /// (its URLs are built from the ports before it listens), so a port taken by
    /// another test in between is possible: then it exits ("Failed to start server")
    /// before announcing both listeners, and two other ports are tried. (It listens on
    /// every interface, not only loopback: the example has no host setting.)
    async fn start() -> Self {
        let entry = interop(
            "node_modules/@modelcontextprotocol/sdk/dist/esm/examples/server/simpleStreamableHttp.js",
        );
        for _ in 0..5 {
            let (mcp_port, auth_port) = (free_port(), free_port());
            if mcp_port == auth_port {
                continue;
            }
            let mut child = Command::new("node")
                .arg(&entry)
                .args(["--oauth", "--oauth-strict"])
                .env("MCP_PORT", mcp_port.to_string())
                .env("MCP_AUTH_PORT", auth_port.to_string())
                .current_dir(interop_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("node is installed (scripts/test installs it)");
            let stdout = Captured::default();
            stdout.follow(child.stdout.take().expect("piped stdout"));
            Captured::default().follow(child.stderr.take().expect("piped stderr"));
            let mcp = format!("MCP Streamable HTTP Server listening on port {mcp_port}");
            let auth = format!("OAuth Authorization Server listening on port {auth_port}");
            if stdout.wait_for(&mut child, &[&mcp, &auth]).await {
                return Self {
                    _child: child,
                    mcp_port,
                    stdout,
                };
            }
        }
        panic!("the SDK example server exited before listening, five times");
    }

    /// Its resource URL, as it names it in its protected resource metadata (and as
    /// `--oauth-strict` expects the `resource` parameter to be).
    fn mcp_url(&self) -> String {
        format!("http://localhost:{}/mcp", self.mcp_port)
    }

    /// Every access token the MCP server accepted: it logs each request's auth info,
    /// token included, as `token: '<uuid>'`.
    fn accepted_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .stdout
            .text()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("token: '"))
            .filter_map(|rest| rest.split('\'').next())
            .map(str::to_owned)
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    }
}

/// `latchkey serve` on port 0, debug log kept, `$BROWSER` the scripted person.
fn latchkey(config: &Path) -> Serve {
    let browser = interop("conformance/browser.mjs");
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .args(["--log-level", "debug", "serve", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env("BROWSER", format!("node {}", browser.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Serve::new(command).logged()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_oauth_example_server_through_the_binary() {
    let example = Example::start().await;
    let dir = TempDir::new("thirdparty");
    let config = dir.write_config(&format!(
        "store = \"memory\"\n[servers.demo]\nurl = {:?}\n[servers.demo.oauth]\nauth_timeout_secs = 10\n",
        example.mcp_url()
    ));
    let latchkey = latchkey(&config).start().await;

    let name = format!("latchkey-{}", std::process::id());
    let output = Command::new("node")
        .arg(interop("thirdparty/client.mjs"))
        .arg(latchkey.url("/demo"))
        .arg(&name)
        .current_dir(interop_dir())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(40), output)
        .await
        .expect("SDK client finished in time")
        .expect("node runs");
    let (code, log) = latchkey.stop("TERM").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "SDK client failed ({}):\nstdout: {stdout}\nstderr: {}\nlatchkey log:\n{log}\nexample server:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        example.stdout.text()
    );
    let summary: Value = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary: {stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(
        summary["server"], "simple-streamable-http-server",
        "{summary}"
    );
    assert!(
        summary["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "greet")),
        "{summary}"
    );
    assert_eq!(summary["greeting"], format!("Hello, {name}!"), "{summary}");
    assert_eq!(summary["isError"], false, "{summary}");

    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("waiting for the login in the browser") && log.contains("authorized"),
        "latchkey ran the browser login: {log}"
    );
    assert!(log.contains("DEBUG"), "the log is at debug level: {log}");
    for method in ["GET", "DELETE"] {
        assert!(
            log.contains(&format!("method={method} status=200")),
            "the session's {method} went through with the same login: {log}"
        );
    }

    let server_log = example.stdout.text();
    assert!(
        server_log.contains(&format!("href: '{}'", example.mcp_url())),
        "the token was issued for this resource (RFC 8707): {server_log}"
    );
    let tokens = example.accepted_tokens();
    assert_eq!(
        tokens.len(),
        1,
        "one login, one token for every request: {tokens:?}"
    );
    let token = tokens[0].as_str();
    // `?code=` and `&code=`: the callback URL or the token request body.
    for secret in [token, "Bearer ", "code_verifier", "?code=", "&code="] {
        assert!(
            !log.contains(secret),
            "{secret:?} reached latchkey's log:\n{log}"
        );
    }
}
