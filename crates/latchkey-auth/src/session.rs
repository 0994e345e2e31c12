//! One MCP server's OAuth state in a running latchkey: its tokens, its client
//! registration, and the single authorization flow that may be running for it.
//!
//! Requests ask [`ServerAuth::bearer`] for a token. A 401 (or a token about to
//! expire) leads to [`ServerAuth::authorize`], which starts at most one flow per server
//! and lets every caller wait for it: a refresh when there is a refresh token, else the
//! browser flow. The flow runs in its own task, so a caller that gives up (its
//! `auth_timeout` passed, or its client left) does not cancel it for the others.
//!
//! Failure rules: `invalid_grant` clears the tokens and keeps the registration; a
//! network failure or a 5xx keeps everything and is reported as retryable.
//!
//! Across processes (the daemon and any number of `latchkey stdio`), a flow holds the
//! server's lock file for its whole run, and first reads the store again: a token
//! another process just got is used as it is, and a refresh token another process
//! just rotated is never spent twice.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use reqwest::header::HeaderValue;
use tokio::sync::watch;
use url::Url;

use crate::Secret;
use crate::authorize::{self, AuthorizationParams};
use crate::challenge::BearerChallenge;
use crate::device::{self, DeviceAuthorization};
use crate::discovery::{self, Discovered};
use crate::dpop;
use crate::enterprise::{Idp, IdpSettings};
use crate::jwt_bearer::{self, AssertionSource};
use crate::registration::{self, ConfiguredClient, Plan, Registration};
use crate::store::{self, Record, Revision, Store};
use crate::target::{Clients, Http};
use crate::token::{self, CodeGrant, TokenError, TokenSet};

// DPoP's part of a session, in a file of its own.
#[path = "session_dpop.rs"]
mod session_dpop;

/// Tokens this close to expiry (or past half their lifetime, for short-lived ones) are
/// refreshed before use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// How many step-ups within [`STEP_UP_WINDOW`] before giving up (MCP authorization:
/// retry limits). A window rather than a count that a success resets: each step-up
/// that succeeds is a success, so such a count would never stop a server that keeps
/// asking for more; and a window lets a person who closed the tab try again later.
const MAX_STEP_UPS: u32 = 3;
const STEP_UP_WINDOW: Duration = Duration::from_secs(600);
/// After a failed early refresh, how long the current token is used before trying again.
const REFRESH_RETRY: Duration = Duration::from_secs(10);
/// How often a running process looks at the store's revision marker for a logout or
/// another process's refresh.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// What `status` says of a server whose tokens `latchkey logout` removed.
const SIGNED_OUT: &str = "signed out (latchkey logout); the next request starts a new login";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks a redirect URL and returns its authorization code.
pub type RedirectCheck = Box<dyn FnOnce(&Url) -> Result<Secret, String> + Send>;

/// The person at the browser, as seen from here: a redirect listener bound first,
/// then the authorization URL opened and the redirect awaited. The daemon provides the
/// real one; this crate has no HTTP server.
pub trait Browser: Send + Sync + 'static {
    /// Binds the loopback redirect listener on `port` (0: any free port).
    fn bind(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>>;

    /// Whether the person is not at this machine, so the device flow (RFC 8628) is
    /// preferred where the server offers it.
    fn remote(&self) -> bool {
        false
    }

    /// Tells the person where to enter the device flow's code.
    fn show_device_code(&self, _server: &str, _device: &DeviceAuthorization) {}
}

/// A bound redirect listener.
pub trait Redirect: Send {
    fn redirect_uri(&self) -> String;
    /// Puts the authorization page `url` before the person (a browser, a
    /// notification), saying what to do for the server. The future says whether
    /// they were reached; it runs beside [`Redirect::complete`], since a browser may
    /// bring the redirect back before its opener has exited. Until the person is
    /// known to be out of reach, requests wait for the login.
    fn show(&self, _url: &Url, _prompt: Prompt<'_>) -> BoxFuture<'static, bool> {
        Box::pin(async { true })
    }
    /// Opens `url` for the person and returns the redirect's URL after `check` has
    /// accepted it.
    fn complete(
        self: Box<Self>,
        url: Url,
        timeout: Duration,
        check: RedirectCheck,
    ) -> BoxFuture<'static, Result<Secret, String>>;
}

/// The assertion of a JWT bearer grant: one read already (a workload's), or the
/// ID-JAG an IdP makes once the authorization server is known.
enum Assertion<'a> {
    Read(Secret),
    FromIdp(&'a Idp),
}

/// What the person is told about a sign-in.
#[derive(Debug, Clone, Copy)]
pub struct Prompt<'a> {
    /// Who needs it: a server's name, or an identity provider's.
    pub who: &'a str,
    /// The server whose sign-in start page the daemon serves; `None` for an
    /// identity provider, which has none.
    pub server: Option<&'a str>,
    /// The way to it from a terminal.
    pub command: &'a str,
}

/// Shows `url` to the person and waits for the redirect, the two at once: a browser
/// may bring the redirect back before its opener has exited. `reached` hears whether
/// the person was reached, when that is known.
pub(crate) async fn present(
    redirect: Box<dyn Redirect>,
    url: Url,
    prompt: Prompt<'_>,
    timeout: Duration,
    check: RedirectCheck,
    reached: impl FnOnce(bool),
) -> Result<Secret, String> {
    let shown = redirect.show(&url, prompt);
    let completing = redirect.complete(url, timeout, check);
    tokio::pin!(completing);
    tokio::select! {
        code = &mut completing => code,
        was = shown => {
            tracing::debug!(who = %prompt.who, reached = was, "the person was reached: {was}");
            reached(was);
            completing.await
        }
    }
}

/// How latchkey gets tokens for a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Grant {
    /// A person logs in through the browser (RFC 6749 §4.1 with PKCE).
    #[default]
    AuthorizationCode,
    /// A machine-to-machine client with its own credentials (RFC 6749 §4.4).
    ClientCredentials,
    /// A workload trades the JWT its platform issued it (RFC 7523 §2.1, SEP-1933),
    /// read again for every grant.
    JwtBearer(AssertionSource),
    /// Enterprise-Managed Authorization: an ID-JAG from the enterprise IdP the person
    /// signed in to, taken as a JWT bearer grant (`enterprise.rs`).
    Enterprise(Arc<IdpSettings>),
}

impl Grant {
    /// Whether new tokens come without a person, so expiring ones are renewed ahead.
    pub fn unattended(&self) -> bool {
        matches!(
            self,
            Self::ClientCredentials | Self::JwtBearer(_) | Self::Enterprise(_)
        )
    }
}

/// What the config says about this server's OAuth.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The config's name for the server, for messages.
    pub server: String,
    /// The command that logs in to it from a terminal, for messages.
    pub login_command: String,
    /// Configured by name: its record is kept under the name, so that two names
    /// for one URL hold two logins (two accounts). `false` for a URL given on the
    /// command line, whose record is kept under the URL.
    pub named: bool,
    pub resource_url: Url,
    pub grant: Grant,
    pub client: Option<ConfiguredClient>,
    pub client_metadata_url: Option<String>,
    pub redirect_port: u16,
    pub send_resource: bool,
    pub authorize_params: Vec<(String, String)>,
    /// How long the browser flow may take.
    pub flow_timeout: Duration,
    /// `issuer` from the config: the only authorization server this server's
    /// credentials (and a configured secret or key) may go to.
    pub issuer: Option<String>,
    /// `dpop` from the config: `None` follows the authorization server's metadata
    /// (`dpop_signing_alg_values_supported`), `Some` forces DPoP on or off.
    pub dpop: Option<bool>,
}

/// Where a server stands, for `GET /` and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStatus {
    /// Tokens are held, or none were needed so far.
    Ready,
    NeedsAuth {
        reason: String,
    },
    /// A browser flow is waiting for the person; `url` is where to go.
    Authorizing {
        url: String,
        /// Whether the person was reached (a browser opened, a notification
        /// shown): `None` while that is being tried.
        reached: Option<bool>,
    },
    NeedsClientRegistration {
        message: String,
    },
    Error {
        message: String,
    },
}

impl AuthStatus {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NeedsAuth { .. } => "needs_auth",
            Self::Authorizing { .. } => "authorizing",
            Self::NeedsClientRegistration { .. } => "needs_client_registration",
            Self::Error { .. } => "error",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub message: String,
    /// Trying again later may work with nothing changed (a network failure).
    pub retryable: bool,
}

impl AuthError {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// What a request needs to know when it asks for a new token.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// The generation of the token the failed request carried.
    pub seen: u64,
    pub challenge: Option<BearerChallenge>,
    /// A 403 `insufficient_scope`: ask for more scopes.
    pub step_up: bool,
    /// Skip the refresh: a refreshed token was refused already.
    pub full_login: bool,
}

/// Where credentials are kept, and where the per-server lock files are. No lock
/// directory means the store is private to this process (memory).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub store: Arc<dyn Store>,
    pub lock_dir: Option<PathBuf>,
}

#[derive(Debug)]
pub struct ServerAuth {
    settings: AuthSettings,
    credentials: Credentials,
    /// The store's key for this server: `latchkey:server:NAME`, or its canonical
    /// resource URL when it has no name ([`AuthSettings::named`]).
    key: String,
    /// Its canonical resource URL, kept in the record.
    resource: String,
    /// Every OAuth request of this server goes through it (see [`crate::target`]).
    http: Http,
    browser: Arc<dyn Browser>,
    /// For `Grant::Enterprise`: the IdP, shared with every server that names it.
    idp: Option<Arc<Idp>>,
    state: Mutex<State>,
    /// Bumped when a flow ends; carries its outcome.
    finished: watch::Sender<(u64, Result<(), AuthError>)>,
    /// DPoP (RFC 9449), once in use: the installation's keys, the token endpoint's
    /// prover and the resource server's latest nonce.
    dpop: session_dpop::Dpop,
}

impl std::fmt::Debug for dyn Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Browser")
    }
}

#[derive(Debug, Default)]
struct State {
    tokens: Option<TokenSet>,
    /// When to refresh ahead of expiry.
    refresh_after: Option<SystemTime>,
    /// `Authorization: Bearer …` (or `DPoP …`) for `tokens`, marked sensitive.
    bearer: Option<HeaderValue>,
    /// For DPoP-bound `tokens`: the key's algorithm and the proofs' `ath`.
    dpop_ath: Option<(dpop::Alg, Arc<str>)>,
    /// Bumped whenever the tokens change, so a caller can tell whether the token
    /// it was refused with is still the current one.
    generation: u64,
    registration: Option<Registration>,
    /// What the last login found; a refresh goes to the same token endpoint.
    discovered: Option<Discovered>,
    /// From the stored record: where discovery found the resource metadata.
    known_metadata_url: Option<String>,
    status: Option<AuthStatus>,
    flow_running: bool,
    flows_finished: u64,
    /// Step-ups in the current window, and when the window began.
    step_ups: u32,
    step_up_window: Option<std::time::Instant>,
    /// The tokens or registration changed since the store last saw them.
    dirty: bool,
    /// The authorization server that issued `tokens`: where they are refreshed and
    /// revoked, and nowhere else.
    bound: Option<Bound>,
    /// The issuer a configured client secret or key was first used with.
    configured_client_issuer: Option<String>,
    /// The store held `tokens` when last read or written: if they vanish from it, a
    /// `latchkey logout` removed them.
    stored: bool,
    /// The revision marker's value when this process last read or wrote the store.
    revision: Option<String>,
}

/// The authorization server a record's tokens belong to, and its endpoints for them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bound {
    issuer: String,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

impl Bound {
    fn of(server: &discovery::ServerMetadata) -> Self {
        Self {
            issuer: server.issuer.clone(),
            token_endpoint: Some(server.token_endpoint.clone()),
            revocation_endpoint: server.revocation_endpoint.clone(),
        }
    }
}

/// What reading the store again did to this process's tokens.
#[derive(Debug, PartialEq, Eq)]
enum Synced {
    Unchanged,
    /// The record lost its tokens: someone ran `latchkey logout`.
    SignedOut,
    /// Another process stored other tokens; `renewed` when their access token is not
    /// the one just refused and is still live (so no refresh of our own is needed).
    Adopted {
        renewed: bool,
    },
}

impl ServerAuth {
    pub fn new(
        settings: AuthSettings,
        clients: Clients,
        browser: Arc<dyn Browser>,
        credentials: Credentials,
    ) -> Arc<Self> {
        let (finished, _) = watch::channel((0, Ok(())));
        let idp = match &settings.grant {
            Grant::Enterprise(idp) => Some(Idp::shared(idp, &clients, &browser, &credentials)),
            _ => None,
        };
        Arc::new(Self {
            idp,
            key: if settings.named {
                format!("latchkey:server:{}", settings.server)
            } else {
                discovery::canonical_resource(&settings.resource_url)
            },
            resource: discovery::canonical_resource(&settings.resource_url),
            http: Http::new(clients, &settings.resource_url),
            credentials,
            settings,
            browser,
            state: Mutex::new(State::default()),
            finished,
            dpop: session_dpop::Dpop::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads this server's record from the store, if there is one. A record that
    /// cannot be read puts the server in `error`, naming where the record is.
    pub async fn restore(&self) -> Result<(), AuthError> {
        let revision = self.revision();
        let loaded = self.load().await;
        self.lock().revision = revision.and_then(|r| r.read());
        match loaded {
            Ok(Some(record)) => {
                Self::adopt(&mut self.lock(), record);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.lock().status = Some(AuthStatus::Error {
                    message: e.message.clone(),
                });
                Err(e)
            }
        }
    }

    /// The stored record, read on a blocking thread.
    async fn load(&self) -> Result<Option<Record>, AuthError> {
        let (store, key, server, resource) = (
            self.credentials.store.clone(),
            self.key.clone(),
            self.settings.server.clone(),
            self.resource.clone(),
        );
        // Before records were kept by name they were kept by URL: such a record is
        // moved to the name once (saved, then the old one deleted, so that nothing
        // is lost and a logout cannot bring it back).
        let legacy = (key != resource).then(|| resource.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            if let Some(record) = store.load(&key, &server)? {
                return Ok((Some(record), false));
            }
            let Some(old) = legacy else {
                return Ok((None, false));
            };
            let Some(mut record) = store.load(&old, &server)? else {
                return Ok((None, false));
            };
            record.server = Some(resource);
            store.save(&key, &record)?;
            store.delete(&old)?;
            Ok::<_, store::StoreError>((Some(record), true))
        })
        .await
        .map_err(|e| AuthError::fatal(format!("the credential store failed: {e}")))?
        .map_err(|e| AuthError::fatal(e.to_string()))?;
        let (mut record, moved) = loaded;
        if moved {
            tracing::info!(server = %self.settings.server, "the stored credentials were moved from the record of the server's URL to one of the server's own name");
        }
        // The config gave the name another URL: its tokens are not for this one.
        if let Some(stored) = record.as_ref().and_then(|r| r.server.clone())
            && stored != self.resource
        {
            tracing::info!(server = %self.settings.server, stored = %stored, "the stored credentials are for another URL; a new login is needed");
            record = None;
        }
        // Bound tokens are usable only with their key: have it before they are used.
        if record
            .as_ref()
            .and_then(|r| r.tokens.as_ref())
            .is_some_and(|t| t.dpop.is_some())
        {
            self.dpop_keys().await?;
        }
        Ok(record)
    }

    fn revision(&self) -> Option<Revision> {
        let dir = self.credentials.lock_dir.as_deref()?;
        Some(Revision::new(dir, &self.key))
    }

    /// Takes a stored record's tokens and registration as the current ones.
    fn adopt(state: &mut State, record: Record) {
        if let Some(registration) = record.registration {
            state.registration = Some(registration);
        }
        if record.resource_metadata_url.is_some() {
            state.known_metadata_url = record.resource_metadata_url;
        }
        if record.configured_client_issuer.is_some() {
            state.configured_client_issuer = record.configured_client_issuer;
        }
        state.bound = match (&record.tokens, record.issuer) {
            (Some(_), Some(issuer)) => Some(Bound {
                issuer,
                token_endpoint: record.token_endpoint,
                revocation_endpoint: record.revocation_endpoint,
            }),
            _ => None,
        };
        state.stored = record.tokens.is_some();
        match record.tokens {
            Some(tokens) => Self::set_tokens(state, tokens),
            None => Self::clear_tokens(state),
        }
    }

    fn clear_tokens(state: &mut State) {
        state.tokens = None;
        state.bearer = None;
        state.dpop_ath = None;
        state.bound = None;
        state.generation += 1;
    }

    /// Brings this process in line with the record just read. A record that lost the
    /// tokens this process had stored or read is a logout: they are dropped from
    /// memory and never written back. Unsaved tokens of our own are newer than any
    /// other record and are kept.
    fn sync(&self, state: &mut State, record: Option<Record>) -> Synced {
        let Some(record) = record.filter(|r| r.tokens.is_some()) else {
            if state.tokens.is_none() || !state.stored {
                return Synced::Unchanged;
            }
            tracing::info!(server = %self.settings.server, "signed out by `latchkey logout`; the tokens are dropped");
            Self::clear_tokens(state);
            state.registration = None;
            state.stored = false;
            state.dirty = false;
            state.status = Some(AuthStatus::NeedsAuth {
                reason: SIGNED_OUT.into(),
            });
            return Synced::SignedOut;
        };
        if state.dirty || record.tokens == state.tokens {
            return Synced::Unchanged;
        }
        // Tokens compared, not expiry times: a store may keep those coarser.
        let renewed = record.tokens.as_ref().is_some_and(|theirs| {
            state
                .tokens
                .as_ref()
                .is_none_or(|ours| ours.access_token != theirs.access_token)
                && store::is_live(theirs, SystemTime::now())
        });
        tracing::debug!(server = %self.settings.server, "using credentials another latchkey process stored");
        Self::adopt(state, record);
        if renewed && matches!(state.status, Some(AuthStatus::NeedsAuth { .. })) {
            state.status = Some(AuthStatus::Ready);
        }
        Synced::Adopted { renewed }
    }

    /// Watches the store's revision marker (every [`WATCH_INTERVAL`], until this
    /// session is dropped), so that a logout or another process's new tokens are
    /// taken up at once. For the daemon and `latchkey stdio`; a no-op for a store
    /// private to this process.
    pub fn watch(self: &Arc<Self>) {
        let Some(revision) = self.revision() else {
            return;
        };
        let session = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = session.upgrade() else {
                    return;
                };
                let now = revision.read();
                let (generation, changed) = {
                    let state = this.lock();
                    (
                        state.generation,
                        state.revision != now && !state.flow_running,
                    )
                };
                if !changed {
                    continue;
                }
                let Ok(record) = this.load().await else {
                    continue;
                };
                let mut state = this.lock();
                // A flow that started meanwhile reads the store itself, under the lock.
                if state.flow_running || state.generation != generation {
                    continue;
                }
                state.revision = now;
                this.sync(&mut state, record);
            }
        });
    }

    /// Saves the current tokens and registration, if they changed. A failed save
    /// keeps them in memory and is logged: the next change tries again.
    async fn persist(&self) {
        let record = {
            let mut state = self.lock();
            if !state.dirty {
                return;
            }
            state.dirty = false;
            let bound = state.bound.clone().filter(|_| state.tokens.is_some());
            Record {
                token_endpoint: bound.as_ref().and_then(|b| b.token_endpoint.clone()),
                revocation_endpoint: bound.as_ref().and_then(|b| b.revocation_endpoint.clone()),
                configured_client_issuer: state.configured_client_issuer.clone(),
                resource_metadata_url: state
                    .discovered
                    .as_ref()
                    .and_then(|d| d.resource_metadata_url.as_ref())
                    .map(ToString::to_string)
                    .or_else(|| state.known_metadata_url.clone()),
                issuer: bound.map(|b| b.issuer).or_else(|| {
                    state
                        .registration
                        .as_ref()
                        .map(|r| r.issuer.clone())
                        .or_else(|| state.discovered.as_ref().map(|d| d.server.issuer.clone()))
                }),
                tokens: state.tokens.clone(),
                // A client from the config stays in the config.
                registration: state
                    .registration
                    .clone()
                    .filter(|_| self.settings.client.is_none()),
                // A capability URL's key and the DPoP keys have records of their own.
                local_key: None,
                dpop_keys: None,
                server: Some(self.resource.clone()),
            }
        };
        let has_tokens = record.tokens.is_some();
        let (store, key) = (self.credentials.store.clone(), self.key.clone());
        let saved = tokio::task::spawn_blocking(move || store.save(&key, &record)).await;
        let error = match saved {
            Ok(Ok(())) => {
                let revision = self.bump_revision();
                let mut state = self.lock();
                state.stored = has_tokens;
                state.revision = revision;
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(server = %self.settings.server, %error, "cannot save credentials; they are kept in memory");
        self.lock().dirty = true;
    }

    /// Tells the other processes that the record changed. Best effort: without the
    /// marker they still see the change on their next flow.
    fn bump_revision(&self) -> Option<String> {
        let revision = self.revision()?;
        revision
            .bump()
            .inspect_err(|e| tracing::debug!(server = %self.settings.server, error = %e, "cannot write the revision marker"))
            .ok()
    }

    /// Holds the machine-wide lock for this server's flows, so that one process at a
    /// time refreshes or logs in.
    async fn flow_lock(&self) -> Result<Option<store::FlowLock>, AuthError> {
        let Some(dir) = self.credentials.lock_dir.clone() else {
            return Ok(None);
        };
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || store::FlowLock::acquire(&dir, &key))
            .await
            .map_err(|e| AuthError::fatal(format!("the lock failed: {e}")))?
            .map(Some)
            .map_err(AuthError::fatal)
    }

    /// Revokes the stored tokens at the authorization server that issued them, where
    /// it offers revocation (RFC 7009), and deletes the record. Returns what could not
    /// be revoked; the record is deleted either way, because that is what the person
    /// asked for. Every other running latchkey process drops the tokens from memory
    /// within a second (the revision marker) and never writes them back.
    pub async fn logout(&self) -> Result<Vec<String>, AuthError> {
        let _held = self.flow_lock().await?;
        if let Some(record) = self.load().await? {
            Self::adopt(&mut self.lock(), record);
        }
        let (tokens, registration, bound) = {
            let state = self.lock();
            (
                state.tokens.clone(),
                state.registration.clone(),
                state.bound.clone(),
            )
        };
        let mut problems = Vec::new();
        if let Some(tokens) = tokens {
            // A record from before the binding: its registration's issuer.
            let bound = bound.or_else(|| {
                registration.as_ref().map(|r| Bound {
                    issuer: r.issuer.clone(),
                    token_endpoint: None,
                    revocation_endpoint: None,
                })
            });
            match bound {
                Some(bound) => {
                    let configured = self.configured_for(&bound.issuer);
                    problems = revoke(
                        self.http.clone(),
                        self.settings.server.clone(),
                        configured,
                        bound,
                        tokens,
                        registration,
                    )
                    .await;
                }
                None => problems.push(
                    "the record does not say which authorization server issued the tokens; they expire on their own".into(),
                ),
            }
        }
        let (store, key) = (self.credentials.store.clone(), self.key.clone());
        tokio::task::spawn_blocking(move || store.delete(&key))
            .await
            .map_err(|e| AuthError::fatal(e.to_string()))?
            .map_err(|e| AuthError::fatal(e.to_string()))?;
        let revision = self.bump_revision();
        let mut state = self.lock();
        Self::clear_tokens(&mut state);
        state.registration = None;
        state.dirty = false;
        state.stored = false;
        state.revision = revision;
        state.status = Some(AuthStatus::NeedsAuth {
            reason: SIGNED_OUT.into(),
        });
        Ok(problems)
    }

    /// The configured client, if it may be used at `issuer`: always without a secret
    /// or key; with one, only at the pinned issuer, else the one it was first used with.
    fn configured_for(&self, issuer: &str) -> Option<ConfiguredClient> {
        let own = self.own_issuer(&self.lock());
        let client = self.settings.client.clone()?;
        (!client.is_confidential() || own.is_none_or(|own| own == issuer)).then_some(client)
    }

    /// The authorization server a configured secret or key belongs to: the pin, else
    /// the one it was first used with.
    fn own_issuer(&self, state: &State) -> Option<String> {
        self.settings
            .issuer
            .clone()
            .or_else(|| state.configured_client_issuer.clone())
    }

    /// Refuses to send a configured secret or key to any authorization server but
    /// its own; the first one it is used with becomes its own, without a pin.
    fn may_send_configured(&self, issuer: &str) -> Result<(), AuthError> {
        if !self
            .settings
            .client
            .as_ref()
            .is_some_and(ConfiguredClient::is_confidential)
        {
            return Ok(());
        }
        let mut state = self.lock();
        let server = &self.settings.server;
        match self.own_issuer(&state) {
            Some(own) if own != issuer => Err(AuthError::fatal(format!(
                "server {server:?}: the configured client secret or key belongs to the authorization server {own}, but the server now names {issuer}; latchkey does not send it there. If the move is real, register a client at {issuer} and set it, with issuer = {issuer:?}, under [servers.{server}.oauth]"
            ))),
            Some(_) => Ok(()),
            None => {
                state.configured_client_issuer = Some(issuer.to_owned());
                state.dirty = true;
                Ok(())
            }
        }
    }

    pub fn status(&self) -> AuthStatus {
        self.lock().status.clone().unwrap_or(AuthStatus::Ready)
    }

    /// The authorization server the tokens are bound to, for status displays.
    pub fn issuer(&self) -> Option<String> {
        self.lock().bound.as_ref().map(|bound| bound.issuer.clone())
    }

    /// Expiry and scopes of the current tokens, for status displays.
    pub fn token_info(&self) -> Option<(Option<SystemTime>, Vec<String>)> {
        self.lock()
            .tokens
            .as_ref()
            .map(|t| (t.expires_at, t.scopes.clone()))
    }

    /// Whether tokens are held that can be renewed without a person: a refresh token,
    /// or the client-credentials grant. `None` without tokens.
    pub fn renewable(&self) -> Option<bool> {
        let state = self.lock();
        let tokens = state.tokens.as_ref()?;
        Some(self.settings.grant.unattended() || tokens.refresh_token.is_some())
    }

    /// Whether the tokens held came with a refresh token, for status displays. `None`
    /// without tokens.
    pub fn holds_refresh_token(&self) -> Option<bool> {
        let state = self.lock();
        Some(state.tokens.as_ref()?.refresh_token.is_some())
    }

    /// The `Authorization` value to send and its generation. `None` when there is no
    /// unexpired token.
    pub fn bearer(&self) -> (Option<HeaderValue>, u64) {
        let state = self.lock();
        let live = state
            .tokens
            .as_ref()
            .is_some_and(|t| t.expires_at.is_none_or(|at| at > SystemTime::now()));
        let value = state.bearer.as_ref().filter(|_| live).cloned();
        (value, state.generation)
    }

    /// Whether the token should be renewed before the next request: it is close to
    /// expiry and can be renewed without a person (a refresh token, or the
    /// client-credentials grant).
    pub fn needs_refresh(&self) -> bool {
        let state = self.lock();
        let renewable = self.settings.grant.unattended()
            || state
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh_token.is_some());
        state.tokens.is_some()
            && renewable
            && state
                .refresh_after
                .is_some_and(|at| at <= SystemTime::now())
    }

    /// Gets new tokens (refresh, or the browser flow) unless someone already did
    /// since `trigger.seen`. Waits for the flow; the caller bounds the wait.
    pub async fn authorize(self: &Arc<Self>, trigger: Trigger) -> Result<(), AuthError> {
        self.dpop.offered_in(&trigger);
        let mut finished = self.finished.subscribe();
        let waiting_for = {
            let mut state = self.lock();
            if state.generation != trigger.seen {
                // Someone got a new token since this request was refused. For a
                // step-up, it counts only if it holds the scopes the challenge asks.
                let covered = || {
                    let wanted = trigger.challenge.as_ref().map(|c| c.scopes.as_slice());
                    state.tokens.as_ref().is_some_and(|t| {
                        wanted
                            .unwrap_or_default()
                            .iter()
                            .all(|w| t.scopes.contains(w))
                    })
                };
                if !trigger.step_up || covered() {
                    return Ok(());
                }
            }
            if !state.flow_running {
                state.flow_running = true;
                let this = self.clone();
                tokio::spawn(async move { this.run_flow(trigger).await });
            }
            state.flows_finished
        };
        loop {
            {
                let (done, outcome) = &*finished.borrow_and_update();
                if *done > waiting_for {
                    return outcome.clone();
                }
            }
            if finished.changed().await.is_err() {
                return Err(AuthError::fatal("latchkey is shutting down"));
            }
        }
    }

    async fn run_flow(self: Arc<Self>, trigger: Trigger) {
        let run = async {
            let held = self.flow_lock().await?;
            let outcome = self.locked_flow(&trigger).await;
            self.persist().await;
            drop(held);
            outcome
        };
        // A bug that panics in a flow must still end it, or every later request for
        // this server would wait for a flow that no longer runs.
        let outcome = std::panic::AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(AuthError::fatal(
                    "the login failed unexpectedly (a bug in latchkey; see the log)",
                ))
            });
        let done = {
            let mut state = self.lock();
            state.flow_running = false;
            state.flows_finished += 1;
            match &outcome {
                Ok(()) => state.status = Some(AuthStatus::Ready),
                Err(e) if e.retryable => {
                    state.status = Some(AuthStatus::Error {
                        message: e.message.clone(),
                    })
                }
                Err(e) => {
                    if !matches!(
                        state.status,
                        Some(AuthStatus::NeedsClientRegistration { .. })
                    ) {
                        state.status = Some(AuthStatus::NeedsAuth {
                            reason: e.message.clone(),
                        });
                    }
                }
            }
            state.flows_finished
        };
        match &outcome {
            Ok(()) => tracing::info!(server = %self.settings.server, "authorized"),
            Err(e) => {
                tracing::warn!(server = %self.settings.server, error = %e, "authorization failed")
            }
        }
        // The previous outcome is replaced; nobody waits for it any more.
        drop(self.finished.send_replace((done, outcome)));
    }

    /// With the lock held: first whatever another process stored meanwhile, then a
    /// flow of our own only if that is not enough. Adopted tokens count as renewed
    /// only if their access token is not the one just refused.
    async fn locked_flow(&self, trigger: &Trigger) -> Result<(), AuthError> {
        if self.credentials.lock_dir.is_some() {
            let record = self.load().await?;
            let synced = self.sync(&mut self.lock(), record);
            if synced == (Synced::Adopted { renewed: true }) && !trigger.step_up {
                return Ok(());
            }
        }
        self.flow(trigger).await
    }

    async fn flow(&self, trigger: &Trigger) -> Result<(), AuthError> {
        let (refresh_token, granted) = {
            let mut state = self.lock();
            if trigger.step_up {
                let now = std::time::Instant::now();
                if state
                    .step_up_window
                    .is_none_or(|began| now.duration_since(began) > STEP_UP_WINDOW)
                {
                    state.step_up_window = Some(now);
                    state.step_ups = 0;
                }
                state.step_ups += 1;
                if state.step_ups > MAX_STEP_UPS {
                    return Err(AuthError::fatal(format!(
                        "the server keeps asking for more scopes after {MAX_STEP_UPS} step-ups in {} minutes; giving up for now (run `{}` to try again at once)",
                        STEP_UP_WINDOW.as_secs() / 60,
                        self.settings.login_command
                    )));
                }
            }
            let tokens = state.tokens.as_ref();
            (
                tokens.and_then(|t| t.refresh_token.clone()),
                tokens.map(|t| t.scopes.clone()).unwrap_or_default(),
            )
        };
        if let (Some(refresh_token), false) =
            (&refresh_token, trigger.step_up || trigger.full_login)
        {
            match self.refresh(trigger, refresh_token, &granted).await {
                Ok(()) => return Ok(()),
                Err(Refresh::Dead) => {}
                Err(Refresh::Failed(e)) => return Err(e),
            }
        }
        match &self.settings.grant {
            Grant::AuthorizationCode => self.browser_flow(trigger, &granted).await,
            Grant::ClientCredentials => self.client_credentials(trigger, &granted).await,
            Grant::JwtBearer(source) => self.jwt_bearer(trigger, &granted, source).await,
            Grant::Enterprise(_) => self.enterprise(trigger, &granted).await,
        }
    }

    /// Enterprise-Managed Authorization: an ID-JAG for this server's authorization
    /// server from the IdP (one login there serves every server that trusts it),
    /// then the JWT bearer grant. No redirect to this server's authorization server.
    async fn enterprise(&self, trigger: &Trigger, granted: &[String]) -> Result<(), AuthError> {
        let Some(idp) = &self.idp else {
            return Err(AuthError::fatal("no identity provider for this server"));
        };
        self.jwt_grant(trigger, granted, Assertion::FromIdp(idp))
            .await
    }

    /// Workload identity: the platform's JWT, read now, traded at the server's
    /// authorization server (found as for any other grant). No browser, ever.
    async fn jwt_bearer(
        &self,
        trigger: &Trigger,
        granted: &[String],
        source: &AssertionSource,
    ) -> Result<(), AuthError> {
        // Read first: a missing token is a setup problem, named before any request.
        let assertion = source.read().map_err(|e| self.failed(&e, false))?;
        self.jwt_grant(trigger, granted, Assertion::Read(assertion))
            .await
    }

    /// The JWT bearer grant (RFC 7523 §2.1) at this server's authorization server,
    /// found as for any other grant, with the configured client if there is one.
    async fn jwt_grant(
        &self,
        trigger: &Trigger,
        granted: &[String],
        assertion: Assertion<'_>,
    ) -> Result<(), AuthError> {
        let found = self.discover(trigger.challenge.as_ref()).await?;
        self.lock().discovered = Some(found.clone());
        let client = match &self.settings.client {
            Some(_) => Some(self.registration(&found, "").await?.credentials()),
            None => None,
        };
        let scopes = unattended_scopes(trigger, &found, granted);
        let resource = self
            .settings
            .send_resource
            .then_some(found.resource.as_str());
        let assertion = match assertion {
            Assertion::Read(assertion) => assertion,
            // The ID-JAG is addressed to this authorization server and resource.
            Assertion::FromIdp(idp) => idp
                .assertion(&found.server.issuer, resource, &scopes)
                .await
                .map_err(|e| self.failed(&e, e.retryable))?,
        };
        let tokens = jwt_bearer::grant(
            &self.http,
            &found.server.token_endpoint,
            client.as_ref(),
            &assertion,
            &scopes,
            resource,
        )
        .await;
        self.finish_grant(&found, tokens)
    }

    /// The machine-to-machine flow: discovery, then the grant with the configured
    /// client's secret or private key. Run again whenever the token expires.
    async fn client_credentials(
        &self,
        trigger: &Trigger,
        granted: &[String],
    ) -> Result<(), AuthError> {
        let settings = &self.settings;
        if settings.client.is_none() {
            let message = format!(
                "server {:?} uses grant = \"client_credentials\" but has no client; set client_id and client_secret or private_key_file under [servers.{}.oauth]",
                settings.server, settings.server
            );
            self.lock().status = Some(AuthStatus::NeedsClientRegistration {
                message: message.clone(),
            });
            return Err(AuthError::fatal(message));
        }
        let found = self.discover(trigger.challenge.as_ref()).await?;
        self.lock().discovered = Some(found.clone());
        let registration = self.registration(&found, "").await?;
        let scopes = unattended_scopes(trigger, &found, granted);
        let resource = settings.send_resource.then_some(found.resource.as_str());
        let tokens = token::client_credentials(
            &self.token_http(&found, None).await?,
            &found.server.token_endpoint,
            &registration.credentials(),
            &scopes,
            resource,
        )
        .await;
        self.finish_grant(&found, tokens)
    }

    /// Stores what a grant returned, or reports why it failed; an `invalid_client`
    /// forgets the registration so the next login registers again.
    fn finish_grant(
        &self,
        found: &Discovered,
        tokens: Result<TokenSet, TokenError>,
    ) -> Result<(), AuthError> {
        match tokens {
            Ok(tokens) => {
                self.store(tokens, &found.server);
                Ok(())
            }
            Err(e) => {
                if matches!(e, TokenError::InvalidClient { .. }) {
                    let mut state = self.lock();
                    state.registration = None;
                    state.dirty = true;
                }
                Err(self.failed(&e, e.is_retryable()))
            }
        }
    }

    async fn refresh(
        &self,
        trigger: &Trigger,
        refresh_token: &Secret,
        granted: &[String],
    ) -> Result<(), Refresh> {
        let bound = self.lock().bound.clone();
        let known = self
            .lock()
            .discovered
            .clone()
            .filter(|d| bound.as_ref().is_none_or(|b| b.issuer == d.server.issuer));
        // A 401 may mean that the server moved to another authorization server (or
        // that someone changed its metadata): look again before any credential is
        // sent. An early refresh uses what the last login found; after a restart
        // nothing is known yet. A failure keeps every credential and is retryable.
        let found = match (trigger.challenge.is_some(), known) {
            (false, Some(found)) => found,
            (_, known) => match self.discover(trigger.challenge.as_ref()).await {
                Ok(found) => {
                    self.lock().discovered = Some(found.clone());
                    found
                }
                Err(e) => match known {
                    Some(found) if e.retryable => found,
                    _ => return Err(Refresh::Failed(e)),
                },
            },
        };
        // discover() revoked and dropped the tokens of another issuer.
        if bound.is_some_and(|b| b.issuer != found.server.issuer) {
            return Err(Refresh::Dead);
        }
        let stored = self
            .lock()
            .registration
            .clone()
            .filter(|r| r.issuer == found.server.issuer);
        let registration = match (stored, &self.settings.client) {
            (Some(registration), _) => registration,
            (None, Some(_)) => {
                self.may_send_configured(&found.server.issuer)
                    .map_err(Refresh::Failed)?;
                match registration::plan(
                    &self.settings.server,
                    &found.server,
                    self.settings.client.as_ref(),
                    None,
                    "",
                ) {
                    Ok(Plan::Ready(registration)) => registration,
                    _ => return Err(Refresh::Dead),
                }
            }
            (None, None) => return Err(Refresh::Dead),
        };
        let resource = self
            .settings
            .send_resource
            .then_some(found.resource.as_str());
        let bound_to = self.lock().tokens.as_ref().and_then(|t| t.dpop);
        let http = self
            .token_http(&found, bound_to)
            .await
            .map_err(Refresh::Failed)?;
        match token::refresh(
            &http,
            &found.server.token_endpoint,
            &registration.credentials(),
            refresh_token,
            resource,
            granted,
        )
        .await
        {
            Ok(tokens) => {
                self.store(tokens, &found.server);
                Ok(())
            }
            Err(TokenError::InvalidGrant { .. }) => {
                // The grant is dead: drop the tokens, keep the registration.
                let mut state = self.lock();
                Self::clear_tokens(&mut state);
                state.dirty = true;
                Err(Refresh::Dead)
            }
            Err(TokenError::InvalidClient { .. }) => {
                let mut state = self.lock();
                state.registration = None;
                state.dirty = true;
                Err(Refresh::Dead)
            }
            // Any other refusal (invalid_scope, invalid_target, unauthorized_client…)
            // means this refresh token cannot be used as it is: log in again, keeping
            // the tokens until new ones replace them.
            Err(e @ TokenError::Refused { .. }) => {
                tracing::warn!(server = %self.settings.server, error = %e, "refresh refused; a new login follows");
                Err(Refresh::Dead)
            }
            Err(e) => {
                if e.is_retryable() {
                    self.lock().refresh_after = Some(SystemTime::now() + REFRESH_RETRY);
                }
                Err(Refresh::Failed(self.failed(&e, e.is_retryable())))
            }
        }
    }

    /// Where the resource metadata was found last: by this process, else by the one
    /// that stored the record.
    fn remembered_metadata_url(&self) -> Option<String> {
        let state = self.lock();
        state
            .discovered
            .as_ref()
            .and_then(|d| d.resource_metadata_url.as_ref())
            .map(ToString::to_string)
            .or_else(|| state.known_metadata_url.clone())
    }

    async fn discover(&self, challenge: Option<&BearerChallenge>) -> Result<Discovered, AuthError> {
        // Without a challenge naming the metadata (an early refresh, `latchkey login`
        // after a restart), start where it was found last time: a server may publish
        // it only at the URL its 401 names.
        let remembered;
        let challenge = match challenge {
            Some(c) if c.resource_metadata.is_some() => Some(c),
            _ => match self.remembered_metadata_url() {
                Some(url) => {
                    remembered = BearerChallenge {
                        resource_metadata: Some(url),
                        ..challenge.cloned().unwrap_or_default()
                    };
                    Some(&remembered)
                }
                None => challenge,
            },
        };
        let found = discovery::discover(&self.http, &self.settings.resource_url, challenge)
            .await
            .map_err(|e| self.failed(&e, e.is_retryable()))?;
        let (server, issuer) = (&self.settings.server, &found.server.issuer);
        if let Some(pin) = self.settings.issuer.as_ref().filter(|pin| *pin != issuer) {
            return Err(AuthError::fatal(format!(
                "server {server:?}: its metadata names the authorization server {issuer}, but the config pins issuer = {pin:?}; latchkey sends nothing there. If the server really moved, change issuer under [servers.{server}.oauth]"
            )));
        }
        self.rebind(issuer);
        Ok(found)
    }

    /// When discovery names another authorization server than the one that issued
    /// the tokens held (MCP 2026-07-28, authorization server binding): the tokens and
    /// that issuer's registration are dropped, never sent to the new one, and revoked
    /// at the old one in the background (best effort); a new registration and login
    /// follow.
    fn rebind(&self, issuer: &str) {
        let moved = {
            let mut state = self.lock();
            match state.bound.clone() {
                Some(old) if old.issuer != issuer && state.tokens.is_some() => {
                    // A record from before `configured_client_issuer` was kept: a
                    // configured client is always the one used, so its secret or key
                    // went to the issuer of these tokens.
                    let client = self.settings.client.as_ref();
                    if client.is_some_and(ConfiguredClient::is_confidential) {
                        state
                            .configured_client_issuer
                            .get_or_insert_with(|| old.issuer.clone());
                    }
                    let tokens = state.tokens.take();
                    let registration = state.registration.take_if(|r| r.issuer == old.issuer);
                    Self::clear_tokens(&mut state);
                    state.discovered = None;
                    state.dirty = true;
                    tokens.map(|tokens| (old, tokens, registration))
                }
                _ => None,
            }
        };
        let Some((old, tokens, registration)) = moved else {
            return;
        };
        let server = self.settings.server.clone();
        tracing::warn!(
            server = %server,
            old_issuer = %old.issuer,
            new_issuer = %issuer,
            "the server now names another authorization server; its tokens are revoked at the old one, and a new registration and login follow"
        );
        let configured = self.configured_for(&old.issuer);
        let http = self.http.clone();
        tokio::spawn(async move {
            for problem in revoke(http, server.clone(), configured, old, tokens, registration).await
            {
                tracing::warn!(server = %server, "{problem}");
            }
        });
    }

    async fn browser_flow(&self, trigger: &Trigger, granted: &[String]) -> Result<(), AuthError> {
        let settings = &self.settings;
        let found = self.discover(trigger.challenge.as_ref()).await?;
        if self.browser.remote() && found.server.device_authorization_endpoint.is_some() {
            self.lock().discovered = Some(found.clone());
            return self.device_flow(trigger, &found, granted).await;
        }
        discovery::require_pkce(&found.server).map_err(|e| AuthError::fatal(e.to_string()))?;
        if found.server.authorization_endpoint.is_none() {
            return Err(AuthError::fatal(format!(
                "server {:?}: the authorization server {} has no authorization_endpoint, so it serves only machine-to-machine clients; set grant = \"client_credentials\" with client_id and client_secret or private_key_file under [servers.{}.oauth]",
                settings.server, found.server.issuer, settings.server
            )));
        }
        self.lock().discovered = Some(found.clone());
        // The listener first: its port is part of the redirect URI. Without a fixed
        // port, the port of the existing registration is tried first, so that a
        // dynamically registered client can be used again.
        let registered_port = self
            .lock()
            .registration
            .as_ref()
            .and_then(|r| Url::parse(&r.redirect_uri).ok())
            .and_then(|u| u.port())
            .filter(|_| settings.redirect_port == 0);
        let redirect = match registered_port {
            Some(port) => match self.browser.bind(port).await {
                Ok(redirect) => redirect,
                Err(_) => self.browser.bind(0).await.map_err(AuthError::fatal)?,
            },
            None => self
                .browser
                .bind(settings.redirect_port)
                .await
                .map_err(AuthError::fatal)?,
        };
        let redirect_uri = redirect.redirect_uri();
        let registration = self.registration(&found, &redirect_uri).await?;
        let scopes = scopes_for(trigger, &found, granted);
        let resource = settings.send_resource.then_some(found.resource.as_str());
        let pending = authorize::start(
            &found.server,
            &AuthorizationParams {
                client_id: &registration.client_id,
                redirect_uri: &redirect_uri,
                scopes: &scopes,
                resource,
                extra: &settings.authorize_params,
            },
        )
        .map_err(|e| AuthError::fatal(format!("the authorization endpoint is not a URL: {e}")))?;
        self.lock().status = Some(AuthStatus::Authorizing {
            url: pending.url.to_string(),
            reached: None,
        });
        tracing::info!(server = %settings.server, "waiting for the login in the browser");
        let pending = Arc::new(pending);
        let checker = pending.clone();
        let code = present(
            redirect,
            pending.url.clone(),
            Prompt {
                who: &settings.server,
                server: Some(&settings.server),
                command: &settings.login_command,
            },
            settings.flow_timeout,
            Box::new(move |url| checker.finish(url).map_err(|e| e.to_string())),
            |reached| {
                if let Some(AuthStatus::Authorizing { reached: r, .. }) = &mut self.lock().status {
                    *r = Some(reached);
                }
            },
        )
        .await
        .map_err(AuthError::fatal)?;
        let tokens = token::exchange_code(
            &self.token_http(&found, None).await?,
            &found.server.token_endpoint,
            &registration.credentials(),
            &CodeGrant {
                code: &code,
                verifier: &pending.verifier,
                redirect_uri: &pending.redirect_uri,
                resource,
                requested: &scopes,
            },
        )
        .await;
        self.finish_grant(&found, tokens)
    }

    /// The device authorization grant: the person approves somewhere else while this
    /// polls the token endpoint.
    async fn device_flow(
        &self,
        trigger: &Trigger,
        found: &Discovered,
        granted: &[String],
    ) -> Result<(), AuthError> {
        let settings = &self.settings;
        let endpoint = found
            .server
            .device_authorization_endpoint
            .clone()
            .unwrap_or_default();
        // No redirect happens, but a registration carries one: keep the registered
        // one, else a loopback URI, which RFC 8252 §7.3 lets the port of vary.
        let redirect_uri = self
            .lock()
            .registration
            .as_ref()
            .filter(|r| r.issuer == found.server.issuer)
            .map_or_else(
                || "http://127.0.0.1/callback".to_owned(),
                |r| r.redirect_uri.clone(),
            );
        let registration = self.registration(found, &redirect_uri).await?;
        let scopes = scopes_for(trigger, found, granted);
        let resource = settings.send_resource.then_some(found.resource.as_str());
        let credentials = registration.credentials();
        let failed = |e: TokenError| self.failed(&e, e.is_retryable());
        let device = device::start(&self.http, &endpoint, &credentials, &scopes, resource)
            .await
            .map_err(failed)?;
        self.lock().status = Some(AuthStatus::Authorizing {
            // The code was shown to the person at the terminal.
            reached: Some(true),
            url: device
                .verification_uri_complete
                .clone()
                .unwrap_or_else(|| device.verification_uri.clone()),
        });
        self.browser.show_device_code(&settings.server, &device);
        let http = self.token_http(found, None).await?;
        let polled = device::poll(
            &http,
            &found.server.token_endpoint,
            &credentials,
            &device,
            resource,
            &scopes,
        );
        match tokio::time::timeout(settings.flow_timeout, polled).await {
            Ok(tokens) => self.finish_grant(found, tokens),
            Err(_) => Err(AuthError::fatal(format!(
                "server {:?}: the code was not entered within {} s",
                settings.server,
                settings.flow_timeout.as_secs()
            ))),
        }
    }

    /// The registration for this issuer: kept while the issuer and redirect URI stay
    /// the same, else made again in the spec's priority order.
    async fn registration(
        &self,
        found: &Discovered,
        redirect_uri: &str,
    ) -> Result<Registration, AuthError> {
        let settings = &self.settings;
        let kept = self.lock().registration.clone().filter(|r| {
            r.issuer == found.server.issuer
                && (r.redirect_uri == redirect_uri || settings.client.is_some())
        });
        if let Some(mut registration) = kept {
            redirect_uri.clone_into(&mut registration.redirect_uri);
            return Ok(registration);
        }
        self.may_send_configured(&found.server.issuer)?;
        let plan = registration::plan(
            &settings.server,
            &found.server,
            settings.client.as_ref(),
            settings.client_metadata_url.as_deref(),
            redirect_uri,
        );
        // A client ID metadata document is fetched by the authorization server from
        // the URL latchkey gives it: the same rule as for latchkey's own requests.
        if let (Ok(Plan::Ready(ready)), Some(document)) =
            (&plan, settings.client_metadata_url.as_deref())
            && ready.client_id == document
        {
            self.http
                .client("client ID metadata document", document)
                .await
                .map_err(|e| self.failed(&e, false))?;
        }
        let registration = match plan {
            Ok(Plan::Ready(registration)) => registration,
            Ok(Plan::Dynamic { endpoint }) => registration::register(
                &self.http,
                &settings.server,
                &found.server,
                &endpoint,
                redirect_uri,
            )
            .await
            .map_err(|e| self.failed(&e, e.is_retryable()))?,
            Err(e) => {
                let message = e.to_string();
                self.lock().status = Some(AuthStatus::NeedsClientRegistration {
                    message: message.clone(),
                });
                return Err(AuthError::fatal(message));
            }
        };
        let mut state = self.lock();
        state.registration = Some(registration.clone());
        state.dirty = true;
        Ok(registration)
    }

    /// A failure of this server's flow, with the server named.
    fn failed(&self, e: &dyn std::fmt::Display, retryable: bool) -> AuthError {
        AuthError {
            retryable,
            message: format!("server {:?}: {e}", self.settings.server),
        }
    }

    fn store(&self, tokens: TokenSet, issuer: &discovery::ServerMetadata) {
        let mut state = self.lock();
        Self::set_tokens(&mut state, tokens);
        state.bound = Some(Bound::of(issuer));
        state.dirty = true;
    }

    fn set_tokens(state: &mut State, tokens: TokenSet) {
        let now = SystemTime::now();
        state.refresh_after = tokens.expires_at.map(|at| {
            let lifetime = at.duration_since(now).unwrap_or_default();
            at - EXPIRY_MARGIN.min(lifetime / 2)
        });
        // Built once here: every request only copies it.
        let scheme = if tokens.dpop.is_some() {
            "DPoP"
        } else {
            "Bearer"
        };
        state.dpop_ath = tokens
            .dpop
            .map(|alg| (alg, dpop::ath(&tokens.access_token).into()));
        state.bearer = HeaderValue::from_str(&format!("{scheme} {}", tokens.access_token.expose()))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        state.tokens = Some(tokens);
        state.generation += 1;
    }
}

/// The scopes to ask for: on a step-up, the union of what was granted and what the
/// challenge asks; else the spec's choice (challenge, then resource metadata).
fn scopes_for(trigger: &Trigger, found: &Discovered, granted: &[String]) -> Vec<String> {
    match (&trigger.challenge, trigger.step_up) {
        (Some(challenge), true) => authorize::step_up_scopes(granted, challenge),
        _ => authorize::select_scopes(
            trigger.challenge.as_ref(),
            found.resource_metadata.as_ref(),
            &found.server,
        ),
    }
}

/// [`scopes_for`] for a grant that runs again whenever its token expires:
/// `offline_access` asks for a refresh token, which such a grant does not use.
fn unattended_scopes(trigger: &Trigger, found: &Discovered, granted: &[String]) -> Vec<String> {
    scopes_for(trigger, found, granted)
        .into_iter()
        .filter(|scope| scope != "offline_access")
        .collect()
}

enum Refresh {
    /// The refresh token (or client) is no longer accepted: authorize again.
    Dead,
    Failed(AuthError),
}

/// Revokes `tokens` at the authorization server that issued them (RFC 7009), the
/// refresh token first: revoking it usually ends the access tokens issued from it too.
/// Returns what could not be revoked.
async fn revoke(
    http: Http,
    server: String,
    configured: Option<ConfiguredClient>,
    issuer: Bound,
    tokens: TokenSet,
    registration: Option<Registration>,
) -> Vec<String> {
    let registration = registration.filter(|r| r.issuer == issuer.issuer);
    // The issuer's metadata as it says now; else the endpoint stored with the tokens.
    let (endpoint, client) = match discovery::authorization_server(&http, &issuer.issuer).await {
        Ok(metadata) => {
            let client = registration.or_else(|| {
                match registration::plan(&server, &metadata, configured.as_ref(), None, "") {
                    Ok(Plan::Ready(r)) => Some(r),
                    _ => None,
                }
            });
            (metadata.revocation_endpoint, client)
        }
        Err(e) if registration.is_none() || issuer.revocation_endpoint.is_none() => {
            return vec![format!("not revoked: {e}")];
        }
        Err(_) => (issuer.revocation_endpoint, registration),
    };
    let Some(endpoint) = endpoint else {
        return vec![format!(
            "{} offers no revocation endpoint; the tokens expire on their own",
            issuer.issuer
        )];
    };
    let Some(client) = client else {
        return vec![
            "no client registration to revoke with; the tokens expire on their own".into(),
        ];
    };
    let credentials = client.credentials();
    let mut problems = Vec::new();
    let revocations = tokens
        .refresh_token
        .iter()
        .map(|t| (t, "refresh_token"))
        .chain([(&tokens.access_token, "access_token")]);
    for (token, hint) in revocations {
        if let Err(e) = token::revoke(&http, &endpoint, &credentials, token, hint).await {
            problems.push(format!("{hint} not revoked: {e}"));
        }
    }
    problems
}
