//! The loopback redirect listener for the OAuth authorization-code flow (RFC 8252 §7.3)
//! and the browser opener.
//!
//! The listener is bound before the browser opens, so the redirect cannot race it. It
//! takes one redirect, shows the person a clear page, and is gone: a second request or
//! a request after the timeout finds nothing listening.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use latchkey_auth::Secret;
use latchkey_auth::device::DeviceAuthorization;
use latchkey_auth::session::{BoxFuture, Browser, Prompt, Redirect, RedirectCheck};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use url::Url;

use crate::peer::{Admission, LocalUsers};

const CALLBACK_PATH: &str = "/callback";

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error(
        "cannot listen for the OAuth redirect on 127.0.0.1:{port}: {source}; free the port, or change redirect_port under [servers.NAME.oauth]"
    )]
    Bind { port: u16, source: std::io::Error },
    #[error(
        "no redirect came back within {} s; the next request to the server starts a new login (the authorization URL is on the status page, http://127.0.0.1:PORT/)",
        .0.as_secs()
    )]
    TimedOut(Duration),
    #[error("{0}")]
    Rejected(String),
}

/// A bound, not yet answered, redirect listener.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    redirect_uri: String,
    /// The login's `state`: a request without it is not the redirect (a blind probe
    /// or another local user's guess) and must not end the wait.
    state: Option<Secret>,
}

impl Listener {
    /// Binds `127.0.0.1:port` (0 for an ephemeral port). Some servers only accept a
    /// registered, fixed redirect URI, hence the configurable port.
    pub async fn bind(port: u16) -> Result<Self, CallbackError> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|source| CallbackError::Bind { port, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| CallbackError::Bind { port, source })?
            .port();
        Ok(Self {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
            state: None,
        })
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Listens for the redirect of this authorization request only: requests without
    /// its `state` get a 404 and the wait goes on (RFC 6749 §10.12: a stray or forged
    /// request must not abort the login).
    pub fn expecting(mut self, authorization_url: &Url) -> Self {
        self.state = state_of(authorization_url).map(Secret::new);
        self
    }

    /// Waits for one redirect and hands its full URL to `check`, whose verdict decides
    /// the page the person sees. Returns what `check` returned.
    pub async fn wait<T, F>(self, timeout: Duration, check: F) -> Result<T, CallbackError>
    where
        T: Send + 'static,
        F: FnOnce(&Url) -> Result<T, String> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let local = self
            .listener
            .local_addr()
            .map_err(|source| CallbackError::Bind { port: 0, source })?;
        let slot = Arc::new(Slot {
            local,
            users: LocalUsers::new(&[]),
            base: self.redirect_uri.clone(),
            state: self.state,
            check: Mutex::new(Some(Box::new(check))),
            result: Mutex::new(Some(tx)),
        });
        let app = Router::new()
            .route(CALLBACK_PATH, get(redirect::<T>))
            .with_state(slot);
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async {
            let _ = done_rx.await;
        });
        let serving = tokio::spawn(server.into_future());
        let outcome = tokio::time::timeout(timeout, rx).await;
        // Give the page a moment to reach the browser, then stop listening.
        let _ = done_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
        match outcome {
            Ok(Ok(result)) => result.map_err(CallbackError::Rejected),
            Ok(Err(_)) | Err(_) => Err(CallbackError::TimedOut(timeout)),
        }
    }
}

type Check<T> = Box<dyn FnOnce(&Url) -> Result<T, String> + Send>;

struct Slot<T> {
    /// Only the user's own browser may deliver the redirect (another local user
    /// would otherwise finish or spoil the login).
    local: SocketAddr,
    users: LocalUsers,
    base: String,
    state: Option<Secret>,
    check: Mutex<Option<Check<T>>>,
    result: Mutex<Option<oneshot::Sender<Result<T, String>>>>,
}

async fn redirect<T: Send + 'static>(
    State(slot): State<Arc<Slot<T>>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    uri: http::Uri,
) -> Response {
    if let admission @ (Admission::Refused(_) | Admission::Unknown(_)) =
        slot.users.admit(client, slot.local)
    {
        tracing::warn!(
            ?admission,
            "refused a request to the OAuth callback from another user"
        );
        return (
            StatusCode::FORBIDDEN,
            page("Forbidden", "This login belongs to another user."),
        )
            .into_response();
    }
    let url = Url::parse(&slot.base).and_then(|base| base.join(&uri.to_string()));
    if let Some(expected) = &slot.state {
        let given = url.as_ref().ok().and_then(state_of);
        if !given.is_some_and(|given| expected.matches(&given)) {
            tracing::debug!(
                "a request to the OAuth callback without this login's state; still waiting"
            );
            return (
                StatusCode::NOT_FOUND,
                page("Not found", "This is not the page of a login in progress."),
            )
                .into_response();
        }
    }
    let check = slot
        .check
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(check) = check else {
        return (
            StatusCode::GONE,
            page(
                "Already used",
                "This login link was already used. Close this tab.",
            ),
        )
            .into_response();
    };
    let verdict = match url {
        Ok(url) => check(&url),
        Err(_) => Err("the redirect URL could not be read".to_owned()),
    };
    let response = match &verdict {
        Ok(_) => (
            StatusCode::OK,
            page(
                "Signed in",
                "latchkey has the authorization. You can close this tab.",
            ),
        ),
        Err(reason) => (StatusCode::BAD_REQUEST, page("Sign-in failed", reason)),
    };
    if let Some(tx) = slot
        .result
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        let _ = tx.send(verdict);
    }
    response.into_response()
}

/// The `state` query parameter of a URL.
fn state_of(url: &Url) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == "state")
        .map(|(_, value)| value.into_owned())
}

fn page(title: &str, text: &str) -> Html<String> {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>latchkey: {t}</title></head>\
<body style=\"font-family:system-ui,sans-serif;margin:3rem\"><h1>{t}</h1><p>{x}</p></body></html>",
        t = escape(title),
        x = escape(text)
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("refusing to open {0:?}: only http and https URLs are opened")]
    Scheme(String),
    #[error(
        "cannot start the browser ({command}): {source}; open the URL yourself, or set $BROWSER"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// Opens `url` with `$BROWSER` (the first entry of its `:`-separated list, with `%s`
/// replaced by the URL or the URL appended) or the platform's opener. No shell is
/// involved, so the URL cannot be read as shell syntax.
pub fn open_browser(url: &Url) -> Result<Child, BrowserError> {
    open_with(std::env::var("BROWSER").ok().as_deref(), url)
}

/// [`open_browser`] with the value of `$BROWSER` given.
pub fn open_with(browser: Option<&str>, url: &Url) -> Result<Child, BrowserError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(BrowserError::Scheme(url.scheme().to_owned()));
    }
    let configured = browser.filter(|b| !b.trim().is_empty());
    let (program, args) = match configured {
        Some(browser) => {
            let first = browser.split(':').next().unwrap_or_default().to_owned();
            let mut words: Vec<String> = first.split_whitespace().map(str::to_owned).collect();
            let program = if words.is_empty() {
                first
            } else {
                words.remove(0)
            };
            if words.iter().any(|w| w.contains("%s")) {
                let args = words
                    .iter()
                    .map(|w| w.replace("%s", url.as_str()))
                    .collect();
                (program, args)
            } else {
                words.push(url.to_string());
                (program, words)
            }
        }
        None if cfg!(target_os = "macos") => ("open".to_owned(), vec![url.to_string()]),
        None => ("xdg-open".to_owned(), vec![url.to_string()]),
    };
    Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BrowserError::Spawn {
            command: program,
            source,
        })
}

/// The real person at the real browser: the [`Browser`] of the daemon and of
/// `latchkey stdio`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemBrowser {
    /// The daemon's address, for its sign-in start page and a desktop notification;
    /// `None` in `latchkey stdio`, which has neither.
    pub daemon: Option<SocketAddr>,
}

impl Browser for SystemBrowser {
    fn bind(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>> {
        let daemon = self.daemon;
        Box::pin(async move {
            let listener = Listener::bind(port).await.map_err(|e| e.to_string())?;
            Ok(Box::new(SystemRedirect { listener, daemon }) as Box<dyn Redirect>)
        })
    }
}

struct SystemRedirect {
    listener: Listener,
    daemon: Option<SocketAddr>,
}

/// How long an opener may run before it counts as having opened the page: xdg-open
/// and `open` exit once the browser has it, but a `$BROWSER` that is the browser
/// itself runs on.
const OPENER_PATIENCE: Duration = Duration::from_secs(2);

/// Opens `url` in the browser; why not, when it could not.
async fn launch(url: &Url) -> Result<(), String> {
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    if cfg!(target_os = "linux")
        && browser.is_none()
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        return Err("there is no display (DISPLAY, WAYLAND_DISPLAY) and no BROWSER".into());
    }
    let mut opener = open_with(browser.as_deref(), url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(OPENER_PATIENCE, opener.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the browser command exited with {status}")),
        Ok(Err(e)) => Err(format!("the browser command failed: {e}")),
        Err(_) => Ok(()),
    }
}

impl Redirect for SystemRedirect {
    fn redirect_uri(&self) -> String {
        self.listener.redirect_uri().to_owned()
    }

    fn show(&self, url: &Url, prompt: Prompt<'_>) -> BoxFuture<'static, bool> {
        let url = url.clone();
        let (server, command) = (prompt.who.to_owned(), prompt.command.to_owned());
        let page = prompt.server.map(login_path);
        let daemon = self.daemon;
        Box::pin(async move {
            let opened = launch(&url).await;
            // The daemon's own start page: a URL to give, where the raw authorization
            // URL would carry the login's state into logs.
            let start = daemon
                .zip(page)
                .map(|(addr, page)| format!("http://{addr}{page}"));
            let notified = match start.as_deref().map(Url::parse) {
                Some(Ok(page)) => {
                    crate::desktop::notify_sign_in(&server, &command, move || {
                        if let Err(e) = open_browser(&page) {
                            tracing::warn!(error = %e, "cannot open the browser for the sign-in");
                        }
                    })
                    .await
                }
                _ => false,
            };
            let place = start.as_deref().map_or_else(
                || "in the browser window latchkey opened".to_owned(),
                |start| format!("at {start}"),
            );
            match &opened {
                Ok(()) => {
                    tracing::info!(%server, sign_in = start.as_deref(), %command, notified, "{server} needs you to sign in {place}, or run `{command}`")
                }
                Err(why) if notified => {
                    tracing::info!(%server, sign_in = start.as_deref(), %command, "{server} needs you to sign in: a notification was shown ({why}); sign in {place}, or run `{command}`")
                }
                Err(why) => {
                    tracing::warn!(%server, sign_in = start.as_deref(), %command, "{server} needs you to sign in, and the browser could not be opened ({why}): run `{command}`{}", start.as_deref().map(|s| format!(", or open {s}")).unwrap_or_default())
                }
            }
            opened.is_ok() || notified
        })
    }

    fn complete(
        self: Box<Self>,
        url: Url,
        timeout: Duration,
        check: RedirectCheck,
    ) -> BoxFuture<'static, Result<Secret, String>> {
        Box::pin(async move {
            self.listener
                .expecting(&url)
                .wait(timeout, check)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// latchkey's sign-in start page for a server: on the daemon's own origin, it sends
/// the browser on to the authorization URL (`status.rs`).
pub(crate) const LOGIN_PATH: &str = "/.latchkey/login/{server}";

/// [`LOGIN_PATH`] for one server.
pub(crate) fn login_path(server: &str) -> String {
    format!("/.latchkey/login/{server}")
}

/// The person at this terminal, for `latchkey login`. The authorization URL is
/// printed (and opened, unless `--no-browser`); the redirect is taken from the
/// loopback listener or from a URL pasted on stdin, whichever comes first, so a login
/// works when the browser runs on another machine. Without a browser, the device flow
/// is preferred where the server offers it.
#[derive(Debug, Clone, Copy)]
pub struct TerminalBrowser {
    pub open: bool,
}

impl Browser for TerminalBrowser {
    fn bind(&self, port: u16) -> BoxFuture<'_, Result<Box<dyn Redirect>, String>> {
        let open = self.open;
        Box::pin(async move {
            let listener = Listener::bind(port).await.map_err(|e| e.to_string())?;
            Ok(Box::new(TerminalRedirect { listener, open }) as Box<dyn Redirect>)
        })
    }

    fn remote(&self) -> bool {
        !self.open
    }

    fn show_device_code(&self, server: &str, device: &DeviceAuthorization) {
        let mut text = format!(
            "To authorize latchkey for {server:?}, open {} on any device and enter the code\n\n    {}\n",
            device.verification_uri, device.user_code
        );
        if let Some(complete) = &device.verification_uri_complete {
            text.push_str(&format!(
                "\n(or open {complete}, which has the code filled in)\n"
            ));
        }
        eprintln!("{text}\nWaiting for approval…");
    }
}

struct TerminalRedirect {
    listener: Listener,
    open: bool,
}

impl Redirect for TerminalRedirect {
    fn redirect_uri(&self) -> String {
        self.listener.redirect_uri().to_owned()
    }

    fn complete(
        self: Box<Self>,
        url: Url,
        timeout: Duration,
        check: RedirectCheck,
    ) -> BoxFuture<'static, Result<Secret, String>> {
        Box::pin(async move {
            eprintln!("Open this URL in a browser to authorize latchkey:\n\n    {url}\n");
            if let Some(Err(e)) = self.open.then(|| open_browser(&url).map(drop)) {
                eprintln!("({e})");
            }
            eprintln!(
                "If the browser is on another machine, it ends on a page that cannot load; paste that page's address here (it starts with {}):",
                self.listener.redirect_uri()
            );
            // One check, used by whichever of the listener and the paste comes first.
            let check = Arc::new(Mutex::new(Some(check)));
            let take = |check: &Arc<Mutex<Option<RedirectCheck>>>| {
                check.lock().unwrap_or_else(PoisonError::into_inner).take()
            };
            let for_listener = check.clone();
            let listened =
                self.listener
                    .expecting(&url)
                    .wait(timeout, move |url: &Url| match take(&for_listener) {
                        Some(check) => check(url),
                        None => Err("this login was already completed".into()),
                    });
            let pasted = async {
                let mut lines = BufReader::new(tokio::io::stdin()).lines();
                loop {
                    match lines.next_line().await {
                        Ok(Some(line)) => match Url::parse(line.trim()) {
                            Ok(url) => {
                                if let Some(check) = take(&check) {
                                    return check(&url);
                                }
                            }
                            Err(_) if line.trim().is_empty() => {}
                            Err(_) => eprintln!("That is not a URL; paste the whole address."),
                        },
                        // No terminal (or it closed): only the listener can answer.
                        Ok(None) | Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            tokio::select! {
                result = listened => result.map_err(|e| e.to_string()),
                result = pasted => result,
            }
        })
    }
}
