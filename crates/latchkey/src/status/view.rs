//! What `GET /` says of one server, as JSON: the fields programs have read since the
//! first release (`state`, `error`, `auth`, …) and, for people, a `summary` (one of
//! five states with what it means and how to fix it), the `traffic` since start, the
//! local URL and the client snippets. The page (`html.rs`) is drawn from this value
//! alone, so the two never disagree.

use std::time::{SystemTime, UNIX_EPOCH};

use latchkey_auth::session::{AuthStatus, Grant};
use serde_json::{Value, json};
use url::Url;

use crate::config::{OAuth, Server};
use crate::server::{NO_REFRESH_TOKEN, Seen, Upstream, UpstreamAuth, login_path};

use super::SIGN_OUT_PATH;

/// The five states a person sees, in the words the page uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NoSignInNeeded,
    SignedIn,
    SignInNeeded,
    SigningIn,
    Error,
}

impl State {
    fn key(self) -> &'static str {
        match self {
            Self::NoSignInNeeded => "no_sign_in_needed",
            Self::SignedIn => "signed_in",
            Self::SignInNeeded => "sign_in_needed",
            Self::SigningIn => "signing_in",
            Self::Error => "error",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::NoSignInNeeded => "No sign-in needed",
            Self::SignedIn => "Signed in",
            Self::SignInNeeded => "Sign-in needed",
            Self::SigningIn => "Signing in",
            Self::Error => "Error",
        }
    }
}

/// A state, what it means here, and for an error, the fix.
type Summary = (State, Option<String>, Option<String>);

/// `host`: the request's own `Host` (checked by the guard), so the local URL is the
/// one this browser reached latchkey at.
pub(super) fn server(upstream: &Upstream, host: &str) -> Value {
    let server = &upstream.config;
    let name = &server.name;
    let transport_error = upstream.last_error();
    let seen = upstream.traffic.seen();
    let mut state = if transport_error.is_some() {
        "error"
    } else {
        "ready"
    };
    let mut error = transport_error.clone();
    let mut auth = json!({ "oauth": upstream.auth.is_some() });
    let from_auth = upstream.auth.as_ref().map(|upstream_auth| {
        let status = upstream_auth.session.status();
        if error.is_none() {
            state = status.name();
        }
        if let AuthStatus::NeedsClientRegistration { message } | AuthStatus::Error { message } =
            &status
        {
            error.get_or_insert(message.clone());
        }
        oauth(upstream_auth, server, status, &seen, &mut auth)
    });
    let (summary, detail, fix) = match (&transport_error, from_auth) {
        (Some(cause), _) => (
            State::Error,
            Some(format!("Could not reach the server: {cause}")),
            Some(format!(
                "Check that the server is up and that url under [servers.{name}] is its MCP endpoint; `latchkey doctor` tests it."
            )),
        ),
        (None, Some(summary)) => summary,
        (None, None) if let Some(status) = asked_for_credentials(&seen) => (
            State::Error,
            Some(format!(
                "The server refused the configured headers (HTTP {status})."
            )),
            Some(format!(
                "Check the headers under [servers.{name}] (an API key that is wrong or unset?), or remove `oauth = false` there so that latchkey signs in."
            )),
        ),
        (None, None) => (
            State::NoSignInNeeded,
            Some(format!(
                "No OAuth (`oauth = false` under [servers.{name}]): requests carry only the configured headers."
            )),
            None,
        ),
    };
    // The button that may help; none for a server that cannot be reached.
    // Nor where latchkey needs a client registered first.
    let button = match summary {
        State::SignInNeeded | State::Error
            if transport_error.is_none() && state != "needs_client_registration" =>
        {
            match auth["needs_a_person"].as_bool() {
                Some(false) => Some("get_token"),
                Some(true) => Some("sign_in"),
                None => None,
            }
        }
        _ => None,
    };
    let local_url = (!server.local_key).then(|| format!("http://{host}/{name}"));
    // A keyed server's URL is never shown (`latchkey url NAME` prints it), so only
    // the stdio snippets, which need no URL.
    let snippets: Vec<_> = crate::snippets::snippets(
        name,
        local_url.as_deref().unwrap_or(""),
        server.config_file.as_deref(),
    )
    .into_iter()
    .filter(|s| local_url.is_some() || s.form == "stdio")
    .collect();
    json!({
        "name": name,
        // Never a key: `latchkey url NAME` prints a keyed server's URL.
        "local_path": if server.local_key {
            format!("/k/…/{name}")
        } else {
            format!("/{name}")
        },
        "local_url": local_url,
        "local_key": server.local_key,
        "upstream": crate::redact::redacted(&server.url),
        "transport": server.transport.as_str(),
        "state": state,
        "error": error,
        "summary": {
            "state": summary.key(),
            "text": summary.text(),
            "detail": detail,
            "fix": fix,
            "button": button,
        },
        "auth": auth,
        "traffic": {
            "requests": seen.requests,
            "errors": seen.errors,
            "last_request": seen.last.map(|(at, status)| json!({
                "at": unix_secs(at),
                "status": status,
            })),
        },
        "snippets": snippets,
    })
}

/// An OAuth server's `auth` fields, and its summary.
fn oauth(
    upstream_auth: &UpstreamAuth,
    server: &Server,
    status: AuthStatus,
    seen: &Seen,
    auth: &mut Value,
) -> Summary {
    let session = &upstream_auth.session;
    let name = &server.name;
    let token = session.token_info();
    auth["signed_in"] = json!(token.is_some());
    if let Some(issuer) = session.issuer() {
        auth["issuer"] = json!(issuer);
    }
    let renewable = session.renewable();
    if let Some(renewable) = renewable {
        auth["refresh_token"] = json!(renewable);
        if !renewable {
            auth["warning"] = json!(NO_REFRESH_TOKEN);
        }
    }
    auth["refresh_token_held"] = json!(session.holds_refresh_token());
    auth["unattended"] = json!(matches!(&server.oauth, OAuth::Enabled(o) if o.grant.unattended()));
    // No person at any step (the enterprise grant needs one at the IdP, once).
    let by_itself = matches!(&server.oauth,
        OAuth::Enabled(o) if matches!(o.grant, Grant::ClientCredentials | Grant::JwtBearer(_)));
    auth["needs_a_person"] = json!(!by_itself);
    let mut expired = false;
    if let Some((expires_at, scopes)) = &token {
        auth["scopes"] = json!(scopes);
        auth["expires_in_secs"] = json!(expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs())
        }));
        auth["expires_at"] = json!(expires_at.map(unix_secs));
        expired = expires_at.is_some_and(|at| at <= SystemTime::now());
        auth["sign_out"] = json!(SIGN_OUT_PATH.replace("{server}", name));
    }
    let notice = upstream_auth.notice().clone();
    if let Some(notice) = notice {
        auth["notice"] = json!(notice);
    }
    let said = |text: &str| Some(text.to_owned());
    match status {
        AuthStatus::Authorizing { url, reached } => {
            auth["sign_in"] = json!(login_path(name));
            // Where the person will sign in: the origin, never the URL.
            let origin = Url::parse(&url)
                .map(|u| u.origin().ascii_serialization())
                .ok();
            auth["authorization_server"] = json!(origin);
            auth["reached"] = json!(reached);
            let at = origin.unwrap_or_else(|| "the authorization server".into());
            let detail = if reached == Some(false) {
                format!(
                    "Waiting for you at {at}; the browser could not be opened, so open the sign-in page."
                )
            } else {
                format!("Waiting for you to sign in at {at}.")
            };
            (State::SigningIn, Some(detail), None)
        }
        // No login would help: the grant's own settings are what was refused.
        AuthStatus::NeedsAuth { reason } if by_itself => (
            State::Error,
            Some(reason),
            Some(format!(
                "Check the grant's settings under [servers.{name}.oauth] (the client's credentials or the workload's token), then press Get a token; `latchkey doctor` checks the setup."
            )),
        ),
        AuthStatus::NeedsAuth { reason } => {
            auth["reason"] = json!(reason);
            (State::SignInNeeded, Some(reason), None)
        }
        AuthStatus::NeedsClientRegistration { message } => (
            State::Error,
            Some(message),
            Some(format!(
                "Register latchkey as a client at the authorization server, then set client_id under [servers.{name}.oauth] and reload latchkey."
            )),
        ),
        AuthStatus::Error { message } => (
            State::Error,
            Some(message),
            Some(format!(
                "Press {} to try again, or run `{}` to see each step; `latchkey doctor` checks the setup.",
                if by_itself { "Get a token" } else { "Sign in" },
                server.login_command
            )),
        ),
        // The server's last answer to a request without a token was a success.
        AuthStatus::Ready
            if token.is_none() && seen.status().is_some_and(|status| status < 300) =>
        {
            (
                State::NoSignInNeeded,
                said("The server answers without a sign-in."),
                None,
            )
        }
        AuthStatus::Ready if token.is_none() && by_itself => (
            State::NoSignInNeeded,
            said("No sign-in needed: latchkey gets its tokens by itself, at the first request."),
            None,
        ),
        AuthStatus::Ready if token.is_none() && asked_for_credentials(seen).is_some() => (
            State::SignInNeeded,
            said(
                "The server asks for a sign-in: sign in now, or latchkey asks when a client first uses it.",
            ),
            None,
        ),
        AuthStatus::Ready if token.is_none() => (
            State::SignInNeeded,
            said(
                "Not signed in yet: sign in now, or latchkey asks when the server first wants it.",
            ),
            None,
        ),
        AuthStatus::Ready if expired && renewable == Some(false) => (
            State::SignInNeeded,
            said("The token has expired, and there is no refresh token to renew it."),
            None,
        ),
        AuthStatus::Ready => (
            State::SignedIn,
            said(
                "As far as latchkey can tell: it holds a token, and the server has not refused it.",
            ),
            None,
        ),
    }
}

/// The status with which the server asked for credentials, if it did: its answer to
/// the page's look (401 or 403), or a request's 401. Not a request's 403, which may
/// be latchkey's own (a wrong key URL); latchkey never answers 401 itself.
fn asked_for_credentials(seen: &Seen) -> Option<u16> {
    match seen.last {
        Some((_, status)) => (status == 401).then_some(status),
        None => seen.looked.filter(|&status| status == 401 || status == 403),
    }
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
