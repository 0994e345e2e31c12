//! DNS-rebinding and cross-site protection for the local endpoint.
//!
//! The local endpoint has no authentication of its own, so a web page in the user's
//! browser must not be able to reach it: not by pointing its own host name at
//! 127.0.0.1 (rebinding, caught by `Host`), nor by a cross-site `fetch` (caught by
//! `Origin`). Non-browser clients send no `Origin`, which is allowed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{HOST, ORIGIN};

use crate::config::Config;

const SEC_FETCH_SITE: &str = "sec-fetch-site";
use crate::error::ProxyError;

#[derive(Debug, Clone)]
pub(crate) struct Guard {
    hosts: Arc<[String]>,
    origins: Arc<[String]>,
}

impl Guard {
    /// `local` is the address actually bound, so port 0 in the config works.
    pub(crate) fn new(local: SocketAddr, config: &Config) -> Self {
        let port = local.port();
        let mut names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "[::1]".to_owned(),
        ];
        // A non-loopback listen address (allowed only by allow_non_loopback) is also
        // a name clients may use.
        match local.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => {}
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
        Self {
            hosts: hosts.into(),
            origins: origins.into(),
        }
    }

    fn check(&self, request: &Request) -> Result<(), ProxyError> {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| ProxyError::Forbidden("request has no valid Host header".into()))?;
        if !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Err(ProxyError::Forbidden(format!(
                "Host {host:?} is not this latchkey (DNS rebinding protection); to reach latchkey under another name, add it to allowed_hosts in the config"
            )));
        }
        match request.headers().get(ORIGIN) {
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
            None if request
                .headers()
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

pub(crate) async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
