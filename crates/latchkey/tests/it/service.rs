//! latchkey as a service, through the built binary: systemd notifications, SIGHUP
//! reloads with streams open across them, socket activation with a passed fd, the
//! journal log format, and `latchkey service install | uninstall` checked with
//! `systemd-analyze verify`.

use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram as StdDatagram};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use latchkey_testkit::McpUpstream;
use serde_json::{Value, json};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::harness::{client, initialize, read_until, stream_client};

/// A scratch directory, removed on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("latchkey-it-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn write_config(&self, text: &str) -> PathBuf {
        let path = self.0.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("stderr.log")).unwrap_or_default()
    }

    /// A `$BROWSER` script that plays the person: it approves every authorization
    /// page it is given (tests/interop/conformance/browser.mjs), after `delay_secs`.
    pub(crate) fn approving_browser(&self, delay_secs: u32) -> PathBuf {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/conformance/browser.mjs");
        let browser = self.0.join("browser");
        std::fs::write(
            &browser,
            format!("#!/bin/sh\nsleep {delay_secs}\nexec node {script:?} \"$1\"\n"),
        )
        .expect("browser script");
        std::fs::set_permissions(
            &browser,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        browser
    }

    /// The log once it has every one of `needles` (it is written by a thread of its
    /// own, a few milliseconds behind), or as it is after 5 s.
    pub(crate) async fn log_with(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) || tokio::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with its state in `scratch`, its stderr in `scratch/stderr.log`.
pub(crate) fn latchkey(scratch: &Scratch) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("JOURNAL_STREAM")
        .env("XDG_STATE_HOME", scratch.path().join("state"))
        .env("XDG_RUNTIME_DIR", scratch.path().join("run"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("stderr.log")).expect("log file"));
    command
}

/// A stand-in for systemd's notification socket.
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` is set to.
    pub(crate) env: String,
}

impl NotifySocket {
    pub(crate) fn at_path(scratch: &Scratch) -> Self {
        let path = scratch.path().join("notify.sock");
        let socket = StdDatagram::bind(&path).expect("bind notify socket");
        Self::from_std(socket, path.to_str().expect("utf-8 path").to_owned())
    }

    /// In the abstract namespace, as `@name`.
    fn abstract_name() -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("latchkey-it-notify-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = StdDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        Self::from_std(socket, format!("@{name}"))
    }

    fn from_std(socket: StdDatagram, env: String) -> Self {
        socket.set_nonblocking(true).expect("nonblocking");
        Self {
            socket: UnixDatagram::from_std(socket).expect("tokio socket"),
            env,
        }
    }

    /// The next notification, or a failure after 20 s.
    async fn next(&self) -> String {
        let mut buf = vec![0; 4096];
        let len = tokio::time::timeout(Duration::from_secs(20), self.socket.recv(&mut buf))
            .await
            .expect("a notification within 20 s")
            .expect("recv");
        String::from_utf8(buf[..len].to_vec()).expect("utf-8 notification")
    }

    /// Waits for a notification with `READY=1` and returns the address from its
    /// STATUS line.
    pub(crate) async fn ready(&self) -> std::net::SocketAddr {
        let message = self.next().await;
        assert!(
            message.contains("READY=1\n"),
            "expected READY=1, got {message:?}"
        );
        let status = message
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_else(|| panic!("READY=1 comes with a STATUS: {message:?}"));
        status
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("STATUS names the address: {status:?}"))
    }
}

pub(crate) fn spawn(command: std::process::Command) -> Child {
    let mut command = Command::from(command);
    command.kill_on_drop(true);
    command.spawn().expect("spawn latchkey")
}

pub(crate) fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

pub(crate) async fn exits_cleanly(mut child: Child, scratch: &Scratch) {
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("latchkey exits within 15 s")
        .expect("wait");
    assert!(status.success(), "{status}; log:\n{}", scratch.log());
}

pub(crate) async fn status_json(addr: std::net::SocketAddr) -> Value {
    client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("GET /")
        .json()
        .await
        .expect("status JSON")
}

fn server_names(status: &Value) -> Vec<String> {
    status["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Opens an MCP session through latchkey and returns its id.
async fn open_session(addr: std::net::SocketAddr, server: &str) -> String {
    let response = client()
        .post(format!("http://{addr}/{server}"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .expect("initialize");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "initialize via /{server}"
    );
    response.headers()["mcp-session-id"]
        .to_str()
        .expect("session id")
        .to_owned()
}

async fn open_stream(
    addr: std::net::SocketAddr,
    server: &str,
    session: &str,
) -> (reqwest::Response, String) {
    let mut stream = stream_client()
        .get(format!("http://{addr}/{server}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "stream open").await;
    (stream, seen)
}

/// A config with `servers`, or one placeholder server (a config needs one).
pub(crate) fn config(servers: &str) -> String {
    let servers = if servers.is_empty() {
        "[servers.placeholder]\nurl = \"http://127.0.0.1:9/mcp\"\n"
    } else {
        servers
    };
    format!("listen = \"127.0.0.1:0\"\nstore = \"memory\"\nshutdown_timeout_secs = 5\n{servers}")
}

#[tokio::test]
async fn notifies_ready_reloading_and_stopping() {
    let scratch = Scratch::new("notify");
    let notify = NotifySocket::at_path(&scratch);
    let path = scratch.write_config(&config(""));
    let mut command = latchkey(&scratch);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.env);
    let child = spawn(command);

    let addr = notify.ready().await;
    // READY=1 means served: the listener answers at once.
    assert_eq!(server_names(&status_json(addr).await), ["placeholder"]);

    signal(&child, "HUP");
    let reloading = notify.next().await;
    assert!(reloading.contains("RELOADING=1\n"), "{reloading:?}");
    let usec: u128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    assert_eq!(notify.ready().await, addr, "READY=1 again once reloaded");

    signal(&child, "TERM");
    assert_eq!(notify.next().await, "STOPPING=1\n");
    exits_cleanly(child, &scratch).await;
}

#[tokio::test]
async fn notifies_an_abstract_socket() {
    let scratch = Scratch::new("notify-abstract");
    let notify = NotifySocket::abstract_name();
    let path = scratch.write_config(&config(""));
    let mut command = latchkey(&scratch);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.env);
    let child = spawn(command);
    notify.ready().await;
    signal(&child, "INT");
    assert_eq!(notify.next().await, "STOPPING=1\n");
    exits_cleanly(child, &scratch).await;
}

#[tokio::test]
async fn sighup_reload_adds_removes_and_changes_servers_with_streams_open() {
    let first = McpUpstream::start().await.expect("upstream");
    let second = McpUpstream::start().await.expect("upstream");
    let scratch = Scratch::new("reload");
    let notify = NotifySocket::at_path(&scratch);
    let table = |name: &str, upstream: &McpUpstream, extra: &str| {
        format!(
            "[servers.{name}]\nurl = {:?}\ntransport = \"streamable-http\"\n{extra}\n",
            upstream.mcp_url()
        )
    };
    let path = scratch.write_config(&config(&format!(
        "{}{}{}",
        table("kept", &first, "headers = { \"X-Which\" = \"kept\" }"),
        table("changed", &first, "headers = { \"X-Which\" = \"before\" }"),
        table("removed", &first, ""),
    )));
    let mut command = latchkey(&scratch);
    command
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.env);
    let child = spawn(command);
    let addr = notify.ready().await;

    let kept_session = open_session(addr, "kept").await;
    let (mut kept_stream, mut kept_seen) = open_stream(addr, "kept", &kept_session).await;
    let changed_session = open_session(addr, "changed").await;
    let (mut changed_stream, _) = open_stream(addr, "changed", &changed_session).await;

    // `changed` moves to the second upstream with another header; `added` appears.
    scratch.write_config(&config(&format!(
        "{}{}{}",
        table("kept", &first, "headers = { \"X-Which\" = \"kept\" }"),
        table("changed", &second, "headers = { \"X-Which\" = \"after\" }"),
        table("added", &second, ""),
    )));
    signal(&child, "HUP");
    assert!(notify.next().await.contains("RELOADING=1"));
    notify.ready().await;

    assert_eq!(
        server_names(&status_json(addr).await),
        ["kept", "changed", "added"]
    );
    // The stream to the untouched server still flows.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    assert!(
        first.notify(&kept_session, note.clone()),
        "kept stream open upstream"
    );
    read_until(&mut kept_stream, &mut kept_seen, "list_changed").await;
    // The changed server's stream ends, so its client reconnects to the new upstream.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(_chunk) = changed_stream.chunk().await.expect("chunk") {}
    })
    .await;
    assert!(ended.is_ok(), "the changed server's stream ended");
    open_session(addr, "changed").await;
    let to_second: Vec<_> = second
        .requests()
        .into_iter()
        .filter(|r| r.headers.get("x-which").is_some_and(|v| v == "after"))
        .collect();
    assert_eq!(
        to_second.len(),
        1,
        "changed now goes to the second upstream"
    );
    open_session(addr, "added").await;
    let gone = client()
        .post(format!("http://{addr}/removed"))
        .json(&initialize())
        .send()
        .await
        .expect("POST");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // A config with an error is refused, the one in force stays, and the log says so.
    scratch.write_config(&config(&format!(
        "{}[servers.broken]\nurl = \"not a url\"\n",
        table("kept", &first, "")
    )));
    signal(&child, "HUP");
    assert!(notify.next().await.contains("RELOADING=1"));
    notify.ready().await;
    assert_eq!(
        server_names(&status_json(addr).await),
        ["kept", "changed", "added"]
    );
    let failed = [
        "config reload failed; the previous config stays in force",
        "server \"broken\": url is not a URL",
    ];
    let log = scratch.log_with(&failed).await;
    assert!(failed.iter().all(|f| log.contains(f)), "{log}");
    assert!(first.notify(
        &kept_session,
        json!({"jsonrpc": "2.0", "method": "notifications/again"})
    ));
    read_until(&mut kept_stream, &mut kept_seen, "notifications/again").await;

    // `listen` cannot move without a restart: the log says so, and nothing moves.
    scratch.write_config(&config("").replace("127.0.0.1:0", "127.0.0.1:1"));
    signal(&child, "HUP");
    assert!(notify.next().await.contains("RELOADING=1"));
    assert_eq!(notify.ready().await, addr);
    let log = scratch.log_with(&["that needs a restart"]).await;
    assert!(log.contains("that needs a restart"), "{log}");
    assert_eq!(server_names(&status_json(addr).await), ["placeholder"]);

    signal(&child, "TERM");
    assert_eq!(notify.next().await, "STOPPING=1\n");
    exits_cleanly(child, &scratch).await;
}

#[tokio::test]
async fn socket_activation_serves_on_the_passed_socket() {
    use command_fds::{CommandFdExt as _, FdMapping};

    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = Scratch::new("activation");
    let notify = NotifySocket::at_path(&scratch);
    // The config's own address would be another port: the passed socket wins.
    let path = scratch.write_config(&config(&format!(
        "[servers.notes]\nurl = {:?}\n",
        upstream.mcp_url()
    )));
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    // LISTEN_PID must be the child's own pid, known only once it runs: `sh` sets it
    // to its own and execs latchkey in its place.
    let command = latchkey(&scratch);
    let mut shell = std::process::Command::new("/bin/sh");
    shell
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(command.get_program())
        .args(["serve", "--config"])
        .arg(&path);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    shell
        .env("LISTEN_FDS", "1")
        .env("NOTIFY_SOCKET", &notify.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("stderr.log")).expect("log"));
    shell
        .fd_mappings(vec![FdMapping {
            parent_fd: socket.into(),
            child_fd: 3,
        }])
        .expect("fd 3");
    drop(command);
    let child = spawn(shell);
    // The test's copy of the socket went with `shell` into the child: only latchkey
    // can answer on it now.
    assert_eq!(notify.ready().await, addr);
    assert_eq!(server_names(&status_json(addr).await), ["notes"]);
    open_session(addr, "notes").await;
    let log = scratch.log_with(&["socket activation"]).await;
    assert!(log.contains("socket activation"), "{log}");
    signal(&child, "TERM");
    exits_cleanly(child, &scratch).await;
}

#[tokio::test]
async fn activation_socket_off_loopback_is_refused() {
    use command_fds::{CommandFdExt as _, FdMapping};

    let scratch = Scratch::new("activation-public");
    let path = scratch.write_config(&config(""));
    let socket = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let command = latchkey(&scratch);
    let mut shell = std::process::Command::new("/bin/sh");
    shell
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(command.get_program())
        .args(["serve", "--config"])
        .arg(&path)
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            shell.env(key, value);
        }
    }
    shell
        .fd_mappings(vec![FdMapping {
            parent_fd: socket.into(),
            child_fd: 3,
        }])
        .expect("fd 3");
    drop(command);
    let out = Command::from(shell).output().await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("ListenStream="),
        "{stderr}"
    );
}

#[tokio::test]
async fn journal_stream_drops_the_timestamp() {
    use std::os::unix::fs::MetadataExt as _;

    for journal in [true, false] {
        let scratch = Scratch::new(if journal { "journal" } else { "no-journal" });
        let notify = NotifySocket::at_path(&scratch);
        let path = scratch.write_config(&config(""));
        let log = std::fs::File::create(scratch.path().join("stderr.log")).expect("log");
        let meta = log.metadata().expect("stat");
        // systemd's `device:inode` of the stream; off by one inode, it is not ours.
        let ino = if journal { meta.ino() } else { meta.ino() + 1 };
        let mut command = latchkey(&scratch);
        command
            .args(["serve", "--config"])
            .arg(&path)
            .env("NOTIFY_SOCKET", &notify.env)
            .env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()))
            .stderr(log);
        let child = spawn(command);
        notify.ready().await;
        signal(&child, "TERM");
        exits_cleanly(child, &scratch).await;
        let text = scratch.log();
        let line = text
            .lines()
            .find(|l| l.contains("latchkey listening"))
            .unwrap_or_else(|| panic!("a listening line in {text}"));
        // A timestamp starts with the year: `2026-...T...Z  INFO ...`.
        let stamped = line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('T') && w.starts_with("20"));
        assert_eq!(stamped, !journal, "journal={journal}: {line}");
        if journal {
            assert!(line.trim_start().starts_with("INFO"), "{line}");
        }
    }
}

#[test]
fn service_install_and_uninstall_in_xdg_config_home() {
    let scratch = Scratch::new("install");
    let config_home = scratch.path().join("config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(args)
            .env("XDG_CONFIG_HOME", &config_home)
            .env("XDG_STATE_HOME", scratch.path().join("state"))
            .env("HOME", scratch.path().join("home"))
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let units = config_home.join("systemd/user");
    let printed = run(&["service", "install", "--socket"]);
    assert!(
        printed.contains("systemctl --user daemon-reload")
            && printed.contains("systemctl --user enable --now latchkey.socket"),
        "{printed}"
    );
    let service = std::fs::read_to_string(units.join("latchkey.service")).expect("service unit");
    assert!(
        service.contains(&format!(
            "ExecStart=\"{}\" serve",
            env!("CARGO_BIN_EXE_latchkey")
        )),
        "{service}"
    );
    let state = scratch.path().join("state/latchkey");
    assert!(
        state.is_dir(),
        "the state dir exists before the sandbox needs it"
    );
    assert!(service.contains(&format!(
        "ReadWritePaths=\"{}\" %t/latchkey",
        state.display()
    )));
    assert!(
        service.contains("Type=notify") && service.contains("ExecReload=/bin/kill -HUP $MAINPID")
    );
    assert!(units.join("latchkey.socket").is_file());

    verify_units(
        scratch.path(),
        &[
            units.join("latchkey.service"),
            units.join("latchkey.socket"),
        ],
    );

    let printed = run(&["service", "uninstall"]);
    assert!(
        printed.contains("systemctl --user disable --now latchkey.socket latchkey.service"),
        "{printed}"
    );
    assert!(!units.join("latchkey.service").exists() && !units.join("latchkey.socket").exists());
    let printed = run(&["service", "uninstall"]);
    assert!(printed.contains("nothing to remove"), "{printed}");
}

#[test]
fn service_install_now_reports_a_failed_systemctl() {
    let scratch = Scratch::new("install-now");
    let config_home = scratch.path().join("config");
    // No systemd user manager runs in the tests; `--now` must say so and leave the
    // unit written.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["service", "install", "--now"])
        .env("XDG_CONFIG_HOME", &config_home)
        .env("XDG_STATE_HOME", scratch.path().join("state"))
        .env("XDG_RUNTIME_DIR", scratch.path().join("no-run"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`systemctl --user daemon-reload` failed")
            && stderr.contains("systemctl --user status"),
        "{stderr}"
    );
    assert!(config_home.join("systemd/user/latchkey.service").is_file());
}

/// The repository's units as shipped, and as `service install` writes them.
#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let scratch = Scratch::new("verify");
    let home = scratch.path().join("home");
    std::fs::create_dir_all(home.join(".cargo/bin")).expect("home");
    // The shipped ExecStart is %h/.cargo/bin/latchkey: give it one to find.
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_latchkey"),
        home.join(".cargo/bin/latchkey"),
    )
    .expect("symlink");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    verify_units(
        scratch.path(),
        &[
            repo.join("systemd/latchkey.service"),
            repo.join("systemd/latchkey.socket"),
        ],
    );
}

/// `systemd-analyze --user verify` in a scratch home and runtime dir: it must pass
/// and print nothing (it reports unknown keys and bad values but still exits 0).
fn verify_units(scratch: &Path, units: &[PathBuf]) {
    use std::os::unix::fs::PermissionsExt as _;
    let run_dir = scratch.join("verify-run");
    std::fs::create_dir_all(&run_dir).expect("runtime dir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = std::process::Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .args(units)
        .env("HOME", scratch.join("home"))
        .env("XDG_RUNTIME_DIR", &run_dir)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test installs it)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.trim().is_empty(),
        "{printed}"
    );
}

/// The config baked into the container image is valid as shipped.
#[test]
fn container_config_checks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/container.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Started with the usual low soft limit, the daemon raises it to the hard one: every
/// open stream and idle client connection is a file descriptor.
#[tokio::test]
async fn serve_raises_its_open_file_limit_to_the_hard_one() {
    let scratch = Scratch::new("nofile");
    let (child, _addr, _notify) = serve_under_prlimit(&scratch, "512:8192").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().expect("pid")))
        .expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["8192", "8192"], "{open_files}");
    signal(&child, "TERM");
    exits_cleanly(child, &scratch).await;
}

/// `latchkey serve` on a one-server config, as [`latchkey`] sets it up, run by
/// `prlimit --nofile=LIMITS`; once it is ready.
async fn serve_under_prlimit(
    scratch: &Scratch,
    limits: &str,
) -> (Child, std::net::SocketAddr, NotifySocket) {
    let notify = NotifySocket::at_path(scratch);
    let path = scratch.write_config(&config(""));
    let base = latchkey(scratch);
    let mut command = std::process::Command::new("prlimit");
    command
        .arg(format!("--nofile={limits}"))
        .arg(base.get_program())
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("stderr.log")).expect("log file"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.env);
    let child = spawn(command);
    let addr = notify.ready().await;
    (child, addr, notify)
}

/// The attack: more idle, never-finished connections than the daemon has file
/// descriptors. The oldest are closed, and the user's own client is still served.
#[tokio::test]
async fn idle_connections_past_the_file_limit_do_not_lock_clients_out() {
    let scratch = Scratch::new("idle-flood");
    let (child, addr, _notify) = serve_under_prlimit(&scratch, "256:256").await;
    let mut idle = Vec::new();
    for _ in 0..400 {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.push(stream);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), status_json(addr))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer with 400 idle connections open\n{}",
                scratch.log()
            )
        });
    assert_eq!(server_names(&status), ["placeholder"]);
    drop(idle);
    signal(&child, "TERM");
    exits_cleanly(child, &scratch).await;
}
