//! Streamable HTTP clients in front of HTTP+SSE (2024-11-05) servers.
//!
//! A client that only speaks Streamable HTTP cannot use a legacy server, and many
//! clients do not implement the spec's fallback themselves. For `transport = "sse"`,
//! and for `auto` once the server has refused a POST the way the spec's
//! backwards-compatibility section describes, latchkey holds the legacy side for the
//! client: it opens the upstream SSE stream, posts the client's messages to the
//! announced endpoint, and matches the replies that come back on the stream to the
//! waiting POSTs by JSON-RPC id. The local session id (`Mcp-Session-Id`) names one
//! upstream SSE stream; everything else the server sends (notifications and its own
//! requests) goes to the session's GET stream.
//!
//! Unlike the rest of the proxy this parses JSON-RPC: there is no other way to pair a
//! reply with its request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{Proxy, sse};
use crate::error::{ProxyError, describe};
use crate::server::Upstream;

/// The largest client message a bridged session accepts (it has to be read whole to
/// find its ids).
pub(crate) const MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// How long the upstream may take to announce its endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);
/// Server messages kept for a session while no GET stream is open.
const INBOX: usize = 1024;
/// Open bridged sessions per server. Clients that vanish without a DELETE would
/// otherwise hold an upstream stream each, forever; past this, the least recently
/// used session is closed (its client gets a 404 and starts a new one, per the spec).
const MAX_SESSIONS: usize = 64;
/// The longest server message on a bridged stream. A stream that goes past it without
/// ending an event is closed rather than allowed to take all memory.
const MAX_EVENT: usize = MAX_MESSAGE;
/// The cap on the stream's first event, which should be a short `endpoint`.
const MAX_FIRST_EVENT: usize = 64 * 1024;

const SESSION_HEADER: &str = "mcp-session-id";

/// Open bridged sessions, by local session id.
#[derive(Debug, Default)]
pub(crate) struct Bridges(Mutex<HashMap<String, Arc<Session>>>);

impl Bridges {
    /// The session `id` of `server`: a session id never reaches another server.
    pub(crate) fn get(&self, server: &str, id: &str) -> Option<Arc<Session>> {
        self.lock()
            .get(id)
            .filter(|session| session.server == server)
            .cloned()
    }

    /// Registers a session, closing the least recently used one of the same server
    /// if it has too many.
    fn insert(&self, session: Arc<Session>) {
        let mut sessions = self.lock();
        let same_server: Vec<(&String, &Arc<Session>)> = sessions
            .iter()
            .filter(|(_, s)| s.server == session.server)
            .collect();
        if same_server.len() >= MAX_SESSIONS {
            let oldest = same_server
                .iter()
                .min_by_key(|(_, s)| *s.last_used.lock().unwrap_or_else(PoisonError::into_inner))
                .map(|(id, _)| (*id).clone());
            if let Some(oldest) = oldest {
                tracing::info!(server = %session.server, "closing the least recently used bridged session");
                sessions.remove(&oldest);
            }
        }
        sessions.insert(session.id.clone(), session);
    }

    fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().remove(id)
    }

    /// Closes every session of `server` (a reload removed or changed it); their
    /// clients get a 404 and start again with the server as now configured.
    pub(crate) fn close_server(&self, server: &str) {
        self.lock().retain(|_, session| session.server != server);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct Session {
    id: String,
    server: String,
    last_used: Mutex<Instant>,
    endpoint: Url,
    shared: Arc<Shared>,
    inbox: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    // The endpoint URL carries the upstream's session id.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closes the upstream SSE stream.
        self.reader.abort();
    }
}

/// What the stream reader shares with the POST handlers.
#[derive(Debug)]
struct Shared {
    /// POSTs waiting for their reply, by the JSON text of the request id.
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    inbox: mpsc::Sender<Bytes>,
    /// Cancelled when the upstream stream ends.
    closed: CancellationToken,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn upstream_error(upstream: &Upstream, cause: String) -> ProxyError {
    ProxyError::Upstream {
        server: upstream.config.name.clone(),
        url: crate::redact::redacted(&upstream.config.url),
        cause,
    }
}

/// Opens an upstream SSE stream, waits for its endpoint, and registers a session.
pub(crate) async fn open(proxy: &Proxy, upstream: &Upstream) -> Result<Arc<Session>, ProxyError> {
    let server = &upstream.config;
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    upstream.add_credentials(&mut headers, "GET", &server.url);
    let response = proxy
        .client
        .get(server.url.clone())
        .headers(headers)
        .send()
        .await
        .map_err(|e| upstream_error(upstream, describe(e)))?;
    if response.status() != StatusCode::OK {
        return Err(upstream_error(
            upstream,
            format!(
                "the HTTP+SSE stream answered {}; check the server's url and transport",
                response.status()
            ),
        ));
    }
    let mut stream = response.bytes_stream();
    // Scanned incrementally and capped: the first event is a short `endpoint`.
    let mut blocks = sse::Blocks::default();
    let endpoint = tokio::time::timeout(ENDPOINT_TIMEOUT, async {
        loop {
            while let Some(block) = blocks.next_block() {
                let text = std::str::from_utf8(&block).unwrap_or("");
                if let (Some("endpoint"), Some(data)) = sse::parse_block(text) {
                    return sse::resolve_endpoint(&server.url, data.trim());
                }
            }
            if blocks.len() > MAX_FIRST_EVENT {
                return Err("the HTTP+SSE stream sent an oversized first event".into());
            }
            match stream.next().await {
                Some(Ok(chunk)) => blocks.push(&chunk),
                Some(Err(e)) => return Err(describe(e)),
                None => return Err("the HTTP+SSE stream ended before its endpoint event".into()),
            }
        }
    })
    .await
    .map_err(|_| {
        upstream_error(
            upstream,
            "no endpoint event on the HTTP+SSE stream within 30 s; is this a 2024-11-05 server? If not, set transport = \"streamable-http\"".into(),
        )
    })?
    .map_err(|cause| upstream_error(upstream, cause))?;

    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
    let shared = Arc::new(Shared {
        pending: Mutex::new(HashMap::new()),
        inbox: inbox_tx,
        closed: CancellationToken::new(),
    });
    let id = sse::random_token();
    let reader = tokio::spawn(read_stream(
        stream,
        blocks,
        shared.clone(),
        proxy.bridges.clone(),
        id.clone(),
    ));
    let session = Arc::new(Session {
        id: id.clone(),
        server: server.name.clone(),
        last_used: Mutex::new(Instant::now()),
        endpoint,
        shared,
        inbox: Arc::new(tokio::sync::Mutex::new(inbox_rx)),
        reader,
    });
    proxy.bridges.insert(session.clone());
    tracing::debug!(server = %server.name, "opened a bridged HTTP+SSE session");
    Ok(session)
}

/// Routes every message on the upstream stream: replies to their waiting POST,
/// everything else to the session's GET stream.
async fn read_stream<S>(
    mut stream: S,
    mut blocks: sse::Blocks,
    shared: Arc<Shared>,
    bridges: Arc<Bridges>,
    id: String,
) where
    S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    // Scanned incrementally: a large event arriving in many chunks is read once.
    'read: loop {
        while let Some(block) = blocks.next_block() {
            let text = std::str::from_utf8(&block).unwrap_or("");
            if let (Some("message"), Some(data)) = sse::parse_block(text) {
                route(&shared, data);
            }
        }
        if blocks.len() > MAX_EVENT {
            tracing::warn!("bridged HTTP+SSE stream sent an oversized event; closing it");
            break 'read;
        }
        match stream.next().await {
            Some(Ok(chunk)) => blocks.push(&chunk),
            Some(Err(e)) => {
                tracing::warn!(error = %describe(e), "bridged HTTP+SSE stream broke");
                break 'read;
            }
            None => break 'read,
        }
    }
    shared.closed.cancel();
    bridges.remove(&id);
}

fn route(shared: &Shared, data: String) {
    let Ok(message) = serde_json::from_str::<Value>(&data) else {
        tracing::warn!("bridged server sent a message that is not JSON; dropped");
        return;
    };
    let is_reply = message.get("method").is_none()
        && (message.get("result").is_some() || message.get("error").is_some());
    if is_reply {
        let waiting = message
            .get("id")
            .and_then(|id| shared.pending().remove(&id.to_string()));
        if let Some(waiting) = waiting {
            let _ = waiting.send(message);
            return;
        }
    }
    if shared.inbox.try_send(Bytes::from(data)).is_err() {
        tracing::warn!("bridged session's GET stream is not being read; server message dropped");
    }
}

/// Forgets the waiting ids of a POST whose client went away.
struct PendingGuard<'a> {
    shared: &'a Shared,
    ids: Vec<String>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self.shared.pending();
        for id in &self.ids {
            pending.remove(id);
        }
    }
}

/// A client POST in a bridged session.
pub(crate) async fn post(
    proxy: &Proxy,
    upstream: &Upstream,
    session: &Session,
    body: Bytes,
) -> Result<Response, ProxyError> {
    session.touch();
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return Err(ProxyError::BadRequest(
            "the body is not JSON; MCP messages are JSON-RPC".into(),
        ));
    };
    let batch = message.is_array();
    let requests: Vec<&Value> = match &message {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut waiting = Vec::new();
    let mut guard = PendingGuard {
        shared: &session.shared,
        ids: Vec::new(),
    };
    for request in requests {
        if let (Some(_), Some(id)) = (request.get("method"), request.get("id")) {
            let (tx, rx) = oneshot::channel();
            let key = id.to_string();
            session.shared.pending().insert(key.clone(), tx);
            guard.ids.push(key);
            waiting.push(rx);
        }
    }

    // JSON-RPC batches came after 2024-11-05, so a legacy server gets one POST per
    // message.
    let bodies = match &message {
        Value::Array(items) => items.iter().map(|m| Bytes::from(m.to_string())).collect(),
        _ => vec![body],
    };
    for body in bodies {
        if let Some(refused) = post_one(proxy, upstream, &session.endpoint, body).await? {
            return Ok(refused);
        }
    }
    if waiting.is_empty() {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let mut replies = Vec::with_capacity(waiting.len());
    for rx in waiting {
        tokio::select! {
            reply = rx => match reply {
                Ok(reply) => replies.push(reply),
                Err(_) => return Err(closed(upstream)),
            },
            () = session.shared.closed.cancelled() => return Err(closed(upstream)),
        }
    }
    guard.ids.clear();
    let reply = if batch {
        Value::Array(replies)
    } else {
        replies.pop().unwrap_or(Value::Null)
    };
    Ok(axum::Json(reply).into_response())
}

/// POSTs one message to the announced endpoint. A refusal is relayed to the client as
/// the server sent it.
async fn post_one(
    proxy: &Proxy,
    upstream: &Upstream,
    endpoint: &Url,
    body: Bytes,
) -> Result<Option<Response>, ProxyError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    upstream.add_credentials(&mut headers, "POST", endpoint);
    let response = proxy
        .client
        .post(endpoint.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| upstream_error(upstream, describe(e)))?;
    if response.status().is_success() {
        return Ok(None);
    }
    let status = response.status();
    // A 401 would make the client start an OAuth flow of its own.
    if status == StatusCode::UNAUTHORIZED && upstream.auth.is_some() {
        return Err(ProxyError::Auth {
            server: upstream.config.name.clone(),
            message: "the server refused the token on its HTTP+SSE message endpoint".into(),
            command: upstream.config.login_command.clone(),
        });
    }
    let mut headers = response.headers().clone();
    super::headers::to_client(&mut headers);
    let mut out = Response::new(Body::from_stream(response.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(Some(out))
}

fn closed(upstream: &Upstream) -> ProxyError {
    upstream_error(
        upstream,
        "the server closed its HTTP+SSE stream before replying; start a new session".into(),
    )
}

/// A client GET in a bridged session: the server's own messages, as SSE.
pub(crate) fn get(session: &Session, shutdown: CancellationToken) -> Result<Response, ProxyError> {
    session.touch();
    let Ok(inbox) = session.inbox.clone().try_lock_owned() else {
        return Err(ProxyError::Conflict(
            "a GET stream is already open for this session".into(),
        ));
    };
    let closed = session.shared.closed.clone();
    let events = futures_util::stream::unfold(inbox, |mut inbox| async move {
        let message = inbox.recv().await?;
        let mut event = BytesMut::with_capacity(message.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        event.extend_from_slice(&message);
        event.extend_from_slice(b"\n\n");
        Some((Ok::<_, std::io::Error>(event.freeze()), inbox))
    })
    .take_until(async move {
        tokio::select! {
            () = closed.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
    });
    let mut response = Response::new(Body::from_stream(events));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    Ok(response)
}

/// A client DELETE: ends the session and closes the upstream stream.
pub(crate) fn delete(proxy: &Proxy, session: &Session) -> Response {
    proxy.bridges.remove(&session.id);
    StatusCode::NO_CONTENT.into_response()
}

/// Adds the session id to the reply that opened the session.
pub(crate) fn with_session_id(mut response: Response, session: &Session) -> Response {
    if let Ok(value) = HeaderValue::from_str(&session.id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}
