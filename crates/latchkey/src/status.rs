//! `GET /`: what latchkey serves, as JSON for programs and as a page for a browser.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::HeaderMap;
use http::header::ACCEPT;
use latchkey_auth::session::AuthStatus;
use serde_json::{Value, json};
use std::time::SystemTime;
use url::Url;

use crate::proxy::Proxy;

pub(crate) async fn page(State(proxy): State<Proxy>, headers: HeaderMap) -> Response {
    let servers: Vec<Value> = proxy
        .upstreams()
        .map(|upstream| {
            let server = &upstream.config;
            let mut error = upstream.last_error();
            let mut state = if error.is_some() { "error" } else { "ready" };
            let mut auth = json!({ "oauth": upstream.auth.is_some() });
            if let Some(upstream_auth) = &upstream.auth {
                let status = upstream_auth.session.status();
                if error.is_none() {
                    state = status.name();
                }
                match status {
                    AuthStatus::Authorizing { url } => auth["authorization_url"] = json!(url),
                    AuthStatus::NeedsAuth { reason } => auth["reason"] = json!(reason),
                    AuthStatus::NeedsClientRegistration { message }
                    | AuthStatus::Error { message } => {
                        error.get_or_insert(message);
                    }
                    AuthStatus::Ready => {}
                }
                if let Some((expires_at, scopes)) = upstream_auth.session.token_info() {
                    auth["scopes"] = json!(scopes);
                    auth["expires_in_secs"] = json!(expires_at.map(|at| {
                        at.duration_since(SystemTime::now())
                            .map_or(0, |d| d.as_secs())
                    }));
                }
            }
            json!({
                "name": server.name,
                "local_path": format!("/{}", server.name),
                "upstream": redacted(&server.url),
                "transport": server.transport.as_str(),
                "state": state,
                "error": error,
                "auth": auth,
            })
        })
        .collect();
    let wants_html = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        Html(render(&servers)).into_response()
    } else {
        axum::Json(json!({ "version": env!("CARGO_PKG_VERSION"), "servers": servers }))
            .into_response()
    }
}

/// The URL without its query string, whose values may be API keys, and without
/// user info.
pub(crate) fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.query().is_some() {
        shown.set_query(Some("…"));
    }
    // Cannot fail for http(s) URLs, the only ones the config accepts.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn render(servers: &[Value]) -> String {
    let mut rows = String::new();
    for server in servers {
        let field = |key: &str| escape(server[key].as_str().unwrap_or(""));
        let login = server["auth"]["authorization_url"]
            .as_str()
            .map(|url| {
                format!(
                    " <a href=\"{}\" target=\"_blank\" rel=\"noopener\">sign in</a>",
                    escape(url)
                )
            })
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td><a href=\"{path}\">{name}</a></td><td>{upstream}</td><td>{transport}</td><td class=\"{state}\">{state}{login}</td><td>{error}</td></tr>\n",
            path = field("local_path"),
            name = field("name"),
            upstream = field("upstream"),
            transport = field("transport"),
            state = field("state"),
            error = field("error"),
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>latchkey</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}.ready{{color:#060}}.error{{color:#a00}}</style>\
</head><body><h1>latchkey {version}</h1>\n<table><tr><th>server</th><th>upstream</th><th>transport</th><th>state</th><th>last error</th></tr>\n{rows}</table></body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
