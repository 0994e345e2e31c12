//! The `latchkey` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use latchkey_testkit::McpUpstream;

use crate::binary::{Serve, Served};
use crate::harness::{TempDir, assert_ok, client, initialize, protected, read_head, tls_acceptor};

/// The binary, with its state and lock directories in a scratch directory of this
/// test process, never the user's.
fn latchkey() -> Command {
    let scratch = std::env::temp_dir().join(format!("latchkey-it-home-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env("XDG_STATE_HOME", scratch.join("state"))
        .env("XDG_RUNTIME_DIR", scratch.join("run"));
    command
}

#[test]
fn version_and_help_with_examples() {
    let out = latchkey().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("latchkey ", env!("CARGO_PKG_VERSION"))
    );
    let out = latchkey().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Examples:") && help.contains("latchkey serve") && help.contains("check"),
        "{help}"
    );
}

#[test]
fn check_prints_every_error_with_position_and_fails() {
    let dir = TempDir::new("check");
    let path = dir.write_config("bogus = 1\n[servers.a]\nurl = \"nope\"\n");
    let out = latchkey()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:1:1: unknown key `bogus`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:3:7: server \"a\": url is not a URL")),
        "{stderr}"
    );
    assert!(stderr.contains("2 errors in config"), "{stderr}");
}

/// OAuth over plain http:// off loopback would send tokens in cleartext: allowed,
/// with a warning naming the server and the fix; loopback and oauth = false are quiet.
#[test]
fn check_warns_of_oauth_over_cleartext_http() {
    let dir = TempDir::new("cleartext");
    let path = dir.write_config("[servers.lan]\nurl = \"http://mcp.lan:8000/mcp\"\n[servers.local]\nurl = \"http://127.0.0.1:8000/mcp\"\n[servers.plain]\nurl = \"http://mcp.lan:9000/mcp\"\noauth = false\n",
    );
    let out = latchkey()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("[servers.lan]")
            && warnings[0].contains("cleartext")
            && warnings[0].contains("https://"),
        "{stdout}"
    );
}

#[test]
fn check_finds_the_default_config_and_the_env_override() {
    let dir = TempDir::new("default");
    std::fs::create_dir_all(dir.path().join("latchkey")).expect("mkdir");
    std::fs::write(
        dir.path().join("latchkey/config.toml"),
        "[servers.a]\nurl = \"https://a.example.com/mcp\"\n",
    )
    .expect("write");
    let out = latchkey()
        .arg("check")
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 server"));

    let other = dir.write_config("[servers.b]\nurl = \"https://b.example.com\"\n[servers.c]\nurl = \"https://c.example.com\"\n",
    );
    let out = latchkey()
        .arg("check")
        .env("XDG_CONFIG_HOME", dir.path())
        .env("LATCHKEY_CONFIG", &other)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 2 servers"));

    let out = latchkey()
        .arg("check")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "the cause once: {stderr}"
    );
    assert!(stderr.contains("`latchkey add NAME URL`"), "{stderr}");
}

/// `latchkey url NAME --snippets | head -1`: the reader goes before the output is
/// written, and latchkey stops quietly, as a command in a pipe should.
#[test]
fn a_reader_that_goes_away_stops_the_output_quietly() {
    let dir = TempDir::new("pipe");
    let path = dir.write_config("[servers.notes]\nurl = \"https://notes.example.com/mcp\"\n");
    let mut child = latchkey()
        .args(["url", "notes", "--snippets", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    // Closed before the binary has parsed its arguments, let alone printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // As a shell shows a process that SIGPIPE ended: quiet, and not a success.
    assert_eq!(out.status.code(), Some(141), "{:?}: {stderr}", out.status);
    assert_eq!(stderr, "");
}

#[test]
fn serve_refuses_a_non_loopback_listen_flag() {
    let dir = TempDir::new("listen");
    let path = dir.write_config("[servers.a]\nurl = \"https://a.example.com/mcp\"\n");
    let out = latchkey()
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_non_loopback"));
}

/// Sends `serve` SIGname; it must exit 0. All it logged.
async fn exits_zero(serve: Served, name: &str) -> String {
    let (code, logs) = serve.stop(name).await;
    assert_eq!(code, Some(0), "{logs}");
    logs
}

/// `latchkey --log-level LEVEL serve` on port 0 with `config`.
fn serve(config: &Path, level: &str) -> Serve {
    let mut command = latchkey();
    command
        .args(["--log-level", level, "serve", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config);
    Serve::new(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_logs_carry_no_header_values() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let dir = TempDir::new("serve");
    let path = dir.write_config(&format!(
        "[servers.notes]\nurl = {:?}\nheaders = {{ \"X-Api-Key\" = \"static-secret-4711\" }}\n",
        upstream.mcp_url()
    ));
    let serve = serve(&path, "trace").logged().start().await;
    let response = client()
        .post(serve.url("/notes"))
        .header("authorization", "Bearer client-secret-0815")
        .header("cookie", "sid=cookie-secret-2342")
        .json(&initialize())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    let logs = exits_zero(serve, "TERM").await;
    assert!(
        logs.contains("server=notes")
            && logs.contains("method=POST")
            && logs.contains("status=200"),
        "{logs}"
    );
    assert!(logs.contains("duration_us="), "{logs}");
    for secret in [
        "static-secret-4711",
        "client-secret-0815",
        "cookie-secret-2342",
    ] {
        assert!(!logs.contains(secret), "{secret} reached the log:\n{logs}");
    }
}

#[tokio::test]
async fn sigint_exits_zero_too() {
    let dir = TempDir::new("sigint");
    let path = dir.write_config("[servers.a]\nurl = \"https://a.example.com/mcp\"\n");
    let serve = serve(&path, "info").logged().start().await;
    let logs = exits_zero(serve, "INT").await;
    assert!(logs.contains("stopped"), "{logs}");
}

/// A whole OAuth login through the real binary, with the real browser opener: `$BROWSER`
/// is a script that fetches the authorization URL and follows the redirect to
/// latchkey's loopback listener. The debug-level log must hold no token or code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_login_leaves_no_secret_in_a_debug_log() {
    let setup = protected().start().await;
    let dir = TempDir::new("oauth-log");
    let browser = dir.path().join("browser.mjs");
    std::fs::write(&browser, "await fetch(process.argv[2]);\n").expect("write browser");
    let path = dir.write_config(&format!(
        "[servers.notes]\nurl = {:?}\n",
        setup.upstream.mcp_url()
    ));
    let browser_command = format!("node {}", browser.display());
    let serve = serve(&path, "debug")
        .logged()
        .env("BROWSER", &browser_command)
        .start()
        .await;
    assert_ok(serve.post_json("/notes", &initialize()).await).await;
    let logs = exits_zero(serve, "TERM").await;
    assert!(logs.contains("authorized"), "the login happened: {logs}");
    assert!(logs.contains("DEBUG"), "the log is at debug level: {logs}");
    let token = setup
        .upstream
        .requests()
        .iter()
        .find_map(|r| {
            r.headers
                .get("authorization")
                .map(|v| v.to_str().expect("ascii").to_owned())
        })
        .expect("the upstream got a token");
    let token = token.trim_start_matches("Bearer ");
    let refresh = token.replace("at-", "rt-");
    for secret in [token, refresh.as_str(), "Bearer", "code_verifier", "code-"] {
        assert!(
            !logs.contains(secret),
            "{secret:?} reached the log:\n{logs}"
        );
    }
}

/// A forward HTTP proxy that records each request line and relays the bytes to the
/// host the absolute-form URI names.
async fn forward_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let lines = lines.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client, b"\r\n").await else {
                    return;
                };
                let line = String::from_utf8_lossy(&head).trim_end().to_owned();
                let target = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|uri| uri.strip_prefix("http://"))
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                lines.lock().expect("lines").push(line);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                if upstream.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_go_through_the_proxy_the_environment_names() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let (proxy, seen) = forward_proxy().await;
    let dir = TempDir::new("http-proxy");
    let path = dir.write_config(&format!(
        "[servers.notes]\nurl = {:?}\n",
        upstream.mcp_url()
    ));
    let proxy_url = format!("http://{proxy}");
    let serve = serve(&path, "info")
        .logged()
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("NO_PROXY", "")
        .env("no_proxy", "")
        .start()
        .await;
    let response = serve.post_json("/notes", &initialize()).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    exits_zero(serve, "TERM").await;
    let seen = seen.lock().expect("lines").clone();
    assert!(
        seen.iter()
            .any(|line| line.starts_with(&format!("POST {} HTTP/1.1", upstream.mcp_url()))),
        "the proxy saw {seen:?}"
    );
    assert!(!upstream.requests().is_empty(), "the upstream was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_its_tls_handshake_gets_a_502_naming_it() {
    // Accepts TCP connections and never answers the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stalled = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let dir = TempDir::new("tls-stall");
    let path = dir.write_config(&format!(
        "[servers.slow]\nurl = \"https://{stalled}/mcp\"\noauth = false\n"
    ));
    let serve = serve(&path, "info").logged().start().await;
    let started = std::time::Instant::now();
    let response = client()
        .post(serve.url("/slow"))
        .json(&initialize())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), 502);
    let body = response.text().await.expect("body");
    assert!(body.contains("no connection within 10 s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20));
    serve.stop("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_never_stops_the_proxy() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let dir = TempDir::new("stderr-full");
    let path = dir.write_config(&format!(
        "[servers.notes]\nurl = {:?}\n",
        upstream.mcp_url()
    ));
    // stderr is a pipe that is never read: it fills after 64 KiB of log.
    let mut serve = serve(&path, "debug").stderr(Stdio::piped()).start().await;
    let client = client();
    let url = serve.url("/notes");
    // Far more log than the pipe and latchkey's backlog hold (some 500 KB); every
    // request must still be answered.
    for _ in 0..4000 {
        let response = client
            .post(&url)
            .json(&initialize())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("answered while stderr is full");
        assert_eq!(response.status(), 200);
        response.bytes().await.expect("body");
    }
    // Reading again lets the backlog out; the lines after it say what was dropped.
    let mut stderr = serve.child.stderr.take().expect("stderr");
    let reader = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut logs).await;
        logs
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.signal("TERM");
    assert_eq!(serve.wait().await.code(), Some(0));
    let logs = reader.await.expect("reader");
    let tail = &logs[logs.len().saturating_sub(2000)..];
    assert!(logs.contains("log write(s) dropped"), "{tail}");
    assert!(logs.contains("stopped"), "{tail}");
}

/// An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`), with the certificate in
/// `tests/it/tls` for 127.0.0.1. Returns its URL, the connections it accepted and the
/// HTTP version of every request it answered.
async fn h2_upstream() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<http::Version>>>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    let acceptor = tls_acceptor("server", &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}/mcp", listener.local_addr().expect("addr"));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let (accepted, seen) = (connections.clone(), versions.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    seen.lock().expect("versions").push(request.version());
                    async {
                        let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                body.as_bytes(),
                            )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, connections, versions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_offers_http2_gets_one_shared_connection() {
    use std::sync::atomic::Ordering;
    let (url, connections, versions) = h2_upstream().await;
    let dir = TempDir::new("h2");
    let path = dir.write_config(&format!(
        "[servers.h2]\nurl = {url:?}\ntransport = \"streamable-http\"\noauth = false\n"
    ));
    // The test CA is trusted the way a user's own CA would be.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls/ca.pem");
    let serve = serve(&path, "info")
        .logged()
        .env("SSL_CERT_FILE", ca)
        .start()
        .await;
    let call = |client: reqwest::Client| {
        let url = serve.url("/h2");
        async move {
            let response = client
                .post(url)
                .json(&initialize())
                .send()
                .await
                .expect("request");
            let status = response.status();
            let body = response.text().await.expect("body");
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(r#""result":{}"#), "{body}");
        }
    };
    for _ in 0..3 {
        call(client()).await;
    }
    futures_util::future::join_all((0..8).map(|_| call(client()))).await;
    let logs = exits_zero(serve, "TERM").await;
    assert_eq!(connections.load(Ordering::SeqCst), 1, "{logs}");
    let versions = versions.lock().expect("versions").clone();
    assert_eq!(versions.len(), 11);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}
