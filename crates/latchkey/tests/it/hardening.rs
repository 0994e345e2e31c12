//! Issue 13, "only the user's own clients can use the credentials": the directories
//! latchkey keeps credentials and locks in (point 8), and where a server's OAuth
//! requests may go (point 6).
//!
//! Another user is played by user 65534 (`nobody`): the tests run as root, which may
//! give a planted file to anyone (`chown`). A public server is one at 203.0.113.7 or
//! 203.0.113.8 (TEST-NET-3, not a block latchkey refuses), which this machine does
//! not have: the latchkey under test runs as a child whose `HTTPS_PROXY` names
//! [`internet`], a forward proxy that answers a CONNECT to those addresses with TLS
//! (`tests/it/tls/public.pem`, whose CA the child trusts through `SSL_CERT_FILE`) and
//! relays the requests to a loopback server. No privilege and no network setup, so it
//! runs the same anywhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use latchkey_auth::Secret;
use latchkey_auth::registration::Registration;
use latchkey_auth::store::{FileStore, Record, Store as _};
use latchkey_auth::token::{ClientAuth, TokenSet};
use latchkey_testkit::{AuthOptions, AuthServer, McpUpstream, PrmAt, Protection};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::harness::{Daemon, Store, TempDir, protected, read_head, tls_acceptor};

/// The user that plants files: `nobody`.
const OTHER: u32 = 65534;
/// The public MCP server and its public authorization server.
const SERVER: &str = "https://203.0.113.7/mcp";
const ISSUER: &str = "https://203.0.113.8";

fn write_config(dir: &Path, text: &str) {
    std::fs::write(dir.join("config.toml"), text).expect("config");
}

/// A config with a file store in `<dir>/state` and one server, `notes`.
fn config_for(dir: &Path, url: &str, extra: &str) {
    write_config(
        dir,
        &format!(
            "store = \"file\"\nstate_dir = {:?}\n[servers.notes]\nurl = {url:?}\n{extra}",
            dir.join("state")
        ),
    );
}

/// The binary with `<dir>/config.toml`, in an environment of the test's own: no proxy
/// but the one a test names, a home and temp dir in `dir`, no browser.
fn latchkey(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .args(args)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("HOME", dir.join("home"))
        .env("XDG_STATE_HOME", dir.join("xdg-state"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("TMPDIR", dir.join("tmp"))
        .env("BROWSER", "/bin/false")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

/// What a child did.
#[derive(Debug)]
struct Ran {
    /// `false` when it was still running and was killed.
    exited: bool,
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `command` until it exits, `done` (given its stderr so far) says the test saw
/// enough, or 20 s pass; a child still running then is killed.
async fn run(mut command: Command, dir: &Path, done: impl Fn(&str) -> bool) -> Ran {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let file = |path: &Path| Stdio::from(std::fs::File::create(path).expect("output file"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .expect("spawn latchkey");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if done(&read(&err)) || started.elapsed() > Duration::from_secs(20) {
            drop(child.kill().await);
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ran {
        exited: status.is_some(),
        success: status.is_some_and(|s| s.success()),
        stdout: read(&out),
        stderr: read(&err),
    }
}

/// Gives `path` (not what it points to) to [`OTHER`]; `false`, with a line saying
/// the test is skipped, when this process may not (it does not run as root).
fn give_away(path: &Path) -> bool {
    match std::os::unix::fs::lchown(path, Some(OTHER), Some(OTHER)) {
        Ok(()) => true,
        Err(e) => {
            crate::harness::skipped(&format!(
                "cannot give {} to user {OTHER} ({e}); this test needs root",
                path.display()
            ));
            false
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn without_home_or_xdg_state_home_the_error_names_xdg_state_home() {
    let dir = TempDir::new("no-state-home");
    std::fs::create_dir_all(dir.0.join("tmp")).expect("tmp");
    write_config(
        &dir.0,
        "store = \"file\"\n[servers.notes]\nurl = \"http://127.0.0.1:9/mcp\"\n",
    );
    let mut command = latchkey(&dir.0, &["status"]);
    command.env_remove("HOME").env_remove("XDG_STATE_HOME");
    let ran = run(command, &dir.0, |_| false).await;
    let output = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        output.contains("XDG_STATE_HOME") && output.contains("state_dir"),
        "names the variable and the config key: {ran:?}"
    );
    let tmp: Vec<_> = std::fs::read_dir(dir.0.join("tmp")).expect("tmp").collect();
    assert!(
        tmp.is_empty(),
        "nothing falls back to the temp dir: {tmp:?}"
    );
}

#[tokio::test]
async fn a_state_dir_others_may_write_to_or_that_another_user_owns_is_refused() {
    let dir = TempDir::new("shared-state");
    let state = dir.0.join("state");
    std::fs::create_dir_all(&state).expect("state");
    chmod(&state, 0o777);
    config_for(&dir.0, "http://127.0.0.1:9/mcp", "");
    let ran = run(latchkey(&dir.0, &["status"]), &dir.0, |_| false).await;
    let fix = format!("chmod 700 {}", state.display());
    assert!(
        ran.stdout.contains(&fix),
        "refused, with the fix ({fix}): {ran:?}"
    );
    let doctor = run(latchkey(&dir.0, &["doctor"]), &dir.0, |_| false).await;
    assert!(
        doctor
            .stdout
            .lines()
            .any(|l| l.starts_with("[ERR] paths:") && l.contains("writable")),
        "doctor reports it: {doctor:?}"
    );
    assert!(doctor.stdout.contains(&fix), "{doctor:?}");

    chmod(&state, 0o700);
    if !give_away(&state) {
        return;
    }
    let ran = run(latchkey(&dir.0, &["status"]), &dir.0, |_| false).await;
    assert!(
        ran.stdout.contains(&format!("belongs to user {OTHER}")),
        "refused: {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_planted_as_a_link_is_refused_and_nothing_is_made_where_it_points() {
    let setup = protected().start().await;
    let dir = TempDir::new("linked-state");
    // A directory every user may write to, like /tmp or a careless XDG_RUNTIME_DIR,
    // and one of the victim's own that the link points into.
    let shared = dir.0.join("shared");
    let elsewhere = dir.0.join("elsewhere");
    std::fs::create_dir_all(&shared).expect("shared");
    std::fs::create_dir_all(&elsewhere).expect("elsewhere");
    chmod(&shared, 0o1777);
    chmod(&elsewhere, 0o700);
    let link = shared.join("latchkey");
    std::os::unix::fs::symlink(&elsewhere, &link).expect("plant the link");
    if !give_away(&link) {
        return;
    }
    write_config(
        &dir.0,
        &format!(
            "store = \"file\"\nstate_dir = {link:?}\n[servers.notes]\nurl = {:?}\n",
            setup.mcp_url()
        ),
    );
    let made = || std::fs::read_dir(&elsewhere).map_or(0, Iterator::count);
    let ran = run(
        latchkey(&dir.0, &["login", "notes", "--no-browser"]),
        &dir.0,
        |_| made() > 0,
    )
    .await;
    assert_eq!(made(), 0, "latchkey made files through the link: {ran:?}");
    assert!(ran.exited && !ran.success, "{ran:?}");
    assert!(
        ran.stderr.contains(&link.display().to_string()) && ran.stderr.contains("symbolic link"),
        "names the link: {ran:?}"
    );
}

#[tokio::test]
async fn a_record_another_user_planted_is_refused_and_its_token_never_sent() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let dir = TempDir::new("planted-record");
    let state = dir.0.join("state");
    let store = FileStore::new(state.join("credentials"));
    let resource = upstream.mcp_url();
    let planted = Record {
        tokens: Some(TokenSet {
            access_token: Secret::new("planted-token"),
            refresh_token: None,
            expires_at: None,
            scopes: Vec::new(),
            dpop: None,
        }),
        ..Record::default()
    };
    store.save(&resource, &planted).expect("plant");
    let path = store.path(&resource);
    if !give_away(&path) {
        return;
    }
    let daemon = Daemon::builder()
        .store(Store::File(state))
        .server("notes", &upstream.mcp_url(), &[])
        .start()
        .await;
    drop(daemon.initialize("/notes").await.bytes().await);
    let sent: Vec<_> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .collect();
    assert!(sent.is_empty(), "the planted token went upstream: {sent:?}");
    let status = daemon.page("application/json").await;
    let shown = path.display().to_string();
    assert!(
        status.contains(&shown) && status.contains(&format!("belongs to user {OTHER}")),
        "the status names the record and why: {status}"
    );
    assert!(path.exists(), "a refused record is left in place");
    daemon.shutdown().await.expect("shutdown");
}

/// Counts the TCP connections made to it: what an attacker would reach on this
/// machine. Each gets a 404.
async fn canary() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(
                socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await,
            );
        }
    });
    (addr, reached)
}

/// A forward proxy standing in for the internet: a CONNECT to a host:port in `sites`
/// gets TLS with the certificate for 203.0.113.7 and 203.0.113.8, relayed as plain
/// bytes to that site's loopback server; any other CONNECT gets a 502.
async fn internet(sites: &[(&str, SocketAddr)]) -> SocketAddr {
    let acceptor = tls_acceptor("public", &[]);
    let sites: Arc<HashMap<String, SocketAddr>> = Arc::new(
        sites
            .iter()
            .map(|(name, addr)| ((*name).to_owned(), *addr))
            .collect(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (acceptor, sites) = (acceptor.clone(), sites.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client, b"\r\n\r\n").await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).into_owned();
                let site = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|target| sites.get(target).copied());
                let Some(site) = site else {
                    drop(
                        client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                            .await,
                    );
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let (Ok(mut tls), Ok(mut server)) = (
                    acceptor.accept(client).await,
                    TcpStream::connect(site).await,
                ) else {
                    return;
                };
                drop(tokio::io::copy_bidirectional(&mut tls, &mut server).await);
            });
        }
    });
    addr
}

/// The child's way to the internet. The proxy is named `localhost`, so that a
/// name the proxy has is seen to pass the filter for public servers' requests.
fn through(command: &mut Command, internet: SocketAddr) {
    let proxy = format!("http://localhost:{}", internet.port());
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls/public-ca.pem");
    command
        .env("HTTPS_PROXY", &proxy)
        .env("https_proxy", &proxy)
        .env("SSL_CERT_FILE", ca);
}

/// The MCP server at [`SERVER`] whose 401 names `resource_metadata`.
async fn public_upstream(resource_metadata: String) -> McpUpstream {
    McpUpstream::start_protected(Protection {
        check: Arc::new(|_| false),
        challenge: Arc::new(move || format!("Bearer resource_metadata=\"{resource_metadata}\"")),
        scope: None,
        dpop: None,
    })
    .await
    .expect("upstream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_servers_401_cannot_send_discovery_to_this_machine() {
    let (canary, reached) = canary().await;
    let port = canary.port();
    for named in [
        format!("http://127.0.0.1:{port}/prm"),
        format!("http://localhost:{port}/prm"),
        format!("https://[::ffff:127.0.0.1]:{port}/prm"),
    ] {
        // A query the message must not repeat.
        let upstream = public_upstream(format!("{named}?key=k-123")).await;
        let internet = internet(&[("203.0.113.7:443", upstream.addr())]).await;
        let dir = TempDir::new("ssrf-prm");
        config_for(&dir.0, SERVER, "");
        let mut command = latchkey(&dir.0, &["login", "notes", "--no-browser"]);
        through(&mut command, internet);
        let ran = run(command, &dir.0, |_| reached.load(Ordering::SeqCst) > 0).await;
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "latchkey connected to {named}: {ran:?}"
        );
        // As URLs are written out: [::ffff:127.0.0.1] is [::ffff:7f00:1].
        let shown = url::Url::parse(&named).expect("a URL").to_string();
        assert!(
            ran.exited
                && ran.stderr.contains(&shown)
                && ran.stderr.contains("127.0.0.0/8 (loopback)")
                && ran.stderr.contains("public address"),
            "names the URL and the rule: {ran:?}"
        );
        assert!(!ran.stderr.contains("k-123"), "{ran:?}");
    }
}

/// A public MCP server ([`SERVER`]) whose public authorization server ([`ISSUER`])
/// names endpoints on this machine: its metadata is served at 203.0.113.8, and its
/// endpoints are those of the loopback server that serves it, which records whatever
/// reaches them.
struct Hostile {
    auth: AuthServer,
    internet: SocketAddr,
    _upstream: McpUpstream,
}

impl Hostile {
    async fn start(options: AuthOptions) -> Self {
        let auth = AuthServer::start(AuthOptions {
            prm_at: PrmAt::HeaderOnly,
            claimed_resource: Some(SERVER.into()),
            claimed_issuer: Some(ISSUER.into()),
            ..options
        })
        .await
        .expect("authorization server");
        auth.name_in_metadata(ISSUER);
        let upstream = public_upstream(format!("{ISSUER}/custom/prm.json")).await;
        let internet = internet(&[
            ("203.0.113.7:443", upstream.addr()),
            ("203.0.113.8:443", auth.addr()),
        ])
        .await;
        Self {
            auth,
            internet,
            _upstream: upstream,
        }
    }

    /// Whether a request reached `path` on this machine.
    fn reached(&self, path: &str) -> bool {
        self.auth.paths().iter().any(|p| p == path)
    }

    /// `latchkey args` with `extra` lines in the server's table, until it ends or
    /// `path` is reached.
    async fn run(&self, name: &str, extra: &str, args: &[&str], path: &str) -> Ran {
        let dir = TempDir::new(name);
        config_for(&dir.0, SERVER, extra);
        self.run_in(&dir.0, args, path).await
    }

    async fn run_in(&self, dir: &Path, args: &[&str], path: &str) -> Ran {
        run(self.command(dir, args), dir, |_| self.reached(path)).await
    }

    fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = latchkey(dir, args);
        through(&mut command, self.internet);
        command
    }

    /// The URL of `path` on the loopback server, as its metadata names it.
    fn endpoint(&self, path: &str) -> String {
        format!("http://{}{path}", self.auth.addr())
    }

    fn assert_refused(&self, ran: &Ran, path: &str) {
        assert!(!self.reached(path), "{path} was reached: {ran:?}");
        let url = self.endpoint(path);
        assert!(
            ran.exited
                && ran.stderr.contains(&url)
                && ran.stderr.contains("127.0.0.0/8 (loopback)")
                && ran.stderr.contains("public address"),
            "names {url} and the rule: {ran:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_authorization_server_cannot_send_registration_to_this_machine() {
    let hostile = Hostile::start(AuthOptions::default()).await;
    let ran = hostile
        .run(
            "ssrf-register",
            "",
            &["login", "notes", "--no-browser"],
            "/register",
        )
        .await;
    hostile.assert_refused(&ran, "/register");
    assert!(
        !ran.stderr.contains("Open this URL"),
        "refused before any browser: {ran:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_authorization_server_cannot_send_a_token_request_to_this_machine() {
    let hostile = Hostile::start(AuthOptions::default()).await;
    let oauth = "[servers.notes.oauth]\ngrant = \"client_credentials\"\nclient_id = \"m2m\"\nclient_secret = \"m2m-secret\"\n";
    let ran = hostile
        .run("ssrf-token", oauth, &["login", "notes"], "/token")
        .await;
    hostile.assert_refused(&ran, "/token");
    assert!(!hostile.auth.saw("m2m-secret"), "the secret went there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_authorization_server_cannot_send_device_authorization_to_this_machine() {
    let hostile = Hostile::start(AuthOptions {
        device: true,
        ..AuthOptions::default()
    })
    .await;
    let oauth = "[servers.notes.oauth]\nclient_id = \"public-client\"\n";
    let ran = hostile
        .run(
            "ssrf-device",
            oauth,
            &["login", "notes", "--no-browser"],
            "/device_authorization",
        )
        .await;
    hostile.assert_refused(&ran, "/device_authorization");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_authorization_server_cannot_send_revocation_to_this_machine() {
    let hostile = Hostile::start(AuthOptions::default()).await;
    let dir = TempDir::new("ssrf-revoke");
    config_for(&dir.0, SERVER, "");
    let store = FileStore::new(dir.0.join("state/credentials"));
    let record = Record {
        issuer: Some(ISSUER.into()),
        tokens: Some(TokenSet {
            access_token: Secret::new("at-to-revoke"),
            refresh_token: Some(Secret::new("rt-to-revoke")),
            expires_at: None,
            scopes: Vec::new(),
            dpop: None,
        }),
        registration: Some(Registration {
            issuer: ISSUER.into(),
            client_id: "c-1".into(),
            auth: ClientAuth::None,
            redirect_uri: "http://127.0.0.1/callback".into(),
            registration_access_token: None,
        }),
        ..Record::default()
    };
    store.save(SERVER, &record).expect("a stored login");
    let ran = hostile
        .run_in(&dir.0, &["logout", "notes"], "/revoke")
        .await;
    hostile.assert_refused(&ran, "/revoke");
    assert!(ran.success, "the logout itself goes ahead: {ran:?}");
    assert!(!store.path(SERVER).exists(), "{ran:?}");
    assert!(!hostile.auth.saw("rt-to-revoke"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_authorization_server_is_not_given_a_client_metadata_url_on_this_machine() {
    let hostile = Hostile::start(AuthOptions {
        cimd: true,
        dcr: false,
        ..AuthOptions::default()
    })
    .await;
    let document = "https://127.0.0.1:9/client.json";
    let dir = TempDir::new("ssrf-cimd");
    let oauth = format!("[servers.notes.oauth]\nclient_metadata_url = {document:?}\n");
    config_for(&dir.0, SERVER, &oauth);
    let command = hostile.command(&dir.0, &["login", "notes"]);
    let ran = run(command, &dir.0, |err| err.contains("Open this URL")).await;
    assert!(
        !ran.stderr.contains("Open this URL"),
        "no authorization URL names it: {ran:?}"
    );
    assert!(
        ran.exited
            && ran.stderr.contains(document)
            && ran.stderr.contains("127.0.0.0/8 (loopback)"),
        "names the URL and the rule: {ran:?}"
    );
}
