//! Protected resource metadata (RFC 9728), as `crates/latchkey-auth/src/discovery.rs`
//! reads and checks it. Input: the MCP server's URL on the first line, the document
//! after it. Checks: the document reads back the same; a `resource` is taken for
//! the server only if it is the server's canonical URI or a parent path on the same
//! origin; the authorization server metadata URLs built from its first
//! authorization server stay on that server's origin.
#![no_main]

use latchkey_auth::discovery::{
    ResourceMetadata, canonical_resource, is_secure, server_metadata_urls,
};
use latchkey_auth::fuzzing::covers;
use latchkey_fuzz::{same_origin, secure_by_hand};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// The path's segments without trailing empty ones (`/a/b/` is `["a", "b"]`).
fn segments(url: &Url) -> Vec<&str> {
    let mut segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    while segments.last() == Some(&"") {
        segments.pop();
    }
    segments
}

fuzz_target!(|data: &[u8]| {
    let (first, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let server = std::str::from_utf8(first)
        .ok()
        .and_then(|s| Url::parse(s).ok())
        // The config takes only http(s) server URLs.
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .unwrap_or_else(|| Url::parse("https://mcp.example.com/mcp").expect("a URL"));
    let expected = canonical_resource(&server);
    assert!(
        covers(&expected, &expected),
        "{expected:?} does not cover itself"
    );

    // Exactly what discovery's fetch does with a 200's body.
    let Ok(metadata) = serde_json::from_slice::<ResourceMetadata>(body) else {
        return;
    };
    let again: ResourceMetadata = serde_json::from_value(serde_json::json!({
        "resource": metadata.resource,
        "authorization_servers": metadata.authorization_servers,
        "scopes_supported": metadata.scopes_supported,
    }))
    .expect("written back, the document reads");
    assert_eq!(again, metadata);

    if covers(&metadata.resource, &expected) {
        let resource = metadata.resource.trim_end_matches('/');
        if resource != expected {
            let r = Url::parse(resource).expect("a covering resource is a URL");
            let e = Url::parse(&expected).expect("the canonical URI is a URL");
            assert!(
                same_origin(&r, &e),
                "{resource:?} covers {expected:?} from another origin"
            );
            assert!(r.query().is_none());
            let (r, e) = (segments(&r), segments(&e));
            assert!(
                r.len() <= e.len() && r[..] == e[..r.len()],
                "{resource:?} is not a parent of {expected:?}"
            );
        }
    }

    let Some(issuer) = metadata.authorization_servers.first() else {
        return;
    };
    let Ok(issuer) = Url::parse(issuer) else {
        return;
    };
    assert_eq!(is_secure(&issuer), secure_by_hand(&issuer), "{issuer}");
    if is_secure(&issuer) {
        let urls = server_metadata_urls(&issuer);
        let trimmed = issuer.path().trim_end_matches('/').is_empty();
        assert_eq!(urls.len(), if trimmed { 2 } else { 3 });
        for url in urls {
            assert!(is_secure(&url) && url.query().is_none(), "{url}");
            assert!(same_origin(&url, &issuer), "{url} for {issuer}");
            assert!(url.path().contains("/.well-known/"), "{url}");
        }
    }
});
