//! The local endpoint against the testkit upstream, over real loopback HTTP.

use latchkey_testkit::McpUpstream;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    ACCEPT_BOTH, API_KEY, API_KEY_HEADER, Daemon, DaemonBuilder, client, eventually, initialize,
    read_until, stream_client,
};

/// The testkit upstream, and a daemon that `config` sets up in front of it.
async fn in_front(
    config: impl FnOnce(&McpUpstream, DaemonBuilder) -> DaemonBuilder,
) -> (McpUpstream, Daemon) {
    let upstream = McpUpstream::start().await.expect("upstream");
    let daemon = config(&upstream, Daemon::builder()).start().await;
    (upstream, daemon)
}

/// [`in_front`], its Streamable HTTP endpoint as server `notes` with `extra` lines.
async fn streamable(extra: &[&str]) -> (McpUpstream, Daemon) {
    in_front(|upstream, daemon| daemon.server("notes", &upstream.mcp_url(), extra)).await
}

/// [`in_front`], its HTTP+SSE endpoint as server `old` with `extra` lines.
async fn legacy(extra: &[&str]) -> (McpUpstream, Daemon) {
    in_front(|upstream, daemon| daemon.server("old", &upstream.sse_url(), extra)).await
}

/// A session at `notes`, and its GET stream as a client that sends no Accept opens
/// it, read until the upstream's first event.
async fn session_with_stream(daemon: &Daemon) -> (String, reqwest::Response) {
    let session = daemon.open_session("/notes").await;
    let mut stream = stream_client()
        .get(daemon.url("/notes"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("GET stream");
    read_until(&mut stream, &mut String::new(), "stream open").await;
    (session, stream)
}

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test]
async fn post_with_json_reply_adds_static_headers_and_strips_client_credentials() {
    let (upstream, daemon) = streamable(&[API_KEY_HEADER]).await;
    let response = daemon
        .post("/notes", &initialize())
        .header("authorization", "Bearer client-own-token")
        .header("cookie", "session=client-cookie")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "hop-value")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["mcp-session-id"], "s1");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["result"]["serverInfo"]["name"], "latchkey-testkit");

    let seen = &upstream.requests()[0];
    assert_eq!(seen.headers["x-api-key"], API_KEY);
    assert!(
        seen.headers.get("authorization").is_none(),
        "client Authorization leaked upstream"
    );
    assert!(
        seen.headers.get("cookie").is_none(),
        "client Cookie leaked upstream"
    );
    assert!(
        seen.headers.get("x-hop").is_none(),
        "Connection-listed header forwarded"
    );
    assert_eq!(seen.headers["accept"], ACCEPT_BOTH);
    assert_eq!(seen.headers["host"], upstream.addr().to_string());
    let sent: Value = serde_json::from_slice(&seen.body).expect("body");
    assert_eq!(sent, initialize(), "request body forwarded byte for byte");
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn static_headers_replace_client_values() {
    let (upstream, daemon) = streamable(&[API_KEY_HEADER]).await;
    client()
        .post(daemon.url("/notes"))
        .header("x-api-key", "client-chosen")
        .json(&initialize())
        .send()
        .await
        .expect("request");
    let values: Vec<_> = upstream.requests()[0]
        .headers
        .get_all("x-api-key")
        .iter()
        .cloned()
        .collect();
    assert_eq!(values, [API_KEY]);
}

#[tokio::test]
async fn mcp_headers_round_trip_unchanged() {
    let (upstream, daemon) = streamable(&[]).await;
    let session = daemon.open_session("/notes").await;
    let call = rpc(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    );
    let response = daemon
        .post("/notes", &call)
        .header("mcp-session-id", &session)
        .header("MCP-Protocol-Version", "2025-06-18")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", "echo")
        .header("Mcp-Param-Region", "eu-west-1")
        .header("Last-Event-ID", "42")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.requests().pop().expect("recorded");
    for (name, value) in [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
        ("mcp-param-region", "eu-west-1"),
        ("last-event-id", "42"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(seen.headers[name], value, "{name}");
    }
}

#[tokio::test]
async fn post_with_sse_reply_relays_each_event_as_it_arrives() {
    let (upstream, daemon) = streamable(&[]).await;
    let session = daemon.open_session("/notes").await;
    let mut response = stream_client()
        .post(daemon.url("/notes"))
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &session)
        .json(&rpc(
            7,
            "tools/call",
            json!({"name": "gated", "arguments": {"text": "finished"}, "_meta": {"progressToken": "p1"}}),
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    // The upstream holds the result back until the gate opens, so the progress event
    // can only arrive here if latchkey relays it before the stream ends.
    read_until(&mut response, &mut seen, "notifications/progress").await;
    assert!(
        !seen.contains("finished"),
        "result arrived before the gate opened"
    );
    upstream.open_gate();
    read_until(&mut response, &mut seen, "finished").await;
    assert!(
        response.chunk().await.expect("end").is_none(),
        "stream ends after the result"
    );
}

#[tokio::test]
async fn get_stream_delivers_server_notifications() {
    let (upstream, daemon) = streamable(&[]).await;
    let session = daemon.open_session("/notes").await;
    let (mut stream, mut seen) = daemon.open_stream("/notes", &session).await;
    assert!(upstream.notify(
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    ));
    read_until(&mut stream, &mut seen, "notifications/tools/list_changed").await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let (upstream, daemon) = streamable(&[]).await;
    let (session, stream) = session_with_stream(&daemon).await;
    let ping = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
    assert!(upstream.notify(&session, ping.clone()), "stream is open");
    drop(stream);
    // The upstream's sender fails once latchkey has closed the upstream connection.
    eventually("upstream stream closed after client left", || {
        !upstream.notify(&session, ping.clone())
    })
    .await;
}

#[tokio::test]
async fn delete_ends_session_and_upstream_404_passes_through() {
    let (_upstream, daemon) = streamable(&[]).await;
    let session = daemon.open_session("/notes").await;
    let response = client()
        .delete(daemon.url("/notes"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = daemon
        .post("/notes", &rpc(3, "tools/list", json!({})))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("POST");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "expired session is the upstream's 404"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"], "session not found",
        "upstream body unchanged"
    );
}

#[tokio::test]
async fn legacy_sse_upstream_endpoint_is_rewritten_and_posts_relayed() {
    let (upstream, daemon) = legacy(&["transport = \"sse\"", API_KEY_HEADER]).await;
    let mut stream = stream_client()
        .get(daemon.url("/old"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\n\n").await;
    let endpoint = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("endpoint data")
        .to_owned();
    assert!(seen.starts_with("event: endpoint\n"), "{seen}");
    assert!(
        endpoint.starts_with("/old/messages/"),
        "endpoint points at latchkey: {endpoint}"
    );
    assert!(
        !endpoint.contains("sessionId"),
        "upstream endpoint is not exposed: {endpoint}"
    );

    let response = daemon
        .post_json(&endpoint, &rpc(5, "tools/list", json!({})))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    read_until(&mut stream, &mut seen, "\"echo\"").await;
    let post = upstream.requests().pop().expect("recorded");
    assert!(
        post.path.starts_with("/messages?sessionId="),
        "{}",
        post.path
    );
    assert_eq!(post.headers["x-api-key"], API_KEY);

    drop(stream);
    let mut gone = false;
    for _ in 0..250 {
        let status = daemon
            .post_json(&endpoint, &rpc(6, "ping", json!({})))
            .await
            .status();
        if status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "endpoint is forgotten once its stream closes");
}

#[tokio::test]
async fn auto_transport_relays_a_legacy_stream_for_clients_that_fall_back_themselves() {
    let (_upstream, daemon) = legacy(&[]).await;
    let mut stream = stream_client()
        .get(daemon.url("/old"))
        .send()
        .await
        .expect("GET");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "/old/messages/").await;
}

/// A Streamable-HTTP-only client in front of an HTTP+SSE server: latchkey holds the
/// legacy side of the session for it.
async fn bridged_session(transport: &[&str]) {
    let (upstream, daemon) = legacy(&[transport, &[API_KEY_HEADER]].concat()).await;
    let response = daemon.initialize("/old").await;
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], 1);
    assert_eq!(body["result"]["serverInfo"]["name"], "latchkey-testkit");

    let post = |message: Value| {
        daemon
            .post("/old", &message)
            .header("mcp-session-id", &session)
            .send()
    };
    let reply: Value = post(rpc(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "bridged"}}),
    ))
    .await
    .expect("call")
    .json()
    .await
    .expect("json");
    assert_eq!(reply["id"], 2);
    assert_eq!(reply["result"]["content"][0]["text"], "bridged");
    let batch: Value = post(json!([
        rpc(3, "ping", json!({})),
        rpc(4, "tools/list", json!({}))
    ]))
    .await
    .expect("batch")
    .json()
    .await
    .expect("json");
    assert_eq!(batch[0]["id"], 3);
    assert_eq!(batch[1]["result"]["tools"][0]["name"], "echo");
    let notification = post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .expect("notify");
    assert_eq!(notification.status(), StatusCode::ACCEPTED);

    // Messages the server sends on its own arrive on the session's GET stream.
    let legacy_id = upstream
        .requests()
        .iter()
        .find_map(|r| {
            r.path
                .strip_prefix("/messages?sessionId=")
                .map(str::to_owned)
        })
        .expect("posted to the announced endpoint");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.headers["x-api-key"] == API_KEY)
    );
    let mut stream = stream_client()
        .get(daemon.url("/old"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("GET");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert!(upstream.notify(&legacy_id, json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://hello"}})));
    read_until(
        &mut stream,
        &mut String::new(),
        "notifications/resources/updated",
    )
    .await;

    let deleted = client()
        .delete(daemon.url("/old"))
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let ping = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
    eventually("upstream SSE stream closed after DELETE", || {
        !upstream.notify(&legacy_id, ping.clone())
    })
    .await;
    let gone = post(rpc(5, "ping", json!({}))).await.expect("POST");
    assert_eq!(
        gone.status(),
        StatusCode::NOT_FOUND,
        "an ended session is a 404, per the spec"
    );
}

#[tokio::test]
async fn auto_transport_bridges_streamable_clients_to_a_legacy_server() {
    bridged_session(&[]).await;
}

#[tokio::test]
async fn sse_transport_bridges_streamable_clients() {
    bridged_session(&["transport = \"sse\""]).await;
}

#[tokio::test]
async fn auto_transport_remembers_a_streamable_server() {
    let (upstream, daemon) = streamable(&[]).await;
    let _ = daemon.open_session("/notes").await;
    let _ = daemon.open_session("/notes").await;
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.method == reqwest::Method::POST),
        "no fallback GET against a server that answered the POST"
    );
}

#[tokio::test]
async fn streamable_http_transport_leaves_sse_streams_alone() {
    let (_upstream, daemon) = in_front(|upstream, daemon| {
        daemon.server(
            "raw",
            &upstream.sse_url(),
            &["transport = \"streamable-http\""],
        )
    })
    .await;
    let mut stream = stream_client()
        .get(daemon.url("/raw"))
        .send()
        .await
        .expect("GET");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\n\n").await;
    assert!(seen.contains("data: /messages?sessionId="), "{seen}");
}

#[tokio::test]
async fn unreachable_upstream_gets_502_with_json_rpc_error() {
    // Bind and drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let daemon = Daemon::builder()
        .server(
            "down",
            &format!("http://127.0.0.1:{port}/mcp?key=query-secret"),
            &[],
        )
        .start()
        .await;
    let response = daemon.post_json("/down", &initialize()).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["error"]["data"]["server"], "down");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("\"down\""), "{message}");
    assert!(
        message.to_lowercase().contains("connect"),
        "names the cause: {message}"
    );
    assert!(
        !body.to_string().contains("query-secret"),
        "URL query is redacted: {body}"
    );

    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["state"], "error");
}

#[tokio::test]
async fn unknown_server_and_method_get_clear_errors() {
    let (_upstream, daemon) = streamable(&[]).await;
    let response = daemon.post_json("/nope", &initialize()).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("notes"),
        "{body}"
    );
    let response = client()
        .put(daemon.url("/notes"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, POST, DELETE");
}

/// [`streamable`], with `https://app.example.com` an allowed browser origin.
async fn allowing_app_origin() -> (McpUpstream, Daemon) {
    in_front(|upstream, daemon| {
        daemon
            .top("allowed_origins = [\"https://app.example.com\"]")
            .server("notes", &upstream.mcp_url(), &[])
    })
    .await
}

/// A web app allowed to call the MCP endpoints is not the person: it may neither
/// read the status page (and its anti-CSRF token) nor post its buttons.
#[tokio::test]
async fn an_allowed_web_app_may_not_read_the_status_page_or_press_its_buttons() {
    let (_upstream, daemon) = allowing_app_origin().await;
    let app = "https://app.example.com";
    for accept in ["text/html", "application/json"] {
        let page = client()
            .get(daemon.url("/"))
            .header("origin", app)
            .header("accept", accept)
            .send()
            .await
            .expect("GET /");
        assert_eq!(page.status(), StatusCode::FORBIDDEN, "{accept}");
        assert!(page.headers().get("access-control-allow-origin").is_none());
    }
    for path in ["/.latchkey/sign-out/notes", "/.latchkey/authorize/notes"] {
        let preflight = client()
            .request(reqwest::Method::OPTIONS, daemon.url(path))
            .header("origin", app)
            .header("access-control-request-method", "POST")
            .send()
            .await
            .expect("OPTIONS");
        assert!(
            preflight
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );
        let post = client()
            .post(daemon.url(path))
            .header("origin", app)
            .form(&[("csrf", "guessed")])
            .send()
            .await
            .expect("POST");
        assert_eq!(post.status(), StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn dns_rebinding_and_cross_site_origins_are_refused() {
    let (upstream, daemon) = allowing_app_origin().await;
    let port = daemon.addr.port();
    let post = |host: String, origin: Option<&str>| {
        let mut request = client()
            .post(daemon.url("/notes"))
            .header("host", host)
            .json(&initialize());
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    for (host, origin, expected) in [
        (format!("evil.example:{port}"), None, StatusCode::FORBIDDEN),
        (
            format!("127.0.0.1:{}", port + 1),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            format!("127.0.0.1:{port}"),
            Some("http://evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            format!("127.0.0.1:{port}"),
            Some("null"),
            StatusCode::FORBIDDEN,
        ),
        (format!("localhost:{port}"), None, StatusCode::OK),
        (format!("[::1]:{port}"), None, StatusCode::OK),
        // latchkey's own origin is the status page's, never a proxy path's: a page
        // rendered there (a hostile upstream's) must not call the servers.
        (
            format!("127.0.0.1:{port}"),
            Some(&*format!("http://localhost:{port}")),
            StatusCode::FORBIDDEN,
        ),
        (
            format!("127.0.0.1:{port}"),
            Some("https://app.example.com"),
            StatusCode::OK,
        ),
    ] {
        let response = post(host.clone(), origin).await.expect("request");
        assert_eq!(response.status(), expected, "Host {host} Origin {origin:?}");
    }
    let response = client()
        .get(daemon.url("/notes"))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "no-cors")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "an <img>-style cross-site GET"
    );
    // Another port of 127.0.0.1 is "same-site" to a browser; it is another party here.
    let response = client()
        .get(daemon.url("/notes"))
        .header("sec-fetch-site", "same-site")
        .header("sec-fetch-mode", "no-cors")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "a same-site GET");
    let refused = upstream.requests().len();
    assert_eq!(refused, 3, "only the allowed requests reached the upstream");
    let response = client()
        .get(daemon.url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("GET /");
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the status page is guarded too"
    );
}

#[tokio::test]
async fn status_page_lists_servers_as_json_and_html() {
    let (_upstream, daemon) = streamable(&[]).await;
    let json = daemon.status().await;
    assert_eq!(json["servers"][0]["name"], "notes");
    assert_eq!(json["servers"][0]["state"], "ready");
    assert_eq!(json["servers"][0]["transport"], "auto");
    let html = daemon.page("text/html").await;
    assert!(
        html.contains("<section class=\"server\" data-server=\"notes\"")
            && html.contains("<h2 id=\"server-notes\">notes</h2>")
            && !html.contains("href=\"/notes\""),
        "{html}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_ends_standalone_streams() {
    let (upstream, daemon) = streamable(&[]).await;
    let (session, mut get_stream) = session_with_stream(&daemon).await;
    let mut in_flight = stream_client()
        .post(daemon.url("/notes"))
        .header("accept", ACCEPT_BOTH)
        .header("mcp-session-id", &session)
        .json(&rpc(
            9,
            "tools/call",
            json!({"name": "gated", "arguments": {"text": "drained"}}),
        ))
        .send()
        .await
        .expect("POST");
    let mut seen = String::new();
    read_until(&mut in_flight, &mut seen, "progress").await;

    let addr = daemon.addr;
    let shutdown = tokio::spawn(daemon.shutdown());
    // The standalone stream ends; the in-flight call still gets its answer.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = get_stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "GET stream ended at shutdown");
    upstream.open_gate();
    read_until(&mut in_flight, &mut seen, "drained").await;
    shutdown.await.expect("join").expect("run returned Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn large_messages_pass_intact() {
    let (upstream, daemon) = streamable(&[]).await;
    let session = daemon.open_session("/notes").await;
    let text: String = (0..6 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply: Value = client()
        .post(daemon.url("/notes"))
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .json(&rpc(
            11,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        ))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("json");
    assert_eq!(
        reply["result"]["content"][0]["text"].as_str().map(str::len),
        Some(text.len())
    );
    assert!(reply["result"]["content"][0]["text"] == text.as_str());
    let sent = upstream.requests().pop().expect("recorded");
    assert!(sent.body.len() > text.len());
}

#[tokio::test]
async fn bridged_sessions_and_message_tokens_are_bound_to_their_server() {
    let evil = McpUpstream::start().await.expect("upstream");
    let secret = McpUpstream::start().await.expect("upstream");
    let daemon = Daemon::builder()
        .server("evil", &evil.sse_url(), &["transport = \"sse\""])
        .server(
            "secret",
            &secret.sse_url(),
            &["transport = \"sse\"", API_KEY_HEADER],
        )
        .start()
        .await;
    let response = daemon.initialize("/evil").await;
    let evil_session = response.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for method in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ] {
        let response = client()
            .request(method.clone(), daemon.url("/secret"))
            .header("mcp-session-id", &evil_session)
            .json(&rpc(2, "ping", json!({})))
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{method} with another server's session"
        );
    }

    let mut stream = stream_client()
        .get(daemon.url("/evil"))
        .send()
        .await
        .expect("GET");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\n\n").await;
    let token = seen
        .split("/evil/messages/")
        .nth(1)
        .and_then(|t| t.lines().next())
        .expect("token")
        .to_owned();
    let response = daemon
        .post_json(
            &format!("/secret/messages/{token}"),
            &rpc(3, "ping", json!({})),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "another server's message token"
    );
    assert!(
        evil.requests()
            .iter()
            .all(|r| r.headers.get("x-api-key").is_none()),
        "the secret server's credentials reached the other server"
    );
    // The evil server's session survived the DELETE sent to the other server.
    let response = client()
        .post(daemon.url("/evil"))
        .header("mcp-session-id", &evil_session)
        .json(&rpc(4, "ping", json!({})))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bridged_session_starts_only_with_initialize() {
    let (upstream, daemon) = legacy(&["transport = \"sse\""]).await;
    let response = daemon
        .post_json(
            "/old",
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("initialize"),
        "{body}"
    );
    assert!(
        upstream.requests().is_empty(),
        "no upstream stream was opened"
    );
}

#[tokio::test]
async fn allowed_browser_origins_get_cors() {
    let (_upstream, daemon) = allowing_app_origin().await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, daemon.url("/notes"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, mcp-session-id",
        )
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "content-type, mcp-session-id"
    );
    let response = client()
        .post(daemon.url("/notes"))
        .header("origin", "https://app.example.com")
        .json(&initialize())
        .send()
        .await
        .expect("POST");
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .expect("ascii")
            .contains("mcp-session-id")
    );
    let refused = client()
        .request(reqwest::Method::OPTIONS, daemon.url("/notes"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn another_loopback_listen_address_is_its_own_host() {
    let (_upstream, daemon) = in_front(|upstream, daemon| {
        daemon
            .listen("127.0.0.2:0")
            .server("notes", &upstream.mcp_url(), &[])
    })
    .await;
    let response = daemon.post_json("/notes", &initialize()).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn duplicate_host_or_origin_and_absolute_form_targets_are_refused() {
    let (_upstream, daemon) = streamable(&[]).await;
    let port = daemon.addr.port();
    let raw = |request: String| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(daemon_addr(port))
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reply = vec![0u8; 64];
        let n = stream.read(&mut reply).await.expect("read");
        String::from_utf8_lossy(&reply[..n]).into_owned()
    };
    let body = initialize().to_string();
    let twice = format!(
        "POST /notes HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nOrigin: https://evil.example\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(raw(twice).await.starts_with("HTTP/1.1 403"));
    let absolute = format!(
        "POST http://evil.example/notes HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(raw(absolute).await.starts_with("HTTP/1.1 403"));
}

fn daemon_addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// A bare HTTP/1.1 upstream that answers every request with a small JSON reply on a
/// keep-alive connection, counting the connections it accepts. With `close_after`,
/// it closes each connection that long after its reply (as a server whose
/// keep-alive timeout has run out would). A request with a body over 1 MiB is
/// answered 413 at once, and the connection is then held without reading more.
async fn counting_upstream(
    close_after: Option<std::time::Duration>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then `content-length` bytes of body.
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if length > 1 << 20 {
                        let refusal = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";
                        let _ = socket.write_all(refusal.as_bytes()).await;
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                        return;
                    }
                    while buffer.len() < head_end + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..head_end + length);
                    let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if let Some(delay) = close_after {
                        tokio::time::sleep(delay).await;
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// A daemon with the upstream at `url` as server `raw`, which speaks Streamable HTTP.
async fn raw(url: &str) -> Daemon {
    Daemon::builder()
        .server("raw", url, &["transport = \"streamable-http\""])
        .start()
        .await
}

async fn post_ok(daemon: &Daemon, client: &reqwest::Client) {
    let response = client
        .post(daemon.url("/raw"))
        .json(&rpc(1, "ping", json!({})))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], 1);
}

#[tokio::test]
async fn upstream_connections_are_pooled_per_server() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = counting_upstream(None).await;
    let daemon = raw(&url).await;
    let client = client();
    for _ in 0..20 {
        post_ok(&daemon, &client).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 calls in a row share one connection"
    );
    // Calls in flight together each need a connection; afterwards they are all reused.
    for _ in 0..3 {
        let clients: Vec<reqwest::Client> = (0..4).map(|_| crate::harness::client()).collect();
        let calls = clients.iter().map(|c| post_ok(&daemon, c));
        futures_util::future::join_all(calls).await;
    }
    let after = accepted.load(Ordering::SeqCst);
    assert!(
        after <= 5,
        "{after} connections for 3 rounds of 4 calls at a time"
    );
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = counting_upstream(Some(std::time::Duration::from_millis(20))).await;
    let daemon = raw(&url).await;
    let client = client();
    for _ in 0..5 {
        post_ok(&daemon, &client).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "each call after a close gets a new connection"
    );
    daemon.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_connection_still_sending_a_body_the_server_refused_is_not_reused() {
    let (url, accepted) = counting_upstream(None).await;
    let daemon = raw(&url).await;
    // 8 MiB the upstream refuses after the headers and never reads: its connection
    // stays busy writing them.
    let big = vec![b' '; 8 << 20];
    let refused = client()
        .post(daemon.url("/raw"))
        .header("content-type", "application/json")
        .body(big)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    if let Ok(response) = refused {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // The next call gets another connection instead of waiting behind that body.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        post_ok(&daemon, &client()),
    )
    .await
    .expect("the next call is answered");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    daemon.shutdown().await.expect("clean shutdown");
}
