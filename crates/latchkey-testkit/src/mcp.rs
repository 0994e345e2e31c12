use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt as _, stream};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// The protocol revision the fake answers `initialize` with.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// The only revision the fake's `/modern` endpoint speaks (stateless, no `initialize`).
pub const MODERN_VERSION: &str = "2026-07-28";

/// The `requestState` the `/modern` endpoint's `confirm` tool sends and expects back.
pub const MODERN_STATE: &str = "opaque:confirm=1";

/// The largest request body the fake accepts.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running fake MCP server. Dropping it does not stop it; call [`McpUpstream::stop`]
/// or cancel the token passed to [`McpUpstream::start_with`].
#[derive(Debug, Clone)]
pub struct McpUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// Decides whether a bearer token is good. Tests usually ask the [`crate::AuthServer`].
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The upstream as an OAuth-protected resource: requests without a good bearer token
/// get 401 with the `WWW-Authenticate` value `challenge` gives (a function, so that it
/// can name an authorization server started after this upstream).
#[derive(Clone)]
pub struct Protection {
    pub check: TokenCheck,
    pub challenge: Arc<dyn Fn() -> String + Send + Sync>,
    /// Per-method scope rules: given a good token and the JSON-RPC method, the
    /// `WWW-Authenticate` value of a 403 `insufficient_scope`, or `None` to allow.
    pub scope: Option<ScopeCheck>,
    /// DPoP (RFC 9449 §7): the tokens are presented with the `DPoP` scheme and a
    /// proof, which this checks before `check` sees the token.
    pub dpop: Option<DpopCheck>,
}

pub type ScopeCheck = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// A request's DPoP parts, as a [`DpopCheck`] gets them.
#[derive(Debug)]
pub struct DpopPresented<'a> {
    /// The `Authorization` scheme: `Bearer` or `DPoP`.
    pub scheme: &'a str,
    pub token: &'a str,
    /// The `DPoP` header.
    pub proof: Option<&'a str>,
    pub method: &'a str,
    /// The URL the request was sent to, without the query.
    pub htu: String,
}

/// Admits a request (with the `DPoP-Nonce` to announce on the response, if any) or
/// refuses it with 401: the `WWW-Authenticate` value and the `DPoP-Nonce` to send.
pub type DpopCheck = Arc<
    dyn Fn(&DpopPresented<'_>) -> Result<Option<String>, (String, Option<String>)> + Send + Sync,
>;

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Shared {
    protection: Option<Protection>,
    requests: Mutex<Vec<RecordedRequest>>,
    sessions: Mutex<HashMap<String, Session>>,
    next_session: AtomicU64,
    /// Released by the test to let the `gated` tool finish its SSE reply.
    gate: Notify,
    /// How many `/modern` `slow` calls ended with the client closing their stream.
    closed_early: AtomicU64,
    /// The streams of `polled` calls, by stream name.
    polled: Mutex<HashMap<String, Polled>>,
    next_polled: AtomicU64,
}

/// The stream of a `polled` call, which the server closes at chosen points without
/// ending it, for the client to resume with a GET carrying `Last-Event-ID`
/// (2025-11-25 "Resumability and Redelivery", SEP-1699). Its events are a priming
/// event (id and `retry`, no data), two progress notifications and the result; event
/// `n` has the id `{stream}-{n}`. The call's arguments choose the rest: `breaks`, the
/// events after which a connection closes (0: right after the priming event);
/// `retry`, in milliseconds (default 100); `repeat`, a resumption that starts with the
/// event `Last-Event-ID` names (a server off by one); `lost`, a resumption that
/// finds nothing (an empty stream).
#[derive(Debug)]
struct Polled {
    events: Vec<Bytes>,
    breaks: VecDeque<usize>,
    repeat: bool,
    lost: bool,
}

impl Polled {
    /// The events of one connection from event `from`: up to the next break, or all.
    fn connection(&mut self, from: usize) -> Vec<Bytes> {
        while self.breaks.front().is_some_and(|&b| b < from) {
            self.breaks.pop_front();
        }
        let end = self
            .breaks
            .pop_front()
            .map_or(self.events.len(), |b| b + 1)
            .min(self.events.len());
        self.events.get(from..end).unwrap_or_default().to_vec()
    }
}

#[derive(Debug, Default)]
struct Session {
    /// Server-to-client messages for the session's GET stream (Streamable HTTP) or its
    /// only stream (legacy SSE).
    stream: Option<mpsc::UnboundedSender<Value>>,
    legacy: bool,
}

impl McpUpstream {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(
            "127.0.0.1:0".parse().expect("valid address"),
            CancellationToken::new(),
        )
        .await
    }

    /// Starts on an ephemeral loopback port, requiring bearer tokens.
    pub async fn start_protected(protection: Protection) -> std::io::Result<Self> {
        Self::start_protected_on("127.0.0.1:0".parse().expect("valid address"), protection).await
    }

    /// Starts on `addr`, requiring bearer tokens.
    pub async fn start_protected_on(
        addr: SocketAddr,
        protection: Protection,
    ) -> std::io::Result<Self> {
        Self::serve(addr, CancellationToken::new(), Some(protection)).await
    }

    /// Starts on `addr`, serving until `stop` is cancelled.
    pub async fn start_on(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<Self> {
        Self::serve(addr, stop, None).await
    }

    async fn serve(
        addr: SocketAddr,
        stop: CancellationToken,
        protection: Option<Protection>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            protection,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/mcp", post(mcp_post).get(mcp_get).delete(mcp_delete))
            .route("/modern", post(modern_post))
            .route("/sse", get(legacy_sse))
            .route("/messages", post(legacy_post))
            .with_state(shared.clone())
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                protect,
            ))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), record));
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Streamable HTTP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// A 2026-07-28-only endpoint: no `initialize` (refused with the versions it
    /// speaks), `server/discover`, the per-request `_meta` and the `Mcp-Method`/
    /// `Mcp-Name` headers required, and a `confirm` tool that asks for an elicitation
    /// by a multi round-trip (`input_required`) result.
    pub fn modern_url(&self) -> String {
        format!("http://{}/modern", self.addr)
    }

    /// The legacy HTTP+SSE endpoint.
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Lets one pending call of the `gated` tool send its result.
    /// Forgets every session, as a server that restarted or expired them would: the
    /// next request with an old session id gets 404.
    pub fn forget_sessions(&self) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many calls of the `/modern` `slow` tool the client cancelled by closing
    /// their stream (2026-07-28 cancellation).
    pub fn closed_early(&self) -> u64 {
        self.shared.closed_early.load(Ordering::Relaxed)
    }

    pub fn open_gate(&self) {
        self.shared.gate.notify_one();
    }

    /// Sends a notification on a session's standalone stream. Returns false if the
    /// session has no open stream.
    pub fn notify(&self, session: &str, message: Value) -> bool {
        let sessions = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sessions
            .get(session)
            .and_then(|s| s.stream.as_ref())
            .is_some_and(|tx| tx.send(message).is_ok())
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    // The fake's own bodies are small; buffering them here is fine (latchkey's are not).
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    shared
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
        .await
}

async fn protect(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(protection) = &shared.protection else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '));
    let mut announce = None;
    let token = match (&protection.dpop, presented) {
        (None, Some(("Bearer", token))) => Some(token),
        (None, _) | (_, None) => None,
        (Some(dpop), Some((scheme, token))) => {
            let host = request
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let checked = dpop(&DpopPresented {
                scheme,
                token,
                proof: request.headers().get("dpop").and_then(|v| v.to_str().ok()),
                method: request.method().as_str(),
                htu: format!("http://{host}{}", request.uri().path()),
            });
            match checked {
                Ok(nonce) => {
                    announce = nonce;
                    Some(token)
                }
                Err((challenge, nonce)) => {
                    let mut response =
                        jsonrpc_error(StatusCode::UNAUTHORIZED, "DPoP proof refused");
                    if let Ok(value) = HeaderValue::from_str(&challenge) {
                        response.headers_mut().insert("www-authenticate", value);
                    }
                    if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                        response.headers_mut().insert("dpop-nonce", value);
                    }
                    return response;
                }
            }
        }
    };
    let announce = announce.and_then(|n| HeaderValue::from_str(&n).ok());
    let announced = |mut response: Response| {
        if let Some(nonce) = &announce {
            response.headers_mut().insert("dpop-nonce", nonce.clone());
        }
        response
    };
    if let Some(token) = token.filter(|t| (protection.check)(t)) {
        let Some(scope) = &protection.scope else {
            return announced(next.run(request).await);
        };
        let token = token.to_owned();
        let (parts, body) = request.into_parts();
        let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
            return jsonrpc_error(StatusCode::BAD_REQUEST, "unreadable body");
        };
        let method = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["method"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if let Some(challenge) = scope(&token, &method) {
            let mut response = jsonrpc_error(StatusCode::FORBIDDEN, "insufficient scope");
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert("www-authenticate", value);
            }
            return response;
        }
        return announced(
            next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
                .await,
        );
    }
    let mut response = jsonrpc_error(StatusCode::UNAUTHORIZED, "authorization required");
    if let Ok(value) = HeaderValue::from_str(&(protection.challenge)()) {
        response.headers_mut().insert("www-authenticate", value);
    }
    response
}

fn session_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn jsonrpc_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": message}}),
        ),
    )
        .into_response()
}

async fn mcp_post(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return jsonrpc_error(StatusCode::BAD_REQUEST, "parse error");
    };
    let method = message["method"].as_str().unwrap_or("").to_owned();
    let mut new_session = None;
    if method == "initialize" {
        let id = format!(
            "s{}",
            shared.next_session.fetch_add(1, Ordering::Relaxed) + 1
        );
        shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Session::default());
        new_session = Some(id);
    } else {
        let known = session_header(&headers).is_some_and(|id| {
            shared
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&id)
        });
        if !known {
            return jsonrpc_error(StatusCode::NOT_FOUND, "session not found");
        }
    }
    if message.get("id").is_none() {
        // A notification or a response from the client.
        return StatusCode::ACCEPTED.into_response();
    }
    if method == "tools/call" && message["params"]["name"] == "malformed" {
        return (
            [("content-type", "application/json")],
            "{\"jsonrpc\": \"2.0\", \"id\": ",
        )
            .into_response();
    }
    let mut response = if method == "tools/call" && message["params"]["name"] == "gated" {
        gated_reply(shared, message)
    } else if method == "tools/call" && message["params"]["name"] == "polled" {
        polled_reply(&shared, &message)
    } else {
        let reply = answer(&message);
        let wants_sse = headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
            && method == "tools/call";
        if wants_sse {
            sse_response(stream::iter([Ok::<_, std::io::Error>(sse_event(&reply))]))
        } else {
            axum::Json(reply).into_response()
        }
    };
    if let Some(id) = new_session {
        response.headers_mut().insert(
            "mcp-session-id",
            HeaderValue::from_str(&id).expect("session ids are ASCII"),
        );
    }
    response
}

/// An SSE reply that sends a progress notification at once and the result only when
/// the test opens the gate: proof that events are relayed as they arrive.
fn gated_reply(shared: Arc<Shared>, message: Value) -> Response {
    let progress = json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": message["params"]["_meta"]["progressToken"], "progress": 1, "total": 2},
    });
    let result = answer(&message);
    let events = stream::unfold(0u8, move |step| {
        let shared = shared.clone();
        let progress = progress.clone();
        let result = result.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(sse_event(&progress)), 1)),
                1 => {
                    shared.gate.notified().await;
                    Some((Ok(sse_event(&result)), 2))
                }
                _ => None,
            }
        }
    });
    sse_response(events)
}

fn progress(message: &Value, progress: u64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": message["params"]["_meta"]["progressToken"], "progress": progress, "total": 3},
    })
}

/// The POST's part of a `polled` stream (see [`Polled`]).
fn polled_reply(shared: &Shared, message: &Value) -> Response {
    let arguments = &message["params"]["arguments"];
    let name = format!(
        "p{}",
        shared.next_polled.fetch_add(1, Ordering::Relaxed) + 1
    );
    let retry = arguments["retry"].as_u64().unwrap_or(100);
    let mut events = vec![Bytes::from(format!(
        "id: {name}-0\nretry: {retry}\ndata: \n\n"
    ))];
    for (n, event) in [progress(message, 1), progress(message, 2), answer(message)]
        .iter()
        .enumerate()
    {
        events.push(Bytes::from(format!(
            "id: {name}-{}\nevent: message\ndata: {event}\n\n",
            n + 1
        )));
    }
    let mut polled = Polled {
        events,
        breaks: arguments["breaks"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|n| n.as_u64())
                    .map(|n| n as usize)
                    .collect()
            })
            .unwrap_or_default(),
        repeat: arguments["repeat"] == true,
        lost: arguments["lost"] == true,
    };
    let first = polled.connection(0);
    shared
        .polled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name, polled);
    sse_response(stream::iter(first.into_iter().map(Ok::<_, std::io::Error>)))
}

/// A GET that resumes a `polled` stream: the events after the one `last` names (or
/// from it, for `repeat`), up to the next break. `None` if `last` names none.
fn polled_resumption(shared: &Shared, last: &str) -> Option<Response> {
    let (name, n) = last.rsplit_once('-')?;
    let n: usize = n.parse().ok()?;
    let mut streams = shared.polled.lock().unwrap_or_else(PoisonError::into_inner);
    let polled = streams.get_mut(name)?;
    let events = if polled.lost {
        Vec::new()
    } else {
        polled.connection(if polled.repeat { n } else { n + 1 })
    };
    Some(sse_response(stream::iter(
        events.into_iter().map(Ok::<_, std::io::Error>),
    )))
}

fn sse_event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn sse_response<S>(events: S) -> Response
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut response = Response::new(Body::from_stream(events));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// The reply to a request, the same for both transports.
fn answer(message: &Value) -> Value {
    let id = message["id"].clone();
    let result = match message["method"].as_str().unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"tools": {}, "resources": {}},
            "serverInfo": {"name": "latchkey-testkit", "version": "0.1.0"},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "echo", "description": "Echoes its text.",
             "inputSchema": {"type": "object", "properties": {"text": {"type": "string", "x-mcp-header": "Text"}}}},
            {"name": "malformed", "description": "Answers with a body that is not JSON.",
             "inputSchema": {"type": "object"}},
            {"name": "gated", "description": "Streams progress, then answers when the test allows.",
             "inputSchema": {"type": "object"}},
            {"name": "polled", "description": "Answers on a stream it closes and the client resumes.",
             "inputSchema": {"type": "object"}},
            {"name": "annotated", "description": "Has an argument of each type a header may mirror.",
             "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "priority": {"type": "integer", "x-mcp-header": "Priority"},
                "verbose": {"type": "boolean", "x-mcp-header": "Verbose"},
                "opts": {"type": "object", "properties": {"tier": {"type": "integer", "x-mcp-header": "Tier"}}},
                "score": {"type": "number"}}}},
            // One of each kind of invalid x-mcp-header (2026-07-28, SEP-2243): a
            // client on Streamable HTTP leaves these out.
            invalid_tool("invalid_empty", json!({"v": {"type": "string", "x-mcp-header": ""}})),
            invalid_tool("invalid_space", json!({"v": {"type": "string", "x-mcp-header": "My Region"}})),
            invalid_tool("invalid_non_ascii", json!({"v": {"type": "string", "x-mcp-header": "Région"}})),
            invalid_tool("invalid_control", json!({"v": {"type": "string", "x-mcp-header": "Region\t1"}})),
            invalid_tool("invalid_object", json!({"v": {"type": "object", "x-mcp-header": "Data"}})),
            invalid_tool("invalid_number", json!({"v": {"type": "number", "x-mcp-header": "Score"}})),
            invalid_tool("invalid_duplicate", json!({
                "a": {"type": "string", "x-mcp-header": "MyField"},
                "b": {"type": "string", "x-mcp-header": "myfield"}})),
            invalid_tool("invalid_unreachable", json!({
                "v": {"type": "array", "items": {"type": "string", "x-mcp-header": "Item"}}})),
        ]}),
        "tools/call" => {
            let text = message["params"]["arguments"]["text"]
                .as_str()
                .unwrap_or("done");
            json!({"content": [{"type": "text", "text": text}]})
        }
        "resources/list" => json!({"resources": [
            {"uri": "test://hello", "name": "hello", "mimeType": "text/plain"}
        ]}),
        "resources/read" => json!({"contents": [
            {"uri": message["params"]["uri"], "mimeType": "text/plain", "text": "hello from the testkit"}
        ]}),
        other => {
            return json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("method not found: {other}")}});
        }
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Counts a `slow` stream dropped before its end: the client went away.
struct ClosedEarly(Arc<Shared>);

impl Drop for ClosedEarly {
    fn drop(&mut self) {
        self.0.closed_early.fetch_add(1, Ordering::Relaxed);
    }
}

fn modern_error(
    status: StatusCode,
    id: &Value,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    (
        status,
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": error})),
    )
        .into_response()
}

/// `POST /modern`: the server side of 2026-07-28 as a strict server checks it.
async fn modern_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return jsonrpc_error(StatusCode::BAD_REQUEST, "parse error");
    };
    let id = &message["id"];
    let method = message["method"].as_str().unwrap_or("");
    let params = &message["params"];
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bad = |code, text: &str| modern_error(StatusCode::BAD_REQUEST, id, code, text, None);
    if method == "initialize" {
        let data = json!({"supported": [MODERN_VERSION], "requested": params["protocolVersion"]});
        return modern_error(
            StatusCode::BAD_REQUEST,
            id,
            -32022,
            &format!("this server speaks only {MODERN_VERSION}"),
            Some(data),
        );
    }
    let meta = &params["_meta"];
    let version = meta["io.modelcontextprotocol/protocolVersion"].as_str();
    if version.is_none() || !meta["io.modelcontextprotocol/clientCapabilities"].is_object() {
        return bad(
            -32602,
            "missing _meta protocolVersion or clientCapabilities",
        );
    }
    if header("mcp-protocol-version") != version {
        return bad(-32020, "MCP-Protocol-Version does not match _meta");
    }
    if header("mcp-method") != Some(method) {
        return bad(-32020, "Mcp-Method does not match the body");
    }
    if method == "tools/call" && header("mcp-name") != params["name"].as_str() {
        return bad(-32020, "Mcp-Name does not match the body");
    }
    if version != Some(MODERN_VERSION) {
        let data = json!({"supported": [MODERN_VERSION], "requested": version});
        return modern_error(
            StatusCode::BAD_REQUEST,
            id,
            -32022,
            "unsupported protocol version",
            Some(data),
        );
    }
    if message.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    if method == "tools/call" && params["name"] == "slow" {
        // A progress notification, then nothing until the client closes the stream.
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": params["_meta"]["progressToken"], "progress": 1}});
        let closed = ClosedEarly(shared);
        let events = stream::iter([Ok::<_, std::io::Error>(sse_event(&progress))])
            .chain(stream::pending())
            .map(move |event| {
                let _held = &closed;
                event
            });
        return sse_response(events);
    }
    if method == "subscriptions/listen" {
        // The acknowledgment, one list change, an update of each subscribed
        // resource, then open until the client leaves.
        let tag = json!({"io.modelcontextprotocol/subscriptionId": id});
        let mut events = vec![
            json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                   "params": {"_meta": tag, "notifications": params["notifications"]}}),
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                   "params": {"_meta": tag}}),
        ];
        for uri in params["notifications"]["resourceSubscriptions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            events.push(
                json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                "params": {"_meta": tag, "uri": uri}}),
            );
        }
        let events = events
            .into_iter()
            .map(|event| Ok::<_, std::io::Error>(sse_event(&event)));
        return sse_response(stream::iter(events).chain(stream::pending()));
    }
    let result = match method {
        "server/discover" => json!({
            "supportedVersions": [MODERN_VERSION],
            "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true}},
            "serverInfo": {"name": "latchkey-testkit-modern", "version": "0.1.0"},
            "instructions": "Call confirm to be asked.",
            "ttlMs": 0, "cacheScope": "private",
        }),
        "tools/list" => json!({"ttlMs": 0, "cacheScope": "private", "tools": [
            {"name": "echo", "description": "Echoes its text.",
             "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}},
            {"name": "confirm", "description": "Asks the user to confirm, then answers.",
             "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" if params["name"] == "confirm" => {
            let answer = &params["inputResponses"]["ok"];
            if answer.is_null() {
                json!({"resultType": "input_required", "requestState": MODERN_STATE,
                    "inputRequests": {"ok": {"method": "elicitation/create", "params": {
                        "mode": "form", "message": "Go ahead?",
                        "requestedSchema": {"type": "object", "properties": {"sure": {"type": "boolean"}}}}}}})
            } else if params["requestState"] != MODERN_STATE {
                return bad(-32602, "requestState was not echoed");
            } else {
                json!({"content": [{"type": "text", "text": format!("{}: {}", answer["action"].as_str().unwrap_or("?"), answer["content"])}]})
            }
        }
        "tools/call" => json!({"content": [{"type": "text",
            "text": params["arguments"]["text"].as_str().unwrap_or("done")}]}),
        other => {
            return modern_error(
                StatusCode::NOT_FOUND,
                id,
                -32601,
                &format!("method not found: {other}"),
                None,
            );
        }
    };
    let mut result = result;
    if result.get("resultType").is_none() {
        result["resultType"] = json!("complete");
    }
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

fn invalid_tool(name: &str, properties: Value) -> Value {
    json!({"name": name, "description": "Its x-mcp-header annotations are invalid.",
           "inputSchema": {"type": "object", "properties": properties}})
}

/// `GET /mcp`: the session's stream of server-initiated messages, or the resumption
/// of a `polled` stream.
async fn mcp_get(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(id) = session_header(&headers) else {
        return jsonrpc_error(StatusCode::BAD_REQUEST, "Mcp-Session-Id required");
    };
    let known = shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(&id);
    if let Some(resumed) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|_| known)
        .and_then(|last| polled_resumption(&shared, last))
    {
        return resumed;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut sessions = shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(session) = sessions.get_mut(&id) else {
            return jsonrpc_error(StatusCode::NOT_FOUND, "session not found");
        };
        session.stream = Some(tx);
    }
    sse_response(message_stream(rx, Bytes::from_static(b": stream open\n\n")))
}

fn message_stream(
    rx: mpsc::UnboundedReceiver<Value>,
    first: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    stream::unfold((rx, Some(first)), |(mut rx, first)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (rx, None)));
        }
        let message = rx.recv().await?;
        Some((Ok(sse_event(&message)), (rx, None)))
    })
}

async fn mcp_delete(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let removed = session_header(&headers).and_then(|id| {
        shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    });
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => jsonrpc_error(StatusCode::NOT_FOUND, "session not found"),
    }
}

/// `GET /sse`: a 2024-11-05 stream. The first event names the endpoint to POST to.
async fn legacy_sse(State(shared): State<Arc<Shared>>) -> Response {
    let id = format!(
        "l{}",
        shared.next_session.fetch_add(1, Ordering::Relaxed) + 1
    );
    let (tx, rx) = mpsc::unbounded_channel();
    shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            id.clone(),
            Session {
                stream: Some(tx),
                legacy: true,
            },
        );
    let endpoint = Bytes::from(format!(
        "event: endpoint\ndata: /messages?sessionId={id}\n\n"
    ));
    sse_response(message_stream(rx, endpoint))
}

#[derive(serde::Deserialize)]
struct LegacyQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `POST /messages?sessionId=…`: replies go out on the session's SSE stream.
async fn legacy_post(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<LegacyQuery>,
    body: Bytes,
) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return jsonrpc_error(StatusCode::BAD_REQUEST, "parse error");
    };
    let sessions = shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(tx) = sessions
        .get(&query.session_id)
        .filter(|s| s.legacy)
        .and_then(|s| s.stream.as_ref())
    else {
        return jsonrpc_error(StatusCode::NOT_FOUND, "session not found");
    };
    if message.get("id").is_some() && message.get("method").is_some() {
        let _ = tx.send(answer(&message));
    }
    StatusCode::ACCEPTED.into_response()
}
