//! DNS-rebinding and cross-site protection for the local endpoint.
//!
//! The local endpoint has no authentication of its own, so a web page in the user's
//! browser must not be able to reach it: not by pointing its own host name at
//! 127.0.0.1 (rebinding, caught by `Host`), nor by a cross-site `fetch` (caught by
//! `Origin`). Non-browser clients send no `Origin`, which is allowed.
//!
//! The proxy paths (`/<server>`, its legacy message paths) are for MCP clients, never
//! for a browser's own navigation: a page of a hostile upstream rendered there would
//! run in latchkey's origin and could call every other server. So browser navigations
//! to them get 403, any fetch not marked `Sec-Fetch-Site: none` or `same-origin` too
//! (another port of 127.0.0.1 is "same-site"), and whatever they relay is sandboxed.
//! latchkey's own origin is accepted only on the status page's paths, whose responses
//! may not be framed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::future::Future;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    CONTENT_SECURITY_POLICY, HOST, ORIGIN, VARY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
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
    /// latchkey's own origins: the status page's form posts carry one.
    own_origins: Vec<String>,
    /// `allowed_origins`: web-based MCP clients.
    origins: Vec<String>,
}

/// On every relayed response: nothing an upstream sends may run as latchkey's page.
const RELAYED_CSP: HeaderValue = HeaderValue::from_static("sandbox; default-src 'none'");
/// On latchkey's own pages: no framing (clickjacking of the buttons), no script.
const PAGE_CSP: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
);

/// Whether `path` is a proxy path rather than one of latchkey's own pages (`/` and
/// `/.latchkey/…`; server names cannot start with a dot).
fn is_proxy_path(path: &str) -> bool {
    path != "/" && !path.starts_with("/.")
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
        let own_origins = names.iter().map(|n| format!("http://{n}:{port}")).collect();
        Self {
            hosts,
            own_origins,
            origins: config.allowed_origins.clone(),
        }
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
        let proxied = is_proxy_path(request.uri().path());
        let mut web_app = false;
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let listed = |list: &[String]| list.iter().any(|o| o.eq_ignore_ascii_case(origin));
            web_app = listed(&self.origins);
            // A web app in allowed_origins may use the MCP endpoints, never the
            // status page's buttons (nor read its anti-CSRF token).
            if !proxied && web_app && !listed(&self.own_origins) {
                return Err(ProxyError::Forbidden(format!(
                    "Origin {origin:?} is allowed to use the MCP endpoints (allowed_origins), not latchkey's own pages"
                )));
            }
            if !web_app && (proxied || !listed(&self.own_origins)) {
                return Err(ProxyError::Forbidden(format!(
                    "Origin {origin:?} may not use latchkey (cross-site protection); to allow a web app, add its origin to allowed_origins in the config"
                )));
            }
        }
        if proxied {
            // Browsers mark every request with Sec-Fetch-*, also those that carry no
            // `Origin` (an <img>, a no-cors fetch). Other clients send none.
            let fetch = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
            if !web_app && !matches!(fetch(SEC_FETCH_SITE), None | Some(b"none" | b"same-origin")) {
                return Err(ProxyError::Forbidden(
                    "browser requests from other sites, other ports of this host included, may not use latchkey; to allow a web app, add its origin to allowed_origins".into(),
                ));
            }
            let navigation = fetch("sec-fetch-mode") == Some(b"navigate")
                || matches!(
                    fetch("sec-fetch-dest"),
                    Some(b"document" | b"iframe" | b"frame" | b"embed" | b"object")
                );
            if navigation {
                return Err(ProxyError::Forbidden(
                    "this is an MCP endpoint for MCP clients, not a page; open / for latchkey's status page".into(),
                ));
            }
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
    let proxied = is_proxy_path(request.uri().path());
    let mut response = match guard.check(&request) {
        Err(e) => e.into_response(),
        Ok(()) if proxied => cors(request, next).await,
        // latchkey's own pages are for its own origin only, which needs no CORS.
        Ok(()) => next(request).await,
    };
    let headers = response.headers_mut();
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if proxied {
        headers.insert(CONTENT_SECURITY_POLICY, RELAYED_CSP);
    } else {
        // The status page sets its own, which allows its one script by hash.
        headers.entry(CONTENT_SECURITY_POLICY).or_insert(PAGE_CSP);
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// Answers CORS preflights for allowed browser origins and lets them read replies.
async fn cors<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
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
