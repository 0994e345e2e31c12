//! The daemon: serve the local endpoint on a listener until told to stop.
//!
//! Startup order is fixed: the caller loads and validates the config, binds the
//! listener (so a bad config or a busy port fail before anything is served), and only
//! then calls [`run`].
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
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::callback::SystemBrowser;
use crate::config::Config;
use crate::guard::Guard;
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
    #[error(transparent)]
    Store(#[from] crate::credentials::KeyringUnavailable),
}

/// Serves `config` on `listener` until `shutdown` completes, then drains. Logins
/// open the system browser.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with_browser(listener, config, shutdown, Arc::new(SystemBrowser)).await
}

/// [`run`] with another [`Browser`] for logins (tests script the person at it).
pub async fn run_with_browser(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    browser: Arc<dyn Browser>,
) -> Result<(), DaemonError> {
    let local = listener.local_addr().map_err(DaemonError::Listener)?;
    let stop = CancellationToken::new();
    let opened = crate::credentials::open(config.store, config.state_dir.as_deref()).await?;
    if let Some(why) = &opened.fallback {
        tracing::warn!("{why}");
    }
    let store = opened.credentials.store.kind();
    let proxy = Proxy::new(&config, stop.clone(), browser, opened.credentials)?;
    // Stored credentials first, so the first request already carries a token. A
    // record that cannot be read leaves its server in `error` and the rest running.
    proxy.restore().await;
    let app = router(proxy, Guard::new(local, &config));
    tracing::info!(%local, servers = config.servers.len(), store, "latchkey listening");

    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(DaemonError::Serve),
        () = shutdown => {}
    }
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down; draining requests");
    stop.cancel();
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(result) => result.map_err(DaemonError::Serve)?,
        Err(_) => tracing::warn!("drain timed out; dropping the connections still open"),
    }
    tracing::info!("stopped");
    Ok(())
}

fn router(proxy: Proxy, guard: Guard) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route(
            status::AUTHORIZE_PATH,
            axum::routing::post(status::authorize),
        )
        .route("/{server}", any(proxy::forward))
        .route("/{server}/messages/{token}", any(proxy::legacy_message))
        .with_state(proxy)
        .layer(middleware::from_fn_with_state(guard, crate::guard::check))
        .layer(middleware::from_fn(log_request))
}

/// One log line per request, written when the response body ends (so a stream's
/// duration is the stream's), with no header values.
async fn log_request(request: Request, next: Next) -> Response {
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
    let response = next.run(request).await;
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
    fn emit(self, complete: bool) {
        tracing::info!(
            server = %self.server,
            method = %self.method,
            status = self.status,
            duration = ?self.start.elapsed(),
            complete,
            "request"
        );
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
