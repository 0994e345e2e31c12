//! Issue 13, "only the user's own clients can use the credentials": the directories
//! latchkey keeps credentials and locks in (point 8).
//!
//! Another user is played by user 65534 (`nobody`): the tests run as root, which may
//! give a planted file to anyone (`chown`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use latchkey_auth::Secret;
use latchkey_auth::store::{FileStore, Record, Store as _};
use latchkey_auth::token::TokenSet;
use latchkey_testkit::{AuthOptions, McpUpstream};
use tokio::process::Command;

use crate::harness::{Daemon, TempDir, client, initialize};

/// The user that plants files: `nobody`.
const OTHER: u32 = 65534;

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

/// The binary with `<dir>/config.toml`, in an environment of the test's own: no
/// proxy, a home and temp dir in `dir`, no browser.
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
            println!(
                "skipped: cannot give {} to user {OTHER} ({e}); this test needs root",
                path.display()
            );
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
    let setup = crate::oauth::protected(AuthOptions::default()).await;
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
            setup.upstream.mcp_url()
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
        }),
        ..Record::default()
    };
    store.save(&resource, &planted).expect("plant");
    let path = store.path(&resource);
    if !give_away(&path) {
        return;
    }
    let daemon = Daemon::builder()
        .top("store = \"file\"")
        .top(&format!("state_dir = {state:?}"))
        .server("notes", &upstream.mcp_url(), &[])
        .start()
        .await;
    let response = client()
        .post(daemon.url("/notes"))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize())
        .send()
        .await
        .expect("request");
    drop(response.bytes().await);
    let sent: Vec<_> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .collect();
    assert!(sent.is_empty(), "the planted token went upstream: {sent:?}");
    let status = client()
        .get(daemon.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("status body");
    let shown = path.display().to_string();
    assert!(
        status.contains(&shown) && status.contains(&format!("belongs to user {OTHER}")),
        "the status names the record and why: {status}"
    );
    assert!(path.exists(), "a refused record is left in place");
    daemon.shutdown().await.expect("shutdown");
}
