//! The configuration file: parsing, validation, and diagnostics that point at the
//! offending line.
//!
//! Parsing happens in two passes so that `latchkey check` can report every problem at
//! once: the TOML is parsed (recovering from syntax errors), then every key of every
//! section is checked on its own: unknown keys are reported and each known key is
//! deserialized alone, so one mistake never hides another (serde's
//! `deny_unknown_fields` would stop at the first). Every problem becomes a
//! [`Diagnostic`] with a byte span that is turned into a line and column. No
//! diagnostic quotes a header value or a URL's query: either may be a credential.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use latchkey_auth::Secret;
use latchkey_auth::assertion::{Algorithm, SigningKey};
use latchkey_auth::session::Grant;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use url::Url;

/// The port latchkey listens on when the config has no `listen` key.
pub const DEFAULT_PORT: u16 = 8931;

/// Where `serve` listens by default: loopback only.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    DEFAULT_PORT,
);

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Set by `allow_non_loopback = true`; without it a non-loopback `listen` is refused.
    pub allow_non_loopback: bool,
    /// Extra `Origin` values (besides the loopback ones) allowed on the local endpoint.
    pub allowed_origins: Vec<String>,
    /// Extra `Host` values (besides the loopback ones) allowed on the local endpoint.
    pub allowed_hosts: Vec<String>,
    /// Other local users (besides this one) whose processes may use the endpoint.
    pub allowed_uids: Vec<u32>,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// Where credentials are kept.
    pub store: StoreKind,
    /// `state_dir`: the file store's and lock files' directory, instead of
    /// `$XDG_STATE_HOME/latchkey` (for a container volume, say).
    pub state_dir: Option<PathBuf>,
    pub servers: Vec<Server>,
}

impl Config {
    /// A config with one server and defaults for everything else, for `latchkey stdio
    /// --url`, which needs no config file.
    pub fn single(server: Server, store: StoreKind, state_dir: Option<PathBuf>) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_uids: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            store,
            state_dir,
            servers: vec![server],
        }
    }
}

impl Config {
    /// What is allowed but unsafe: OAuth to a server on plain `http://` off loopback,
    /// where tokens would cross the network in cleartext.
    pub fn warnings(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|server| {
                matches!(server.oauth, OAuth::Enabled(_))
                    && server.url.scheme() == "http"
                    && !is_loopback_host(&server.url)
            })
            .map(|server| {
                format!(
                    "[servers.{}] url is plain http:// on {}: OAuth tokens would travel in cleartext. Use https://, or set oauth = false if the server needs no login",
                    server.name,
                    server.url.host_str().unwrap_or("?")
                )
            })
            .collect()
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

/// The `store` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// The keyring when it is reachable and unlocked, else `file` with a warning.
    #[default]
    Auto,
    Keyring,
    File,
    /// Nothing survives the process; nothing is shared with other processes.
    Memory,
}

/// One `[servers.NAME]` table. Equal tables are how a reload knows which servers
/// it leaves untouched.
#[derive(Clone, PartialEq)]
pub struct Server {
    /// The first path segment of the local endpoint: `http://127.0.0.1:PORT/<name>`.
    pub name: String,
    pub url: Url,
    /// `url` as the request URI the proxy sends, parsed once here rather than per
    /// request.
    pub uri: http::Uri,
    pub transport: Transport,
    /// Static headers sent upstream on every request. Values are marked sensitive, so
    /// `Debug` never shows them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The reserved `oauth` key: `false` turns OAuth off for this server.
    pub oauth: OAuth,
    /// `local_key = true`: the server is served only at its capability URL,
    /// `/k/<key>/<name>` (`local_key.rs`).
    pub local_key: bool,
    /// The command that logs in to this server from a terminal, for error messages.
    pub login_command: String,
}

/// A bad `--url` or `--header` of `latchkey stdio --url` or `latchkey login --url`.
#[derive(Debug, thiserror::Error)]
pub enum AdhocError {
    #[error("--url is not a URL: {0}")]
    NotAUrl(url::ParseError),
    #[error("--url must be an http or https URL")]
    NotHttp,
    #[error("--{0}")]
    Uri(String),
    #[error("--header {0:?} is not 'Name: value'")]
    NotAHeader(String),
    #[error("--header: {0:?} is not a header name")]
    BadName(String),
    // The value may be a secret: it is never quoted back.
    #[error("--header {0}: the value has characters a header cannot carry")]
    BadValue(String),
}

/// The config for `--url`: that one server, with the store settings of the user's
/// config at `config` when there is one, so tokens are shared with the daemon.
pub fn adhoc(
    config: Option<PathBuf>,
    url: &str,
    headers: &[String],
    transport: crate::cli::TransportArg,
) -> Result<Config, AdhocError> {
    use crate::cli::TransportArg;
    let url = Url::parse(url).map_err(AdhocError::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AdhocError::NotHttp);
    }
    let mut parsed = Vec::new();
    for header in headers {
        let (name, value) = header.split_once(':').ok_or_else(|| {
            AdhocError::NotAHeader(header.split(':').next().unwrap_or_default().to_owned())
        })?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| AdhocError::BadName(name.trim().to_owned()))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| AdhocError::BadValue(name.to_string()))?;
        value.set_sensitive(true);
        parsed.push((name, value));
    }
    let (store, state_dir) = load(&config.unwrap_or_else(default_path))
        .map(|c| (c.store, c.state_dir))
        .unwrap_or_default();
    Ok(Config::single(
        Server {
            name: "remote".to_owned(),
            uri: request_uri(&url).map_err(AdhocError::Uri)?,
            url: url.clone(),
            transport: match transport {
                TransportArg::Auto => Transport::Auto,
                TransportArg::StreamableHttp => Transport::StreamableHttp,
                TransportArg::Sse => Transport::Sse,
            },
            headers: parsed,
            oauth: OAuth::Enabled(OAuthConfig::default()),
            local_key: false,
            login_command: format!("latchkey login --url {}", crate::redact::redacted(&url)),
        },
        store,
        state_dir,
    ))
}

/// `url` as an HTTP request URI. User info (`user:password@`) is refused: HTTP
/// does not send it, and a secret there would only end up in logs.
pub fn request_uri(url: &Url) -> Result<http::Uri, String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not carry user info (user:password@host); send credentials as a header instead, such as headers = { Authorization = \"Basic …\" }".to_owned());
    }
    url.as_str()
        .parse()
        .map_err(|e| format!("url cannot be sent as an HTTP request URI: {e}"))
}

impl fmt::Debug for Server {
    // The URL may carry a key in its query or user info: show it redacted. (The
    // client secret is a `Secret`, masked by its own Debug.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("url", &crate::redact::redacted(&self.url))
            .field("transport", &self.transport)
            .field("headers", &self.headers)
            .field("oauth", &self.oauth)
            .field("local_key", &self.local_key)
            .finish()
    }
}

/// How latchkey talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Streamable HTTP, falling back to HTTP+SSE (2024-11-05) as the spec describes.
    #[default]
    Auto,
    StreamableHttp,
    /// The 2024-11-05 HTTP+SSE transport only.
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::StreamableHttp => "streamable-http",
            Self::Sse => "sse",
        }
    }
}

/// The `oauth` key: `false`, or settings for the OAuth flow tried on a 401.
#[derive(Debug, Clone, PartialEq)]
// One per server, made once at load: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum OAuth {
    Enabled(OAuthConfig),
    Disabled,
}

/// `[servers.NAME.oauth]`. Every key is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthConfig {
    /// `authorization_code` (a person logs in) or `client_credentials` (a machine).
    pub grant: Grant,
    /// A client registered by hand. An empty value counts as none.
    pub client_id: Option<String>,
    /// From `client_secret`, `client_secret_env` or `client_secret_file`.
    pub client_secret: Option<Secret>,
    /// From `private_key_file` or `private_key_env`, with `signing_alg` and `key_id`:
    /// the client authenticates with `private_key_jwt`.
    pub private_key: Option<Arc<SigningKey>>,
    /// An HTTPS URL to use as a client ID metadata document.
    pub client_metadata_url: Option<Url>,
    /// The loopback redirect port; 0 picks a free one.
    pub redirect_port: u16,
    /// Send the RFC 8707 `resource` parameter; off for servers that reject it.
    pub send_resource: bool,
    /// Extra authorization request parameters, such as `access_type = "offline"`.
    pub authorize_params: Vec<(String, String)>,
    /// How long requests wait for a login before they fail.
    pub auth_timeout: Duration,
    /// The only authorization server this server's credentials may go to.
    pub issuer: Option<String>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            grant: Grant::AuthorizationCode,
            client_id: None,
            client_secret: None,
            private_key: None,
            client_metadata_url: None,
            redirect_port: 0,
            send_resource: true,
            authorize_params: Vec::new(),
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            issuer: None,
        }
    }
}

const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(120);

const OAUTH_KEYS: &[&str] = &[
    "grant",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_secret_file",
    "private_key_file",
    "private_key_env",
    "signing_alg",
    "key_id",
    "client_metadata_url",
    "redirect_port",
    "send_resource",
    "authorize_params",
    "auth_timeout_secs",
    "issuer",
];

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
        "cannot read config file {path}: {source}\n  hint: create it (see config/example.toml), or pass --config FILE or set LATCHKEY_CONFIG"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Invalid::render(.0))]
    Invalid(Vec<Diagnostic>),
}

struct Invalid;

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

/// The config file used when none is given: `LATCHKEY_CONFIG`, else
/// `$XDG_CONFIG_HOME/latchkey/config.toml`, else `~/.config/latchkey/config.toml`.
pub fn default_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LATCHKEY_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let base = xdg_dir("XDG_CONFIG_HOME", ".config").unwrap_or_else(|| PathBuf::from("."));
    base.join("latchkey").join("config.toml")
}

/// An XDG base directory: `$var` when it is an absolute path, else
/// `$HOME/<fallback>`; `None` when neither is. A relative value is ignored, as the
/// XDG Base Directory spec says: it would name a different place from each working
/// directory.
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    absolute(var).or_else(|| absolute("HOME").map(|home| home.join(fallback)))
}

/// Reads and validates a config file, resolving `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, |name| std::env::var(name).ok())
}

/// Validates config text. `env` resolves `${VAR}` references in header values.
pub fn parse(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut cx = Checker {
        file: path,
        text,
        diagnostics: Vec::new(),
    };
    let config = cx.config(&env);
    if cx.diagnostics.is_empty() {
        Ok(config)
    } else {
        cx.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(ConfigError::Invalid(cx.diagnostics))
    }
}

/// Refuses a non-loopback listen address unless the config allows it. Used for the
/// config's `listen` and for `serve --listen`.
pub fn check_listen(addr: SocketAddr, allow_non_loopback: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_non_loopback {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address; the local endpoint has no authentication, so anyone who can reach it can use your credentials. Use 127.0.0.1, or set `allow_non_loopback = true` if that is really what you want"
        ))
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "store",
    "state_dir",
    "allow_non_loopback",
    "allowed_origins",
    "allowed_hosts",
    "allowed_uids",
    "shutdown_timeout_secs",
    "servers",
];

const SERVER_KEYS: &[&str] = &["url", "transport", "headers", "oauth", "local_key"];

/// Headers that frame a request or name its connection and host (RFC 9110 §7.2,
/// RFC 9112 §6-7, RFC 9110 §7.6.1): never configurable. In lower case, as
/// `HeaderName::as_str` gives them.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: Option<&str>) {
        let (line, column) = line_column(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            hint: hint.map(str::to_owned),
        });
    }

    fn toml_error(&mut self, error: toml::de::Error, fallback: Range<usize>, hint: &str) {
        let span = error.span().unwrap_or(fallback);
        let message = without_quoted(error.message().trim_end());
        self.error(span, message, Some(hint));
    }

    /// Takes `key` out of `table` and deserializes it. A wrong type is reported at the
    /// value, with `hint`, and the section's other keys are still checked.
    fn field<T: serde::de::DeserializeOwned>(
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

    fn config(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        for error in errors {
            self.toml_error(error, 0..0, "fix the TOML syntax at this position");
        }
        let mut top = doc.into_inner();
        let servers = top.remove("servers");
        self.take_unknown(&mut top, TOP_KEYS, "top-level keys are");

        let mut config = Config {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_uids: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            store: StoreKind::Auto,
            state_dir: None,
            servers: Vec::new(),
        };
        self.top(&mut top, &mut config);

        match servers {
            None => self.error(
                0..0,
                "no servers configured",
                Some("add a table such as [servers.notes] with url = \"https://mcp.example.com/mcp\""),
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
    fn take_unknown(&mut self, table: &mut DeTable<'_>, known: &[&str], listing: &str) {
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

    fn top(&mut self, top: &mut DeTable<'_>, config: &mut Config) {
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

    fn server(
        &mut self,
        name: Spanned<toml::de::DeString<'_>>,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Server> {
        let name_span = name.span();
        let name = name.into_inner().into_owned();
        if !is_valid_name(&name) {
            self.error(
                name_span.clone(),
                format!("server name {name:?} cannot be used as a URL path segment"),
                Some("use letters, digits, '-', '_' and '.', not starting with '.'"),
            );
        } else if name == crate::local_key::RESERVED_NAME {
            self.error(
                name_span.clone(),
                format!(
                    "server name {name:?} is reserved: key URLs (local_key) start with /{name}/"
                ),
                Some("choose another name for this server"),
            );
        }
        let value_span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.error(
                value_span,
                format!("server {name:?} must be a table"),
                Some("write it as [servers.NAME] with a url key"),
            );
            return None;
        };
        self.take_unknown(&mut table, SERVER_KEYS, "a server's keys are");
        let url = self.field::<String>(
            &mut table,
            "url",
            "write url = \"https://mcp.example.com/mcp\"",
        );
        let transport = self
            .field::<Transport>(
                &mut table,
                "transport",
                "transport is one of \"auto\", \"streamable-http\" or \"sse\"",
            )
            .map(Spanned::into_inner)
            .unwrap_or_default();
        let local_key = self
            .field::<bool>(
                &mut table,
                "local_key",
                "write local_key = true to serve this server only at its key URL (`latchkey url NAME`)",
            )
            .is_some_and(Spanned::into_inner);
        let headers = match table.remove("headers") {
            Some(headers) => self.headers(headers, env),
            None => Vec::new(),
        };
        let oauth = match table.remove("oauth") {
            None => OAuth::Enabled(OAuthConfig::default()),
            Some(value) => self.oauth(value, env),
        };
        let url = match url {
            Some(url) => self.url(&name, &url),
            None => {
                self.error(
                    name_span,
                    format!("server {name:?} has no url"),
                    Some("add url = \"https://mcp.example.com/mcp\" to the table"),
                );
                None
            }
        };
        let (url, uri) = url?;
        Some(Server {
            login_command: format!("latchkey login {name}"),
            name,
            url,
            uri,
            transport,
            headers,
            oauth,
            local_key,
        })
    }

    fn oauth(
        &mut self,
        value: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> OAuth {
        let span = value.span();
        let mut table = match value.into_inner() {
            DeValue::Boolean(true) => return OAuth::Enabled(OAuthConfig::default()),
            DeValue::Boolean(false) => return OAuth::Disabled,
            DeValue::Table(table) => table,
            other => {
                self.error(
                    span,
                    format!(
                        "`oauth` must be true, false or a table, not a {}",
                        other.type_str()
                    ),
                    Some("write oauth = false to use only the static headers"),
                );
                return OAuth::Disabled;
            }
        };
        self.take_unknown(&mut table, OAUTH_KEYS, "oauth keys are");
        let mut oauth = OAuthConfig {
            client_id: self
                .field::<String>(
                    &mut table,
                    "client_id",
                    "write client_id = \"the id the server gave you\"",
                )
                .map(Spanned::into_inner)
                .filter(|id| !id.trim().is_empty()),
            ..OAuthConfig::default()
        };
        let secret_hint = "give the secret once: client_secret, client_secret_env (a variable name) or client_secret_file (a path)";
        let sources = [
            self.field::<String>(&mut table, "client_secret", secret_hint)
                .map(|v| (v.span(), Ok(Secret::new(v.into_inner())))),
            self.field::<String>(&mut table, "client_secret_env", secret_hint)
                .map(|v| {
                    let value = env(v.get_ref())
                        .map(Secret::new)
                        .ok_or_else(|| format!("environment variable {} is not set", v.get_ref()));
                    (v.span(), value)
                }),
            self.field::<String>(&mut table, "client_secret_file", secret_hint)
                .map(|v| {
                    let path = self.relative(v.get_ref());
                    let value = std::fs::read_to_string(&path)
                        .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])))
                        .map_err(|e| {
                            format!("cannot read client_secret_file {}: {e}", path.display())
                        });
                    (v.span(), value)
                }),
        ];
        let given: Vec<_> = sources.into_iter().flatten().collect();
        if given.len() > 1 {
            self.error(
                given[1].0.clone(),
                "client_secret is given more than once",
                Some(secret_hint),
            );
        }
        if let Some((span, value)) = given.into_iter().next() {
            match value {
                Ok(secret) => oauth.client_secret = Some(secret),
                Err(message) => self.error(span, message, Some(secret_hint)),
            }
        }
        if let Some(grant) = self.field::<String>(
            &mut table,
            "grant",
            "write grant = \"authorization_code\" (a person logs in) or grant = \"client_credentials\" (a machine client)",
        ) {
            match grant.get_ref().as_str() {
                "authorization_code" => oauth.grant = Grant::AuthorizationCode,
                "client_credentials" => oauth.grant = Grant::ClientCredentials,
                other => self.error(
                    grant.span(),
                    format!("unknown grant {other:?}"),
                    Some("write grant = \"authorization_code\" or grant = \"client_credentials\""),
                ),
            }
        }
        oauth.private_key = self.private_key(&mut table, env);
        if (oauth.client_secret.is_some() || oauth.private_key.is_some())
            && oauth.client_id.is_none()
        {
            self.error(
                span.clone(),
                "a client secret or private key is set but client_id is not",
                Some("add client_id to the oauth table"),
            );
        }
        if oauth.grant == Grant::ClientCredentials
            && oauth.client_id.is_some()
            && oauth.client_secret.is_none()
            && oauth.private_key.is_none()
        {
            self.error(
                span.clone(),
                "grant = \"client_credentials\" needs the client to authenticate",
                Some("add client_secret (or client_secret_env / client_secret_file), or private_key_file for private_key_jwt"),
            );
        }
        if oauth.grant == Grant::ClientCredentials && oauth.client_id.is_none() {
            self.error(
                span.clone(),
                "grant = \"client_credentials\" needs a client registered at the authorization server",
                Some("add client_id, and client_secret or private_key_file, to the oauth table"),
            );
        }
        if let Some(url) = self.field::<String>(
            &mut table,
            "client_metadata_url",
            "write the HTTPS URL where your client ID metadata document is served",
        ) {
            match Url::parse(url.get_ref()) {
                Ok(parsed) if parsed.scheme() == "https" && parsed.path() != "/" => {
                    oauth.client_metadata_url = Some(parsed);
                }
                _ => self.error(
                    url.span(),
                    "client_metadata_url must be an https URL with a path",
                    Some("for example client_metadata_url = \"https://example.com/latchkey/client.json\""),
                ),
            }
        }
        if let Some(port) = self.field::<u16>(
            &mut table,
            "redirect_port",
            "a port number, such as redirect_port = 33418 (0 picks a free one)",
        ) {
            oauth.redirect_port = port.into_inner();
        }
        if let Some(send) = self.field::<bool>(
            &mut table,
            "send_resource",
            "write send_resource = false for servers that reject the resource parameter",
        ) {
            oauth.send_resource = send.into_inner();
        }
        if let Some(params) = self.field::<toml::map::Map<String, toml::Value>>(
            &mut table,
            "authorize_params",
            "write authorize_params = { access_type = \"offline\" }",
        ) {
            let span = params.span();
            for (key, value) in params.into_inner() {
                match value {
                    toml::Value::String(value) => oauth.authorize_params.push((key, value)),
                    _ => self.error(
                        span.clone(),
                        format!("authorize_params.{key} must be a string"),
                        Some("quote the value"),
                    ),
                }
            }
        }
        if let Some(secs) = self.field::<u64>(
            &mut table,
            "auth_timeout_secs",
            "a whole number of seconds, such as auth_timeout_secs = 120",
        ) {
            oauth.auth_timeout = Duration::from_secs(secs.into_inner());
        }
        let issuer_hint = "the authorization server's issuer exactly as its metadata gives it, such as issuer = \"https://auth.example.com\"";
        if let Some(issuer) = self.field::<String>(&mut table, "issuer", issuer_hint) {
            match Url::parse(issuer.get_ref()) {
                Ok(url) if latchkey_auth::discovery::is_secure(&url) && url.query().is_none() => {
                    oauth.issuer = Some(issuer.into_inner());
                }
                _ => self.error(
                    issuer.span(),
                    "issuer must be an https URL (http only on loopback) without a query",
                    Some(issuer_hint),
                ),
            }
        }
        OAuth::Enabled(oauth)
    }

    /// `private_key_file` or `private_key_env` (PKCS#8 PEM), with `signing_alg` and
    /// `key_id`. The key is parsed here, so a bad one is a config error, not a failed
    /// login later; its text never appears in a message.
    fn private_key(
        &mut self,
        table: &mut DeTable<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Arc<SigningKey>> {
        let hint = "give the key once: private_key_file (a path to a PKCS#8 PEM file) or private_key_env (a variable holding the PEM)";
        let file = self
            .field::<String>(table, "private_key_file", hint)
            .map(|v| {
                let path = self.relative(v.get_ref());
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read private_key_file {}: {e}", path.display()));
                (v.span(), text)
            });
        let var = self
            .field::<String>(table, "private_key_env", hint)
            .map(|v| {
                let text = env(v.get_ref())
                    .ok_or_else(|| format!("environment variable {} is not set", v.get_ref()));
                (v.span(), text)
            });
        let alg = self
            .field::<String>(
                table,
                "signing_alg",
                "one of ES256, ES384, RS256, PS256, EdDSA",
            )
            .and_then(|name| match Algorithm::parse(name.get_ref()) {
                Some(alg) => Some(alg),
                None => {
                    self.error(
                        name.span(),
                        format!("unknown signing_alg {:?}", name.get_ref()),
                        Some(&format!("use one of {}", Algorithm::NAMES.join(", "))),
                    );
                    None
                }
            });
        let key_id = self
            .field::<String>(table, "key_id", "the `kid` your key is registered under")
            .map(Spanned::into_inner);
        let (span, text) = match (file, var) {
            (Some(_), Some((span, _))) => {
                self.error(span, "the private key is given more than once", Some(hint));
                return None;
            }
            (Some(given), None) | (None, Some(given)) => given,
            (None, None) => return None,
        };
        let parsed =
            text.and_then(|pem| SigningKey::from_pem(&pem, alg, key_id).map_err(|e| e.to_string()));
        match parsed {
            Ok(key) => Some(Arc::new(key)),
            Err(message) => {
                self.error(span, message, Some(hint));
                None
            }
        }
    }

    /// A path from the config, relative to the config file's directory.
    fn relative(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    fn url(&mut self, name: &str, raw: &Spanned<String>) -> Option<(Url, http::Uri)> {
        let problem = match Url::parse(raw.get_ref()) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!(
                    "server {name:?}: url scheme must be http or https, not {:?}",
                    url.scheme()
                )
            }
            Ok(url) if url.host().is_none() => format!("server {name:?}: url has no host"),
            Ok(url) if url.fragment().is_some() => {
                format!("server {name:?}: url must not have a #fragment")
            }
            Ok(url) => match request_uri(&url) {
                Ok(uri) => return Some((url, uri)),
                Err(problem) => format!("server {name:?}: {problem}"),
            },
            // The text may hold a key in its query string, so it is not quoted.
            Err(e) => format!("server {name:?}: url is not a URL: {e}"),
        };
        self.error(
            raw.span(),
            problem,
            Some("write the remote MCP endpoint, such as url = \"https://mcp.example.com/mcp\""),
        );
        None
    }

    fn headers(
        &mut self,
        raw: Spanned<DeValue<'_>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let span = raw.span();
        let DeValue::Table(table) = raw.into_inner() else {
            self.error(
                span,
                "`headers` must be a table of header names and values",
                Some("write headers = { \"X-Api-Key\" = \"${MY_API_KEY}\" }"),
            );
            return Vec::new();
        };
        let mut headers = Vec::new();
        let mut seen = HashSet::new();
        // In file order, so that a duplicate is reported where it is repeated.
        for (key, value) in table {
            let key_span = key.span();
            let key = key.into_inner();
            let value_span = value.span();
            let Some(value) = value.get_ref().as_str().map(str::to_owned) else {
                self.error(
                    value_span,
                    format!("header {key:?}: the value must be a string"),
                    Some("quote it, such as \"X-Api-Key\" = \"${MY_API_KEY}\""),
                );
                continue;
            };
            let value = Spanned::new(value_span, value);
            let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
                self.error(
                    key_span,
                    format!("header name {key:?} is not a valid HTTP header name"),
                    Some("header names are ASCII tokens such as \"X-Api-Key\""),
                );
                continue;
            };
            if FRAMING_HEADERS.contains(&name.as_str()) {
                self.error(
                    key_span,
                    format!("header {key:?} cannot be configured: latchkey sets it for each request (it frames the message or names the connection, so a fixed value would send requests to the wrong host or cut their bodies)"),
                    Some("remove it; to reach another host, change the server's url"),
                );
                continue;
            }
            if !seen.insert(name.clone()) {
                self.error(
                    key_span,
                    format!("header {key:?} is given twice (header names are case-insensitive)"),
                    Some("keep one of them"),
                );
                continue;
            }
            let secret = match substitute_env(value.get_ref(), env) {
                Ok(secret) => secret,
                Err(message) => {
                    self.error(
                        value.span(),
                        format!("header {key:?}: {message}"),
                        Some("export the variable before starting latchkey (for the systemd unit, use Environment= or EnvironmentFile=), or write $${ for a literal ${"),
                    );
                    continue;
                }
            };
            match HeaderValue::from_str(secret.expose()) {
                Ok(mut header) => {
                    header.set_sensitive(true);
                    headers.push((name, header));
                }
                Err(_) => self.error(
                    value.span(),
                    format!("header {key:?}: the value has characters not allowed in an HTTP header (such as a newline)"),
                    None,
                ),
            }
        }
        headers
    }
}

/// A serde message without its double-quoted parts, which echo the value (a header
/// value may be a credential).
fn without_quoted(message: &str) -> String {
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

/// Replaces `${NAME}` with the variable's value; `$${` is a literal `${`. The result
/// may be a credential, so it comes back as a [`Secret`], and errors name only the
/// variable.
pub(crate) fn substitute_env(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated ${ in value".to_owned())?;
            let name = &tail[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "${{{name}}} is not a valid environment variable name"
                ));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Secret::new(out))
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
