//! What a configured server becomes at run time, built here for every front end
//! and command: its [`Upstream`] (the connection pool of the hot path, its OAuth
//! session, what latchkey has seen of it), the HTTP clients, a command's
//! [`Shared`] store and sessions, and the unauthenticated [`probe`]. Below `proxy`,
//! `stdio`, `status`, `login` and `report`, which all use it.

mod pool;
mod traffic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::HeaderValue;
use latchkey_auth::BearerChallenge;
use latchkey_auth::registration::ConfiguredClient;
use latchkey_auth::session::{AuthSettings, Browser, Credentials, ServerAuth};
use latchkey_auth::target::Clients;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, OAuth, OAuthConfig, Server};
use crate::{credentials, local_key};

pub(crate) use pool::Connector;
pub(crate) use traffic::Seen;

/// One timeout over DNS, TCP and TLS, for every connection to a server.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sent when the client sends no `User-Agent` of its own.
pub(crate) const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("latchkey/", env!("CARGO_PKG_VERSION")));
/// The least time a browser login gets before its redirect listener closes.
const FLOW_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) use crate::callback::{LOGIN_PATH, login_path};

/// Said of a login that gave no refresh token.
pub(crate) const NO_REFRESH_TOKEN: &str = "no refresh token: the next expiry needs a browser login";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no server {name:?} in the config; configured: {known}")]
    UnknownServer { name: String, known: String },
    #[error(
        "server {0:?} has oauth = false, so there is nothing to log in to; remove that line to let latchkey run OAuth"
    )]
    OAuthDisabled(String),
    #[error(transparent)]
    Store(#[from] credentials::StoreUnavailable),
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// A stored record that cannot be read: reported, never overwritten.
    #[error("login to {name:?} failed: {message}")]
    Failed { name: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {name:?} at {url}: {cause}; check the url in the config and the network")]
    Unreachable {
        name: String,
        url: String,
        cause: String,
    },
}

/// One configured server and what latchkey has seen of it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) config: Server,
    /// Ends this server's standalone GET streams: at shutdown (a child of the
    /// proxy's token), or when a reload removes or changes the server, so that its
    /// clients reconnect to what the config now says.
    pub(crate) streams: CancellationToken,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// For `transport = "auto"`: what the server turned out to speak.
    pub(crate) detected: AtomicU8,
    /// `None` for `oauth = false`.
    pub(crate) auth: Option<UpstreamAuth>,
    /// The environment sends this server's requests through a proxy.
    pub(crate) proxied: bool,
    /// Connections to the server, for forwarded requests (unless `proxied`).
    pub(crate) pool: pool::Pool,
    /// The key of its key URL, when `local_key = true`.
    pub(crate) key: Option<local_key::Held>,
    /// Its requests since start, for the status page.
    pub(crate) traffic: traffic::Traffic,
}

pub(crate) const UNKNOWN: u8 = 0;
pub(crate) const STREAMABLE: u8 = 1;
pub(crate) const LEGACY: u8 = 2;

/// What every [`Upstream`] of a daemon or bridge is built with.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) oauth: Clients,
    pub(crate) browser: Arc<dyn Browser>,
    pub(crate) credentials: Credentials,
    /// Opens the connections of each server's pool.
    pub(crate) connector: Connector,
    /// Cancelled at shutdown; each server's streams token is a child of it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) waits: LoginWait,
    /// The daemon's address, for the sign-in start page its errors name; `None` in
    /// `latchkey stdio`, which serves none.
    pub(crate) daemon: Option<SocketAddr>,
}

/// An OAuth-protected server's token source.
#[derive(Debug)]
pub(crate) struct UpstreamAuth {
    pub(crate) session: Arc<ServerAuth>,
    /// How long a request waits for a login.
    pub(crate) timeout: Duration,
    /// How long it waits when the person may not be there ([`LoginWait`]).
    pub(crate) login_wait: Duration,
    pub(crate) waits: LoginWait,
    pub(crate) daemon: Option<SocketAddr>,
    /// What the status page's last sign-out could not do (a token not revoked), shown
    /// there until the next sign-in.
    notice: Mutex<Option<String>>,
}

/// How long a request that meets a login waits for it: the front end's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginWait {
    /// The daemon: up to `auth_timeout_secs` once the person was reached (a browser
    /// opened, a notification shown), else `login_wait_secs`.
    WhileReached,
    /// `latchkey stdio`: `login_wait_secs` at most. Its client cannot show a sign-in
    /// link, and gives up on a silent server sooner than a login takes.
    Briefly,
}

impl UpstreamAuth {
    pub(crate) fn notice(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.notice.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Upstream {
    /// What `server` becomes, its stored credentials not yet loaded.
    pub(crate) fn new(server: &Server, parts: &Parts) -> Arc<Self> {
        let auth = match &server.oauth {
            OAuth::Disabled => None,
            OAuth::Enabled(oauth) => Some(UpstreamAuth {
                session: ServerAuth::new(
                    auth_settings(server, oauth),
                    parts.oauth.clone(),
                    parts.browser.clone(),
                    parts.credentials.clone(),
                ),
                timeout: oauth.auth_timeout,
                login_wait: oauth.login_wait.min(oauth.auth_timeout),
                waits: parts.waits,
                daemon: parts.daemon,
                notice: Mutex::new(None),
            }),
        };
        Arc::new(Upstream {
            config: server.clone(),
            streams: parts.shutdown.child_token(),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            detected: AtomicU8::new(UNKNOWN),
            auth,
            proxied: pool::system_proxy(&server.uri),
            pool: pool::Pool::new(&parts.connector, &server.uri),
            key: server.local_key.then(local_key::Held::default),
            traffic: traffic::Traffic::default(),
        })
    }

    /// The last transport failure, if the most recent attempt failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record(&self, outcome: Result<(), &str>) {
        match outcome {
            // The common case costs one atomic load.
            Ok(()) if !self.failing.load(Ordering::Relaxed) => {}
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(cause) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(cause.to_owned());
                self.failing.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// The upstream HTTP client, for the proxy and for `latchkey login`.
pub(crate) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    http_builder().build()
}

/// The clients for OAuth requests: the same settings, and the target rule.
pub(crate) fn oauth_clients() -> Result<Clients, reqwest::Error> {
    Clients::new(http_builder)
}

fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // A transparent proxy hands redirects to the client; following them here
        // would also send the credentials to wherever they point.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(AGENT)
        .use_preconfigured_tls(pool::reqwest_tls())
}

pub(crate) fn auth_settings(server: &Server, oauth: &OAuthConfig) -> AuthSettings {
    AuthSettings {
        server: server.name.clone(),
        login_command: server.login_command.clone(),
        // `--url` servers are all named "remote": those stay keyed by their URL.
        named: !server.adhoc,
        resource_url: server.url.clone(),
        grant: oauth.grant.clone(),
        client: oauth.client_id.clone().map(|client_id| ConfiguredClient {
            client_id,
            client_secret: oauth.client_secret.clone(),
            private_key: oauth.private_key.clone(),
        }),
        client_metadata_url: oauth.client_metadata_url.as_ref().map(ToString::to_string),
        redirect_port: oauth.redirect_port,
        send_resource: oauth.send_resource,
        authorize_params: oauth.authorize_params.clone(),
        // The browser flow may outlast one request's wait; it keeps going for the next.
        flow_timeout: oauth.auth_timeout.max(FLOW_TIMEOUT),
        issuer: oauth.issuer.clone(),
        dpop: oauth.dpop,
    }
}

/// What every session of one command shares: the configured store, opened once,
/// and the HTTP clients.
pub(crate) struct Shared {
    pub(crate) credentials: Credentials,
    /// The store's kind and location, for messages.
    pub(crate) store: String,
    /// For requests to the server itself.
    pub(crate) http: reqwest::Client,
    oauth: latchkey_auth::target::Clients,
}

/// Opens the configured store (warning when `auto` falls back to files).
pub(crate) async fn open(config: &Config) -> Result<Shared, ServerError> {
    let opened = credentials::open(config.store, config.state_dir.as_deref()).await?;
    if let Some(why) = &opened.fallback {
        tracing::warn!("{why}");
    }
    let store = format!(
        "{} ({})",
        opened.credentials.store.kind(),
        opened.credentials.store.location()
    );
    Ok(Shared {
        credentials: opened.credentials,
        store,
        http: http_client()?,
        oauth: oauth_clients()?,
    })
}

/// A server's session on the shared store, with its stored record loaded.
pub(crate) async fn session_for(
    config: &Config,
    name: &str,
    browser: Arc<dyn Browser>,
    shared: &Shared,
) -> Result<Arc<ServerAuth>, ServerError> {
    let server = find(config, name)?;
    let OAuth::Enabled(oauth) = &server.oauth else {
        return Err(ServerError::OAuthDisabled(name.to_owned()));
    };
    let session = ServerAuth::new(
        auth_settings(server, oauth),
        shared.oauth.clone(),
        browser,
        shared.credentials.clone(),
    );
    // A record that cannot be read is reported, not overwritten.
    session.restore().await.map_err(|e| ServerError::Failed {
        name: name.to_owned(),
        message: e.message,
    })?;
    Ok(session)
}

pub(crate) fn find<'a>(
    config: &'a Config,
    name: &str,
) -> Result<&'a crate::config::Server, ServerError> {
    config
        .servers
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ServerError::UnknownServer {
            name: name.to_owned(),
            known: config.server_names(),
        })
}

/// How a server answered an unauthenticated `initialize`.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) status: reqwest::StatusCode,
    /// Its `WWW-Authenticate` challenge (the scopes it asks for, where its metadata
    /// is); without one, discovery uses the well-known URLs.
    pub(crate) challenge: Option<BearerChallenge>,
}

/// An unauthenticated `initialize`, for the server's own challenge. A session it
/// opens (the server needed no authorization) is ended at once.
pub(crate) async fn probe(
    http: &reqwest::Client,
    server: &crate::config::Server,
) -> Result<Probe, ProbeError> {
    let body = json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "latchkey-login", "version": env!("CARGO_PKG_VERSION")}
        }
    });
    let mut request = http
        .post(server.url.clone())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("mcp-method", "initialize")
        .json(&body);
    for (key, value) in &server.headers {
        request = request.header(key, value);
    }
    let response = request.send().await.map_err(|e| ProbeError::Unreachable {
        name: server.name.clone(),
        url: crate::redact::redacted(&server.url),
        cause: crate::error::describe(e),
    })?;
    let status = response.status();
    if status.is_success() {
        // A session may have started: end it, with the headers that opened it (a
        // server behind an API key refuses a DELETE without).
        if let Some(id) = response.headers().get("mcp-session-id").cloned() {
            let mut end = http
                .delete(server.url.clone())
                .header("mcp-session-id", id)
                .header("mcp-protocol-version", "2025-11-25");
            for (key, value) in &server.headers {
                end = end.header(key, value);
            }
            drop(end.send().await);
        }
    }
    let challenge = BearerChallenge::from_headers(
        response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    Ok(Probe { status, challenge })
}
