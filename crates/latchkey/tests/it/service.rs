//! latchkey as a service, through the built binary: systemd notifications, SIGHUP
//! reloads with streams open across them, socket activation with a passed fd, the
//! journal log format, and `latchkey service install | uninstall` checked with
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use latchkey_testkit::McpUpstream;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::binary::{NotifySocket, Serve, Served, latchkey, serve};
use crate::harness::{Daemon, DaemonBuilder, TempDir, initialize, read_until};

fn server_names(status: &Value) -> Vec<String> {
    status["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

/// A config needs a server: one that is never asked.
pub(crate) fn placeholder() -> DaemonBuilder {
    Daemon::builder().server("placeholder", "http://127.0.0.1:9/mcp", &[])
}

#[tokio::test]
async fn notifies_ready_reloading_and_stopping() {
    let scratch = TempDir::new("service-notify");
    let path = scratch.write_config(&placeholder().toml());
    let daemon = serve(&scratch, &path)
        .notify(NotifySocket::at_path(&scratch))
        .start()
        .await;
    // READY=1 means served: the listener answers at once.
    assert_eq!(server_names(&daemon.status().await), ["placeholder"]);

    daemon.signal("HUP");
    let reloading = daemon.notify.next().await;
    assert!(reloading.contains("RELOADING=1\n"), "{reloading:?}");
    let usec: u128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 carries MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    assert_eq!(
        daemon.notify.ready().await,
        daemon.addr,
        "READY=1 again once reloaded"
    );

    daemon.signal("TERM");
    assert_eq!(daemon.notify.next().await, "STOPPING=1\n");
    daemon.exits_cleanly(&scratch).await;
}

#[tokio::test]
async fn notifies_an_abstract_socket() {
    let scratch = TempDir::new("service-notify-abstract");
    let path = scratch.write_config(&placeholder().toml());
    let daemon = serve(&scratch, &path)
        .notify(NotifySocket::abstract_name())
        .start()
        .await;
    daemon.signal("INT");
    assert_eq!(daemon.notify.next().await, "STOPPING=1\n");
    daemon.exits_cleanly(&scratch).await;
}

#[tokio::test]
async fn sighup_reload_adds_removes_and_changes_servers_with_streams_open() {
    let first = McpUpstream::start().await.expect("upstream");
    let second = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("service-reload");
    let config = |servers: &[(&str, &McpUpstream, &str)]| {
        let builder = servers
            .iter()
            .fold(Daemon::builder(), |builder, (name, upstream, extra)| {
                let lines = ["transport = \"streamable-http\"", *extra];
                builder.server(name, &upstream.mcp_url(), &lines)
            });
        scratch.write_config(&builder.toml())
    };
    let path = config(&[
        ("kept", &first, "headers = { \"X-Which\" = \"kept\" }"),
        ("changed", &first, "headers = { \"X-Which\" = \"before\" }"),
        ("removed", &first, ""),
    ]);
    let daemon = serve(&scratch, &path)
        .notify(NotifySocket::at_path(&scratch))
        .start()
        .await;
    let reloaded = || async {
        daemon.signal("HUP");
        assert!(daemon.notify.next().await.contains("RELOADING=1"));
        daemon.notify.ready().await
    };

    let kept_session = daemon.open_session("/kept").await;
    let (mut kept_stream, mut kept_seen) = daemon.open_stream("/kept", &kept_session).await;
    let changed_session = daemon.open_session("/changed").await;
    let (mut changed_stream, _) = daemon.open_stream("/changed", &changed_session).await;

    // `changed` moves to the second upstream with another header; `added` appears.
    config(&[
        ("kept", &first, "headers = { \"X-Which\" = \"kept\" }"),
        ("changed", &second, "headers = { \"X-Which\" = \"after\" }"),
        ("added", &second, ""),
    ]);
    reloaded().await;

    assert_eq!(
        server_names(&daemon.status().await),
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
    daemon.open_session("/changed").await;
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
    daemon.open_session("/added").await;
    let gone = daemon.post_json("/removed", &initialize()).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // A config with an error is refused, the one in force stays, and the log says so.
    let broken = Daemon::builder()
        .server(
            "kept",
            &first.mcp_url(),
            &["transport = \"streamable-http\""],
        )
        .server("broken", "not a url", &[]);
    scratch.write_config(&broken.toml());
    reloaded().await;
    assert_eq!(
        server_names(&daemon.status().await),
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
    scratch.write_config(&placeholder().listen("127.0.0.1:1").toml());
    assert_eq!(reloaded().await, daemon.addr);
    let log = scratch.log_with(&["that needs a restart"]).await;
    assert!(log.contains("that needs a restart"), "{log}");
    assert_eq!(server_names(&daemon.status().await), ["placeholder"]);

    daemon.signal("TERM");
    assert_eq!(daemon.notify.next().await, "STOPPING=1\n");
    daemon.exits_cleanly(&scratch).await;
}

/// `latchkey serve --config CONFIG` as socket activation starts it, with `socket` as
/// its fd 3. LISTEN_PID must be its own pid, known only once it runs: `sh` sets it to
/// its own and execs latchkey in its place.
fn activated(
    scratch: &TempDir,
    config: &Path,
    socket: std::net::TcpListener,
) -> std::process::Command {
    use command_fds::{CommandFdExt as _, FdMapping};
    let command = latchkey(scratch);
    let mut shell = std::process::Command::new("/bin/sh");
    shell
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(command.get_program())
        .args(["serve", "--config"])
        .arg(config);
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    shell
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path().join("stderr.log")).expect("log"));
    shell
        .fd_mappings(vec![FdMapping {
            parent_fd: socket.into(),
            child_fd: 3,
        }])
        .expect("fd 3");
    shell
}

#[tokio::test]
async fn socket_activation_serves_on_the_passed_socket() {
    let upstream = McpUpstream::start().await.expect("upstream");
    let scratch = TempDir::new("service-activation");
    // The config's own address would be another port: the passed socket wins.
    let config = Daemon::builder().server("notes", &upstream.mcp_url(), &[]);
    let path = scratch.write_config(&config.toml());
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    // The test's copy of the socket goes with the command into the child: only
    // latchkey can answer on it.
    let daemon = Serve::new(activated(&scratch, &path, socket))
        .notify(NotifySocket::at_path(&scratch))
        .start()
        .await;
    assert_eq!(daemon.addr, addr);
    assert_eq!(server_names(&daemon.status().await), ["notes"]);
    daemon.open_session("/notes").await;
    let log = scratch.log_with(&["socket activation"]).await;
    assert!(log.contains("socket activation"), "{log}");
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
}

#[tokio::test]
async fn activation_socket_off_loopback_is_refused() {
    let scratch = TempDir::new("service-activation-public");
    let path = scratch.write_config(&placeholder().toml());
    let socket = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let mut shell = activated(&scratch, &path, socket);
    shell.stderr(Stdio::piped());
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
        let scratch = TempDir::new(if journal {
            "service-journal"
        } else {
            "service-no-journal"
        });
        let path = scratch.write_config(&placeholder().toml());
        let log = std::fs::File::create(scratch.path().join("stderr.log")).expect("log");
        let meta = log.metadata().expect("stat");
        // systemd's `device:inode` of the stream; off by one inode, it is not ours.
        let ino = if journal { meta.ino() } else { meta.ino() + 1 };
        let daemon = serve(&scratch, &path)
            .env("JOURNAL_STREAM", format!("{}:{ino}", meta.dev()))
            .stderr(log)
            .start()
            .await;
        daemon.signal("TERM");
        daemon.exits_cleanly(&scratch).await;
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
    let scratch = TempDir::new("service-install");
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
    let scratch = TempDir::new("service-install-now");
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
    let scratch = TempDir::new("service-verify");
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
    let scratch = TempDir::new("service-nofile");
    let daemon = serve_under_prlimit(&scratch, "512:8192").await;
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id().expect("pid")))
            .expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["8192", "8192"], "{open_files}");
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
}

/// `latchkey serve` on a one-server config, as [`latchkey`] sets it up, run by
/// `prlimit --nofile=LIMITS`; once it is ready.
async fn serve_under_prlimit(scratch: &TempDir, limits: &str) -> Served {
    let path = scratch.write_config(&placeholder().toml());
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
        .arg(&path);
    Serve::new(command).start().await
}

/// The attack: more idle, never-finished connections than the daemon has file
/// descriptors. The oldest are closed, and the user's own client is still served.
#[tokio::test]
async fn idle_connections_past_the_file_limit_do_not_lock_clients_out() {
    let scratch = TempDir::new("service-idle-flood");
    let daemon = serve_under_prlimit(&scratch, "256:256").await;
    let mut idle = Vec::new();
    for _ in 0..400 {
        let stream = tokio::net::TcpStream::connect(daemon.addr)
            .await
            .expect("connect");
        idle.push(stream);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), daemon.status())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer with 400 idle connections open\n{}",
                scratch.log()
            )
        });
    assert_eq!(server_names(&status), ["placeholder"]);
    drop(idle);
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
}
