//! The daemon: serve the local endpoint on a listener until told to stop.
//!
//! Startup order is fixed: the caller loads and validates the config, binds the
//! listener (so a bad config or a busy port fail before anything is served), and only
//! then calls [`run`].
//!
//! As a service ([`run_service`]), `READY=1` goes to the service manager only after
//! that and after stored credentials are restored, so the first request already
//! carries a token; `STOPPING=1` when shutdown begins.
//!
//! Reload: each reload request rereads the config (`RELOADING=1`, then `READY=1`
//! again). Servers whose tables are unchanged keep everything, streams included;
//! added ones appear, removed ones disappear and changed ones are rebuilt (see
//! `Proxy::reload`). A config that does not load is logged and the one in force
//! stays. `listen`, `store` and `state_dir` apply only at start: a change to them is
//! logged as needing a restart.
//!
//! Shutdown: when the `shutdown` future completes, latchkey stops accepting
//! connections and ends its standalone SSE streams (GET), which would otherwise never
//! finish; clients reconnect to the next instance. Requests in flight, including POSTs
//! whose replies stream as SSE, get `shutdown_timeout` to finish. Connections still
//! open after that are dropped and `run` returns.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::response::IntoResponse as _;
use axum::response::Response;
use axum::routing::{any, get};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::callback::SystemBrowser;
use crate::config::{Config, ConfigError};
use crate::guard::Guard;
use crate::notify::Notifier;
use crate::peer::{Admission, LocalUsers};
use crate::proxy::{self, Proxy};
use crate::status;
use latchkey_auth::session::Browser;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
    #[error(
        "cannot listen on {addr}: {cause}; is another latchkey running? Pick another address with --listen or the config's `listen`"
    )]
    Bind {
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot use the socket passed in LISTEN_FDS: {0}")]
    Activated(std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::credentials::StoreUnavailable),
}

/// Rereads the config on request: what [`run_service`] needs for reloads.
pub struct Reload {
    /// Each message asks for a reload (SIGHUP under `latchkey serve`).
    pub requests: tokio::sync::mpsc::Receiver<()>,
    /// Reads the config again; an error keeps the config in force.
    pub load: Box<dyn FnMut() -> Result<Config, ConfigError> + Send>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// How a daemon runs as a service: its browser for logins, its reloads, and the
/// service manager to notify.
#[derive(Debug)]
pub struct Service {
    pub browser: Arc<dyn Browser>,
    pub reload: Option<Reload>,
    pub notifier: Notifier,
}

/// `latchkey serve`: listens on the socket the service manager passed (`activated`),
/// else on `config.listen`, and runs as a service (system browser, systemd
/// notifications, `reload`) until `shutdown` completes.
pub async fn serve(
    config: Config,
    activated: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
    reload: Option<Reload>,
) -> Result<(), DaemonError> {
    let listener = match activated {
        Some(socket) => {
            socket
                .set_nonblocking(true)
                .map_err(DaemonError::Activated)?;
            TcpListener::from_std(socket).map_err(DaemonError::Activated)?
        }
        None => TcpListener::bind(config.listen)
            .await
            .map_err(|cause| DaemonError::Bind {
                addr: config.listen,
                cause,
            })?,
    };
    let service = Service {
        browser: Arc::new(crate::callback::SystemBrowser {
            daemon: listener.local_addr().ok().map(crate::local_key::reachable),
        }),
        reload,
        notifier: Notifier::from_env(),
    };
    run_service(listener, config, shutdown, service).await
}

/// Serves `config` on `listener` until `shutdown` completes, then drains. Logins
/// open the system browser.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon = listener.local_addr().ok().map(crate::local_key::reachable);
    run_with_browser(
        listener,
        config,
        shutdown,
        Arc::new(SystemBrowser { daemon }),
    )
    .await
}

/// [`run`] with another [`Browser`] for logins (tests script the person at it).
pub async fn run_with_browser(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    browser: Arc<dyn Browser>,
) -> Result<(), DaemonError> {
    let service = Service {
        browser,
        reload: None,
        notifier: Notifier::disabled(),
    };
    run_service(listener, config, shutdown, service).await
}

/// [`run`] with reloads and service manager notifications (`latchkey serve`).
pub async fn run_service(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    service: Service,
) -> Result<(), DaemonError> {
    let Service {
        browser,
        mut reload,
        notifier,
    } = service;
    let local = listener.local_addr().map_err(DaemonError::Listener)?;
    raise_nofile_limit();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let stop = CancellationToken::new();
    let opened = crate::credentials::open(config.store, config.state_dir.as_deref()).await?;
    if let Some(why) = &opened.fallback {
        tracing::warn!("{why}");
    }
    let store = opened.credentials.store.kind();
    let proxy = Proxy::new(
        &config,
        stop.clone(),
        browser,
        opened.credentials,
        crate::server::LoginWait::WhileReached,
        Some(crate::local_key::reachable(local)),
    )?;
    // Stored credentials first, so the first request already carries a token. A
    // record that cannot be read leaves its server in `error` and the rest running.
    proxy.restore().await;
    let guard = Guard::new(local, &config);
    let app = Front {
        router: router(proxy.clone()),
        proxy: proxy.clone(),
        guard: guard.clone(),
    };
    let users = LocalUsers::new(&config.allowed_uids);
    let peers = crate::peer::mechanism();
    tracing::info!(%local, servers = config.servers.len(), store, peers, "latchkey listening");
    if peers == "unavailable" && config.servers.iter().any(|s| !s.local_key) {
        tracing::warn!(
            "cannot tell which user a local connection comes from on this system: every local user can use these credentials. Set local_key = true on the servers, or run latchkey where /proc/net/tcp is readable"
        );
    }
    notifier.ready(&serving(local, config.servers.len()));

    // In a task of its own, so that connections are still accepted while a reload
    // loads credentials.
    let mut server = tokio::spawn(accept_loop(listener, app, users, stop.clone()));
    tokio::pin!(shutdown);
    let mut config = config;
    loop {
        tokio::select! {
            result = &mut server => return served(result),
            () = &mut shutdown => break,
            () = next_request(&mut reload) => {
                notifier.reloading();
                if let Some(reload) = &mut reload {
                    apply(&mut config, (reload.load)(), &proxy, &guard).await;
                }
                notifier.ready(&serving(local, config.servers.len()));
            }
        }
    }
    notifier.stopping();
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down; draining requests");
    stop.cancel();
    match tokio::time::timeout(config.shutdown_timeout, &mut server).await {
        Ok(result) => served(result)?,
        Err(_) => {
            tracing::warn!("drain timed out; dropping the connections still open");
            server.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn served(result: Result<(), tokio::task::JoinError>) -> Result<(), DaemonError> {
    result.map_err(|e| {
        DaemonError::Serve(std::io::Error::other(format!(
            "the HTTP server task ended abnormally: {e}"
        )))
    })
}

/// Serves HTTP/1.1 connections until `stop`, then waits for each connection's
/// requests in flight (idle keep-alive connections close at once).
///
/// Not `axum::serve`: that serves each connection through hyper's HTTP/1-or-2
/// detection and tracks connections in a map for its graceful shutdown, which with
/// 1,000 open SSE streams was several KB per stream (BENCHMARKS.md). The local
/// endpoint speaks HTTP/1.1 only (MCP clients do); the table kept here
/// ([`Connections`]) is one small entry per connection.
async fn accept_loop(
    listener: TcpListener,
    app: Front,
    users: LocalUsers,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // Connections that never finish sending their headers are closed after a header
    // read timeout: always on a non-loopback address (`allow_non_loopback`), and on
    // loopback once many connections are open (`Connections::crowded`). Not
    // otherwise: the timeout arms a boxed timer for every request, and arming it
    // wakes the runtime's driver, one more syscall per request.
    let mut guarded = http.clone();
    guarded
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if listener
        .local_addr()
        .is_ok_and(|local| !local.ip().is_loopback())
    {
        http = guarded.clone();
    }
    let connections = Arc::new(Connections::new(connection_cap()));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // An SSE reply goes out in several small writes (the event, then the final
        // chunk); with Nagle's algorithm the last one waits for the client's delayed
        // ACK, 40 ms per call.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Checked once per connection, before any request on it is read.
        let foreign = foreign(stream.local_addr().map_or_else(
            |e| Admission::Unknown(e.to_string()),
            |ours| users.admit(client, ours),
        ));
        let (id, evicted, crowded) = connections.open();
        // Set once the connection's first request head is read: one that never got
        // that far is dropped when evicted, the others finish their request first.
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = app.clone();
        let seen = started.clone();
        let service = service_fn(move |request: http::Request<Incoming>| {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
            let app = app.clone();
            let foreign = foreign.clone();
            // Boxed: hyper keeps a slot the size of this future for as long as the
            // connection lives, and an SSE stream keeps its connection open.
            Box::pin(async move {
                Ok::<_, Infallible>(app.handle(request.map(Body::new), foreign).await)
            })
        });
        let builder = if crowded { &guarded } else { &http };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        let connections = connections.clone();
        tracker.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                Ok(()) = evicted => {
                    if !started.load(std::sync::atomic::Ordering::Relaxed) {
                        connections.close(id);
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            connections.close(id);
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// How long a client may take to send a request's headers, when the timeout applies.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The open client connections, oldest first, so that past the cap the oldest can be
/// asked to close (at once if idle or never used, after their request otherwise)
/// before the file descriptors run out and nobody is served.
struct Connections {
    cap: usize,
    open: std::sync::Mutex<(
        u64,
        std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
    )>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: std::sync::Mutex::default(),
        }
    }

    /// Registers a new connection: its id, the signal that evicts it, and whether
    /// connections are crowded (then its headers must come in time).
    fn open(&self) -> (u64, tokio::sync::oneshot::Receiver<()>, bool) {
        let (evict, evicted) = tokio::sync::oneshot::channel();
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, table) = &mut *open;
        let id = *next;
        *next += 1;
        table.insert(id, evict);
        while table.len() > self.cap {
            if let Some((_, oldest)) = table.pop_first() {
                let _ = oldest.send(());
            }
        }
        let crowded = table.len() > self.cap / 2;
        (id, evicted, crowded)
    }

    fn close(&self, id: u64) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.1.remove(&id);
    }
}

/// Three quarters of the open file limit, leaving the rest for upstream connections,
/// the store and the logs.
fn connection_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 4 * 3).unwrap_or(usize::MAX).max(64)
}

/// Why a connection is not the user's own, or `None` if it is: such a connection
/// is served key URLs only (`local_key.rs`), and its other requests get this 403
/// text and have their connection closed.
fn foreign(admission: Admission) -> Option<Arc<str>> {
    let why = match admission {
        Admission::Admitted | Admission::Unchecked => return None,
        Admission::Refused(uid) => format!(
            "latchkey serves only its own user's processes; this connection is from uid {uid}. Add the UID to allowed_uids in the config to allow it, or give that client a server's key URL (local_key = true, then `latchkey url NAME`).\n"
        ),
        Admission::Unknown(cause) => {
            tracing::debug!(cause, "cannot look up the user of a local connection");
            "latchkey could not tell which user this connection comes from, so it serves it only key URLs (local_key = true, then `latchkey url NAME`).\n".to_owned()
        }
    };
    Some(why.into())
}

fn refused(why: &str) -> Response {
    tracing::warn!(
        why = why.trim_end(),
        "refused a request from another local user"
    );
    Response::builder()
        .status(http::StatusCode::FORBIDDEN)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONNECTION, "close")
        .body(Body::from(why.to_owned()))
        .unwrap_or_default()
}

/// A failed `accept`: a connection that was reset before it was accepted is not
/// worth a line; running out of file descriptors is, and gets a pause so that the
/// loop does not spin while it lasts.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s (too many open files? raise LimitNOFILE or ulimit -n)");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Each open SSE stream and idle client connection holds a file descriptor, and the
/// usual soft limit (1,024) is far below the hard one: raise it, as servers do.
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(limit = hard, "raised the open file limit"),
            Err(e) => tracing::debug!(error = %e, "cannot raise the open file limit"),
        }
    }
}

/// The status line `systemctl status` shows.
fn serving(local: std::net::SocketAddr, servers: usize) -> String {
    format!("serving {servers} server(s) on http://{local}/")
}

/// The next reload request; never, without reloads or once their sender is gone.
async fn next_request(reload: &mut Option<Reload>) {
    if let Some(reload) = reload
        && reload.requests.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// Puts a reread config in force, or logs why it cannot be and keeps the old one.
async fn apply(
    running: &mut Config,
    loaded: Result<Config, ConfigError>,
    proxy: &Proxy,
    guard: &Guard,
) {
    let new = match loaded {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(
                "config reload failed; the previous config stays in force. Fix the config and reload again (systemctl --user reload latchkey, or kill -HUP):\n{e}"
            );
            return;
        }
    };
    if new.listen != running.listen
        || new.allow_non_loopback != running.allow_non_loopback
        || new.allowed_uids != running.allowed_uids
    {
        tracing::warn!(running = %running.listen, configured = %new.listen, "`listen`, `allow_non_loopback` or `allowed_uids` changed; that needs a restart (systemctl --user restart latchkey); the old ones stay in force");
    }
    if new.store != running.store || new.state_dir != running.state_dir {
        tracing::warn!(
            "`store` or `state_dir` changed; that needs a restart (systemctl --user restart latchkey); credentials stay where they were"
        );
    }
    let changes = proxy.reload(&new).await;
    guard.reload(&new);
    tracing::info!(
        added = ?changes.added,
        removed = ?changes.removed,
        changed = ?changes.changed,
        unchanged = changes.unchanged,
        "config reloaded"
    );
    // What cannot change without a restart stays as it runs.
    *running = Config {
        listen: running.listen,
        allow_non_loopback: running.allow_non_loopback,
        allowed_uids: std::mem::take(&mut running.allowed_uids),
        store: running.store,
        state_dir: running.state_dir.take(),
        ..new
    };
}

fn router(proxy: Proxy) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route(
            status::AUTHORIZE_PATH,
            axum::routing::post(status::authorize),
        )
        .route(status::SIGN_OUT_PATH, axum::routing::post(status::sign_out))
        .route(crate::server::LOGIN_PATH, get(status::login))
        .route("/{server}", any(proxy::forward))
        .route("/{server}/messages/{token}", any(proxy::legacy_message))
        .with_state(proxy)
}

/// What every connection serves: each request is logged, then checked by the
/// guard, then proxied or routed.
///
/// `POST|GET|DELETE /<server>`, nearly every request, goes straight to
/// `proxy::forward`: through axum's router and two `from_fn` layers it cost about
/// 13k instructions per call (a sixth of the daemon's work; BENCHMARKS.md). The
/// router has every other path, and `/<server>` too when the name needs decoding.
#[derive(Clone)]
struct Front {
    router: Router,
    proxy: Proxy,
    guard: Guard,
}

impl Front {
    /// `foreign`: the connection is another user's (see [`foreign`]).
    async fn handle(self, mut request: Request, foreign: Option<Arc<str>>) -> Response {
        let Self {
            router,
            proxy,
            guard,
        } = self;
        // Before anything logs the path: the key is not for the logs.
        let keyed = crate::local_key::strip(&mut request);
        if let Some(why) = foreign.filter(|_| !keyed) {
            return refused(&why);
        }
        log_request(request, |request| async move {
            crate::guard::check(&guard, request, |request| dispatch(router, proxy, request)).await
        })
        .await
    }
}

async fn dispatch(router: Router, proxy: Proxy, request: Request) -> Response {
    match server_path(request.uri().path()) {
        Some(name) => {
            let name = name.to_owned();
            proxy::forward(State(proxy), Path(name), request)
                .await
                .into_response()
        }
        // Boxed: the router's future is large, and every path it serves is rare.
        None => match Box::pin(router.oneshot(request)).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        },
    }
}

/// The server name of a `/<server>` path whose name is taken as written: the
/// characters a server name may have (`config.rs`), so nothing is percent-encoded.
fn server_path(path: &str) -> Option<&str> {
    let name = path.strip_prefix('/')?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plain.then_some(name)
}

/// One log line per request, written when the response body ends (so a stream's
/// duration is the stream's), with no header values.
async fn log_request<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let start = Instant::now();
    let method = request.method().clone();
    let server = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let response = next(request).await;
    let status = response.status().as_u16();
    let content_length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    response.map(|inner| {
        Body::new(LoggedBody {
            remaining: inner.size_hint().exact().or(content_length),
            inner,
            line: Some(LogLine {
                server,
                method,
                status,
                start,
            }),
        })
    })
}

struct LogLine {
    server: String,
    method: http::Method,
    status: u16,
    start: Instant,
}

impl LogLine {
    /// Formatted once the runtime is about to sleep, not before the response's
    /// last bytes go out.
    fn emit(self, complete: bool) {
        let Self {
            server,
            method,
            status,
            start,
        } = self;
        // Whole microseconds: formatting a `Duration` with `?` costs more than the
        // rest of the line.
        let duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        // The status page fetches itself every 2 s while it is open: its answers
        // are logged at debug level, its refusals as every other request.
        let quiet = server.is_empty() && status < 400;
        crate::telemetry::later(move || {
            macro_rules! line {
                ($level:ident) => {
                    tracing::$level!(
                        server = %server,
                        method = %method,
                        status,
                        duration_us,
                        complete,
                        "request"
                    )
                };
            }
            if quiet { line!(debug) } else { line!(info) }
        });
    }
}

struct LoggedBody {
    inner: Body,
    /// Bytes still to send when the length is known: the HTTP server stops polling a
    /// body once it has that many, so "complete" cannot wait for the end of the stream.
    remaining: Option<u64>,
    line: Option<LogLine>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => match (&mut self.remaining, frame.data_ref()) {
                (Some(remaining), Some(data)) => {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                    *remaining == 0
                }
                _ => false,
            },
            _ => false,
        };
        if done && let Some(line) = self.line.take() {
            line.emit(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or an upstream stream broke.
        if let Some(line) = self.line.take() {
            line.emit(self.remaining == Some(0) || self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::server_path;

    #[test]
    fn only_plain_single_segment_paths_skip_the_router() {
        assert_eq!(server_path("/notes"), Some("notes"));
        assert_eq!(server_path("/my-server_2.v1"), Some("my-server_2.v1"));
        for routed in ["/", "", "/notes/", "/notes/messages/t", "/n%6ftes", "/a b"] {
            assert_eq!(server_path(routed), None, "{routed:?}");
        }
    }
}
