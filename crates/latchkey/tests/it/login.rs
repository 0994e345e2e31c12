//! `latchkey login` through the real binary, as a person at a terminal without a
//! browser: the pasted redirect, and the device flow (RFC 8628). The tokens it stores
//! are then used by a daemon with no second login.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::binary::{Serve, Served};
use crate::harness::{
    Daemon, DaemonBuilder, Local, Protected, ScriptedBrowser, Store, TempDir, assert_ok, client,
    interop, interop_dir, no_redirect_client, protected,
};

/// A scratch home: a config with a file store and server `notes`, and the state and
/// lock directories.
struct Home(TempDir);

impl Home {
    fn new(name: &str, server_url: &str) -> Self {
        let home = Self(TempDir::new(&format!("login-{name}")));
        home.0.write_config(&format!(
            "store = \"file\"\nstate_dir = {:?}\n[servers.notes]\nurl = {server_url:?}\n",
            home.state()
        ));
        home
    }

    fn state(&self) -> PathBuf {
        self.0.path().join("state")
    }

    /// The config's store, for a daemon here.
    fn store(&self) -> Store {
        Store::File(self.state())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        command
            .args(args)
            .arg("--config")
            .arg(self.0.path().join("config.toml"))
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("RUST_LOG")
            .env("BROWSER", "/bin/false")
            .kill_on_drop(true);
        command
    }

    fn records(&self) -> Vec<PathBuf> {
        let dir = self.state().join("credentials");
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// Logs in once, through a daemon on this store whose browser approves.
    async fn log_in(&self, setup: &Protected) {
        let daemon = logged_in(setup.daemon(&[]).store(self.store())).await;
        daemon.shutdown().await.expect("shutdown");
    }

    /// `latchkey status --json`.
    async fn status(&self) -> serde_json::Value {
        let status = self
            .command(&["status", "--json"])
            .output()
            .await
            .expect("status");
        serde_json::from_slice(&status.stdout).expect("json")
    }

    /// `latchkey serve` on this home's config, on port 0.
    fn serve(&self) -> Serve {
        Serve::new(self.command(&["serve", "--listen", "127.0.0.1:0"])).stderr(Stdio::null())
    }
}

fn login(home: &Home) -> Child {
    home.command(&["login", "notes", "--no-browser"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn latchkey login")
}

/// Reads stderr lines until `done` says stop; returns every line read.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let stop = done(&line);
            seen.push(line);
            if stop {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("login printed no prompt: {seen:?}"));
    seen
}

async fn finish(child: Child) -> (String, String) {
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("login finished")
        .expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// A daemon on the same store answers the first request with the stored token.
async fn daemon_uses_the_stored_token(home: &Home, setup: &Protected) {
    let daemon = setup.daemon(&[]).store(home.store()).start().await;
    assert_eq!(daemon.initialize("/notes").await.status(), 200);
    daemon.shutdown().await.expect("shutdown");
}

/// Starts `daemon` with a browser that approves, and logs in through it.
async fn logged_in(daemon: DaemonBuilder) -> Daemon {
    let daemon = daemon.browser(ScriptedBrowser::approving()).start().await;
    assert_eq!(daemon.initialize("/notes").await.status(), 200);
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_login_takes_the_pasted_redirect_and_a_daemon_uses_the_token() {
    let setup = protected().start().await;
    let home = Home::new("paste", &setup.mcp_url());
    // A daemon already running, which cannot log in itself (its browser fails).
    let running = setup.daemon(&[]).store(home.store()).start().await;
    let mut child = login(&home);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let seen = read_until(&mut lines, |l| l.contains("paste that page's address")).await;
    let url = seen
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("http")
                .map(|rest| format!("http{rest}"))
        })
        .expect("the authorization URL is printed");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    // The person's browser, on another machine: it gets the redirect but cannot load it.
    let redirect = no_redirect_client()
        .get(&url)
        .send()
        .await
        .expect("authorize");
    let location = redirect.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("not a url\n{location}\n").as_bytes())
        .await
        .expect("paste");
    drop(stdin);
    let stderr_rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    let (stdout, _) = finish(child).await;
    let rest = stderr_rest.await.expect("stderr").join("\n");
    assert!(rest.contains("That is not a URL"), "{rest}");
    assert!(
        stdout.contains("notes: logged in (scopes: mcp:read"),
        "{stdout}"
    );
    assert!(stdout.contains("stored in file"), "{stdout}");
    let records = home.records();
    assert_eq!(records.len(), 1, "{records:?}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&records[0]), 0o600);
        assert_eq!(mode(records[0].parent().expect("dir")), 0o700);
    }
    // The running daemon finds the new tokens on its first 401.
    assert_ok(running.initialize("/notes").await).await;
    running.shutdown().await.expect("shutdown");
    daemon_uses_the_stored_token(&home, &setup).await;
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code"],
        "one login, reused by the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_login_uses_the_device_flow_when_offered() {
    let setup = protected().device_flow().start().await;
    let home = Home::new("device", &setup.mcp_url());
    let mut child = login(&home);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let seen = read_until(&mut lines, |l| l.contains("which has the code filled in")).await;
    let text = seen.join("\n");
    assert!(text.contains("enter the code"), "{text}");
    let complete = seen
        .iter()
        .find_map(|l| {
            let start = l.find("http")?;
            let url = l[start..].split_whitespace().next()?;
            url.contains("user_code=")
                .then(|| url.trim_end_matches(',').to_owned())
        })
        .expect("verification_uri_complete is printed");
    // The person approves on their phone; latchkey is polling meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let approved = client().get(&complete).send().await.expect("approve");
    assert_eq!(approved.status(), 200);
    drop(tokio::spawn(async move {
        while let Ok(Some(_)) = lines.next_line().await {}
    }));
    let (stdout, _) = finish(child).await;
    assert!(stdout.contains("notes: logged in"), "{stdout}");
    let grants = setup.auth.token_requests();
    assert!(
        grants
            .iter()
            .all(|g| g == "urn:ietf:params:oauth:grant-type:device_code"),
        "{grants:?}"
    );
    assert!(grants.len() >= 2, "it polled while pending: {grants:?}");
    let client = &setup.auth.clients()[0];
    assert!(
        client.request["grant_types"].as_array().is_some_and(|g| g
            .iter()
            .any(|g| g == "urn:ietf:params:oauth:grant-type:device_code")),
        "registered for the device grant: {}",
        client.request
    );
    daemon_uses_the_stored_token(&home, &setup).await;
    assert_eq!(
        setup.auth.token_requests().len(),
        grants.len(),
        "the daemon needed no grant"
    );
}

#[tokio::test]
async fn login_names_unknown_servers_and_disabled_oauth() {
    let home = Home::new("errors", "https://a.example.com/mcp");
    let output = home
        .command(&["login", "nope"])
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no server \"nope\" in the config; configured: notes"),
        "{stderr}"
    );
    home.0
        .write_config("[servers.notes]\nurl = \"https://a.example.com/mcp\"\noauth = false\n");
    let output = home
        .command(&["login", "notes"])
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has oauth = false"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_refreshes_stored_tokens_without_a_browser() {
    let setup = protected().token_lifetime(1).start().await;
    let home = Home::new("restart", &setup.mcp_url());
    home.log_in(&setup).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The default harness browser fails any login: only a refresh can succeed.
    daemon_uses_the_stored_token(&home, &setup).await;
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code", "refresh_token"],
        "the stored refresh token, found through the remembered metadata URL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_and_deletes_and_status_shows_it() {
    let setup = protected().start().await;
    let home = Home::new("logout", &setup.mcp_url());
    home.log_in(&setup).await;
    let json = home.status().await;
    let row = &json["servers"][0];
    assert_eq!(row["state"], "ready", "{json}");
    assert_eq!(
        row["scopes"],
        serde_json::json!(["mcp:read", "offline_access"])
    );
    assert!(
        row["store"].as_str().is_some_and(|s| s.starts_with("file")),
        "{json}"
    );
    let table = home.command(&["status"]).output().await.expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("SERVER  STATE"), "{table}");
    for token in setup.auth.issued_tokens() {
        assert!(!table.contains(&token) && !json.to_string().contains(&token));
    }

    assert_eq!(home.records().len(), 1);
    let output = home
        .command(&["logout", "notes"])
        .output()
        .await
        .expect("logout");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(home.records().is_empty(), "the record is deleted");
    let revoked = setup.auth.revoked();
    assert_eq!(revoked.len(), 2, "refresh and access token: {revoked:?}");
    assert!(
        revoked[0].starts_with("rt-") && revoked[1].starts_with("at-"),
        "{revoked:?}"
    );
    let json = home.status().await;
    assert_eq!(json["servers"][0]["state"], "needs_auth", "{json}");
}

/// The state a running daemon shows for `notes` on its status page.
async fn shown_state(daemon: &Local) -> String {
    daemon.status().await["servers"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `latchkey logout` with a daemon and a `latchkey stdio` running on the same store:
/// both drop the tokens from memory within about a second (the status page says
/// `needs_auth` before any request), neither refreshes nor writes a record after the
/// logout, and the next request needs a new login (which this browser cannot give).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_reaches_a_running_daemon_and_a_running_bridge() {
    let setup = protected().start().await;
    let home = Home::new("logout-everywhere", &setup.mcp_url());
    // No browser can open here: waiting requests get their answer after 2 s.
    let config = home.0.path().join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text + "[servers.notes.oauth]\nauth_timeout_secs = 2\n",
    )
    .expect("config");
    home.log_in(&setup).await;
    let daemon = home.serve().start().await;
    let mut bridge = crate::stdio::Bridge::start(home.command(&["stdio", "notes"]));
    assert!(bridge.initialize().await.get("result").is_some());
    assert_eq!(shown_state(&daemon).await, "ready");
    let grants = setup.auth.token_requests();

    let output = home
        .command(&["logout", "notes"])
        .output()
        .await
        .expect("logout");
    assert!(output.status.success(), "{output:?}");
    assert!(home.records().is_empty());
    crate::harness::eventually_async("the daemon shows needs_auth", || async {
        shown_state(&daemon).await == "needs_auth"
    })
    .await;
    // Give the bridge its tick too, then use both.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = daemon.initialize("/notes").await;
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 503, "a new login is needed: {body}");
    assert!(body.contains("latchkey login notes"), "{body}");
    let answer = bridge.call(2, "tools/list", serde_json::json!({})).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("latchkey login notes")),
        "{answer}"
    );
    assert_eq!(
        setup.auth.token_requests(),
        grants,
        "no refresh with the revoked tokens"
    );
    assert!(
        home.records().is_empty(),
        "nothing written back after the logout: {:?}",
        home.records()
    );
    daemon.kill().await;
    drop(bridge);
}

/// 50 concurrent `initialize` requests to each daemon; their HTTP statuses (0 for
/// no answer).
async fn initialize_burst(daemons: &[Served]) -> Vec<u16> {
    let http = client();
    let requests = daemons.iter().flat_map(|daemon| {
        let http = http.clone();
        (0..50).map(move |i| {
            let (http, url) = (http.clone(), daemon.url("/notes"));
            async move {
                let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "fleet", "version": "1"}}});
                http.post(url)
                    .header("accept", "application/json, text/event-stream")
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
    });
    futures_util::future::join_all(requests).await
}

/// The cross-process rule's verdict: one login, then exactly one refresh for all four
/// processes. Stops `daemons`.
async fn one_refresh_for_all(setup: &Protected, daemons: Vec<Served>) {
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code", "refresh_token"],
        "one login, then exactly one refresh for all four processes"
    );
    for daemon in daemons {
        daemon.kill().await;
    }
}

/// The cross-process rule: an expired token hit by 200 concurrent requests spread
/// over 4 daemons sharing one store costs exactly one refresh grant, even though the
/// server rotates refresh tokens (a second refresh with the old one would fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_over_four_processes_cost_one_refresh() {
    let setup = protected()
        .token_lifetime(2)
        .rotating_refresh_tokens()
        .start()
        .await;
    let home = Home::new("fleet", &setup.mcp_url());
    home.log_in(&setup).await;
    let mut daemons = Vec::new();
    for _ in 0..4 {
        daemons.push(home.serve().start().await);
    }
    // Past the expiry margin (half of a 2 s lifetime) and the expiry itself.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let statuses = initialize_burst(&daemons).await;
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    one_refresh_for_all(&setup, daemons).await;
}

/// `/run/user/$UID` with its `bus` socket, as a desktop login (pam_systemd) lays them
/// out, for the test's own D-Bus session (`dbus-run-session`, with gnome-keyring).
/// Whatever it created is removed on drop.
struct DesktopLogin {
    run: PathBuf,
    created: Vec<PathBuf>,
}

impl DesktopLogin {
    fn lay_out() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let uid = String::from_utf8(
            std::process::Command::new("id")
                .arg("-u")
                .output()
                .expect("id -u")
                .stdout,
        )
        .expect("uid");
        let run = PathBuf::from(format!("/run/user/{}", uid.trim()));
        let address = std::env::var("DBUS_SESSION_BUS_ADDRESS")
            .expect("a D-Bus session: run the tests through scripts/test");
        let socket = address
            .strip_prefix("unix:path=")
            .and_then(|rest| rest.split(',').next())
            .expect("a unix:path= session bus (dbus-run-session's)");
        let mut created = Vec::new();
        if !run.exists() {
            std::fs::create_dir_all(&run).unwrap_or_else(|e| {
                panic!(
                    "cannot create {} ({e}); the test runs as root in CI",
                    run.display()
                )
            });
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            created.push(run.clone());
        }
        let bus = run.join("bus");
        if !bus.exists() {
            std::os::unix::fs::symlink(socket, &bus).expect("bus link");
            created.insert(0, bus);
        }
        Self { run, created }
    }
}

impl Drop for DesktopLogin {
    fn drop(&mut self) {
        for path in &self.created {
            drop(std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path)));
        }
    }
}

/// Codex starts its stdio servers with only HOME, PATH, LANG, SHELL and TERM: no
/// `XDG_RUNTIME_DIR`, no `DBUS_SESSION_BUS_ADDRESS`. Such a bridge must still find the
/// daemons' keyring and locks: 150 requests over three `latchkey serve` and 50 over
/// that bridge, on an expired token with rotating refresh tokens, cost exactly one
/// refresh grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_a_bare_environment_shares_the_keyring_and_the_locks() {
    let desktop = DesktopLogin::lay_out();
    let setup = protected()
        // Long enough for four binaries to start on a loaded CI machine before the
        // refresh margin (half the lifetime) is reached.
        .token_lifetime(8)
        .rotating_refresh_tokens()
        .start()
        .await;
    let home = Home::new("bare-env", &setup.mcp_url());
    home.0.write_config(&format!(
        "store = \"keyring\"\n[servers.notes]\nurl = {:?}\n",
        setup.mcp_url()
    ));
    let login = logged_in(setup.daemon(&[]).store(Store::Keyring)).await;
    login.shutdown().await.expect("shutdown");

    // The daemons have what a desktop session gives them.
    let mut daemons = Vec::new();
    for _ in 0..3 {
        let daemon = home
            .serve()
            .env("HOME", home.0.path())
            .env("XDG_RUNTIME_DIR", &desktop.run)
            .env_remove("XDG_STATE_HOME")
            .start()
            .await;
        daemons.push(daemon);
    }
    let mut bare = home.command(&["stdio", "notes"]);
    bare.env_clear();
    for key in ["PATH", "LANG", "SHELL", "TERM"] {
        if let Some(value) = std::env::var_os(key) {
            bare.env(key, value);
        }
    }
    bare.env("HOME", home.0.path());
    let mut bridge = crate::stdio::Bridge::start(bare);
    assert!(bridge.initialize().await.get("result").is_some());
    assert_eq!(setup.auth.token_requests(), ["authorization_code"]);

    // Past the expiry margin (half of an 8 s lifetime) and the expiry itself.
    tokio::time::sleep(Duration::from_millis(8100)).await;
    let bridged = async {
        let mut answers = Vec::new();
        for id in 0..50 {
            answers.push(
                bridge
                    .call(100 + id, "tools/list", serde_json::json!({}))
                    .await,
            );
        }
        answers
    };
    let (statuses, answers) = tokio::join!(initialize_burst(&daemons), bridged);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        answers.iter().all(|a| a.get("result").is_some()),
        "{answers:?}"
    );
    one_refresh_for_all(&setup, daemons).await;
}

/// The official SDK client through the daemon binary, with `$BROWSER` a script
/// that approves at once; returns the text of the `echo` call.
async fn sdk_call(daemon: &Local) -> String {
    let interop = interop_dir();
    let mut command = Command::new("node");
    command
        .arg(interop.join("sdk-call.mjs"))
        .arg(daemon.url("/notes"))
        .arg("echo")
        .arg(r#"{"text":"through latchkey"}"#)
        .current_dir(&interop);
    let summary = crate::harness::client_summary(command, Duration::from_secs(40)).await;
    summary["text"].as_str().unwrap_or_default().to_owned()
}

/// Issue 4's end-to-end promise with an official SDK client: an expired token is
/// refreshed with no browser visit, a revoked grant costs exactly one new browser
/// authorization, and a restarted daemon reuses the stored tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_sees_refresh_revocation_and_restart_handled() {
    let setup = protected().token_lifetime(2).start().await;
    let home = Home::new("sdk", &setup.mcp_url());
    let browser = format!("node {}", interop("conformance/browser.mjs").display());
    let start = || home.serve().env("BROWSER", &browser).start();
    let daemon = start().await;
    assert!(sdk_call(&daemon).await.contains("through latchkey"));
    assert_eq!(setup.logins(), 1, "the first login");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(sdk_call(&daemon).await.contains("through latchkey"));
    assert_eq!(setup.logins(), 1, "expired: refreshed, no browser");
    assert!(
        setup
            .auth
            .token_requests()
            .contains(&"refresh_token".to_owned())
    );

    setup.auth.revoke_all();
    assert!(sdk_call(&daemon).await.contains("through latchkey"));
    assert_eq!(setup.logins(), 2, "revoked: exactly one new authorization");

    daemon.kill().await;
    let before = setup.auth.token_requests().len();
    let daemon = start().await;
    assert!(sdk_call(&daemon).await.contains("through latchkey"));
    assert_eq!(
        setup.logins(),
        2,
        "restarted: the stored tokens, no browser"
    );
    assert!(
        setup.auth.token_requests()[before..]
            .iter()
            .all(|g| g == "refresh_token"),
        "at most a refresh after the restart"
    );
    daemon.kill().await;
}

#[tokio::test]
async fn doctor_names_each_problem_with_its_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let home = Home::new("doctor", "http://127.0.0.1:1/mcp");
    home.0.write_config(&format!(
        "store = \"file\"\nstate_dir = {:?}\n[servers.notes]\nurl = \"http://127.0.0.1:1/mcp\"\n[servers.notes.oauth]\nredirect_port = {port}\n",
        home.state()
    ));
    let output = home.command(&["doctor"]).output().await.expect("doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    for expected in [
        "[ok ] config:",
        "[ok ] store: file",
        &format!("[ERR] notes: callback port: 127.0.0.1:{port} is taken"),
        "change redirect_port under [servers.notes.oauth]",
        "[ERR] notes: upstream: cannot reach \"notes\"",
        "fix: check url under [servers.notes]",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    drop(taken);
}

/// `latchkey remove` is a logout first: the tokens revoked at the authorization
/// server and deleted, then the table gone from the config (its comments kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_revokes_and_deletes_the_tokens_then_the_table() {
    let setup = protected().start().await;
    let home = Home::new("remove", &setup.mcp_url());
    let config = home.0.path().join("config.toml");
    let text = format!(
        "# kept\n{}[servers.other]\nurl = \"https://other.example.com/mcp\" # also kept\n",
        std::fs::read_to_string(&config).expect("config")
    );
    std::fs::write(&config, &text).expect("config");
    home.log_in(&setup).await;
    assert!(!home.records().is_empty());
    assert!(setup.auth.revoked().is_empty());

    let output = home
        .command(&["remove", "notes"])
        .output()
        .await
        .expect("remove");
    assert!(output.status.success(), "{output:?}");
    assert!(
        !setup.auth.revoked().is_empty(),
        "the logout revoked the tokens"
    );
    assert!(home.records().is_empty(), "and deleted them");
    let after = std::fs::read_to_string(&config).expect("config");
    assert!(!after.contains("[servers.notes]"), "{after}");
    assert!(
        after.starts_with("# kept\n")
            && after
                .contains("[servers.other]\nurl = \"https://other.example.com/mcp\" # also kept\n"),
        "{after}"
    );
}

/// Profiles: two names for one server are two accounts, each with its own login
/// and record, each request with its own name's token. A record from before records
/// were kept by name (under the server's URL) is moved to its name once, with no
/// new login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_names_for_one_server_hold_two_logins_and_an_old_record_is_moved() {
    use latchkey_auth::store::{FileStore, Store as _};
    let setup = protected().start().await;
    let home = Home::new("profiles", &setup.mcp_url());
    home.log_in(&setup).await;
    assert_eq!(setup.logins(), 1);
    // Put the record where an older latchkey kept it: under the URL.
    let store = FileStore::new(home.state().join("credentials"));
    let url = setup.mcp_url();
    let mut record = store
        .load("latchkey:server:notes", "notes")
        .expect("load")
        .expect("the record, by name");
    assert_eq!(
        record.server.as_deref(),
        Some(url.as_str()),
        "the record names its server"
    );
    record.server = None;
    store.save(&url, &record).expect("save");
    store.delete("latchkey:server:notes").expect("delete");
    let old_token = record
        .tokens
        .as_ref()
        .expect("tokens")
        .access_token
        .expose()
        .to_owned();

    // The upgrade: the first name to find the old record takes it.
    let upgraded = logged_in(
        Daemon::builder()
            .server("notes", &url, &[])
            .store(home.store()),
    )
    .await;
    assert_eq!(
        setup.logins(),
        1,
        "the moved record served notes: no new login"
    );
    assert_eq!(crate::harness::last_token(&setup.upstream), old_token);
    assert!(
        store.load(&url, "notes").expect("load").is_none(),
        "the old record is gone"
    );
    assert!(
        store
            .load("latchkey:server:notes", "notes")
            .expect("load")
            .is_some()
    );
    upgraded.shutdown().await.expect("shutdown");

    // A second name for the same server: a second account.
    let config = home.0.path().join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        format!("{text}[servers.notes-home]\nurl = {url:?}\n"),
    )
    .expect("config");
    let daemon = Daemon::builder()
        .server("notes", &url, &[])
        .server("notes-home", &url, &[])
        .store(home.store())
        .browser(ScriptedBrowser::approving())
        .start()
        .await;

    assert_eq!(daemon.initialize("/notes-home").await.status(), 200);
    assert_eq!(setup.logins(), 2, "the second name is a second login");
    let home_token = crate::harness::last_token(&setup.upstream);
    assert_ne!(home_token, old_token);
    assert_eq!(daemon.initialize("/notes").await.status(), 200);
    assert_eq!(
        crate::harness::last_token(&setup.upstream),
        old_token,
        "each name its own token"
    );
    assert_eq!(daemon.initialize("/notes-home").await.status(), 200);
    assert_eq!(crate::harness::last_token(&setup.upstream), home_token);
    assert_eq!(setup.logins(), 2);
    let status = home.status().await.to_string();
    assert!(status.contains("notes-home"), "{status}");
    daemon.shutdown().await.expect("shutdown");
}
