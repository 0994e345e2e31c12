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

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;
use tokio::sync::watch;
use url::Url;

use crate::Secret;
use crate::authorize::{self, AuthorizationParams};
use crate::challenge::BearerChallenge;
use crate::discovery::{self, Discovered};
use crate::registration::{self, ConfiguredClient, Plan, Registration};
use crate::token::{self, CodeGrant, TokenError, TokenSet};

/// Tokens this close to expiry (or past half their lifetime, for short-lived ones) are
/// refreshed before use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// How many step-ups in a row before giving up (MCP authorization: retry limits).
const MAX_STEP_UPS: u32 = 3;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks a redirect URL and returns its authorization code.
pub type RedirectCheck = Box<dyn FnOnce(&Url) -> Result<Secret, String> + Send>;

/// The person at the browser, as seen from here: a redirect listener bound first,
/// then the authorization URL opened and the redirect awaited. The daemon provides the
/// real one; this crate has no HTTP server.
pub trait Browser: Send + Sync + 'static {
    /// Binds the loopback redirect listener on `port` (0: any free port).
    fn bind(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>>;
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

#[derive(Debug)]
pub struct ServerAuth {
    settings: AuthSettings,
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
    status: Option<AuthStatus>,
    flow_running: bool,
    flows_finished: u64,
    step_ups: u32,
}

impl ServerAuth {
    pub fn new(
        settings: AuthSettings,
        http: reqwest::Client,
        browser: Arc<dyn Browser>,
    ) -> Arc<Self> {
        let (finished, _) = watch::channel((0, Ok(())));
        Arc::new(Self {
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
            if state.generation != trigger.seen && !trigger.step_up {
                return Ok(());
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
        let outcome = self.flow(&trigger).await;
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

    async fn flow(&self, trigger: &Trigger) -> Result<(), AuthError> {
        let (refresh_token, granted) = {
            let mut state = self.lock();
            if trigger.step_up {
                state.step_ups += 1;
                if state.step_ups > MAX_STEP_UPS {
                    return Err(AuthError::fatal(format!(
                        "the server keeps asking for more scopes after {MAX_STEP_UPS} step-ups; giving up"
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
        let scopes: Vec<String> = match (&trigger.challenge, trigger.step_up) {
            (Some(challenge), true) => authorize::step_up_scopes(granted, challenge),
            _ => authorize::select_scopes(
                trigger.challenge.as_ref(),
                found.resource_metadata.as_ref(),
                &found.server,
            ),
        }
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
                    self.lock().registration = None;
                }
                Err(AuthError {
                    retryable: e.is_retryable(),
                    message: format!("server {:?}: {e}", self.settings.server),
                })
            }
        }
    }

    async fn refresh(&self, refresh_token: &Secret, granted: &[String]) -> Result<(), Refresh> {
        let (registration, found) = {
            let state = self.lock();
            match (&state.registration, &state.discovered) {
                (Some(r), Some(d)) if r.issuer == d.server.issuer => (r.clone(), d.clone()),
                _ => return Err(Refresh::Dead),
            }
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
                Err(Refresh::Dead)
            }
            Err(TokenError::InvalidClient { .. }) => {
                self.lock().registration = None;
                Err(Refresh::Dead)
            }
            Err(e) => Err(Refresh::Failed(AuthError {
                retryable: e.is_retryable(),
                message: format!("server {:?}: {e}", self.settings.server),
            })),
        }
    }

    async fn discover(&self, challenge: Option<&BearerChallenge>) -> Result<Discovered, AuthError> {
        discovery::discover(&self.http, &self.settings.resource_url, challenge)
            .await
            .map_err(|e| AuthError {
                retryable: e.is_retryable(),
                message: format!("server {:?}: {e}", self.settings.server),
            })
    }

    async fn browser_flow(&self, trigger: &Trigger, granted: &[String]) -> Result<(), AuthError> {
        let settings = &self.settings;
        let found = self.discover(trigger.challenge.as_ref()).await?;
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
        let scopes = match (&trigger.challenge, trigger.step_up) {
            (Some(challenge), true) => authorize::step_up_scopes(granted, challenge),
            _ => authorize::select_scopes(
                trigger.challenge.as_ref(),
                found.resource_metadata.as_ref(),
                &found.server,
            ),
        };
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
            .map_err(|e| AuthError {
                retryable: e.is_retryable(),
                message: format!("server {:?}: {e}", settings.server),
            })?,
            Err(e) => {
                let message = e.to_string();
                self.lock().status = Some(AuthStatus::NeedsClientRegistration {
                    message: message.clone(),
                });
                return Err(AuthError::fatal(message));
            }
        };
        self.lock().registration = Some(registration.clone());
        Ok(registration)
    }

    fn store(&self, tokens: TokenSet) {
        let mut state = self.lock();
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
        state.step_ups = 0;
    }
}

enum Refresh {
    /// The refresh token (or client) is no longer accepted: authorize again.
    Dead,
    Failed(AuthError),
}
