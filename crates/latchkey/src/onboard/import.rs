//! `latchkey import`: the remote MCP servers that other clients already have, moved
//! into latchkey's config, and (with `--rewrite`) those clients pointed at latchkey.
//!
//! Each client keeps its servers in its own documented file and shape: Claude
//! Desktop's `claude_desktop_config.json` and Cursor's `mcp.json` (`mcpServers`),
//! Claude Code's `~/.claude.json` (`mcpServers`, also per project), VS Code's user
//! `mcp.json` (`servers`), Gemini CLI's `settings.json` (`mcpServers`, `httpUrl` for
//! Streamable HTTP), Codex's `config.toml` (`[mcp_servers.NAME]`), opencode's
//! `opencode.json` (`mcp`, `type = "remote"`). A remote server
//! is an entry with a URL, or one that runs `mcp-remote URL` (through npx or
//! directly), whose `--header`, `--transport` and `--static-oauth-client-info`
//! options say what latchkey's table must say. Local (stdio) servers stay as they
//! are. An entry that already points at latchkey is left alone, so a second run
//! changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstRootNode};
use serde_json::{Map, Value};

use super::config_file::{ConfigFile, EditError, NewServer, write_atomically};

/// The clients whose configs `import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    VsCode,
    Codex,
    Gemini,
    OpenCode,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Self::ClaudeDesktop => "Claude Desktop",
            Self::ClaudeCode => "Claude Code",
            Self::Cursor => "Cursor",
            Self::VsCode => "VS Code",
            Self::Codex => "Codex",
            Self::Gemini => "Gemini CLI",
            Self::OpenCode => "opencode",
        }
    }

    /// Where each client keeps its user-wide MCP servers, on Linux and macOS.
    fn usual_places(self, home: &Path, config_home: &Path) -> Vec<PathBuf> {
        let mac = home.join("Library/Application Support");
        match self {
            Self::ClaudeDesktop => vec![
                config_home.join("Claude/claude_desktop_config.json"),
                mac.join("Claude/claude_desktop_config.json"),
            ],
            Self::ClaudeCode => vec![home.join(".claude.json")],
            Self::Cursor => vec![home.join(".cursor/mcp.json")],
            Self::VsCode => vec![
                config_home.join("Code/User/mcp.json"),
                mac.join("Code/User/mcp.json"),
            ],
            Self::Codex => vec![
                std::env::var_os("CODEX_HOME")
                    .map_or_else(|| home.join(".codex"), PathBuf::from)
                    .join("config.toml"),
            ],
            Self::Gemini => vec![home.join(".gemini/settings.json")],
            Self::OpenCode => vec![
                config_home.join("opencode/opencode.json"),
                config_home.join("opencode/opencode.jsonc"),
            ],
        }
    }

    /// The client a `--from` file belongs to, from its name and shape.
    fn of_file(path: &Path, text: &str) -> Self {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let in_dir = |dir: &str| {
            path.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == dir)
        };
        if name.ends_with(".toml") {
            Self::Codex
        } else if name == "claude_desktop_config.json" {
            Self::ClaudeDesktop
        } else if name == ".claude.json" || name == ".mcp.json" {
            Self::ClaudeCode
        } else if name.starts_with("opencode.json") {
            Self::OpenCode
        } else if name == "settings.json" && in_dir(".gemini") {
            Self::Gemini
        } else if in_dir(".cursor") {
            Self::Cursor
        } else if jsonc_parser::parse_to_serde_value::<Value>(text, &ParseOptions::default())
            .is_ok_and(|v| v.get("servers").is_some())
        {
            Self::VsCode
        } else {
            Self::Cursor
        }
    }

    const ALL: [Self; 7] = [
        Self::ClaudeDesktop,
        Self::ClaudeCode,
        Self::Cursor,
        Self::VsCode,
        Self::Codex,
        Self::Gemini,
        Self::OpenCode,
    ];
}

/// One client config file that exists. (No `Debug` of its text: it holds keys.)
pub struct Source {
    pub client: Client,
    pub path: PathBuf,
    text: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("client", &self.client)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Every client config in its usual place that exists, or the `--from` files.
pub fn sources(from: &[PathBuf]) -> Result<Vec<Source>, ImportError> {
    if !from.is_empty() {
        return from
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(Source {
                    client: Client::of_file(path, &text),
                    path: path.clone(),
                    text,
                })
            })
            .collect();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let config_home = crate::config::xdg_dir("XDG_CONFIG_HOME", ".config")
        .unwrap_or_else(|| home.join(".config"));
    let mut found = Vec::new();
    for client in Client::ALL {
        for path in client.usual_places(&home, &config_home) {
            if let Ok(text) = std::fs::read_to_string(&path) {
                found.push(Source { client, path, text });
            }
        }
    }
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid {format}: {cause}; nothing was changed in it")]
    Parse {
        path: PathBuf,
        format: &'static str,
        cause: String,
    },
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// A client's JSON, comments and trailing commas allowed (VS Code's `mcp.json` is
/// JSONC).
fn parse_json(source: &Source) -> Result<Value, ImportError> {
    jsonc_parser::parse_to_serde_value(&source.text, &ParseOptions::default()).map_err(|e| {
        ImportError::Parse {
            path: source.path.clone(),
            format: "JSON",
            cause: e.to_string(),
        }
    })
}

/// Where an entry sits in its file: the keys down to it.
type Location = Vec<String>;

/// A remote server found in a client's config. (`Debug` leaves out the secrets;
/// `server`'s own masks its header values.)
#[derive(Clone)]
pub struct Entry {
    pub location: Location,
    /// The entry's key in the client's config.
    pub key: String,
    pub server: NewServer,
    /// Values that must not be shown (header values, the client secret).
    secrets: Vec<String>,
    /// What did not carry over, for the person to know.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("location", &self.location)
            .field("server", &self.server)
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

/// What a client entry is, as far as `import` is concerned.
enum Kind {
    Remote(Box<Entry>),
    /// Already goes through latchkey.
    Latchkey,
    /// A local stdio server, or something `import` does not understand.
    Other,
}

/// The remote servers in one source, and how many already go through latchkey.
pub fn entries(source: &Source, listen: SocketAddr) -> Result<(Vec<Entry>, usize), ImportError> {
    let client = source.client;
    let mut found = Vec::new();
    let mut through = 0;
    let mut take = |kind: Kind| match kind {
        Kind::Remote(e) => found.push(*e),
        Kind::Latchkey => through += 1,
        Kind::Other => {}
    };
    if source.client == Client::Codex {
        let doc: toml::Table = toml::from_str(&source.text).map_err(|e| ImportError::Parse {
            path: source.path.clone(),
            format: "TOML",
            cause: e.message().to_owned(),
        })?;
        if let Some(servers) = doc.get("mcp_servers").and_then(toml::Value::as_table) {
            for (key, entry) in servers {
                // The TOML entry, in the JSON shape the other clients use.
                let value = serde_json::to_value(entry).unwrap_or(Value::Null);
                take(classify(
                    client,
                    listen,
                    vec!["mcp_servers".into(), key.clone()],
                    key,
                    &value,
                ));
            }
        }
    } else {
        let doc = parse_json(source)?;
        let key = match source.client {
            Client::VsCode => "servers",
            Client::OpenCode => "mcp",
            _ => "mcpServers",
        };
        let mut tables: Vec<(Location, &Map<String, Value>)> = Vec::new();
        if let Some(servers) = doc.get(key).and_then(Value::as_object) {
            tables.push((vec![key.to_owned()], servers));
        }
        // Claude Code also keeps servers per project.
        if source.client == Client::ClaudeCode
            && let Some(projects) = doc.get("projects").and_then(Value::as_object)
        {
            for (project, settings) in projects {
                if let Some(servers) = settings.get("mcpServers").and_then(Value::as_object) {
                    tables.push((
                        vec!["projects".into(), project.clone(), "mcpServers".into()],
                        servers,
                    ));
                }
            }
        }
        for (location, servers) in tables {
            for (name, entry) in servers {
                let mut at = location.clone();
                at.push(name.clone());
                take(classify(client, listen, at, name, entry));
            }
        }
    }
    Ok((found, through))
}

fn classify(
    client: Client,
    listen: SocketAddr,
    location: Location,
    key: &str,
    entry: &Value,
) -> Kind {
    let text = |k: &str| entry.get(k).and_then(Value::as_str);
    let env: BTreeMap<String, String> = entry
        .get("env")
        .or_else(|| entry.get("environment"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let mut server = NewServer {
        name: server_name(key),
        ..NewServer::default()
    };
    // The env's values are what mcp-remote's headers use: keys, as a rule.
    let mut secrets: Vec<String> = env.values().cloned().collect();
    let mut notes = Vec::new();
    if let Some(url) = text("url")
        .or_else(|| text("httpUrl"))
        .or_else(|| text("serverUrl"))
    {
        if points_at(url, listen) {
            return Kind::Latchkey;
        }
        server.url = url.to_owned();
        // A `type` of "sse", and Gemini CLI's `url` (its Streamable HTTP is
        // `httpUrl`), are the old HTTP+SSE transport.
        let sse = matches!(text("type").or_else(|| text("transport")), Some("sse"))
            || (client == Client::Gemini && entry.get("httpUrl").is_none());
        if sse {
            server.transport = Some("sse".into());
        }
        for table in ["headers", "http_headers"] {
            if let Some(headers) = entry.get(table).and_then(Value::as_object) {
                for (k, v) in headers {
                    if let Some(v) = v.as_str() {
                        secrets.push(v.to_owned());
                        server.headers.push((k.clone(), v.to_owned()));
                    }
                }
            }
        }
        if let Some(var) = text("bearer_token_env_var") {
            server
                .headers
                .push(("Authorization".into(), format!("Bearer ${{{var}}}")));
        }
    } else if let Some((command, args)) = command_line(entry) {
        let program = Path::new(command)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(command);
        if program == "latchkey" {
            return Kind::Latchkey;
        }
        let rest = if is_mcp_remote(program) {
            &args[..]
        } else if matches!(program, "npx" | "bunx" | "pnpx" | "pnpm" | "yarn")
            && let Some(at) = args.iter().position(|a| is_mcp_remote(a))
        {
            &args[at + 1..]
        } else {
            return Kind::Other;
        };
        if !mcp_remote(rest, &env, &mut server, &mut secrets, &mut notes) {
            return Kind::Other;
        }
    } else {
        return Kind::Other;
    }
    Kind::Remote(Box::new(Entry {
        location,
        key: key.to_owned(),
        server,
        secrets,
        notes,
    }))
}

/// `command` and `args`, or opencode's `command` array that holds both.
fn command_line(entry: &Value) -> Option<(&str, Vec<&str>)> {
    fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }
    match entry.get("command")? {
        Value::String(command) => {
            Some((command, entry.get("args").map(strings).unwrap_or_default()))
        }
        array @ Value::Array(_) => {
            let all = strings(array);
            let (command, args) = all.split_first()?;
            Some((command, args.to_vec()))
        }
        _ => None,
    }
}

fn is_mcp_remote(word: &str) -> bool {
    word == "mcp-remote" || word.starts_with("mcp-remote@")
}

/// `mcp-remote URL [port] [--header 'K: V']… [--transport …]
/// [--static-oauth-client-info JSON|@file] …`; false without a URL.
fn mcp_remote(
    args: &[&str],
    env: &BTreeMap<String, String>,
    server: &mut NewServer,
    secrets: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> bool {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--header" => {
                if let Some((k, v)) = args.next().and_then(|h| h.split_once(':')) {
                    let v = with_env(v.trim(), env);
                    secrets.push(v.clone());
                    server.headers.push((k.trim().to_owned(), v));
                }
            }
            "--transport" => match args.next().copied() {
                Some("sse-only") => server.transport = Some("sse".into()),
                Some("http-only") => server.transport = Some("streamable-http".into()),
                _ => {}
            },
            "--static-oauth-client-info" => {
                let info = args.next().and_then(|v| {
                    let text = match v.strip_prefix('@') {
                        Some(file) => std::fs::read_to_string(file).ok()?,
                        None => (*v).to_owned(),
                    };
                    serde_json::from_str::<Value>(&text).ok()
                });
                if let Some(info) = info {
                    server.client_id = info["client_id"].as_str().map(str::to_owned);
                    if let Some(secret) = info["client_secret"].as_str() {
                        secrets.push(secret.to_owned());
                        server.client_secret = Some(secret.to_owned());
                    }
                } else {
                    notes.push("--static-oauth-client-info could not be read: set client_id under [servers.NAME.oauth] by hand".into());
                }
            }
            "--static-oauth-client-metadata" | "--resource" | "--host" | "--auth-timeout" => {
                let option = *arg;
                args.next();
                notes.push(format!(
                    "{option} is mcp-remote's own; latchkey does without it"
                ));
            }
            url if server.url.is_empty()
                && (url.starts_with("https://") || url.starts_with("http://")) =>
            {
                server.url = url.to_owned();
            }
            _ => {}
        }
    }
    !server.url.is_empty()
}

/// mcp-remote's headers take `${VAR}` from the entry's `env`: the value moves into
/// latchkey's config (owner-only), since the daemon does not run with that env.
fn with_env(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_owned();
    for (k, v) in env {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// A latchkey server name from a client's entry name.
fn server_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches('.').to_owned();
    if name.is_empty() || name == crate::local_key::RESERVED_NAME {
        format!("server-{name}")
    } else {
        name
    }
}

/// A URL of latchkey's own endpoint (what `--rewrite` writes): loopback, the
/// daemon's port, one path segment (or a key URL's three).
fn points_at(url: &str, listen: SocketAddr) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        let loopback = match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        loopback && u.port() == Some(listen.port())
    })
}

/// What one import did, for the report.
#[derive(Debug)]
pub struct Outcome {
    pub lines: Vec<String>,
    /// The latchkey config changed.
    pub added: usize,
    /// The client files that changed, or would with `--rewrite`.
    pub rewrites: Vec<Rewrite>,
}

/// A client file's change. (`Debug` shows only the path: the texts hold keys.)
pub struct Rewrite {
    pub path: PathBuf,
    pub old: String,
    pub new: String,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Rewrite {
    /// A unified diff of the change, with every secret value masked.
    pub fn diff(&self) -> String {
        let mask = |text: &str| {
            self.secrets
                .iter()
                .filter(|s| s.len() >= 4)
                .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "…"))
        };
        let (old, new) = (mask(&self.old), mask(&self.new));
        similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(2)
            .header(
                &self.path.display().to_string(),
                &format!("{} (through latchkey)", self.path.display()),
            )
            .to_string()
    }

    /// Writes a backup of the old file beside it (never over an earlier backup),
    /// then the new file; its backup's path.
    pub fn apply(&self) -> Result<PathBuf, EditError> {
        let mut backup = self.path.with_file_name(format!(
            "{}.latchkey-backup",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let mut n = 1;
        while backup.exists() {
            backup.set_extension(format!("latchkey-backup.{n}"));
            n += 1;
        }
        write_atomically(&backup, self.old.as_bytes(), 0o600)?;
        write_atomically(&self.path, self.new.as_bytes(), 0o600)?;
        Ok(backup)
    }
}

/// Adds each remote server found in `sources` to the config at `config_path`
/// (unless one with its URL is there already), and works out each client file's
/// rewrite.
pub fn run(
    config_path: &Path,
    sources: &[Source],
    stdio_command: &str,
) -> Result<Outcome, ImportError> {
    let mut config = ConfigFile::open(config_path)?;
    let mut lines = Vec::new();
    let mut added = 0;
    let mut rewrites = Vec::new();
    for source in sources {
        let listen = config.listen();
        let (found, through) = match entries(source, listen) {
            Ok(found) => found,
            Err(e) => {
                lines.push(format!("{}: {e}", source.client.name()));
                continue;
            }
        };
        lines.push(format!(
            "{} ({}): {} remote server{}{}",
            source.client.name(),
            source.path.display(),
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            if through > 0 {
                format!(", {through} already through latchkey")
            } else {
                String::new()
            }
        ));
        let mut named = Vec::new();
        for entry in found {
            let urls = config.server_urls();
            let name = if let Some((name, _)) = urls
                .iter()
                .find(|(_, url)| same_url(url, &entry.server.url))
            {
                lines.push(format!(
                    "  {}: already in latchkey as [servers.{name}]",
                    entry.key
                ));
                name.clone()
            } else {
                let mut server = entry.server.clone();
                let taken = config.server_names();
                let base = server.name.clone();
                let mut n = 2;
                while taken.contains(&server.name) {
                    server.name = format!("{base}-{n}");
                    n += 1;
                }
                let mut trial = ConfigFile::open(config_path)?;
                trial.add(&server)?;
                // Each server is checked on its own, so that one that cannot load
                // (a ${VAR} that is not set) does not keep the others out.
                if let Err(e) =
                    crate::config::parse(config_path, &trial.text(), |v| std::env::var(v).ok())
                {
                    lines.push(format!(
                        "  {}: not added: {}",
                        entry.key,
                        first_line(&e.to_string())
                    ));
                    continue;
                }
                config.add(&server)?;
                config.save()?;
                added += 1;
                lines.push(format!(
                    "  {}: added as [servers.{}] ({})",
                    entry.key,
                    server.name,
                    crate::redact::escape_controls(&server.url)
                ));
                server.name
            };
            for note in &entry.notes {
                lines.push(format!("    note: {note}"));
            }
            named.push((entry, name));
        }
        let stdio = Stdio {
            command: stdio_command,
            config_file: crate::config::named_file(config_path),
        };
        if let Some(rewrite) = rewrite(source, &named, listen, &stdio)? {
            rewrites.push(rewrite);
        }
    }
    Ok(Outcome {
        lines,
        added,
        rewrites,
    })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Keys of an entry that say how to reach the server: replaced by the rewrite. The
/// rest (`disabled`, `timeout`, tool filters…) stays.
const REACH_KEYS: &[&str] = &[
    "command",
    "args",
    "env",
    "environment",
    "cwd",
    "envFile",
    "url",
    "httpUrl",
    "serverUrl",
    "type",
    "transport",
    "headers",
    "http_headers",
    "env_http_headers",
    "bearer_token_env_var",
];

/// How a client that launches its servers runs `latchkey stdio`.
struct Stdio<'a> {
    /// This binary's path.
    command: &'a str,
    /// The config, when it is not the usual one.
    config_file: Option<String>,
}

/// The client file with each remote entry pointed at latchkey; `None` when nothing
/// changes.
fn rewrite(
    source: &Source,
    named: &[(Entry, String)],
    listen: SocketAddr,
    stdio: &Stdio<'_>,
) -> Result<Option<Rewrite>, ImportError> {
    if named.is_empty() {
        return Ok(None);
    }
    let endpoint = |name: &str| crate::local_key::url(listen, name, None);
    let new = if source.client == Client::Codex {
        let mut doc: toml_edit::DocumentMut =
            source
                .text
                .parse()
                .map_err(|e: toml_edit::TomlError| ImportError::Parse {
                    path: source.path.clone(),
                    format: "TOML",
                    cause: e.message().to_owned(),
                })?;
        for (entry, name) in named {
            let Some(table) = doc
                .get_mut("mcp_servers")
                .and_then(|t| t.get_mut(&entry.key))
                .and_then(toml_edit::Item::as_table_like_mut)
            else {
                continue;
            };
            for key in REACH_KEYS {
                table.remove(key);
            }
            table.insert("url", toml_edit::value(endpoint(name)));
        }
        doc.to_string()
    } else {
        let root = CstRootNode::parse(&source.text, &ParseOptions::default()).map_err(|e| {
            ImportError::Parse {
                path: source.path.clone(),
                format: "JSON",
                cause: e.to_string(),
            }
        })?;
        for (entry, name) in named {
            let Some(object) = entry
                .location
                .iter()
                .fold(root.object_value(), |o, k| o?.object_value(k))
            else {
                continue;
            };
            // Edited in place: the person's formatting and comments stay.
            for prop in object.properties() {
                if prop
                    .decoded_name()
                    .is_some_and(|n| REACH_KEYS.contains(&n.as_str()))
                {
                    prop.remove();
                }
            }
            let text = |s: String| CstInputValue::String(s);
            let reach: Vec<(&str, CstInputValue)> = match source.client {
                // Claude Desktop's file takes only stdio servers.
                Client::ClaudeDesktop => vec![
                    ("command", text(stdio.command.to_owned())),
                    (
                        "args",
                        CstInputValue::Array(
                            crate::snippets::stdio_args(name, stdio.config_file.as_deref())
                                .into_iter()
                                .map(text)
                                .collect(),
                        ),
                    ),
                ],
                Client::Gemini => vec![("httpUrl", text(endpoint(name)))],
                Client::Cursor => vec![("url", text(endpoint(name)))],
                Client::OpenCode => vec![
                    ("type", text("remote".into())),
                    ("url", text(endpoint(name))),
                ],
                _ => vec![("type", text("http".into())), ("url", text(endpoint(name)))],
            };
            for (key, value) in reach {
                object.append(key, value);
            }
        }
        root.to_string()
    };
    if new == source.text {
        return Ok(None);
    }
    Ok(Some(Rewrite {
        path: source.path.clone(),
        old: source.text.clone(),
        new,
        secrets: named.iter().flat_map(|(e, _)| e.secrets.clone()).collect(),
    }))
}

/// The report `latchkey import` prints.
pub fn report(outcome: &Outcome, rewrite: bool, backups: &[(PathBuf, PathBuf)]) -> String {
    let mut out = String::new();
    for line in &outcome.lines {
        let _ = writeln!(out, "{line}");
    }
    if outcome.lines.is_empty() {
        let _ = writeln!(
            out,
            "No MCP client config was found in its usual place; name one with --from FILE."
        );
    }
    for r in &outcome.rewrites {
        let _ = write!(out, "\n{}", r.diff());
    }
    if rewrite {
        for (file, backup) in backups {
            let _ = writeln!(
                out,
                "\nRewrote {} (the old file is at {})",
                file.display(),
                backup.display()
            );
        }
    } else if !outcome.rewrites.is_empty() {
        let _ = writeln!(
            out,
            "\nThe clients' files are unchanged. Run `latchkey import --rewrite` to write the changes above (each file is backed up first)."
        );
    }
    out
}
