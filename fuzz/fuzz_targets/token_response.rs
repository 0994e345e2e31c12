//! Token endpoint responses (`crates/latchkey-auth/src/token.rs`): a 2xx body with
//! tokens, a 4xx OAuth error body, and the device authorization response of RFC 8628
//! (`device.rs`). Byte 0 chooses which, and whether an old refresh token is kept;
//! the rest is the body. Checks: accepted tokens are exactly the document's, a
//! missing `scope` or `refresh_token` falls back as RFC 6749 says, no error quotes
//! the access token, an OAuth error is classified by its `error`, and a device
//! response's numbers and URLs are within bounds whatever the server sent.
#![no_main]

use std::time::{Duration, SystemTime};

use latchkey_auth::Secret;
use latchkey_auth::fuzzing::{device_response, token_error, token_response};
use latchkey_auth::token::TokenError;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn tokens(body: &[u8], keep_old: bool) {
    let old = Secret::new("old-refresh-token");
    let requested = vec!["files:read".to_owned(), "offline_access".to_owned()];
    let result = token_response(body, keep_old.then_some(&old), &requested);
    let doc = serde_json::from_slice::<Value>(body).ok();
    let field = |name: &str| doc.as_ref().and_then(|d| d.get(name));
    let text = |name: &str| field(name).and_then(Value::as_str);
    match result {
        Ok(set) => {
            let Some(Value::Object(_)) = &doc else {
                // serde also reads a struct from an array: nothing to compare with.
                return;
            };
            assert!(!set.access_token.expose().is_empty());
            assert_eq!(Some(set.access_token.expose()), text("access_token"));
            assert!(text("token_type").is_some_and(
                |t| t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("dpop")
            ));
            // Bound only by a request that sent a proof, which this is not.
            assert_eq!(set.dpop, None);
            let refresh = match field("refresh_token") {
                Some(Value::String(r)) => Some(r.as_str()),
                _ => keep_old.then_some(old.expose()),
            };
            assert_eq!(set.refresh_token.as_ref().map(Secret::expose), refresh);
            let scopes: Vec<String> = match text("scope") {
                Some(scope) => scope.split_ascii_whitespace().map(str::to_owned).collect(),
                None => requested.clone(),
            };
            assert_eq!(set.scopes, scopes);
            let lifetime = match field("expires_in") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match (lifetime, set.expires_at) {
                (None, at) => assert_eq!(at, None),
                (Some(secs), Some(at)) => {
                    let now = SystemTime::now();
                    let lower = now - Duration::from_secs(5) + Duration::from_secs(secs);
                    let upper = now + Duration::from_secs(5) + Duration::from_secs(secs);
                    assert!(at >= lower && at <= upper, "{secs} s");
                }
                // Too far off to represent: taken as no lifetime given.
                (Some(secs), None) => assert!(secs > 1 << 40, "{secs} s lost"),
            }
        }
        Err(e) => {
            assert!(matches!(e, TokenError::Malformed { .. }), "{e}");
            let message = e.to_string();
            // The message may quote token_type; any other appearance of the access
            // token is a leak. (An access token made only of letters, digits and the
            // message's punctuation could match its fixed words, so is not checked.)
            if let Some(token) = text("access_token") {
                let quoted = text("token_type")
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_default();
                let rest = message.replace(&quoted, "");
                let plain = |c: char| c.is_ascii_alphanumeric() || " ():;_".contains(c);
                if !token.chars().all(plain) {
                    assert!(!rest.contains(token), "the access token is in {message:?}");
                }
            }
        }
    }
}

fn refusal(body: &[u8], status: u16) {
    let error = token_error(status, body);
    assert!(!error.is_retryable());
    let _ = error.to_string();
    let doc = serde_json::from_slice::<Value>(body).ok();
    let (Some(code), Some(Value::Object(_))) = (
        doc.as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str),
        &doc,
    ) else {
        return;
    };
    let description = doc
        .as_ref()
        .and_then(|d| d.get("error_description"))
        .and_then(Value::as_str);
    match &error {
        TokenError::InvalidGrant { description: d } => {
            assert_eq!(code, "invalid_grant");
            assert_eq!(d.as_deref(), description);
        }
        TokenError::InvalidClient { description: d } => {
            assert_eq!(code, "invalid_client");
            assert_eq!(d.as_deref(), description);
        }
        TokenError::Refused {
            error,
            description: d,
        } => {
            assert_eq!(error, code);
            assert!(code != "invalid_grant" && code != "invalid_client");
            assert_eq!(d.as_deref(), description);
        }
        // error_description of another type than a string.
        TokenError::Malformed { .. } => {}
        other => panic!("unexpected {other}"),
    }
}

fn device(body: &[u8]) {
    let Ok(device) = device_response(body) else {
        return;
    };
    let web = |u: &str| url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    assert!(
        web(&device.verification_uri),
        "{:?}",
        device.verification_uri
    );
    if let Some(complete) = &device.verification_uri_complete {
        assert!(web(complete), "{complete:?}");
    }
    assert!(
        !device.user_code.chars().any(char::is_control),
        "{:?}",
        device.user_code
    );
    assert!(device.expires_in <= Duration::from_secs(24 * 3600));
    assert!((1..=60).contains(&device.interval.as_secs()));
    // A deadline from it never overflows.
    let _ = std::time::Instant::now() + device.expires_in;
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => tokens(body, false),
        1 => tokens(body, true),
        2 => refusal(body, [400, 401, 403][usize::from(mode / 4 % 3)]),
        _ => device(body),
    }
});
