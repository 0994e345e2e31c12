//! What `latchkey add` tells a person about a server it has just added: can it be
//! reached, which transport it speaks, whether it needs a login and at which
//! authorization server. The same unauthenticated `initialize` the login starts
//! with (`server::probe`), then the discovery the login would run (RFC 9728, RFC
//! 8414), so that what `add` says is what the first request will meet.

use std::time::Duration;

use latchkey_auth::target::Http;

use crate::config::{OAuth, Server};
use crate::server::{oauth_clients, probe};

/// How long `add` waits for the server before saying it could not be reached: the
/// server is added either way.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Found {
    /// It answered `initialize` without asking for authorization.
    Open {
        transport: &'static str,
    },
    /// It asked for authorization; `issuer` is where the login goes, when found.
    NeedsLogin {
        issuer: Option<String>,
        /// Why the issuer is unknown, when it is.
        problem: Option<String>,
    },
    /// It asked for authorization and the server has `oauth = false`: the
    /// configured headers are not accepted.
    Refused {
        status: u16,
    },
    /// It answered, but not as an MCP server does.
    Unexpected {
        status: u16,
    },
    Unreachable {
        cause: String,
    },
}

pub async fn inspect(server: &Server) -> Found {
    match tokio::time::timeout(PATIENCE, look(server)).await {
        Ok(found) => found,
        Err(_) => Found::Unreachable {
            cause: format!("no answer within {} s", PATIENCE.as_secs()),
        },
    }
}

async fn look(server: &Server) -> Found {
    let http = match crate::server::http_client() {
        Ok(http) => http,
        Err(e) => {
            return Found::Unreachable {
                cause: crate::error::describe(e),
            };
        }
    };
    let probed = match probe(&http, server).await {
        Ok(p) => p,
        Err(e) => {
            return Found::Unreachable {
                cause: e.to_string(),
            };
        }
    };
    let status = probed.status.as_u16();
    if probed.status.is_success() {
        return Found::Open {
            transport: "Streamable HTTP",
        };
    }
    if !matches!(status, 401 | 403) {
        // A 2024-11-05 server has no POST endpoint at its SSE URL.
        if matches!(status, 404 | 405) && legacy_sse(&http, server).await {
            return Found::Open {
                transport: "HTTP+SSE (2024-11-05)",
            };
        }
        return Found::Unexpected { status };
    }
    if matches!(server.oauth, OAuth::Disabled) {
        return Found::Refused { status };
    }
    let clients = match oauth_clients() {
        Ok(c) => c,
        Err(e) => {
            return Found::NeedsLogin {
                issuer: None,
                problem: Some(crate::error::describe(e)),
            };
        }
    };
    let discovered = latchkey_auth::discovery::discover(
        &Http::new(clients, &server.url),
        &server.url,
        probed.challenge.as_ref(),
    )
    .await;
    match discovered {
        Ok(d) => Found::NeedsLogin {
            issuer: Some(d.server.issuer),
            problem: None,
        },
        Err(e) => Found::NeedsLogin {
            issuer: None,
            problem: Some(e.to_string()),
        },
    }
}

async fn legacy_sse(http: &reqwest::Client, server: &Server) -> bool {
    let mut request = http
        .get(server.url.clone())
        .header("accept", "text/event-stream");
    for (k, v) in &server.headers {
        request = request.header(k, v);
    }
    match request.send().await {
        Ok(response) => {
            response.status().is_success()
                && response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"))
        }
        Err(_) => false,
    }
}
