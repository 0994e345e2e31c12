//! `latchkey login <server>`: authorize ahead of time, with or without a daemon
//! running. The tokens go to the configured store, where the daemon and every
//! `latchkey stdio` find them (they read the store again on their next 401).
//! `latchkey logout <server>` revokes them and deletes the record.

use std::sync::Arc;
use std::time::SystemTime;

use latchkey_auth::session::{AuthStatus, Browser, Trigger};

use crate::config::Config;
use crate::credentials;
use crate::server::{ProbeError, ServerError, find, open, probe, session_for};

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Store(#[from] credentials::StoreUnavailable),
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

impl Outcome {
    /// What `latchkey login` says at the end.
    pub fn summary(&self, server: &str) -> String {
        match self {
            Self::NotNeeded => {
                format!("{server}: the server answered without authorization; nothing to store")
            }
            Self::LoggedIn {
                scopes,
                expires_at,
                store,
            } => {
                let scopes = if scopes.is_empty() {
                    "none".to_owned()
                } else {
                    scopes.join(" ")
                };
                let expiry = expires_at
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .map_or_else(
                        || "no expiry given".to_owned(),
                        |d| format!("expires in {} s", d.as_secs()),
                    );
                format!("{server}: logged in (scopes: {scopes}; {expiry}); stored in {store}")
            }
        }
    }
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
