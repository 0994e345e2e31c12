//! `GET /`: what latchkey serves, as JSON for programs and as a page for a browser.

use axum::extract::{Form, Path, State};
use axum::response::{Html, IntoResponse, Response};
use http::HeaderMap;
use http::header::ACCEPT;
use latchkey_auth::session::{AuthStatus, Trigger};
use serde_json::{Value, json};
use std::time::SystemTime;
use url::Url;

use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::server::{NO_REFRESH_TOKEN, login_path};

/// Where the page's "Authorize" buttons post. Server names cannot start with a dot, so
/// this never shadows a server.
pub(crate) const AUTHORIZE_PATH: &str = "/.latchkey/authorize/{server}";

pub(crate) async fn page(State(proxy): State<Proxy>, headers: HeaderMap) -> Response {
    let servers: Vec<Value> = proxy
        .upstreams()
        .iter()
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
                    AuthStatus::Authorizing { url, .. } => {
                        auth["sign_in"] = json!(login_path(&server.name));
                        // Where the person will sign in: the origin, never the URL.
                        auth["authorization_server"] = json!(
                            Url::parse(&url)
                                .map(|u| u.origin().ascii_serialization())
                                .ok()
                        );
                    }
                    AuthStatus::NeedsAuth { reason } => auth["reason"] = json!(reason),
                    AuthStatus::NeedsClientRegistration { message }
                    | AuthStatus::Error { message } => {
                        error.get_or_insert(message);
                    }
                    AuthStatus::Ready => {}
                }
                if let Some(issuer) = upstream_auth.session.issuer() {
                    auth["issuer"] = json!(issuer);
                }
                let token = upstream_auth.session.token_info();
                auth["signed_in"] = json!(token.is_some());
                if let Some(renewable) = upstream_auth.session.renewable() {
                    auth["refresh_token"] = json!(renewable);
                    if !renewable {
                        auth["warning"] = json!(NO_REFRESH_TOKEN);
                    }
                }
                if let Some((expires_at, scopes)) = token {
                    auth["scopes"] = json!(scopes);
                    auth["expires_in_secs"] = json!(expires_at.map(|at| {
                        at.duration_since(SystemTime::now())
                            .map_or(0, |d| d.as_secs())
                    }));
                }
            }
            json!({
                "name": server.name,
                // Never a key: `latchkey url NAME` prints a keyed server's URL.
                "local_path": if server.local_key {
                    format!("/k/…/{}", server.name)
                } else {
                    format!("/{}", server.name)
                },
                "local_key": server.local_key,
                "upstream": crate::redact::redacted(&server.url),
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
        Html(render(&servers, proxy.csrf.expose())).into_response()
    } else {
        axum::Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "local_users": {
                "check": crate::peer::mechanism(),
                "allowed_uids": proxy.allowed_uids(),
            },
            "servers": servers,
        }))
        .into_response()
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct AuthorizeForm {
    csrf: String,
}

/// `POST /.latchkey/authorize/<server>` from the page's button: starts the login
/// (the browser opens, as on a first 401) and goes back to the page, which refreshes
/// itself while the login runs. The Host and Origin checks apply as everywhere; the
/// form's token is what a cross-site page cannot know.
pub(crate) async fn authorize(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    Form(form): Form<AuthorizeForm>,
) -> Result<Response, ProxyError> {
    if !proxy.csrf.matches(&form.csrf) {
        return Err(ProxyError::Forbidden(
            "the form's token is missing or stale; reload the status page and press the button again".into(),
        ));
    }
    let upstream = proxy.upstream(&name)?;
    if upstream.auth.is_none() {
        return Err(ProxyError::BadRequest(format!(
            "server {name:?} has oauth = false; there is nothing to authorize"
        )));
    }
    // The page does not wait: the flow runs on, and the page shows its progress.
    start_login(&proxy, &upstream).await;
    // Give the flow a moment to reach `authorizing`, so the page shows it at once.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok((http::StatusCode::SEE_OTHER, [(http::header::LOCATION, "/")]).into_response())
}

/// `GET /.latchkey/login/<server>`: sends the person's browser on to the pending
/// login's authorization URL, starting a login first when none runs. Only the user's
/// own processes reach it (the accept check), and only a navigation the person made
/// (Sec-Fetch-Site `none` or `same-origin`, or no browser at all).
pub(crate) async fn login(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ProxyError> {
    let site = headers
        .get("sec-fetch-site")
        .map(http::HeaderValue::as_bytes);
    if !matches!(site, None | Some(b"none" | b"same-origin")) {
        return Err(ProxyError::Forbidden(
            "a sign-in may only be started by opening this address, not from another site".into(),
        ));
    }
    let upstream = proxy.upstream(&name)?;
    let Some(auth) = &upstream.auth else {
        return Err(ProxyError::BadRequest(format!(
            "server {name:?} has oauth = false; there is nothing to sign in to"
        )));
    };
    if !matches!(auth.session.status(), AuthStatus::Authorizing { .. }) {
        start_login(&proxy, &upstream).await;
    }
    // A bounded wait for the flow to reach the authorization server.
    for _ in 0..50 {
        if let AuthStatus::Authorizing { url, .. } = auth.session.status() {
            return Ok(
                (http::StatusCode::SEE_OTHER, [(http::header::LOCATION, url)]).into_response(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok((http::StatusCode::SEE_OTHER, [(http::header::LOCATION, "/")]).into_response())
}

/// Starts a full login for `upstream` in the background.
async fn start_login(proxy: &Proxy, upstream: &crate::server::Upstream) {
    let Some(auth) = &upstream.auth else { return };
    // The server's own challenge names its scopes and metadata; without one,
    // discovery uses the well-known URLs.
    let challenge = crate::server::probe(proxy.http(), &upstream.config)
        .await
        .ok()
        .and_then(|p| p.challenge);
    let session = auth.session.clone();
    let trigger = Trigger {
        seen: session.bearer().1,
        challenge,
        step_up: false,
        full_login: true,
    };
    tokio::spawn(async move { drop(session.authorize(trigger).await) });
}

fn render(servers: &[Value], csrf: &str) -> String {
    let mut rows = String::new();
    let mut running = false;
    for server in servers {
        let field = |key: &str| escape(server[key].as_str().unwrap_or(""));
        let mut login = server["auth"]["sign_in"]
            .as_str()
            .map(|url| {
                format!(
                    " <a href=\"{}\" target=\"_blank\" rel=\"noopener\">sign in</a> at {}",
                    escape(url),
                    escape(
                        server["auth"]["authorization_server"]
                            .as_str()
                            .unwrap_or("?")
                    ),
                )
            })
            .unwrap_or_default();
        match server["state"].as_str() {
            Some("authorizing") => running = true,
            // Offered wherever a login could help: no token yet, or a failed one.
            Some(state)
                if server["auth"]["oauth"] == true
                    && (state != "ready" || server["auth"]["signed_in"] == false) =>
            {
                login.push_str(&format!(
                    " <form method=\"post\" action=\"/.latchkey/authorize/{name}\" style=\"display:inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Authorize</button></form>",
                    name = field("name"),
                    csrf = escape(csrf),
                ));
            }
            _ => {}
        }
        let mut expiry = server["auth"]["expires_in_secs"]
            .as_u64()
            .map(|secs| format!("{secs} s"))
            .unwrap_or_default();
        if let Some(warning) = server["auth"]["warning"].as_str() {
            expiry.push_str(&format!(" ({warning})"));
        }
        let scopes = server["auth"]["scopes"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        rows.push_str(&format!(
            "<tr data-server=\"{name}\"><td>{name}</td><td>{upstream}</td><td>{transport}</td><td class=\"{state}\" data-state=\"{state}\">{state}{login}</td><td>{expiry}</td><td>{scopes}</td><td>{error}</td></tr>\n",
            expiry = escape(&expiry),
            scopes = escape(&scopes),
            name = field("name"),
            upstream = field("upstream"),
            transport = field("transport"),
            state = field("state"),
            error = field("error"),
        ));
    }
    // While a login runs, the page refreshes itself until it ends.
    let refresh = if running {
        "<meta http-equiv=\"refresh\" content=\"2\">"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>latchkey</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}.ready{{color:#060}}.error{{color:#a00}}</style>\
</head><body><h1>latchkey {version}</h1>\n<table><tr><th>server</th><th>upstream</th><th>transport</th><th>state</th><th>token expires in</th><th>scopes</th><th>last error</th></tr>\n{rows}</table></body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
