//! latchkey's own pages: `GET /` (JSON for programs, the control panel for a
//! person: `view.rs` says what each server's state is, `html.rs` draws it), its
//! Sign in and Sign out buttons, and the sign-in start page a login links to.
//!
//! Every path here is latchkey's own origin: the guard lets no other site's page
//! read or post to them, the buttons also carry an anti-CSRF token, and the page
//! may run only its own script (its hash is in the Content-Security-Policy).

mod html;
mod look;
mod view;

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::response::{Html, IntoResponse, Response};
use http::HeaderMap;
use http::header::{ACCEPT, HOST};
use latchkey_auth::session::{AuthStatus, Trigger};
use serde_json::{Value, json};

use crate::error::ProxyError;
use crate::proxy::Proxy;
use crate::server::Upstream;

/// Where the page's "Sign in" buttons post. Server names cannot start with a dot, so
/// this never shadows a server.
pub(crate) const AUTHORIZE_PATH: &str = "/.latchkey/authorize/{server}";
/// Where its "Sign out" buttons post.
pub(crate) const SIGN_OUT_PATH: &str = "/.latchkey/sign-out/{server}";

pub(crate) async fn page(State(proxy): State<Proxy>, headers: HeaderMap) -> Response {
    // The guard let only latchkey's own names through.
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let wants_html = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && look::by_the_person(&headers) {
        look::look_first(&proxy).await;
    }
    let servers: Vec<Value> = proxy
        .upstreams()
        .iter()
        .map(|upstream| view::server(upstream, host))
        .collect();
    if wants_html {
        (
            [(http::header::CONTENT_SECURITY_POLICY, html::csp())],
            Html(html::render(&servers, proxy.csrf.expose())),
        )
            .into_response()
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

/// The one field of both buttons' forms.
#[derive(serde::Deserialize)]
pub(crate) struct ButtonForm {
    csrf: String,
}

impl ButtonForm {
    /// The OAuth server a button names, once the form's token checks out.
    fn server(&self, proxy: &Proxy, name: &str, action: &str) -> Result<Arc<Upstream>, ProxyError> {
        if !proxy.csrf.matches(&self.csrf) {
            return Err(ProxyError::Forbidden(
                "the form's token is missing or stale; reload the status page and press the button again".into(),
            ));
        }
        let upstream = proxy.upstream(name)?;
        if upstream.auth.is_none() {
            return Err(ProxyError::BadRequest(format!(
                "server {name:?} has oauth = false; there is nothing to {action}"
            )));
        }
        Ok(upstream)
    }
}

/// The page again, after a button.
fn back() -> Response {
    (http::StatusCode::SEE_OTHER, [(http::header::LOCATION, "/")]).into_response()
}

/// `POST /.latchkey/authorize/<server>` from the page's button: starts the login
/// (the browser opens, as on a first 401) and goes back to the page, which refreshes
/// itself while the login runs. The Host and Origin checks apply as everywhere; the
/// form's token is what a cross-site page cannot know.
pub(crate) async fn authorize(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    Form(form): Form<ButtonForm>,
) -> Result<Response, ProxyError> {
    let upstream = form.server(&proxy, &name, "sign in to")?;
    if let Some(auth) = &upstream.auth {
        auth.notice().take();
    }
    // The page does not wait: the flow runs on, and the page shows its progress.
    start_login(&proxy, &upstream).await;
    // Give the flow a moment to reach `authorizing`, so the page shows it at once.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(back())
}

/// `POST /.latchkey/sign-out/<server>` from the page's "Sign out": what `latchkey
/// logout` does (the tokens revoked where the authorization server offers it, the
/// record deleted, every other latchkey process told), then back to the page, which
/// shows what could not be revoked.
pub(crate) async fn sign_out(
    State(proxy): State<Proxy>,
    Path(name): Path<String>,
    Form(form): Form<ButtonForm>,
) -> Result<Response, ProxyError> {
    let upstream = form.server(&proxy, &name, "sign out of")?;
    let Some(auth) = &upstream.auth else {
        return Ok(back());
    };
    let problems = auth
        .session
        .logout()
        .await
        .map_err(|e| ProxyError::Conflict(format!("signing out of {name:?} failed: {e}")))?;
    for problem in &problems {
        tracing::warn!(server = %name, problem = %problem, "signed out, but");
    }
    tracing::info!(server = %name, "signed out from the status page");
    *auth.notice() =
        (!problems.is_empty()).then(|| format!("Signed out, but {}.", problems.join("; ")));
    Ok(back())
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
    Ok(back())
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
