//! What to paste into each MCP client to use a latchkey server, in both forms: the
//! daemon's local endpoint for clients that speak Streamable HTTP, and `latchkey
//! stdio NAME` for clients that launch their servers. `latchkey add` and `latchkey
//! url --snippets` print these and the status page shows the same text, so they
//! never disagree. Each
//! client's format is its own documented one (Claude Code's `claude mcp add`, VS
//! Code's `mcp.json` `servers`, Cursor's and Gemini CLI's `mcpServers`, Codex's
//! `[mcp_servers]` TOML, opencode's `mcp`).

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstRootNode};

/// One client's snippet for one form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snippet {
    pub client: &'static str,
    /// Where the text goes: a shell, or the client's config file.
    pub place: &'static str,
    /// `endpoint` or `stdio`.
    pub form: &'static str,
    pub text: String,
}

/// Every client's snippets for the server `name`, served at `url`; `config_file`
/// when `latchkey stdio` must be told where the config is.
pub fn snippets(name: &str, url: &str, config_file: Option<&str>) -> Vec<Snippet> {
    let args = stdio_args(name, config_file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shell_args = args
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let quoted = |s: &str| shell_quote(s);
    let text = |s: &str| CstInputValue::String(s.to_owned());
    // `{ "<top>": { "<name>": { <fields> } } }`, in the order a person writes it.
    let config = |top: &str, fields: Vec<(&str, CstInputValue)>| {
        let entry =
            CstInputValue::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        let doc = CstInputValue::Object(vec![(
            top.to_owned(),
            CstInputValue::Object(vec![(name.to_owned(), entry)]),
        )]);
        let root =
            CstRootNode::parse("", &ParseOptions::default()).expect("an empty document parses");
        root.set_value(doc);
        root.to_string().trim().to_owned()
    };
    let stdio = || {
        vec![
            ("command", text("latchkey")),
            (
                "args",
                CstInputValue::Array(args.iter().map(|a| text(a)).collect()),
            ),
        ]
    };
    vec![
        Snippet {
            client: "Claude Code",
            place: "shell",
            form: "endpoint",
            text: format!(
                "claude mcp add --transport http {} {}",
                quoted(name),
                quoted(url)
            ),
        },
        Snippet {
            client: "Claude Code",
            place: "shell",
            form: "stdio",
            text: format!("claude mcp add {} -- latchkey {shell_args}", quoted(name),),
        },
        Snippet {
            client: "VS Code",
            place: ".vscode/mcp.json",
            form: "endpoint",
            text: config("servers", vec![("type", text("http")), ("url", text(url))]),
        },
        Snippet {
            client: "VS Code",
            place: ".vscode/mcp.json",
            form: "stdio",
            text: config("servers", [vec![("type", text("stdio"))], stdio()].concat()),
        },
        Snippet {
            client: "Cursor",
            place: "~/.cursor/mcp.json",
            form: "endpoint",
            text: config("mcpServers", vec![("url", text(url))]),
        },
        Snippet {
            client: "Cursor",
            place: "~/.cursor/mcp.json",
            form: "stdio",
            text: config("mcpServers", stdio()),
        },
        Snippet {
            client: "Codex",
            place: "~/.codex/config.toml",
            form: "endpoint",
            text: format!(
                "[mcp_servers.{}]\nurl = {}",
                toml_key(name),
                toml_string(url)
            ),
        },
        Snippet {
            client: "Codex",
            place: "~/.codex/config.toml",
            form: "stdio",
            text: format!(
                "[mcp_servers.{}]\ncommand = \"latchkey\"\nargs = [{}]",
                toml_key(name),
                args.iter()
                    .map(|a| toml_string(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        Snippet {
            client: "Gemini CLI",
            place: "~/.gemini/settings.json",
            form: "endpoint",
            text: config("mcpServers", vec![("httpUrl", text(url))]),
        },
        Snippet {
            client: "Gemini CLI",
            place: "~/.gemini/settings.json",
            form: "stdio",
            text: config("mcpServers", stdio()),
        },
        Snippet {
            client: "opencode",
            place: "~/.config/opencode/opencode.json",
            form: "endpoint",
            text: config("mcp", vec![("type", text("remote")), ("url", text(url))]),
        },
        Snippet {
            client: "opencode",
            place: "~/.config/opencode/opencode.json",
            form: "stdio",
            text: config(
                "mcp",
                vec![
                    ("type", text("local")),
                    (
                        "command",
                        CstInputValue::Array(
                            std::iter::once("latchkey")
                                .chain(args.iter().copied())
                                .map(text)
                                .collect(),
                        ),
                    ),
                ],
            ),
        },
    ]
}

/// The snippets as the commands print them, under a line saying what each form needs.
pub fn print(name: &str, url: &str, config_file: Option<&str>) -> String {
    let mut out = String::from(
        "Connect a client (the endpoint needs `latchkey serve` running; stdio needs nothing):\n",
    );
    for s in snippets(name, url, config_file) {
        out.push_str(&format!("\n  {} ({}, {}):\n", s.client, s.form, s.place));
        for line in s.text.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// The arguments of `latchkey stdio` for `name`: `--config FILE` too when the config
/// is not the usual file. Also what `latchkey import --rewrite` writes.
pub(crate) fn stdio_args(name: &str, config_file: Option<&str>) -> Vec<String> {
    let mut args = vec!["stdio".to_owned(), name.to_owned()];
    if let Some(file) = config_file {
        args.extend(["--config".to_owned(), file.to_owned()]);
    }
    args
}

/// Single quotes unless the word needs none (server names and URLs rarely do).
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

fn toml_key(s: &str) -> String {
    toml_edit::Key::new(s).display_repr().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_snippet_is_valid_in_its_format() {
        let all = snippets("jira-work", "http://127.0.0.1:8931/jira-work", None);
        assert_eq!(all.len(), 12);
        for s in &all {
            match s.place {
                "shell" => assert!(s.text.starts_with("claude mcp add "), "{}", s.text),
                p if p.ends_with(".json") => {
                    serde_json::from_str::<serde_json::Value>(&s.text).expect("ok");
                }
                _ => {
                    let t: toml::Table = toml::from_str(&s.text).expect("ok");
                    assert!(t["mcp_servers"]["jira-work"].is_table(), "{}", s.text);
                }
            }
            assert!(s.text.contains("jira-work"));
        }
        assert_eq!(
            all[0].text,
            "claude mcp add --transport http jira-work http://127.0.0.1:8931/jira-work"
        );
    }

    #[test]
    fn a_config_that_is_not_the_default_is_named_in_every_stdio_form() {
        let file = "/home/me/my configs/latchkey.toml";
        let all = snippets("notes", "http://127.0.0.1:8931/notes", Some(file));
        for s in all.iter().filter(|s| s.form == "stdio") {
            let args: Vec<String> = match s.place {
                "shell" => {
                    assert!(
                        s.text.ends_with(&format!("--config '{file}'")),
                        "{}",
                        s.text
                    );
                    continue;
                }
                p if p.ends_with(".json") => {
                    let v: serde_json::Value = serde_json::from_str(&s.text).expect("json");
                    let entry = v.as_object().and_then(|o| o.values().next()).expect("top");
                    let entry = &entry["notes"];
                    let args = if entry["args"].is_array() {
                        &entry["args"]
                    } else {
                        &entry["command"]
                    };
                    serde_json::from_value(args.clone()).expect("strings")
                }
                _ => {
                    let t: toml::Table = toml::from_str(&s.text).expect("toml");
                    t["mcp_servers"]["notes"]["args"]
                        .clone()
                        .try_into()
                        .expect("strings")
                }
            };
            assert!(
                args.ends_with(&["--config".to_owned(), file.to_owned()]),
                "{}: {args:?}",
                s.client
            );
        }
    }

    #[test]
    fn odd_characters_are_quoted() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(toml_key("a.b"), "\"a.b\"");
    }
}
