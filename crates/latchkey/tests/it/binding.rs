//! Authorization server binding (MCP 2026-07-28), through the daemon: the upstream
//! moves from authorization server A to B while latchkey holds A's tokens. Tokens,
//! refresh tokens and a configured client secret belong to the issuer they came from
//! and never go to another; the old tokens are revoked at A; a pinned issuer is never
//! left. Every value B received is looked at, and the client never sees a 401.

use std::sync::{Arc, Mutex, PoisonError};

use latchkey_testkit::{AuthOptions, AuthServer, MovingUpstream, moving_upstream};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Daemon, ScriptedBrowser, Store, TempDir, eventually, last_token};

/// The client registered by hand at A, and its secret.
const CLIENT_ID: &str = "latchkey-notes";
const SECRET: &str = "s3cret-only-for-a";

/// The upstream, the daemon in front of it (server `notes`), and the daemon's log.
struct Scene {
    moving: MovingUpstream,
    daemon: Daemon,
    log: Log,
    config: Config,
}

/// The daemon's config: its store, and the lines of `[servers.notes.oauth]`.
struct Config {
    store: Store,
    oauth: Vec<String>,
}

impl Config {
    async fn start(&self, moving: &MovingUpstream) -> Daemon {
        let mut lines = vec![
            "[servers.notes.oauth]",
            // A login that cannot finish fails the test in seconds, not minutes.
            "auth_timeout_secs = 10",
        ];
        lines.extend(self.oauth.iter().map(String::as_str));
        Daemon::builder()
            .store(self.store.clone())
            .server("notes", &moving.upstream.mcp_url(), &lines)
            .browser(ScriptedBrowser::approving())
            .start()
            .await
    }
}

impl Scene {
    /// Starts the upstream with A set up by `a` (B as `b`), then a daemon with
    /// `store` and the `[servers.notes.oauth]` lines `oauth` gives.
    async fn start(
        a: AuthOptions,
        b: AuthOptions,
        store: Store,
        oauth: impl FnOnce(&MovingUpstream) -> Vec<String>,
    ) -> Self {
        let log = Log::capture();
        let moving = moving_upstream("127.0.0.1:0".parse().expect("address"), a, b)
            .await
            .expect("moving upstream");
        let config = Config {
            store,
            oauth: oauth(&moving),
        };
        Self::run(moving, log, config).await
    }

    async fn run(moving: MovingUpstream, log: Log, config: Config) -> Self {
        let daemon = config.start(&moving).await;
        Self {
            moving,
            daemon,
            log,
            config,
        }
    }

    /// Stops the daemon, runs `meanwhile`, and starts a new one with the same config.
    async fn restart(self, meanwhile: impl FnOnce(&MovingUpstream)) -> Self {
        let Self {
            moving,
            daemon,
            log,
            config,
        } = self;
        daemon.shutdown().await.expect("the daemon stops");
        meanwhile(&moving);
        Self::run(moving, log, config).await
    }

    /// An `initialize` through the daemon: its status and JSON body.
    async fn request(&self) -> (StatusCode, Value) {
        let response = self.daemon.initialize("/notes").await;
        let status = response.status();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_ne!(
            status,
            StatusCode::UNAUTHORIZED,
            "a 401 reached the client: {body}"
        );
        (status, body)
    }

    /// Logs in at A and uses the server once more with the same token; returns what
    /// latchkey holds from A, as A issued it.
    async fn logged_in_at_a(&self) -> Held {
        let (status, body) = self.request().await;
        assert_eq!(status, StatusCode::OK, "login at A: {body}");
        let (status, body) = self.request().await;
        assert_eq!(status, StatusCode::OK, "with A's token: {body}");
        let a = &self.moving.a;
        assert_eq!(a.token_requests(), ["authorization_code"], "one login at A");
        let refresh_tokens = a.refresh_tokens();
        assert_eq!(refresh_tokens.len(), 1, "{refresh_tokens:?}");
        let held = Held {
            values: a.issued_tokens(),
            refresh_token: refresh_tokens[0].clone(),
        };
        assert!(
            held.values.iter().any(|t| !refresh_tokens.contains(t)),
            "an access token too: {:?}",
            held.values
        );
        held
    }

    /// Moves the upstream to B and sends the next request.
    async fn move_to_b(&self) -> (StatusCode, Value) {
        self.moving.move_to_b();
        self.request().await
    }

    /// Fails if B received any of `values` anywhere, or any refresh token at all.
    fn assert_b_never_saw(&self, values: &[String]) {
        let b = &self.moving.b;
        for value in values {
            let carrying: Vec<_> = b
                .received()
                .into_iter()
                .filter(|r| r.carries(value))
                .collect();
            assert!(carrying.is_empty(), "B received {value:?}: {carrying:#?}");
        }
        assert_eq!(
            b.presented_refresh_tokens(),
            Vec::<String>::new(),
            "no refresh token at B"
        );
    }

    /// Waits for A to see the revocation of `token` (it runs in the background).
    async fn assert_revoked_at_a(&self, token: &str) {
        let a = &self.moving.a;
        eventually(&format!("A sees {token} revoked"), || {
            a.revoked().iter().any(|t| t == token)
        })
        .await;
    }

    /// The daemon's warning naming both issuers.
    fn assert_logged_the_move(&self) {
        let (old, new) = (self.moving.a.issuer(), self.moving.b.issuer());
        let log = self.log.text();
        assert!(
            log.lines().any(|line| line.contains("WARN")
                && line.contains(&format!("old_issuer={old}"))
                && line.contains(&format!("new_issuer={new}"))),
            "no warning naming old_issuer={old} and new_issuer={new}:\n{log}"
        );
    }
}

/// What latchkey holds from A: every token A issued, and the refresh token among them.
struct Held {
    values: Vec<String>,
    refresh_token: String,
}

/// Options for a server that knows the client registered by hand.
fn preregistered() -> AuthOptions {
    AuthOptions {
        preregistered: Some((
            CLIENT_ID.into(),
            Some(SECRET.into()),
            "client_secret_basic".into(),
        )),
        ..AuthOptions::default()
    }
}

/// The config's lines for that client.
fn configured_client() -> Vec<String> {
    vec![
        format!("client_id = {CLIENT_ID:?}"),
        format!("client_secret = {SECRET:?}"),
    ]
}

/// The JSON-RPC error message of a 503 from latchkey.
fn refusal(status: StatusCode, body: &Value) -> &str {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["jsonrpc"], "2.0", "a JSON-RPC error: {body}");
    body["error"]["message"].as_str().expect("an error message")
}

/// The requests to a server's endpoints that take or hand out credentials.
fn credential_requests(b: &AuthServer) -> Vec<String> {
    [
        "/authorize",
        "/token",
        "/register",
        "/revoke",
        "/device_authorization",
    ]
    .iter()
    .flat_map(|endpoint| b.paths().into_iter().filter(move |p| p.ends_with(endpoint)))
    .collect()
}

#[tokio::test]
async fn a_move_to_another_server_revokes_at_the_old_and_registers_and_logs_in_at_the_new() {
    let scene = Scene::start(
        AuthOptions::default(),
        AuthOptions::default(),
        Store::Memory,
        |_| Vec::new(),
    )
    .await;
    let held = scene.logged_in_at_a().await;
    let (a, b) = (&scene.moving.a, &scene.moving.b);
    let old_client = a.clients().pop().expect("registered at A");

    let (status, body) = scene.move_to_b().await;
    assert_eq!(status, StatusCode::OK, "the request after the move: {body}");
    let registered: Vec<_> = b
        .clients()
        .into_iter()
        .filter(|c| !c.request.is_null())
        .collect();
    assert_eq!(
        registered.len(),
        1,
        "one new registration at B: {registered:?}"
    );
    assert_eq!(b.token_requests(), ["authorization_code"], "one login at B");
    let last_token = last_token(&scene.moving.upstream);
    assert!(
        b.access_token(&last_token).is_some(),
        "B's token: {last_token}"
    );

    let mut a_values = held.values.clone();
    a_values.push(old_client.client_id.clone());
    a_values.extend(old_client.client_secret.clone());
    scene.assert_b_never_saw(&a_values);
    scene.assert_revoked_at_a(&held.refresh_token).await;
    scene.assert_logged_the_move();
}

#[tokio::test]
async fn a_configured_secret_never_goes_to_the_server_moved_to() {
    // B would take the same client (as a server that accepts anything would), so a
    // latchkey that sends the secret there gets as far as B's token endpoint.
    let scene = Scene::start(preregistered(), preregistered(), Store::Memory, |_| {
        configured_client()
    })
    .await;
    let held = scene.logged_in_at_a().await;
    let a = &scene.moving.a;
    assert!(
        a.presented_client_secrets().iter().all(|s| s == SECRET)
            && !a.presented_client_secrets().is_empty(),
        "the secret went to A, its own server: {:?}",
        a.presented_client_secrets()
    );

    let (status, body) = scene.move_to_b().await;
    let message = refusal(status, &body);
    let (old, new) = (scene.moving.a.issuer(), scene.moving.b.issuer());
    assert!(
        message.contains("issuer =") && message.contains(&old) && message.contains(&new),
        "names issuer = and both servers: {message}"
    );
    // A client that tries again gets the same answer.
    let (status, body) = scene.request().await;
    assert!(refusal(status, &body).contains("issuer ="), "{body}");

    let b = &scene.moving.b;
    assert_eq!(b.presented_client_secrets(), Vec::<String>::new());
    let mut secret_and_tokens = held.values.clone();
    secret_and_tokens.push(SECRET.to_owned());
    scene.assert_b_never_saw(&secret_and_tokens);
    scene.assert_revoked_at_a(&held.refresh_token).await;
}

#[tokio::test]
async fn a_pinned_issuer_is_never_left() {
    let scene = Scene::start(preregistered(), preregistered(), Store::Memory, |moving| {
        let mut lines = configured_client();
        lines.push(format!("issuer = {:?}", moving.a.issuer()));
        lines
    })
    .await;
    let held = scene.logged_in_at_a().await;

    let (status, body) = scene.move_to_b().await;
    let message = refusal(status, &body);
    let pin = format!("issuer = {:?}", scene.moving.a.issuer());
    assert!(message.contains(&pin), "names the pin {pin}: {message}");

    let b = &scene.moving.b;
    assert_eq!(
        credential_requests(b),
        Vec::<String>::new(),
        "B got no request to /authorize, /token, /register, /revoke or /device_authorization"
    );
    let mut secret_and_tokens = held.values;
    secret_and_tokens.push(SECRET.to_owned());
    scene.assert_b_never_saw(&secret_and_tokens);
}

#[tokio::test]
async fn a_record_from_before_the_binding_keeps_the_secret_at_the_issuer_of_its_tokens() {
    // Records written before latchkey remembered where a configured secret was used
    // say only which issuer the tokens are from.
    let state = TempDir::new("binding-upgrade");
    let store = Store::File(state.0.clone());
    let scene = Scene::start(preregistered(), preregistered(), store, |_| {
        configured_client()
    })
    .await;
    let held = scene.logged_in_at_a().await;
    let scene = scene
        .restart(|moving| {
            let issuer = Value::String(moving.a.issuer());
            let forgotten = edit_record(&state, |record| {
                record
                    .as_object_mut()
                    .and_then(|r| r.remove("configured_client_issuer"))
            });
            assert_eq!(forgotten, Some(issuer), "the record remembered A");
            moving.move_to_b();
        })
        .await;

    let (status, body) = scene.request().await;
    assert!(refusal(status, &body).contains("issuer ="), "{body}");
    let mut secret_and_tokens = held.values.clone();
    secret_and_tokens.push(SECRET.to_owned());
    scene.assert_b_never_saw(&secret_and_tokens);
    scene.assert_revoked_at_a(&held.refresh_token).await;
}

/// Changes the only credential record in the state dir `state`.
fn edit_record<T>(state: &TempDir, edit: impl FnOnce(&mut Value) -> T) -> T {
    let dir = state.0.join("credentials");
    let mut records = std::fs::read_dir(&dir)
        .expect("the credentials dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"));
    let path = records.next().expect("a record");
    assert!(records.next().is_none(), "one record");
    let mut record: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
    let edited = edit(&mut record);
    std::fs::write(&path, serde_json::to_vec(&record).expect("JSON")).expect("write");
    edited
}

/// The `tracing` events of this test's thread (the daemon runs on the test's
/// single-threaded runtime), formatted as the daemon's plain log would be.
struct Log {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Log {
    fn capture() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(lines.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
