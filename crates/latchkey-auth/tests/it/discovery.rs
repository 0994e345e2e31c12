use latchkey_auth::BearerChallenge;
use latchkey_auth::discovery::{DiscoveryError, Source, discover, require_pkce};
use latchkey_auth::target::{Clients, Http};
use latchkey_testkit::{AuthOptions, AuthServer, MetadataAt, PrmAt};
use url::Url;

/// OAuth requests for a server on loopback, as the testkit's are.
fn http() -> Http {
    let clients =
        Clients::new(|| reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()))
            .expect("clients");
    Http::new(clients, &Url::parse("http://127.0.0.1/mcp").expect("url"))
}

async fn run(
    options: AuthOptions,
    challenge: Option<BearerChallenge>,
) -> (
    AuthServer,
    Result<latchkey_auth::discovery::Discovered, DiscoveryError>,
) {
    let server = AuthServer::start(options).await.expect("auth server");
    let url = Url::parse(&server.resource_url()).expect("url");
    // What the authorization-code flow checks before it goes on.
    let result = discover(&http(), &url, challenge.as_ref())
        .await
        .and_then(|found| require_pkce(&found.server).map(|()| found));
    (server, result)
}

fn header_challenge(server_prm: String) -> BearerChallenge {
    BearerChallenge {
        resource_metadata: Some(server_prm),
        ..BearerChallenge::default()
    }
}

#[tokio::test]
async fn resource_metadata_url_from_the_challenge_comes_first() {
    let server = AuthServer::start(AuthOptions {
        prm_at: PrmAt::HeaderOnly,
        ..AuthOptions::default()
    })
    .await
    .expect("start");
    let url = Url::parse(&server.resource_url()).expect("url");
    let found = discover(
        &http(),
        &url,
        Some(&header_challenge(server.header_prm_url())),
    )
    .await
    .expect("discovered");
    assert_eq!(server.paths()[0], "/custom/prm.json");
    assert_eq!(found.resource, server.resource_url());
    assert_eq!(found.server.issuer, server.issuer());
    assert_eq!(
        found.resource_metadata.expect("prm").scopes_supported,
        Some(vec!["mcp:read".into(), "mcp:write".into()])
    );
}

#[tokio::test]
async fn well_known_path_inserted_then_root() {
    let (server, found) = run(AuthOptions::default(), None).await;
    found.expect("path-inserted");
    assert_eq!(
        server.paths()[0],
        "/.well-known/oauth-protected-resource/mcp"
    );

    let (server, found) = run(
        AuthOptions {
            prm_at: PrmAt::Root,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    found.expect("root");
    assert_eq!(
        server.paths()[..2],
        [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource"
        ]
    );
}

#[tokio::test]
async fn server_metadata_in_the_spec_order_for_issuers_with_and_without_path() {
    let cases = [
        (
            "",
            MetadataAt::Rfc8414,
            vec!["/.well-known/oauth-authorization-server"],
        ),
        (
            "",
            MetadataAt::OpenIdConnect,
            vec![
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
            ],
        ),
        (
            "/tenant1",
            MetadataAt::Rfc8414,
            vec!["/.well-known/oauth-authorization-server/tenant1"],
        ),
        (
            "/tenant1",
            MetadataAt::OpenIdConnect,
            vec![
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
            ],
        ),
        (
            "/tenant1",
            MetadataAt::OpenIdAppended,
            vec![
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
                "/tenant1/.well-known/openid-configuration",
            ],
        ),
    ];
    for (issuer_path, metadata_at, expected) in cases {
        let options = AuthOptions {
            issuer_path: issuer_path.into(),
            metadata_at,
            ..AuthOptions::default()
        };
        let (server, found) = run(options, None).await;
        let found = found.unwrap_or_else(|e| panic!("{issuer_path} {metadata_at:?}: {e}"));
        assert_eq!(found.server.issuer, server.issuer());
        let tried: Vec<String> = server.paths().into_iter().skip(1).collect();
        assert_eq!(tried, expected, "{issuer_path} {metadata_at:?}");
        assert!(matches!(found.source, Source::Metadata(_)));
    }
}

#[tokio::test]
async fn hostile_or_broken_metadata_is_refused() {
    let (_s, e) = run(
        AuthOptions {
            claimed_issuer: Some("https://evil.example".into()),
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    assert!(
        matches!(e, Err(DiscoveryError::IssuerMismatch { .. })),
        "{e:?}"
    );

    let (_s, e) = run(
        AuthOptions {
            insecure_token_endpoint: true,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let e = e.expect_err("http endpoint refused");
    assert!(
        matches!(
            e,
            DiscoveryError::Insecure {
                what: "token_endpoint",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("HTTPS"), "{e}");

    let (_s, e) = run(
        AuthOptions {
            pkce: false,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let e = e.expect_err("no PKCE refused");
    assert!(matches!(e, DiscoveryError::NoPkce { .. }), "{e:?}");

    let (_s, e) = run(
        AuthOptions {
            claimed_resource: Some("https://other.example/mcp".into()),
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    assert!(
        matches!(e, Err(DiscoveryError::ResourceMismatch { .. })),
        "{e:?}"
    );

    let (_s, e) = run(
        AuthOptions {
            metadata_at: MetadataAt::Nowhere,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let e = e.expect_err("no metadata");
    assert!(
        matches!(e, DiscoveryError::NoServerMetadata { .. }),
        "{e:?}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_2025_03_26_server_uses_its_origin_then_default_endpoints() {
    let (server, found) = run(
        AuthOptions {
            prm_at: PrmAt::Nowhere,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let found = found.expect("metadata at the origin");
    assert_eq!(found.resource_metadata, None);
    assert_eq!(found.server.issuer, server.issuer());
    assert_eq!(found.resource, server.resource_url());

    let (server, found) = run(
        AuthOptions {
            prm_at: PrmAt::Nowhere,
            metadata_at: MetadataAt::Nowhere,
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let found = found.expect("default endpoints");
    assert_eq!(found.source, Source::DefaultEndpoints);
    let origin = format!("http://{}", server.addr());
    assert_eq!(
        found.server.authorization_endpoint,
        Some(format!("{origin}/authorize"))
    );
    assert_eq!(found.server.token_endpoint, format!("{origin}/token"));
    assert_eq!(
        found.server.registration_endpoint,
        Some(format!("{origin}/register"))
    );
}

#[tokio::test]
async fn a_dead_network_is_a_retryable_error() {
    let server = AuthServer::start(AuthOptions::default())
        .await
        .expect("start");
    let url = Url::parse(&server.resource_url()).expect("url");
    server.stop();
    // Wait for the listener to close.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(server.addr()).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let e = discover(&http(), &url, None)
        .await
        .expect_err("unreachable");
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("retry"), "{e}");
}

#[test]
fn canonical_resource_and_secure_urls() {
    use latchkey_auth::discovery::{canonical_resource, is_secure};
    let u = |s: &str| Url::parse(s).expect("url");
    assert_eq!(
        canonical_resource(&u("HTTPS://MCP.Example.com/")),
        "https://mcp.example.com"
    );
    assert_eq!(
        canonical_resource(&u("https://mcp.example.com/mcp#x")),
        "https://mcp.example.com/mcp"
    );
    // RFC 8707 §2: no query in the resource indicator (it is often an API key).
    assert_eq!(
        canonical_resource(&u("https://mcp.example.com/mcp/?api_key=k-secret")),
        "https://mcp.example.com/mcp"
    );
    assert!(is_secure(&u("https://auth.example.com/authorize")));
    assert!(is_secure(&u("http://127.0.0.1:9/token")));
    assert!(is_secure(&u("http://localhost:9/token")));
    assert!(is_secure(&u("http://[::1]:9/token")));
    assert!(!is_secure(&u("http://auth.example.com/token")));
    assert!(!is_secure(&u("http://127.0.0.1.evil.example/token")));
}

#[tokio::test]
async fn an_outage_at_the_metadata_is_retryable_not_a_2025_03_26_server() {
    let (_s, e) = run(
        AuthOptions {
            metadata_status: Some(503),
            ..AuthOptions::default()
        },
        None,
    )
    .await;
    let e = e.expect_err("503 is not absence");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
}
