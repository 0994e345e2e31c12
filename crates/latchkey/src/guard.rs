//! DNS-rebinding and cross-site protection for the local endpoint.
//!
//! The local endpoint has no authentication of its own, so a web page in the user's
//! browser must not be able to reach it: not by pointing its own host name at
//! 127.0.0.1 (rebinding, caught by `Host`), nor by a cross-site `fetch` (caught by
//! `Origin`). Non-browser clients send no `Origin`, which is allowed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::future::Future;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, HOST,
    ORIGIN, VARY,
};
use http::{HeaderValue, Method, StatusCode};

use crate::config::Config;

const SEC_FETCH_SITE: &str = "sec-fetch-site";
use crate::error::ProxyError;

#[derive(Debug, Clone)]
pub(crate) struct Guard {
    local: SocketAddr,
    /// Swapped by a reload (`allowed_hosts`, `allowed_origins`).
    lists: Arc<ArcSwap<Lists>>,
}

#[derive(Debug)]
struct Lists {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Guard {
    /// `local` is the address actually bound, so port 0 in the config works.
    pub(crate) fn new(local: SocketAddr, config: &Config) -> Self {
        Self {
            local,
            lists: Arc::new(ArcSwap::from_pointee(Lists::new(local, config))),
        }
    }

    /// Puts a reloaded config's `allowed_hosts` and `allowed_origins` in force.
    pub(crate) fn reload(&self, config: &Config) {
        self.lists.store(Arc::new(Lists::new(self.local, config)));
    }

    fn check(&self, request: &Request) -> Result<(), ProxyError> {
        self.lists.load().check(request)
    }
}

impl Lists {
    fn new(local: SocketAddr, config: &Config) -> Self {
        let port = local.port();
        let mut names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "[::1]".to_owned(),
        ];
        // The address actually bound (127.0.0.2, or a non-loopback one allowed by
        // allow_non_loopback) is also a name clients may use.
        match local.ip() {
            ip if ip.is_unspecified() => {}
            IpAddr::V4(ip) if ip.is_loopback() && ip.octets() == [127, 0, 0, 1] => {}
            IpAddr::V6(ip) if ip.is_loopback() => {}
            IpAddr::V4(ip) => names.push(ip.to_string()),
            IpAddr::V6(ip) => names.push(format!("[{ip}]")),
        }
        let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
        if port == 80 {
            hosts.extend(names.iter().cloned());
        }
        hosts.extend(config.allowed_hosts.iter().cloned());
        let mut origins: Vec<String> = names.iter().map(|n| format!("http://{n}:{port}")).collect();
        origins.extend(config.allowed_origins.iter().cloned());
        Self { hosts, origins }
    }

    fn check(&self, request: &Request) -> Result<(), ProxyError> {
        let headers = request.headers();
        if headers.get_all(HOST).iter().nth(1).is_some()
            || headers.get_all(ORIGIN).iter().nth(1).is_some()
        {
            return Err(ProxyError::Forbidden(
                "request has more than one Host or Origin header".into(),
            ));
        }
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ProxyError::Forbidden("request has no valid Host header".into()))?;
        // An absolute-form request line (`POST http://other/...`) names its own host.
        let authority = request.uri().authority().map(|a| a.as_str());
        let known = |name: &str| self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name));
        if !known(host) || authority.is_some_and(|a| !known(a)) {
            return Err(ProxyError::Forbidden(format!(
                "Host {host:?} is not this latchkey (DNS rebinding protection); to reach latchkey under another name, add it to allowed_hosts in the config"
            )));
        }
        match headers.get(ORIGIN) {
            Some(origin) => {
                let origin = origin.to_str().unwrap_or("");
                if !self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                    return Err(ProxyError::Forbidden(format!(
                        "Origin {origin:?} may not use latchkey (cross-site protection); to allow a web app, add its origin to allowed_origins in the config"
                    )));
                }
            }
            // Browsers leave out `Origin` on some cross-site GETs (an <img> or
            // <script> tag) but always mark them with Sec-Fetch-Site.
            None if headers
                .get(SEC_FETCH_SITE)
                .is_some_and(|site| site == "cross-site") =>
            {
                return Err(ProxyError::Forbidden(
                    "cross-site browser requests may not use latchkey".into(),
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// Refuses a request from elsewhere, answers CORS preflights for allowed browser
/// origins, and otherwise hands the request to `next`.
pub(crate) async fn check<F, Fut>(guard: &Guard, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if let Err(e) = guard.check(&request) {
        return e.into_response();
    }
    // An allowed browser origin (a web-based MCP client) needs CORS to read replies.
    let Some(origin) = request.headers().get(ORIGIN).cloned() else {
        return next(request).await;
    };
    if request.method() == Method::OPTIONS {
        return preflight(&request, origin);
    }
    let mut response = next(request).await;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(VARY, HeaderValue::from_static("origin"));
    response
}

/// Response headers a browser client must be able to read.
const EXPOSED: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

fn preflight(request: &Request, origin: HeaderValue) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    if let Some(asked) = request.headers().get(ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    headers.append(VARY, HeaderValue::from_static("origin"));
    response
}
