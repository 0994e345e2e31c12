//! The secret-leak audit: a full life cycle through the `latchkey serve` binary at
//! `RUST_LOG=trace` (login in the browser, a step-up, a refresh, an upstream error, an
//! unknown server, logout), then every log line, `status --json`, `doctor`, `GET /`
//! and every response body is searched for every credential that was in play: access
//! and refresh tokens, codes, PKCE verifiers, `state`, the static API key and the
//! secrets in upstream URLs' queries. And a hostile error text cannot forge a log line.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::binary::{Serve, latchkey, serve};
use crate::harness::{TempDir, protected};

const API_KEY: &str = "apikey-Lk-7f3a9c";
const QUERY_SECRET: &str = "qsecret-Lk-51e0";
const DOWN_SECRET: &str = "qsecret-Lk-down-88";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_a_log_an_output_or_an_error_body() {
    let setup = protected()
        .token_lifetime(2)
        .rotating_refresh_tokens()
        .write_scope_for_tools()
        .prefix("LKLEAK-")
        .start()
        .await;
    let auth = &setup.auth;
    let scratch = TempDir::new("leaks");
    let config = scratch.write_config(&format!(
        "listen = \"127.0.0.1:0\"\nstore = \"file\"\nshutdown_timeout_secs = 5\n\
         [servers.notes]\nurl = \"{}?tenant={QUERY_SECRET}\"\nheaders = {{ \"X-Api-Key\" = \"${{LEAK_API_KEY}}\" }}\n\
         [servers.down]\nurl = \"http://127.0.0.1:9/mcp?key={DOWN_SECRET}\"\noauth = false\n",
        setup.mcp_url()
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
    let mut command = run(&["serve"]);
    command.stdout(std::process::Stdio::null());
    let daemon = Serve::new(command)
        .env("BROWSER", &browser)
        // Not stderr.log, which every `latchkey` command below starts afresh.
        .stderr(std::fs::File::create(scratch.path().join("serve.log")).expect("log"))
        .start()
        .await;
    let mut seen = Vec::new();
    let mut record = |what: &str, text: String| seen.push((what.to_owned(), text));

    // The login, then a call that needs a wider scope (a step-up).
    let answer = daemon.initialize("/notes").await;
    assert_eq!(answer.status(), 200);
    let session = answer.headers()["mcp-session-id"].clone();
    record("initialize", answer.text().await.expect("body"));
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}}});
    let answer = daemon
        .post("/notes", &call)
        .header("mcp-session-id", session.clone())
        .send()
        .await
        .expect("tools/call");
    assert_eq!(answer.status(), 200);
    record("step-up", answer.text().await.expect("body"));
    let mut tokens: BTreeSet<String> = auth.issued_tokens().into_iter().collect();
    // Past the expiry: a refresh.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "ping"});
    let answer = daemon
        .post("/notes", &ping)
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("ping");
    record("after refresh", answer.text().await.expect("body"));
    tokens.extend(auth.issued_tokens());
    // Error paths: an upstream that is down, a server that does not exist.
    let answer = daemon.initialize("/down").await;
    assert_eq!(answer.status(), 502);
    record("502", answer.text().await.expect("body"));
    let answer = daemon.initialize("/nope").await;
    record("404", answer.text().await.expect("body"));
    for accept in ["application/json", "text/html"] {
        record(accept, daemon.page(accept).await);
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
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
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
    let setup = protected()
        .token_lifetime(1)
        .refusing_refresh(forged)
        .start()
        .await;
    let scratch = TempDir::new("log-injection");
    let config = scratch.write_config(&setup.daemon(&[]).toml());
    let browser = scratch.approving_browser(0);
    let daemon = serve(&scratch, &config)
        .env("BROWSER", &browser)
        .start()
        .await;
    assert_eq!(daemon.initialize("/notes").await.status(), 200, "login");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The refresh is refused with the hostile text; a new login follows.
    assert_eq!(
        daemon.initialize("/notes").await.status(),
        200,
        "after expiry"
    );
    let log = scratch.log_with(&["refresh refused"]).await;
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
    assert!(
        !log.lines().any(|l| l.starts_with("2020-01-01")) && !log.contains('\u{1b}'),
        "a forged line or a raw escape in the log:\n{log}"
    );
    assert!(
        log.contains("\\n2020-01-01") && log.contains("\\u{1b}[31m"),
        "{log}"
    );
}
