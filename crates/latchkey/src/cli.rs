//! The command line. `main.rs` runs what is parsed here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  latchkey serve
      Serve the servers in ~/.config/latchkey/config.toml on http://127.0.0.1:8931/<server>
  latchkey serve --config ./latchkey.toml --listen 127.0.0.1:9000
  latchkey check --config ./latchkey.toml
      Report every problem in a config file, with line and column
  latchkey stdio notes
      Serve `notes` to an MCP client that launches its servers (stdin/stdout)
  latchkey stdio --url https://mcp.example.com/mcp
      The same for a server that is not in the config
  latchkey login notes --no-browser
      Log in to the server `notes` ahead of time, from a machine without a browser

A minimal config:
  [servers.notes]
  url = \"https://mcp.example.com/mcp\"
  headers = { \"X-Api-Key\" = \"${NOTES_API_KEY}\" }

Then point any MCP client at http://127.0.0.1:8931/notes";

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--transport`, as the config's `transport` key spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Auto,
    StreamableHttp,
    Sse,
}

impl TransportArg {
    /// The config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::StreamableHttp => "streamable-http",
            Self::Sse => "sse",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve every configured server on the local endpoint.
    Serve {
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config's `listen` [default: 127.0.0.1:8931]
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Authorize with a server ahead of time and store its tokens (works with the
    /// daemon running or not).
    Login {
        /// The server's name in the config (or give --url instead).
        #[arg(required_unless_present = "url")]
        server: Option<String>,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A server that is not in the config, as `latchkey stdio --url` uses it.
        #[arg(long, conflicts_with = "server")]
        url: Option<String>,
        /// A header for every request with --url, as 'Name: value' (repeatable).
        #[arg(long = "header", value_name = "NAME: VALUE", requires = "url")]
        headers: Vec<String>,
        /// The transport with --url.
        #[arg(long, value_enum, default_value_t = TransportArg::Auto, requires = "url")]
        transport: TransportArg,
        /// Do not open a browser: use the device flow when the server offers it,
        /// else print the URL and accept the pasted redirect address.
        #[arg(long)]
        no_browser: bool,
    },
    /// Be an MCP stdio server for one remote server, for clients that launch their
    /// servers as child processes. Protocol on stdin/stdout, logs on stderr.
    Stdio {
        /// The server's name in the config (or give --url instead).
        #[arg(required_unless_present = "url")]
        server: Option<String>,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A remote MCP server's URL, with no config entry needed.
        #[arg(long, conflicts_with = "server")]
        url: Option<String>,
        /// A header for every request with --url, as 'Name: value' (repeatable).
        #[arg(long = "header", value_name = "NAME: VALUE", requires = "url")]
        headers: Vec<String>,
        /// The transport with --url.
        #[arg(long, value_enum, default_value_t = TransportArg::Auto, requires = "url")]
        transport: TransportArg,
        /// How long a request waits for a login before it is answered with what to
        /// run; the login goes on [default: login_wait_secs, else 10]
        #[arg(long, value_name = "SECS")]
        login_wait: Option<u64>,
    },
    /// Revoke a server's tokens (where it offers revocation) and delete them.
    Logout {
        /// The server's name in the config.
        server: String,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a server's local URL, to give an MCP client: its key URL when the
    /// server has local_key = true (the key is made on first use).
    Url {
        /// The server's name in the config.
        server: String,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Replace the key: the old URL stops working when the daemon reloads.
        #[arg(long)]
        new: bool,
        /// Also print what to paste into each MCP client (as `latchkey add` and the
        /// status page show it).
        #[arg(long)]
        snippets: bool,
    },
    /// Show each server's credentials: state, store, expiry and scopes (never a secret).
    Status {
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the config, the keyring, the callback port and every upstream, and say
    /// how to fix each problem found.
    Doctor {
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem at once.
    Check {
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write a commented starter config (it must not exist yet).
    Init {
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Add a remote MCP server to the config (created if need be), see what it
    /// needs, and print what to paste into each MCP client.
    Add {
        /// The name: the server is served at http://127.0.0.1:PORT/NAME.
        name: String,
        /// The server's MCP endpoint URL.
        url: String,
        /// A header for every request, as 'Name: value' (repeatable); a value may
        /// be ${VAR}, read from the environment.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The transport.
        #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
        transport: TransportArg,
        /// A client registered with the server's authorization server ahead of time.
        #[arg(long)]
        oauth_client_id: Option<String>,
        /// Its secret; better ${VAR} than the secret itself.
        #[arg(long, requires = "oauth_client_id")]
        oauth_client_secret: Option<String>,
        /// Do not offer to log in now.
        #[arg(long)]
        no_login: bool,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Log out of a server and take it out of the config.
    Remove {
        /// The server's name in the config.
        name: String,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Add the remote servers that Claude Desktop, Claude Code, Cursor, VS Code,
    /// Codex and Gemini CLI have (URL entries and `mcp-remote` commands) to the
    /// config; with --rewrite, point those clients at latchkey.
    Import {
        /// Read this client config instead of the usual places (repeatable).
        #[arg(long, value_name = "FILE")]
        from: Vec<PathBuf>,
        /// Rewrite each client's entries to go through latchkey (a backup of each
        /// file is written first, and the diff printed).
        #[arg(long)]
        rewrite: bool,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Install or remove latchkey as a systemd user service.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

/// `latchkey service ...`
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ServiceAction {
    /// Write latchkey.service (and latchkey.socket with --socket) to
    /// $XDG_CONFIG_HOME/systemd/user, running this latchkey binary.
    Install {
        /// Also run `systemctl --user daemon-reload` and `enable --now`, instead of
        /// printing them.
        #[arg(long)]
        now: bool,
        /// Start on the first connection (socket activation) instead of at login.
        #[arg(long)]
        socket: bool,
    },
    /// Remove the units written by `install`.
    Uninstall {
        /// Also run `systemctl --user disable --now` first, instead of printing it.
        #[arg(long)]
        now: bool,
    },
}
