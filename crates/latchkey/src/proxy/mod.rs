//! The local endpoint: a transparent, streaming reverse proxy.
//!
//! A request to `/<server>` is forwarded to that server's `url` with the client's
//! headers (less the ones in [`headers`]) plus the configured static headers. Bodies
//! are streamed both ways, frame by frame: nothing is buffered whole, an SSE event
//! reaches the client as soon as it arrives, and a client that goes away drops the
//! upstream request with it. The per-request work is header edits.

mod bridge;
mod extensions;
mod headers;
mod oauth;
pub(crate) mod sse;
pub(crate) mod sse_endpoint;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Transport};
use crate::error::{ProxyError, describe, describe_chain};
use crate::local_key;
use crate::server::{
    self, AGENT, LEGACY, LoginWait, Parts, STREAMABLE, UNKNOWN, Upstream, http_client,
    oauth_clients,
};
use latchkey_auth::session::Trigger;
use latchkey_auth::session::{Browser, Credentials};
use latchkey_auth::{BearerChallenge, Secret};
use oauth::Payload;
use sse_endpoint::EndpointRewriter;
pub(crate) use sse_endpoint::LegacyEndpoints;

const SESSION_ID: &str = "mcp-session-id";
/// Logins (or refreshes) one request may wait for before its answer is passed on.
const AUTH_ROUNDS: u32 = 2;

/// Everything the request handlers share. Each request gets a handle (one
/// reference count), not a copy of the fields.
#[derive(Debug, Clone)]
pub(crate) struct Proxy(Arc<Shared>);

impl std::ops::Deref for Proxy {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// The configured servers. A reload swaps in a new table; a request costs one
    /// atomic load to find its server, and keeps that server's `Upstream` alive for
    /// as long as it runs, whatever is swapped in meanwhile.
    servers: ArcSwap<Servers>,
    /// What a reload needs to build the `Upstream` of a new or changed server.
    parts: Parts,
    /// For the status page, the HTTP+SSE bridge and servers behind a proxy: the
    /// server's own requests, which may go to any address.
    client: reqwest::Client,
    legacy: LegacyEndpoints,
    bridges: Arc<bridge::Bridges>,
    /// The status page's anti-CSRF token: its forms carry it, and an action without
    /// it is refused.
    pub(crate) csrf: Secret,
    /// `allowed_uids` as the daemon started with it, for the status page.
    allowed_uids: Vec<u32>,
}

/// The server table: by name for requests, and in config order for listings.
#[derive(Debug, Default)]
struct Servers {
    by_name: HashMap<String, Arc<Upstream>>,
    order: Vec<Arc<Upstream>>,
}

impl Servers {
    fn new(order: Vec<Arc<Upstream>>) -> Self {
        Self {
            by_name: order
                .iter()
                .map(|u| (u.config.name.clone(), u.clone()))
                .collect(),
            order,
        }
    }
}

/// What a reload changed, by server name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reloaded {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) unchanged: usize,
}

impl Upstream {
    /// Adds the configured headers and, for an OAuth server, the current token (and
    /// its DPoP proof for a `method` request to `url`). The HTTP+SSE bridge uses this;
    /// it has no login retry of its own.
    fn add_credentials(&self, headers: &mut HeaderMap, method: &str, url: &url::Url) {
        for (name, value) in &self.config.headers {
            headers.insert(name.clone(), value.clone());
        }
        let Some(auth) = &self.auth else {
            return;
        };
        let (bearer, proof, _) = auth
            .session
            .present(method, || latchkey_auth::dpop::htu(url.as_str()));
        if let Some(bearer) = bearer {
            headers.insert(http::header::AUTHORIZATION, bearer);
        }
        if let Some(proof) = proof {
            headers.insert(headers::DPOP, proof);
        }
    }

    /// Whether client POSTs go through the legacy bridge: always for `sse`, and for
    /// `auto` once the server has shown it only speaks HTTP+SSE.
    fn bridged(&self) -> bool {
        match self.config.transport {
            Transport::Sse => true,
            Transport::Auto => self.detected.load(Ordering::Relaxed) == LEGACY,
            Transport::StreamableHttp => false,
        }
    }

    /// Whether a request may belong to a bridged session.
    fn may_bridge(&self) -> bool {
        match self.config.transport {
            Transport::Sse => true,
            Transport::Auto => self.detected.load(Ordering::Relaxed) != STREAMABLE,
            Transport::StreamableHttp => false,
        }
    }
}

impl Proxy {
    pub(crate) fn new(
        config: &Config,
        shutdown: CancellationToken,
        browser: Arc<dyn Browser>,
        credentials: Credentials,
        waits: LoginWait,
        daemon: Option<SocketAddr>,
    ) -> Result<Self, reqwest::Error> {
        let shared = Shared {
            servers: ArcSwap::from_pointee(Servers::default()),
            // Standalone SSE streams (GET) end at shutdown, so that draining waits
            // only for requests that will finish.
            parts: Parts {
                oauth: oauth_clients()?,
                browser,
                credentials,
                connector: server::Connector::new(),
                shutdown,
                waits,
                daemon,
            },
            client: http_client()?,
            legacy: LegacyEndpoints::default(),
            bridges: Arc::default(),
            csrf: latchkey_auth::authorize::random_secret(32),
            allowed_uids: config.allowed_uids.clone(),
        };
        let order = config
            .servers
            .iter()
            .map(|s| Upstream::new(s, &shared.parts))
            .collect();
        shared.servers.store(Arc::new(Servers::new(order)));
        Ok(Self(Arc::new(shared)))
    }
}

impl Shared {
    /// Reads the key of every keyed server among `upstreams` from the store.
    async fn load_keys(&self, upstreams: &[Arc<Upstream>]) {
        let keyed = upstreams
            .iter()
            .filter_map(|u| Some((u.config.name.as_str(), u.key.as_ref()?)));
        local_key::load_all(&self.parts.credentials, keyed).await;
    }

    /// Loads every server's stored credentials, all at once.
    pub(crate) async fn restore(&self) {
        let upstreams = self.upstreams();
        self.load_keys(&upstreams).await;
        restore(&upstreams).await;
    }

    /// Puts `config`'s servers in force. A server whose table is unchanged keeps its
    /// `Upstream`: its OAuth session (tokens in memory, a login under way), its
    /// detected transport and its open streams. A new or changed server gets a fresh
    /// one, with its stored credentials loaded before it is served. A removed or
    /// changed server's standalone streams and bridged sessions end; its requests in
    /// flight finish. Every keyed server's key is read again (`latchkey url --new`).
    pub(crate) async fn reload(&self, config: &Config) -> Reloaded {
        let old = self.servers.load_full();
        let mut reloaded = Reloaded::default();
        let mut fresh = Vec::new();
        let order: Vec<Arc<Upstream>> = config
            .servers
            .iter()
            .map(|server| match old.by_name.get(&server.name) {
                Some(kept) if kept.config == *server => {
                    reloaded.unchanged += 1;
                    kept.clone()
                }
                previous => {
                    if previous.is_some() {
                        reloaded.changed.push(server.name.clone());
                    } else {
                        reloaded.added.push(server.name.clone());
                    }
                    let upstream = Upstream::new(server, &self.parts);
                    fresh.push(upstream.clone());
                    upstream
                }
            })
            .collect();
        self.load_keys(&order).await;
        restore(&fresh).await;
        let new = Servers::new(order);
        for retired in &old.order {
            let name = &retired.config.name;
            let replaced = new
                .by_name
                .get(name)
                .is_none_or(|now| !Arc::ptr_eq(now, retired));
            if !replaced {
                continue;
            }
            if !new.by_name.contains_key(name) {
                reloaded.removed.push(name.clone());
            }
            retired.streams.cancel();
            self.bridges.close_server(name);
        }
        self.servers.store(Arc::new(new));
        reloaded
    }

    /// The servers in config order (for listings; requests use [`Proxy::upstream`]).
    pub(crate) fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.servers.load().order.clone()
    }

    pub(crate) fn allowed_uids(&self) -> &[u32] {
        &self.allowed_uids
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) fn upstream(&self, name: &str) -> Result<Arc<Upstream>, ProxyError> {
        let servers = self.servers.load();
        servers
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownServer {
                name: name.to_owned(),
                known: servers
                    .order
                    .iter()
                    .map(|u| u.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

async fn restore(upstreams: &[Arc<Upstream>]) {
    let loads = upstreams.iter().filter_map(|upstream| {
        let auth = upstream.auth.as_ref()?;
        let name = upstream.config.name.clone();
        Some(async move {
            if let Err(e) = auth.session.restore().await {
                tracing::error!(server = %name, error = %e, "cannot load stored credentials");
            }
            // From now on a logout or another process's refresh is taken up at once.
            auth.session.watch();
        })
    });
    futures_util::future::join_all(loads).await;
}

/// `POST|GET|DELETE /<server>`: forward to the server's URL.
pub(crate) async fn forward(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ProxyError> {
    let upstream = proxy.upstream(&name)?;
    counted(
        &upstream,
        forward_to(&proxy, &upstream, &name, request).await,
    )
}

/// `result`, counted in the server's traffic as the client sees it.
fn counted(
    upstream: &Upstream,
    result: Result<Response, ProxyError>,
) -> Result<Response, ProxyError> {
    upstream.traffic.count(match &result {
        Ok(response) => response.status(),
        Err(e) => e.status(),
    });
    result
}

async fn forward_to(
    proxy: &Proxy,
    upstream: &Arc<Upstream>,
    name: &str,
    request: Request,
) -> Result<Response, ProxyError> {
    local_key::admit(name, upstream.key.as_ref(), request.extensions().get())?;
    let method = request.method();
    if !matches!(*method, Method::POST | Method::GET | Method::DELETE) {
        return Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: format!("/{name}"),
        });
    }
    let uri = upstream.config.uri.clone();
    if !upstream.may_bridge() {
        return send(proxy, upstream, uri, request).await;
    }
    // Boxed, as every path below that is not `send` is taken only by legacy servers
    // and before `auto` has detected the transport: the future of each request is
    // as large as its largest path, and it is moved at least once.
    Box::pin(bridging(proxy, upstream, name, uri, request)).await
}

/// [`forward`] for a server that may speak HTTP+SSE: `sse`, or `auto` before it is
/// known.
async fn bridging(
    proxy: &Proxy,
    upstream: &Upstream,
    name: &str,
    uri: Uri,
    request: Request,
) -> Result<Response, ProxyError> {
    let method = request.method().clone();
    let session = request
        .headers()
        .get(SESSION_ID)
        .map(|id| id.to_str().ok().and_then(|id| proxy.bridges.get(name, id)));
    match session {
        Some(Some(session)) => match method {
            Method::POST => {
                let body = read_whole(request).await?;
                bridge::post(proxy, upstream, &session, body).await
            }
            Method::GET => bridge::get(&session, upstream.streams.clone()),
            _ => Ok(bridge::delete(proxy, &session)),
        },
        Some(None) if upstream.bridged() => Err(ProxyError::UnknownSession),
        None if method == Method::POST && upstream.bridged() => {
            let body = read_whole(request).await?;
            open_bridge(proxy, upstream, body).await
        }
        None if method == Method::POST && upstream.detected.load(Ordering::Relaxed) == UNKNOWN => {
            probe(proxy, upstream, request).await
        }
        _ => send(proxy, upstream, uri, request).await,
    }
}

/// Opens a bridged session for a client's first POST.
async fn open_bridge(
    proxy: &Proxy,
    upstream: &Upstream,
    body: Bytes,
) -> Result<Response, ProxyError> {
    // Every other message belongs to a session; opening one for it would leave an
    // upstream stream that nobody closes.
    if !is_initialize(&body) {
        return Err(ProxyError::BadRequest(
            "no Mcp-Session-Id: start a session with an initialize request first".into(),
        ));
    }
    let session = bridge::open(proxy, upstream).await?;
    let response = bridge::post(proxy, upstream, &session, body).await?;
    Ok(bridge::with_session_id(response, &session))
}

/// `transport = "auto"`, first POST: find out what the server speaks, following the
/// spec's backwards-compatibility rules. The body is kept so that it can be replayed
/// to a legacy server; this happens only until the server's kind is known.
async fn probe(
    proxy: &Proxy,
    upstream: &Upstream,
    request: Request,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let body = read_whole(Request::from_parts(parts.clone(), body)).await?;
    let response = upstream_request(
        proxy,
        upstream,
        &parts.method,
        upstream.config.uri.clone(),
        parts.headers,
        Payload::Whole(body.clone()),
    )
    .await?;
    let status = response.status();
    if status.is_success() {
        upstream.detected.store(STREAMABLE, Ordering::Relaxed);
    } else if status.is_client_error()
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        )
        && is_initialize(&body)
    {
        // A 4xx to an initialize POST: try the HTTP+SSE transport at the same URL.
        match bridge::open(proxy, upstream).await {
            Ok(session) => {
                tracing::info!(server = %upstream.config.name, "server speaks HTTP+SSE (2024-11-05); bridging Streamable HTTP clients to it");
                upstream.detected.store(LEGACY, Ordering::Relaxed);
                let reply = bridge::post(proxy, upstream, &session, body).await?;
                return Ok(bridge::with_session_id(reply, &session));
            }
            Err(e) => {
                tracing::debug!(error = %e, "HTTP+SSE fallback failed; returning the server's answer")
            }
        }
    }
    Ok(relay(proxy, upstream, &parts.method, None, response))
}

fn is_initialize(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|message| message["method"] == "initialize")
}

async fn read_whole(request: Request) -> Result<Bytes, ProxyError> {
    axum::body::to_bytes(request.into_body(), bridge::MAX_MESSAGE)
        .await
        .map_err(|e| {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if too_large {
                ProxyError::TooLarge {
                    limit_mib: bridge::MAX_MESSAGE >> 20,
                }
            } else {
                ProxyError::BadRequest("the request body could not be read".into())
            }
        })
}

/// `POST /<server>/messages/<token>`: a legacy (2024-11-05) client posting to the
/// endpoint that latchkey announced in place of the upstream's.
pub(crate) async fn legacy_message(
    State(proxy): State<Proxy>,
    Path((name, token)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ProxyError> {
    let upstream = proxy.upstream(&name)?;
    let result = legacy_message_to(&proxy, &upstream, &name, &token, request).await;
    counted(&upstream, result)
}

async fn legacy_message_to(
    proxy: &Proxy,
    upstream: &Upstream,
    name: &str,
    token: &str,
    request: Request,
) -> Result<Response, ProxyError> {
    local_key::admit(name, upstream.key.as_ref(), request.extensions().get())?;
    let url = proxy
        .legacy
        .get(name, token)
        .ok_or_else(|| ProxyError::UnknownLegacyEndpoint {
            path: format!("/{name}/messages/{token}"),
        })?;
    let uri = crate::config::request_uri(&url).map_err(|cause| ProxyError::Upstream {
        server: name.to_owned(),
        url: crate::redact::redacted(&url),
        cause,
    })?;
    if request.method() != Method::POST {
        return Err(ProxyError::MethodNotAllowed {
            method: request.method().to_string(),
            path: format!("/{name}/messages/{token}"),
        });
    }
    send(proxy, upstream, uri, request).await
}

async fn send(
    proxy: &Proxy,
    upstream: &Upstream,
    uri: Uri,
    request: Request,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    // A standalone GET stream may be a legacy SSE stream whose first event we rewrite.
    // Where the stream was opened: the rewritten endpoint is under it.
    let rewrite_endpoint = (parts.method == Method::GET
        && upstream.config.transport != Transport::StreamableHttp)
        .then(|| local_key::path(&upstream.config.name, parts.extensions.get()));
    let mut headers = parts.headers;
    if rewrite_endpoint.is_some() {
        // The rewrite needs the bytes as sent, not compressed.
        headers.remove(ACCEPT_ENCODING);
    }
    let body = Payload::read(body, upstream.auth.is_some()).await?;
    let response = upstream_request(proxy, upstream, &parts.method, uri, headers, body).await?;
    Ok(relay(
        proxy,
        upstream,
        &parts.method,
        rewrite_endpoint,
        response,
    ))
}

/// Sends a client's request upstream with the headers edited: the client's own
/// credentials and hop-by-hop headers out, the configured headers (and the OAuth
/// token) in. For an OAuth server, a 401 (or a 403 `insufficient_scope`) waits for the
/// login and sends the request once more.
async fn upstream_request(
    proxy: &Proxy,
    upstream: &Upstream,
    method: &Method,
    uri: Uri,
    mut headers: HeaderMap,
    payload: Payload,
) -> Result<http::Response<Body>, ProxyError> {
    let server = &upstream.config;
    headers::to_upstream(&mut headers);
    let payload = extensions::declare(upstream, &mut headers, payload);
    for (name, value) in &server.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.entry(USER_AGENT).or_insert(AGENT);
    let Some(auth) = &upstream.auth else {
        return transmit(proxy, upstream, method, uri, headers, payload.into_body()).await;
    };
    let mut payload = payload;
    // Round 1 may be answered by a refresh; if the refreshed token is refused too (the
    // server moved to another authorization server, say), round 2 is a full login.
    let mut round = 0;
    // A DPoP nonce asked for is sent once more with it (RFC 9449 §9), outside the rounds.
    let mut nonce_retried = false;
    loop {
        if auth.session.needs_refresh() {
            let seen = auth.session.bearer().1;
            // Waits are boxed here and below: rare, and their futures are large.
            let refreshed = Box::pin(auth.wait(
                upstream,
                Trigger {
                    seen,
                    ..Trigger::default()
                },
            ))
            .await;
            // An early refresh is best effort: the current token is still good for a
            // while, so a failed refresh only matters once it has expired.
            if let Err(e) = refreshed {
                if auth.session.bearer().0.is_none() {
                    return Err(e);
                }
                tracing::warn!(server = %server.name, error = %e, "early refresh failed; using the current token");
            }
        }
        // A bound token's proof names the request's method and URL (no query).
        let (bearer, proof, seen) = auth.session.present(method.as_str(), || htu(&uri));
        let mut attempt_headers = headers.clone();
        if let Some(bearer) = bearer {
            attempt_headers.insert(http::header::AUTHORIZATION, bearer);
        }
        let proved = proof.is_some();
        if let Some(proof) = proof {
            attempt_headers.insert(headers::DPOP, proof);
        }
        let (body, rest) = payload.split();
        payload = rest;
        let response =
            transmit(proxy, upstream, method, uri.clone(), attempt_headers, body).await?;
        let nonce = proved
            && auth
                .session
                .resource_nonce(response.headers().get(latchkey_auth::dpop::DPOP_NONCE));
        let status = response.status();
        let challenge = BearerChallenge::from_headers(
            response
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let step_up = status == StatusCode::FORBIDDEN
            && challenge
                .as_ref()
                .is_some_and(BearerChallenge::is_insufficient_scope);
        if !(status == StatusCode::UNAUTHORIZED || step_up) {
            return Ok(response);
        }
        if nonce
            && !nonce_retried
            && challenge
                .as_ref()
                .is_some_and(BearerChallenge::wants_dpop_nonce)
        {
            nonce_retried = true;
            if matches!(payload, Payload::Spent) {
                return Err(ProxyError::SendAgain {
                    server: server.name.clone(),
                });
            }
            continue;
        }
        if round == AUTH_ROUNDS {
            // A 401 would make the client start an OAuth flow of its own.
            if status == StatusCode::UNAUTHORIZED {
                return Err(ProxyError::Auth {
                    server: server.name.clone(),
                    message: "the server still refuses the token of a new login".into(),
                    command: server.login_command.clone(),
                });
            }
            return Ok(response);
        }
        round += 1;
        Box::pin(auth.wait(
            upstream,
            Trigger {
                seen,
                challenge,
                step_up,
                full_login: round > 1,
            },
        ))
        .await?;
        if matches!(payload, Payload::Spent) {
            return Err(ProxyError::SendAgain {
                server: server.name.clone(),
            });
        }
    }
}

/// A DPoP proof's `htu` for `uri`: scheme, host, port and path, without the query
/// (RFC 9449 §4.2).
fn htu(uri: &Uri) -> String {
    let (scheme, host, path) = (
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or_default(),
        uri.path(),
    );
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

async fn transmit(
    proxy: &Proxy,
    upstream: &Upstream,
    method: &Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<http::Response<Body>, ProxyError> {
    let server = &upstream.config;
    let response = if upstream.proxied {
        via_reqwest(proxy, method, &uri, headers, body).await
    } else {
        let mut request = http::Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        upstream
            .pool
            .send(request)
            .await
            .map_err(|e| describe_chain(&*e))
    };
    match response {
        Ok(response) => {
            upstream.record(Ok(()));
            Ok(response)
        }
        Err(cause) => {
            upstream.record(Err(&cause));
            Err(ProxyError::Upstream {
                server: server.name.clone(),
                url: crate::redact::redacted(&server.url),
                cause,
            })
        }
    }
}

/// The request through reqwest, for a server behind the system's proxy (which
/// the hot path's client does not speak to; see `client.rs`).
async fn via_reqwest(
    proxy: &Proxy,
    method: &Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<http::Response<Body>, String> {
    let url = url::Url::parse(&uri.to_string()).map_err(|e| e.to_string())?;
    proxy
        .client
        .request(method.clone(), url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await
        .map(|response| http::Response::from(response).map(Body::new))
        .map_err(describe)
}

/// Turns the upstream's response into the client's, streaming the body.
fn relay(
    proxy: &Proxy,
    upstream: &Upstream,
    method: &Method,
    rewrite_endpoint: Option<String>,
    response: http::Response<Body>,
) -> Response {
    let (parts, upstream_body) = response.into_parts();
    let status = parts.status;
    let mut headers = parts.headers;
    headers::to_client(&mut headers);
    let is_sse = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"))
        });
    let body = if *method == Method::GET && is_sse {
        // Standalone streams last until a side closes them; at shutdown latchkey does.
        // A reload that removes or changes the server ends them too.
        let stream = Box::pin(
            upstream_body
                .into_data_stream()
                .take_until(upstream.streams.clone().cancelled_owned()),
        );
        if let Some(local) = rewrite_endpoint
            .filter(|_| !headers.contains_key(CONTENT_ENCODING) && status == StatusCode::OK)
        {
            // The rewritten event has another length.
            headers.remove(http::header::CONTENT_LENGTH);
            Body::from_stream(EndpointRewriter::new(
                stream,
                upstream.config.url.clone(),
                &upstream.config.name,
                local,
                proxy.legacy.clone(),
            ))
        } else {
            Body::from_stream(stream)
        }
    } else {
        upstream_body
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}
