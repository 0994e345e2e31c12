//! The loopback OAuth redirect listener and the browser opener.

use std::time::Duration;

use latchkey::callback::{self, CallbackError, Listener};
use latchkey_auth::authorize::{self, AuthorizationParams};
use latchkey_auth::discovery::discover;
use latchkey_auth::registration::{self, Plan};
use latchkey_auth::target::{Clients, Http};
use latchkey_auth::token::{self, CodeGrant};
use latchkey_testkit::{AuthOptions, AuthServer};
use url::Url;

use crate::harness::client;

#[tokio::test]
async fn one_redirect_is_taken_and_the_listener_is_gone() {
    let listener = Listener::bind(0).await.expect("bind");
    let redirect_uri = listener.redirect_uri().to_owned();
    assert!(redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with("/callback"));
    let waiting = tokio::spawn(listener.wait(Duration::from_secs(10), |url: &Url| {
        url.query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| "no code".to_owned())
    }));
    let page = client()
        .get(format!("{redirect_uri}?code=c-1&state=s"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("page").contains("Signed in"));
    assert_eq!(waiting.await.expect("join").expect("code"), "c-1");
    assert!(
        client().get(&redirect_uri).send().await.is_err(),
        "single use: nothing listens any more"
    );
}

/// One blind GET to the callback port aborted a pending login. Now a request without
/// the login's `state` (none, or a guessed one) gets a 404 and the listener keeps
/// waiting for the real redirect.
#[tokio::test]
async fn requests_without_the_logins_state_are_ignored() {
    let listener = Listener::bind(0).await.expect("bind");
    let redirect_uri = listener.redirect_uri().to_owned();
    let authorization =
        Url::parse("https://auth.example.com/authorize?state=s-real&client_id=c").expect("url");
    let waiting = tokio::spawn(listener.expecting(&authorization).wait(
        Duration::from_secs(10),
        |url: &Url| {
            url.query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| "no code".to_owned())
        },
    ));
    for probe in [
        "",
        "?code=c-evil",
        "?code=c-evil&state=s-guess",
        "?state=s-rea",
    ] {
        let page = client()
            .get(format!("{redirect_uri}{probe}"))
            .send()
            .await
            .expect("probe");
        assert_eq!(page.status(), 404, "{probe:?}");
    }
    assert!(
        !waiting.is_finished(),
        "still waiting for the real redirect"
    );
    let page = client()
        .get(format!("{redirect_uri}?code=c-1&state=s-real"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(page.status(), 200);
    assert_eq!(waiting.await.expect("join").expect("code"), "c-1");
}

#[tokio::test]
async fn a_rejected_redirect_shows_why_and_a_silent_one_times_out() {
    let listener = Listener::bind(0).await.expect("bind");
    let redirect_uri = listener.redirect_uri().to_owned();
    let waiting = tokio::spawn(
        listener.wait(Duration::from_secs(10), |_: &Url| -> Result<(), String> {
            Err("the redirect is not for this login".into())
        }),
    );
    let page = client()
        .get(format!("{redirect_uri}?state=forged"))
        .send()
        .await
        .expect("redirect");
    assert_eq!(page.status(), 400);
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("the redirect is not for this login")
    );
    let e = waiting.await.expect("join").expect_err("rejected");
    assert!(matches!(e, CallbackError::Rejected(_)), "{e:?}");

    let listener = Listener::bind(0).await.expect("bind");
    let e = listener
        .wait(Duration::from_millis(200), |_: &Url| Ok(()))
        .await
        .expect_err("timeout");
    assert!(matches!(e, CallbackError::TimedOut(_)));
    assert!(e.to_string().contains("status page"), "{e}");
}

#[tokio::test]
async fn a_fixed_port_that_is_taken_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let e = Listener::bind(port).await.expect_err("in use");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{port}"))
            && e.to_string().contains("redirect_port"),
        "{e}"
    );
}

#[tokio::test]
async fn the_browser_is_started_without_a_shell_and_only_for_http() {
    let dir = std::env::temp_dir().join(format!("latchkey-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("opened");
    let url = Url::parse("https://auth.example.com/authorize?a=1&b=$(touch pwned);x").expect("url");
    // The fake browser writes the one argument it got to a file.
    let script = dir.join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", out.display()),
    )
    .expect("script");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    let mut opener = callback::open_with(
        Some(&format!("{}:/usr/bin/firefox", script.display())),
        &url,
    )
    .expect("spawned");
    assert!(opener.wait().await.expect("the opener").success());
    let opened = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        opened,
        url.as_str(),
        "the URL arrives intact as one argument"
    );
    assert!(!dir.join("pwned").exists() && !std::path::Path::new("pwned").exists());
    let e = callback::open_with(
        Some(script.to_str().expect("utf-8")),
        &Url::parse("file:///etc/passwd").expect("url"),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("only http and https"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole authorization-code flow with a real loopback listener: the scripted
/// browser follows the authorization server's redirect to it.
#[tokio::test]
async fn authorization_code_flow_through_the_loopback_listener() {
    let server = AuthServer::start(AuthOptions::default())
        .await
        .expect("auth server");
    let resource = Url::parse(&server.resource_url()).expect("url");
    let clients =
        Clients::new(|| reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()))
            .expect("clients");
    let http = Http::new(clients, &resource);
    let found = discover(&http, &resource, None).await.expect("discovery");
    let listener = Listener::bind(0).await.expect("bind");
    let redirect_uri = listener.redirect_uri().to_owned();
    let Plan::Dynamic { endpoint } =
        registration::plan("notes", &found.server, None, None, &redirect_uri).expect("plan")
    else {
        panic!("expected DCR");
    };
    let client_reg =
        registration::register(&http, "notes", &found.server, &endpoint, &redirect_uri)
            .await
            .expect("DCR");
    let scopes = authorize::select_scopes(None, found.resource_metadata.as_ref(), &found.server);
    let pending = authorize::start(
        &found.server,
        &AuthorizationParams {
            client_id: &client_reg.client_id,
            redirect_uri: &redirect_uri,
            scopes: &scopes,
            resource: Some(&found.resource),
            extra: &[],
        },
    )
    .expect("url");
    let authorize_url = pending.url.clone();
    let pending = std::sync::Arc::new(pending);
    let checker = pending.clone();
    let waiting = tokio::spawn(listener.wait(Duration::from_secs(10), move |url: &Url| {
        checker.finish(url).map_err(|e| e.to_string())
    }));
    // The person at the browser: follows the redirect to the loopback listener.
    let browser = reqwest::Client::new();
    let page = browser.get(authorize_url).send().await.expect("browser");
    assert_eq!(page.status(), 200);
    let code = waiting.await.expect("join").expect("code");
    let tokens = token::exchange_code(
        &http,
        &found.server.token_endpoint,
        &client_reg.credentials(),
        &CodeGrant {
            code: &code,
            verifier: &pending.verifier,
            redirect_uri: &redirect_uri,
            resource: Some(&found.resource),
            requested: &scopes,
        },
    )
    .await
    .expect("tokens");
    assert!(server.access_token(tokens.access_token.expose()).is_some());
}
