//! A login that needs the person says where to go, at once: through the real
//! binary with a `$BROWSER` that fails, with no opener at all, with a desktop
//! notification service on the session D-Bus (a test one, recording what it is
//! sent), and through `latchkey stdio`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

use crate::binary::{Serve, Served};
use crate::harness::{Protected, TempDir, interop, protected};

/// A daemon on `setup` as server `notes`, its `BROWSER` as given (`None`: unset),
/// with no display; requests give up on an unreachable person after 1 s.
async fn daemon(
    dir: &TempDir,
    setup: &Protected,
    browser: Option<&Path>,
    bus: Option<&str>,
) -> Served {
    let config = dir.write_config(&format!(
        "store = \"memory\"\n[servers.notes]\nurl = {:?}\n[servers.notes.oauth]\nlogin_wait_secs = 1\nauth_timeout_secs = 30\n",
        setup.mcp_url()
    ));
    let mut command = crate::binary::latchkey(dir);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("BROWSER");
    if let Some(browser) = browser {
        command.env("BROWSER", browser);
    }
    // The session bus, where a notification service may be: none unless given.
    match bus {
        Some(bus) => command.env("DBUS_SESSION_BUS_ADDRESS", bus),
        None => command.env_remove("DBUS_SESSION_BUS_ADDRESS"),
    };
    Serve::new(command).logged().start().await
}

/// A `$BROWSER` that writes each URL it is given to `urls` and fails, except for
/// latchkey's own start page, which it follows as a person would (approving).
fn recording_browser(dir: &TempDir) -> std::path::PathBuf {
    dir.browser(&format!(
        "echo \"$1\" >> {:?}\ncase \"$1\" in\n  */.latchkey/login/*) exec node {:?} \"$1\" ;;\n  *) exit 1 ;;\nesac\n",
        dir.path().join("urls"),
        interop("conformance/browser.mjs")
    ))
}

/// The daemon's log and its guidance line, once it has one.
async fn guidance(served: &Served) -> (String, String) {
    crate::harness::eventually("the guidance in the log", || {
        served.log().contains("needs you to sign in")
    })
    .await;
    let log = served.log();
    let line = log
        .lines()
        .find(|l| l.contains("needs you to sign in"))
        .expect("the guidance line")
        .to_owned();
    (log, line)
}

/// What a request that meets the login gets, and how long it took.
async fn first_request(served: &Served) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = served.initialize("/notes").await;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or_default();
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_way_to_the_person_the_log_says_where_to_go_and_requests_get_the_command_at_once() {
    let setup = protected().start().await;
    let missing = Path::new("/nonexistent/browser");
    let failing = Path::new("/bin/false");
    for (browser, why) in [
        (
            Some(failing),
            "the browser command exited with exit status: 1",
        ),
        (
            Some(missing),
            "cannot start the browser (/nonexistent/browser)",
        ),
        (
            None,
            "there is no display (DISPLAY, WAYLAND_DISPLAY) and no BROWSER",
        ),
    ] {
        let dir = TempDir::new("guidance-unreached");
        let before = setup.logins();
        let served = daemon(&dir, &setup, browser, None).await;
        let (status, body, took) = first_request(&served).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            took < Duration::from_secs(5),
            "answered after login_wait_secs, not auth_timeout_secs: {took:?}"
        );
        let data = &body["error"]["data"];
        // The daemon's config is not the default one, so the command names it.
        let config = dir.path().join("config.toml");
        let command = format!("latchkey login notes --config {}", config.display());
        assert_eq!(data["command"], command, "{body}");
        assert_eq!(data["sign_in"], "/.latchkey/login/notes", "{body}");
        // The message is what the client shows: the whole address of the start page.
        let start = served.url("/.latchkey/login/notes");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&command) && m.contains(&format!("open {start}"))),
            "{body}"
        );
        // …and works as printed, with a person at a browser.
        let words: Vec<&str> = command.split(' ').collect();
        let ran = crate::binary::latchkey(&dir)
            .args(&words[1..])
            .env("BROWSER", dir.approving_browser(0))
            .status()
            .expect("run the command");
        assert!(ran.success(), "`{command}`: {ran:?}");
        let (log, line) = guidance(&served).await;
        assert!(
            line.contains(" WARN ")
                && line.contains(why)
                && line.contains(&format!("run `{command}`"))
                && line.contains(&format!("or open {start}")),
            "{line}"
        );
        assert!(
            !log.contains("state="),
            "the authorization URL (with its state) is not logged:\n{log}"
        );
        assert_eq!(
            setup.logins(),
            before + 1,
            "the command's login, not the daemon's"
        );
    }
}

/// A notification as sent: summary, body, actions.
type Sent = (String, String, Vec<String>);

/// The test's `org.freedesktop.Notifications`: records each notification.
#[derive(Clone, Default)]
struct Notifications {
    sent: Arc<Mutex<Vec<Sent>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut sent = self.sent.lock().expect("sent");
        sent.push((summary, body, actions));
        u32::try_from(sent.len()).expect("few")
    }

    #[zbus(signal)]
    async fn action_invoked(
        ctxt: &zbus::SignalContext<'_>,
        id: u32,
        action_key: String,
    ) -> zbus::Result<()>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desktop_notification_reaches_the_person_and_its_action_signs_in() {
    // A session bus of this test's own: the daemons of other tests notify too.
    let mut dbus = tokio::process::Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dbus-daemon (scripts/test installs dbus)");
    let mut address = String::new();
    tokio::io::AsyncBufReadExt::read_line(
        &mut tokio::io::BufReader::new(dbus.stdout.take().expect("stdout")),
        &mut address,
    )
    .await
    .expect("the bus address");
    let address = address.trim().to_owned();
    let service = Notifications::default();
    let bus = zbus::connection::Builder::address(address.as_str())
        .expect("the test bus")
        .name("org.freedesktop.Notifications")
        .expect("name")
        .serve_at("/org/freedesktop/Notifications", service.clone())
        .expect("serve")
        .build()
        .await
        .expect("the test notification service");
    let setup = protected().start().await;
    let dir = TempDir::new("guidance-notified");
    let served = daemon(&dir, &setup, Some(&recording_browser(&dir)), Some(&address)).await;

    // Two requests meet one login: one notification.
    let local = crate::harness::Local { addr: served.addr };
    let waiting = tokio::spawn(async move {
        let (a, b) = tokio::join!(local.initialize("/notes"), local.initialize("/notes"));
        (a.status().as_u16(), b.status().as_u16())
    });
    let (_, line) = guidance(&served).await;
    assert!(
        line.contains(" INFO ") && line.contains("a notification was shown"),
        "{line}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "the person was reached: the requests wait past login_wait_secs"
    );
    let sent = service.sent.lock().expect("sent").clone();
    assert_eq!(sent.len(), 1, "one notification per login: {sent:?}");
    let (summary, body, actions) = &sent[0];
    assert_eq!(summary, "notes needs you to sign in");
    assert!(body.contains("latchkey login notes"), "{body}");
    assert_eq!(actions, &["default", "Sign in"]);

    // The person clicks it: the start page opens, and the login completes.
    let iface = bus
        .object_server()
        .interface::<_, Notifications>("/org/freedesktop/Notifications")
        .await
        .expect("interface");
    Notifications::action_invoked(iface.signal_context(), 1, "default".into())
        .await
        .expect("signal");
    let (a, b) = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the requests finish")
        .expect("join");
    assert_eq!((a, b), (200, 200));
    let opened = std::fs::read_to_string(dir.path().join("urls")).expect("urls");
    assert!(
        opened
            .lines()
            .any(|u| u == served.url("/.latchkey/login/notes")),
        "{opened}"
    );
    assert_eq!(setup.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_answers_within_login_wait_with_the_command_and_the_login_goes_on() {
    let setup = protected().start().await;
    let dir = TempDir::new("guidance-stdio");
    // A person who takes 8 s to approve.
    let browser = dir.approving_browser(8);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .args(["stdio", "--url", &setup.mcp_url(), "--login-wait", "1"])
        .env_remove("RUST_LOG")
        .env("BROWSER", &browser)
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("XDG_RUNTIME_DIR", dir.path().join("run"));
    let mut bridge = crate::stdio::Bridge::start(command);
    let started = Instant::now();
    let answer = bridge.initialize().await;
    let took = started.elapsed();
    // The bridge's start-up (the store) is in this too: well under the person's 8 s.
    assert!(
        took < Duration::from_secs(6),
        "within --login-wait: {took:?}"
    );
    let error = &answer["error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("latchkey login --url")),
        "{answer}"
    );
    assert!(
        error["data"]["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("latchkey login --url")),
        "{answer}"
    );
    assert!(
        error["data"]["sign_in"].is_null(),
        "stdio has no start page: {answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.logins() == 0 {
        assert!(
            Instant::now() < deadline,
            "the login finishes in the background"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = bridge.initialize().await;
    assert!(
        answer.get("result").is_some(),
        "the next request goes through: {answer}"
    );
}
