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
/// `Authorization` and `Cookie` are the client's own credentials; `Origin` and
/// `Referer` describe the client's page, and a remote server that checks `Origin`
/// would otherwise refuse a request from latchkey's loopback origin. `Host` is set by
/// the upstream client from the upstream URL.
const CLIENT_ONLY: [HeaderName; 5] = [AUTHORIZATION, COOKIE, ORIGIN, REFERER, HOST];

/// Edits a client request's headers, in place, into the upstream request's headers.
pub(crate) fn to_upstream(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in CLIENT_ONLY {
        headers.remove(name);
    }
}

/// Edits an upstream response's headers, in place, into the client response's headers.
/// `Set-Cookie` is dropped: the client's cookies are never sent upstream, so a cookie
/// set on latchkey's origin could only leak into other local servers.
pub(crate) fn to_client(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(SET_COOKIE);
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
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
