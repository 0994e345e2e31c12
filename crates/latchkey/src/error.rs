//! The one place where a failure becomes an HTTP response for the MCP client.
//!
//! Every error body is JSON-RPC shaped, so an MCP client that shows JSON-RPC errors to
//! its user shows ours too. The text names the server and the cause, never a header
//! value.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// JSON-RPC "server error" range, used for everything latchkey itself reports.
const JSONRPC_SERVER_ERROR: i64 = -32000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no server named {name:?} is configured; configured servers: {known}")]
    UnknownServer { name: String, known: String },
    #[error("latchkey cannot reach upstream server {server:?} at {url}: {cause}")]
    Upstream {
        server: String,
        url: String,
        cause: String,
    },
    #[error(
        "the SSE message endpoint {path} is unknown or its stream has closed; open the server's SSE stream again"
    )]
    UnknownLegacyEndpoint { path: String },
    #[error("session not found; it has ended, so start a new one with initialize")]
    UnknownSession,
    #[error(
        "server {server:?} needs a login that did not succeed: {message}; to log in from a terminal, run `{command}`"
    )]
    Auth {
        server: String,
        message: String,
        command: String,
    },
    #[error("server {server:?} needs a login in the browser, which has not finished yet{}, or run `{command}` in a terminal; then send the request again", .start_page.as_deref().map(|u| format!(": open {u}")).unwrap_or_default())]
    AuthTimeout {
        server: String,
        /// The path of latchkey's sign-in start page (never the authorization URL
        /// itself), as the status page links it, and the page's whole URL.
        sign_in: Option<String>,
        start_page: Option<String>,
        command: String,
    },
    #[error(
        "server {server:?} asked for a login, which is done now; the request was too large to keep, so send it again"
    )]
    SendAgain { server: String },
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "the key of server {server:?}'s URL is not available ({cause}); fix the credential store (`latchkey doctor`), then reload latchkey"
    )]
    LocalKey { server: String, cause: String },
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "the message is larger than {limit_mib} MiB, the most latchkey reads whole (for an HTTP+SSE server, or to detect the server's transport)"
    )]
    TooLarge { limit_mib: usize },
    #[error("{0}")]
    Conflict(String),
    #[error("method {method} is not supported on {path}; MCP uses POST, GET and DELETE")]
    MethodNotAllowed { method: String, path: String },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnknownServer { .. }
            | Self::UnknownLegacyEndpoint { .. }
            | Self::UnknownSession => StatusCode::NOT_FOUND,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            // Never 401: the MCP client would try OAuth itself.
            Self::Auth { .. }
            | Self::AuthTimeout { .. }
            | Self::SendAgain { .. }
            | Self::LocalKey { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut data = json!({ "latchkey": true });
        match &self {
            Self::Upstream { server, url, cause } => {
                data = json!({ "latchkey": true, "server": server, "url": url, "cause": cause });
            }
            Self::AuthTimeout {
                server,
                sign_in,
                command,
                ..
            } => {
                data = json!({
                    "latchkey": true,
                    "server": server,
                    "sign_in": sign_in,
                    "command": command,
                });
            }
            _ => {}
        }
        let body = json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": JSONRPC_SERVER_ERROR, "message": self.to_string(), "data": data },
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        }
        response
    }
}

/// A transport error as one line: the whole `source()` chain, without the URL (which
/// may carry a query-string key) that reqwest would otherwise print.
pub(crate) fn describe(error: reqwest::Error) -> String {
    describe_chain(&error.without_url())
}

/// An error and its causes, each once, as one line.
pub(crate) fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
