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
use crate::registration::{self, ConfiguredClient, Plan, Registration};
use crate::store::{self, Record, Store};
use crate::token::{self, CodeGrant, TokenError, TokenSet};

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
    /// Opens `url` for the person and returns the redirect's URL after `check` has
    /// accepted it.
    fn complete(
        self: Box<Self>,
        url: Url,
        timeout: Duration,
        check: RedirectCheck,
    ) -> BoxFuture<'static, Result<Secret, String>>;
}

/// How latchkey gets tokens for a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grant {
    /// A person logs in through the browser (RFC 6749 §4.1 with PKCE).
    #[default]
    AuthorizationCode,
    /// A machine-to-machine client with its own credentials (RFC 6749 §4.4).
    ClientCredentials,
}

/// What the config says about this server's OAuth.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The config's name for the server, for messages.
    pub server: String,
    pub resource_url: Url,
    pub grant: Grant,
    pub client: Option<ConfiguredClient>,
    pub client_metadata_url: Option<String>,
    pub redirect_port: u16,
    pub send_resource: bool,
    pub authorize_params: Vec<(String, String)>,
    /// How long the browser flow may take.
    pub flow_timeout: Duration,
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
    /// The store's key for this server: its canonical resource URL.
    key: String,
    http: reqwest::Client,
    browser: Arc<dyn Browser>,
    state: Mutex<State>,
    /// Bumped when a flow ends; carries its outcome.
    finished: watch::Sender<(u64, Result<(), AuthError>)>,
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
    /// `Authorization: Bearer …` for `tokens`, marked sensitive.
    bearer: Option<HeaderValue>,
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
}

impl ServerAuth {
    pub fn new(
        settings: AuthSettings,
        http: reqwest::Client,
        browser: Arc<dyn Browser>,
        credentials: Credentials,
    ) -> Arc<Self> {
        let (finished, _) = watch::channel((0, Ok(())));
        Arc::new(Self {
            key: discovery::canonical_resource(&settings.resource_url),
            credentials,
            settings,
            http,
            browser,
            state: Mutex::new(State::default()),
            finished,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads this server's record from the store, if there is one. A record that
    /// cannot be read puts the server in `error`, naming where the record is.
    pub async fn restore(&self) -> Result<(), AuthError> {
        match self.load().await {
            Ok(Some(record)) => {
                self.adopt(record);
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
        let (store, key, server) = (
            self.credentials.store.clone(),
            self.key.clone(),
            self.settings.server.clone(),
        );
        tokio::task::spawn_blocking(move || store.load(&key, &server))
            .await
            .map_err(|e| AuthError::fatal(format!("the credential store failed: {e}")))?
            .map_err(|e| AuthError::fatal(e.to_string()))
    }

    /// Takes a stored record's tokens and registration as the current ones.
    fn adopt(&self, record: Record) {
        let mut state = self.lock();
        if let Some(registration) = record.registration {
            state.registration = Some(registration);
        }
        if record.resource_metadata_url.is_some() {
            state.known_metadata_url = record.resource_metadata_url;
        }
        match record.tokens {
            Some(tokens) => Self::set_tokens(&mut state, tokens),
            None => {
                state.tokens = None;
                state.bearer = None;
                state.generation += 1;
            }
        }
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
            Record {
                resource_metadata_url: state
                    .discovered
                    .as_ref()
                    .and_then(|d| d.resource_metadata_url.as_ref())
                    .map(ToString::to_string)
                    .or_else(|| state.known_metadata_url.clone()),
                issuer: state
                    .registration
                    .as_ref()
                    .map(|r| r.issuer.clone())
                    .or_else(|| state.discovered.as_ref().map(|d| d.server.issuer.clone())),
                tokens: state.tokens.clone(),
                // A client from the config stays in the config.
                registration: state
                    .registration
                    .clone()
                    .filter(|_| self.settings.client.is_none()),
            }
        };
        let (store, key) = (self.credentials.store.clone(), self.key.clone());
        let saved = tokio::task::spawn_blocking(move || store.save(&key, &record)).await;
        let error = match saved {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(server = %self.settings.server, %error, "cannot save credentials; they are kept in memory");
        self.lock().dirty = true;
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

    /// Revokes the stored tokens where the server offers revocation (RFC 7009) and
    /// deletes the record. Returns what could not be revoked; the record is deleted
    /// either way, because that is what the person asked for.
    pub async fn logout(&self) -> Result<Vec<String>, AuthError> {
        let _held = self.flow_lock().await?;
        if let Some(record) = self.load().await? {
            self.adopt(record);
        }
        let (tokens, registration) = {
            let state = self.lock();
            (state.tokens.clone(), state.registration.clone())
        };
        let mut problems = Vec::new();
        if let Some(tokens) = tokens {
            match self.discover(None).await {
                Ok(found) => match &found.server.revocation_endpoint {
                    Some(endpoint) => {
                        let client = registration
                            .filter(|r| r.issuer == found.server.issuer)
                            .or_else(|| {
                                match registration::plan(
                                    &self.settings.server,
                                    &found.server,
                                    self.settings.client.as_ref(),
                                    None,
                                    "",
                                ) {
                                    Ok(Plan::Ready(r)) => Some(r),
                                    _ => None,
                                }
                            });
                        match client {
                            Some(client) => {
                                let credentials = client.credentials();
                                // The refresh token first: revoking it usually ends the
                                // access tokens issued from it too.
                                let revocations = tokens
                                    .refresh_token
                                    .iter()
                                    .map(|t| (t, "refresh_token"))
                                    .chain([(&tokens.access_token, "access_token")]);
                                for (token, hint) in revocations {
                                    if let Err(e) =
                                        token::revoke(&self.http, endpoint, &credentials, token, hint)
                                            .await
                                    {
                                        problems.push(format!("{hint} not revoked: {e}"));
                                    }
                                }
                            }
                            None => problems.push(
                                "no client registration to revoke with; the tokens expire on their own".into(),
                            ),
                        }
                    }
                    None => problems.push(format!(
                        "{} offers no revocation endpoint; the tokens expire on their own",
                        found.server.issuer
                    )),
                },
                Err(e) => problems.push(format!("not revoked: {}", e.message)),
            }
        }
        let (store, key) = (self.credentials.store.clone(), self.key.clone());
        tokio::task::spawn_blocking(move || store.delete(&key))
            .await
            .map_err(|e| AuthError::fatal(e.to_string()))?
            .map_err(|e| AuthError::fatal(e.to_string()))?;
        let mut state = self.lock();
        state.tokens = None;
        state.bearer = None;
        state.registration = None;
        state.generation += 1;
        state.dirty = false;
        Ok(problems)
    }

    pub fn status(&self) -> AuthStatus {
        self.lock().status.clone().unwrap_or(AuthStatus::Ready)
    }

    /// Expiry and scopes of the current tokens, for status displays.
    pub fn token_info(&self) -> Option<(Option<SystemTime>, Vec<String>)> {
        self.lock()
            .tokens
            .as_ref()
            .map(|t| (t.expires_at, t.scopes.clone()))
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
        let renewable = self.settings.grant == Grant::ClientCredentials
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
    /// flow of our own only if that is not enough.
    async fn locked_flow(&self, trigger: &Trigger) -> Result<(), AuthError> {
        // Unsaved tokens in memory are newer than anything stored: keep them.
        if self.credentials.lock_dir.is_some() && !self.lock().dirty {
            let record = self.load().await?;
            let held = self.lock().tokens.clone();
            if let Some(record) = record.filter(|r| r.tokens != held && r.tokens.is_some()) {
                let live = record
                    .tokens
                    .as_ref()
                    .is_some_and(|t| store::is_live(t, SystemTime::now()));
                tracing::debug!(server = %self.settings.server, "using credentials another latchkey process stored");
                self.adopt(record);
                if live && !trigger.step_up {
                    return Ok(());
                }
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
                        "the server keeps asking for more scopes after {MAX_STEP_UPS} step-ups in {} minutes; giving up for now (run `latchkey login {}` to try again at once)",
                        STEP_UP_WINDOW.as_secs() / 60,
                        self.settings.server
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
            match self.refresh(refresh_token, &granted).await {
                Ok(()) => return Ok(()),
                Err(Refresh::Dead) => {}
                Err(Refresh::Failed(e)) => return Err(e),
            }
        }
        match self.settings.grant {
            Grant::AuthorizationCode => self.browser_flow(trigger, &granted).await,
            Grant::ClientCredentials => self.client_credentials(trigger, &granted).await,
        }
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
        let scopes: Vec<String> = scopes_for(trigger, &found, granted)
            .into_iter()
            // offline_access asks for a refresh token, which this grant does not use.
            .filter(|scope| scope != "offline_access")
            .collect();
        let resource = settings.send_resource.then_some(found.resource.as_str());
        let tokens = token::client_credentials(
            &self.http,
            &found.server.token_endpoint,
            &registration.credentials(),
            &scopes,
            resource,
        )
        .await;
        self.finish_grant(tokens)
    }

    /// Stores what a grant returned, or reports why it failed; an `invalid_client`
    /// forgets the registration so the next login registers again.
    fn finish_grant(&self, tokens: Result<TokenSet, TokenError>) -> Result<(), AuthError> {
        match tokens {
            Ok(tokens) => {
                self.store(tokens);
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

    async fn refresh(&self, refresh_token: &Secret, granted: &[String]) -> Result<(), Refresh> {
        // After a restart nothing is discovered yet: find the token endpoint again
        // (a failure keeps every credential and is retryable).
        let known = self.lock().discovered.clone();
        let found = match known {
            Some(found) => found,
            None => {
                let found = self.discover(None).await.map_err(Refresh::Failed)?;
                self.lock().discovered = Some(found.clone());
                found
            }
        };
        let stored = self
            .lock()
            .registration
            .clone()
            .filter(|r| r.issuer == found.server.issuer);
        let registration = match (stored, &self.settings.client) {
            (Some(registration), _) => registration,
            (None, Some(_)) => match registration::plan(
                &self.settings.server,
                &found.server,
                self.settings.client.as_ref(),
                None,
                "",
            ) {
                Ok(Plan::Ready(registration)) => registration,
                _ => return Err(Refresh::Dead),
            },
            (None, None) => return Err(Refresh::Dead),
        };
        let resource = self
            .settings
            .send_resource
            .then_some(found.resource.as_str());
        match token::refresh(
            &self.http,
            &found.server.token_endpoint,
            &registration.credentials(),
            refresh_token,
            resource,
            granted,
        )
        .await
        {
            Ok(tokens) => {
                self.store(tokens);
                Ok(())
            }
            Err(TokenError::InvalidGrant { .. }) => {
                // The grant is dead: drop the tokens, keep the registration.
                let mut state = self.lock();
                state.tokens = None;
                state.bearer = None;
                state.generation += 1;
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
        discovery::discover(&self.http, &self.settings.resource_url, challenge)
            .await
            .map_err(|e| self.failed(&e, e.is_retryable()))
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
        });
        tracing::info!(server = %settings.server, "waiting for the login in the browser");
        let pending = Arc::new(pending);
        let checker = pending.clone();
        let code = redirect
            .complete(
                pending.url.clone(),
                settings.flow_timeout,
                Box::new(move |url| checker.finish(url).map_err(|e| e.to_string())),
            )
            .await
            .map_err(AuthError::fatal)?;
        let tokens = token::exchange_code(
            &self.http,
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
        self.finish_grant(tokens)
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
            url: device
                .verification_uri_complete
                .clone()
                .unwrap_or_else(|| device.verification_uri.clone()),
        });
        self.browser.show_device_code(&settings.server, &device);
        let polled = device::poll(
            &self.http,
            &found.server.token_endpoint,
            &credentials,
            &device,
            resource,
            &scopes,
        );
        match tokio::time::timeout(settings.flow_timeout, polled).await {
            Ok(tokens) => self.finish_grant(tokens),
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
        let plan = registration::plan(
            &settings.server,
            &found.server,
            settings.client.as_ref(),
            settings.client_metadata_url.as_deref(),
            redirect_uri,
        );
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

    fn store(&self, tokens: TokenSet) {
        let mut state = self.lock();
        Self::set_tokens(&mut state, tokens);
        state.dirty = true;
    }

    fn set_tokens(state: &mut State, tokens: TokenSet) {
        let now = SystemTime::now();
        state.refresh_after = tokens.expires_at.map(|at| {
            let lifetime = at.duration_since(now).unwrap_or_default();
            at - EXPIRY_MARGIN.min(lifetime / 2)
        });
        // Built once here: every request only copies it.
        state.bearer = HeaderValue::from_str(&format!("Bearer {}", tokens.access_token.expose()))
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

enum Refresh {
    /// The refresh token (or client) is no longer accepted: authorize again.
    Dead,
    Failed(AuthError),
}
