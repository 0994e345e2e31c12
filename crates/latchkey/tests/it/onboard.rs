//! The first steps through the real binary: `latchkey init`, `latchkey add` against
//! real servers on loopback, and `latchkey import` on each client's config in its
//! real format and place (`tests/fixtures/import`), with `--rewrite` run twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use latchkey_testkit::McpUpstream;

use crate::harness::{TempDir, protected};

/// The binary with `HOME` and the XDG directories in `home`, so that it finds only
/// the client configs a test puts there.
fn latchkey(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("CODEX_HOME")
        .env_remove("FIGMA_TOKEN")
        .env("TEAM", "blue")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .output()
        .expect("run latchkey")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const COMMENTED: &str = "# my servers\nstore = \"memory\" # nothing kept\n\n# the wiki\n[servers.wiki]\nurl = \"https://wiki.example.com/mcp\" # keep this\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_probes_each_kind_of_server_and_keeps_the_comments() {
    let dir = TempDir::new("onboard-add");
    let config = dir.write_config(COMMENTED);
    let c = config.to_str().expect("path");
    let setup = protected().start().await;
    let open = McpUpstream::start().await.expect("upstream");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!("http://{}/mcp", closed.local_addr().expect("addr"));
    drop(closed);

    let home = dir.path().to_owned();
    let run = move |args: Vec<String>| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            latchkey(&home, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let args = |name: &str, url: &str, extra: &[&str]| {
        let mut a: Vec<String> = ["add", name, url, "--config", c].map(str::to_owned).into();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };

    let out = run(args(
        "jira",
        &setup.mcp_url(),
        &["--header", "X-Team: ${TEAM}"],
    ))
    .await
    .expect("join");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("needs a login, at {}", setup.auth.issuer()))
            && said.contains(&format!("`latchkey login jira --config {c}`")),
        "{said}"
    );
    // Not the usual config file: the commands name it, or they would not find jira.
    assert!(
        said.contains("claude mcp add --transport http jira http://127.0.0.1:8931/jira")
            && said.contains(&format!("latchkey stdio jira --config {c}"))
            && said.contains("[mcp_servers.jira]")
            && said.contains("\"httpUrl\": \"http://127.0.0.1:8931/jira\""),
        "{said}"
    );

    let out = run(args(
        "open",
        &open.mcp_url(),
        &["--transport", "streamable-http"],
    ))
    .await
    .expect("join");
    assert!(
        text(&out).contains("The server answers (Streamable HTTP) and needs no login."),
        "{}",
        text(&out)
    );

    let out = run(args("gone", &closed_url, &[])).await.expect("join");
    let said = text(&out);
    assert!(
        out.status.success()
            && said.contains("could not be reached")
            && said.contains("added anyway"),
        "{said}"
    );

    // A name in use, and a URL that is not one: refused, nothing written.
    let before = std::fs::read_to_string(&config).expect("config");
    let out = run(args("wiki", "https://x.example/mcp", &[]))
        .await
        .expect("join");
    assert!(
        !out.status.success() && text(&out).contains("latchkey remove wiki"),
        "{}",
        text(&out)
    );
    let out = run(args("bad", "not a url", &[])).await.expect("join");
    assert!(
        !out.status.success() && text(&out).contains("nothing was written"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&config).expect("config"), before);

    assert!(
        before.starts_with(COMMENTED),
        "the comments survive:\n{before}"
    );
    assert!(
        before.contains("[servers.jira]\nurl = ")
            && before.contains("headers = { X-Team = \"${TEAM}\" }")
            && before.contains("[servers.open]\nurl = ")
            && before.contains("transport = \"streamable-http\""),
        "{before}"
    );
    let out = run(vec!["check".into(), "--config".into(), c.into()])
        .await
        .expect("join");
    assert!(out.status.success(), "{}", text(&out));

    // remove takes the table out and leaves the rest as it was.
    let out = run(vec![
        "remove".into(),
        "open".into(),
        "--config".into(),
        c.into(),
    ])
    .await
    .expect("join");
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::read_to_string(&config).expect("config");
    assert!(
        !after.contains("[servers.open]")
            && after.starts_with(COMMENTED)
            && after.contains("[servers.jira]"),
        "{after}"
    );
    let out = run(vec![
        "remove".into(),
        "nope".into(),
        "--config".into(),
        c.into(),
    ])
    .await
    .expect("join");
    assert!(
        !out.status.success() && text(&out).contains("there is no [servers.nope]"),
        "{}",
        text(&out)
    );
}

#[test]
fn init_writes_a_starter_and_a_missing_config_names_the_commands() {
    let dir = TempDir::new("onboard-init");
    let path = dir.path().join("latchkey/config.toml");
    let p = path.to_str().expect("path");
    let out = latchkey(dir.path(), &["serve", "--config", p]);
    let said = text(&out);
    assert!(
        !out.status.success()
            && said.contains("latchkey add NAME URL")
            && said.contains("latchkey init")
            && !said.contains("config/example.toml"),
        "{said}"
    );
    let out = latchkey(dir.path(), &["init", "--config", p]);
    assert!(out.status.success(), "{}", text(&out));
    let starter = std::fs::read_to_string(&path).expect("starter");
    assert!(starter.starts_with("# latchkey's config"), "{starter}");
    let out = latchkey(dir.path(), &["init", "--config", p]);
    assert!(
        !out.status.success() && text(&out).contains("already exists"),
        "{}",
        text(&out)
    );
    // The starter with no server says how to add one; `add` then makes it whole.
    let out = latchkey(dir.path(), &["check", "--config", p]);
    assert!(
        text(&out).contains("latchkey add NAME URL"),
        "{}",
        text(&out)
    );
    let out = latchkey(
        dir.path(),
        &["add", "notes", "http://127.0.0.1:9/mcp", "--config", p],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = latchkey(dir.path(), &["check", "--config", p]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read_to_string(&path)
            .expect("config")
            .starts_with(&starter)
    );
}

/// The fixture of each client, at the place the client keeps it under `home`.
fn place_client_configs(home: &Path) -> Vec<PathBuf> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import");
    let places = [
        (
            "claude-desktop/claude_desktop_config.json",
            ".config/Claude/claude_desktop_config.json",
        ),
        ("claude-code/.claude.json", ".claude.json"),
        ("cursor/.cursor/mcp.json", ".cursor/mcp.json"),
        ("vscode/mcp.json", ".config/Code/User/mcp.json"),
        ("codex/config.toml", ".codex/config.toml"),
        ("gemini/.gemini/settings.json", ".gemini/settings.json"),
        ("opencode/opencode.json", ".config/opencode/opencode.json"),
    ];
    places
        .iter()
        .map(|(from, to)| {
            let to = home.join(to);
            std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
            std::fs::copy(fixtures.join(from), &to).expect("copy fixture");
            to
        })
        .collect()
}

fn read_all(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect()
}

fn backups(home: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.to_string_lossy().contains(".latchkey-backup") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(home, &mut out);
    out.sort();
    out
}

const SECRETS: &[&str] = &[
    "work-secret-value",
    "sk_test_stripe_secret",
    "sentry-key-value",
    "acme-tenant-id",
];

#[test]
fn import_finds_every_clients_remote_servers_and_rewrite_twice_changes_nothing() {
    let dir = TempDir::new("onboard-import");
    let home = dir.path();
    let clients = place_client_configs(home);
    let originals = read_all(&clients);
    let config = home.join(".config/latchkey/config.toml");

    // Without --rewrite: latchkey's config gains the servers, the clients' files
    // stay as they were.
    let out = latchkey(home, &["import"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        read_all(&clients),
        originals,
        "nothing written to the clients without --rewrite"
    );
    assert!(backups(home).is_empty());
    for secret in SECRETS {
        assert!(!said.contains(secret), "{secret} shown:\n{said}");
    }
    for line in [
        "Claude Desktop (",
        "linear: added as [servers.linear]",
        "atlassian-work: added as [servers.atlassian-work]",
        "sentry: added as [servers.sentry]",
        "notion: added as [servers.notion]",
        "stripe: added as [servers.stripe]",
        "github: added as [servers.github]",
        "docs: added as [servers.docs]",
        "deepwiki: added as [servers.deepwiki]",
        "events: added as [servers.events]",
        "context7: added as [servers.context7]",
        "jira: added as [servers.jira]",
        "old-sse: added as [servers.old-sse]",
        "linear: already in latchkey as [servers.linear]",
        "figma: not added: ",
        "FIGMA_TOKEN is not set",
        "latchkey import --rewrite",
    ] {
        assert!(said.contains(line), "missing {line:?} in:\n{said}");
    }
    for local in ["filesystem", "local-db", "playwright", "shell", "local-git"] {
        assert!(
            !said.contains(&format!("{local}:")),
            "{local} is a local server:\n{said}"
        );
    }
    let toml: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).expect("config")).expect("toml");
    let servers = toml["servers"].as_table().expect("servers");
    assert_eq!(servers.len(), 12, "{servers:#?}");
    let work = &servers["atlassian-work"];
    assert_eq!(
        work["url"].as_str(),
        Some("https://mcp.example.com/atlassian/v1/mcp")
    );
    assert_eq!(work["transport"].as_str(), Some("streamable-http"));
    assert_eq!(work["headers"]["X-Tenant"].as_str(), Some("acme-tenant-id"));
    assert_eq!(work["oauth"]["client_id"].as_str(), Some("work-client"));
    assert_eq!(
        servers["stripe"]["headers"]["Authorization"].as_str(),
        Some("Bearer sk_test_stripe_secret")
    );
    assert_eq!(servers["old-sse"]["transport"].as_str(), Some("sse"));
    assert_eq!(
        servers["events"]["transport"].as_str(),
        Some("sse"),
        "Gemini's url is SSE"
    );
    assert!(
        servers["deepwiki"].get("transport").is_none(),
        "Gemini's httpUrl is Streamable HTTP"
    );
    let out = latchkey(home, &["check", "--config", config.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    let config_after_first = std::fs::read_to_string(&config).expect("config");

    // --rewrite: each file backed up, then pointed at latchkey, with a diff.
    let out = latchkey(home, &["import", "--rewrite"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        config_after_first,
        "nothing new to add"
    );
    for secret in SECRETS {
        assert!(!said.contains(secret), "{secret} shown:\n{said}");
    }
    assert!(
        said.contains("--- ")
            && said.contains("+++ ")
            && said.contains("+      \"url\": \"http://127.0.0.1:8931/sentry\""),
        "a diff of each file:\n{said}"
    );
    let saved = backups(home);
    assert_eq!(saved.len(), 7, "one backup per client file: {saved:?}");
    for (client, original) in clients.iter().zip(&originals) {
        let backup = saved
            .iter()
            .find(|b| b.to_string_lossy().starts_with(&*client.to_string_lossy()))
            .expect("backup beside the file");
        assert_eq!(&std::fs::read_to_string(backup).expect("backup"), original);
    }
    let now = read_all(&clients);
    let json = |i: usize| -> serde_json::Value { serde_json::from_str(&now[i]).expect("json") };
    let desktop = json(0);
    assert_eq!(
        desktop["mcpServers"]["linear"]["args"],
        serde_json::json!(["stdio", "linear"])
    );
    assert!(
        desktop["mcpServers"]["linear"]["command"]
            .as_str()
            .expect("command")
            .ends_with("latchkey")
    );
    assert_eq!(
        desktop["mcpServers"]["filesystem"]["command"], "npx",
        "local servers stay"
    );
    assert_eq!(
        desktop["globalShortcut"], "Ctrl+Space",
        "the rest of the file stays"
    );
    let code = json(1);
    assert_eq!(
        code["mcpServers"]["sentry"],
        serde_json::json!({"type": "http", "url": "http://127.0.0.1:8931/sentry"})
    );
    assert_eq!(
        code["projects"]["/home/me/src/app"]["mcpServers"]["notion"]["url"],
        "http://127.0.0.1:8931/notion"
    );
    assert_eq!(code["numStartups"], 12);
    assert_eq!(
        json(2)["mcpServers"]["stripe"],
        serde_json::json!({"url": "http://127.0.0.1:8931/stripe"})
    );
    assert_eq!(
        json(3)["servers"]["github"],
        serde_json::json!({"type": "http", "url": "http://127.0.0.1:8931/github"})
    );
    assert!(
        now[4].starts_with("# Codex settings\n"),
        "comments stay:\n{}",
        now[4]
    );
    assert!(
        now[4].contains("[mcp_servers.docs]\nurl = \"http://127.0.0.1:8931/docs\""),
        "{}",
        now[4]
    );
    assert!(
        now[4].contains("bearer_token_env_var = \"FIGMA_TOKEN\""),
        "figma was not added: it stays:\n{}",
        now[4]
    );
    let gemini = json(5);
    assert_eq!(
        gemini["mcpServers"]["deepwiki"],
        serde_json::json!({"timeout": 30000, "httpUrl": "http://127.0.0.1:8931/deepwiki"})
    );

    assert!(
        now[6].contains("// opencode's config is JSONC"),
        "JSON comments stay:\n{}",
        now[6]
    );
    let opencode: serde_json::Value =
        jsonc_parser::parse_to_serde_value(&now[6], &Default::default()).expect("jsonc");
    assert_eq!(
        opencode["mcp"]["jira"],
        serde_json::json!({"type": "remote", "url": "http://127.0.0.1:8931/jira"})
    );
    assert_eq!(opencode["mcp"]["context7"]["enabled"], true);
    assert_eq!(
        opencode["mcp"]["local-git"]["command"],
        serde_json::json!(["git-mcp"])
    );

    // A second --rewrite: everything already goes through latchkey.
    let out = latchkey(home, &["import", "--rewrite"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        read_all(&clients),
        now,
        "the second rewrite changes nothing"
    );
    assert_eq!(backups(home), saved, "and writes no backup");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        config_after_first
    );
    assert!(said.contains("already through latchkey"), "{said}");
}
