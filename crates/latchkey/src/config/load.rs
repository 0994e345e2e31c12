//! Loading a config: the default path, reading the file, `${VAR}` substitution, and
//! the one-server config of `--url`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::{HeaderName, HeaderValue};
use latchkey_auth::Secret;
use url::Url;

use super::check::Checker;
use super::{Config, ConfigError, OAuth, OAuthConfig, Server, Transport, request_uri};

/// The config file used when none is given: `LATCHKEY_CONFIG`, else
/// `$XDG_CONFIG_HOME/latchkey/config.toml`, else `~/.config/latchkey/config.toml`.
pub fn default_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LATCHKEY_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    usual_path()
}

/// `$XDG_CONFIG_HOME/latchkey/config.toml`: where latchkey looks without
/// `LATCHKEY_CONFIG`, as an MCP client that launches `latchkey stdio` does.
fn usual_path() -> PathBuf {
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
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let mut config = parse(path, &text, |name| std::env::var(name).ok())?;
    name_the_file(&mut config, path);
    Ok(config)
}

/// Makes the commands a config's messages and snippets name find it again: `latchkey
/// login NAME` run by hand reads the usual file, not this one. `LATCHKEY_CONFIG` is
/// not enough: a client that launches `latchkey stdio` rarely passes it on.
pub fn name_the_file(config: &mut Config, path: &Path) {
    let Some(file) = named_file(path) else {
        return;
    };
    for server in &mut config.servers {
        server.login_command = format!(
            "latchkey login {} --config {}",
            server.name,
            crate::snippets::shell_quote(&file)
        );
        server.config_file = Some(file.clone());
    }
}

/// The config file at `path` as the commands latchkey prints must name it
/// (`--config`), or `None` for the usual one.
pub fn named_file(path: &Path) -> Option<String> {
    (path != usual_path()).then(|| {
        let file = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        file.display().to_string()
    })
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
        idps: Vec::new(),
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

/// What a command that takes `SERVER` or `--url` was pointed at.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Adhoc(#[from] AdhocError),
    #[error("no server {name:?} in the config; configured: {known} (config file: {path})")]
    UnknownServer {
        name: String,
        path: String,
        known: String,
    },
    #[error("give a server name from the config, or --url URL")]
    Missing,
}

/// The config and server name for `latchkey stdio` and `login`: server `name` of
/// the config at `config` (which must have it), or `--url` with its headers as the
/// one server `remote`.
pub fn target(
    config: Option<PathBuf>,
    name: Option<String>,
    url: Option<&str>,
    headers: &[String],
    transport: crate::cli::TransportArg,
) -> Result<(Config, String), TargetError> {
    match (name, url) {
        (Some(name), _) => {
            let path = config.unwrap_or_else(default_path);
            let config = load(&path)?;
            if !config.servers.iter().any(|s| s.name == name) {
                return Err(TargetError::UnknownServer {
                    name,
                    path: path.display().to_string(),
                    known: config.server_names(),
                });
            }
            Ok((config, name))
        }
        (None, Some(url)) => Ok((adhoc(config, url, headers, transport)?, "remote".to_owned())),
        (None, None) => Err(TargetError::Missing),
    }
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
            config_file: None,
            adhoc: true,
        },
        store,
        state_dir,
    ))
}
