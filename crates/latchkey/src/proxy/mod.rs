//! The local endpoint: a transparent, streaming reverse proxy.
//!
//! A request to `/<server>` is forwarded to that server's `url` with the client's
//! headers (less the ones in [`headers`]) plus the configured static headers. Bodies
//! are streamed both ways, frame by frame: nothing is buffered whole, an SSE event
//! reaches the client as soon as it arrives, and a client that goes away drops the
//! upstream request with it. The per-request work is header edits.

mod headers;
mod sse_endpoint;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::{Config, Server, Transport};
use crate::error::{ProxyError, describe};
use sse_endpoint::EndpointRewriter;
pub(crate) use sse_endpoint::LegacyEndpoints;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the request handlers share.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    servers: Arc<HashMap<String, Arc<Upstream>>>,
    /// Names in config order, for listings.
    order: Arc<[String]>,
    client: reqwest::Client,
    legacy: LegacyEndpoints,
    /// Cancelled at shutdown: standalone SSE streams (GET) end then, so that draining
    /// waits only for requests that will finish.
    shutdown: CancellationToken,
}

/// One configured server and what latchkey has seen of it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) config: Server,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Upstream {
    /// The last transport failure, if the most recent attempt failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, outcome: Result<(), &str>) {
        match outcome {
            // The common case costs one atomic load.
            Ok(()) if !self.failing.load(Ordering::Relaxed) => {}
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(cause) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(cause.to_owned());
                self.failing.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Proxy {
    pub(crate) fn new(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A transparent proxy hands redirects to the client; following them here
            // would also send the credentials to wherever they point.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let servers = config
            .servers
            .iter()
            .map(|server| {
                let upstream = Upstream {
                    config: server.clone(),
                    failing: AtomicBool::new(false),
                    last_error: Mutex::new(None),
                };
                (server.name.clone(), Arc::new(upstream))
            })
            .collect();
        Ok(Self {
            servers: Arc::new(servers),
            order: config.servers.iter().map(|s| s.name.clone()).collect(),
            client,
            legacy: LegacyEndpoints::default(),
            shutdown,
        })
    }

    pub(crate) fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.order.iter().filter_map(|name| self.servers.get(name))
    }

    fn upstream(&self, name: &str) -> Result<&Arc<Upstream>, ProxyError> {
        self.servers
            .get(name)
            .ok_or_else(|| ProxyError::UnknownServer {
                name: name.to_owned(),
                known: self.order.join(", "),
            })
    }
}

/// `POST|GET|DELETE /<server>`: forward to the server's URL.
pub(crate) async fn forward(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ProxyError> {
    let upstream = proxy.upstream(&name)?;
    if !matches!(
        *request.method(),
        Method::POST | Method::GET | Method::DELETE
    ) {
        return Err(ProxyError::MethodNotAllowed {
            method: request.method().to_string(),
            path: format!("/{name}"),
        });
    }
    let url = upstream.config.url.clone();
    send(&proxy, upstream, url, request).await
}

/// `POST /<server>/messages/<token>`: a legacy (2024-11-05) client posting to the
/// endpoint that latchkey announced in place of the upstream's.
pub(crate) async fn legacy_message(
    State(proxy): State<Proxy>,
    Path((name, token)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ProxyError> {
    let upstream = proxy.upstream(&name)?;
    let url = proxy
        .legacy
        .get(&token)
        .ok_or_else(|| ProxyError::UnknownLegacyEndpoint {
            path: format!("/{name}/messages/{token}"),
        })?;
    if request.method() != Method::POST {
        return Err(ProxyError::MethodNotAllowed {
            method: request.method().to_string(),
            path: format!("/{name}/messages/{token}"),
        });
    }
    send(&proxy, upstream, url, request).await
}

async fn send(
    proxy: &Proxy,
    upstream: &Upstream,
    url: Url,
    request: Request,
) -> Result<Response, ProxyError> {
    let server = &upstream.config;
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    headers::to_upstream(&mut headers);
    // A standalone GET stream may be a legacy SSE stream whose first event we rewrite;
    // that needs the bytes as sent.
    let rewrite_endpoint =
        parts.method == Method::GET && server.transport != Transport::StreamableHttp;
    if rewrite_endpoint {
        headers.remove(ACCEPT_ENCODING);
    }
    for (name, value) in &server.headers {
        headers.insert(name.clone(), value.clone());
    }

    let response = proxy
        .client
        .request(parts.method.clone(), url.clone())
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let mut response = match response {
        Ok(response) => response,
        Err(e) => {
            let cause = describe(e);
            upstream.record(Err(&cause));
            return Err(ProxyError::Upstream {
                server: server.name.clone(),
                url: crate::status::redacted(&server.url),
                cause,
            });
        }
    };
    upstream.record(Ok(()));

    let status = response.status();
    let mut headers = std::mem::take(response.headers_mut());
    headers::to_client(&mut headers);
    let is_sse = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let stream = response.bytes_stream();
    let body = if parts.method == Method::GET && is_sse {
        // Standalone streams last until a side closes them; at shutdown latchkey does.
        let stream = Box::pin(stream.take_until(proxy.shutdown.clone().cancelled_owned()));
        if rewrite_endpoint && !headers.contains_key(CONTENT_ENCODING) && status == StatusCode::OK {
            Body::from_stream(EndpointRewriter::new(
                stream,
                url,
                &server.name,
                proxy.legacy.clone(),
            ))
        } else {
            Body::from_stream(stream)
        }
    } else {
        Body::from_stream(stream)
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}
