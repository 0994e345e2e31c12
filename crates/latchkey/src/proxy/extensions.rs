//! The MCP extensions that latchkey, not the client behind it, takes part in for a
//! server, declared where SEP-2133 has a client declare them: under
//! `capabilities.extensions` in its `initialize`. Today one: Enterprise-Managed
//! Authorization, whose spec has the client declare
//! `io.modelcontextprotocol/enterprise-managed-authorization`. The client behind
//! latchkey knows nothing of the grant latchkey runs, so for a server with
//! `grant = "enterprise"` latchkey adds the declaration to the client's
//! `initialize`, keeping everything else the client said. Only such servers' request
//! bodies are looked at, and only those already kept whole for the OAuth replay.

use bytes::Bytes;
use http::HeaderMap;
use latchkey_auth::enterprise::EXTENSION;
use latchkey_auth::session::Grant;
use serde_json::{Value, json};

use super::oauth::Payload;
use crate::config::OAuth;
use crate::server::Upstream;

/// `payload` with the extensions of `upstream`'s grant declared, if it is an
/// `initialize`.
pub(super) fn declare(upstream: &Upstream, headers: &mut HeaderMap, payload: Payload) -> Payload {
    let OAuth::Enabled(oauth) = &upstream.config.oauth else {
        return payload;
    };
    let (Grant::Enterprise(_), Payload::Whole(body)) = (&oauth.grant, &payload) else {
        return payload;
    };
    match declared(body, EXTENSION) {
        Some(body) => {
            // The body has another length now.
            headers.remove(http::header::CONTENT_LENGTH);
            Payload::Whole(body)
        }
        None => payload,
    }
}

/// `body` with `extension` declared, if it is an `initialize` that does not declare
/// it yet.
fn declared(body: &[u8], extension: &str) -> Option<Bytes> {
    // Most messages are not an initialize: skip the parse for them.
    if !body.windows(12).any(|w| w == b"\"initialize\"") {
        return None;
    }
    let mut message: Value = serde_json::from_slice(body).ok()?;
    if message["method"] != "initialize" {
        return None;
    }
    let params = message.get_mut("params")?.as_object_mut()?;
    let capabilities = params
        .entry("capabilities")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    let extensions = capabilities
        .entry("extensions")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    if extensions.contains_key(extension) {
        return None;
    }
    extensions.insert(extension.to_owned(), json!({}));
    serde_json::to_vec(&message).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_is_added_to_an_initialize_and_nothing_else() {
        let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"roots":{},"extensions":{"io.example/other":{"v":1}}},"clientInfo":{"name":"c","version":"1"}}}"#;
        let out: Value =
            serde_json::from_slice(&declared(initialize, EXTENSION).expect("declared"))
                .expect("json");
        assert_eq!(
            out["params"]["capabilities"]["extensions"][EXTENSION],
            json!({})
        );
        assert_eq!(
            out["params"]["capabilities"]["extensions"]["io.example/other"],
            json!({"v": 1})
        );
        assert_eq!(out["params"]["capabilities"]["roots"], json!({}));
        assert_eq!(out["params"]["clientInfo"]["name"], "c");

        let bare = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        let out: Value =
            serde_json::from_slice(&declared(bare, EXTENSION).expect("declared")).expect("json");
        assert_eq!(
            out["params"]["capabilities"]["extensions"][EXTENSION],
            json!({})
        );

        let list = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"x":"initialize"}}"#;
        assert!(declared(list, EXTENSION).is_none());
        let already = serde_json::to_vec(&out).expect("json");
        assert!(declared(&already, EXTENSION).is_none());
    }
}
