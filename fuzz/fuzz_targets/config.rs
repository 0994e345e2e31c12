//! The config file checker (`latchkey::config::parse`, `crates/latchkey/src/config.rs`)
//! and its `${VAR}` substitution. Checks: any text gives a config or diagnostics
//! (sorted, with real line and column numbers), never a panic; no diagnostic and no
//! config's `Debug` shows an environment variable's value or a server URL's query;
//! an accepted config keeps its promises (loopback unless allowed, http(s) URLs,
//! valid server names, no framing headers). An input starting with a NUL byte is
//! instead `literal\0NAME\0literal` for the substitution: `$${` escapes round-trip
//! and `${NAME}` becomes the variable's value, taken as it is.
#![no_main]

use std::path::Path;

use latchkey::config::{ConfigError, parse};
use latchkey::fuzzing::substitute_env;
use libfuzzer_sys::fuzz_target;
use toml::de::{DeTable, DeValue};

/// In every value the environment gives, to find it where it must not be.
const MARKER: &str = "fzSECRETq7";

/// Set for names starting with A-M; N gives a value that cannot be a header.
fn env(name: &str) -> Option<String> {
    match name.bytes().next()? {
        b'A'..=b'M' => Some(format!("{MARKER}-{name}")),
        b'N' => Some(format!("{MARKER}\nX")),
        _ => None,
    }
}

/// A directory that does not exist, so relative file names read nothing.
const FILE: &str = "/nonexistent-latchkey-fuzz/config.toml";

/// `s` with every `${` written as `$${`, so that it stands for itself.
fn escape(s: &str) -> String {
    s.replace("${", "$${")
}

/// Every string value in the document, with the key it is under.
fn strings<'a>(table: &'a DeTable<'a>, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        collect(key.get_ref().as_ref(), value.get_ref(), out);
    }
}

fn collect(key: &str, value: &DeValue<'_>, out: &mut Vec<(String, String)>) {
    match value {
        DeValue::String(s) => out.push((key.to_owned(), s.to_string())),
        DeValue::Array(items) => items.iter().for_each(|v| collect(key, v.get_ref(), out)),
        DeValue::Table(table) => strings(table, out),
        _ => {}
    }
}

fn substitution(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (before, name, after) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    for literal in [before, after] {
        let parsed = substitute_env(&escape(literal), &|_| None).expect("a literal never fails");
        assert_eq!(parsed.expose(), literal);
    }
    // A `$` right before `${` would read as `$${`: the grammar has no way to write
    // that, so such inputs are not checked.
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid && !before.ends_with('$') {
        let raw = format!("{}${{{name}}}{}", escape(before), escape(after));
        let value = format!("${{{name}}}$${{x}}");
        let got = substitute_env(&raw, &|n| (n == name).then(|| value.clone()));
        assert_eq!(
            got.expect("a set variable").expose(),
            format!("{before}{value}{after}")
        );
        let unset = substitute_env(&raw, &|_| None).expect_err("an unset variable");
        assert!(unset.contains(name));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(rest) = data.strip_prefix(b"\0") {
        substitution(rest);
        return;
    }
    let text = String::from_utf8_lossy(data);
    // The document as the checker sees it, when it may matter below (a second TOML
    // parse halves the speed).
    let mut values = Vec::new();
    if text.contains("file") || text.contains('\\') || text.contains('?') {
        let (doc, _) = DeTable::parse_recoverable(&text);
        strings(doc.get_ref(), &mut values);
    }
    // A *_file key's absolute path would be read (client_secret_file = "/dev/zero"
    // never ends); relative ones are under a directory that does not exist.
    if values
        .iter()
        .any(|(key, v)| key.ends_with("_file") && Path::new(v).is_absolute())
    {
        return;
    }
    // URL queries that appear once in the text, and look like one (`=`, no spaces,
    // as none of the fixed message texts have), to look for in the output.
    let queries: Vec<String> = values
        .iter()
        .filter(|(key, _)| key == "url")
        .filter_map(|(_, v)| url::Url::parse(v).ok()?.query().map(str::to_owned))
        .filter(|q| q.len() >= 8 && q.contains('=') && text.matches(q.as_str()).count() == 1)
        .collect();
    let leaks = |shown: &str| {
        (!text.contains(MARKER) && shown.contains(MARKER))
            || queries.iter().any(|q| shown.contains(q.as_str()))
    };

    match parse(Path::new(FILE), &text, env) {
        Ok(config) => {
            let debug = format!("{config:?}");
            assert!(!leaks(&debug), "a secret in {debug}");
            assert!(config.listen.ip().is_loopback() || config.allow_non_loopback);
            assert!(!config.servers.is_empty());
            for server in &config.servers {
                assert!(matches!(server.url.scheme(), "http" | "https"));
                assert!(server.url.host().is_some() && server.url.fragment().is_none());
                assert!(!server.name.is_empty() && !server.name.starts_with('.'));
                assert!(
                    server
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                );
                for (name, value) in &server.headers {
                    assert!(value.is_sensitive());
                    assert!(
                        !["host", "content-length", "transfer-encoding", "connection"]
                            .contains(&name.as_str())
                    );
                }
            }
        }
        Err(ConfigError::Invalid(diagnostics)) => {
            assert!(!diagnostics.is_empty());
            let lines = text.split('\n').count();
            let mut last = (0, 0);
            for d in &diagnostics {
                assert!(d.line >= 1 && d.line <= lines && d.column >= 1, "{d}");
                assert!((d.line, d.column) >= last, "diagnostics out of order");
                last = (d.line, d.column);
                let shown = d.to_string();
                assert!(!leaks(&shown), "a secret in {shown}");
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse does not read: {e}"),
    }
    // The substitution on its own, on any text: it never panics, and `$${` escapes
    // read back as what they escape.
    let _ = substitute_env(&text, &env);
    assert_eq!(
        substitute_env(&escape(&text), &|_| None)
            .expect("a literal")
            .expose(),
        &*text
    );
});
