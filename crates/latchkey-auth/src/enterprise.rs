//! Enterprise-Managed Authorization, the MCP extension
//! `io.modelcontextprotocol/enterprise-managed-authorization` (SEP-990): the person
//! signs in once at the enterprise identity provider (OpenID Connect, authorization
//! code with PKCE, in the browser), and every MCP server whose authorization server
//! trusts that IdP gets its tokens without a browser: the ID token is exchanged at
//! the IdP (RFC 8693 token exchange) for an Identity Assertion JWT Authorization
//! Grant (ID-JAG, draft-ietf-oauth-identity-assertion-authz-grant §4.3) addressed to
//! that server's authorization server, which takes it as a JWT bearer grant
//! (RFC 7523, `jwt_bearer.rs`).
//!
//! An [`Idp`] is shared by every server of a process that names it, and its ID
//! token and refresh token are kept in a record of their own (`latchkey:idp:` and
//! the issuer), so that one login serves them all, across processes too: the IdP's
//! flows take the same kind of lock file as a server's. The ID token is refreshed
//! (with the IdP's refresh token) once it has expired; without a refresh token a new
//! login follows. An ID-JAG is used once and never stored.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::Secret;
use crate::authorize::{self, AuthorizationParams};
use crate::discovery::{self, ServerMetadata};
use crate::jwt_bearer::AssertionSource;
use crate::registration::{self, ConfiguredClient, Plan};
use crate::session::{AuthError, Browser, Credentials};
use crate::store::{self, Record};
use crate::target::{Clients, Http};
use crate::token::{self, ClientCredentials, TokenError, TokenSet};

/// The extension's identifier, as a client declares it in `capabilities.extensions`.
pub const EXTENSION: &str = "io.modelcontextprotocol/enterprise-managed-authorization";
/// RFC 8693 §2.1.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an ID-JAG (the draft's §9.1).
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// RFC 8693 §3.
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// An ID token this close to expiry is not exchanged any more: the IdP may see it
/// expired by the time the exchange arrives.
const ID_TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// An `[idps.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpSettings {
    /// The config's name for it, for messages.
    pub name: String,
    pub issuer: String,
    /// latchkey's client at the IdP: the person signs in to it, and it authenticates
    /// the token exchanges.
    pub client: ConfiguredClient,
    /// Asked for at the login: `openid`, and `offline_access` for a refresh token.
    pub scopes: Vec<String>,
    pub redirect_port: u16,
    /// An ID token that another program (a desktop SSO agent) keeps current, read
    /// for each exchange instead of a login of latchkey's own.
    pub id_token: Option<AssertionSource>,
    pub flow_timeout: Duration,
}

/// One IdP as a running latchkey uses it.
pub struct Idp {
    settings: Arc<IdpSettings>,
    http: Http,
    browser: Arc<dyn Browser>,
    credentials: Credentials,
    /// Its record's key in the store, and its lock file's.
    key: String,
    /// One login or refresh at a time in this process (the lock file covers the
    /// others).
    flow: tokio::sync::Mutex<()>,
    metadata: Mutex<Option<ServerMetadata>>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("name", &self.settings.name)
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// The IdPs of this process, so that every server naming the same one (with the
/// same store) shares its login.
static SHARED: Mutex<Vec<Weak<Idp>>> = Mutex::new(Vec::new());

impl Idp {
    /// The process's `Idp` for `settings` on `credentials`' store, made on first use.
    pub fn shared(
        settings: &Arc<IdpSettings>,
        clients: &Clients,
        browser: &Arc<dyn Browser>,
        credentials: &Credentials,
    ) -> Arc<Self> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        shared.retain(|idp| idp.strong_count() > 0);
        let same_store = |idp: &Idp| {
            std::ptr::addr_eq(
                Arc::as_ptr(&idp.credentials.store),
                Arc::as_ptr(&credentials.store),
            )
        };
        if let Some(idp) = shared
            .iter()
            .filter_map(Weak::upgrade)
            .find(|idp| idp.settings == *settings && same_store(idp))
        {
            return idp;
        }
        let resource = url::Url::parse(&settings.issuer)
            .unwrap_or_else(|_| url::Url::parse("https://invalid.invalid").expect("a URL"));
        let idp = Arc::new(Self {
            key: format!("latchkey:idp:{}", settings.issuer),
            http: Http::new(clients.clone(), &resource),
            settings: settings.clone(),
            browser: browser.clone(),
            credentials: credentials.clone(),
            flow: tokio::sync::Mutex::new(()),
            metadata: Mutex::new(None),
        });
        shared.push(Arc::downgrade(&idp));
        idp
    }

    fn failed(&self, e: &dyn std::fmt::Display, retryable: bool) -> AuthError {
        AuthError {
            message: format!(
                "identity provider {:?} ([idps.{}]): {e}",
                self.settings.issuer, self.settings.name
            ),
            retryable,
        }
    }

    /// An ID-JAG for the authorization server `audience` and the MCP server
    /// `resource`, with `scopes`: the person's ID token (from the store, refreshed,
    /// or from a new login) exchanged at the IdP. An ID token the IdP refuses is
    /// dropped and the exchange tried once more with a new one.
    pub async fn assertion(
        &self,
        audience: &str,
        resource: Option<&str>,
        scopes: &[String],
    ) -> Result<Secret, AuthError> {
        let metadata = self.metadata().await?;
        let id_token = self.id_token(&metadata, None).await?;
        match self
            .exchange(&metadata, &id_token, audience, resource, scopes)
            .await
        {
            Err(TokenError::InvalidGrant { .. }) if self.settings.id_token.is_none() => {
                tracing::info!(idp = %self.settings.name, "the identity provider refused the ID token; signing in again");
                let id_token = self.id_token(&metadata, Some(&id_token)).await?;
                self.exchange(&metadata, &id_token, audience, resource, scopes)
                    .await
            }
            outcome => outcome,
        }
        .map_err(|e| self.failed(&e, e.is_retryable()))
    }

    async fn metadata(&self) -> Result<ServerMetadata, AuthError> {
        if let Some(metadata) = self
            .metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(metadata);
        }
        let metadata = discovery::authorization_server(&self.http, &self.settings.issuer)
            .await
            .map_err(|e| self.failed(&e, e.is_retryable()))?;
        *self.metadata.lock().unwrap_or_else(PoisonError::into_inner) = Some(metadata.clone());
        Ok(metadata)
    }

    /// latchkey's client at the IdP, authenticating as its metadata prefers.
    fn client(
        &self,
        metadata: &ServerMetadata,
        redirect_uri: &str,
    ) -> Result<ClientCredentials, AuthError> {
        match registration::plan(
            &self.settings.name,
            metadata,
            Some(&self.settings.client),
            None,
            redirect_uri,
        ) {
            Ok(Plan::Ready(registration)) => Ok(registration.credentials()),
            _ => Err(self.failed(&"client_id is not set", false)),
        }
    }

    /// The RFC 8693 exchange of the ID token for an ID-JAG (the draft's §4.3).
    async fn exchange(
        &self,
        metadata: &ServerMetadata,
        id_token: &Secret,
        audience: &str,
        resource: Option<&str>,
        scopes: &[String],
    ) -> Result<Secret, TokenError> {
        let client = self
            .client(metadata, "")
            .map_err(|e| TokenError::Malformed { cause: e.message })?;
        let scope = scopes.join(" ");
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("requested_token_type", ID_JAG),
            ("audience", audience),
            ("subject_token", id_token.expose()),
            ("subject_token_type", ID_TOKEN),
        ];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let bytes = token::post_form(
            &self.http,
            "token endpoint",
            &metadata.token_endpoint,
            Some(&client),
            &form,
        )
        .await?;
        #[derive(Deserialize)]
        struct Exchanged {
            access_token: String,
            issued_token_type: String,
        }
        // The body holds the grant: a parse error must not quote it.
        let exchanged: Exchanged =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed {
                cause: "not a token exchange response (access_token and issued_token_type)".into(),
            })?;
        if exchanged.issued_token_type != ID_JAG || exchanged.access_token.is_empty() {
            return Err(TokenError::Malformed {
                cause: format!(
                    "the identity provider issued a {:?}, not an identity assertion grant ({ID_JAG})",
                    exchanged.issued_token_type
                ),
            });
        }
        Ok(Secret::new(exchanged.access_token))
    }

    /// A live ID token: handed over by another program, else the stored one (not
    /// `refused`), else a refreshed one, else one from a new login.
    async fn id_token(
        &self,
        metadata: &ServerMetadata,
        refused: Option<&Secret>,
    ) -> Result<Secret, AuthError> {
        if let Some(source) = &self.settings.id_token {
            return source.read().map_err(|e| self.failed(&e, false));
        }
        let _one = self.flow.lock().await;
        let _held = self.lock_file().await?;
        let stored = self.load().await?;
        let tokens = stored.and_then(|record| record.tokens);
        let live = |t: &TokenSet| {
            t.expires_at
                .is_some_and(|at| at > SystemTime::now() + ID_TOKEN_MARGIN)
                && refused.is_none_or(|r| *r != t.access_token)
        };
        if let Some(tokens) = tokens.as_ref().filter(|t| live(t)) {
            return Ok(tokens.access_token.clone());
        }
        let refresh = tokens.as_ref().and_then(|t| t.refresh_token.clone());
        let renewed = match refresh {
            Some(refresh) => match self.refresh(metadata, &refresh).await {
                Ok(tokens) => Some(tokens),
                Err(e) if e.is_retryable() => return Err(self.failed(&e, true)),
                Err(e) => {
                    tracing::info!(idp = %self.settings.name, error = %e, "the identity provider's refresh failed; signing in again");
                    None
                }
            },
            None => None,
        };
        let tokens = match renewed {
            Some(tokens) => tokens,
            None => self.login(metadata).await?,
        };
        self.save(metadata, &tokens).await;
        Ok(tokens.access_token)
    }

    async fn refresh(
        &self,
        metadata: &ServerMetadata,
        refresh: &Secret,
    ) -> Result<TokenSet, TokenError> {
        let client = self
            .client(metadata, "")
            .map_err(|e| TokenError::Malformed { cause: e.message })?;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose()),
        ];
        let bytes = token::post_form(
            &self.http,
            "token endpoint",
            &metadata.token_endpoint,
            Some(&client),
            &form,
        )
        .await?;
        id_tokens(&bytes, Some(refresh), &self.settings.scopes)
    }

    /// The OpenID Connect login in the browser: authorization code with PKCE.
    async fn login(&self, metadata: &ServerMetadata) -> Result<TokenSet, AuthError> {
        let settings = &self.settings;
        discovery::require_pkce(metadata).map_err(|e| self.failed(&e, false))?;
        let redirect = self
            .browser
            .bind(settings.redirect_port)
            .await
            .map_err(|e| self.failed(&e, false))?;
        let redirect_uri = redirect.redirect_uri();
        let client = self.client(metadata, &redirect_uri)?;
        let pending = authorize::start(
            metadata,
            &AuthorizationParams {
                client_id: &client.client_id,
                redirect_uri: &redirect_uri,
                scopes: &settings.scopes,
                resource: None,
                extra: &[],
            },
        )
        .map_err(|e| {
            self.failed(
                &format!("the authorization endpoint is not a URL: {e}"),
                false,
            )
        })?;
        tracing::info!(idp = %settings.name, "waiting for the login at the identity provider in the browser");
        let pending = Arc::new(pending);
        let checker = pending.clone();
        let who = format!("the identity provider {}", settings.name);
        let command = format!(
            "latchkey login NAME, for a server with idp = \"{}\"",
            settings.name
        );
        let code = crate::session::present(
            redirect,
            pending.url.clone(),
            crate::session::Prompt {
                who: &who,
                server: None,
                command: &command,
            },
            settings.flow_timeout,
            Box::new(move |url| checker.finish(url).map_err(|e| e.to_string())),
            |_| {},
        )
        .await
        .map_err(|e| self.failed(&e, false))?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("code_verifier", pending.verifier.expose()),
            ("redirect_uri", pending.redirect_uri.as_str()),
        ];
        let bytes = token::post_form(
            &self.http,
            "token endpoint",
            &metadata.token_endpoint,
            Some(&client),
            &form,
        )
        .await
        .map_err(|e| self.failed(&e, e.is_retryable()))?;
        id_tokens(&bytes, None, &settings.scopes).map_err(|e| self.failed(&e, false))
    }

    async fn lock_file(&self) -> Result<Option<store::FlowLock>, AuthError> {
        let Some(dir) = self.credentials.lock_dir.clone() else {
            return Ok(None);
        };
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || store::FlowLock::acquire(&dir, &key))
            .await
            .map_err(|e| self.failed(&format!("the lock failed: {e}"), false))?
            .map(Some)
            .map_err(|e| self.failed(&e, false))
    }

    async fn load(&self) -> Result<Option<Record>, AuthError> {
        let (store, key, name) = (
            self.credentials.store.clone(),
            self.key.clone(),
            format!("idps.{}", self.settings.name),
        );
        tokio::task::spawn_blocking(move || store.load(&key, &name))
            .await
            .map_err(|e| self.failed(&format!("the credential store failed: {e}"), false))?
            .map_err(|e| self.failed(&e, false))
    }

    /// Keeps the ID token where a server's record keeps its access token. A failed
    /// save is logged: the token still serves this process.
    async fn save(&self, metadata: &ServerMetadata, tokens: &TokenSet) {
        let record = Record {
            issuer: Some(metadata.issuer.clone()),
            token_endpoint: Some(metadata.token_endpoint.clone()),
            tokens: Some(tokens.clone()),
            ..Record::default()
        };
        let (store, key) = (self.credentials.store.clone(), self.key.clone());
        let saved = tokio::task::spawn_blocking(move || store.save(&key, &record)).await;
        if let Err(error) = saved
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(idp = %self.settings.name, %error, "cannot save the identity provider's tokens; they are kept for this login only");
        }
    }
}

/// An OpenID Connect token response: the ID token (as a [`TokenSet`]'s access
/// token, expiring when it says), and the refresh token (else `old_refresh`).
fn id_tokens(
    bytes: &[u8],
    old_refresh: Option<&Secret>,
    scopes: &[String],
) -> Result<TokenSet, TokenError> {
    #[derive(Deserialize)]
    struct Response {
        id_token: Option<String>,
        refresh_token: Option<String>,
    }
    let response: Response = serde_json::from_slice(bytes).map_err(|_| TokenError::Malformed {
        cause: "not a token response".into(),
    })?;
    let id_token =
        response
            .id_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                TokenError::Malformed {
            cause:
                "no id_token in the identity provider's token response; put \"openid\" in scopes"
                    .into(),
        }
            })?;
    let expires_at = expiry(&id_token).ok_or_else(|| TokenError::Malformed {
        cause: "the ID token is not a JWT with an exp claim".into(),
    })?;
    Ok(TokenSet {
        access_token: Secret::new(id_token),
        refresh_token: response
            .refresh_token
            .map(Secret::new)
            .or_else(|| old_refresh.cloned()),
        expires_at: Some(expires_at),
        scopes: scopes.to_vec(),
        // An ID token is never bound: it goes to the IdP's own token exchange.
        dpop: None,
    })
}

/// A JWT's `exp`, read without checking the signature: latchkey only needs to know
/// when to stop presenting it; the IdP that issued it checks it.
fn expiry(jwt: &str) -> Option<SystemTime> {
    let payload = jwt.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(claims["exp"].as_u64()?))
}
