//! The built binary, as a user or a service manager runs it: [`latchkey`] in a
//! scratch directory, and `latchkey serve` started until it is ready ([`Serve`]).

use std::ffi::OsStr;
use std::ops::Deref;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram as StdDatagram};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::harness::{Local, TempDir, interop};

/// The binary with its state in `scratch`, its stderr in `scratch/stderr.log`.
pub fn latchkey(scratch: &TempDir) -> std::process::Command {
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

/// `latchkey serve --config CONFIG`, as [`latchkey`] sets it up in `scratch`.
pub fn serve(scratch: &TempDir, config: &Path) -> Serve {
    let mut command = latchkey(scratch);
    command.args(["serve", "--config"]).arg(config);
    Serve::new(command)
}

/// The files [`latchkey`] leaves in its scratch directory.
impl TempDir {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("stderr.log")).unwrap_or_default()
    }

    /// The log once it has every one of `needles` (it is written by a thread of its
    /// own, a few milliseconds behind), or as it is after 5 s.
    pub async fn log_with(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) || tokio::time::Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A `$BROWSER` script that plays the person: it approves every authorization
    /// page it is given (tests/interop/conformance/browser.mjs), after `delay_secs`.
    pub fn approving_browser(&self, delay_secs: u32) -> PathBuf {
        let script = interop("conformance/browser.mjs");
        self.browser(&format!(
            "sleep {delay_secs}\nexec node {script:?} \"$1\"\n"
        ))
    }

    /// A `$BROWSER` here: a shell script with `body`, which gets the URL as `$1`.
    pub fn browser(&self, body: &str) -> PathBuf {
        let browser = self.0.join("browser");
        std::fs::write(&browser, format!("#!/bin/sh\n{body}")).expect("browser script");
        std::fs::set_permissions(
            &browser,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        browser
    }
}

/// `latchkey serve` through the built binary, started as systemd starts it: it is
/// ready once it has sent `READY=1` to its `$NOTIFY_SOCKET`, and that message's
/// `STATUS` names its address, so no port is guessed and no log line read for it.
pub struct Serve {
    command: Command,
    notify: Option<NotifySocket>,
    logged: bool,
}

impl Serve {
    /// `command` runs `latchkey serve`, itself or through a wrapper (`prlimit`, `sh`).
    pub fn new(command: impl Into<Command>) -> Self {
        Self {
            command: command.into(),
            notify: None,
            logged: false,
        }
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.command.env_remove(key);
        self
    }

    pub fn stderr(mut self, stderr: impl Into<Stdio>) -> Self {
        self.command.stderr(stderr);
        self
    }

    /// Notifications go to `socket`, not to one of its own in the abstract namespace.
    pub fn notify(mut self, socket: NotifySocket) -> Self {
        self.notify = Some(socket);
        self
    }

    /// Keeps its stderr for [`Served::log`], read as it comes so the pipe never fills.
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    pub async fn start(self) -> Served {
        let Self {
            mut command,
            notify,
            logged,
        } = self;
        let notify = notify.unwrap_or_else(NotifySocket::abstract_name);
        if logged {
            command.stderr(Stdio::piped());
        }
        let mut child = command
            .env("NOTIFY_SOCKET", &notify.env)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn latchkey serve");
        // What the command held for the child (a passed socket) is the child's alone.
        drop(command);
        let log = Arc::new(Mutex::new(Vec::new()));
        let reader = logged.then(|| {
            let mut stderr = child.stderr.take().expect("piped stderr");
            let log = log.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                    log.lock().expect("log").extend_from_slice(&chunk[..n]);
                }
            })
        });
        let addr = tokio::select! {
            addr = notify.ready() => addr,
            status = child.wait() => panic!(
                "latchkey serve exited before it was ready ({status:?}):\n{}",
                String::from_utf8_lossy(&log.lock().expect("log"))
            ),
        };
        Served {
            child,
            local: Local { addr },
            notify,
            log,
            reader,
        }
    }
}

/// A `latchkey serve` that is ready, and the client's side of its endpoint.
pub struct Served {
    pub child: Child,
    local: Local,
    /// Where it notifies, for what it says after `READY=1`.
    pub notify: NotifySocket,
    log: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Deref for Served {
    type Target = Local;

    fn deref(&self) -> &Local {
        &self.local
    }
}

impl Served {
    /// Sends it `SIGname`.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// What it has logged so far, with [`Serve::logged`].
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().expect("log")).into_owned()
    }

    /// Its exit status, within 15 s.
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("latchkey exits within 15 s")
            .expect("wait")
    }

    /// Waits for it to exit 0; the failure shows the log in `scratch`.
    pub async fn exits_cleanly(mut self, scratch: &TempDir) {
        let status = self.wait().await;
        assert!(status.success(), "{status}; log:\n{}", scratch.log());
    }

    /// Sends it `SIGname`; its exit code and, with [`Serve::logged`], all it logged.
    pub async fn stop(mut self, name: &str) -> (Option<i32>, String) {
        self.signal(name);
        let code = self.wait().await.code();
        if let Some(reader) = self.reader.take() {
            // Its stderr ends with it, unless a child of its own ($BROWSER) holds it.
            drop(tokio::time::timeout(Duration::from_secs(10), reader).await);
        }
        (code, self.log())
    }

    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        drop(self.child.wait().await);
    }
}

/// A stand-in for systemd's notification socket.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// What `NOTIFY_SOCKET` is set to.
    pub env: String,
}

impl NotifySocket {
    pub fn at_path(scratch: &TempDir) -> Self {
        let path = scratch.path().join("notify.sock");
        let socket = StdDatagram::bind(&path).expect("bind notify socket");
        Self::from_std(socket, path.to_str().expect("utf-8 path").to_owned())
    }

    /// In the abstract namespace, as `@name`; a new name each time.
    pub fn abstract_name() -> Self {
        use std::os::linux::net::SocketAddrExt as _;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "latchkey-it-notify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
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
    pub async fn next(&self) -> String {
        let mut buf = vec![0; 4096];
        let len = tokio::time::timeout(Duration::from_secs(20), self.socket.recv(&mut buf))
            .await
            .expect("a notification within 20 s")
            .expect("recv");
        String::from_utf8(buf[..len].to_vec()).expect("utf-8 notification")
    }

    /// Waits for a notification with `READY=1` and returns the address from its
    /// STATUS line.
    pub async fn ready(&self) -> std::net::SocketAddr {
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
