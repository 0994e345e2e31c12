//! Test harness: the scenes tests are set in, each from a builder, so that a test
//! states only what it is about. A latchkey daemon on port 0 in the test's runtime
//! with the servers and the store a test names ([`Daemon::builder`]), built from
//! config text so that every test also goes through the real config parser; an
//! upstream protected by an authorization server with its switches ([`protected`]);
//! the person at the browser ([`ScriptedBrowser`]); and a client's requests to the
//! local endpoint, of a daemon here or of a `latchkey serve` ([`Local`]).

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use latchkey::callback::Listener;
use latchkey::daemon::{self, DaemonError};
use latchkey_auth::Secret;
use latchkey_auth::session::{BoxFuture, Browser, Redirect, RedirectCheck};
use latchkey_testkit::{AuthOptions, AuthServer, Grant, McpUpstream, protected_upstream};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// A server table's line that sends the upstream `X-Api-Key: API_KEY`, the value
/// of `$TEST_API_KEY` (which a daemon here is given).
pub const API_KEY_HEADER: &str = "headers = { \"X-Api-Key\" = \"${TEST_API_KEY}\" }";
pub const API_KEY: &str = "static-key-123";

/// Where a daemon keeps its credentials.
#[derive(Clone)]
pub enum Store {
    Memory,
    /// A file store in this `state_dir`.
    File(PathBuf),
    Keyring,
}

pub struct DaemonBuilder {
    listen: String,
    store: Store,
    top: Vec<String>,
    servers: Vec<String>,
    browser: Arc<dyn Browser>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            // Credentials stay in memory unless a test chooses a store.
            store: Store::Memory,
            top: Vec::new(),
            servers: Vec::new(),
            browser: Arc::new(NoBrowser),
        }
    }
}

impl DaemonBuilder {
    pub fn listen(mut self, addr: &str) -> Self {
        addr.clone_into(&mut self.listen);
        self
    }

    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// A top-level config line, such as `allowed_origins = ["https://app.example"]`.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.to_owned());
        self
    }

    /// A `[servers.NAME]` table with `url` and any extra lines; one call a server.
    pub fn server(mut self, name: &str, url: &str, extra: &[&str]) -> Self {
        let mut table = format!("[servers.{name}]\nurl = {url:?}\n");
        for line in extra {
            table.push_str(line);
            table.push('\n');
        }
        self.servers.push(table);
        self
    }

    /// The person logins open a browser for; without one, every login fails.
    pub fn browser(mut self, browser: Arc<dyn Browser>) -> Self {
        self.browser = browser;
        self
    }

    /// The config text, for a daemon here or for the binary.
    pub fn toml(&self) -> String {
        let store = match &self.store {
            Store::Memory => "store = \"memory\"\n".to_owned(),
            Store::File(dir) => format!("store = \"file\"\nstate_dir = {dir:?}\n"),
            Store::Keyring => "store = \"keyring\"\n".to_owned(),
        };
        format!(
            "listen = {:?}\nshutdown_timeout_secs = 5\n{store}{}\n{}",
            self.listen,
            self.top.join("\n"),
            self.servers.join("\n")
        )
    }

    pub async fn start(self) -> Daemon {
        let text = self.toml();
        let config = latchkey::config::parse(Path::new("test.toml"), &text, |name| {
            (name == "TEST_API_KEY").then(|| API_KEY.to_owned())
        })
        .unwrap_or_else(|e| panic!("test config is valid: {e}\n{text}"));
        let listener = TcpListener::bind(config.listen).await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(daemon::run_with_browser(
            listener,
            config,
            stop.clone().cancelled_owned(),
            self.browser,
        ));
        Daemon {
            local: Local { addr },
            stop,
            handle,
        }
    }
}

pub struct Daemon {
    local: Local,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), DaemonError>>,
}

impl Deref for Daemon {
    type Target = Local;

    fn deref(&self) -> &Local {
        &self.local
    }
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
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

/// What an MCP client says it takes.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// latchkey's local endpoint, as a client on this machine sees it.
pub struct Local {
    pub addr: SocketAddr,
}

impl Local {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A POST of `body` to `path` as an MCP client sends it: JSON or SSE accepted.
    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        client()
            .post(self.url(path))
            .header("accept", ACCEPT_BOTH)
            .json(body)
    }

    /// An `initialize` to `path`, as an MCP client sends it; whatever the answer.
    pub async fn initialize(&self, path: &str) -> reqwest::Response {
        self.post(path, &initialize())
            .send()
            .await
            .expect("initialize")
    }

    /// A POST of `body` as plain JSON, from a client that says nothing of what it
    /// takes; whatever the answer.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// Initializes a session at `path`, which must succeed; returns its id.
    pub async fn open_session(&self, path: &str) -> String {
        let response = self.initialize(path).await;
        assert_eq!(response.status(), 200, "initialize via {path}");
        response.headers()["mcp-session-id"]
            .to_str()
            .expect("session id")
            .to_owned()
    }

    /// Opens the GET stream of `session` at `path`, which must succeed, and reads it
    /// until the upstream's first event; the stream and what it has read.
    pub async fn open_stream(&self, path: &str, session: &str) -> (reqwest::Response, String) {
        let mut stream = stream_client()
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .send()
            .await
            .expect("GET stream");
        assert_eq!(stream.status(), 200);
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "stream open").await;
        (stream, seen)
    }

    /// The status page as a client taking `accept` gets it.
    pub async fn page(&self, accept: &str) -> String {
        client()
            .get(self.url("/"))
            .header("accept", accept)
            .send()
            .await
            .expect("GET /")
            .text()
            .await
            .expect("page")
    }

    /// The status page, as JSON.
    pub async fn status(&self) -> Value {
        client()
            .get(self.url("/"))
            .send()
            .await
            .expect("GET /")
            .json()
            .await
            .expect("status JSON")
    }
}

/// Fails unless `response` is a 200; the failure shows its body.
pub async fn assert_ok(response: reqwest::Response) {
    let status = response.status();
    assert_eq!(status, 200, "{status}: {:?}", response.text().await);
}

/// An MCP upstream that requires tokens from a testkit authorization server, which
/// the switches below set up (the defaults: dynamic registration, PKCE, refresh
/// tokens, an hour's access tokens).
pub fn protected() -> ProtectedBuilder {
    ProtectedBuilder(AuthOptions::default())
}

pub struct ProtectedBuilder(AuthOptions);

impl ProtectedBuilder {
    pub fn token_lifetime(mut self, secs: u64) -> Self {
        self.0.token_lifetime = secs;
        self
    }

    /// A new refresh token on every refresh; the old one is revoked.
    pub fn rotating_refresh_tokens(mut self) -> Self {
        self.0.rotate_refresh_tokens = true;
        self
    }

    /// Whether it issues refresh tokens at all.
    pub fn refresh_tokens(mut self, issued: bool) -> Self {
        self.0.no_refresh_tokens = !issued;
        self
    }

    /// Every refresh is refused with this OAuth error.
    pub fn refusing_refresh(mut self, error: &str) -> Self {
        self.0.refuse_refresh = Some(error.to_owned());
        self
    }

    /// Whether it offers dynamic client registration.
    pub fn dcr(mut self, offered: bool) -> Self {
        self.0.dcr = offered;
        self
    }

    /// Client ID metadata documents: any `https://` client_id is a public client.
    pub fn cimd(mut self) -> Self {
        self.0.cimd = true;
        self
    }

    /// The device authorization grant (RFC 8628).
    pub fn device_flow(mut self) -> Self {
        self.0.device = true;
        self
    }

    /// `tools/call` needs `mcp:write`: a token without it meets a step-up.
    pub fn write_scope_for_tools(mut self) -> Self {
        self.0.write_scope_for_tools = true;
        self
    }

    /// `mcp:write` is never granted, however often it is asked for.
    pub fn withholding_write(mut self) -> Self {
        self.0.withhold_write = true;
        self
    }

    /// A client registered ahead of time, authenticating with `client_secret_basic`.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.0.preregistered = Some((id.into(), Some(secret.into()), "client_secret_basic".into()));
        self
    }

    /// Takes the JWT bearer grant with assertions from `issuer`.
    pub fn trusting(mut self, issuer: latchkey_testkit::jwt::TrustedIssuer) -> Self {
        self.0.trusted_assertions.push(issuer);
        self
    }

    /// DPoP (RFC 9449): advertised, proofs checked, tokens bound to the proof's key.
    pub fn dpop(mut self) -> Self {
        self.0.dpop = true;
        self
    }

    /// DPoP with nonces at the token endpoint and the upstream, which announces a
    /// new one on every success.
    pub fn dpop_nonce(mut self) -> Self {
        self.0.dpop = true;
        self.0.dpop_nonce = true;
        self
    }

    /// A broken DPoP server: Bearer tokens even to a request with a proof.
    pub fn dpop_unbound(mut self) -> Self {
        self.0.dpop = true;
        self.0.dpop_unbound = true;
        self
    }

    /// A broken DPoP server: `token_type` DPoP even without a proof.
    pub fn dpop_type_without_proof(mut self) -> Self {
        self.0.dpop = true;
        self.0.dpop_type_without_proof = true;
        self
    }

    /// Before every client id, secret, code and token it issues.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.0.prefix);
        self
    }

    pub async fn start(self) -> Protected {
        let (upstream, auth) = protected_upstream("127.0.0.1:0".parse().expect("address"), self.0)
            .await
            .expect("protected upstream");
        Protected { auth, upstream }
    }
}

pub struct Protected {
    pub auth: AuthServer,
    pub upstream: McpUpstream,
}

impl Protected {
    pub fn mcp_url(&self) -> String {
        self.upstream.mcp_url()
    }

    /// A daemon with this upstream as server `notes`, with `extra` lines in its table.
    pub fn daemon(&self, extra: &[&str]) -> DaemonBuilder {
        Daemon::builder().server("notes", &self.mcp_url(), extra)
    }

    /// The token of the upstream's last request with one, as it was issued.
    pub fn last_grant(&self) -> Grant {
        let token = last_token(&self.upstream);
        self.auth.access_token(&token).expect("issued token")
    }

    /// Authorization code grants so far: the logins in a browser.
    pub fn logins(&self) -> usize {
        self.auth
            .token_requests()
            .iter()
            .filter(|g| *g == "authorization_code")
            .count()
    }
}

/// The access token (Bearer or DPoP) of the last request that `upstream` got with one.
pub fn last_token(upstream: &McpUpstream) -> String {
    upstream
        .requests()
        .iter()
        .rev()
        .find_map(|r| {
            let value = r.headers.get("authorization")?.to_str().ok()?;
            let bearer = value.strip_prefix("Bearer ");
            bearer
                .or_else(|| value.strip_prefix("DPoP "))
                .map(str::to_owned)
        })
        .expect("a request with a token")
}

/// The person at the browser: a scripted HTTP client that follows the authorization
/// URL to latchkey's real loopback listener, as a person who approves at once would.
#[derive(Debug, Default)]
pub struct ScriptedBrowser {
    opened: AtomicUsize,
    /// Never finishes the login (a person who walked away).
    absent: bool,
}

impl ScriptedBrowser {
    pub fn approving() -> Arc<Self> {
        Arc::default()
    }

    pub fn absent() -> Arc<Self> {
        Arc::new(Self {
            absent: true,
            ..Self::default()
        })
    }

    /// How many logins it was opened for.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
}

impl Browser for ScriptedBrowser {
    fn bind(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>> {
        Box::pin(async move {
            let listener = Listener::bind(port).await.map_err(|e| e.to_string())?;
            self.opened.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Scripted {
                listener,
                absent: self.absent,
            }) as Box<dyn Redirect>)
        })
    }
}

struct Scripted {
    listener: Listener,
    absent: bool,
}

impl Redirect for Scripted {
    fn redirect_uri(&self) -> String {
        self.listener.redirect_uri().to_owned()
    }

    fn complete(
        self: Box<Self>,
        url: Url,
        timeout: Duration,
        check: RedirectCheck,
    ) -> BoxFuture<'static, Result<Secret, String>> {
        Box::pin(async move {
            let listener = self.listener.expecting(&url);
            if !self.absent {
                tokio::spawn(async move {
                    let _ = reqwest::get(url).await;
                });
            }
            listener
                .wait(timeout, check)
                .await
                .map_err(|e| e.to_string())
        })
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

/// A client that shows redirects instead of following them.
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
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

/// A TLS acceptor with the certificate `tests/it/tls/NAME.pem` and its key, offering
/// the ALPN protocols `alpn`.
pub fn tls_acceptor(name: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls");
    let certs = CertificateDer::pem_file_iter(format!("{tls}/{name}.pem"))
        .expect("the certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(format!("{tls}/{name}.key")).expect("the key file");
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Reads `stream` a byte at a time up to the end of `terminator`, so that nothing
/// after it is taken; `None` if it closes first.
pub async fn read_head(stream: &mut tokio::net::TcpStream, terminator: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(terminator) {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// tests/interop: the pinned third-party clients and servers, and their scripts.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// `path` under [`interop_dir`], which must be there: scripts/test installs what the
/// repository does not hold (node_modules, the virtualenvs).
pub fn interop(path: &str) -> PathBuf {
    let full = interop_dir().join(path);
    assert!(
        full.exists(),
        "{} is missing: run scripts/test, which installs the pinned third-party parts",
        full.display()
    );
    full
}

/// A directory under the temp dir for one test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("latchkey-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `config.toml` here; its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.0.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A web server on its own loopback port that answers every GET with `page`.
pub async fn html_server(page: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || {
        let page = page.clone();
        async move { axum::response::Html(page) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
