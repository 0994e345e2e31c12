//! The upstream client on the hot path: each server's own pool of hyper connections.
//!
//! Not reqwest (which the OAuth code and the HTTP+SSE bridge use), nor the pooled
//! client it is built on: per request, reqwest re-parses the URL (IDNA included) and
//! wraps body and response in layers of its own, and that client hashes its pool key
//! three times, formats the `Host` header anew and spawns a task to put each HTTP/1
//! connection back in its pool. On a proxy whose per-request work should be header
//! edits, that was a third of the CPU per call (BENCHMARKS.md). Here every configured
//! server has a [`Pool`] of its own, made at config load with its `Host` value, and a
//! connection goes back to it when its response body has ended.
//!
//! What those clients do besides, this one does too: a timeout on the whole connect
//! (DNS, TCP and TLS), TCP keepalive (so that a stream to an upstream that vanished
//! ends), HTTP/2 where TLS negotiates it (one connection, shared), idle connections
//! given up after [`POOL_IDLE`], a request sent again on a fresh connection when a
//! pooled one closed before it could be written, and the system's proxy settings: a
//! server that `HTTPS_PROXY` and friends send through a proxy is forwarded with
//! reqwest, which speaks to proxies ([`system_proxy`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tower::Service as _;

use super::CONNECT_TIMEOUT;

/// How long an idle pooled connection is kept (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive, as reqwest sets it: an idle connection is probed after 15 s, and
/// given up after 3 unanswered probes 15 s apart.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Opens connections to upstreams: TCP (and TLS for `https`), shared by every pool.
#[derive(Clone, Debug)]
pub(crate) struct Connector(HttpsConnector<HttpConnector>);

impl Connector {
    /// Trusts the system's CA certificates for `https` upstreams.
    pub(crate) fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // A request's headers and body, or a small reply's pieces, must not wait for
        // the peer's delayed ACK.
        http.set_nodelay(true);
        http.set_keepalive(Some(KEEPALIVE));
        http.set_keepalive_interval(Some(KEEPALIVE));
        http.set_keepalive_retries(Some(KEEPALIVE_RETRIES));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(TLS.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self(connector)
    }

    /// The whole connect, TLS handshake included, must finish within
    /// `CONNECT_TIMEOUT` (the TCP connector's own timeout covers only TCP): a server
    /// that accepts and then stalls its handshake fails the request with a cause.
    async fn connect(&self, uri: Uri) -> Result<Io, BoxError> {
        let connecting = self.0.clone().call(uri);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(format!(
                "no connection within {} s (DNS, TCP or TLS handshake)",
                CONNECT_TIMEOUT.as_secs()
            )
            .into()),
        }
    }
}

/// The connections to one server (one scheme and authority): idle HTTP/1.1 ones, or
/// the one HTTP/2 connection that every request shares.
#[derive(Debug)]
pub(crate) struct Pool(Arc<Connections>);

#[derive(Debug)]
struct Connections {
    connector: Connector,
    /// The `Host` of every HTTP/1.1 request, made once.
    host: Option<HeaderValue>,
    idle: Mutex<Vec<(Instant, http1::SendRequest<Body>)>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Pool {
    /// A pool for the server at `uri`.
    pub(crate) fn new(connector: &Connector, uri: &Uri) -> Self {
        Self(Arc::new(Connections {
            connector: connector.clone(),
            host: host(uri),
            idle: Mutex::default(),
            h2: Mutex::default(),
        }))
    }

    /// Sends `request` (its URI absolute, on this pool's server) on an idle
    /// connection, or on a new one.
    pub(crate) async fn send(&self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let mut request = request;
        // A pooled connection that closed before the request could be written gives
        // the request back; it goes once more, on a new connection.
        for fresh in [false, true] {
            let idle = if fresh {
                None
            } else {
                self.idle_sender().await
            };
            let sender = match idle {
                Some(sender) => sender,
                // Boxed: the connect and handshake futures are large, and a request
                // that finds an idle connection should not carry (and move) them.
                None => Box::pin(self.connect(request.uri().clone())).await?,
            };
            let sent = match sender {
                Sender::H2(mut h2) => match h2.try_send_request(request).await {
                    Ok(response) => Ok((response, None)),
                    Err(mut e) => Err((e.take_message(), e.into_error())),
                },
                Sender::H1(mut h1) => {
                    let (mut parts, body) = request.into_parts();
                    if let Some(host) = &self.0.host {
                        parts.headers.entry(HOST).or_insert_with(|| host.clone());
                    }
                    let origin = origin_form(&parts.uri);
                    let absolute = std::mem::replace(&mut parts.uri, origin);
                    match h1.try_send_request(Request::from_parts(parts, body)).await {
                        Ok(response) => Ok((response, Some(h1))),
                        Err(mut e) => {
                            let unsent = e.take_message().map(|mut unsent| {
                                *unsent.uri_mut() = absolute;
                                unsent
                            });
                            Err((unsent, e.into_error()))
                        }
                    }
                }
            };
            match sent {
                Ok((response, h1)) => return Ok(self.returning(response, h1)),
                Err((Some(unsent), _)) if !fresh => request = unsent,
                Err((_, e)) => return Err(e.into()),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The shared HTTP/2 connection, or the most recently used idle HTTP/1.1 one that
    /// is still open and ready.
    async fn idle_sender(&self) -> Option<Sender> {
        let h2 = lock(&self.0.h2)
            .as_ref()
            .filter(|h2| !h2.is_closed())
            .cloned();
        if let Some(h2) = h2 {
            return Some(Sender::H2(h2));
        }
        loop {
            let (since, h1) = lock(&self.0.idle).pop()?;
            if since.elapsed() >= POOL_IDLE || h1.is_closed() {
                continue;
            }
            // Its response body has ended, but its connection may not have run since
            // it read that end: it gets one turn.
            if !h1.is_ready() {
                tokio::task::yield_now().await;
            }
            // Not ready even then, it is still writing a request body that the
            // server answered early (and may never read): not worth waiting for.
            if h1.is_ready() {
                return Some(Sender::H1(h1));
            }
        }
    }

    async fn connect(&self, uri: Uri) -> Result<Sender, BoxError> {
        let io = self.0.connector.connect(uri).await?;
        if io.connected().is_negotiated_h2() {
            let (h2, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            spawn(connection);
            *lock(&self.0.h2) = Some(h2.clone());
            return Ok(Sender::H2(h2));
        }
        let (h1, connection) = http1::handshake(io).await?;
        spawn(connection);
        Ok(Sender::H1(h1))
    }

    /// The response, its body handing the HTTP/1.1 connection back to the pool when
    /// it has ended.
    fn returning(
        &self,
        response: Response<Incoming>,
        h1: Option<http1::SendRequest<Body>>,
    ) -> Response<Body> {
        response.map(|body| {
            let mut body = Returning {
                body,
                home: h1.map(|h1| (self.0.clone(), h1)),
            };
            if body.body.is_end_stream() {
                body.hand_back();
            }
            Body::new(body)
        })
    }
}

/// Drives a connection until it closes.
fn spawn(connection: impl Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `Host` for HTTP/1.1 requests to `uri`: its host, and its port unless that is the
/// scheme's default.
fn host(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let host = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&host).ok()
}

/// The path and query of `uri`, as an HTTP/1.1 request line to an origin names it.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(path) => Uri::from(path.clone()),
        None => Uri::from_static("/"),
    }
}

/// A response body that hands its HTTP/1.1 connection back to the pool once it has
/// ended. A body dropped before its end closes the connection with it.
struct Returning {
    body: Incoming,
    home: Option<(Arc<Connections>, http1::SendRequest<Body>)>,
}

impl Returning {
    fn hand_back(&mut self) {
        if let Some((pool, h1)) = self.home.take() {
            let now = Instant::now();
            let mut idle = lock(&pool.idle);
            // Oldest first (connections are taken from the end): those idle too long
            // close now rather than when the server gives up on them.
            let stale = idle
                .partition_point(|(since, _)| now.saturating_duration_since(*since) >= POOL_IDLE);
            idle.drain(..stale);
            idle.push((now, h1));
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // The server stops polling a body whose length it knows once it has that
        // many bytes, so the end is also when the body says it is.
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.hand_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether requests to `uri` go through a proxy, by the environment (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), read as reqwest reads it.
pub(crate) fn system_proxy(uri: &Uri) -> bool {
    static SYSTEM: LazyLock<Matcher> = LazyLock::new(Matcher::from_system);
    SYSTEM.intercept(uri).is_some()
}

/// The TLS settings of every HTTP client in the process: the system's roots are
/// read and parsed once (that takes milliseconds, which a `latchkey stdio` start
/// would otherwise pay once per client).
pub(crate) static TLS: LazyLock<rustls::ClientConfig> = LazyLock::new(|| {
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions();
    match config {
        Ok(config) => config
            .with_root_certificates(system_roots())
            .with_no_client_auth(),
        // ring's default provider supports the default versions.
        Err(e) => unreachable!("rustls rejects its own defaults: {e}"),
    }
});

/// The TLS settings for reqwest, which (given its own config) negotiates HTTP/2
/// only if the config offers it.
pub(crate) fn reqwest_tls() -> rustls::ClientConfig {
    let mut config = TLS.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The platform's trusted roots. Unreadable certificates are skipped, as reqwest
/// does: an `https` upstream that cannot be verified then fails with a certificate
/// error that names the cause, while `http` upstreams keep working.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "skipping a system CA certificate");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(ignored, "skipped unparsable system CA certificates");
    }
    if roots.is_empty() {
        tracing::warn!(
            "no system CA certificates found: https upstreams will fail verification (install ca-certificates)"
        );
    }
    roots
}
