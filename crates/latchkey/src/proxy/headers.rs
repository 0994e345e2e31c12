//! Which headers cross the proxy.
//!
//! Everything end-to-end passes unchanged in both directions (`Mcp-Session-Id`,
//! `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`, `Last-Event-ID`,
//! `Accept`, `Content-Type`, ...). Removed are the hop-by-hop headers (RFC 9110 §7.6.1)
//! and the ones that belong to the hop between the MCP client and latchkey: its
//! credentials, its cookies and its browser origin.

use http::HeaderMap;
use http::header::{
    AUTHORIZATION, CONNECTION, COOKIE, HOST, HeaderName, ORIGIN, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, REFERER, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers of the client's request that never go upstream, besides hop-by-hop ones.
/// `Authorization`, `DPoP` and `Cookie` are the client's own credentials; `Origin` and
/// `Referer` describe the client's page, and a remote server that checks `Origin`
/// would otherwise refuse a request from latchkey's loopback origin. `Host` is set by
/// the upstream client from the upstream URL.
const CLIENT_ONLY: [HeaderName; 6] = [AUTHORIZATION, DPOP, COOKIE, ORIGIN, REFERER, HOST];
/// RFC 9449 §4.1: the proof of possession that goes with a DPoP-bound token.
pub(crate) const DPOP: HeaderName = HeaderName::from_static("dpop");

/// Edits a client request's headers, in place, into the upstream request's headers.
pub(crate) fn to_upstream(headers: &mut HeaderMap) {
    remove(headers, |name| CLIENT_ONLY.contains(name));
}

/// Edits an upstream response's headers, in place, into the client response's headers.
/// `Set-Cookie` is dropped: the client's cookies are never sent upstream, so a cookie
/// set on latchkey's origin could only leak into other local servers.
pub(crate) fn to_client(headers: &mut HeaderMap) {
    remove(headers, |name| name == SET_COOKIE);
}

/// Removes the hop-by-hop headers and those `also` picks. This runs on every
/// request and response, so it looks at each header once and removes only what is
/// there, rather than asking the map for every name it might hold.
fn remove(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if also(name) || is_hop_by_hop(name) {
            doomed.push(name.clone());
        }
    }
    // Headers named in `Connection` are hop-by-hop too.
    if doomed.contains(&CONNECTION) {
        doomed.extend(
            headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_credentials_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-secret"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("mcp-session-id", "abc"),
            ("mcp-param-region", "eu"),
            ("last-event-id", "7"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        to_upstream(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["last-event-id", "mcp-param-region", "mcp-session-id"]
        );
    }
}
