//! `GET /`: what latchkey serves, as JSON for programs and as a page for a browser.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::HeaderMap;
use http::header::ACCEPT;
use serde_json::{Value, json};
use url::Url;

use crate::proxy::Proxy;

pub(crate) async fn page(State(proxy): State<Proxy>, headers: HeaderMap) -> Response {
    let servers: Vec<Value> = proxy
        .upstreams()
        .map(|upstream| {
            let server = &upstream.config;
            let error = upstream.last_error();
            json!({
                "name": server.name,
                "local_path": format!("/{}", server.name),
                "upstream": redacted(&server.url),
                "transport": server.transport.as_str(),
                "state": if error.is_some() { "error" } else { "ready" },
                "error": error,
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
        rows.push_str(&format!(
            "<tr><td><a href=\"{path}\">{name}</a></td><td>{upstream}</td><td>{transport}</td><td class=\"{state}\">{state}</td><td>{error}</td></tr>\n",
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
