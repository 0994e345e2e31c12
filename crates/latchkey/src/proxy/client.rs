//! The upstream client on the hot path: hyper's pooled client, used directly.
//!
//! reqwest (which the OAuth code and the HTTP+SSE bridge use) is built on the same
//! client, but on every request it re-parses the URL (IDNA included), converts it to
//! a URI through a string, and wraps the body and the response in its own layers; on
//! a proxy whose per-request work should be header edits, that was a measurable
//! share of the CPU per call. Here each server's URI is parsed once, at config load,
//! and the client's body is handed on as it is.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::CONNECT_TIMEOUT;

/// How long an idle pooled connection is kept (reqwest's default).
const POOL_IDLE: Duration = Duration::from_secs(90);

pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

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
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(TLS.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
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
