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
                let probed =
                    tokio::time::timeout(PATIENCE, crate::server::probe(&http, &upstream.config))
                        .await;
                match probed {
                    Ok(Ok(probe)) => upstream.traffic.looked(probe.status),
                    Ok(Err(crate::server::ProbeError::Unreachable { cause, .. })) => {
                        upstream.record(Err(&cause));
                    }
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
