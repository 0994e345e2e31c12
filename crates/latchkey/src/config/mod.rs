//! The configuration file. This module is its schema, the types a config becomes;
//! `load.rs` reads a file (with `${VAR}` substitution), and `check.rs` (with
//! `check_server.rs` and `check_oauth.rs`) validates it and reports every problem at
//! once, each at its line and column.

mod check;
mod check_grants;
mod check_oauth;
mod check_server;
mod load;

pub use check::{ConfigError, Diagnostic};
#[cfg(feature = "fuzzing")]
pub(crate) use load::substitute_env;
pub use load::{
    AdhocError, TargetError, adhoc, check_listen, default_path, load, name_the_file, named_file,
    parse, target, xdg_dir,
};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use latchkey_auth::Secret;
use latchkey_auth::assertion::SigningKey;
use latchkey_auth::session::Grant;
use serde::Deserialize;
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
    /// The configured servers' names, for messages about one that is not there.
    pub fn server_names(&self) -> String {
        let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }

    /// A config with one server and defaults for everything else, for `latchkey stdio
    /// --url`, which needs no config file.
    pub fn single(server: Server, store: StoreKind, state_dir: Option<PathBuf>) -> Self {
        Self {
            store,
            state_dir,
            servers: vec![server],
            ..Self::default()
        }
    }
}

/// What a config file without any top-level key means.
impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_uids: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            store: StoreKind::Auto,
            state_dir: None,
            servers: Vec::new(),
        }
    }
}

impl Config {
    /// `latchkey stdio --login-wait`: every server's `login_wait_secs`.
    pub fn set_login_wait(&mut self, wait: Duration) {
        for server in &mut self.servers {
            if let OAuth::Enabled(oauth) = &mut server.oauth {
                oauth.login_wait = wait;
            }
        }
    }

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
    /// The config file, when it is not the default one: the commands that messages
    /// and snippets name must then be given it (`--config`) to find this server.
    pub config_file: Option<String>,
    /// A `--url` server, not a `[servers.NAME]` table: its credentials are kept
    /// under its URL (every such server is named "remote").
    pub adhoc: bool,
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
    /// `authorization_code` (a person logs in), `client_credentials` (a machine) or
    /// `jwt_bearer` (a workload, with its platform's token).
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
    /// How long a request waits for a login when nobody may be there to do it
    /// (`latchkey stdio`, or no browser and no notification could reach the
    /// person): MCP clients give up on a server sooner than a login takes.
    pub login_wait: Duration,
    /// The only authorization server this server's credentials may go to.
    pub issuer: Option<String>,
    /// DPoP-bound tokens (RFC 9449): `None` as the authorization server offers,
    /// else always or never.
    pub dpop: Option<bool>,
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
            login_wait: DEFAULT_LOGIN_WAIT,
            issuer: None,
            dpop: None,
        }
    }
}

const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(120);
/// Within Codex's 30 s start-up limit, and long enough for a token refresh.
const DEFAULT_LOGIN_WAIT: Duration = Duration::from_secs(10);
