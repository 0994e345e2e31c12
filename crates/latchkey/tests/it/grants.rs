//! The grants that need no person at the MCP server's authorization server:
//! workload identity (a JWT from the workload's platform, RFC 7523 §2.1, SEP-1933)
//! and Enterprise-Managed Authorization (one login at the enterprise IdP, then an
//! ID-JAG for each server that trusts it).

use std::path::Path;

use latchkey_testkit::jwt::Signer;
use latchkey_testkit::{Idp, IdpOptions};
use serde_json::json;

use crate::binary::serve;
use crate::harness::{
    Daemon, DaemonBuilder, Protected, ScriptedBrowser, Store, TempDir, assert_ok, protected,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The assertions of the JWT bearer grants `auth` received, in order.
fn assertions(auth: &latchkey_testkit::AuthServer) -> Vec<String> {
    auth.received()
        .iter()
        .filter(|r| r.field("grant_type") == Some(JWT_BEARER))
        .filter_map(|r| r.field("assertion").map(str::to_owned))
        .collect()
}

/// A workload token as its platform issues it, for the authorization server at
/// `audience`.
fn workload_token(platform: &Signer, audience: &str, jti: &str, lifetime: i64) -> String {
    platform.sign(
        "JWT",
        json!({"sub": "system:serviceaccount:ci:builder", "aud": audience, "jti": jti}),
        lifetime,
    )
}

#[tokio::test]
async fn a_workload_token_in_a_file_is_read_again_for_every_grant() {
    let platform = Signer::new("https://kubernetes.default.svc");
    let setup = protected()
        .refresh_tokens(false)
        .trusting(platform.trusted(None))
        .start()
        .await;
    let scratch = TempDir::new("wif-file");
    let file = scratch.path().join("token");
    let first = workload_token(&platform, &setup.auth.issuer(), "1", 300);
    std::fs::write(&file, &first).expect("write the token");
    let daemon = setup
        .daemon(&[
            "[servers.notes.oauth]",
            "grant = \"jwt_bearer\"",
            &format!("assertion_file = {:?}", file.display().to_string()),
        ])
        .start()
        .await;
    // Before the first token: nothing for a person to do, so no Sign in.
    let server = &daemon.status().await["servers"][0];
    assert_eq!(server["summary"]["state"], "no_sign_in_needed", "{server}");
    let page = daemon.page("text/html").await;
    assert!(!page.contains(">Sign in<"), "{page}");
    assert_ok(daemon.initialize("/notes").await).await;
    // The platform rotates the token; the server drops the access token.
    let second = workload_token(&platform, &setup.auth.issuer(), "2", 300);
    std::fs::write(&file, &second).expect("rotate the token");
    setup.auth.revoke_all();
    assert_ok(daemon.initialize("/notes").await).await;
    assert_eq!(assertions(&setup.auth), [first, second]);
    let grant = setup.last_grant();
    assert_eq!(grant.resource.as_deref(), Some(setup.mcp_url().as_str()));
    assert_eq!(grant.scope, "mcp:read");
    assert!(
        !setup.auth.paths().iter().any(|p| p.ends_with("/authorize")),
        "no browser login: {:?}",
        setup.auth.paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_token_from_the_environment_is_used_and_never_logged() {
    let platform = Signer::new("https://token.actions.example");
    let setup = protected()
        .refresh_tokens(false)
        .trusting(platform.trusted(None))
        .start()
        .await;
    let token = workload_token(&platform, &setup.auth.issuer(), "ci-1", 300);
    let scratch = TempDir::new("wif-env");
    let config = scratch.write_config(
        &setup
            .daemon(&[
                "[servers.notes.oauth]",
                "grant = \"jwt_bearer\"",
                "assertion_env = \"LATCHKEY_TEST_WORKLOAD_TOKEN\"",
            ])
            .toml(),
    );
    let daemon = serve(&scratch, &config)
        .env("LATCHKEY_TEST_WORKLOAD_TOKEN", &token)
        .env("RUST_LOG", "trace")
        .start()
        .await;
    assert_eq!(daemon.initialize("/notes").await.status(), 200);
    assert_eq!(assertions(&setup.auth), std::slice::from_ref(&token));
    let issued = setup.auth.issued_tokens();
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
    let log = scratch.log();
    let signature = token.rsplit('.').next().expect("a JWT");
    assert!(log.contains("authorized"), "{log}");
    assert!(
        !log.contains(signature) && issued.iter().all(|t| !log.contains(t.as_str())),
        "the log shows the assertion or a token:\n{log}"
    );
}

#[tokio::test]
async fn a_refused_workload_token_fails_once_without_a_browser() {
    let platform = Signer::new("https://kubernetes.default.svc");
    for (what, audience, lifetime) in [
        ("wrong audience", Some("https://wrong.example"), 300),
        ("expired", None, -60),
    ] {
        let setup = protected()
            .refresh_tokens(false)
            .trusting(platform.trusted(None))
            .start()
            .await;
        let scratch = TempDir::new(&format!("wif-refused-{lifetime}"));
        let file = scratch.path().join("token");
        let issuer = setup.auth.issuer();
        let token = workload_token(&platform, audience.unwrap_or(&issuer), "1", lifetime);
        std::fs::write(&file, &token).expect("write the token");
        let daemon = setup
            .daemon(&[
                "[servers.notes.oauth]",
                "grant = \"jwt_bearer\"",
                &format!("assertion_file = {:?}", file.display().to_string()),
            ])
            .start()
            .await;
        let response = daemon.initialize("/notes").await;
        assert_eq!(response.status(), 503, "{what}");
        let body = response.text().await.expect("body");
        assert!(body.contains("invalid_grant"), "{what}: {body}");
        assert!(!body.contains(&token), "{what}: the error shows the token");
        assert_eq!(assertions(&setup.auth).len(), 1, "{what}: one grant");
        assert!(!setup.auth.paths().iter().any(|p| p.ends_with("/authorize")));
        // The page offers another try, not a sign-in nobody could do.
        let server = &daemon.status().await["servers"][0];
        assert_eq!(server["summary"]["state"], "error", "{what}: {server}");
        let page = daemon.page("text/html").await;
        assert!(
            page.contains(">Get a token<") && !page.contains(">Sign in<"),
            "{what}: {page}"
        );
    }
}

/// The config's errors for a JWT bearer grant, each naming the key.
#[test]
fn workload_token_config_errors_name_the_key() {
    let check = |oauth: &str| -> String {
        let text = format!(
            "[servers.ci]\nurl = \"https://mcp.example.com/mcp\"\n[servers.ci.oauth]\n{oauth}\n"
        );
        match latchkey::config::parse(Path::new("/nonexistent/test.toml"), &text, |_| None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let neither = check("grant = \"jwt_bearer\"");
    assert!(
        neither.contains("needs the workload's token") && neither.contains("assertion_file"),
        "{neither}"
    );
    let both = check("grant = \"jwt_bearer\"\nassertion_file = \"/t\"\nassertion_env = \"T\"");
    assert!(
        both.contains("given twice: assertion_file and assertion_env"),
        "{both}"
    );
    let missing = check("grant = \"jwt_bearer\"\nassertion_file = \"/nonexistent/token\"");
    assert!(
        missing.contains("cannot read assertion_file /nonexistent/token"),
        "{missing}"
    );
    let unset = check("grant = \"jwt_bearer\"\nassertion_env = \"WORKLOAD_TOKEN\"");
    assert!(
        unset.contains("WORKLOAD_TOKEN (assertion_env) is not set"),
        "{unset}"
    );
    let stray = check("assertion_file = \"/t\"");
    assert!(
        stray.contains("only used with grant = \"jwt_bearer\""),
        "{stray}"
    );
}

/// An MCP server whose authorization server trusts `idp`'s ID-JAGs, where latchkey's
/// client is `client` (secret `client-secret`), allowed by the IdP's policy.
async fn trusting(idp: &Idp, client: &str) -> Protected {
    let server = protected()
        .prefix(&format!("{client}-"))
        .dcr(false)
        .refresh_tokens(false)
        .client(client, "client-secret")
        .trusting(idp.trusted())
        .start()
        .await;
    idp.allow(&server.auth.issuer(), client);
    server
}

/// A daemon with the IdP `corp` and the servers `wiki` and `tracker` that trust it.
fn enterprise_daemon(idp: &Idp, servers: &[(&str, &Protected)]) -> DaemonBuilder {
    let mut builder = Daemon::builder().top(&format!(
        "[idps.corp]\nissuer = {:?}\nclient_id = \"latchkey-desktop\"\nclient_secret = \"idp-secret-1\"\nscopes = [\"openid\", \"offline_access\"]",
        idp.issuer()
    ));
    for (name, server) in servers {
        let client = server.auth.clients()[0].client_id.clone();
        builder = builder.server(
            name,
            &server.mcp_url(),
            &[
                &format!("[servers.{name}.oauth]"),
                "grant = \"enterprise\"",
                "idp = \"corp\"",
                &format!("client_id = {client:?}"),
                "client_secret = \"client-secret\"",
            ],
        );
    }
    builder
}

/// Whether anyone was sent to `server`'s authorization endpoint.
fn redirected_to(server: &Protected) -> bool {
    server
        .auth
        .paths()
        .iter()
        .any(|p| p.ends_with("/authorize"))
}

#[tokio::test]
async fn one_login_at_the_idp_serves_every_server_that_trusts_it() {
    let idp = Idp::start(IdpOptions::default()).await.expect("idp");
    let wiki = trusting(&idp, "wiki-app").await;
    let tracker = trusting(&idp, "tracker-app").await;
    let browser = ScriptedBrowser::approving();
    let daemon = enterprise_daemon(&idp, &[("wiki", &wiki), ("tracker", &tracker)])
        .browser(browser.clone())
        .start()
        .await;
    // Both at once: the second waits for the first one's login instead of its own.
    let (a, b) = tokio::join!(daemon.initialize("/wiki"), daemon.initialize("/tracker"));
    assert_ok(a).await;
    assert_ok(b).await;
    assert_eq!(
        (idp.logins(), browser.opened()),
        (1, 1),
        "{:?}",
        idp.grants()
    );
    let exchanges = idp.exchanges();
    assert_eq!(exchanges.len(), 2);
    for (server, client) in [(&wiki, "wiki-app"), (&tracker, "tracker-app")] {
        let exchange = exchanges
            .iter()
            .find(|e| e["audience"] == server.auth.issuer())
            .expect("an exchange for each authorization server");
        assert_eq!(exchange["resource"], server.mcp_url());
        assert_eq!(
            exchange["subject_token_type"],
            "urn:ietf:params:oauth:token-type:id_token"
        );
        assert_eq!(
            exchange["requested_token_type"],
            "urn:ietf:params:oauth:token-type:id-jag"
        );
        let grant = server.last_grant();
        assert_eq!(grant.client_id, client);
        assert_eq!(grant.resource.as_deref(), Some(server.mcp_url().as_str()));
        assert_eq!(server.auth.token_requests(), [JWT_BEARER]);
        assert!(
            !redirected_to(server),
            "no redirect to the MCP authorization server"
        );
        assert!(
            declares_the_extension(server),
            "the initialize declares the extension"
        );
    }
}

/// Whether the initialize that reached `server` with a token declared
/// Enterprise-Managed Authorization, and kept what the client declared.
fn declares_the_extension(server: &Protected) -> bool {
    server.upstream.requests().iter().any(|r| {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return false;
        };
        r.headers.contains_key("authorization")
            && message["method"] == "initialize"
            && message["params"]["capabilities"]["extensions"]
                ["io.modelcontextprotocol/enterprise-managed-authorization"]
                == json!({})
            && message["params"]["clientInfo"]["name"] == "latchkey-tests"
    })
}

/// Two latchkey processes on one store (two daemons here, each with its own store
/// and sessions, as two processes have): the IdP's lock file lets one log in, and
/// the other uses the ID token it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_store_share_one_login_at_the_idp() {
    let idp = Idp::start(IdpOptions::default()).await.expect("idp");
    let wiki = trusting(&idp, "wiki-app").await;
    let tracker = trusting(&idp, "tracker-app").await;
    let state = TempDir::new("ema-two-processes");
    let browser = ScriptedBrowser::approving();
    let first = enterprise_daemon(&idp, &[("wiki", &wiki)])
        .store(Store::File(state.path().to_owned()))
        .browser(browser.clone())
        .start()
        .await;
    let second = enterprise_daemon(&idp, &[("tracker", &tracker)])
        .store(Store::File(state.path().to_owned()))
        .browser(browser.clone())
        .start()
        .await;
    let (a, b) = tokio::join!(first.initialize("/wiki"), second.initialize("/tracker"));
    assert_ok(a).await;
    assert_ok(b).await;
    assert_eq!(
        (idp.logins(), browser.opened()),
        (1, 1),
        "{:?}",
        idp.grants()
    );
    assert_eq!(idp.exchanges().len(), 2);
}

#[tokio::test]
async fn an_expired_id_token_is_refreshed_at_the_idp_not_logged_in_again() {
    // ID tokens that are within the expiry margin as soon as they are issued.
    let idp = Idp::start(IdpOptions {
        id_token_lifetime: 5,
        ..IdpOptions::default()
    })
    .await
    .expect("idp");
    let wiki = trusting(&idp, "wiki-app").await;
    let tracker = trusting(&idp, "tracker-app").await;
    let browser = ScriptedBrowser::approving();
    let daemon = enterprise_daemon(&idp, &[("wiki", &wiki), ("tracker", &tracker)])
        .browser(browser.clone())
        .start()
        .await;
    assert_ok(daemon.initialize("/wiki").await).await;
    assert_ok(daemon.initialize("/tracker").await).await;
    assert_eq!(browser.opened(), 1);
    let grants = idp.grants();
    let count = |g: &str| grants.iter().filter(|x| *x == g).count();
    assert_eq!(count("authorization_code"), 1, "{grants:?}");
    assert_eq!(count("refresh_token"), 1, "{grants:?}");
}

#[tokio::test]
async fn an_id_jag_for_another_audience_or_expired_is_refused_by_the_authorization_server() {
    for (what, options) in [
        (
            "wrong audience",
            IdpOptions {
                jag_audience: Some("https://other-as.example".into()),
                ..IdpOptions::default()
            },
        ),
        (
            "expired",
            IdpOptions {
                expired_jags: true,
                ..IdpOptions::default()
            },
        ),
    ] {
        let idp = Idp::start(options).await.expect("idp");
        let wiki = trusting(&idp, "wiki-app").await;
        let daemon = enterprise_daemon(&idp, &[("wiki", &wiki)])
            .browser(ScriptedBrowser::approving())
            .start()
            .await;
        let response = daemon.initialize("/wiki").await;
        assert_eq!(response.status(), 503, "{what}");
        let body = response.text().await.expect("body");
        assert!(body.contains("invalid_grant"), "{what}: {body}");
        assert!(
            idp.issued().iter().all(|t| !body.contains(t.as_str())),
            "{what}: {body}"
        );
        assert_eq!(wiki.auth.token_requests(), [JWT_BEARER], "{what}");
        assert!(!redirected_to(&wiki), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_token_or_id_jag_reaches_the_debug_log() {
    let idp = Idp::start(IdpOptions::default()).await.expect("idp");
    let wiki = trusting(&idp, "wiki-app").await;
    let scratch = TempDir::new("ema-log");
    let config = scratch.write_config(&enterprise_daemon(&idp, &[("wiki", &wiki)]).toml());
    let browser = scratch.approving_browser(0);
    let daemon = serve(&scratch, &config)
        .env("BROWSER", &browser)
        .env("RUST_LOG", "trace")
        .start()
        .await;
    assert_eq!(daemon.initialize("/wiki").await.status(), 200);
    assert_eq!(idp.logins(), 1);
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
    let log = scratch.log();
    assert!(log.contains("authorized"), "{log}");
    let secrets: Vec<String> = idp
        .issued()
        .iter()
        .map(|jwt| jwt.rsplit('.').next().expect("a JWT").to_owned())
        .chain(wiki.auth.issued_tokens())
        .collect();
    assert_eq!(secrets.len(), 3, "an ID token, an ID-JAG, an access token");
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log shows {secret}:\n{log}"
        );
    }
}

/// The config's errors for Enterprise-Managed Authorization, each naming the key.
#[test]
fn enterprise_config_errors_name_the_key() {
    let check = |text: &str| -> String {
        match latchkey::config::parse(Path::new("/nonexistent/test.toml"), text, |_| None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let server = "[servers.wiki]\nurl = \"https://wiki.example.com/mcp\"\n[servers.wiki.oauth]\n";
    let idp = "[idps.corp]\nissuer = \"https://login.example.com\"\nclient_id = \"latchkey\"\n";
    assert_eq!(
        check(&format!(
            "{idp}{server}grant = \"enterprise\"\nidp = \"corp\""
        )),
        ""
    );
    let unnamed = check(&format!("{idp}{server}grant = \"enterprise\""));
    assert!(
        unnamed.contains("needs the identity provider") && unnamed.contains("idp = \"NAME\""),
        "{unnamed}"
    );
    let unknown = check(&format!(
        "{idp}{server}grant = \"enterprise\"\nidp = \"okta\""
    ));
    assert!(
        unknown.contains("no [idps.okta] table; configured: corp"),
        "{unknown}"
    );
    let stray = check(&format!("{idp}{server}idp = \"corp\""));
    assert!(
        stray.contains("idp is only used with grant = \"enterprise\""),
        "{stray}"
    );
    let incomplete = check(&format!("[idps.corp]\nscopes = [\"openid\"]\n{server}"));
    assert!(
        incomplete.contains("[idps.corp] needs issuer")
            && incomplete.contains("[idps.corp] needs client_id"),
        "{incomplete}"
    );
    let unset = check(&format!("{idp}id_token_env = \"SSO_TOKEN\"\n{server}"));
    assert!(
        unset.contains("SSO_TOKEN (id_token_env) is not set"),
        "{unset}"
    );
}
