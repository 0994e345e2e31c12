//! The secret-leak audit: a full life cycle through the `latchkey serve` binary at
//! `RUST_LOG=trace` (login in the browser, a step-up, a refresh, an upstream error, an
//! unknown server, logout), then every log line, `status --json`, `doctor`, `GET /`
//! and every response body is searched for every credential that was in play: access
//! and refresh tokens, codes, PKCE verifiers, `state`, the static API key and the
//! secrets in upstream URLs' queries. And a hostile error text cannot forge a log line.

use std::collections::BTreeSet;
use std::time::Duration;

use latchkey_testkit::{AuthOptions, protected_upstream};
use serde_json::{Value, json};

use crate::harness::{client, initialize};
use crate::service::{NotifySocket, Scratch, exits_cleanly, latchkey, signal, spawn};

const API_KEY: &str = "apikey-Lk-7f3a9c";
const QUERY_SECRET: &str = "qsecret-Lk-51e0";
const DOWN_SECRET: &str = "qsecret-Lk-down-88";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_a_log_an_output_or_an_error_body() {
    let (upstream, auth) = protected_upstream(
        "127.0.0.1:0".parse().expect("addr"),
        AuthOptions {
            token_lifetime: 2,
            rotate_refresh_tokens: true,
            write_scope_for_tools: true,
            prefix: "LKLEAK-".into(),
            ..AuthOptions::default()
        },
    )
    .await
    .expect("protected upstream");
    let scratch = Scratch::new("leaks");
    let notify = NotifySocket::at_path(&scratch);
    let config = scratch.write_config(&format!(
        "listen = \"127.0.0.1:0\"\nstore = \"file\"\nshutdown_timeout_secs = 5\n\
         [servers.notes]\nurl = \"{}?tenant={QUERY_SECRET}\"\nheaders = {{ \"X-Api-Key\" = \"${{LEAK_API_KEY}}\" }}\n\
         [servers.down]\nurl = \"http://127.0.0.1:9/mcp?key={DOWN_SECRET}\"\noauth = false\n",
        upstream.mcp_url()
    ));
    let browser = scratch.approving_browser(0);
    let run = |args: &[&str]| {
        let mut command = latchkey(&scratch);
        command
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("LEAK_API_KEY", API_KEY)
            .env("RUST_LOG", "trace")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut serve = run(&["serve"]);
    serve
        .env("BROWSER", &browser)
        .env("NOTIFY_SOCKET", &notify.env)
        .stdout(std::process::Stdio::null())
        // Not stderr.log, which every `latchkey` command below starts afresh.
        .stderr(std::fs::File::create(scratch.path().join("serve.log")).expect("log"));
    let daemon = spawn(serve);
    let addr = notify.ready().await;
    let url = |path: &str| format!("http://{addr}{path}");
    let mut seen = Vec::new();
    let mut record = |what: &str, text: String| seen.push((what.to_owned(), text));

    let post = |path: &'static str, body: Value| {
        client()
            .post(url(path))
            .header("accept", "application/json, text/event-stream")
            .json(&body)
            .send()
    };
    // The login, then a call that needs a wider scope (a step-up).
    let answer = post("/notes", initialize()).await.expect("initialize");
    assert_eq!(answer.status(), 200);
    let session = answer.headers()["mcp-session-id"].clone();
    record("initialize", answer.text().await.expect("body"));
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}}});
    let answer = client()
        .post(url("/notes"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session.clone())
        .json(&call)
        .send()
        .await
        .expect("tools/call");
    assert_eq!(answer.status(), 200);
    record("step-up", answer.text().await.expect("body"));
    let mut tokens: BTreeSet<String> = auth.issued_tokens().into_iter().collect();
    // Past the expiry: a refresh.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = client()
        .post(url("/notes"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}))
        .send()
        .await
        .expect("ping");
    record("after refresh", answer.text().await.expect("body"));
    tokens.extend(auth.issued_tokens());
    // Error paths: an upstream that is down, a server that does not exist.
    let answer = post("/down", initialize()).await.expect("down");
    assert_eq!(answer.status(), 502);
    record("502", answer.text().await.expect("body"));
    let answer = post("/nope", initialize()).await.expect("nope");
    record("404", answer.text().await.expect("body"));
    for accept in ["application/json", "text/html"] {
        let page = client()
            .get(url("/"))
            .header("accept", accept)
            .send()
            .await
            .expect("GET /");
        record(accept, page.text().await.expect("page"));
    }
    for args in [&["status", "--json"][..], &["doctor"], &["logout", "notes"]] {
        let out = tokio::process::Command::from(run(args))
            .output()
            .await
            .expect("run latchkey");
        record(
            &args.join(" "),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
    tokens.extend(auth.issued_tokens());
    signal(&daemon, "TERM");
    exits_cleanly(daemon, &scratch).await;
    let log = std::fs::read_to_string(scratch.path().join("serve.log")).expect("serve.log");
    assert!(
        log.lines().count() > 50 && log.contains("TRACE"),
        "the daemon logged at trace level:\n{log}"
    );
    assert!(
        auth.token_requests().iter().any(|g| g == "refresh_token"),
        "a refresh happened"
    );
    record("daemon log", log);

    let mut secrets: BTreeSet<String> = tokens;
    for request in auth.received() {
        for name in [
            "code",
            "code_verifier",
            "refresh_token",
            "client_secret",
            "state",
            "device_code",
        ] {
            if let Some(value) = request.field(name) {
                secrets.insert(value.to_owned());
            }
        }
    }
    assert!(
        secrets.iter().any(|s| s.starts_with("LKLEAK-code-")),
        "{secrets:?}"
    );
    assert!(
        secrets.len() >= 8,
        "tokens, codes, verifiers and states: {secrets:?}"
    );
    secrets.extend([API_KEY, QUERY_SECRET, DOWN_SECRET].map(str::to_owned));
    for (what, text) in &seen {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a credential ({secret}):\n{text}"
            );
        }
    }
}

/// An authorization server's error text with a newline, a forged log line and an
/// escape sequence: the daemon's log keeps it on one line, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_error_text_cannot_forge_log_lines_or_reach_a_terminal_raw() {
    let forged = "invalid_grant\n2020-01-01T00:00:00.000000Z  INFO latchkey: FORGED \u{1b}[31mred";
    let (upstream, _auth) = protected_upstream(
        "127.0.0.1:0".parse().expect("addr"),
        AuthOptions {
            token_lifetime: 1,
            refuse_refresh: Some(forged.into()),
            ..AuthOptions::default()
        },
    )
    .await
    .expect("protected upstream");
    let scratch = Scratch::new("log-injection");
    let notify = NotifySocket::at_path(&scratch);
    let config = scratch.write_config(&format!(
        "listen = \"127.0.0.1:0\"\nstore = \"memory\"\n[servers.notes]\nurl = {:?}\n",
        upstream.mcp_url()
    ));
    let browser = scratch.approving_browser(0);
    let mut serve = latchkey(&scratch);
    serve
        .args(["serve", "--config"])
        .arg(&config)
        .env("BROWSER", &browser)
        .env("NOTIFY_SOCKET", &notify.env);
    let daemon = spawn(serve);
    let addr = notify.ready().await;
    let post = || {
        client()
            .post(format!("http://{addr}/notes"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize())
            .send()
    };
    assert_eq!(post().await.expect("login").status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The refresh is refused with the hostile text; a new login follows.
    assert_eq!(post().await.expect("after expiry").status(), 200);
    let log = scratch.log_with(&["refresh refused"]).await;
    signal(&daemon, "TERM");
    exits_cleanly(daemon, &scratch).await;
    assert!(
        !log.lines().any(|l| l.starts_with("2020-01-01")) && !log.contains('\u{1b}'),
        "a forged line or a raw escape in the log:\n{log}"
    );
    assert!(
        log.contains("\\n2020-01-01") && log.contains("\\u{1b}[31m"),
        "{log}"
    );
}
