//! A whole authorization-code flow against the testkit authorization server, with the
//! person at the browser played by an HTTP client that reads the redirect.

use latchkey_auth::authorize::{self, AuthorizationParams, CallbackError};
use latchkey_auth::discovery::{Discovered, discover};
use latchkey_auth::registration::{self, ConfiguredClient, Plan, Registration, RegistrationError};
use latchkey_auth::target::{Clients, Http};
use latchkey_auth::token::{self, ClientAuth, CodeGrant, TokenError, TokenSet};
use latchkey_auth::{BearerChallenge, Secret};
use latchkey_testkit::{AuthOptions, AuthServer};
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:33418/callback";

/// OAuth requests for a server on loopback, as the testkit's are.
fn http() -> Http {
    let clients =
        Clients::new(|| reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()))
            .expect("clients");
    Http::new(clients, &Url::parse("http://127.0.0.1/mcp").expect("url"))
}

async fn discovered(server: &AuthServer) -> Discovered {
    let url = Url::parse(&server.resource_url()).expect("url");
    discover(&http(), &url, None).await.expect("discovery")
}

async fn registration(
    server: &AuthServer,
    found: &Discovered,
    configured: Option<&ConfiguredClient>,
) -> Registration {
    match registration::plan("notes", &found.server, configured, None, REDIRECT).expect("plan") {
        Plan::Ready(registration) => registration,
        Plan::Dynamic { endpoint } => {
            registration::register(&http(), "notes", &found.server, &endpoint, REDIRECT)
                .await
                .unwrap_or_else(|e| panic!("DCR at {}: {e}", server.issuer()))
        }
    }
}

/// The browser: follows the authorization URL and returns the redirect it was sent to.
async fn browser(url: &Url) -> Url {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url.clone())
        .send()
        .await
        .expect("authorize");
    assert_eq!(response.status(), 302, "{:?}", response.text().await);
    Url::parse(response.headers()["location"].to_str().expect("ascii")).expect("location")
}

/// Authorizes and exchanges the code; returns the tokens.
async fn login(
    server: &AuthServer,
    found: &Discovered,
    client: &Registration,
) -> Result<TokenSet, String> {
    let scopes = authorize::select_scopes(None, found.resource_metadata.as_ref(), &found.server);
    let pending = authorize::start(
        &found.server,
        &AuthorizationParams {
            client_id: &client.client_id,
            redirect_uri: &client.redirect_uri,
            scopes: &scopes,
            resource: Some(&found.resource),
            extra: &[],
        },
    )
    .expect("authorization URL");
    let redirect = browser(&pending.url).await;
    let code = pending.finish(&redirect).map_err(|e| e.to_string())?;
    token::exchange_code(
        &http(),
        &found.server.token_endpoint,
        &client.credentials(),
        &CodeGrant {
            code: &code,
            verifier: &pending.verifier,
            redirect_uri: &pending.redirect_uri,
            resource: Some(&found.resource),
            requested: &scopes,
        },
    )
    .await
    .map_err(|e| format!("{e}"))
    .inspect(|_| {
        assert!(
            server
                .token_requests()
                .contains(&"authorization_code".to_owned())
        )
    })
}

#[tokio::test]
async fn dynamic_registration_code_exchange_and_rotating_refresh() {
    let server = AuthServer::start(AuthOptions::default())
        .await
        .expect("start");
    let found = discovered(&server).await;
    let client = registration(&server, &found, None).await;
    assert_eq!(client.auth, ClientAuth::None);
    let sent = &server.clients()[0].request;
    assert_eq!(sent["application_type"], "native");
    assert_eq!(sent["redirect_uris"][0], REDIRECT);
    assert_eq!(sent["token_endpoint_auth_method"], "none");

    let tokens = login(&server, &found, &client).await.expect("login");
    let grant = server
        .access_token(tokens.access_token.expose())
        .expect("a live token");
    assert_eq!(
        grant.resource.as_deref(),
        Some(found.resource.as_str()),
        "RFC 8707 resource on the code"
    );
    assert_eq!(grant.scope, "mcp:read mcp:write offline_access");
    assert_eq!(tokens.scopes, ["mcp:read", "mcp:write", "offline_access"]);
    assert!(tokens.expires_at.is_some());

    let old = tokens.refresh_token.clone().expect("refresh token");
    let refreshed = token::refresh(
        &http(),
        &found.server.token_endpoint,
        &client.credentials(),
        &old,
        Some(&found.resource),
        &tokens.scopes,
    )
    .await
    .expect("refresh");
    assert_ne!(refreshed.refresh_token.as_ref(), Some(&old), "rotated");
    assert!(
        server
            .access_token(refreshed.access_token.expose())
            .is_some()
    );
    let reused = token::refresh(
        &http(),
        &found.server.token_endpoint,
        &client.credentials(),
        &old,
        Some(&found.resource),
        &tokens.scopes,
    )
    .await;
    let e = reused.expect_err("a rotated refresh token is dead");
    assert!(matches!(e, TokenError::InvalidGrant { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("new login"), "{e}");
}

#[tokio::test]
async fn a_refresh_without_rotation_keeps_the_refresh_token() {
    let server = AuthServer::start(AuthOptions {
        rotate_refresh_tokens: false,
        ..AuthOptions::default()
    })
    .await
    .expect("start");
    let found = discovered(&server).await;
    let client = registration(&server, &found, None).await;
    let tokens = login(&server, &found, &client).await.expect("login");
    let old = tokens.refresh_token.clone().expect("refresh token");
    let refreshed = token::refresh(
        &http(),
        &found.server.token_endpoint,
        &client.credentials(),
        &old,
        Some(&found.resource),
        &tokens.scopes,
    )
    .await
    .expect("refresh");
    assert_eq!(
        refreshed.refresh_token,
        Some(old),
        "kept when none comes back"
    );
}

#[tokio::test]
async fn configured_confidential_clients_use_basic_or_post() {
    for (method, expected) in [
        ("client_secret_basic", "basic"),
        ("client_secret_post", "post"),
    ] {
        let server = AuthServer::start(AuthOptions {
            dcr: false,
            preregistered: Some(("my app".into(), Some("s3cr:t&".into()), method.into())),
            ..AuthOptions::default()
        })
        .await
        .expect("start");
        let mut found = discovered(&server).await;
        if expected == "post" {
            found.server.token_endpoint_auth_methods_supported =
                Some(vec!["client_secret_post".into()]);
        }
        let configured = ConfiguredClient {
            client_id: "my app".into(),
            client_secret: Some(Secret::new("s3cr:t&")),
            private_key: None,
        };
        let client = registration(&server, &found, Some(&configured)).await;
        login(&server, &found, &client)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(
            server.clients().len() == 1,
            "no dynamic registration when a client is configured"
        );
    }
}

#[tokio::test]
async fn registration_priority_and_missing_registration() {
    let server = AuthServer::start(AuthOptions {
        dcr: false,
        ..AuthOptions::default()
    })
    .await
    .expect("start");
    let mut found = discovered(&server).await;
    let empty = ConfiguredClient {
        client_id: " ".into(),
        client_secret: None,
        private_key: None,
    };
    let e = registration::plan(
        "notes",
        &found.server,
        Some(&empty),
        Some("https://app.example/client.json"),
        REDIRECT,
    )
    .expect_err("nothing usable");
    assert!(matches!(
        e,
        RegistrationError::NeedsClientRegistration { .. }
    ));
    assert!(e.to_string().contains("[servers.notes.oauth]"), "{e}");

    found.server.client_id_metadata_document_supported = true;
    let plan = registration::plan(
        "notes",
        &found.server,
        Some(&empty),
        Some("https://app.example/client.json"),
        REDIRECT,
    )
    .expect("CIMD");
    assert!(
        matches!(plan, Plan::Ready(Registration { ref client_id, .. }) if client_id == "https://app.example/client.json")
    );
    found.server.registration_endpoint = Some("https://auth.example/register".into());
    let configured = ConfiguredClient {
        client_id: "mine".into(),
        client_secret: None,
        private_key: None,
    };
    let plan = registration::plan(
        "notes",
        &found.server,
        Some(&configured),
        Some("https://app.example/client.json"),
        REDIRECT,
    )
    .expect("configured");
    assert!(
        matches!(plan, Plan::Ready(Registration { ref client_id, auth: ClientAuth::None, .. }) if client_id == "mine")
    );
}

#[tokio::test]
async fn a_wrong_state_or_issuer_in_the_callback_is_refused() {
    for (options, expected) in [
        (
            AuthOptions {
                wrong_state: Some("forged".into()),
                ..AuthOptions::default()
            },
            CallbackError::StateMismatch.to_string(),
        ),
        (
            AuthOptions {
                wrong_iss: Some("https://evil.example".into()),
                ..AuthOptions::default()
            },
            "refusing it (RFC 9207".to_owned(),
        ),
        (
            AuthOptions {
                iss: true,
                ..AuthOptions::default()
            },
            String::new(),
        ),
    ] {
        let server = AuthServer::start(options).await.expect("start");
        let found = discovered(&server).await;
        let client = registration(&server, &found, None).await;
        let result = login(&server, &found, &client).await;
        if expected.is_empty() {
            result.expect("iss matches");
        } else {
            let e = result.expect_err("refused");
            assert!(e.contains(&expected), "{e}");
            assert!(
                !server
                    .token_requests()
                    .contains(&"authorization_code".to_owned()),
                "no code exchange after a bad callback"
            );
        }
    }
}

#[tokio::test]
async fn a_step_up_asks_for_the_union_of_scopes() {
    let challenge = BearerChallenge::from_headers([
        r#"Bearer error="insufficient_scope", scope="mcp:admin mcp:read""#,
    ])
    .expect("challenge");
    let scopes =
        authorize::step_up_scopes(&["mcp:read".into(), "offline_access".into()], &challenge);
    assert_eq!(scopes, ["mcp:read", "offline_access", "mcp:admin"]);
}

/// A token endpoint that streams an endless body (no `Content-Length`): the read
/// stops past 1 MiB with an error that says so, instead of holding it all.
#[tokio::test]
async fn an_endless_token_response_is_cut_off_at_one_mebibyte() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}/token", listener.local_addr().expect("addr"));
    let sent = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.expect("head");
        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
        let mut sent = 0usize;
        // Bounded: 64 MiB at most, should the client never stop reading.
        while sent < 64 << 20 && socket.write_all(chunk.as_bytes()).await.is_ok() {
            sent += 0x10000;
        }
        sent
    });
    let client = token::ClientCredentials {
        client_id: "c".into(),
        auth: ClientAuth::None,
        issuer: "http://127.0.0.1".into(),
    };
    let e = token::refresh(&http(), &endpoint, &client, &Secret::new("rt"), None, &[])
        .await
        .expect_err("too large");
    assert!(
        matches!(&e, TokenError::Malformed { cause } if cause.contains("larger than 1024 KiB")),
        "{e}"
    );
    let sent = sent.await.expect("join");
    assert!(
        sent < 16 << 20,
        "the client stopped reading early: {sent} bytes sent"
    );
}
