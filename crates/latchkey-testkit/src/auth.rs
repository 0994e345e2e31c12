//! A fake OAuth authorization server and the protected-resource side of an MCP server,
//! with switches for every discovery variant the MCP authorization spec allows (and
//! some it forbids). Everything is served from one loopback port: the MCP resource is
//! `/mcp`, the issuer is the origin plus [`AuthOptions::issuer_path`].
//!
//! [`moving_upstream`] puts one MCP upstream behind two such servers in turn, as a
//! server that moves to another authorization server; every request either receives
//! is kept ([`AuthServer::received`]), with every value it carried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the protected resource metadata is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrmAt {
    /// Only at `/custom/prm.json`, which the 401's `resource_metadata` names.
    HeaderOnly,
    /// `/.well-known/oauth-protected-resource/mcp`.
    PathInserted,
    /// `/.well-known/oauth-protected-resource`.
    Root,
    /// Nowhere: a 2025-03-26 server.
    Nowhere,
}

/// Which authorization server metadata documents exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataAt {
    Rfc8414,
    OpenIdConnect,
    /// OpenID Connect at `<issuer>/.well-known/openid-configuration` (path appended).
    OpenIdAppended,
    Nowhere,
}

#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub prm_at: PrmAt,
    pub metadata_at: MetadataAt,
    /// A path for the issuer, such as `/tenant1`; empty for none.
    pub issuer_path: String,
    /// Publish this `issuer` instead of the real one (a hostile or broken server).
    pub claimed_issuer: Option<String>,
    /// Publish this `resource` in the protected resource metadata instead of `/mcp`'s URL.
    pub claimed_resource: Option<String>,
    /// Advertise `code_challenge_methods_supported: ["S256"]`.
    pub pkce: bool,
    /// Publish a plain-HTTP, non-loopback token endpoint.
    pub insecure_token_endpoint: bool,
    /// Offer dynamic client registration at `/register`.
    pub dcr: bool,
    /// Advertise and send `iss` in the authorization response (RFC 9207).
    pub iss: bool,
    /// Send this `iss` instead (a mix-up attack).
    pub wrong_iss: Option<String>,
    /// Send this `state` instead of the client's.
    pub wrong_state: Option<String>,
    /// Access token lifetime in seconds.
    pub token_lifetime: u64,
    /// Issue a new refresh token on every refresh and revoke the old one.
    pub rotate_refresh_tokens: bool,
    /// A client registered ahead of time: (client_id, client_secret, auth method).
    pub preregistered: Option<(String, Option<String>, String)>,
    /// Offer the device authorization grant (RFC 8628) at `/device_authorization`;
    /// the person approves at `/device?user_code=…`.
    pub device: bool,
    /// Advertise client ID metadata documents: any `https://` client_id is accepted
    /// as a public client (the document itself is not fetched).
    pub cimd: bool,
    /// For [`protected_upstream`]: `tools/call` needs `mcp:write`, and a token without
    /// it gets 403 `insufficient_scope` (a step-up).
    pub write_scope_for_tools: bool,
    /// Never grant `mcp:write`, however often it is asked for (a server whose step-up
    /// can never succeed).
    pub withhold_write: bool,
    /// Answer the authorization server metadata with this status (an outage).
    pub metadata_status: Option<u16>,
    /// Refuse every refresh with this OAuth error code (`invalid_target`, say).
    pub refuse_refresh: Option<String>,
    /// Issue no refresh tokens at all (an OpenID provider asked for `offline_access`
    /// without consent, say).
    pub no_refresh_tokens: bool,
    /// Put before every client id, client secret, code and token this server issues,
    /// so that two servers' values (both count from 1) never look alike.
    pub prefix: String,
    /// Take the JWT bearer grant (RFC 7523 §2.1) with assertions from these issuers
    /// (a workload's platform, an enterprise IdP's ID-JAGs), checked by
    /// [`crate::jwt::verify`]; none: the grant is not offered.
    pub trusted_assertions: Vec<crate::jwt::TrustedIssuer>,
    /// DPoP (RFC 9449): advertise `dpop_signing_alg_values_supported`, check the
    /// proof of every token request that has one and bind its tokens to the proof's
    /// key (`token_type` DPoP), and (in [`protected_upstream`]) take bound tokens
    /// only with the `DPoP` scheme and a proof of that key.
    pub dpop: bool,
    /// With `dpop`: the token endpoint and the upstream want a nonce in the proof
    /// (§8, §9); the upstream announces a new one on every success.
    pub dpop_nonce: bool,
    /// With `dpop`: the algorithms advertised, instead of ES256 and EdDSA.
    pub dpop_algs: Option<Vec<String>>,
    /// A broken DPoP server: with a proof, issue Bearer tokens anyway (not bound).
    pub dpop_unbound: bool,
    /// A broken DPoP server: `token_type` DPoP even to a request without a proof.
    pub dpop_type_without_proof: bool,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            prm_at: PrmAt::PathInserted,
            metadata_at: MetadataAt::Rfc8414,
            issuer_path: String::new(),
            claimed_issuer: None,
            claimed_resource: None,
            pkce: true,
            insecure_token_endpoint: false,
            dcr: true,
            iss: true,
            wrong_iss: None,
            wrong_state: None,
            token_lifetime: 3600,
            rotate_refresh_tokens: true,
            preregistered: None,
            device: false,
            cimd: false,
            write_scope_for_tools: false,
            withhold_write: false,
            metadata_status: None,
            refuse_refresh: None,
            no_refresh_tokens: false,
            prefix: String::new(),
            trusted_assertions: Vec::new(),
            dpop: false,
            dpop_nonce: false,
            dpop_algs: None,
            dpop_unbound: false,
            dpop_type_without_proof: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthServer {
    addr: SocketAddr,
    shared: Arc<AuthShared>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct AuthShared {
    options: AuthOptions,
    origin: String,
    paths: Mutex<Vec<String>>,
    /// Every request, with the values it carried.
    received: Mutex<Vec<Received>>,
    /// The authorization server the protected resource metadata names instead of
    /// this one (see [`AuthServer::name_in_metadata`]).
    names: Mutex<Option<String>>,
    state: Mutex<OAuthState>,
    /// DPoP proof ids seen, at the token endpoint and the upstream.
    jtis: Mutex<std::collections::HashSet<String>>,
}

/// One request as an [`AuthServer`] received it, with every value it carried, for
/// tests that look for a credential where it must not be.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The query parameters, then the form fields, or every string in a JSON body
    /// under its key, by name.
    pub fields: Vec<(String, String)>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The client id and secret of a Basic `Authorization` header, decoded.
    pub basic: Option<(String, String)>,
}

impl Received {
    /// The first field named `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `value` appears anywhere in the request: in a field, in the
    /// `Authorization` header, or in its decoded Basic pair.
    pub fn carries(&self, value: &str) -> bool {
        let basic = self.basic.iter().flat_map(|(id, secret)| [id, secret]);
        self.fields
            .iter()
            .map(|(_, v)| v)
            .chain(&self.authorization)
            .chain(basic)
            .any(|v| v.contains(value))
    }
}

/// What the server has issued.
#[derive(Debug, Default)]
struct OAuthState {
    next: u64,
    clients: HashMap<String, RegisteredClient>,
    codes: HashMap<String, IssuedCode>,
    refresh_tokens: HashMap<String, Grant>,
    access_tokens: HashMap<String, Grant>,
    /// Token requests by grant type, in order.
    grants: Vec<String>,
    /// Device codes by user code: (device code, approved, grant).
    devices: HashMap<String, (String, bool, Grant)>,
    /// Tokens revoked at `/revoke`, in order.
    revoked: Vec<String>,
    /// DPoP: the thumbprint each bound access or refresh token is bound to.
    bound: HashMap<String, String>,
    /// DPoP: the upstream's current nonce (a counter), and every refusal, in order.
    resource_nonce: u64,
    dpop_refusals: Vec<String>,
}

/// A client as registered (dynamically or ahead of time), with its request.
#[derive(Debug, Clone)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_method: String,
    pub redirect_uris: Vec<String>,
    /// The registration request as sent (DCR only).
    pub request: Value,
}

#[derive(Debug, Clone)]
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    grant: Grant,
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub client_id: String,
    pub scope: String,
    pub resource: Option<String>,
}

impl AuthServer {
    pub async fn start(options: AuthOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut state = OAuthState::default();
        if let Some((id, secret, method)) = &options.preregistered {
            state.clients.insert(
                id.clone(),
                RegisteredClient {
                    client_id: id.clone(),
                    client_secret: secret.clone(),
                    auth_method: method.clone(),
                    redirect_uris: Vec::new(),
                    request: Value::Null,
                },
            );
        }
        let shared = Arc::new(AuthShared {
            options,
            origin: format!("http://{addr}"),
            paths: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            names: Mutex::new(None),
            state: Mutex::new(state),
            jtis: Mutex::default(),
        });
        let prefix = shared.options.issuer_path.clone();
        let app = Router::new()
            .route(&format!("{prefix}/authorize"), get(authorize))
            .route(&format!("{prefix}/token"), post(token))
            .route(&format!("{prefix}/register"), post(register))
            .route(
                &format!("{prefix}/device_authorization"),
                post(device_authorization),
            )
            .route(&format!("{prefix}/device"), get(device_approve))
            .route(&format!("{prefix}/revoke"), post(revoke))
            .fallback(serve)
            .with_state(shared.clone())
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record));
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared, stop })
    }

    /// The MCP server URL whose authorization this fake describes.
    pub fn resource_url(&self) -> String {
        format!("{}/mcp", self.shared.origin)
    }

    pub fn issuer(&self) -> String {
        issuer(&self.shared)
    }

    /// The `resource_metadata` URL a 401 from this server would name.
    pub fn header_prm_url(&self) -> String {
        format!("{}/custom/prm.json", self.shared.origin)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every path requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Every access and refresh token it has issued and not forgotten, for tests that
    /// look for them where they must not be.
    pub fn issued_tokens(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .access_tokens
            .keys()
            .chain(state.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// Every refresh token it has issued and not forgotten.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.lock().refresh_tokens.keys().cloned().collect()
    }

    /// Tokens revoked at the RFC 7009 endpoint.
    pub fn revoked(&self) -> Vec<String> {
        self.shared.lock().revoked.clone()
    }

    /// Every request so far, in order, with the values it carried.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether any request so far carried `value` (see [`Received::carries`]).
    pub fn saw(&self, value: &str) -> bool {
        self.received().iter().any(|r| r.carries(value))
    }

    /// The refresh tokens presented at `/token`, in order.
    pub fn presented_refresh_tokens(&self) -> Vec<String> {
        let token = format!("{}/token", self.shared.options.issuer_path);
        self.received()
            .iter()
            .filter(|r| r.path == token)
            .filter_map(|r| r.field("refresh_token").map(str::to_owned))
            .collect()
    }

    /// The client secrets presented anywhere, in a body or a Basic header, in order.
    pub fn presented_client_secrets(&self) -> Vec<String> {
        self.received()
            .iter()
            .flat_map(|r| {
                let field = r.field("client_secret").map(str::to_owned);
                let basic = r.basic.as_ref().map(|(_, secret)| secret.clone());
                field.into_iter().chain(basic)
            })
            .collect()
    }

    /// From now on the protected resource metadata names `issuer` as the
    /// authorization server instead of this one (the resource moved there).
    pub fn name_in_metadata(&self, issuer: &str) {
        *self
            .shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(issuer.to_owned());
    }

    /// The grant types of every token request so far, in order.
    pub fn token_requests(&self) -> Vec<String> {
        self.lock().grants.clone()
    }

    /// Every client registered so far.
    pub fn clients(&self) -> Vec<RegisteredClient> {
        self.lock().clients.values().cloned().collect()
    }

    /// Revokes every access and refresh token (a password change, an admin action).
    pub fn revoke_all(&self) {
        let mut state = self.lock();
        state.access_tokens.clear();
        state.refresh_tokens.clear();
    }

    /// The DPoP key thumbprint a token is bound to (`cnf.jkt`), if it is bound.
    pub fn bound_to(&self, token: &str) -> Option<String> {
        self.lock().bound.get(token).cloned()
    }

    /// Every DPoP refusal so far, at the token endpoint and the upstream, in order:
    /// `use_dpop_nonce`, or why a proof or token was refused.
    pub fn dpop_refusals(&self) -> Vec<String> {
        self.lock().dpop_refusals.clone()
    }

    /// What a live access token stands for, if it is one this server issued.
    pub fn access_token(&self, token: &str) -> Option<Grant> {
        self.lock().access_tokens.get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OAuthState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl AuthShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, OAuthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The largest request body the server reads (and records): axum's default limit,
/// which the routes had before.
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Records every request before it is routed: its path, and every value it carried
/// (query, body, `Authorization`), even if the route then refuses it.
async fn record(
    State(shared): State<Arc<AuthShared>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let pairs = |bytes: &[u8]| {
        url::form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect::<Vec<_>>()
    };
    let mut fields = pairs(parts.uri.query().unwrap_or_default().as_bytes());
    match serde_json::from_slice::<Value>(&body) {
        Ok(json) => json_strings("", &json, &mut fields),
        Err(_) => fields.extend(pairs(&body)),
    }
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        fields,
        authorization: parts
            .headers
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        basic: basic_credentials(&parts.headers),
    };
    shared
        .paths
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received.path.clone());
    shared
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received);
    next.run(Request::from_parts(parts, body.into())).await
}

/// Every string in a JSON document, under the key it is found at.
fn json_strings(key: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((key.to_owned(), s.clone())),
        Value::Array(items) => items.iter().for_each(|v| json_strings(key, v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| json_strings(k, v, out)),
        _ => {}
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// `GET /authorize`: the user always consents; the answer is a redirect.
async fn authorize(
    State(shared): State<Arc<AuthShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let options = &shared.options;
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    let client_id = param("client_id");
    let redirect_uri = param("redirect_uri");
    let mut state = shared.lock();
    if options.cimd && client_id.starts_with("https://") && !state.clients.contains_key(&client_id)
    {
        state.clients.insert(
            client_id.clone(),
            RegisteredClient {
                client_id: client_id.clone(),
                client_secret: None,
                auth_method: "none".into(),
                redirect_uris: Vec::new(),
                request: Value::Null,
            },
        );
    }
    let Some(client) = state.clients.get(&client_id) else {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    };
    if !client.redirect_uris.is_empty() && !client.redirect_uris.contains(&redirect_uri) {
        return (StatusCode::BAD_REQUEST, "redirect_uri not registered").into_response();
    }
    if param("response_type") != "code"
        || param("code_challenge_method") != "S256"
        || param("code_challenge").is_empty()
    {
        return (
            StatusCode::BAD_REQUEST,
            "PKCE S256 and response_type=code are required",
        )
            .into_response();
    }
    state.next += 1;
    let code = format!("{}code-{}", options.prefix, state.next);
    state.codes.insert(
        code.clone(),
        IssuedCode {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge: param("code_challenge"),
            grant: Grant {
                client_id,
                scope: if options.withhold_write {
                    param("scope")
                        .split_whitespace()
                        .filter(|s| *s != "mcp:write")
                        .collect::<Vec<_>>()
                        .join(" ")
                } else {
                    param("scope")
                },
                resource: q.get("resource").cloned(),
            },
        },
    );
    drop(state);
    let Ok(mut location) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    {
        let mut query = location.query_pairs_mut();
        query.append_pair("code", &code);
        query.append_pair(
            "state",
            options.wrong_state.as_deref().unwrap_or(&param("state")),
        );
        if let Some(iss) = &options.wrong_iss {
            query.append_pair("iss", iss);
        } else if options.iss {
            query.append_pair("iss", &issuer(&shared));
        }
    }
    (StatusCode::FOUND, [("location", location.to_string())]).into_response()
}

/// The client id and secret of a Basic `Authorization` header (RFC 6749 §2.3.1:
/// each form-urlencoded).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        })
}

/// Client authentication as RFC 6749 §2.3.1 describes it: Basic or in the body.
/// Returns the client id, or `None` if authentication fails.
fn authenticate(
    state: &OAuthState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<String> {
    let basic = basic_credentials(headers);
    let (client_id, secret, method) = match (basic, form.get("client_secret")) {
        (Some((id, secret)), _) => (id, Some(secret), "client_secret_basic"),
        (None, Some(secret)) => (
            form.get("client_id").cloned().unwrap_or_default(),
            Some(secret.clone()),
            "client_secret_post",
        ),
        (None, None) => (
            form.get("client_id").cloned().unwrap_or_default(),
            None,
            "none",
        ),
    };
    let client = state.clients.get(&client_id)?;
    (client.auth_method == method && client.client_secret == secret).then_some(client_id)
}

/// `POST /token`: authorization_code and refresh_token grants.
async fn token(
    State(shared): State<Arc<AuthShared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let options = &shared.options;
    let mut state = shared.lock();
    // The proof first: a request refused for its proof (or for a nonce) is no grant.
    let jkt = match token_proof(&shared, &mut state, &headers) {
        Ok(jkt) => jkt,
        Err(refusal) => return *refusal,
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    state.grants.push(grant_type.clone());
    // A JWT bearer grant may come without client authentication (RFC 7523 §3.1).
    let anonymous = grant_type == JWT_BEARER
        && basic_credentials(&headers).is_none()
        && !form.contains_key("client_id");
    let client_id = match authenticate(&state, &headers, &form) {
        Some(client_id) => client_id,
        None if anonymous => String::new(),
        None => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    let resource = form.get("resource").cloned();
    if let Some(refresh) = form
        .get("refresh_token")
        .filter(|_| grant_type == "refresh_token")
        && let Some(bound) = state.bound.get(refresh)
        && jkt.as_ref() != Some(bound)
    {
        state
            .dpop_refusals
            .push("refresh token without its key".into());
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the refresh token is bound to another DPoP key",
        );
    }
    let grant = match grant_type.as_str() {
        JWT_BEARER if !options.trusted_assertions.is_empty() => {
            match bearer_grant(&shared, &form, &client_id, resource.as_deref()) {
                Ok(grant) => grant,
                Err(why) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &why),
            }
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(issued) = state.codes.remove(&code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if issued.client_id != client_id
                || form.get("redirect_uri") != Some(&issued.redirect_uri)
                || challenge != issued.challenge
                || resource != issued.grant.resource
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code, verifier, redirect_uri or resource mismatch",
                );
            }
            issued.grant
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = form.get("device_code").cloned().unwrap_or_default();
            let found = state
                .devices
                .iter()
                .find(|(_, (device, _, _))| *device == code)
                .map(|(user, (_, approved, grant))| (user.clone(), *approved, grant.clone()));
            match found {
                None => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "expired_token",
                        "unknown device code",
                    );
                }
                Some((_, false, _)) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "authorization_pending",
                        "the person has not approved yet",
                    );
                }
                Some((user, true, grant)) => {
                    if grant.client_id != client_id || resource != grant.resource {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "client or resource mismatch",
                        );
                    }
                    state.devices.remove(&user);
                    grant
                }
            }
        }
        "refresh_token" if options.refuse_refresh.is_some() => {
            let error = options.refuse_refresh.clone().unwrap_or_default();
            return oauth_error(StatusCode::BAD_REQUEST, &error, "refused by the test");
        }
        "refresh_token" => {
            let token = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(grant) = state.refresh_tokens.get(&token).cloned() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or revoked refresh token",
                );
            };
            if grant.client_id != client_id || resource != grant.resource {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "client or resource mismatch",
                );
            }
            if options.rotate_refresh_tokens {
                state.refresh_tokens.remove(&token);
            }
            grant
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "not supported",
            );
        }
    };
    state.next += 1;
    let access = format!("{}at-{}", options.prefix, state.next);
    let refresh = if options.no_refresh_tokens
        || (grant_type == "refresh_token" && !options.rotate_refresh_tokens)
    {
        None
    } else {
        Some(format!("{}rt-{}", options.prefix, state.next))
    };
    state.access_tokens.insert(access.clone(), grant.clone());
    if let Some(refresh) = &refresh {
        state.refresh_tokens.insert(refresh.clone(), grant.clone());
    }
    let jkt = jkt.filter(|_| !options.dpop_unbound);
    if let Some(jkt) = &jkt {
        for token in std::iter::once(&access).chain(&refresh) {
            state.bound.insert(token.clone(), jkt.clone());
        }
    }
    let dpop = jkt.is_some() || options.dpop_type_without_proof;
    let mut body = json!({
        "access_token": access,
        "token_type": if dpop { "DPoP" } else { "Bearer" },
        "expires_in": options.token_lifetime,
        "scope": grant.scope,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    axum::Json(body).into_response()
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What a JWT bearer grant's assertion stands for, once [`crate::jwt::verify`] took
/// it; an ID-JAG also names the resource and client it was issued for (the draft's
/// §3), and they must be this request's.
fn bearer_grant(
    shared: &AuthShared,
    form: &HashMap<String, String>,
    client_id: &str,
    resource: Option<&str>,
) -> Result<Grant, String> {
    let assertion = form.get("assertion").map_or("", String::as_str);
    let claims = crate::jwt::verify(
        assertion,
        &shared.options.trusted_assertions,
        &issuer(shared),
    )?;
    if let Some(named) = claims.get("resource")
        && named.as_str() != resource
    {
        return Err("the assertion was issued for another resource".into());
    }
    if let Some(named) = claims.get("client_id")
        && named.as_str() != Some(client_id)
    {
        return Err("the assertion was issued to another client".into());
    }
    Ok(Grant {
        client_id: if client_id.is_empty() {
            claims["sub"].as_str().unwrap_or_default().to_owned()
        } else {
            client_id.to_owned()
        },
        scope: form.get("scope").cloned().unwrap_or_default(),
        resource: resource.map(str::to_owned),
    })
}

/// `POST /device_authorization` (RFC 8628 §3.1-3.2).
async fn device_authorization(
    State(shared): State<Arc<AuthShared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let issuer = issuer(&shared);
    let mut state = shared.lock();
    let Some(client_id) = authenticate(&state, &headers, &form) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    state.next += 1;
    let (device_code, user_code) = (
        format!("{}dc-{}", shared.options.prefix, state.next),
        format!("WXYZ-{}", state.next),
    );
    let grant = Grant {
        client_id,
        scope: form.get("scope").cloned().unwrap_or_default(),
        resource: form.get("resource").cloned(),
    };
    state
        .devices
        .insert(user_code.clone(), (device_code.clone(), false, grant));
    axum::Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{issuer}/device"),
        "verification_uri_complete": format!("{issuer}/device?user_code={user_code}"),
        "expires_in": 600,
        "interval": 1,
    }))
    .into_response()
}

/// `GET /device?user_code=…`: the person enters the code and approves.
async fn device_approve(
    State(shared): State<Arc<AuthShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = q.get("user_code").cloned().unwrap_or_default();
    match shared.lock().devices.get_mut(&code) {
        Some((_, approved, _)) => {
            *approved = true;
            "approved; return to your terminal".into_response()
        }
        None => (StatusCode::NOT_FOUND, "unknown user code").into_response(),
    }
}

/// `POST /revoke` (RFC 7009): forgets the token, whichever kind it is.
async fn revoke(
    State(shared): State<Arc<AuthShared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").cloned().unwrap_or_default();
    let mut state = shared.lock();
    state.access_tokens.remove(&token);
    state.refresh_tokens.remove(&token);
    state.revoked.push(token);
    StatusCode::OK.into_response()
}

/// `POST /register`: RFC 7591 dynamic client registration.
async fn register(
    State(shared): State<Arc<AuthShared>>,
    axum::Json(request): axum::Json<Value>,
) -> Response {
    if !shared.options.dcr {
        return StatusCode::NOT_FOUND.into_response();
    }
    let redirect_uris: Vec<String> = request["redirect_uris"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris is required",
        );
    }
    let auth_method = request["token_endpoint_auth_method"]
        .as_str()
        .unwrap_or("client_secret_basic")
        .to_owned();
    let mut state = shared.lock();
    state.next += 1;
    let prefix = &shared.options.prefix;
    let client_id = format!("{prefix}client-{}", state.next);
    let client_secret = (auth_method != "none").then(|| format!("{prefix}secret-{}", state.next));
    let mut body = json!({
        "client_id": client_id,
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": auth_method,
    });
    if let Some(secret) = &client_secret {
        body["client_secret"] = json!(secret);
    }
    state.clients.insert(
        client_id.clone(),
        RegisteredClient {
            client_id,
            client_secret,
            auth_method,
            redirect_uris,
            request,
        },
    );
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

fn issuer(shared: &AuthShared) -> String {
    format!("{}{}", shared.origin, shared.options.issuer_path)
}

async fn serve(State(shared): State<Arc<AuthShared>>, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    let options = &shared.options;
    let prm_path = match options.prm_at {
        PrmAt::HeaderOnly => Some("/custom/prm.json"),
        PrmAt::PathInserted => Some("/.well-known/oauth-protected-resource/mcp"),
        PrmAt::Root => Some("/.well-known/oauth-protected-resource"),
        PrmAt::Nowhere => None,
    };
    if prm_path == Some(path.as_str()) {
        let named = shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| issuer(&shared));
        return axum::Json(json!({
            "resource": options.claimed_resource.clone().unwrap_or_else(|| format!("{}/mcp", shared.origin)),
            "authorization_servers": [named],
            "scopes_supported": ["mcp:read", "mcp:write"],
        }))
        .into_response();
    }
    let issuer_path = options.issuer_path.as_str();
    let metadata_path = match options.metadata_at {
        MetadataAt::Rfc8414 => Some(format!(
            "/.well-known/oauth-authorization-server{issuer_path}"
        )),
        MetadataAt::OpenIdConnect => {
            Some(format!("/.well-known/openid-configuration{issuer_path}"))
        }
        MetadataAt::OpenIdAppended => {
            Some(format!("{issuer_path}/.well-known/openid-configuration"))
        }
        MetadataAt::Nowhere => None,
    };
    if metadata_path.as_deref() == Some(path.as_str()) {
        if let Some(status) = options.metadata_status {
            return StatusCode::from_u16(status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                .into_response();
        }
        return axum::Json(server_metadata(&shared)).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

fn server_metadata(shared: &AuthShared) -> Value {
    let options = &shared.options;
    let issuer = issuer(shared);
    let token_endpoint = if options.insecure_token_endpoint {
        "http://auth.example.com/token".to_owned()
    } else {
        format!("{issuer}/token")
    };
    let mut document = json!({
        "issuer": options.claimed_issuer.clone().unwrap_or_else(|| issuer.clone()),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token_endpoint,
        "authorization_response_iss_parameter_supported": options.iss,
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": ["mcp:read", "mcp:write", "offline_access"],
    });
    if options.pkce {
        document["code_challenge_methods_supported"] = json!(["S256"]);
    }
    if options.dcr {
        document["registration_endpoint"] = json!(format!("{issuer}/register"));
    }
    if options.device {
        document["device_authorization_endpoint"] = json!(format!("{issuer}/device_authorization"));
        document["grant_types_supported"] = json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ]);
    }
    if options.cimd {
        document["client_id_metadata_document_supported"] = json!(true);
    }
    if !options.trusted_assertions.is_empty() {
        document["grant_types_supported"]
            .as_array_mut()
            .expect("a list")
            .push(json!(JWT_BEARER));
    }
    if options.dpop {
        document["dpop_signing_alg_values_supported"] = options
            .dpop_algs
            .as_ref()
            .map_or_else(|| json!(["ES256", "EdDSA"]), |algs| json!(algs));
    }
    document["revocation_endpoint"] = json!(format!("{issuer}/revoke"));
    document
}

/// An MCP upstream on `addr` that requires tokens from a new [`AuthServer`]: its 401
/// names the server's protected resource metadata (`PrmAt::HeaderOnly`) and asks for
/// the `mcp:read` scope. `options` set up the authorization server.
pub async fn protected_upstream(
    addr: SocketAddr,
    options: AuthOptions,
) -> std::io::Result<(crate::McpUpstream, AuthServer)> {
    // The upstream comes first (its URL is the resource), so it finds the
    // authorization server through a cell filled once that has started.
    let cell: Arc<std::sync::OnceLock<AuthServer>> = Arc::new(std::sync::OnceLock::new());
    let (check, challenge, scoped, proved) =
        (cell.clone(), cell.clone(), cell.clone(), cell.clone());
    let dpop: Option<crate::DpopCheck> = options.dpop.then(|| {
        Arc::new(move |presented: &crate::DpopPresented<'_>| {
            resource_proof(proved.get(), presented)
        }) as crate::DpopCheck
    });
    let scope: Option<crate::mcp::ScopeCheck> = options.write_scope_for_tools.then(|| {
        Arc::new(move |token: &str, method: &str| {
            let server = scoped.get()?;
            let granted = server.access_token(token)?.scope;
            let has_write = granted.split_whitespace().any(|s| s == "mcp:write");
            (method == "tools/call" && !has_write).then(|| {
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"mcp:read mcp:write\", resource_metadata=\"{}\"",
                    server.header_prm_url()
                )
            })
        }) as crate::mcp::ScopeCheck
    });
    let upstream = crate::McpUpstream::start_protected_on(
        addr,
        crate::Protection {
            check: Arc::new(move |token| {
                check.get().is_some_and(|a| a.access_token(token).is_some())
            }),
            challenge: Arc::new(move || challenge_naming(challenge.get())),
            scope,
            dpop,
        },
    )
    .await?;
    let server = AuthServer::start(in_front_of(&upstream, options)).await?;
    let _ = cell.set(server.clone());
    Ok((upstream, server))
}

/// The upstream's 401 challenge: it names `server`'s protected resource metadata and
/// asks for `mcp:read`.
fn challenge_naming(server: Option<&AuthServer>) -> String {
    let prm = server.map(AuthServer::header_prm_url).unwrap_or_default();
    let dpop = if server.is_some_and(|s| s.shared.options.dpop) {
        ", DPoP algs=\"ES256 EdDSA\""
    } else {
        ""
    };
    format!("Bearer resource_metadata=\"{prm}\", scope=\"mcp:read\"{dpop}")
}

/// DPoP at the token endpoint (RFC 9449 §5, §8): without a proof, the tokens are
/// Bearer tokens; a proof that fails is refused (`invalid_dpop_proof`), and in nonce
/// mode one without this server's nonce gets `use_dpop_nonce` and the nonce. Else
/// the thumbprint the tokens are bound to.
fn token_proof(
    shared: &AuthShared,
    state: &mut OAuthState,
    headers: &HeaderMap,
) -> Result<Option<String>, Box<Response>> {
    let options = &shared.options;
    let Some(proof) = headers
        .get("dpop")
        .filter(|_| options.dpop)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    else {
        return Ok(None);
    };
    let htu = format!("{}/token", issuer(shared));
    let expected = crate::dpop::Expected {
        htm: "POST",
        htu: &htu,
        access_token: None,
    };
    let verified = crate::dpop::verify(&proof, &expected, &shared.jtis).map_err(|why| {
        state.dpop_refusals.push(format!("token endpoint: {why}"));
        Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_dpop_proof",
            &why,
        ))
    })?;
    let nonce = format!("{}as-nonce", options.prefix);
    if options.dpop_nonce && verified.nonce.as_deref() != Some(&nonce) {
        state
            .dpop_refusals
            .push("token endpoint: use_dpop_nonce".into());
        let mut refusal = oauth_error(
            StatusCode::BAD_REQUEST,
            "use_dpop_nonce",
            "Authorization server requires nonce in DPoP proof",
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&nonce) {
            refusal.headers_mut().insert("dpop-nonce", value);
        }
        return Err(Box::new(refusal));
    }
    Ok(Some(verified.jkt))
}

/// DPoP at the upstream (RFC 9449 §7.1, §9): a bound token only with the `DPoP`
/// scheme and a proof of its key for this request; an unbound one only as Bearer. In
/// nonce mode the proof carries the current nonce, and every success announces the
/// next one.
fn resource_proof(
    server: Option<&AuthServer>,
    presented: &crate::DpopPresented<'_>,
) -> Result<Option<String>, (String, Option<String>)> {
    let Some(server) = server else {
        return Err(("DPoP error=\"invalid_token\"".into(), None));
    };
    let shared = &server.shared;
    let prm = server.header_prm_url();
    let refuse = |why: &str| {
        shared.lock().dpop_refusals.push(format!("upstream: {why}"));
        Err((
            format!(
                "DPoP error=\"invalid_token\", algs=\"ES256 EdDSA\", resource_metadata=\"{prm}\""
            ),
            None,
        ))
    };
    let bound = shared.lock().bound.get(presented.token).cloned();
    let jkt = match (bound, presented.scheme) {
        (None, "Bearer") => return Ok(None),
        (None, _) => return refuse("the DPoP scheme for an unbound token"),
        (Some(_), "Bearer") => return refuse("a bound token as Bearer"),
        (Some(jkt), "DPoP") => jkt,
        (Some(_), _) => return refuse("an unknown scheme"),
    };
    let Some(proof) = presented.proof else {
        return refuse("no proof");
    };
    let expected = crate::dpop::Expected {
        htm: presented.method,
        htu: &presented.htu,
        access_token: Some(presented.token),
    };
    let verified = match crate::dpop::verify(proof, &expected, &shared.jtis) {
        Ok(verified) => verified,
        Err(why) => return refuse(&why),
    };
    if verified.jkt != jkt {
        return refuse("a proof of another key than the token's");
    }
    if !shared.options.dpop_nonce {
        return Ok(None);
    }
    let mut state = shared.lock();
    let nonce = |n: u64| format!("{}rs-nonce-{n}", shared.options.prefix);
    let current = nonce(state.resource_nonce);
    // The one before the current is still good, for requests that crossed.
    let previous = state.resource_nonce.checked_sub(1).map(nonce);
    let carried = verified.nonce.as_ref();
    if carried != Some(&current) && (carried.is_none() || carried != previous.as_ref()) {
        state.dpop_refusals.push("upstream: use_dpop_nonce".into());
        return Err((
            format!(
                "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\", resource_metadata=\"{prm}\""
            ),
            Some(current),
        ));
    }
    state.resource_nonce += 1;
    Ok(Some(nonce(state.resource_nonce)))
}

/// `options` for an authorization server of `upstream`: its metadata is where the
/// upstream's 401 says (`PrmAt::HeaderOnly`) and names the upstream as the resource.
fn in_front_of(upstream: &crate::McpUpstream, options: AuthOptions) -> AuthOptions {
    AuthOptions {
        prm_at: PrmAt::HeaderOnly,
        claimed_resource: Some(upstream.mcp_url()),
        ..options
    }
}

/// An MCP upstream that moves from one authorization server to another: see
/// [`moving_upstream`].
#[derive(Debug, Clone)]
pub struct MovingUpstream {
    pub upstream: crate::McpUpstream,
    /// The authorization server named first.
    pub a: AuthServer,
    /// The one named after [`MovingUpstream::move_to_b`].
    pub b: AuthServer,
    moved: Arc<AtomicBool>,
}

impl MovingUpstream {
    /// The switch: from now on the upstream's 401 names B's protected resource
    /// metadata, A's names B as well, and only B's tokens are accepted.
    pub fn move_to_b(&self) {
        self.a.name_in_metadata(&self.b.issuer());
        self.moved.store(true, Ordering::SeqCst);
    }

    /// The authorization server the upstream names now.
    pub fn current(&self) -> &AuthServer {
        if self.moved.load(Ordering::SeqCst) {
            &self.b
        } else {
            &self.a
        }
    }
}

/// An MCP upstream on `addr` protected by two new [`AuthServer`]s, A (set up by `a`)
/// and B (by `b`), one at a time: like [`protected_upstream`], its 401 names the
/// protected resource metadata of the one it names now, and it accepts only that
/// one's tokens. It names A until [`MovingUpstream::move_to_b`]. A's values start
/// with `a-` and B's with `b-` (unless the options set a prefix), so that a value
/// found anywhere tells who issued it. No per-method scopes.
pub async fn moving_upstream(
    addr: SocketAddr,
    a: AuthOptions,
    b: AuthOptions,
) -> std::io::Result<MovingUpstream> {
    // As in protected_upstream: the servers are found through a cell filled once
    // they have started.
    let cell: Arc<std::sync::OnceLock<(AuthServer, AuthServer)>> =
        Arc::new(std::sync::OnceLock::new());
    let moved = Arc::new(AtomicBool::new(false));
    let named = {
        let (cell, moved) = (cell.clone(), moved.clone());
        move || {
            let (a, b) = cell.get()?;
            Some(if moved.load(Ordering::SeqCst) { b } else { a }).cloned()
        }
    };
    let check = named.clone();
    let upstream = crate::McpUpstream::start_protected_on(
        addr,
        crate::Protection {
            check: Arc::new(move |token| check().is_some_and(|s| s.access_token(token).is_some())),
            challenge: Arc::new(move || challenge_naming(named().as_ref())),
            scope: None,
            dpop: None,
        },
    )
    .await?;
    let prefixed = |mut options: AuthOptions, prefix: &str| {
        if options.prefix.is_empty() {
            prefix.clone_into(&mut options.prefix);
        }
        in_front_of(&upstream, options)
    };
    let a = AuthServer::start(prefixed(a, "a-")).await?;
    let b = AuthServer::start(prefixed(b, "b-")).await?;
    let _ = cell.set((a.clone(), b.clone()));
    Ok(MovingUpstream {
        upstream,
        a,
        b,
        moved,
    })
}
