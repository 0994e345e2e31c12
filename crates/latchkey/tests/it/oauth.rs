//! OAuth on the first 401, through the daemon: the testkit MCP upstream requires
//! tokens from the testkit authorization server, and the person at the browser is a
//! scripted HTTP client that follows the redirect to latchkey's real loopback listener.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Daemon, Protected, ScriptedBrowser, assert_ok, no_redirect_client, protected,
};

/// A daemon in front of `setup`, and the person who approves its logins at once.
async fn in_front_of(setup: &Protected) -> (Daemon, Arc<ScriptedBrowser>) {
    let browser = ScriptedBrowser::approving();
    let daemon = setup.daemon(&[]).browser(browser.clone()).start().await;
    (daemon, browser)
}

/// A `tools/call` of the upstream's `echo`, which a step-up may guard.
fn echo_call() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}}})
}

#[tokio::test]
async fn the_first_401_runs_the_flow_and_the_client_never_notices() {
    let setup = protected().start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    let response = daemon.initialize("/notes").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["result"]["serverInfo"]["name"], "latchkey-testkit");

    let requests = setup.upstream.requests();
    assert_eq!(
        requests[0].headers.get("authorization"),
        None,
        "first try without a token"
    );
    let token = requests[1].headers["authorization"]
        .to_str()
        .expect("ascii");
    let grant = setup
        .auth
        .access_token(token.trim_start_matches("Bearer "))
        .expect("issued token");
    assert_eq!(grant.resource.as_deref(), Some(setup.mcp_url().as_str()));
    assert_eq!(
        grant.scope, "mcp:read offline_access",
        "the challenge's scope, plus offline_access"
    );
    assert_eq!(browser.opened(), 1);

    // Later requests carry the token at once.
    let before = requests.len();
    let response = daemon.initialize("/notes").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(setup.upstream.requests().len(), before + 1, "no second 401");
    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["state"], "ready");
    assert_eq!(
        status["servers"][0]["auth"]["scopes"],
        json!(["mcp:read", "offline_access"])
    );
    assert!(
        !status.to_string().contains("at-"),
        "no token on the status page: {status}"
    );
}

/// A login that gave no refresh token says so on the status page, which says
/// nothing of the kind after one that did.
#[tokio::test]
async fn a_login_without_a_refresh_token_says_the_next_expiry_needs_a_browser() {
    for (no_refresh_tokens, warned) in [(true, true), (false, false)] {
        let setup = protected().refresh_tokens(!no_refresh_tokens).start().await;
        let (daemon, _) = in_front_of(&setup).await;
        assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
        let status = daemon.status().await;
        let auth = &status["servers"][0]["auth"];
        assert_eq!(auth["refresh_token"], !no_refresh_tokens, "{status}");
        assert_eq!(
            auth["warning"] == "no refresh token: the next expiry needs a browser login",
            warned,
            "{status}"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_login() {
    let setup = protected().start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    let daemon = Arc::new(daemon);
    let calls = (0..12).map(|_| {
        let daemon = daemon.clone();
        tokio::spawn(async move { daemon.initialize("/notes").await.status() })
    });
    for call in calls {
        assert_eq!(call.await.expect("join"), StatusCode::OK);
    }
    assert_eq!(browser.opened(), 1, "one browser flow");
    let grants = setup.auth.token_requests();
    assert_eq!(grants, ["authorization_code"], "one code exchange");
}

#[tokio::test]
async fn tokens_about_to_expire_are_refreshed_without_a_browser() {
    let setup = protected().token_lifetime(2).start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
    assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
    assert_eq!(setup.auth.token_requests(), ["authorization_code"]);
    // Past half of a 2 s lifetime, the next request refreshes first.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code", "refresh_token"]
    );
    assert_eq!(browser.opened(), 1, "no second browser flow");
}

#[tokio::test]
async fn a_login_nobody_finishes_times_out_with_the_url_and_keeps_waiting() {
    let setup = protected().start().await;
    let daemon = setup
        .daemon(&["[servers.notes.oauth]", "auth_timeout_secs = 1"])
        .browser(ScriptedBrowser::absent())
        .start()
        .await;
    let response = daemon.initialize("/notes").await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "never 401: the client would try OAuth itself"
    );
    let body: Value = response.json().await.expect("json");
    // Not the authorization URL, whose state another local user could use: latchkey's
    // own start page, which redirects there.
    let sign_in = body["error"]["data"]["sign_in"]
        .as_str()
        .expect("start page");
    assert_eq!(sign_in, "/.latchkey/login/notes");
    assert!(!body.to_string().contains("state="), "{body}");
    let start = no_redirect_client()
        .get(daemon.url(sign_in))
        .send()
        .await
        .expect("GET start page");
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let url = start.headers()["location"].to_str().expect("location");
    assert!(
        url.starts_with(&setup.auth.issuer()) && url.contains("code_challenge_method=S256"),
        "{url}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains(&format!("open {}", daemon.url("/.latchkey/login/notes"))),
        "{body}"
    );
    assert_eq!(body["error"]["data"]["command"], "latchkey login notes");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("run `latchkey login notes`")),
        "{body}"
    );
    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["state"], "authorizing");
    assert_eq!(status["servers"][0]["auth"]["sign_in"], sign_in);
    assert_eq!(
        status["servers"][0]["auth"]["authorization_server"],
        setup.auth.issuer().trim_end_matches('/')
    );
    assert!(!status.to_string().contains("state="), "{status}");
}

#[tokio::test]
async fn oauth_false_passes_the_401_through() {
    let setup = protected().start().await;
    let daemon = setup.daemon(&["oauth = false"]).start().await;
    let response = daemon.initialize("/notes").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(setup.auth.token_requests().is_empty());
}

#[tokio::test]
async fn a_server_without_any_registration_route_says_which_key_to_set() {
    let setup = protected().dcr(false).start().await;
    let (daemon, _) = in_front_of(&setup).await;
    let response = daemon.initialize("/notes").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("[servers.notes.oauth]"),
        "{body}"
    );
    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["state"], "needs_client_registration");
}

#[tokio::test]
async fn revoked_tokens_mean_a_new_login_with_the_same_client() {
    let setup = protected().start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
    setup.auth.revoke_all();
    assert_ok(daemon.initialize("/notes").await).await;
    assert_eq!(
        setup.auth.token_requests(),
        ["authorization_code", "refresh_token", "authorization_code"],
        "refresh first; invalid_grant; then a new login"
    );
    assert_eq!(browser.opened(), 2);
    assert_eq!(
        setup.auth.clients().len(),
        1,
        "the registration was kept and used again"
    );
}

#[tokio::test]
async fn insufficient_scope_steps_up_to_the_union_and_retries() {
    let setup = protected().write_scope_for_tools().start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    let session = daemon.open_session("/notes").await;
    assert_eq!(setup.last_grant().scope, "mcp:read offline_access");
    let response = daemon
        .post("/notes", &echo_call())
        .header("mcp-session-id", session)
        .send()
        .await
        .expect("tools/call");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the 403 was answered by a step-up, not passed on: {:?}",
        response.text().await
    );
    assert_eq!(browser.opened(), 2, "a second authorization");
    let scopes = setup.last_grant().scope;
    for scope in ["mcp:read", "mcp:write"] {
        assert!(scopes.split(' ').any(|s| s == scope), "{scope} in {scopes}");
    }
    let forbidden = setup
        .upstream
        .requests()
        .iter()
        .filter(|r| r.body.windows(10).any(|w| w == b"tools/call"))
        .count();
    assert_eq!(
        forbidden, 2,
        "one refused call, one retried with the new token"
    );
}

#[tokio::test]
async fn a_client_id_metadata_document_is_used_instead_of_registering() {
    let setup = protected().cimd().start().await;
    let document = "https://latchkey.example.com/client.json";
    let metadata_url = format!("client_metadata_url = {document:?}");
    let daemon = setup
        .daemon(&["[servers.notes.oauth]", &metadata_url])
        .browser(ScriptedBrowser::approving())
        .start()
        .await;
    assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
    assert_eq!(setup.last_grant().client_id, document);
    let clients = setup.auth.clients();
    assert!(
        clients.iter().all(|c| c.request.is_null()),
        "no dynamic registration: {clients:?}"
    );
}

#[tokio::test]
async fn the_status_page_authorize_button_logs_in_and_refuses_forged_posts() {
    let setup = protected().start().await;
    let (daemon, browser) = in_front_of(&setup).await;
    let page = daemon.page("text/html").await;
    let action = "/.latchkey/authorize/notes";
    assert!(page.contains(action), "an Authorize button: {page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form's token")
        .to_owned();
    let no_redirect = no_redirect_client();
    // A page elsewhere cannot know the token, and its Origin is refused anyway.
    for (origin, token) in [
        (None, "forged"),
        (Some("https://evil.example"), csrf.as_str()),
    ] {
        let mut request = no_redirect
            .post(daemon.url(action))
            .form(&[("csrf", token)]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.expect("post");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{origin:?}");
    }
    assert_eq!(browser.opened(), 0);
    assert!(setup.auth.token_requests().is_empty());

    let local_origin = daemon.url("").trim_end_matches('/').to_owned();
    let response = no_redirect
        .post(daemon.url(action))
        .header("origin", local_origin)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/");
    let mut status = Value::Null;
    for _ in 0..100 {
        status = daemon.status().await;
        if status["servers"][0]["auth"]["signed_in"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["servers"][0]["state"], "ready", "{status}");
    assert_eq!(status["servers"][0]["auth"]["signed_in"], true, "{status}");
    assert_eq!(setup.auth.token_requests(), ["authorization_code"]);
    assert_eq!(browser.opened(), 1);
}

/// Regressions from the review of the login state machine.
mod review {
    use super::*;

    #[tokio::test]
    async fn an_absurd_token_lifetime_does_not_wedge_the_server() {
        let setup = protected().token_lifetime(u64::MAX).start().await;
        let (daemon, _) = in_front_of(&setup).await;
        for _ in 0..2 {
            assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn a_step_up_that_never_succeeds_stops_after_the_limit() {
        let setup = protected()
            .write_scope_for_tools()
            .withholding_write()
            .start()
            .await;
        let (daemon, browser) = in_front_of(&setup).await;
        let response = daemon.initialize("/notes").await;
        let session = response.headers()["mcp-session-id"].clone();
        let mut last = String::new();
        for _ in 0..5 {
            let response = daemon
                .post("/notes", &echo_call())
                .header("mcp-session-id", session.clone())
                .send()
                .await
                .expect("tools/call");
            assert_ne!(response.status(), StatusCode::OK);
            last = response.text().await.expect("body");
        }
        assert_eq!(
            browser.opened(),
            1 + 3,
            "the first login and three step-ups, however many requests"
        );
        assert!(last.contains("keeps asking for more scopes"), "{last}");
    }

    #[tokio::test]
    async fn a_failed_early_refresh_still_uses_the_live_token() {
        let setup = protected().token_lifetime(4).start().await;
        let (daemon, _) = in_front_of(&setup).await;
        assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
        // The authorization server goes away; the token stays good for 1.5 s more.
        setup.auth.stop();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_ok(daemon.initialize("/notes").await).await;
    }

    #[tokio::test]
    async fn a_refused_refresh_leads_to_a_new_login() {
        let setup = protected()
            .token_lifetime(1)
            .refusing_refresh("invalid_target")
            .start()
            .await;
        let (daemon, browser) = in_front_of(&setup).await;
        assert_eq!(daemon.initialize("/notes").await.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_ok(daemon.initialize("/notes").await).await;
        assert_eq!(
            setup.auth.token_requests(),
            ["authorization_code", "refresh_token", "authorization_code"]
        );
        assert_eq!(browser.opened(), 2);
    }
}
