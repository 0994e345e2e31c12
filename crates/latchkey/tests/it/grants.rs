//! The grants that need no person at the MCP server's authorization server:
//! workload identity (a JWT from the workload's platform, RFC 7523 §2.1, SEP-1933)
//! and Enterprise-Managed Authorization (one login at the enterprise IdP, then an
//! ID-JAG for each server that trusts it).

use std::path::Path;

use latchkey_testkit::jwt::Signer;
use serde_json::json;

use crate::binary::serve;
use crate::harness::{TempDir, assert_ok, protected};

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
            "grant = \"jwt-bearer\"",
            &format!("assertion_file = {:?}", file.display().to_string()),
        ])
        .start()
        .await;
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
                "grant = \"jwt-bearer\"",
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
                "grant = \"jwt-bearer\"",
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
    let neither = check("grant = \"jwt-bearer\"");
    assert!(
        neither.contains("needs the workload's token") && neither.contains("assertion_file"),
        "{neither}"
    );
    let both = check("grant = \"jwt-bearer\"\nassertion_file = \"/t\"\nassertion_env = \"T\"");
    assert!(both.contains("given twice"), "{both}");
    let missing = check("grant = \"jwt-bearer\"\nassertion_file = \"/nonexistent/token\"");
    assert!(
        missing.contains("cannot read assertion_file /nonexistent/token"),
        "{missing}"
    );
    let unset = check("grant = \"jwt-bearer\"\nassertion_env = \"WORKLOAD_TOKEN\"");
    assert!(
        unset.contains("WORKLOAD_TOKEN (assertion_env) is not set"),
        "{unset}"
    );
    let stray = check("assertion_file = \"/t\"");
    assert!(
        stray.contains("only used with grant = \"jwt-bearer\""),
        "{stray}"
    );
}
