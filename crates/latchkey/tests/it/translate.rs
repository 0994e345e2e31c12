//! `latchkey stdio` between a client of an older revision and a server that speaks
//! only 2026-07-28 (the testkit's `/modern` endpoint): the bridge answers the old
//! `initialize` from the server's discovery, gives each request the per-request
//! metadata and headers, and carries a multi round-trip elicitation through the
//! client. A server that speaks the client's revision gets its messages untouched.

use latchkey_testkit::{MODERN_STATE, MODERN_VERSION, McpUpstream, RecordedRequest};
use serde_json::{Value, json};

use crate::harness::TempDir;
use crate::stdio::{Bridge, by_name, header};

const OLD: &str = "2025-11-25";

fn capabilities() -> Value {
    json!({"elicitation": {"form": {}}, "roots": {}})
}

fn client_info() -> Value {
    json!({"name": "old-editor", "version": "1.32.2"})
}

/// Starts the bridge in front of `url` and opens the session as an old client does.
async fn open(scratch: &TempDir, url: &str) -> (Bridge, Value) {
    let mut bridge = Bridge::start(by_name(scratch, url));
    let answer = bridge
        .call(
            0,
            "initialize",
            json!({"protocolVersion": OLD, "capabilities": capabilities(), "clientInfo": client_info()}),
        )
        .await;
    bridge
        .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    (bridge, answer)
}

fn body(request: &RecordedRequest) -> Value {
    serde_json::from_slice(&request.body).unwrap_or(Value::Null)
}

fn posted(upstream: &McpUpstream, method: &str) -> Vec<RecordedRequest> {
    upstream
        .requests()
        .into_iter()
        .filter(|r| body(r)["method"] == method)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_initialize_is_answered_from_the_discovery() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-initialize");
    let (mut bridge, answer) = open(&scratch, &upstream.modern_url()).await;
    assert_eq!(
        answer["result"],
        json!({"protocolVersion": OLD,
               "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true}},
               "serverInfo": {"name": "latchkey-testkit-modern", "version": "0.1.0"},
               "instructions": "Call confirm to be asked."}),
        "the version asked for: {answer}"
    );
    let tools = bridge.call(1, "tools/list", json!({})).await;
    assert_eq!(tools["result"]["tools"][0]["name"], "echo", "{tools}");
    assert!(bridge.finish().await.success());

    // (The proxy's transport detection tries a GET for HTTP+SSE after the refusal;
    // subscriptions/listen has a test of its own.)
    let methods: Vec<String> = upstream
        .requests()
        .iter()
        .filter(|r| body(r)["method"] != "subscriptions/listen")
        .map(|r| match body(r)["method"].as_str() {
            Some(method) => method.to_owned(),
            None => r.method.to_string(),
        })
        .collect();
    assert_eq!(
        methods,
        ["initialize", "GET", "server/discover", "tools/list"],
        "the initialized notification is absorbed; no GET stream nor DELETE of a session"
    );
    let discover = &posted(&upstream, "server/discover")[0];
    assert_eq!(
        header(discover, "mcp-protocol-version"),
        Some(MODERN_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_carries_the_metadata_and_headers() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-meta");
    let (mut bridge, _) = open(&scratch, &upstream.modern_url()).await;
    let set = bridge
        .call(1, "logging/setLevel", json!({"level": "warning"}))
        .await;
    assert_eq!(set["result"], json!({}), "{set}");
    let ping = bridge.call(2, "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}), "{ping}");
    let call = bridge
        .call(
            3,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
        .await;
    assert_eq!(call["result"]["content"][0]["text"], "hi", "{call}");
    assert!(bridge.finish().await.success());

    let calls = posted(&upstream, "tools/call");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        header(&calls[0], "mcp-protocol-version"),
        Some(MODERN_VERSION)
    );
    assert_eq!(header(&calls[0], "mcp-method"), Some("tools/call"));
    assert_eq!(header(&calls[0], "mcp-name"), Some("echo"));
    assert_eq!(header(&calls[0], "mcp-session-id"), None);
    assert_eq!(
        body(&calls[0])["params"]["_meta"],
        json!({"io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
               "io.modelcontextprotocol/clientCapabilities": capabilities(),
               "io.modelcontextprotocol/clientInfo": client_info(),
               "io.modelcontextprotocol/logLevel": "warning"})
    );
    assert!(
        posted(&upstream, "ping").is_empty() && posted(&upstream, "logging/setLevel").is_empty(),
        "2026-07-28 has neither: answered by the bridge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elicitation_round_trip_goes_through_the_client() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-elicit");
    let (mut bridge, _) = open(&scratch, &upstream.modern_url()).await;
    bridge
        .send(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "confirm", "arguments": {}}}))
        .await;
    let asked = loop {
        // (Past the list change the subscription brings.)
        let message = bridge.recv().await;
        if message.get("id").is_some() {
            break message;
        }
    };
    assert_eq!(asked["method"], "elicitation/create", "{asked}");
    assert_eq!(asked["params"]["message"], "Go ahead?");
    bridge
        .send(&json!({"jsonrpc": "2.0", "id": asked["id"],
                      "result": {"action": "accept", "content": {"sure": true}}}))
        .await;
    let answer = bridge.answer(7).await;
    assert_eq!(
        answer["result"]["content"][0]["text"], "accept: {\"sure\":true}",
        "{answer}"
    );
    assert!(bridge.finish().await.success());

    let calls = posted(&upstream, "tools/call");
    assert_eq!(calls.len(), 2, "the first round, then the retry");
    let (first, retry) = (body(&calls[0]), body(&calls[1]));
    assert_ne!(first["id"], retry["id"], "a retry is a new request");
    assert_eq!(retry["params"]["requestState"], MODERN_STATE);
    assert_eq!(
        retry["params"]["inputResponses"],
        json!({"ok": {"action": "accept", "content": {"sure": true}}})
    );
    assert_eq!(header(&calls[1], "mcp-name"), Some("confirm"));
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| body(r)["id"] != asked["id"]),
        "the client's answer went into the retry, not to the server on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_the_client_revision_gets_its_messages_untouched() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-untouched");
    let (mut bridge, answer) = open(&scratch, &upstream.mcp_url()).await;
    assert_eq!(answer["result"]["serverInfo"]["name"], "latchkey-testkit");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "as is"}}});
    bridge.send(&call).await;
    let _ = bridge.recv().await;
    assert!(bridge.finish().await.success());

    assert!(posted(&upstream, "server/discover").is_empty(), "no probe");
    let initialized = posted(&upstream, "notifications/initialized");
    assert_eq!(initialized.len(), 1, "the notification goes through");
    let sent = &posted(&upstream, "tools/call")[0];
    assert_eq!(sent.body, call.to_string().as_bytes(), "byte for byte");
    assert_eq!(
        header(sent, "mcp-protocol-version"),
        Some(latchkey_testkit::PROTOCOL_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changes_and_resource_updates_come_from_a_subscription() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-listen");
    let (mut bridge, _) = open(&scratch, &upstream.modern_url()).await;
    let changed = bridge.recv().await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    let subscribed = bridge
        .call(1, "resources/subscribe", json!({"uri": "test://hello"}))
        .await;
    assert_eq!(subscribed["result"], json!({}), "{subscribed}");
    let updated = loop {
        let message = bridge.recv().await;
        if message["method"] == "notifications/resources/updated" {
            break message;
        }
    };
    assert_eq!(updated["params"]["uri"], "test://hello");
    assert!(bridge.finish().await.success());

    let listen = posted(&upstream, "subscriptions/listen");
    assert_eq!(listen.len(), 2, "opened anew for the subscription");
    assert_eq!(
        body(&listen[0])["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "what the discovery announced"
    );
    assert_eq!(
        body(&listen[1])["params"]["notifications"],
        json!({"toolsListChanged": true, "resourceSubscriptions": ["test://hello"]})
    );
    assert_eq!(
        header(&listen[0], "mcp-method"),
        Some("subscriptions/listen")
    );
    assert!(posted(&upstream, "resources/subscribe").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_closes_its_stream() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("translate-cancel");
    let (mut bridge, _) = open(&scratch, &upstream.modern_url()).await;
    bridge
        .send(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "slow", "_meta": {"progressToken": "p9"}}}))
        .await;
    loop {
        // The call is under way once its progress arrives.
        let message = bridge.recv().await;
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "p9");
            break;
        }
    }
    bridge
        .send(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": 9, "reason": "the user pressed stop"}}),
        )
        .await;
    for _ in 0..100 {
        if upstream.closed_early() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstream.closed_early(),
        1,
        "2026-07-28 cancels by closing the stream"
    );
    let ping = bridge.call(10, "ping", json!({})).await;
    assert_eq!(ping["result"], json!({}), "the bridge goes on: {ping}");
    assert!(bridge.finish().await.success());
    assert!(posted(&upstream, "notifications/cancelled").is_empty());
}
