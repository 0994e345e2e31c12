//! An editor whose SDK speaks a handshake revision (2025-11-25 and earlier) in front of
//! a server that speaks only 2026-07-28: the two cannot talk (spec, basic/versioning,
//! "Compatibility Matrix": legacy client, modern server "fails"), so the bridge plays a
//! modern client for the old one. Only once the server has refused the client's own
//! `initialize` (or answered it with a 2026 revision the client did not ask for) and
//! then answered `server/discover` (server/discover; versioning, "Backward
//! Compatibility") naming 2026-07-28 and not the client's revision; a server that
//! takes the `initialize` gets every message untouched.
//!
//! Then, per the 2026-07-28 pages:
//! - basic/index, "`_meta`": each request carries the protocol version and the client's
//!   capabilities (and, SHOULD, its info) in `params._meta`; here they are the ones the
//!   old client gave in its `initialize`, which the discovery answers.
//! - changelog items 2 and 5: `notifications/initialized` and `ping` are gone (absorbed,
//!   answered here); `logging/setLevel` became the per-request `logLevel` field.
//! - basic/patterns/subscriptions: the list-change notifications an old client takes
//!   from the GET stream, and the resource updates it asks for with
//!   `resources/subscribe`, come on a `subscriptions/listen` stream, opened when the
//!   old client says it is initialized and again whenever its subscriptions change.
//! - basic/patterns/mrtr: a server needing elicitation, sampling or roots answers
//!   `resultType: "input_required"` with `inputRequests`; each goes to the old client as
//!   the server-to-client request it knows, and the original request is retried with
//!   a new id, the `inputResponses` and the `requestState` echoed unchanged.
//!
//! The `Mcp-Method`/`Mcp-Name` headers are `mirror.rs`'s, sent for every request anyway.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::response::IntoResponse as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderValue, Method};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};

use super::{Bridge, error};
use crate::proxy::sse;

/// The only modern revision the bridge knows how to speak.
const MODERN: &str = "2026-07-28";
const VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `UnsupportedProtocolVersionError` (basic/index, "Error Codes").
const UNSUPPORTED_VERSION: i64 = -32022;
/// The ids of the bridge's own requests to the client start with this, so that their
/// answers are told apart from anything else the client sends.
const OWN_ID: &str = "latchkey-";
/// How many rounds of input one request may take: a server that keeps asking
/// forever must not keep the client's request open forever.
const MAX_ROUNDS: usize = 8;
/// An answer to `initialize` or `server/discover` larger than this is not one.
const SMALL_ANSWER: usize = 1024 * 1024;

/// What the bridge speaks to a modern server for the old client: who the client is
/// and what it can do, from its `initialize`, the log level it last set, and what it
/// listens to.
#[derive(Debug)]
pub(super) struct Modern {
    client_info: Value,
    capabilities: Value,
    log_level: Option<Value>,
    /// The `subscriptions/listen` filter for the list changes the server announces.
    list_changes: Map<String, Value>,
    /// The server announces resource subscriptions.
    can_subscribe: bool,
    /// The resources the client subscribed to.
    subscribed: Vec<String>,
    /// A `subscriptions/listen` stream is held (or being opened).
    listening: bool,
    /// Tells the stream's holder that the filter changed.
    relisten: Arc<Notify>,
}

impl Modern {
    fn from_initialize(initialize: &Value) -> Self {
        let params = &initialize["params"];
        Self {
            client_info: params["clientInfo"].clone(),
            capabilities: match &params["capabilities"] {
                Value::Object(c) => Value::Object(c.clone()),
                _ => json!({}),
            },
            log_level: None,
            list_changes: Map::new(),
            can_subscribe: false,
            subscribed: Vec::new(),
            listening: false,
            relisten: Arc::new(Notify::new()),
        }
    }

    fn learn(&mut self, discovery: &Value) {
        let capabilities = &discovery["capabilities"];
        for (feature, field) in [
            ("tools", "toolsListChanged"),
            ("prompts", "promptsListChanged"),
            ("resources", "resourcesListChanged"),
        ] {
            if capabilities[feature]["listChanged"] == true {
                self.list_changes.insert(field.into(), true.into());
            }
        }
        self.can_subscribe = capabilities["resources"]["subscribe"] == true;
    }

    /// The `subscriptions/listen` filter for what the client should hear, if anything.
    fn filter(&self) -> Option<Value> {
        let mut filter = self.list_changes.clone();
        if !self.subscribed.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(self.subscribed));
        }
        (!filter.is_empty()).then_some(Value::Object(filter))
    }

    /// Adds the per-request `_meta` fields to a request (keeping the client's own).
    fn stamp(&self, request: &mut Value) {
        let Some(message) = request.as_object_mut() else {
            return;
        };
        let params = message.entry("params").or_insert_with(|| json!({}));
        if !params.is_object() {
            return;
        }
        let meta = params
            .as_object_mut()
            .map(|p| p.entry("_meta").or_insert_with(|| json!({})));
        let Some(meta) = meta.and_then(Value::as_object_mut) else {
            return;
        };
        meta.insert(VERSION.into(), MODERN.into());
        meta.insert(CAPABILITIES.into(), self.capabilities.clone());
        if !self.client_info.is_null() {
            meta.insert(CLIENT_INFO.into(), self.client_info.clone());
        }
        if let Some(level) = &self.log_level {
            meta.insert(LOG_LEVEL.into(), level.clone());
        }
    }

    fn discover(&self) -> Value {
        let mut request = json!({"jsonrpc": "2.0", "id": format!("{OWN_ID}discover"),
            "method": "server/discover", "params": {}});
        self.stamp(&mut request);
        request
    }
}

/// What the bridge does with a message from the old client once it speaks modern.
#[derive(Debug, PartialEq)]
enum Local {
    /// Post it, with its `_meta`.
    Forward,
    /// A notification 2026-07-28 has no use for.
    Absorb,
    /// `notifications/cancelled` for the request with this id: over 2026-07-28
    /// Streamable HTTP, closing its stream is the cancellation (basic/patterns/
    /// cancellation).
    Cancel(String),
    /// Answered by the bridge.
    Answer(Value),
    /// Answered by the bridge, after which the subscription stream is opened anew.
    Resubscribe(Value),
}

/// Messages the modern revision removed, answered here so the old client still gets
/// what it expects.
fn local(message: &Value, modern: &mut Modern) -> Local {
    let id = &message["id"];
    match message["method"].as_str() {
        Some("notifications/cancelled") if message.get("id").is_none() => {
            Local::Cancel(message["params"]["requestId"].to_string())
        }
        // The other client notifications (initialized, roots/list_changed): none is
        // defined over 2026-07-28 Streamable HTTP.
        Some(method) if message.get("id").is_none() && method.starts_with("notifications/") => {
            Local::Absorb
        }
        Some("ping") => Local::Answer(json!({"jsonrpc": "2.0", "id": id, "result": {}})),
        Some("logging/setLevel") => {
            modern.log_level = Some(message["params"]["level"].clone());
            Local::Answer(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
        }
        Some(method @ ("resources/subscribe" | "resources/unsubscribe"))
            if modern.can_subscribe =>
        {
            let Some(uri) = message["params"]["uri"].as_str() else {
                return Local::Answer(error(id.clone(), -32602, "no uri"));
            };
            modern.subscribed.retain(|known| known != uri);
            if method == "resources/subscribe" {
                modern.subscribed.push(uri.to_owned());
            }
            Local::Resubscribe(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
        }
        Some(method @ ("resources/subscribe" | "resources/unsubscribe")) => Local::Answer(error(
            id.clone(),
            -32601,
            &format!("{method}: the server offers no resource subscriptions"),
        )),
        Some(_) => Local::Forward,
        // A response: only answers to the bridge's own requests are expected, and
        // those are taken before this.
        None => Local::Absorb,
    }
}

/// Whether an answer to the old `initialize` says the server may be modern: a
/// JSON-RPC error or a client error status (a modern server rejects the request,
/// which lacks its `_meta`, with 400), or a success naming a modern revision that is
/// not the one asked for (which the old client would have to give up on).
fn maybe_modern(status: http::StatusCode, body: &[u8], requested: &str) -> bool {
    if matches!(status.as_u16(), 401 | 403 | 407 | 429) {
        return false;
    }
    let answer = serde_json::from_slice::<Value>(body).unwrap_or_default();
    let version = answer["result"]["protocolVersion"].as_str().unwrap_or("");
    let is_error = answer.get("error").is_some_and(Value::is_object);
    is_error || status.is_client_error() || (version >= MODERN && version != requested)
}

/// What a `server/discover` answer says about the server.
#[derive(Debug, PartialEq)]
enum Discovered {
    /// It speaks 2026-07-28 and not `requested`: translate, with its discovery result.
    Modern(Value),
    /// An `UnsupportedProtocolVersionError` naming 2026-07-28: ask once more.
    Retry,
    /// Anything else: the client's `initialize` refusal stands.
    Not,
}

fn discovered(answer: &Value, requested: &str) -> Discovered {
    let supports = |list: &Value| {
        let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
        (
            list.iter().any(|v| v == MODERN),
            list.iter().any(|v| v == requested),
        )
    };
    if let Some(result) = answer.get("result") {
        return match supports(&result["supportedVersions"]) {
            (true, false) => Discovered::Modern(result.clone()),
            _ => Discovered::Not,
        };
    }
    let error = &answer["error"];
    if error["code"] == UNSUPPORTED_VERSION && supports(&error["data"]["supported"]).0 {
        return Discovered::Retry;
    }
    Discovered::Not
}

/// The answer to the old client's `initialize`, from the discovery: the version it
/// asked for and the server's capabilities (all of which cross). The server's
/// identity may be in the result's `_meta` instead (basic/index, "Per-response
/// protocol fields"); an old client
/// requires one, so without either it is the configured server's name.
fn initialize_result(initialize: &Value, discovered: &Value, server: &str) -> Value {
    let capabilities = match &discovered["capabilities"] {
        Value::Object(capabilities) => Value::Object(capabilities.clone()),
        _ => json!({}),
    };
    let server_info = [&discovered["serverInfo"], &discovered["_meta"][SERVER_INFO]]
        .into_iter()
        .find(|info| info["name"].is_string())
        .cloned()
        .unwrap_or_else(|| json!({"name": server, "version": "unknown"}));
    let mut result = json!({
        "protocolVersion": initialize["params"]["protocolVersion"],
        "capabilities": capabilities,
        "serverInfo": server_info,
    });
    if let Some(instructions) = discovered.get("instructions").filter(|i| i.is_string()) {
        result["instructions"] = instructions.clone();
    }
    json!({"jsonrpc": "2.0", "id": initialize["id"], "result": result})
}

/// Whether a result is an `InputRequiredResult` (mrtr), to be carried through the
/// client rather than relayed.
pub(super) fn is_input_required(result: &Value) -> bool {
    result["resultType"] == "input_required"
}

/// One of the server's input requests as the request the old client knows. A
/// URL-mode elicitation of 2025-11-25 has an `elicitationId`, which 2026-07-28
/// dropped (changelog, minor change 11): the request's own id stands in for it (no
/// `notifications/elicitation/complete` follows; the retry is the completion).
fn client_request(id: &str, request: &Value) -> Value {
    let mut message = json!({"jsonrpc": "2.0", "id": id, "method": request["method"]});
    if let Some(params) = request.get("params") {
        message["params"] = params.clone();
        let params = &mut message["params"];
        if params["mode"] == "url" && params.get("elicitationId").is_none() {
            params["elicitationId"] = id.into();
        }
    }
    message
}

/// The retry of `original` (already stamped) with a new id, the client's answers and
/// the server's state (absent when the server sent none: mrtr, "Client Requirements").
fn retry(original: &Value, id: Value, responses: Map<String, Value>, state: &Value) -> Value {
    let mut retry = original.clone();
    retry["id"] = id;
    if let Some(params) = retry["params"].as_object_mut() {
        params.insert("inputResponses".into(), Value::Object(responses));
        match state {
            Value::Null => params.remove("requestState"),
            state => params.insert("requestState".into(), state.clone()),
        };
    }
    retry
}

/// The first JSON-RPC message of a JSON body or an SSE stream that has an id.
async fn read_answer(response: axum::response::Response) -> Option<Value> {
    let is_sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        let body = axum::body::to_bytes(response.into_body(), SMALL_ANSWER)
            .await
            .ok()?;
        return serde_json::from_slice(&body).ok();
    }
    let mut stream = response.into_body().into_data_stream();
    let mut blocks = sse::Blocks::default();
    while let Some(Ok(chunk)) = stream.next().await {
        blocks.push(&chunk);
        while let Some(block) = blocks.next_block() {
            let text = String::from_utf8_lossy(&block);
            let event = sse::parse_event(&text);
            if let Some(data) = event.data
                && let Ok(message) = serde_json::from_str::<Value>(&data)
                && message.get("id").is_some()
            {
                return Some(message);
            }
        }
        if blocks.len() > SMALL_ANSWER {
            return None;
        }
    }
    None
}

impl Bridge {
    /// Given the answer to the client's `initialize`: if it says the server may be
    /// modern and the server's discovery says it speaks only 2026-07-28 (asked
    /// again once after an `UnsupportedProtocolVersionError` naming 2026-07-28),
    /// switches the session to translation and returns the client's answer;
    /// otherwise hands back the server's answer, to be relayed as it is.
    pub(super) async fn negotiate(
        &self,
        response: axum::response::Response,
        initialize: &Value,
    ) -> Result<Value, axum::response::Response> {
        let status = response.status();
        let is_json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // A stream (or anything that is not a small JSON body) is an answer in
        // progress, not a refusal.
        if status.is_success() && !is_json {
            return Err(response);
        }
        let (parts, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, SMALL_ANSWER).await else {
            return Err(status.into_response());
        };
        let original =
            || axum::response::Response::from_parts(parts.clone(), Body::from(body.clone()));
        let requested = initialize["params"]["protocolVersion"]
            .as_str()
            .unwrap_or("");
        if !maybe_modern(status, &body, requested) {
            return Err(original());
        }
        let modern = Modern::from_initialize(initialize);
        for _ in 0..2 {
            let probe = modern.discover();
            let answer = self
                .send(self.request(Method::POST, Body::from(probe.to_string()), Some(&probe)))
                .await;
            let Some(answer) = read_answer(answer).await else {
                break;
            };
            match discovered(&answer, requested) {
                Discovered::Modern(discovery) => {
                    tracing::info!(server = %self.server, client_version = requested, "the server speaks only {MODERN}; translating for the client");
                    let mut session = self.session();
                    // 2026-07-28 has no sessions: one minted for the initialize is
                    // not sent, nor ended.
                    session.id = None;
                    session.protocol_version = Some(HeaderValue::from_static(MODERN));
                    let mut modern = modern;
                    modern.learn(&discovery);
                    session.modern = Some(modern);
                    return Ok(initialize_result(initialize, &discovery, &self.server));
                }
                Discovered::Retry => continue,
                Discovered::Not => break,
            }
        }
        Err(original())
    }

    /// A message from the client on its way to the server: as it is, unless the
    /// bridge translates; then with its `_meta`, or `None` when answered or absorbed
    /// here.
    pub(super) async fn outgoing(
        self: &Arc<Self>,
        body: Bytes,
        mut message: Value,
    ) -> Option<(Bytes, Value)> {
        let (local, start) = {
            let mut session = self.session();
            let Some(modern) = &mut session.modern else {
                return Some((body, message));
            };
            let local = local(&message, modern);
            if local == Local::Forward {
                modern.stamp(&mut message);
            }
            let wants = matches!(local, Local::Resubscribe(_))
                || message["method"] == "notifications/initialized";
            let start = wants && !modern.listening && modern.filter().is_some();
            if start {
                modern.listening = true;
            } else if wants && modern.listening {
                modern.relisten.notify_one();
            }
            (local, start)
        };
        if start {
            let bridge = self.clone();
            tokio::spawn(async move { bridge.listen_modern().await });
        }
        match local {
            Local::Forward => Some((Bytes::from(message.to_string()), message)),
            Local::Absorb => None,
            Local::Cancel(id) => {
                if let Some(running) = self.session().running.remove(&id) {
                    running.abort();
                }
                None
            }
            Local::Answer(answer) | Local::Resubscribe(answer) => {
                self.emit_value(&answer).await;
                None
            }
        }
    }

    /// Holds a `subscriptions/listen` stream for what the client should hear and
    /// relays its notifications as the old client's GET stream would have; opens it
    /// again at once when the client's subscriptions change, or after a pause when
    /// it ends, until the bridge stops, the server refuses it, or nothing is left to
    /// hear.
    async fn listen_modern(&self) {
        let mut round = 0u64;
        while !self.stop.is_cancelled() {
            round += 1;
            let (request, relisten) = {
                let mut session = self.session();
                let Some(modern) = &mut session.modern else {
                    return;
                };
                let Some(filter) = modern.filter() else {
                    modern.listening = false;
                    return;
                };
                let mut request = json!({"jsonrpc": "2.0", "id": format!("{OWN_ID}listen-{round}"),
                    "method": "subscriptions/listen", "params": {"notifications": filter}});
                modern.stamp(&mut request);
                (request, modern.relisten.clone())
            };
            let post = self.request(
                Method::POST,
                Body::from(request.to_string()),
                Some(&request),
            );
            let response = tokio::select! {
                response = self.send(post) => response,
                () = self.stop.cancelled() => return,
            };
            let is_sse = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            if !response.status().is_success() || !is_sse {
                tracing::debug!(server = %self.server, status = %response.status(), "subscriptions/listen was refused");
                if let Some(modern) = &mut self.session().modern {
                    modern.listening = false;
                }
                return;
            }
            let mut stream = response.into_body().into_data_stream();
            let mut blocks = sse::Blocks::default();
            let changed = loop {
                let chunk = tokio::select! {
                    chunk = stream.next() => chunk,
                    () = relisten.notified() => break true,
                    () = self.stop.cancelled() => return,
                };
                let Some(Ok(chunk)) = chunk else { break false };
                blocks.push(&chunk);
                while let Some(block) = blocks.next_block() {
                    let text = String::from_utf8_lossy(&block);
                    let Some(data) = sse::parse_event(&text).data else {
                        continue;
                    };
                    let Ok(message) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    let acknowledged =
                        message["method"] == "notifications/subscriptions/acknowledged";
                    if message.get("id").is_none() && !acknowledged {
                        self.emit_value(&message).await;
                    }
                }
            };
            if changed {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(super::DEFAULT_RETRY) => {}
                () = relisten.notified() => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Keeps a request's task while translating, for `notifications/cancelled`.
    pub(super) fn track(&self, id: Option<Value>, running: tokio::task::AbortHandle) {
        let mut session = self.session();
        if let (Some(id), true) = (id, session.modern.is_some()) {
            session.running.retain(|_, task| !task.is_finished());
            session.running.insert(id.to_string(), running);
        }
    }

    /// Whether `message` answers one of the bridge's own requests to the client; if
    /// so, it is handed to the one waiting for it.
    pub(super) fn take_answer(&self, message: &Value) -> bool {
        if message.get("method").is_some() {
            return false;
        }
        let Some(id) = message["id"].as_str().filter(|id| id.starts_with(OWN_ID)) else {
            return false;
        };
        let waiting = self.session().asked.remove(id);
        match waiting {
            Some(waiting) => {
                drop(waiting.send(message.clone()));
                true
            }
            None => false,
        }
    }

    /// Sends one of the server's input requests to the client and waits for its
    /// answer (or the bridge's end).
    async fn ask(&self, request: &Value) -> Option<Value> {
        let id = format!(
            "{OWN_ID}{}",
            self.asked_count.fetch_add(1, Ordering::Relaxed) + 1
        );
        let (tx, rx) = oneshot::channel();
        self.session().asked.insert(id.clone(), tx);
        self.emit_value(&client_request(&id, request)).await;
        tokio::select! {
            answer = rx => answer.ok(),
            () = self.stop.cancelled() => None,
        }
    }

    /// Carries an `input_required` result through: asks the client each input
    /// request, retries `original` with the answers, and relays the final answer
    /// under the client's id. Further rounds go the same way, up to `MAX_ROUNDS`.
    pub(super) async fn fulfil(&self, original: &Value, mut result: Value) {
        let client_id = original["id"].clone();
        for _ in 0..MAX_ROUNDS {
            let asked = result["inputRequests"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let answers = futures_util::future::join_all(
                asked
                    .iter()
                    .map(|(key, request)| async move { (key, self.ask(request).await) }),
            )
            .await;
            let mut responses = Map::new();
            for (key, answer) in answers {
                let Some(mut answer) = answer else {
                    return;
                };
                if answer.get("error").is_some() {
                    // The client could not do what the server asked: that is the answer.
                    answer["id"] = client_id.clone();
                    self.emit_value(&answer).await;
                    return;
                }
                responses.insert(key.clone(), answer["result"].take());
            }
            let id = format!(
                "{OWN_ID}retry-{}",
                self.asked_count.fetch_add(1, Ordering::Relaxed) + 1
            );
            let retried = retry(
                original,
                Value::String(id),
                responses,
                &result["requestState"],
            );
            let body = Bytes::from(retried.to_string());
            let response = self
                .send(self.request(Method::POST, Body::from(body), Some(&retried)))
                .await;
            match self
                .relay(response, &retried, false, Some(&client_id))
                .await
            {
                Some(next) => result = next,
                None => return,
            }
        }
        let message = format!(
            "server {:?} still asked for input after {MAX_ROUNDS} rounds",
            self.server
        );
        self.emit_value(&error(client_id, -32603, &message)).await;
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn initialize() -> Value {
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {}, "roots": {"listChanged": true}},
            "clientInfo": {"name": "editor", "version": "1.2"}}})
    }

    #[test]
    fn each_request_carries_the_initialize_identity_and_capabilities() {
        let mut modern = Modern::from_initialize(&initialize());
        let mut call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "echo", "_meta": {"progressToken": 7}}});
        modern.stamp(&mut call);
        let meta = &call["params"]["_meta"];
        assert_eq!(meta[VERSION], MODERN);
        assert_eq!(
            meta[CLIENT_INFO],
            json!({"name": "editor", "version": "1.2"})
        );
        assert_eq!(
            meta[CAPABILITIES],
            json!({"elicitation": {}, "roots": {"listChanged": true}})
        );
        assert_eq!(meta["progressToken"], 7, "the client's own _meta stays");
        assert!(meta.get(LOG_LEVEL).is_none());

        let set = json!({"jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": {"level": "debug"}});
        assert_eq!(
            local(&set, &mut modern),
            Local::Answer(json!({"jsonrpc": "2.0", "id": 4, "result": {}}))
        );
        let mut list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"});
        modern.stamp(&mut list);
        assert_eq!(list["params"]["_meta"][LOG_LEVEL], "debug");
    }

    #[test]
    fn removed_messages_are_handled_here() {
        let mut modern = Modern::from_initialize(&initialize());
        for notification in [
            "notifications/initialized",
            "notifications/roots/list_changed",
        ] {
            let message = json!({"jsonrpc": "2.0", "method": notification});
            assert_eq!(
                local(&message, &mut modern),
                Local::Absorb,
                "{notification}"
            );
        }
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": "a-1", "reason": "user"}});
        assert_eq!(local(&cancel, &mut modern), Local::Cancel("\"a-1\"".into()));
        let ping = json!({"jsonrpc": "2.0", "id": "p", "method": "ping"});
        assert_eq!(
            local(&ping, &mut modern),
            Local::Answer(json!({"jsonrpc": "2.0", "id": "p", "result": {}}))
        );
        let subscribe = json!({"jsonrpc": "2.0", "id": 9, "method": "resources/subscribe", "params": {"uri": "a://b"}});
        let Local::Answer(answer) = local(&subscribe, &mut modern) else {
            panic!("subscribe is answered here");
        };
        assert_eq!(answer["error"]["code"], -32601);
        let call = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {}});
        assert_eq!(local(&call, &mut modern), Local::Forward);
    }

    #[test]
    fn only_a_refusal_then_a_modern_discovery_switches() {
        let old = "2025-11-25";
        let error = br#"{"jsonrpc":"2.0","id":0,"error":{"code":-32601,"message":"no"}}"#;
        assert!(maybe_modern(StatusCode::OK, error, old));
        assert!(maybe_modern(StatusCode::BAD_REQUEST, b"", old));
        assert!(
            !maybe_modern(StatusCode::UNAUTHORIZED, error, old),
            "auth is the proxy's business"
        );
        let ok =
            |v: &str| format!(r#"{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":"{v}"}}}}"#);
        assert!(!maybe_modern(StatusCode::OK, ok(old).as_bytes(), old));
        assert!(
            !maybe_modern(StatusCode::OK, ok("2025-06-18").as_bytes(), old),
            "an older one is the client's to take"
        );
        assert!(maybe_modern(StatusCode::OK, ok(MODERN).as_bytes(), old));

        let modern = json!({"jsonrpc": "2.0", "id": "x", "result": {"supportedVersions": [MODERN], "capabilities": {}}});
        assert!(matches!(
            discovered(&modern, "2025-11-25"),
            Discovered::Modern(_)
        ));
        let dual = json!({"jsonrpc": "2.0", "id": "x", "result": {"supportedVersions": [MODERN, "2025-11-25"]}});
        assert_eq!(
            discovered(&dual, "2025-11-25"),
            Discovered::Not,
            "it speaks the client's own"
        );
        let future =
            json!({"jsonrpc": "2.0", "id": "x", "result": {"supportedVersions": ["2027-01-01"]}});
        assert_eq!(discovered(&future, "2025-11-25"), Discovered::Not);
        let wrong = json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -32022, "message": "v",
            "data": {"supported": [MODERN], "requested": "?"}}});
        assert_eq!(discovered(&wrong, "2025-11-25"), Discovered::Retry);
        let legacy =
            json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -32601, "message": "no"}});
        assert_eq!(discovered(&legacy, "2025-11-25"), Discovered::Not);
    }

    #[test]
    fn the_initialize_answer_comes_from_discovery() {
        let discovery = json!({"resultType": "complete", "supportedVersions": [MODERN],
            "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": true},
                             "logging": {}, "extensions": {"io.example/x": {"listChanged": 1}}},
            "serverInfo": {"name": "s", "version": "2"}, "instructions": "be kind", "ttlMs": 5});
        let answer = initialize_result(&initialize(), &discovery, "notes");
        assert_eq!(
            answer,
            json!({"jsonrpc": "2.0", "id": 0, "result": {
                "protocolVersion": "2025-11-25",
                "capabilities": discovery["capabilities"],
                "serverInfo": {"name": "s", "version": "2"},
                "instructions": "be kind"}})
        );
        let elsewhere = json!({"supportedVersions": [MODERN], "capabilities": {},
            "_meta": {SERVER_INFO: {"name": "m", "version": "1"}}});
        let answer = initialize_result(&initialize(), &elsewhere, "notes");
        assert_eq!(
            answer["result"]["serverInfo"],
            json!({"name": "m", "version": "1"})
        );
        let answer = initialize_result(&initialize(), &json!({}), "notes");
        assert_eq!(
            answer["result"]["serverInfo"],
            json!({"name": "notes", "version": "unknown"})
        );
    }

    #[test]
    fn the_subscription_filter_follows_the_discovery_and_the_client() {
        let mut modern = Modern::from_initialize(&initialize());
        modern.learn(&json!({"capabilities": {"tools": {}}}));
        assert_eq!(modern.filter(), None, "nothing to hear");
        let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe", "params": {"uri": "a://b"}});
        assert!(
            matches!(local(&subscribe, &mut modern), Local::Answer(a) if a["error"]["code"] == -32601),
            "not offered"
        );

        modern.learn(&json!({"capabilities": {"tools": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true}}}));
        assert_eq!(
            modern.filter(),
            Some(json!({"toolsListChanged": true, "resourcesListChanged": true}))
        );
        assert_eq!(
            local(&subscribe, &mut modern),
            Local::Resubscribe(json!({"jsonrpc": "2.0", "id": 1, "result": {}}))
        );
        let other = json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": "a://c"}});
        local(&other, &mut modern);
        local(&subscribe, &mut modern);
        assert_eq!(
            modern.filter().expect("a filter")["resourceSubscriptions"],
            json!(["a://c", "a://b"]),
            "once each"
        );
        let unsubscribe = json!({"jsonrpc": "2.0", "id": 3, "method": "resources/unsubscribe", "params": {"uri": "a://c"}});
        local(&unsubscribe, &mut modern);
        assert_eq!(
            modern.filter().expect("a filter")["resourceSubscriptions"],
            json!(["a://b"])
        );
    }

    #[test]
    fn a_retry_has_a_new_id_the_answers_and_the_state_as_sent() {
        let original = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "confirm", "arguments": {"a": 1}, "_meta": {VERSION: MODERN}}});
        let mut answers = Map::new();
        answers.insert(
            "ok".into(),
            json!({"action": "accept", "content": {"sure": true}}),
        );
        let retried = retry(
            &original,
            json!("latchkey-retry-1"),
            answers.clone(),
            &json!("opaque=="),
        );
        assert_eq!(
            retried,
            json!({"jsonrpc": "2.0", "id": "latchkey-retry-1", "method": "tools/call",
                "params": {"name": "confirm", "arguments": {"a": 1}, "_meta": {VERSION: MODERN},
                           "inputResponses": {"ok": {"action": "accept", "content": {"sure": true}}},
                           "requestState": "opaque=="}})
        );
        let again = retry(&retried, json!("latchkey-retry-2"), answers, &Value::Null);
        assert!(
            again["params"].get("requestState").is_none(),
            "no state when none was sent"
        );
        assert!(is_input_required(&json!({"resultType": "input_required"})));
        let sample = json!({"method": "sampling/createMessage", "params": {"maxTokens": 5}});
        assert_eq!(
            client_request("latchkey-4", &sample),
            json!({"jsonrpc": "2.0", "id": "latchkey-4", "method": "sampling/createMessage",
                   "params": {"maxTokens": 5}})
        );
        let url = json!({"method": "elicitation/create",
            "params": {"mode": "url", "url": "https://a.example/sign", "message": "sign"}});
        assert_eq!(
            client_request("latchkey-5", &url)["params"]["elicitationId"],
            "latchkey-5",
            "2025-11-25 requires one"
        );
        let roots = json!({"method": "roots/list"});
        assert!(client_request("latchkey-6", &roots).get("params").is_none());
        assert!(!is_input_required(&json!({"content": []})));
    }
}
