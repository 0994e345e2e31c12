//! Authorization server metadata (RFC 8414, OpenID Connect discovery), as
//! `crates/latchkey-auth/src/discovery.rs` reads and checks it. Input: the issuer it
//! was looked up for on the first line, the document after it. Checks: the document
//! reads back the same; the endpoint checks pass exactly when every endpoint given
//! is an HTTPS URL or HTTP on loopback; PKCE is taken as offered exactly when S256
//! is listed.
#![no_main]

use latchkey_auth::discovery::{DiscoveryError, ServerMetadata, require_pkce};
use latchkey_auth::fuzzing::validate;
use latchkey_fuzz::secure_by_hand;
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let (first, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let issuer = String::from_utf8_lossy(first);

    let Ok(m) = serde_json::from_slice::<ServerMetadata>(body) else {
        return;
    };
    let again: ServerMetadata = serde_json::from_value(serde_json::json!({
        "issuer": m.issuer,
        "authorization_endpoint": m.authorization_endpoint,
        "token_endpoint": m.token_endpoint,
        "registration_endpoint": m.registration_endpoint,
        "device_authorization_endpoint": m.device_authorization_endpoint,
        "revocation_endpoint": m.revocation_endpoint,
        "scopes_supported": m.scopes_supported,
        "code_challenge_methods_supported": m.code_challenge_methods_supported,
        "token_endpoint_auth_methods_supported": m.token_endpoint_auth_methods_supported,
        "grant_types_supported": m.grant_types_supported,
        "client_id_metadata_document_supported": m.client_id_metadata_document_supported,
        "authorization_response_iss_parameter_supported": m.authorization_response_iss_parameter_supported,
        "id_token_signing_alg_values_supported": m.id_token_signing_alg_values_supported,
        "prompt_values_supported": m.prompt_values_supported,
    }))
    .expect("written back, the document reads");
    assert_eq!(again, m);

    // Discovery refuses a document for another issuer before anything else.
    if m.issuer != issuer {
        return;
    }
    let endpoints = [
        m.authorization_endpoint.as_ref(),
        Some(&m.token_endpoint),
        m.registration_endpoint.as_ref(),
        m.device_authorization_endpoint.as_ref(),
        m.revocation_endpoint.as_ref(),
    ];
    let all_secure = endpoints
        .into_iter()
        .flatten()
        .all(|e| Url::parse(e).is_ok_and(|u| secure_by_hand(&u)));
    match validate(&m) {
        Ok(()) => assert!(all_secure, "an insecure endpoint passed: {m:?}"),
        Err(e @ (DiscoveryError::Invalid { .. } | DiscoveryError::Insecure { .. })) => {
            assert!(!all_secure, "refused for nothing: {e}");
            let _ = e.to_string();
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    let s256 = m
        .code_challenge_methods_supported
        .as_ref()
        .is_some_and(|methods| methods.iter().any(|m| m == "S256"));
    assert_eq!(require_pkce(&m).is_ok(), s256);
});
