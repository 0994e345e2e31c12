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
        /// The server's name in the config.
        server: String,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Do not open a browser: use the device flow when the server offers it,
        /// else print the URL and accept the pasted redirect address.
        #[arg(long)]
        no_browser: bool,
    },
    /// Revoke a server's tokens (where it offers revocation) and delete them.
    Logout {
        /// The server's name in the config.
        server: String,
        /// Config file [default: $LATCHKEY_CONFIG, else $XDG_CONFIG_HOME/latchkey/config.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
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
}
