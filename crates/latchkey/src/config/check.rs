//! The diagnostics: every problem of a config file, each with its file, line,
//! column and a hint, all at once. The TOML is parsed recovering from syntax errors,
//! then each key of each section is deserialized alone, so one mistake never hides
//! another (serde's `deny_unknown_fields` would stop at the first). Here: the
//! [`Checker`] with its helpers and the top-level keys; `check_server.rs` and
//! `check_oauth.rs` check the `[servers.NAME]` tables. No diagnostic quotes a
//! header value or a URL's query: either may be a credential.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use url::Url;

use super::{Config, DEFAULT_LISTEN, StoreKind, check_listen};

/// A problem found in a config file, with where it is and how to fix it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {path}: {cause}\n  hint: `latchkey add NAME URL` creates it with a server, `latchkey init` writes a commented starter, `latchkey import` brings your MCP clients' servers; or pass --config FILE or set LATCHKEY_CONFIG"
    )]
    // Not `source`: the message has it already, and anyhow would print it again.
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}", Invalid::render(.0))]
    Invalid(Vec<Diagnostic>),
}

pub(super) struct Invalid;

impl Invalid {
    fn render(diagnostics: &[Diagnostic]) -> String {
        let mut out = String::new();
        for d in diagnostics {
            out.push_str(&format!("{d}\n"));
        }
        out.push_str(&format!(
            "{} error{} in config",
            diagnostics.len(),
            if diagnostics.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

pub(super) const TOP_KEYS: &[&str] = &[
    "listen",
    "store",
    "state_dir",
    "allow_non_loopback",
    "allowed_origins",
    "allowed_hosts",
    "allowed_uids",
    "shutdown_timeout_secs",
    "servers",
    "idps",
];

pub(super) const SERVER_KEYS: &[&str] = &["url", "transport", "headers", "oauth", "local_key"];

/// Headers that frame a request or name its connection and host (RFC 9110 §7.2,
/// RFC 9112 §6-7, RFC 9110 §7.6.1): never configurable. In lower case, as
/// `HeaderName::as_str` gives them.
pub(super) const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

pub(super) struct Checker<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The `[idps.NAME]` tables, read before the servers that name them.
    pub(super) idps: Vec<std::sync::Arc<latchkey_auth::enterprise::IdpSettings>>,
}

impl Checker<'_> {
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        let (line, column) = line_column(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            hint: hint.map(str::to_owned),
        });
    }

    pub(super) fn toml_error(
        &mut self,
        error: toml::de::Error,
        fallback: Range<usize>,
        hint: &str,
    ) {
        let span = error.span().unwrap_or(fallback);
        let message = without_quoted(error.message().trim_end());
        self.error(span, message, Some(hint));
    }

    /// Takes `key` out of `table` and deserializes it. A wrong type is reported at the
    /// value, with `hint`, and the section's other keys are still checked.
    pub(super) fn field<T: serde::de::DeserializeOwned>(
        &mut self,
        table: &mut DeTable<'_>,
        key: &str,
        hint: &str,
    ) -> Option<Spanned<T>> {
        let value = table.remove(key)?;
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(parsed) => Some(Spanned::new(span, parsed)),
            Err(e) => {
                self.toml_error(e, span, hint);
                None
            }
        }
    }

    pub(super) fn config(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        for error in errors {
            self.toml_error(error, 0..0, "fix the TOML syntax at this position");
        }
        let mut top = doc.into_inner();
        let servers = top.remove("servers");
        let idps = top.remove("idps");
        self.take_unknown(&mut top, TOP_KEYS, "top-level keys are");

        let mut config = Config::default();
        self.top(&mut top, &mut config);
        if let Some(idps) = idps {
            self.idps(idps, env);
        }

        match servers {
            None => self.error(
                0..0,
                "no servers configured",
                Some("run `latchkey add NAME URL`, or add a table such as [servers.notes] with url = \"https://mcp.example.com/mcp\""),
            ),
            Some(servers) => {
                let span = servers.span();
                match servers.into_inner() {
                    DeValue::Table(table) => {
                        for (name, value) in table {
                            if let Some(server) = self.server(name, value, env) {
                                config.servers.push(server);
                            }
                        }
                    }
                    _ => self.error(
                        span,
                        "`servers` must be a table of servers",
                        Some("write each server as [servers.NAME] with a url key"),
                    ),
                }
            }
        }
        config
    }

    /// Reports and removes keys that are not in `known`, so that one misspelt key does
    /// not hide the problems in the rest of its table.
    pub(super) fn take_unknown(&mut self, table: &mut DeTable<'_>, known: &[&str], listing: &str) {
        let unknown: Vec<_> = table
            .keys()
            .filter(|key| !known.contains(&key.get_ref().as_ref()))
            .cloned()
            .collect();
        for key in unknown {
            table.remove(key.get_ref().as_ref());
            self.error(
                key.span(),
                format!("unknown key `{}`", key.get_ref()),
                Some(&format!("{listing} {}", known.join(", "))),
            );
        }
    }

    pub(super) fn top(&mut self, top: &mut DeTable<'_>, config: &mut Config) {
        let allow = self.field::<bool>(
            top,
            "allow_non_loopback",
            "write allow_non_loopback = true or false",
        );
        config.allow_non_loopback = allow.is_some_and(Spanned::into_inner);
        let listen_hint = format!("for example listen = \"{DEFAULT_LISTEN}\"");
        if let Some(listen) = self.field::<String>(top, "listen", &listen_hint) {
            match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Err(message) = check_listen(addr, config.allow_non_loopback) {
                        self.error(listen.span(), message, None);
                    }
                    config.listen = addr;
                }
                Err(_) => self.error(
                    listen.span(),
                    format!("`listen` is not an IP:PORT address: {:?}", listen.get_ref()),
                    Some(&listen_hint),
                ),
            }
        }
        let origins = self.field::<Vec<Spanned<String>>>(
            top,
            "allowed_origins",
            "write a list of origins, such as allowed_origins = [\"https://app.example.com\"]",
        );
        let hosts = self.field::<Vec<Spanned<String>>>(
            top,
            "allowed_hosts",
            "write a list of Host values, such as allowed_hosts = [\"proxy.lan:8931\"]",
        );
        if let Some(uids) = self.field::<Vec<u32>>(
            top,
            "allowed_uids",
            "write a list of numeric user IDs, such as allowed_uids = [1001] (id -u NAME prints one)",
        ) {
            config.allowed_uids = uids.into_inner();
        }
        if let Some(secs) = self.field::<u64>(
            top,
            "shutdown_timeout_secs",
            "write a whole number of seconds, such as shutdown_timeout_secs = 10",
        ) {
            config.shutdown_timeout = Duration::from_secs(secs.into_inner());
        }
        if let Some(dir) = self.field::<String>(
            top,
            "state_dir",
            "a directory path, such as state_dir = \"/var/lib/latchkey\"",
        ) {
            config.state_dir = Some(self.relative(dir.get_ref()));
        }
        let store_hint = "write store = \"auto\", \"keyring\", \"file\" or \"memory\"";
        if let Some(store) = self.field::<String>(top, "store", store_hint) {
            config.store = match store.get_ref().as_str() {
                "auto" => StoreKind::Auto,
                "keyring" => StoreKind::Keyring,
                "file" => StoreKind::File,
                "memory" => StoreKind::Memory,
                other => {
                    self.error(
                        store.span(),
                        format!("unknown store {other:?}"),
                        Some(store_hint),
                    );
                    StoreKind::Auto
                }
            };
        }
        for origin in origins.map(Spanned::into_inner).unwrap_or_default() {
            match Url::parse(origin.get_ref()) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.host().is_some()
                        && url.path() == "/" =>
                {
                    config
                        .allowed_origins
                        .push(url.origin().ascii_serialization());
                }
                _ => self.error(
                    origin.span(),
                    format!(
                        "allowed_origins entry {:?} is not an origin",
                        origin.get_ref()
                    ),
                    Some("an origin is scheme://host[:port], such as \"https://app.example.com\""),
                ),
            }
        }
        for host in hosts.map(Spanned::into_inner).unwrap_or_default() {
            let value = host.get_ref();
            if value.is_empty() || value.contains(['/', ' ', '@']) {
                self.error(
                    host.span(),
                    format!("allowed_hosts entry {value:?} is not a host name"),
                    Some("write the Host header value, such as \"proxy.lan:8931\""),
                );
            } else {
                config.allowed_hosts.push(value.to_ascii_lowercase());
            }
        }
    }

    /// A path from the config, relative to the config file's directory.
    pub(super) fn relative(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }
}

/// A serde message without its double-quoted parts, which echo the value (a header
/// value may be a credential).
pub(super) fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '"' if quoted => {
                quoted = false;
                out.push_str("…\"");
            }
            '"' => {
                quoted = true;
                out.push('"');
            }
            _ if quoted => {}
            c => out.push(c),
        }
    }
    out
}

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
