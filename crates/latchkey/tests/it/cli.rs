//! The `latchkey` binary as a user runs it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use latchkey_testkit::McpUpstream;

use crate::harness::{client, initialize};

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

fn write_config(dir: &tempdir::Dir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

mod tempdir {
    /// A directory under the target dir, removed on drop.
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("latchkey-it-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
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
    let dir = tempdir::Dir::new("check");
    let path = write_config(&dir, "bogus = 1\n[servers.a]\nurl = \"nope\"\n");
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
    let dir = tempdir::Dir::new("cleartext");
    let path = write_config(
        &dir,
        "[servers.lan]\nurl = \"http://mcp.lan:8000/mcp\"\n[servers.local]\nurl = \"http://127.0.0.1:8000/mcp\"\n[servers.plain]\nurl = \"http://mcp.lan:9000/mcp\"\noauth = false\n",
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
    let dir = tempdir::Dir::new("default");
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

    let other = write_config(
        &dir,
        "[servers.b]\nurl = \"https://b.example.com\"\n[servers.c]\nurl = \"https://c.example.com\"\n",
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn serve_refuses_a_non_loopback_listen_flag() {
    let dir = tempdir::Dir::new("listen");
    let path = write_config(&dir, "[servers.a]\nurl = \"https://a.example.com/mcp\"\n");
    let out = latchkey()
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_non_loopback"));
}

struct Serve {
    child: Child,
    addr: String,
    logs: std::sync::mpsc::Receiver<String>,
}

/// Starts `latchkey serve` on port 0 and reads its address from the log.
fn serve(config: &std::path::Path, level: &str) -> Serve {
    serve_with(config, level, &[])
}

fn serve_with(config: &std::path::Path, level: &str, env: &[(&str, &str)]) -> Serve {
    let mut command = latchkey();
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .args([
            "--log-level",
            level,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "latchkey exited before listening"
        );
        if let Some(rest) = line.split("local=").nth(1) {
            break rest.split_whitespace().next().expect("addr").to_owned();
        }
    };
    // Keep reading so the pipe never fills; the test reads the rest after exit.
    child.stderr = None;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        let _ = tx.send(rest);
    });
    Serve {
        child,
        addr,
        logs: rx,
    }
}

fn terminate(mut serve: Serve, signal: &str) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args([signal, &serve.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = serve.child.wait().expect("wait");
    let logs = serve
        .logs
        .recv_timeout(Duration::from_secs(10))
        .expect("logs");
    (status.code(), logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_logs_carry_no_header_values() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let dir = tempdir::Dir::new("serve");
    let path = write_config(
        &dir,
        &format!(
            "[servers.notes]\nurl = {:?}\nheaders = {{ \"X-Api-Key\" = \"static-secret-4711\" }}\n",
            upstream.mcp_url()
        ),
    );
    let serve = serve(&path, "trace");
    let response = client()
        .post(format!("http://{}/notes", serve.addr))
        .header("authorization", "Bearer client-secret-0815")
        .header("cookie", "sid=cookie-secret-2342")
        .json(&initialize())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    let (code, logs) = terminate(serve, "-TERM");
    assert_eq!(code, Some(0), "{logs}");
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

#[test]
fn sigint_exits_zero_too() {
    let dir = tempdir::Dir::new("sigint");
    let path = write_config(&dir, "[servers.a]\nurl = \"https://a.example.com/mcp\"\n");
    let serve = serve(&path, "info");
    let (code, logs) = terminate(serve, "-INT");
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

/// A whole OAuth login through the real binary, with the real browser opener: `$BROWSER`
/// is a script that fetches the authorization URL and follows the redirect to
/// latchkey's loopback listener. The debug-level log must hold no token or code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_login_leaves_no_secret_in_a_debug_log() {
    let setup = crate::oauth::protected(latchkey_testkit::AuthOptions::default()).await;
    let dir = tempdir::Dir::new("oauth-log");
    let browser = dir.path().join("browser.mjs");
    std::fs::write(&browser, "await fetch(process.argv[2]);\n").expect("write browser");
    let path = write_config(
        &dir,
        &format!("[servers.notes]\nurl = {:?}\n", setup.upstream.mcp_url()),
    );
    let browser_command = format!("node {}", browser.display());
    let serve = serve_with(&path, "debug", &[("BROWSER", &browser_command)]);
    let response = client()
        .post(format!("http://{}/notes", serve.addr))
        .json(&initialize())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let (code, logs) = terminate(serve, "-TERM");
    assert_eq!(code, Some(0), "{logs}");
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
    use tokio::io::AsyncReadExt as _;
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
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
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
    let dir = tempdir::Dir::new("http-proxy");
    let path = write_config(
        &dir,
        &format!("[servers.notes]\nurl = {:?}\n", upstream.mcp_url()),
    );
    let proxy_url = format!("http://{proxy}");
    let serve = serve_with(
        &path,
        "info",
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    let response = client()
        .post(format!("http://{}/notes", serve.addr))
        .json(&initialize())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    let (code, logs) = terminate(serve, "-TERM");
    assert_eq!(code, Some(0), "{logs}");
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
    let dir = tempdir::Dir::new("tls-stall");
    let path = write_config(
        &dir,
        &format!("[servers.slow]\nurl = \"https://{stalled}/mcp\"\noauth = false\n"),
    );
    let serve = serve(&path, "info");
    let started = std::time::Instant::now();
    let response = client()
        .post(format!("http://{}/slow", serve.addr))
        .json(&initialize())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), 502);
    let body = response.text().await.expect("body");
    assert!(body.contains("no connection within 10 s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20));
    terminate(serve, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_never_stops_the_proxy() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let dir = tempdir::Dir::new("stderr-full");
    let path = write_config(
        &dir,
        &format!("[servers.notes]\nurl = {:?}\n", upstream.mcp_url()),
    );
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    // stderr is a pipe that is never read: it fills after 64 KiB of log.
    let mut child = latchkey()
        .args([
            "--log-level",
            "debug",
            "serve",
            "--listen",
            &addr.to_string(),
            "--config",
        ])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let client = client();
    let url = format!("http://{addr}/notes");
    for _ in 0..200 {
        if client.get(format!("http://{addr}/")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let logs = reader.join().expect("reader");
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
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls");
    let certs = CertificateDer::pem_file_iter(format!("{tls}/server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(format!("{tls}/server.key")).expect("server.key");
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
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
    let dir = tempdir::Dir::new("h2");
    let path = write_config(
        &dir,
        &format!("[servers.h2]\nurl = {url:?}\ntransport = \"streamable-http\"\noauth = false\n"),
    );
    // The test CA is trusted the way a user's own CA would be.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls/ca.pem");
    let serve = serve_with(&path, "info", &[("SSL_CERT_FILE", ca)]);
    let call = |client: reqwest::Client| {
        let url = format!("http://{}/h2", serve.addr);
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
    let (code, logs) = terminate(serve, "-TERM");
    assert_eq!(code, Some(0), "{logs}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "{logs}");
    let versions = versions.lock().expect("versions").clone();
    assert_eq!(versions.len(), 11);
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}
