//! The page's first look at the servers no client has used yet. Until a request
//! goes through, latchkey cannot tell an open server from one that wants a sign-in,
//! or a dead one from either; a person reading the page should not get a guess. So
//! the first time the page is read, each such server gets the unauthenticated
//! `initialize` a login starts with (`server::probe`, which ends any session it
//! opens), once per server and daemon (a reload makes new servers). The page waits a
//! little for the answers; a late one shows at its next poll.
//!
//! Only the person's own reading of the page looks: not its JSON (programs), and not
//! a page of another site that frames or fetches it, which must not make latchkey
//! send the configured credentials anywhere (the attacks tests).

use std::time::Duration;

use futures_util::future::join_all;
use http::HeaderMap;
use reqwest::StatusCode;

use crate::config::{Server, Transport};
use crate::proxy::Proxy;

/// How long the page waits for the answers before it is drawn without them.
const PAGE_WAIT: Duration = Duration::from_millis(1500);
/// How long a look may take at all, as `latchkey add`'s probe.
const PATIENCE: Duration = Duration::from_secs(10);

/// The request is the person's: typed or bookmarked (`Sec-Fetch-Site: none`), the
/// page's own poll (`same-origin`), or no browser at all (no such header; other
/// users' programs are refused before this).
pub(super) fn by_the_person(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_none_or(|site| site == "none" || site == "same-origin")
}

pub(super) async fn look_first(proxy: &Proxy) {
    let looks: Vec<_> = proxy
        .upstreams()
        .into_iter()
        .filter(|upstream| {
            let held = upstream
                .auth
                .as_ref()
                .is_some_and(|auth| auth.session.token_info().is_some());
            !held && upstream.traffic.start_look()
        })
        .map(|upstream| {
            let http = proxy.http().clone();
            tokio::spawn(async move {
                match tokio::time::timeout(PATIENCE, answer(&http, &upstream.config)).await {
                    Ok(Ok(status)) => upstream.traffic.looked(status),
                    Ok(Err(cause)) => upstream.record(Err(&cause)),
                    Err(_) => {
                        upstream.record(Err(&format!("no answer within {} s", PATIENCE.as_secs())))
                    }
                }
            })
        })
        .collect();
    if !looks.is_empty() {
        drop(tokio::time::timeout(PAGE_WAIT, join_all(looks)).await);
    }
}

/// The status of the server's answer to a client without credentials.
async fn answer(http: &reqwest::Client, server: &Server) -> Result<StatusCode, String> {
    if server.transport != Transport::Sse {
        let probe = crate::server::probe(http, server)
            .await
            .map_err(|crate::server::ProbeError::Unreachable { cause, .. }| cause)?;
        // A 2024-11-05 server refuses a POST to its SSE URL; its GET tells.
        let legacy = matches!(probe.status.as_u16(), 400 | 404 | 405);
        if server.transport == Transport::StreamableHttp || !legacy {
            return Ok(probe.status);
        }
    }
    let mut request = http
        .get(server.url.clone())
        .header("accept", "text/event-stream");
    for (key, value) in &server.headers {
        request = request.header(key, value);
    }
    let response = request.send().await.map_err(crate::error::describe)?;
    // Dropping the response ends its stream.
    Ok(response.status())
}
