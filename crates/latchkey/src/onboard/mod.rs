//! The first steps, without editing TOML by hand: `latchkey init` (a commented
//! starter config), `latchkey add` (a server, probed, with what to paste into each
//! client), `latchkey remove` (and its logout), `latchkey import` (the remote
//! servers other MCP clients already have). Each changes the config file through
//! `config_file`, which keeps the person's comments and writes only what loads.

mod config_file;
pub mod import;
mod inspect;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use config_file::{ConfigFile, EditError, NewServer};
pub use inspect::Found;

use crate::config::Config;
use crate::redact::escape_controls;

/// The starter config `latchkey init` writes (parsed by a test, like every example).
pub const STARTER: &str = include_str!("starter.toml");

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("{} already exists; latchkey init writes only a new file\n  hint: add servers to it with `latchkey add NAME URL`", .0.display())]
    Exists(PathBuf),
}

/// `latchkey init`: the starter config at `path`, which must not exist.
pub fn init(path: &Path) -> Result<(), OnboardError> {
    if path.exists() {
        return Err(OnboardError::Exists(path.to_owned()));
    }
    config_file::write_atomically(path, STARTER.as_bytes(), 0o600)?;
    Ok(())
}

/// What `latchkey add` did.
#[derive(Debug)]
pub struct Added {
    pub name: String,
    pub config_path: PathBuf,
    pub created: bool,
    pub local_url: String,
    pub found: Found,
    /// What logs in to it, and the config file the commands need, if not the default.
    login_command: String,
    config_file: Option<String>,
}

/// `latchkey add`: the server in the config file (created if need be), probed.
pub async fn add(path: &Path, server: &NewServer) -> Result<Added, OnboardError> {
    let mut file = ConfigFile::open(path)?;
    file.add(server)?;
    let config = file.save()?;
    let added = config
        .servers
        .iter()
        .find(|s| s.name == server.name)
        .expect("the server just added");
    Ok(Added {
        name: server.name.clone(),
        config_path: path.to_owned(),
        created: file.created,
        local_url: crate::local_key::url(config.listen, &server.name, None),
        found: inspect::inspect(added).await,
        login_command: added.login_command.clone(),
        config_file: added.config_file.clone(),
    })
}

impl Added {
    /// What `latchkey add` prints: what it found, what to do next, and the
    /// snippets for each client.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let name = &self.name;
        let _ = writeln!(
            out,
            "{} [servers.{name}] to {}",
            if self.created {
                "Created the config with"
            } else {
                "Added"
            },
            self.config_path.display()
        );
        let _ = match &self.found {
            Found::Open { transport } => {
                writeln!(out, "The server answers ({transport}) and needs no login.")
            }
            Found::NeedsLogin {
                issuer: Some(issuer),
                ..
            } => writeln!(
                out,
                "The server needs a login, at {}.\nLog in now with `{}` (or let the first request open the browser).",
                escape_controls(issuer),
                self.login_command
            ),
            Found::NeedsLogin {
                issuer: None,
                problem,
            } => writeln!(
                out,
                "The server needs a login, but its authorization server was not found: {}\nTry `{}`; `latchkey doctor` says more.",
                escape_controls(problem.as_deref().unwrap_or("unknown")),
                self.login_command
            ),
            Found::Refused { status } => writeln!(
                out,
                "The server refused the configured headers (HTTP {status}); check headers under [servers.{name}], or remove oauth = false to let latchkey log in."
            ),
            Found::Unexpected { status } => writeln!(
                out,
                "The server answered an MCP initialize with HTTP {status}: check that the url is the MCP endpoint (often ending in /mcp)."
            ),
            Found::Unreachable { cause } => writeln!(
                out,
                "The server could not be reached: {}\nIt is added anyway; `latchkey doctor` checks it again.",
                escape_controls(cause)
            ),
        };
        let _ = writeln!(out, "\nLocal endpoint: {}", self.local_url);
        out.push('\n');
        out.push_str(&crate::snippets::print(
            name,
            &self.local_url,
            self.config_file.as_deref(),
        ));
        out
    }

    pub fn needs_login(&self) -> bool {
        matches!(self.found, Found::NeedsLogin { .. })
    }
}

/// `latchkey remove`: the server's table out of the config. The logout (with
/// revocation) is the caller's, before this, while the config still has the server.
pub fn remove(path: &Path, name: &str) -> Result<Config, OnboardError> {
    let mut file = ConfigFile::open(path)?;
    file.remove(name)?;
    Ok(file.save()?)
}

/// Asks a yes/no question on the terminal; no (without asking) when stdin or
/// stdout is not one, so that scripts never wait.
pub fn ask(question: &str) -> bool {
    use std::io::{IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return false;
    }
    crate::out::say!("{question} [Y/n] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(
            answer.trim().to_ascii_lowercase().as_str(),
            "" | "y" | "yes"
        )
}

/// Tells a running daemon to read the config again: the systemd user service when
/// it is active (the way latchkey is installed to run), else what to run.
pub fn reload() -> String {
    let active = std::process::Command::new("systemctl")
        .args(["--user", "--quiet", "is-active", "latchkey"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if active {
        let reloaded = std::process::Command::new("systemctl")
            .args(["--user", "reload", "latchkey"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if reloaded {
            return "The latchkey service reloaded its config.".into();
        }
    }
    "A latchkey daemon that is already running takes the change when it reloads: `systemctl --user reload latchkey`, or send it SIGHUP.".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_loads_and_init_never_overwrites() {
        // Alone it has no server, which `serve` says with the way to add one.
        let err = crate::config::parse(Path::new("starter.toml"), STARTER, |_| None)
            .expect_err("no servers")
            .to_string();
        assert!(
            err.contains("no servers configured") && err.contains("latchkey add"),
            "{err}"
        );
        let with_one =
            format!("{STARTER}\n[servers.notes]\nurl = \"https://mcp.example.com/mcp\"\n");
        crate::config::parse(Path::new("starter.toml"), &with_one, |_| None)
            .expect("the starter and a server");
        let dir = std::env::temp_dir().join(format!("latchkey-init-{}", std::process::id()));
        let path = dir.join("config.toml");
        init(&path).expect("ok");
        assert_eq!(std::fs::read_to_string(&path).expect("ok"), STARTER);
        let err = init(&path).expect_err("an error").to_string();
        assert!(
            err.contains("already exists") && err.contains("latchkey add"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
