//! `latchkey stdio`: an MCP server on stdin/stdout (newline-delimited JSON-RPC) for
//! clients that can only launch a child process. Each message is handed to the same
//! proxy the daemon serves, in process (no listener, no extra hop), so the transport
//! detection, the legacy HTTP+SSE bridge, OAuth and the credential store are the
//! daemon's own. This module only plays the Streamable HTTP client: it keeps the
//! session id and protocol version, mirrors the 2026-07-28 headers (leaving out the
//! tools whose annotations for them are invalid), holds the GET stream for the
//! server's own messages, resumes a request's stream that the server closed early,
//! and turns HTTP failures into JSON-RPC errors, so that no request is left without an
//! answer. In front of a server that speaks only 2026-07-28, it also translates for an
//! older client (`translate.rs`).
//!
//! Nothing but protocol goes to stdout; logs go to stderr.

mod io;
mod mirror;
mod resume;
mod tool_headers;
mod translate;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::IntoResponse as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::callback::SystemBrowser;
use crate::config::Config;
use crate::proxy::{self, Proxy, sse};

const ACCEPT_BOTH: &str = "application/json, text/event-stream";
/// How long requests still running at EOF get to finish before the session ends.
const DRAIN: Duration = Duration::from_secs(5);
/// The reconnection delay of the GET stream and of a resumed request stream when the
/// server names none: neither the MCP spec nor SEP-1699 give one, and the SSE spec
/// leaves it to the client ("a few seconds"); 1 s is also the official SDK's first.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// stdin is read in chunks of this size (a burst of messages in one syscall), and
/// stdout written in batches of about as much.
const READ_SIZE: usize = 64 * 1024;
/// Below this much room, the read buffer grows before the next read.
const READ_MIN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error(transparent)]
    Store(#[from] crate::credentials::StoreUnavailable),
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot read stdin: {0}")]
    Stdin(std::io::Error),
}

/// Serves `server` of `config` on stdin/stdout until stdin ends or `shutdown`
/// completes; then ends the upstream session.
pub async fn run(
    config: Config,
    server: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StdioError> {
    let opened = crate::credentials::open(config.store, config.state_dir.as_deref()).await?;
    if let Some(why) = &opened.fallback {
        tracing::warn!("{why}");
    }
    let stop = CancellationToken::new();
    let proxy = Proxy::new(
        &config,
        stop.clone(),
        Arc::new(SystemBrowser::default()),
        opened.credentials,
        crate::server::LoginWait::Briefly,
        None,
    )?;
    proxy.restore().await;
    let (out, lines) = mpsc::channel::<Bytes>(256);
    let posting = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_stdout(io::Output::stdout(), lines, posting.clone()));
    let bridge = Arc::new(Bridge {
        uri: format!("/{server}")
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/")),
        proxy,
        server,
        out,
        posting,
        session: Mutex::new(Session::default()),
        asked_count: AtomicU64::new(0),
        stop: stop.clone(),
    });
    // The reading runs on a worker, not on this (the runtime's main) thread, so that
    // the tasks it starts are queued where they run, without waking another thread.
    let stop_reading = CancellationToken::new();
    let mut serving = tokio::spawn(serve(
        bridge.clone(),
        io::Input::stdin(),
        stop_reading.clone(),
    ));
    tokio::pin!(shutdown);
    let served = tokio::select! {
        served = &mut serving => served,
        () = &mut shutdown => {
            stop_reading.cancel();
            serving.await
        }
    };
    bridge.close().await;
    stop.cancel();
    drop(bridge);
    drop(writer.await);
    served.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Reads stdin line by line and posts each message, until stdin ends or `stop`;
/// then lets running requests finish, briefly.
async fn serve(
    bridge: Arc<Bridge>,
    mut stdin: io::Input,
    stop: CancellationToken,
) -> Result<(), StdioError> {
    let mut inflight = JoinSet::new();
    let mut buffer = BytesMut::new();
    // How much of `buffer` is known to hold no line end, so a long line is scanned once.
    let mut scanned = 0;
    let read = loop {
        if let Some(end) = buffer[scanned..].iter().position(|&b| b == b'\n') {
            let line = buffer.split_to(scanned + end + 1).freeze();
            scanned = 0;
            bridge.accept(line, &mut inflight).await;
            continue;
        }
        scanned = buffer.len();
        if buffer.capacity() - buffer.len() < READ_MIN {
            buffer.reserve(READ_SIZE);
        }
        let read = tokio::select! {
            read = stdin.read_buf(&mut buffer) => read,
            () = stop.cancelled() => break Ok(()),
        };
        match read {
            Ok(0) => {
                // The last line may have no line end.
                if !buffer.is_empty() {
                    bridge.accept(buffer.split().freeze(), &mut inflight).await;
                }
                break Ok(());
            }
            Ok(_) => {}
            Err(e) => break Err(StdioError::Stdin(e)),
        }
    };
    stdin.release();
    drop(
        tokio::time::timeout(DRAIN, async {
            while inflight.join_next().await.is_some() {}
        })
        .await,
    );
    read
}

/// The line without its line ending.
fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn write_stdout(
    mut stdout: io::Output,
    mut lines: mpsc::Receiver<Bytes>,
    posting: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    while let Some(line) = lines.recv().await {
        batch.clear();
        batch.extend_from_slice(&line);
        batch.push(b'\n');
        // With other requests in flight, their replies may be one poll away: they get
        // their turn first and join this write. A lone request's reply goes at once.
        if posting.load(Ordering::Relaxed) > 1 {
            tokio::task::yield_now().await;
        }
        while batch.len() < READ_SIZE
            && let Ok(line) = lines.try_recv()
        {
            batch.extend_from_slice(&line);
            batch.push(b'\n');
        }
        if stdout.write_all(&batch).await.is_err() || stdout.flush().await.is_err() {
            // The client is gone; nobody is left to answer.
            return;
        }
    }
    stdout.release();
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[derive(Debug, Default)]
struct Session {
    id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
    /// The client's initialize, replayed when the server forgets the session.
    initialize: Option<Bytes>,
    /// The GET stream's last event id, to resume it where it broke.
    last_event_id: Option<String>,
    tools: mirror::ToolHeaders,
    /// Set when the server speaks only 2026-07-28 and the client an older revision.
    modern: Option<translate::Modern>,
    /// The bridge's own requests to the client (a modern server's input requests),
    /// by id, waiting for the client's answer.
    asked: HashMap<String, oneshot::Sender<Value>>,
    /// The client's requests in flight, by id, while translating: the old client's
    /// `notifications/cancelled` ends one.
    running: HashMap<String, tokio::task::AbortHandle>,
}

struct Bridge {
    proxy: Proxy,
    /// The path every request goes to (`/<server>`).
    uri: http::Uri,
    server: String,
    out: mpsc::Sender<Bytes>,
    /// How many posted messages are waiting for their answer.
    posting: Arc<AtomicUsize>,
    session: Mutex<Session>,
    /// Numbers the bridge's own request ids.
    asked_count: AtomicU64,
    stop: CancellationToken,
}

/// One posted message waiting for its answer, counted until it is dropped (also
/// when its task is aborted).
struct Posting(Arc<AtomicUsize>);

impl Posting {
    fn count(posting: &Arc<AtomicUsize>) -> Self {
        posting.fetch_add(1, Ordering::Relaxed);
        Self(posting.clone())
    }
}

impl Drop for Posting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an answer to a POST held.
#[derive(Debug, Default)]
struct Answered {
    /// The response to the posted request came (or none was due).
    done: bool,
    /// A message in the answer was not JSON.
    malformed: bool,
    /// The id the client knows the request by, when it was posted under another
    /// (a retry with input, `translate.rs`).
    reply_as: Option<Value>,
    /// The answer was a 2026-07-28 `input_required` result, held for the bridge.
    input_required: Option<Value>,
}

impl Bridge {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One line from stdin. The session starts with initialize: everything after it
    /// needs its session id, so it is answered before the next line is read. Any
    /// other message is posted by a task of its own.
    async fn accept(self: &Arc<Self>, line: Bytes, inflight: &mut JoinSet<()>) {
        let text = trim_line(&line);
        if text.is_empty() {
            return;
        }
        let message: Value = match serde_json::from_slice(text) {
            Ok(message) => message,
            Err(e) => {
                self.emit_value(&error(Value::Null, -32700, &format!("parse error: {e}")))
                    .await;
                return;
            }
        };
        if self.take_answer(&message) {
            return;
        }
        if message["method"] == "initialize" {
            // Kept for the session: a copy, not a view that would hold the read buffer.
            self.initialize(Bytes::copy_from_slice(text), &message)
                .await;
            return;
        }
        let Some((body, message)) = self.outgoing(line.slice_ref(text), message).await else {
            return;
        };
        let opens_stream = message["method"] == "notifications/initialized";
        let task = self.clone();
        let id = message.get("id").cloned();
        let posting = Posting::count(&self.posting);
        let running = inflight.spawn(async move {
            let _posting = posting;
            task.post(body, &message, true).await;
        });
        self.track(id, running);
        if opens_stream {
            let task = self.clone();
            tokio::spawn(async move { task.listen().await });
        }
        // Reap finished tasks so the set does not grow with the session.
        while inflight.try_join_next().is_some() {}
    }

    async fn emit(&self, line: Bytes) {
        drop(self.out.send(line).await);
    }

    async fn emit_value(&self, value: &Value) {
        self.emit(Bytes::from(value.to_string())).await;
    }

    /// Sends a message from the server to the client, on one line. Returns false
    /// (and sends nothing) for a message that is not JSON: the client would choke on it.
    /// `parsed` is the message already parsed by the caller, which spares a second
    /// parse.
    async fn emit_message(&self, text: &[u8], parsed: Option<&Value>) -> bool {
        let one_line = !text.contains(&b'\n') && !text.contains(&b'\r');
        if let Some(value) = parsed {
            if one_line {
                self.emit(Bytes::copy_from_slice(text)).await;
            } else {
                self.emit_value(value).await;
            }
        } else if !one_line {
            // Pretty-printed JSON must become one line for stdio.
            match serde_json::from_slice::<Value>(text) {
                Ok(value) => self.emit_value(&value).await,
                Err(e) => {
                    tracing::warn!(server = %self.server, error = %e, "dropping a server message that is not JSON");
                    return false;
                }
            }
        } else if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            tracing::warn!(server = %self.server, error = %e, "dropping a server message that is not JSON");
            return false;
        } else {
            self.emit(Bytes::copy_from_slice(text)).await;
        }
        true
    }

    fn request(&self, method: Method, body: Body, message: Option<&Value>) -> Request<Body> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static(ACCEPT_BOTH));
        if method == Method::POST {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        {
            let session = self.session();
            if let Some(id) = &session.id {
                headers.insert("mcp-session-id", id.clone());
            }
            // The version initialize negotiated; a 2026-07-28 client, which has no
            // initialize, names it in each request's _meta instead.
            let version = session.protocol_version.clone().or_else(|| {
                message
                    .and_then(|m| m["params"]["_meta"].as_object())
                    .and_then(|meta| {
                        meta.iter()
                            .find(|(key, _)| key.ends_with("protocolVersion"))
                            .and_then(|(_, v)| v.as_str())
                    })
                    .and_then(|v| HeaderValue::from_str(v).ok())
            });
            if let Some(version) = version {
                headers.insert("mcp-protocol-version", version);
            }
            if let Some(message) = message
                && method == Method::POST
            {
                mirror::set(&mut headers, message, &session.tools);
            }
        }
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        request
    }

    /// One exchange with the upstream, through the daemon's own forwarding code.
    async fn send(&self, request: Request<Body>) -> axum::response::Response {
        let forwarded = proxy::forward(
            State(self.proxy.clone()),
            Path(self.server.clone()),
            request,
        )
        .await;
        forwarded.unwrap_or_else(|e| e.into_response())
    }

    async fn initialize(&self, body: Bytes, message: &Value) {
        self.session().initialize = Some(body.clone());
        let response = self
            .send(self.request(Method::POST, Body::from(body), Some(message)))
            .await;
        if let Some(id) = response.headers().get("mcp-session-id") {
            self.session().id = Some(id.clone());
        }
        match self.negotiate(response, message).await {
            Ok(answer) => self.emit_value(&answer).await,
            Err(response) => drop(self.relay(response, message, true, None).await),
        }
    }

    /// Posts one message and relays what comes back. A 404 for a known session
    /// means the server forgot it: a new session is started (the spec's rule) and
    /// the message sent again, once.
    async fn post(&self, body: Bytes, message: &Value, may_restart: bool) {
        if let Some(refusal) = self.refusal(message) {
            self.emit_value(&refusal).await;
            return;
        }
        let had_session = self.session().id.is_some();
        let response = self
            .send(self.request(Method::POST, Body::from(body.clone()), Some(message)))
            .await;
        if response.status() == StatusCode::NOT_FOUND
            && had_session
            && may_restart
            && self.restart().await
        {
            return Box::pin(self.post(body, message, false)).await;
        }
        if let Some(result) = self.relay(response, message, false, None).await {
            self.fulfil(message, result).await;
        }
    }

    /// The answer to a call of a tool left out of `tools/list` for invalid header
    /// annotations: refused here, as the spec has the client reject such a tool,
    /// rather than sent with headers that cannot be right.
    fn refusal(&self, message: &Value) -> Option<Value> {
        if message["method"] != "tools/call" {
            return None;
        }
        let tool = message["params"]["name"].as_str()?;
        let why = self.session().tools.rejected(tool)?.to_string();
        let text = format!(
            "tool {tool:?} of server {:?} is not available: its x-mcp-header annotations are invalid ({why})",
            self.server
        );
        Some(error(message.get("id")?.clone(), -32602, &text))
    }

    /// Replays the client's initialize for a new session; its answer is not the
    /// client's business, since the client has one already.
    async fn restart(&self) -> bool {
        let initialize = {
            let mut session = self.session();
            session.id = None;
            session.last_event_id = None;
            session.initialize.clone()
        };
        let Some(initialize) = initialize else {
            return false;
        };
        tracing::info!(server = %self.server, "the upstream forgot the session; starting a new one");
        let message: Value = serde_json::from_slice(&initialize).unwrap_or(Value::Null);
        let response = self
            .send(self.request(Method::POST, Body::from(initialize), Some(&message)))
            .await;
        if !response.status().is_success() {
            return false;
        }
        let Some(id) = response.headers().get("mcp-session-id").cloned() else {
            return false;
        };
        // Read the answer to the end, so the server sees it delivered.
        drop(axum::body::to_bytes(response.into_body(), usize::MAX).await);
        self.session().id = Some(id);
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let response = self
            .send(self.request(
                Method::POST,
                Body::from(initialized.to_string()),
                Some(&initialized),
            ))
            .await;
        response.status().is_success()
    }

    /// Relays an answer to `message`: a JSON body, an SSE stream event by event, or
    /// a failure as a JSON-RPC error carrying the request's id (`reply_as`, when the
    /// client knows it by another). Returns an `input_required` result, not relayed.
    async fn relay(
        &self,
        response: axum::response::Response,
        message: &Value,
        initialize: bool,
        reply_as: Option<&Value>,
    ) -> Option<Value> {
        let id = message.get("id").map(|id| reply_as.unwrap_or(id).clone());
        let status = response.status();
        let is_sse = is_event_stream(response.headers());
        let mut answered = Answered {
            done: id.is_none(),
            reply_as: reply_as.cloned(),
            ..Answered::default()
        };
        let mut cursor = resume::Cursor::default();
        if status.is_success() && is_sse {
            self.relay_stream(
                response.into_body(),
                message,
                &mut answered,
                initialize,
                &mut cursor,
            )
            .await;
            if !answered.done {
                self.resume(message, &mut answered, initialize, &mut cursor)
                    .await;
            }
        } else {
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            if status.is_success() {
                if !body.iter().all(u8::is_ascii_whitespace) {
                    self.deliver(&body, message, &mut answered, initialize)
                        .await;
                }
            } else if let Some(id) = &id {
                self.emit_value(&failure(id.clone(), status, &body)).await;
                answered.done = true;
            } else {
                tracing::warn!(server = %self.server, %status, method = message["method"].as_str().unwrap_or("?"), "the upstream refused a notification");
            }
        }
        if let (Some(id), false) = (id, answered.done) {
            let message = if answered.malformed {
                format!(
                    "server {:?} answered with a message that is not JSON",
                    self.server
                )
            } else if cursor.resumed() > 0 {
                format!(
                    "server {:?} ended its answer without a response to this request, and {} attempts to resume its stream brought none",
                    self.server,
                    cursor.resumed()
                )
            } else {
                format!(
                    "server {:?} ended its answer without a response to this request",
                    self.server
                )
            };
            self.emit_value(&error(id, -32603, &message)).await;
        }
        answered.input_required
    }

    /// One message from the server: notes what the bridge needs from it (the
    /// negotiated version, the tools' header annotations), then writes it out.
    async fn deliver(
        &self,
        text: &[u8],
        request: &Value,
        answered: &mut Answered,
        initialize: bool,
    ) {
        let learn = initialize || request["method"] == "tools/list";
        let id = request.get("id");
        let mut parsed = (learn || id.is_some())
            .then(|| serde_json::from_slice::<Value>(text).ok())
            .flatten();
        // Whether tools with invalid header annotations were taken out of the answer.
        let mut filtered = false;
        if let Some(value) = &mut parsed {
            let is_answer =
                id.is_some_and(|id| value.get("id") == Some(id)) && value.get("method").is_none();
            if is_answer {
                answered.done = true;
                let result = &value["result"];
                if self.session().modern.is_some() && translate::is_input_required(result) {
                    answered.input_required = Some(result.clone());
                    return;
                }
                if let Some(reply_as) = &answered.reply_as {
                    let mut value = value.clone();
                    value["id"] = reply_as.clone();
                    self.emit_value(&value).await;
                    return;
                }
                if initialize {
                    let version = value["result"]["protocolVersion"]
                        .as_str()
                        .and_then(|v| HeaderValue::from_str(v).ok());
                    self.session().protocol_version = version;
                } else if learn {
                    filtered = self
                        .session()
                        .tools
                        .learn(&mut value["result"], &self.server);
                }
            }
        }
        if filtered && let Some(value) = &parsed {
            self.emit_value(value).await;
        } else if !self.emit_message(text, parsed.as_ref()).await {
            answered.malformed = true;
        }
    }

    /// Relays the events of a request's stream (the POST's, or a resumption of it,
    /// which ends with the response) until it ends.
    async fn relay_stream(
        &self,
        body: Body,
        request: &Value,
        answered: &mut Answered,
        initialize: bool,
        cursor: &mut resume::Cursor,
    ) {
        let mut stream = body.into_data_stream();
        let mut blocks = sse::Blocks::default();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            blocks.push(&chunk);
            while let Some(block) = blocks.next_block() {
                let text = String::from_utf8_lossy(&block);
                // Event ids here belong to this request's stream, not the GET stream's:
                // resuming the GET stream from one would resume this stream instead.
                let event = sse::parse_event(&text);
                if !cursor.note(&event) {
                    continue;
                }
                // An event without data (a resumption point some servers send
                // first) carries no message.
                if let (Some("message"), Some(data)) = (event.event, event.data)
                    && !data.trim().is_empty()
                {
                    self.deliver(data.as_bytes(), request, answered, initialize)
                        .await;
                }
                if answered.done && cursor.resuming() {
                    return;
                }
            }
        }
    }

    /// Holds the GET stream for the server's own requests and notifications,
    /// reconnecting with `Last-Event-ID` after the server's `retry` delay. Ends when
    /// the server offers no such stream (405) or the bridge stops.
    async fn listen(&self) {
        let mut delay = DEFAULT_RETRY;
        while !self.stop.is_cancelled() {
            let mut request = self.request(Method::GET, Body::empty(), None);
            if let Some(last) = self.session().last_event_id.clone()
                && let Ok(value) = HeaderValue::from_str(&last)
            {
                request.headers_mut().insert("last-event-id", value);
            }
            let response = tokio::select! {
                response = self.send(request) => response,
                () = self.stop.cancelled() => return,
            };
            match response.status() {
                status if status.is_success() => {
                    let mut stream = response.into_body().into_data_stream();
                    let mut blocks = sse::Blocks::default();
                    loop {
                        let chunk = tokio::select! {
                            chunk = stream.next() => chunk,
                            () = self.stop.cancelled() => return,
                        };
                        let Some(Ok(chunk)) = chunk else { break };
                        blocks.push(&chunk);
                        while let Some(block) = blocks.next_block() {
                            let text = String::from_utf8_lossy(&block);
                            let event = sse::parse_event(&text);
                            if let Some(id) = event.id {
                                self.session().last_event_id = Some(id.to_owned());
                            }
                            if let Some(retry) = event.retry {
                                delay = resume::retry_delay(retry);
                            }
                            if let (Some("message"), Some(data)) = (event.event, event.data)
                                && !data.trim().is_empty()
                            {
                                self.emit_message(data.as_bytes(), None).await;
                            }
                        }
                    }
                }
                StatusCode::METHOD_NOT_ALLOWED => return,
                status => {
                    tracing::debug!(server = %self.server, %status, "the GET stream was refused; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Ends the upstream session (DELETE), as a client leaving should.
    async fn close(&self) {
        self.stop.cancel();
        if self.session().id.is_none() {
            return;
        }
        let response = self
            .send(self.request(Method::DELETE, Body::empty(), None))
            .await;
        tracing::debug!(server = %self.server, status = %response.status(), "session ended");
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A JSON-RPC error for a request the upstream (or latchkey) refused with `status`.
/// latchkey's own errors are JSON-RPC already: their message is kept, with the
/// request's id.
fn failure(id: Value, status: StatusCode, body: &[u8]) -> Value {
    if let Ok(mut value) = serde_json::from_slice::<Value>(body)
        && value.get("error").is_some_and(Value::is_object)
    {
        value["id"] = id;
        value["jsonrpc"] = json!("2.0");
        value.as_object_mut().map(|o| o.remove("result"));
        return value;
    }
    error(id, -32603, &format!("the upstream answered HTTP {status}"))
}
