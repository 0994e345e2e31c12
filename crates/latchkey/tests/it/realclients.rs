//! Real MCP clients that manage their servers without a model, pinned from npm:
//! Claude Code (`claude mcp list`) and opencode (`opencode mcp list`). Each first
//! has an OAuth-protected server configured as its user would (straight to the
//! server, which it cannot use without a login of its own); `latchkey import
//! --rewrite` moves it behind latchkey, and a second server comes from `latchkey
//! add`'s snippets as printed. Both clients then report every server connected,
//! through the daemon's endpoint and through `latchkey stdio`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::binary::Serve;
use crate::harness::{TempDir, interop, protected};

#[derive(Clone)]
struct Home {
    path: PathBuf,
    port: u16,
    browser: PathBuf,
}

impl Home {
    fn path(&self) -> &Path {
        &self.path
    }

    /// `PATH` with latchkey and the pinned clients first, as after an install.
    fn path_var(&self) -> String {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_latchkey"));
        // opencode is its Linux x64 package: the npm mirror has no other platform's,
        // which `opencode-ai` lists, so it cannot be locked for `npm ci`.
        format!(
            "{}:{}:{}:{}",
            bin.parent().expect("bin dir").display(),
            interop("node_modules/.bin").display(),
            interop("node_modules/opencode-linux-x64/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// A command as the person's shell runs it, in this home.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.path())
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("RUST_LOG")
            .env("HOME", self.path())
            .env("PATH", self.path_var())
            .env("XDG_CONFIG_HOME", self.path().join(".config"))
            .env("XDG_STATE_HOME", self.path().join("state"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            // The person's browser, which approves each login at once.
            .env("BROWSER", &self.browser)
            // Neither client may phone home from a test.
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("OPENCODE_DISABLE_AUTOUPDATE", "1");
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
        text
    }

    /// `sh -c LINE`, for a snippet as printed.
    fn shell(&self, line: &str) -> String {
        self.run("sh", &["-c", line])
    }
}

/// The lines of the snippet `latchkey add` printed under `heading`.
fn snippet(printed: &str, heading: &str) -> String {
    let mut lines = printed.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
        out.push(line.trim_start_matches("    "));
    }
    assert!(!out.is_empty(), "no {heading} in:\n{printed}");
    out.join("\n")
}

/// `ESC[…m` colours out, so that the clients' lists can be read.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_and_opencode_connect_through_the_endpoint_and_stdio_after_import() {
    let notes = protected().start().await;
    let wiki = protected().start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = TempDir::new("realclients");
    let home = Home {
        path: dir.path().to_owned(),
        port,
        browser: dir.approving_browser(0),
    };
    let config = home.path().join(".config/latchkey/config.toml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &config,
        format!(
            "# latchkey\nlisten = \"127.0.0.1:{}\"\nstore = \"file\"\nstate_dir = {:?}\n",
            home.port,
            home.path().join("state")
        ),
    )
    .expect("config");

    // Each client with `notes` as its user set it up: straight to the server.
    home.run(
        "claude",
        &[
            "mcp",
            "add",
            "--scope",
            "user",
            "--transport",
            "http",
            "notes",
            &notes.mcp_url(),
        ],
    );
    let opencode = home.path().join(".config/opencode/opencode.json");
    std::fs::create_dir_all(opencode.parent().expect("dir")).expect("mkdir");
    std::fs::write(
        &opencode,
        serde_json::to_string_pretty(&serde_json::json!({
            "$schema": "https://opencode.ai/config.json",
            "mcp": {"notes": {"type": "remote", "url": notes.mcp_url()}}
        }))
        .expect("json"),
    )
    .expect("opencode config");

    let imported = home.run("latchkey", &["import", "--rewrite"]);
    assert!(
        imported.contains("notes: added as [servers.notes]"),
        "{imported}"
    );
    assert!(
        imported.contains("notes: already in latchkey as [servers.notes]"),
        "{imported}"
    );
    let endpoint = format!("http://127.0.0.1:{}/notes", home.port);
    assert!(
        imported.contains(&format!("\"url\": \"{endpoint}\"")),
        "{imported}"
    );

    // `wiki` from `latchkey add`, with its snippets run as printed.
    let added = home.run("latchkey", &["add", "wiki", &wiki.mcp_url(), "--no-login"]);
    assert!(added.contains("needs a login"), "{added}");
    // The endpoint form under another name: a client holds one entry per name.
    home.shell(&snippet(&added, "Claude Code (endpoint, shell):").replacen(
        " wiki ",
        " wiki-http ",
        1,
    ));
    home.shell(&snippet(&added, "Claude Code (stdio, shell):"));
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&opencode).expect("read")).expect("json");
    for (heading, name) in [
        (
            "opencode (endpoint, ~/.config/opencode/opencode.json):",
            "wiki-http",
        ),
        (
            "opencode (stdio, ~/.config/opencode/opencode.json):",
            "wiki",
        ),
    ] {
        let part: serde_json::Value =
            serde_json::from_str(&snippet(&added, heading)).expect("snippet json");
        doc["mcp"][name] = part["mcp"]["wiki"].clone();
    }
    std::fs::write(&opencode, serde_json::to_string_pretty(&doc).expect("json")).expect("write");

    let mut serve = home.command(env!("CARGO_BIN_EXE_latchkey"));
    serve.arg("serve");
    let daemon = Serve::new(serve).logged().start().await;
    assert_eq!(daemon.addr.port(), home.port);

    let lister = home.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let claude = lister.run("claude", &["mcp", "list"]);
        let opencode = lister.run("opencode", &["mcp", "list"]);
        plain(&format!("{claude}\n{opencode}"))
    })
    .await
    .expect("join");
    for line in [
        format!("notes: {endpoint} (HTTP) - ✔ Connected"),
        format!(
            "wiki-http: http://127.0.0.1:{}/wiki (HTTP) - ✔ Connected",
            home.port
        ),
        "wiki: latchkey stdio wiki - ✔ Connected".to_owned(),
    ] {
        assert!(
            listed.contains(&line),
            "claude mcp list lacks {line:?}:\n{listed}"
        );
    }
    for name in ["notes", "wiki-http", "wiki"] {
        assert!(
            listed
                .lines()
                .any(|l| l.contains(&format!(" {name} ")) && l.contains("connected")),
            "opencode mcp list lacks {name} connected:\n{listed}"
        );
    }
    assert_eq!(
        notes.logins(),
        1,
        "one login for notes, shared by every client"
    );
    assert!(wiki.logins() >= 1);
    drop(daemon);
}
