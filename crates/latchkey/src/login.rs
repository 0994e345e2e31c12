//! `latchkey login <server>`: authorize ahead of time, with or without a daemon
//! running. The tokens go to the configured store, where the daemon and every
//! `latchkey stdio` find them (they read the store again on their next 401).
//! `latchkey logout <server>` revokes them and deletes the record.

use std::sync::Arc;
use std::time::SystemTime;

use latchkey_auth::BearerChallenge;
use latchkey_auth::session::{AuthStatus, Browser, Credentials, ServerAuth, Trigger};
use serde_json::json;

use crate::config::{Config, OAuth};
use crate::credentials;
use crate::proxy::{auth_settings, http_client, oauth_clients};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
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
    #[error("cannot reach {name:?} at {url}: {cause}; check the url in the config and the network")]
    Unreachable {
        name: String,
        url: String,
        cause: String,
    },
    #[error("login to {name:?} failed: {message}")]
    Failed { name: String, message: String },
    #[error("server {0:?} has no key URL to replace; set local_key = true in [servers.{0}] first")]
    NotKeyed(String),
    #[error(transparent)]
    Key(#[from] crate::local_key::KeyError),
}

/// What a login achieved, for the closing message.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered without asking for authorization.
    NotNeeded,
    LoggedIn {
        scopes: Vec<String>,
        expires_at: Option<SystemTime>,
        store: String,
    },
}

/// What every session of one command shares: the configured store, opened once,
/// and the HTTP clients.
pub(crate) struct Shared {
    credentials: Credentials,
    /// The store's kind and location, for messages.
    pub(crate) store: String,
    /// For requests to the server itself.
    pub(crate) http: reqwest::Client,
    oauth: latchkey_auth::target::Clients,
}

/// Opens the configured store (warning when `auto` falls back to files).
pub(crate) async fn open(config: &Config) -> Result<Shared, LoginError> {
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
) -> Result<Arc<ServerAuth>, LoginError> {
    let server = find(config, name)?;
    let OAuth::Enabled(oauth) = &server.oauth else {
        return Err(LoginError::OAuthDisabled(name.to_owned()));
    };
    let session = ServerAuth::new(
        auth_settings(server, oauth),
        shared.oauth.clone(),
        browser,
        shared.credentials.clone(),
    );
    // A record that cannot be read is reported, not overwritten.
    session.restore().await.map_err(|e| LoginError::Failed {
        name: name.to_owned(),
        message: e.message,
    })?;
    Ok(session)
}

fn find<'a>(config: &'a Config, name: &str) -> Result<&'a crate::config::Server, LoginError> {
    config
        .servers
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| LoginError::UnknownServer {
            name: name.to_owned(),
            known: config
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Server `name`'s local URL for an MCP client's config: with `local_key = true`
/// its key URL (the key made on first use, or replaced with `replace`), else
/// `http://127.0.0.1:PORT/<name>`.
pub async fn url(config: &Config, name: &str, replace: bool) -> Result<String, LoginError> {
    let server = find(config, name)?;
    if !server.local_key {
        if replace {
            return Err(LoginError::NotKeyed(name.to_owned()));
        }
        return Ok(crate::local_key::url(config.listen, name, None));
    }
    let opened = credentials::open(config.store, config.state_dir.as_deref()).await?;
    let key = crate::local_key::load(&opened.credentials, name, replace).await?;
    Ok(crate::local_key::url(config.listen, name, Some(&key)))
}

/// Runs a new login for `name`, replacing any stored tokens.
pub async fn login(
    config: &Config,
    name: &str,
    browser: Arc<dyn Browser>,
) -> Result<Outcome, LoginError> {
    let shared = open(config).await?;
    let session = session_for(config, name, browser, &shared).await?;
    let failed = |message: String| LoginError::Failed {
        name: name.to_owned(),
        message,
    };
    let probed = probe(&shared.http, find(config, name)?).await?;
    if probed.status.is_success() {
        return Ok(Outcome::NotNeeded);
    }
    let challenge = probed.challenge;
    let trigger = Trigger {
        seen: session.bearer().1,
        challenge,
        step_up: false,
        full_login: true,
    };
    session
        .authorize(trigger)
        .await
        .map_err(|e| failed(e.message))?;
    if let AuthStatus::Error { message } = session.status() {
        return Err(failed(message));
    }
    let (expires_at, scopes) = session.token_info().unwrap_or_default();
    Ok(Outcome::LoggedIn {
        scopes,
        expires_at,
        store: shared.store,
    })
}

/// Revokes and deletes `name`'s stored credentials. Returns what could not be
/// revoked (the record is gone either way).
pub async fn logout(config: &Config, name: &str) -> Result<Vec<String>, LoginError> {
    let browser = Arc::new(crate::callback::TerminalBrowser { open: false });
    let shared = open(config).await?;
    let session = session_for(config, name, browser, &shared).await?;
    session.logout().await.map_err(|e| LoginError::Failed {
        name: name.to_owned(),
        message: e.message,
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
) -> Result<Probe, LoginError> {
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
    let response = request.send().await.map_err(|e| LoginError::Unreachable {
        name: server.name.clone(),
        url: crate::status::redacted(&server.url),
        cause: crate::error::describe(e),
    })?;
    let status = response.status();
    if status.is_success() {
        // A session may have started: end it.
        if let Some(id) = response.headers().get("mcp-session-id").cloned() {
            drop(
                http.delete(server.url.clone())
                    .header("mcp-session-id", id)
                    .send()
                    .await,
            );
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
