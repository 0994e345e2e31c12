//! DPoP (RFC 9449) through the daemon, against the testkit's authorization server and
//! upstream in their DPoP mode, which check every proof (signature with its `jwk`,
//! `htm`, `htu`, `iat`, `jti` replay, `ath`, and the token's key binding) and refuse
//! what fails: the login and proxied calls, nonces at both ends, a refresh, a stolen
//! token, the key kept in the keyring across a restart, and no proof, key or token in
//! a trace log.

use std::collections::HashSet;
use std::time::Duration;

use latchkey_auth::Secret;
use latchkey_auth::dpop::{Alg, Key, ath};
use serde_json::{Value, json};

use crate::binary::serve;
use crate::harness::{
    ACCEPT_BOTH, Daemon, Local, Protected, ScriptedBrowser, Store, TempDir, assert_ok, client,
    initialize, last_token, protected,
};

fn tools_list(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

/// A daemon in front of `setup` that has logged in; the session it opened.
async fn logged_in(setup: &Protected, store: Store) -> (Daemon, String) {
    let daemon = setup
        .daemon(&[])
        .store(store)
        .browser(ScriptedBrowser::approving())
        .start()
        .await;
    let session = daemon.open_session("/notes").await;
    (daemon, session)
}

/// A `tools/list` in `session`, which must succeed.
async fn call(local: &Local, session: &str, id: u64) {
    let response = local
        .post("/notes", &tools_list(id))
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("call");
    assert_ok(response).await;
}

/// The `DPoP` headers the upstream received, in order.
fn proofs(setup: &Protected) -> Vec<String> {
    setup
        .upstream
        .requests()
        .iter()
        .filter_map(|r| Some(r.headers.get("dpop")?.to_str().ok()?.to_owned()))
        .collect()
}

/// A proof's public key thumbprint, as the server computes it (the testkit's).
fn jkt(proof: &str) -> String {
    let seen = std::sync::Mutex::new(HashSet::new());
    // Only the key is wanted: the claims are checked against themselves.
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            proof.split('.').nth(1).expect("claims"),
        )
        .expect("base64"),
    )
    .expect("json");
    latchkey_testkit::dpop::verify(
        proof,
        &latchkey_testkit::dpop::Expected {
            htm: claims["htm"].as_str().expect("htm"),
            htu: claims["htu"].as_str().expect("htu"),
            access_token: None,
        },
        &seen,
    )
    .expect("a proof that verifies")
    .jkt
}

#[tokio::test]
async fn a_login_binds_the_tokens_and_every_request_carries_a_fresh_proof() {
    let setup = protected().dpop().start().await;
    let (daemon, session) = logged_in(&setup, Store::Memory).await;
    for id in 2..5 {
        call(&daemon, &session, id).await;
    }
    let token = last_token(&setup.upstream);
    let bound = setup
        .auth
        .bound_to(&token)
        .expect("the token is DPoP-bound");
    let sent = setup
        .upstream
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("authorization").cloned())
        .collect::<Vec<_>>();
    assert!(sent.len() >= 4, "{sent:?}");
    assert!(
        sent.iter().all(|v| v.as_bytes().starts_with(b"DPoP ")),
        "every token goes with the DPoP scheme"
    );
    let proofs = proofs(&setup);
    assert_eq!(proofs.len(), sent.len(), "a proof with every token");
    assert_eq!(
        proofs.iter().collect::<HashSet<_>>().len(),
        proofs.len(),
        "a fresh proof each time"
    );
    assert!(
        proofs.iter().all(|p| jkt(p) == bound),
        "proved with the bound key"
    );
    assert_eq!(setup.auth.dpop_refusals(), Vec::<String>::new());
}

#[tokio::test]
async fn a_nonce_is_asked_for_once_at_the_token_endpoint_and_once_at_the_upstream() {
    let setup = protected().dpop_nonce().start().await;
    let (daemon, session) = logged_in(&setup, Store::Memory).await;
    // The upstream announces a new nonce on every success: each call must carry it.
    for id in 2..6 {
        call(&daemon, &session, id).await;
    }
    assert_eq!(
        setup.auth.dpop_refusals(),
        ["token endpoint: use_dpop_nonce", "upstream: use_dpop_nonce"]
    );
    assert_eq!(setup.logins(), 1);
}

#[tokio::test]
async fn a_refresh_proves_with_the_key_the_tokens_are_bound_to() {
    let setup = protected().dpop().token_lifetime(2).start().await;
    let (daemon, session) = logged_in(&setup, Store::Memory).await;
    let first = last_token(&setup.upstream);
    let key = setup.auth.bound_to(&first).expect("bound");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    call(&daemon, &session, 2).await;
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code", "refresh_token"]
    );
    let second = last_token(&setup.upstream);
    assert_ne!(first, second, "a refreshed token");
    assert_eq!(setup.auth.bound_to(&second), Some(key));
    assert_eq!(setup.auth.dpop_refusals(), Vec::<String>::new());
}

#[tokio::test]
async fn a_stolen_access_token_is_refused_without_its_key() {
    let setup = protected().dpop().start().await;
    let (daemon, session) = logged_in(&setup, Store::Memory).await;
    let token = last_token(&setup.upstream);
    let captured = proofs(&setup).pop().expect("a proof");
    let url = setup.mcp_url();
    let thief = Key::generate(Alg::Es256).expect("the thief's key");
    let ath = ath(&Secret::new(token.clone()));
    let other_key = thief.proof("POST", &url, Some(&ath), None).expect("proof");
    let attempts: [(&str, String, Option<String>); 4] = [
        ("as Bearer", format!("Bearer {token}"), None),
        ("DPoP without a proof", format!("DPoP {token}"), None),
        (
            "DPoP with another key's proof",
            format!("DPoP {token}"),
            Some(other_key.to_str().expect("ascii").to_owned()),
        ),
        (
            "DPoP with a replayed proof",
            format!("DPoP {token}"),
            Some(captured),
        ),
    ];
    for (what, authorization, proof) in attempts {
        let mut request = client()
            .post(&url)
            .header("accept", ACCEPT_BOTH)
            .header("authorization", authorization)
            .json(&initialize());
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401, "{what}");
    }
    assert_eq!(setup.auth.dpop_refusals().len(), 4);
    // latchkey, with the key, still gets in.
    call(&daemon, &session, 2).await;
}

/// Needs the keyring: run through `dbus-run-session -- scripts/with-keyring`.
#[tokio::test]
async fn the_key_is_kept_in_the_keyring_across_a_restart() {
    let setup = protected().dpop().start().await;
    let (daemon, _) = logged_in(&setup, Store::Keyring).await;
    let key = setup
        .auth
        .bound_to(&last_token(&setup.upstream))
        .expect("bound");
    daemon.shutdown().await.expect("shutdown");
    let again = setup.daemon(&[]).store(Store::Keyring).start().await;
    again.open_session("/notes").await;
    assert_eq!(
        setup.logins(),
        1,
        "the stored tokens were used, with their key"
    );
    let last = proofs(&setup).pop().expect("a proof");
    assert_eq!(jkt(&last), key, "the same key after the restart");
    assert_eq!(setup.auth.dpop_refusals(), Vec::<String>::new());
    again.shutdown().await.expect("shutdown");
}

/// The DPoP life cycle through the binary at `RUST_LOG=trace` (a login with nonces,
/// calls, a refresh): no token, proof, nonce-retry proof or private key in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proof_key_or_token_reaches_the_trace_log() {
    let setup = protected()
        .dpop_nonce()
        .token_lifetime(2)
        .prefix("LKDPOP-")
        .start()
        .await;
    let scratch = TempDir::new("dpop-leaks");
    let text = setup
        .daemon(&[])
        .store(Store::File(scratch.path().join("state")))
        .toml();
    let config = scratch.write_config(&text);
    let browser = scratch.approving_browser(0);
    let daemon = serve(&scratch, &config)
        .env("BROWSER", &browser)
        .env("RUST_LOG", "trace")
        .start()
        .await;
    let session = daemon.open_session("/notes").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    call(&daemon, &session, 2).await;
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
    assert!(
        setup
            .auth
            .token_requests()
            .iter()
            .any(|g| g == "refresh_token"),
        "a refresh happened"
    );
    let log = scratch.log();
    assert!(log.contains("TRACE"), "a trace log:\n{log}");
    let mut secrets: Vec<String> = setup.auth.issued_tokens();
    secrets.extend(proofs(&setup));
    secrets.extend(
        setup
            .auth
            .received()
            .iter()
            .filter_map(|r| r.field("refresh_token").map(str::to_owned)),
    );
    // The private keys, as the store holds them.
    let stored = find_files(&scratch.path().join("state"))
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find(|text| text.contains("dpop_keys"))
        .expect("the DPoP key record");
    let record: Value = serde_json::from_str(&stored).expect("record");
    let keys = record["dpop_keys"].as_str().expect("keys");
    secrets.extend(
        keys.split('.')
            .filter(|part| part.len() > 40)
            .map(str::to_owned),
    );
    assert!(secrets.len() >= 8, "{secrets:?}");
    for secret in &secrets {
        // A proof's header (the public key) may be logged; its whole text may not.
        assert!(
            !log.contains(secret.as_str()),
            "the log shows {secret}:\n{log}"
        );
    }
}

fn find_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                find_files(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// RFC 9449 §5: a bound token is the answer to a proof. `token_type` DPoP to a
/// request without one is refused (latchkey could not use it), with the fix named;
/// a Bearer answer to a proof is used as Bearer, unless `dpop = true` demands binding.
#[tokio::test]
async fn a_token_type_that_does_not_match_the_request_is_refused_or_used_as_the_rfc_says() {
    let unasked = protected().dpop_type_without_proof().start().await;
    let daemon = unasked
        .daemon(&["oauth = { dpop = false }"])
        .browser(ScriptedBrowser::approving())
        .start()
        .await;
    let refused = daemon.initialize("/notes").await;
    assert_eq!(refused.status(), 503);
    let text = refused.text().await.expect("body");
    assert!(
        text.contains("token_type is DPoP, but latchkey sent no DPoP proof")
            && text.contains("dpop = true"),
        "{text}"
    );

    let unbound = protected().dpop_unbound().start().await;
    let (daemon, session) = logged_in(&unbound, Store::Memory).await;
    call(&daemon, &session, 2).await;
    let sent = unbound.upstream.requests();
    let last = sent.last().expect("a request");
    assert!(
        last.headers["authorization"]
            .as_bytes()
            .starts_with(b"Bearer ")
            && !last.headers.contains_key("dpop"),
        "an unbound token goes as Bearer, without a proof"
    );
    let strict = unbound
        .daemon(&["oauth = { dpop = true }"])
        .browser(ScriptedBrowser::approving())
        .start()
        .await;
    let refused = strict.initialize("/notes").await;
    assert_eq!(refused.status(), 503);
    let text = refused.text().await.expect("body");
    assert!(
        text.contains("DPoP-bound tokens are required") && text.contains("dpop = false"),
        "{text}"
    );
}
