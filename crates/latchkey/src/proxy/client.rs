//! The upstream client on the hot path: hyper's pooled client, used directly.
//!
//! reqwest (which the OAuth code and the HTTP+SSE bridge use) is built on the same
//! client, but on every request it re-parses the URL (IDNA included), converts it to
//! a URI through a string, and wraps the body and the response in its own layers; on
//! a proxy whose per-request work should be header edits, that was a measurable
//! share of the CPU per call. Here each server's URI is parsed once, at config load,
//! and the client's body is handed on as it is.
//!
//! What reqwest did besides, this client does too: a timeout on the whole connect
//! (DNS, TCP and TLS), TCP keepalive (so that a stream to an upstream that vanished
//! ends), and the system's proxy settings: a server that `HTTPS_PROXY` and friends
//! send through a proxy is forwarded with reqwest, which speaks to proxies
//! ([`system_proxy`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::CONNECT_TIMEOUT;

/// How long an idle pooled connection is kept (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);

/// TCP keepalive, as reqwest sets it: an idle connection is probed after 15 s, and
/// given up after 3 unanswered probes 15 s apart.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 3;

pub(crate) type UpstreamClient = Client<ConnectTimeout<HttpsConnector<HttpConnector>>, Body>;

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

/// The client, trusting the system's CA certificates for `https` upstreams.
pub(crate) fn upstream_client() -> UpstreamClient {
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
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(ConnectTimeout(connector))
}

/// The TLS settings for reqwest, which (given its own config) negotiates HTTP/2
/// only if the config offers it.
pub(crate) fn reqwest_tls() -> rustls::ClientConfig {
    let mut config = TLS.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A connector whose whole connect, TLS handshake included, must finish within
/// `CONNECT_TIMEOUT` (the TCP connector's own timeout covers only TCP): a server
/// that accepts and then stalls its handshake fails the request with a cause.
#[derive(Clone, Debug)]
pub(crate) struct ConnectTimeout<C>(C);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!(
                    "no connection within {} s (DNS, TCP or TLS handshake)",
                    CONNECT_TIMEOUT.as_secs()
                )
                .into()),
            }
        })
    }
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
